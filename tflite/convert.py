"""`kvid-convert`: SavedModel -> `.tflite` (int8, float16 or dynamic range), audited and reported.

  kvid-convert --workdir=/tmp/run --int8            # QAT export if present, else PTQ
  kvid-convert --workdir=/tmp/run --int8 --ptq      # PTQ even when export/qat exists
  kvid-convert --saved_model=DIR --data_dir=DATA --labels=labels.txt --float16
  kvid-convert --workdir=/tmp/run --int8 --input_layout=frame_stacked   # Edge TPU input
  kvid-convert --workdir=/tmp/run --int8 --edgetpu  # the above + Edge TPU check and compile

Writes, next to the `.tflite` (default `WORKDIR/export/model_{mode}.tflite`, `model_int8_ptq`
with `--ptq`, a `_frame_stacked` suffix with `--input_layout=frame_stacked`): `<name>.json`
(sidecar: labels, input shape and layout, input quantization, normalisation, source, mode) and
`<name>.report.json` (op audit, per-layer errors, fidelity, latency).

`--input_layout=frame_stacked` exports the input `(1, T * H, W, 3)` instead of the clip
`(1, T, H, W, 3)`: the T frames stacked along the height axis, `clip.reshape(1, T * H, W, 3)`
(kvid_tflite.litert). The Edge TPU takes no tensor with 4 dimensions above 1. The SavedModel is
wrapped in a function that reshapes the stacked input back to the clip; a model whose first op
frame-stacks the clip (PosMLP-Video's `*_edgetpu` presets) loses both reshapes in conversion and
keeps no 5-D tensor. Any other model keeps the wrapper's reshape and computes the same values.
The report's `input.activations_over_3_dims` lists what 5-D activations remain.

`--edgetpu` (with `--int8`) is the Coral form: frame-stacked input, batch 1, int8 I/O, written
as `model_int8_edgetpu.tflite`; then the Edge TPU rule check (kvid_tflite.edgetpu) and, when
`edgetpu_compiler` is on PATH, the compiler's own verdict per op type
(kvid_tflite.edgetpu_compiler) go beside it as `<name>.edgetpu.json` and `<name>.edgetpu.md`.
Without the compiler the report says the model was not compiled and how to install it; a
compiler that refuses the model makes the command exit 1.

`--int8` exits 1 with one line naming the first float op when the graph is not fully int8 with
int8 I/O (docs/design.md section 3). The files are still written so that the audit can be read.
Every int8 BATCH_MATMUL of two activations gets a right-hand operand with zero point 0, the only
one XNNPACK takes (`symmetric_batch_matmul_operands`; docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import app, flags

import kvid.cli
from kvid.data.sampling import EVAL_CROP_FRACTION
from kvid.data.workdir import load_workdir, read_labels
from kvid_tflite import audit as audit_lib
from kvid_tflite import layer_errors as layer_errors_lib
from kvid_tflite.litert import INPUT_LAYOUTS, TFLiteModel, embed_metadata, layout_input_shape
from kvid_tflite.metrics import compare_logits

if TYPE_CHECKING:  # loads TensorFlow: imported where it is used
    from kvid_tflite.saved_model import ServingModel

MODES = ("int8", "float16", "dynamic_range")
# "float32" is internal: the unquantized reference `.tflite` of the per-layer report.
_ALL_MODES = (*MODES, "float32")
LATENCY_THREADS = (1, 2)
MIN_COSINE = 0.99  # docs/design.md section 7 (c): int8 logits vs the float model's

ClipSource = Callable[[], Iterable[np.ndarray]]
_LAYOUT_TEXT = {
    "clip": "(batch, frames, height, width, RGB)",
    "frame_stacked": "(batch, frames * height, width, RGB), frame t on rows t*H to (t+1)*H - 1",
}


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------
def _as_input(clip: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """A float32 model input `(1, *input_shape)` from a clip `(T, H, W, 3)` or `(1, T, H, W, 3)`.

    `input_shape` is the clip itself or its frame-stacked image `(T * H, W, 3)`: reshaping the
    time-major clip stacks its frames along the height axis (kvid_tflite.litert.stack_frames).
    """
    clip = np.asarray(clip, np.float32)
    return clip.reshape((1, *input_shape))


def _check_layout(input_layout: str) -> None:
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"unknown input_layout {input_layout!r}; expected one of {INPUT_LAYOUTS}")


def serving_function(model: ServingModel, input_layout: str = "clip") -> Any:
    """The concrete function to convert: static batch 1, input `video` in `input_layout`.

    "frame_stacked" wraps the signature in a reshape `(1, T * H, W, 3) -> (1, T, H, W, 3)`.
    When the model's first op is the opposite reshape, the TF 2.21 converter folds the pair into
    nothing (measured: a reshape of a reshape becomes one reshape, and a reshape to its input's
    own shape is removed); otherwise the wrapper's reshape stays as op 0.
    """
    import tensorflow as tf

    from kvid.data.workdir import INPUT_NAME, OUTPUT_NAME

    _check_layout(input_layout)
    if input_layout == "clip":
        return model.static_batch_function(batch_size=1)
    stacked = layout_input_shape(model.clip_shape, input_layout)
    spec = tf.TensorSpec([1, *stacked], tf.float32, name=INPUT_NAME)
    clip_shape, signature = [1, *model.clip_shape], model.signature
    input_key, output_key = model.input_key, model.output_key

    @tf.function(input_signature=[spec])
    def serving(video):
        clip = tf.reshape(video, clip_shape)
        return {OUTPUT_NAME: signature(**{input_key: clip})[output_key]}

    return serving.get_concrete_function()


def make_converter(
    model: ServingModel,
    mode: str,
    representative: ClipSource | None = None,
    float_io: bool = False,
    input_layout: str = "clip",
) -> Any:
    """A fresh `TFLiteConverter` for `model` at static batch 1.

    Args:
      model: the loaded SavedModel.
      mode: one of "int8", "float16", "dynamic_range", "float32".
      representative: for "int8", a callable returning an iterable of clips (training split);
        full-integer conversion needs one for a QAT model too (docs/design.md section 2).
      float_io: "int8" only: keep float32 I/O (QuantizationDebugger refuses integer I/O).
      input_layout: "clip" `(1, T, H, W, 3)` or "frame_stacked" `(1, T * H, W, 3)`; the
        representative clips stay `(T, H, W, 3)` either way.

    A converter is good for one `convert()`: converting a concrete function lowers it to a
    temporary SavedModel, and a second `convert()` on the same object fails in TF 2.21.
    """
    import tensorflow as tf

    function = serving_function(model, input_layout)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model.loaded)
    input_shape = layout_input_shape(model.clip_shape, input_layout)
    return _configure(converter, mode, representative, input_shape, float_io)


def convert_keras_model(
    model: Any,
    mode: str = "int8",
    representative: ClipSource | None = None,
    input_layout: str = "clip",
    symmetric_rhs: bool = True,
) -> bytes:
    """Converts an in-memory Keras model (float or QAT) to `.tflite` bytes at static batch 1.

    The same conversion as `kvid-convert` (signature `serving_default`, input `video`, output
    `logits`; int8 I/O for "int8"; `input_layout` as there), for a model not exported yet.
    An int8 model gets `symmetric_batch_matmul_operands`, as in `kvid-convert` (zero point 0 on
    every right-hand operand of a matmul of two activations); `symmetric_rhs=False` returns the
    converter's own int8 graph.
    """
    import tensorflow as tf

    _check_layout(input_layout)
    clip_shape = tuple(model.input_shape[1:])
    # Any input rank as it is (image models too); frame stacking needs a (T, H, W, C) clip.
    input_shape = clip_shape
    if input_layout != "clip":
        input_shape = layout_input_shape(clip_shape, input_layout)
    spec = tf.TensorSpec([1, *input_shape], tf.float32, name="video")

    def serving(video):
        if input_layout != "clip":  # folded away when the model frame-stacks first
            video = tf.reshape(video, (1, *clip_shape))
        return {"logits": model(video, training=False)}

    function = tf.function(serving, input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    content = _configure(converter, mode, representative, input_shape, float_io=False).convert()
    if mode == "int8" and symmetric_rhs:
        return symmetric_batch_matmul_operands(content)[0]
    return content


def _configure(
    converter: Any,
    mode: str,
    representative: ClipSource | None,
    input_shape: Sequence[int],
    float_io: bool,
) -> Any:
    """Sets a converter up for `mode` (see `make_converter`)."""
    import tensorflow as tf

    if mode not in _ALL_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {_ALL_MODES}")
    if mode == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs a representative dataset (calibration clips)")
        converter.representative_dataset = lambda: (
            [_as_input(clip, input_shape)] for clip in representative()
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if not float_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    # "dynamic_range": Optimize.DEFAULT without a dataset quantizes the weights only.
    return converter


def convert_saved_model(
    model: ServingModel,
    mode: str,
    representative: ClipSource | None = None,
    input_layout: str = "clip",
) -> bytes:
    """Converts `model` to `.tflite` bytes (see `make_converter`); int8 models get
    `symmetric_batch_matmul_operands`."""
    content = make_converter(model, mode, representative, input_layout=input_layout).convert()
    return symmetric_batch_matmul_operands(content)[0] if mode == "int8" else content


# ------------------------------------------------------------------------------------------------
# Zero point 0 for the right-hand operands of int8 BATCH_MATMULs
# ------------------------------------------------------------------------------------------------
def symmetric_batch_matmul_operands(content: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    """Requantizes every int8 activation that is the right-hand operand of a BATCH_MATMUL and
    has a non-zero zero point to zero point 0, by one QUANTIZE op before its first such use.

    XNNPACK takes an int8 BATCH_MATMUL of two activations only when the right-hand operand's zero
    point is 0 (LiteRT's `tflite/delegates/xnnpack/xnnpack_delegate.cc`); otherwise the builtin
    reference kernel runs it, tens of times slower. A QAT model gets zero point 0 from its
    symmetric fake quants (`kvid.layers.base`) and is returned unchanged; post-training
    quantization calibrates an asymmetric range for every tensor, which this fixes: the tensor
    of scale `s` and zero point `z` covers `[s (-128 - z), s (127 - z)]`, and the new one covers
    `[-m, m]` with `m` the larger magnitude, at scale `m / 127` (at most one bit coarser, for a
    one-signed tensor). XNNPACK runs the int8 -> int8 QUANTIZE.

    Returns the new `.tflite` bytes and one record per requantized tensor (the first
    BATCH_MATMUL using it, its name, and the old and new scale and zero point).
    """
    import flatbuffers

    from kvid_tflite.litert import schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    codes = model.operatorCodes or []

    def builtin(index: int) -> int:
        return max(codes[index].builtinCode, codes[index].deprecatedBuiltinCode)

    matmuls = {i for i in range(len(codes)) if builtin(i) == schema.BuiltinOperator.BATCH_MATMUL}
    records: list[dict[str, Any]] = []
    quantize_code = None
    for subgraph in model.subgraphs or []:
        operators = list(subgraph.operators or [])
        produced = {
            int(o) for op in operators for o in (op.outputs if op.outputs is not None else [])
        }
        replacement: dict[int, int] = {}  # old tensor -> its zero-point-0 copy
        inserted: list[tuple[int, Any]] = []  # (operator position, QUANTIZE op)
        for position, op in enumerate(operators):
            if op.opcodeIndex not in matmuls or op.inputs is None or len(op.inputs) < 2:
                continue
            rhs = int(op.inputs[1])
            if rhs in replacement:
                op.inputs[1] = replacement[rhs]
                continue
            tensor = subgraph.tensors[rhs]
            q = tensor.quantization
            if (
                tensor.type != schema.TensorType.INT8
                or rhs not in produced  # a constant or a model input
                or q is None
                or q.zeroPoint is None
                or len(q.zeroPoint) != 1
                or int(q.zeroPoint[0]) == 0
            ):
                continue
            scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
            new_scale = scale * max(128 + zero_point, 127 - zero_point) / 127.0
            copy = schema.TensorT()
            copy.shape = tensor.shape
            copy.shapeSignature = tensor.shapeSignature
            copy.type = schema.TensorType.INT8
            copy.buffer = 0  # the empty buffer: written at run time
            copy.name = (tensor.name or b"") + b"/zero_point_0"
            copy.quantization = schema.QuantizationParametersT()
            copy.quantization.scale = [new_scale]
            copy.quantization.zeroPoint = [0]
            subgraph.tensors.append(copy)
            replacement[rhs] = len(subgraph.tensors) - 1
            if quantize_code is None:
                quantize_code = _operator_code(model, schema.BuiltinOperator.QUANTIZE, version=2)
            quantize = schema.OperatorT()
            quantize.opcodeIndex = quantize_code
            quantize.inputs = [rhs]
            quantize.outputs = [replacement[rhs]]
            quantize.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
            quantize.builtinOptions = schema.QuantizeOptionsT()
            inserted.append((position, quantize))
            op.inputs[1] = replacement[rhs]
            records.append(
                {"batch_matmul": position, "tensor": (tensor.name or b"").decode("utf-8", "replace"),
                 "scale": scale, "zero_point": zero_point, "new_scale": new_scale}
            )  # fmt: skip
        for position, quantize in reversed(inserted):  # later positions first: indices hold
            operators.insert(position, quantize)
        subgraph.operators = operators
    if not records:
        return content, records
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), records


def _operator_code(model: Any, builtin_code: int, version: int) -> int:
    """The index of `builtin_code`'s operator code in `model`, added when missing."""
    from kvid_tflite.litert import schema

    for index, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin_code:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin_code
    code.deprecatedBuiltinCode = min(builtin_code, 127)
    code.version = version
    model.operatorCodes = [*(model.operatorCodes or []), code]
    return len(model.operatorCodes) - 1


# ------------------------------------------------------------------------------------------------
# Report pieces
# ------------------------------------------------------------------------------------------------
def sidecar(
    tflite: TFLiteModel,
    mode: str,
    source: str,
    saved_model: str,
    labels: Sequence[str],
    normalization: dict[str, Any] | None,
    frame_stride: int = 1,
    stored_frame_size: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What an app needs to feed the model and read its output.

    `input.input_layout` ("clip" or "frame_stacked") with `num_frames` and `image_size` say how
    a `(T, H, W, 3)` clip becomes the input tensor (kvid_tflite.litert.read_input_layout).
    `input.sampling` is how training and evaluation sampled clips (kvid.data.sampling): decoded
    frames resized to `stored_frame_size` as kvid-prepare stored them (None: kept as decoded),
    then the evaluation resize and crop.
    """
    input_scale, input_zero_point = tflite.input_quantization
    output_scale, output_zero_point = tflite.output_quantization
    frames, height, width, _ = tflite.clip_shape
    return {
        "mode": mode,
        "source": source,
        "saved_model": os.path.abspath(saved_model),
        "labels": list(labels),
        "signature": tflite.signature_list(),
        "input": {
            "name": "video",
            "shape": list(tflite.input_shape),
            "dtype": tflite.input_dtype.name,
            "range": [0.0, 1.0],
            "input_layout": tflite.input_layout,
            "layout": _LAYOUT_TEXT[tflite.input_layout],
            "num_frames": int(frames),
            "image_size": [int(height), int(width)],
            # The model was trained on frames this many decoded frames apart: sample the same.
            "frame_stride": int(frame_stride),
            "sampling": {
                "stored_frame_size": (
                    None if stored_frame_size is None else [int(d) for d in stored_frame_size]
                ),
                "eval_crop_fraction": EVAL_CROP_FRACTION,
                "resize": "bilinear, antialiased (tf.image.resize antialias=True)",
            },
            # int8 input: q = round(x / scale) + zero_point, x in [0, 1].
            "scale": input_scale,
            "zero_point": input_zero_point,
        },
        "output": {
            "name": "logits",
            "shape": list(tflite.output_shape),
            "dtype": tflite.output_dtype.name,
            "scale": output_scale,
            "zero_point": output_zero_point,
        },
        # Already inside the model: feed [0, 1] RGB, do not normalise again.
        "normalization": normalization,
        "normalization_inside_model": True,
    }


def fidelity(
    tflite: TFLiteModel, references: dict[str, ServingModel], clips: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Logits cosine and top-1 agreement of the `.tflite` against each SavedModel reference.

    Both run on the same clips `(N, T, H, W, 3)`; a frame-stacked `.tflite` (built with its
    `clip_shape`) stacks their frames itself.
    """
    if not clips:
        return {}
    video = np.concatenate([_as_input(c, tflite.clip_shape) for c in clips], axis=0)
    logits = tflite(video)
    result: dict[str, Any] = {}
    for name, reference in references.items():
        result[name] = {
            "saved_model": reference.path,
            "num_clips": len(clips),
            **compare_logits(logits, reference(video)),
        }
    return result


def per_layer_errors(
    model: ServingModel,
    source: str,
    tflite_bytes: bytes,
    representative: ClipSource,
    debug_clips: Sequence[np.ndarray],
    max_rmse_steps: float,
    max_relative_rmse: float,
    input_layout: str = "clip",
) -> dict[str, Any]:
    """Per-layer error section: QuantizationDebugger for PTQ, tensor matching for QAT."""
    input_shape = layout_input_shape(model.clip_shape, input_layout)
    clips = [_as_input(clip, input_shape) for clip in debug_clips]
    budget = {"max_rmse_steps": max_rmse_steps, "max_relative_rmse": max_relative_rmse}
    note = None
    if source == "ptq":
        try:
            converter = make_converter(
                model, "int8", representative, float_io=True, input_layout=input_layout
            )
            layers = layer_errors_lib.debugger_layer_errors(converter, clips)
            return layer_errors_lib.layer_error_report(
                layers,
                "quantization_debugger",
                "float op on dequantized int8 inputs",
                len(clips),
                **budget,
            )
        except (ValueError, RuntimeError) as error:  # fall back rather than lose the report
            note = f"QuantizationDebugger failed ({error}); fell back to tensor matching"
    float_bytes = convert_saved_model(model, "float32", input_layout=input_layout)
    layers = layer_errors_lib.tensor_match_layer_errors(tflite_bytes, float_bytes, clips)
    reference = "float .tflite of the same SavedModel" + (
        " (FakeQuant kept as float QUANTIZE/DEQUANTIZE)" if source == "qat" else ""
    )
    report = layer_errors_lib.layer_error_report(
        layers, "tensor_match", reference, len(clips), **budget
    )
    if note:
        report["note"] = note
    return report


def export_tflite(
    model: ServingModel,
    mode: str,
    output: str,
    source: str,
    labels: Sequence[str],
    representative: ClipSource | None,
    test_clips: Sequence[np.ndarray],
    references: dict[str, ServingModel],
    normalization: dict[str, Any] | None = None,
    frame_stride: int = 1,
    num_debug_clips: int = 8,
    num_threads: int | None = None,
    max_rmse_steps: float = layer_errors_lib.DEFAULT_MAX_RMSE_STEPS,
    max_relative_rmse: float = layer_errors_lib.DEFAULT_MAX_RELATIVE_RMSE,
    measure_latency: bool = True,
    input_layout: str = "clip",
    stored_frame_size: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Converts, writes `.tflite` + sidecar + report, and returns the report.

    The `.tflite` carries the sidecar's content as its kvid metadata (`litert.read_metadata`),
    so the file alone is enough to use it; the sidecar JSON stays for people and older tools.

    Args:
      model: the SavedModel to convert.
      mode: "int8", "float16" or "dynamic_range".
      output: the `.tflite` path; the sidecar and report go next to it.
      source: "qat", "ptq" (int8) or "float"; recorded, and picks the per-layer method.
      labels: class names, index = label.
      representative: calibration clips from the training split (int8 only).
      test_clips: clips from the test split for fidelity; the first `num_debug_clips` also feed
        the per-layer report.
      references: SavedModels to compare logits against, by name ("float", "qat").
      normalization: informative (already inside the model).
      input_layout: "clip" `(1, T, H, W, 3)` or "frame_stacked" `(1, T * H, W, 3)` (see the
        module docstring); `representative` and `test_clips` stay clips `(T, H, W, 3)`.

    The report's `audit.passed` is the int8 contract (None for other modes); callers decide
    whether to fail on it (`check_int8`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    _check_layout(input_layout)
    num_outputs = model.signature.structured_outputs[model.output_key].shape[-1]
    if num_outputs is not None and len(labels) != num_outputs:
        raise ValueError(f"{len(labels)} labels for {model.path}, which has {num_outputs} outputs")
    start = time.perf_counter()
    tflite_bytes = convert_saved_model(model, mode, representative, input_layout)
    conversion_seconds = time.perf_counter() - start
    stem = os.path.splitext(output)[0]
    tflite = TFLiteModel(tflite_bytes, num_threads=num_threads, clip_shape=model.clip_shape)
    side = sidecar(
        tflite, mode, source, model.path, labels, normalization, frame_stride, stored_frame_size
    )
    # Embedded without the SavedModel's path: that names a folder on this machine only.
    tflite_bytes = embed_metadata(
        tflite_bytes, {k: v for k, v in side.items() if k != "saved_model"}
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "wb") as f:
        f.write(tflite_bytes)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(side, f, indent=1)

    audit = audit_lib.audit_model(tflite_bytes)
    problems = audit_lib.int8_problems(audit) if mode == "int8" else []
    float_ops = [op for op in audit["ops"] if op["float"]]
    audit_section = {
        "num_ops": audit["num_ops"],
        "counts": audit["counts"],
        "ops": [
            {"index": op["index"], "name": op["name"], "version": op["version"]}
            for op in audit["ops"]
        ],
        "num_float_ops": len(float_ops),
        "float_ops": [audit_lib.describe_op(op) for op in float_ops],
        "int8_problems": problems,
        "passed": (not problems) if mode == "int8" else None,
    }

    layers = None
    if mode == "int8":
        debug_clips = list(test_clips[:num_debug_clips])
        if not debug_clips and representative is not None:
            debug_clips = [c for _, c in zip(range(num_debug_clips), representative())]
        layers = per_layer_errors(
            model,
            source,
            tflite_bytes,
            representative,
            debug_clips,
            max_rmse_steps,
            max_relative_rmse,
            input_layout,
        )
    latency = (
        {str(n): TFLiteModel(tflite_bytes, num_threads=n).latency() for n in LATENCY_THREADS}
        if measure_latency
        else {}
    )
    report = {
        "mode": mode,
        "source": source,
        "saved_model": os.path.abspath(model.path),
        "tflite": os.path.abspath(output),
        "sidecar": os.path.abspath(stem + ".json"),
        "size_bytes": len(tflite_bytes),
        "conversion_seconds": conversion_seconds,
        "signature": tflite.signature_list(),
        "input": {**side["input"], "activations_over_3_dims": activations_over_3_dims(audit)},
        "output": side["output"],
        "audit": audit_section,
        "layer_errors": layers,
        "fidelity": fidelity(tflite, references, list(test_clips)),
        "latency_ms": latency,
    }
    report["checks"] = contract_checks(report)
    with open(stem + ".report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def activations_over_3_dims(audit: dict[str, Any]) -> list[str]:
    """Activation tensors with more than 3 dimensions above 1 (the Edge TPU takes none), as
    "OP (op i): name [shape]", the model input first. Weights are not activations."""
    found: dict[int, str] = {}
    for tensor in audit["inputs"]:
        if sum(d > 1 for d in tensor["shape"]) > 3:
            found[tensor["index"]] = f"input: {tensor['name']} {tensor['shape']}"
    for op in audit["ops"]:
        for tensor in op["outputs"]:
            if sum(d > 1 for d in tensor["shape"]) > 3 and tensor["index"] not in found:
                found[tensor["index"]] = (
                    f"{op['name']} (op {op['index']}): {tensor['name']} {tensor['shape']}"
                )
    return list(found.values())


def contract_checks(report: dict[str, Any]) -> dict[str, bool]:
    """The parts of the int8 contract (docs/design.md) that conversion can check (int8 only).

    Only the first makes kvid-convert fail; the cosine is a measurement to read (kvid-eval checks
    accuracy). The per-layer error report is information, not a check: with QAT it measures the
    error accumulated through the graph, not each layer's own rounding (tflite/layer_errors.py).
    """
    if report["mode"] != "int8":
        return {}
    checks = {"int8_io_and_zero_float_ops": bool(report["audit"]["passed"])}
    if "float" in report["fidelity"]:
        checks[f"cosine_mean_vs_float>={MIN_COSINE}"] = (
            report["fidelity"]["float"]["cosine_mean"] >= MIN_COSINE
        )
    return checks


def summary(report: dict[str, Any]) -> str:
    """A few human lines about a conversion report."""
    audit = report["audit"]
    lines = [
        f"kvid-convert: {report['mode']} ({report['source']}) -> {report['tflite']} "
        f"({report['size_bytes'] / 1024:.1f} KiB, "
        f"converted in {report['conversion_seconds']:.1f} s)",
        f"  I/O {report['input']['dtype']} -> {report['output']['dtype']}; "
        f"{audit['num_ops']} ops: {audit_lib.format_counts(audit)}",
        f"  input {report['input']['input_layout']} {report['input']['shape']}; "
        f"{_describe_high_rank(report['input']['activations_over_3_dims'])}",
        f"  float ops: {audit['num_float_ops']}"
        + (
            ""
            if audit["passed"] is None
            else f"; int8 audit {'PASSED' if audit['passed'] else 'FAILED'}"
        ),
    ]
    layers = report["layer_errors"]
    if layers:
        worst = layers["top_offenders"][0] if layers["top_offenders"] else None
        budget = layers["budget"]
        line = (
            f"  per-layer ({layers['method']}, {layers['num_clips']} clips, "
            f"{layers['num_layers']} layers)"
        )
        if worst:
            line += (
                f": worst {worst['op']} {worst['rmse_steps']:.2f} steps, "
                f"relative {worst['relative_rmse']:.3f}"
            )
        line += (
            f"; {len(layers['over_budget'])} above rmse {budget['max_rmse_steps']} steps and "
            f"relative {budget['max_relative_rmse']} (information; see the report)"
        )
        lines.append(line)
        if layers["method"] == "tensor_match" and report["source"] == "qat":
            lines.append(
                f"  QAT: {len(layers.get('without_fake_quant', []))} of "
                f"{layers.get('num_rounding_points', 0)} int8 rounding points have no FakeQuant "
                "in the QAT model (ranges calibrated, rounding not trained against)"
            )
    for name, result in report["fidelity"].items():
        lines.append(
            f"  vs {name} SavedModel on {result['num_clips']} test clips: cosine mean "
            f"{result['cosine_mean']:.4f} min {result['cosine_min']:.4f}, top-1 agreement "
            f"{100 * result['top1_agreement']:.1f}%"
        )
    for check, passed in report.get("checks", {}).items():
        lines.append(f"  {'PASS' if passed else 'FAIL'} {check}")
    if report["latency_ms"]:
        lines.append(
            "  latency: "
            + ", ".join(f"{ms:.2f} ms ({n} thr)" for n, ms in report["latency_ms"].items())
        )
    return "\n".join(lines)


def _describe_high_rank(tensors: Sequence[str]) -> str:
    if not tensors:
        return "no activation has more than 3 dimensions above 1"
    return f"{len(tensors)} activation(s) with more than 3 dimensions above 1, first {tensors[0]}"


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Defines kvid-convert's flags and returns their names. Called by `run()` only, so that
    importing this module (or kvid_tflite.evaluate, which shares flag names) never touches the
    global flags."""
    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "workdir", None, "Training workdir (model.json, export/float, export/qat).", **fv
    )
    flags.DEFINE_string("saved_model", None, "SavedModel to convert (instead of --workdir).", **fv)
    flags.DEFINE_string(
        "data_dir",
        None,
        "Dataset for calibration/test clips (default: the workdir's; required with --saved_model).",
        **fv,
    )
    flags.DEFINE_string(
        "labels",
        None,
        "Labels file (text or JSON) for --saved_model; default: the dataset's classes.",
        **fv,
    )
    flags.DEFINE_integer(
        "frame_stride", None, "Frame stride (default: model.json's, else 1).", **fv
    )
    flags.DEFINE_bool("int8", False, "Full-integer int8 (int8 I/O, audited).", **fv)
    flags.DEFINE_bool("float16", False, "float16 weights, float32 compute and I/O.", **fv)
    flags.DEFINE_bool("dynamic_range", False, "int8 weights, float activations and I/O.", **fv)
    flags.DEFINE_bool(
        "ptq",
        False,
        "--int8: post-training quantization of export/float even "
        "when export/qat exists (output model_int8_ptq.tflite).",
        **fv,
    )
    flags.DEFINE_enum(
        "input_layout",
        "clip",
        INPUT_LAYOUTS,
        "Input of the .tflite: clip (1, T, H, W, 3), or frame_stacked (1, T*H, W, 3): the "
        "frames stacked along the height axis, the Edge TPU form (output name gets a "
        "_frame_stacked suffix).",
        **fv,
    )
    flags.DEFINE_bool(
        "edgetpu",
        False,
        "With --int8: the Coral Edge TPU form (frame-stacked input, batch 1, int8 I/O; output "
        "model_int8_edgetpu.tflite), its rule check and, when edgetpu_compiler is on PATH, its "
        "compilation, reported in <name>.edgetpu.json and .edgetpu.md.",
        **fv,
    )
    flags.DEFINE_string(
        "output", None, "Output .tflite (default WORKDIR/export/model_{mode}.tflite).", **fv
    )
    flags.DEFINE_integer("num_calibration_clips", 100, "Training clips for int8 calibration.", **fv)
    flags.DEFINE_integer(
        "num_test_clips", 50, "Test clips for the logits cosine vs SavedModel.", **fv
    )
    flags.DEFINE_integer("num_debug_clips", 8, "Test clips for the per-layer error report.", **fv)
    flags.DEFINE_float(
        "max_rmse_steps",
        layer_errors_lib.DEFAULT_MAX_RMSE_STEPS,
        "Per-layer budget: RMS error in quantization steps.",
        **fv,
    )
    flags.DEFINE_float(
        "max_relative_rmse",
        layer_errors_lib.DEFAULT_MAX_RELATIVE_RMSE,
        "Per-layer budget: RMS error / RMS of the float tensor.",
        **fv,
    )
    flags.DEFINE_integer("num_threads", None, "Interpreter threads for the fidelity runs.", **fv)
    return sorted(set(flag_values) - before)


def load_clip_sources(
    data_dir: str,
    clip_shape: Sequence[int],
    frame_stride: int,
    num_calibration_clips: int,
    num_test_clips: int,
) -> tuple[ClipSource, list[np.ndarray]]:
    """Calibration clips (training split, re-iterable) and clips of the held-out split (test,
    else val; none when the dataset has neither) from the input pipeline."""
    from kvid.data import pipeline  # the CLI's glue; library functions take arrays
    from kvid.data.dataset import held_out_split

    config = pipeline.InputConfig(
        data_dir=data_dir,
        num_frames=int(clip_shape[0]),
        image_size=(int(clip_shape[1]), int(clip_shape[2])),
        batch_size=1,
        frame_stride=frame_stride,
        deterministic=True,
    )

    def representative() -> Iterable[np.ndarray]:
        clips = pipeline.representative_clips(config, split="train", count=num_calibration_clips)
        return (np.asarray(clip) for clip in clips)

    split = held_out_split(data_dir)
    test_clips = (
        [
            np.asarray(clip)
            for clip in pipeline.representative_clips(config, split=split, count=num_test_clips)
        ]
        if split
        else []
    )
    return representative, test_clips


def _stored_frame_size(data_dir: str) -> list[int] | None:
    """The frame size kvid-prepare stored the dataset at (None: unknown or mixed sizes)."""
    from kvid.data.dataset import DATASET_INFO, read_dataset_info

    if not os.path.exists(os.path.join(data_dir, DATASET_INFO)):
        return None
    return read_dataset_info(data_dir).get("frame_size")


def _selected_mode(values: flags.FlagValues) -> str:
    selected = [mode for mode in MODES if getattr(values, mode)]
    if len(selected) != 1:
        raise app.UsageError(
            "pass exactly one of --int8, --float16, --dynamic_range "
            f"(got {', '.join('--' + m for m in selected) or 'none'})"
        )
    return selected[0]


def convert_from_flags(values: flags.FlagValues) -> int:
    """The command, on parsed flags; returns the exit code (1: int8 audit failed).

    Raises:
      UsageError, ValueError, OSError: bad flags or input, named in the message.
    """
    mode = _selected_mode(values)
    if bool(values.workdir) == bool(values.saved_model):
        raise app.UsageError("pass either --workdir or --saved_model (with --data_dir)")
    if values.ptq and mode != "int8":
        raise app.UsageError("--ptq only applies to --int8")
    if values.saved_model and not values.data_dir:
        raise app.UsageError("--saved_model needs --data_dir (calibration and test clips)")
    input_layout = values.input_layout
    if values.edgetpu:
        if mode != "int8":
            raise app.UsageError("--edgetpu needs --int8 (the Edge TPU runs int8 models only)")
        if values["input_layout"].present and input_layout != "frame_stacked":
            raise app.UsageError(
                "--edgetpu takes --input_layout=frame_stacked only (the Edge TPU takes no "
                "tensor with 4 dimensions above 1)"
            )
        input_layout = "frame_stacked"
    # Everything a user gave is checked before TensorFlow loads.
    workdir = load_workdir(values.workdir) if values.workdir else None
    if workdir is not None:
        workdir.require_float()
        data_dir = values.data_dir or workdir.require_data_dir()
    else:
        data_dir = values.data_dir
    from kvid_tflite.saved_model import load_serving_model

    references: dict[str, ServingModel] = {}
    if workdir is not None:
        clip_shape = workdir.input_shape
        float_model = load_serving_model(workdir.require_float(), clip_shape)
        references["float"] = float_model
        model, source = float_model, ("ptq" if mode == "int8" else "float")
        if mode == "int8" and workdir.has_qat and not values.ptq:
            model = load_serving_model(workdir.qat_saved_model, clip_shape)
            references["qat"], source = model, "qat"
        labels = list(workdir.labels)
        normalization = workdir.normalization
        frame_stride = values.frame_stride or workdir.frame_stride
        export_dir = workdir.export_dir
    else:
        model = load_serving_model(values.saved_model)
        clip_shape = model.clip_shape
        source = ("qat" if model.has_fake_quant() else "ptq") if mode == "int8" else "float"
        references[source if source == "qat" else "float"] = model
        if values.labels:
            labels = read_labels(values.labels)
        else:
            from kvid.data.dataset import read_dataset_info

            labels = list(read_dataset_info(data_dir)["classes"])
        normalization = None
        frame_stride = values.frame_stride or 1
        export_dir = os.path.dirname(os.path.abspath(values.saved_model.rstrip("/")))

    name = f"model_{mode}" + ("_ptq" if values.ptq else "")
    if values.edgetpu:
        name += "_edgetpu"
    elif input_layout != "clip":  # keeps the clip-layout export beside it
        name += f"_{input_layout}"
    output = values.output or os.path.join(export_dir, name + ".tflite")
    representative, test_clips = load_clip_sources(
        data_dir,
        clip_shape,
        frame_stride,
        values.num_calibration_clips if mode == "int8" else 0,
        values.num_test_clips,
    )
    report = export_tflite(
        model,
        mode,
        output,
        source,
        labels,
        representative if mode == "int8" else None,
        test_clips,
        references,
        normalization=normalization,
        frame_stride=frame_stride,
        num_debug_clips=values.num_debug_clips,
        num_threads=values.num_threads,
        max_rmse_steps=values.max_rmse_steps,
        max_relative_rmse=values.max_relative_rmse,
        input_layout=input_layout,
        stored_frame_size=_stored_frame_size(data_dir),
    )
    print(summary(report))
    if values.edgetpu:
        from kvid_tflite import edgetpu_compiler

        edgetpu = edgetpu_compiler.edgetpu_report(output)
        print("\n".join(edgetpu_compiler.summary_lines(edgetpu)))
        compiler = edgetpu["compiler"]
        if compiler["available"] and not compiler["compiled"]:
            print(
                f"FAILURE: {edgetpu_compiler.COMPILER} did not compile {output}: "
                f"{compiler['failure']} (see {edgetpu['markdown']})",
                file=sys.stderr,
            )
            return 1
    if mode == "int8" and not report["audit"]["passed"]:
        num_float = report["audit"]["num_float_ops"]
        print(
            f"FAILURE: int8 audit of {output} ({num_float} float op(s)): "
            f"{report['audit']['int8_problems'][0]}",
            file=sys.stderr,
        )
        return 1
    return 0


def run() -> None:
    """Console-script entry point (`kvid-convert`)."""
    kvid.cli.run_tool(
        "kvid-convert", __doc__, define_flags, lambda argv: convert_from_flags(flags.FLAGS)
    )


if __name__ == "__main__":
    run()
