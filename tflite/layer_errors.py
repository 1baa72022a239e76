"""Per-layer int8-vs-float error report.

Two ways to measure, one record format:

* PTQ (`debugger_layer_errors`): TFLite's `QuantizationDebugger` builds a debug model with a
  NumericVerify op after every quantized op; the float op there is fed the *dequantized int8
  inputs*, so each layer's error is its own (layer-local): weight rounding, output rounding and
  clipping, not the error it inherits from upstream. kvid runs that model with LiteRT itself
  (see `debugger_layer_errors` for why not `QuantizationDebugger.run()`).
* QAT (`tensor_match_layer_errors`): the debugger cannot instrument a QAT model (its
  quantization comes from the FakeQuant ops, so the calibrate-only model it builds has no
  NumericVerify ops: "Please check if the quantized model is in debug mode"). Instead the int8
  `.tflite` and a float `.tflite` of the same SavedModel (FakeQuant kept as float
  QUANTIZE/DEQUANTIZE pairs, i.e. the arithmetic QAT trained against) run side by side with all
  tensors preserved, and tensors are matched by name and shape. Because the QAT float twin
  rounds at the same points as the int8 model, upstream errors mostly cancel and the measured
  error stays close to layer-local (0.08-0.29 steps on toy models). The same matching also serves
  as the fallback for PTQ if the debugger fails; there the float twin never rounds, errors
  accumulate end to end, and the step budget is harsher (toy model: 1.49 steps at the logits
  where the debugger measured 0.79 layer-locally, relative error 0.010 vs 0.006).

Metrics per quantized tensor, each averaged over the debug clips:
  rmse_steps      RMS(float - dequantized int8) / scale, in quantization steps.
  relative_rmse   RMS(error) / RMS(float): noise-to-signal ratio.
  max_abs_steps   max |error| / scale.
  clipped_fraction  share of elements whose float value lies outside the int8 range by more
                  than half a step (saturation).

Budget (`DEFAULT_MAX_RMSE_STEPS`, `DEFAULT_MAX_RELATIVE_RMSE`), a layer is over budget when
either is exceeded:
  * rmse_steps <= 1.0. Rounding alone gives 1/sqrt(12) = 0.29 steps; layer-local errors of clean
    PTQ toy models measured 0.2-0.8 steps (output rounding plus weight rounding, largest on a
    final FULLY_CONNECTED with a narrow output range). One full step RMS is more than three times
    the rounding floor: it means clipping (a saturated range), weights that per-tensor int8
    cannot represent, or arithmetic the int8 kernels do not reproduce.
  * relative_rmse <= 0.1 (20 dB signal-to-noise). RMSE in steps cannot see a tensor whose scale
    is inflated by outliers or fixed too coarse (the int8 softmax's 1/256, docs/design.md
    section 7):
    its error stays below a step while the signal shrinks to a few steps. A well-used 8-bit range
    sits near 0.01; the broken softmax of docs/design.md section 7 is at 1.0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kvid_tflite.litert import TFLiteModel, dequantize

DEFAULT_MAX_RMSE_STEPS = 1.0
DEFAULT_MAX_RELATIVE_RMSE = 0.1
METRIC_NAMES = ("rmse_steps", "relative_rmse", "max_abs_steps", "clipped_fraction")


def tensor_error_metrics(
    float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int
) -> dict[str, float]:
    """Error of one quantized tensor against its float counterpart (see module docstring)."""
    reference = np.asarray(float_values, np.float64)
    quantized = np.asarray(quantized)
    error = reference - dequantize(quantized, scale, zero_point).astype(np.float64)
    rmse = float(np.sqrt(np.mean(error**2)))
    signal = float(np.sqrt(np.mean(reference**2)))
    info = np.iinfo(quantized.dtype)
    low = (info.min - zero_point) * scale - scale / 2
    high = (info.max - zero_point) * scale + scale / 2
    return {
        "rmse_steps": rmse / scale,
        # A zero signal with zero error is exact; with error, the ratio is unbounded.
        "relative_rmse": (rmse / signal) if signal > 0 else (0.0 if rmse == 0 else math.inf),
        "max_abs_steps": float(np.max(np.abs(error))) / scale,
        "clipped_fraction": float(np.mean((reference < low) | (reference > high))),
    }


def _debug_model(converter: Any, clips: Sequence[np.ndarray]) -> bytes:
    """The converter's model, calibrated and instrumented by QuantizationDebugger: a
    NumericVerify op after every quantized op, fed by (int8 output, float op on the dequantized
    int8 inputs)."""
    import tensorflow as tf  # heavy; only the PTQ report needs it

    with warnings.catch_warnings():
        # The debugger builds TF's own (deprecated) tf.lite.Interpreter internally; it is never
        # invoked here, so its deprecation warning is noise.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([clip] for clip in clips)
        )
        return debugger.get_debug_quantized_model()


def _preserving_model(model: bytes) -> TFLiteModel:
    with warnings.catch_warnings():
        # LiteRT warns that preserving all tensors is for debugging: that is what this is.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        return TFLiteModel(model, preserve_all_tensors=True)


def _measure(
    pairs: Sequence[tuple[str, str, dict[str, Any], int]],
    quantized: TFLiteModel,
    reference: TFLiteModel,
    clips: Sequence[np.ndarray],
) -> list[dict[str, Any]]:
    """Metrics of (op name, tensor name, quantized tensor detail, float tensor index) tuples,
    averaged over clips. `reference` may be `quantized` itself (a debug model holds both)."""
    per_clip: list[list[dict[str, float]]] = [[] for _ in pairs]
    for clip in clips:
        clip = np.asarray(clip, np.float32)
        quantized.invoke_raw(quantized.quantize_input(clip))
        if reference is not quantized:
            reference.invoke_raw(reference.quantize_input(clip))
        for slot, (_, _, detail, float_index) in enumerate(pairs):
            scale, zero_point = detail["quantization"]
            per_clip[slot].append(
                tensor_error_metrics(
                    reference.get_tensor(float_index),
                    quantized.get_tensor(detail["index"]),
                    float(scale),
                    int(zero_point),
                )
            )
    records = []
    for (op_name, tensor_name, detail, _), metrics in zip(pairs, per_clip):
        scale, zero_point = detail["quantization"]
        record: dict[str, Any] = {
            "tensor": tensor_name,
            "op": op_name,
            "tensor_index": int(detail["index"]),
            "scale": float(scale),
            "zero_point": int(zero_point),
            "num_elements": int(np.prod(detail["shape"])),
        }
        for name in METRIC_NAMES:
            values = [m[name] for m in metrics]
            record[name] = float(np.mean(values)) if values else math.nan
        records.append(record)
    return records


def debugger_layer_errors(
    converter: Any, debug_clips: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """Layer-local errors of a PTQ model, from `tf.lite.experimental.QuantizationDebugger`'s
    instrumented model.

    The debugger builds the instrumented model; kvid runs it itself with LiteRT, without delegates
    and with every tensor preserved. `QuantizationDebugger.run()` is not used: it invokes TF's
    interpreter with the default XNNPACK delegate, whose fused partitions never write their
    intermediate int8 tensors back, so it reads stale values. Measured on a kvid Mobile-Former
    smoke model: a rank-5 int8 BATCH_MATMUL read 56 steps RMS off through `run()` and 0.28 steps
    with the delegate disabled (numpy on the dequantized inputs agrees with 0.28).

    Args:
      converter: a fresh `tf.lite.TFLiteConverter` set up for full-integer PTQ (optimizations,
        representative dataset, TFLITE_BUILTINS_INT8) with FLOAT32 inference input/output types:
        the debugger refuses integer I/O. It is consumed (converted once).
      debug_clips: float32 clips `(1, T, H, W, 3)`.

    Returns:
      One record per quantized op output, in execution order: tensor (its name in the deployed
      model), op, tensor_index (in the instrumented model), scale, zero_point, num_elements and
      the METRIC_NAMES.

    Raises:
      ValueError: the converter produced no NumericVerify ops (e.g. a QAT model).
    """
    clips = [np.asarray(clip, np.float32) for clip in debug_clips]
    model = _preserving_model(_debug_model(converter, clips))
    details = {int(d["index"]): d for d in model.tensor_details()}
    ops = model.ops_details()
    producer = {int(i): op["op_name"] for op in ops for i in op["outputs"]}
    pairs = []
    for op in ops:
        if op["op_name"] == "NumericVerify":
            quantized_index, float_index = (int(i) for i in op["inputs"])
            # The instrumented model renames the quantized tensor (a "1" is appended); the float
            # twin keeps the original name, the one the deployed .tflite uses.
            name = details[float_index]["name"]
            op_name = producer.get(quantized_index, "?")
            pairs.append((op_name, name, details[quantized_index], float_index))
    if not pairs:
        raise ValueError("the debug model has no NumericVerify ops (is the model already QAT?)")
    return _measure(pairs, model, model, clips)


def tensor_match_layer_errors(
    quantized_model: bytes, float_model: bytes, clips: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """End-to-end errors of every quantized op output, matched by name to a float `.tflite`.

    Args:
      quantized_model: the int8 `.tflite` bytes (int8 or float I/O).
      float_model: a float `.tflite` of the same SavedModel (same tensor names).
      clips: float32 clips `(1, T, H, W, 3)`.

    Returns:
      One record per matched tensor, in execution order: tensor, op, tensor_index, scale,
      zero_point, num_elements and the METRIC_NAMES. Quantized tensors without a float twin
      are skipped.
    """
    quantized = _preserving_model(quantized_model)
    reference = _preserving_model(float_model)
    float_by_name: dict[str, list[dict[str, Any]]] = {}
    for detail in reference.tensor_details():
        if np.dtype(detail["dtype"]).kind == "f":
            float_by_name.setdefault(detail["name"], []).append(detail)
    quant_details = {int(d["index"]): d for d in quantized.tensor_details()}

    pairs = []
    for op in quantized.ops_details():
        for index in op["outputs"]:
            detail = quant_details[int(index)]
            scale, _ = detail["quantization"]
            if np.dtype(detail["dtype"]).kind not in "iu" or not scale:
                continue
            twins = [
                d
                for d in float_by_name.get(detail["name"], [])
                if list(d["shape"]) == list(detail["shape"])
            ]
            if len(twins) == 1:  # an ambiguous name is skipped rather than guessed
                pairs.append((op["op_name"], detail["name"], detail, int(twins[0]["index"])))
    records = _measure(pairs, quantized, reference, [np.asarray(c, np.float32) for c in clips])
    modelled = _fake_quant_reach(reference)
    for record, (op_name, _, _, float_index) in zip(records, pairs):
        # Data-movement ops keep their input's scale: int8 does not round there.
        record["fake_quant_in_reference"] = None if op_name in LAYOUT_OPS else modelled(float_index)
    return records


# Ops whose int8 output keeps the input's scale and zero point (pure data movement).
LAYOUT_OPS = frozenset(
    {
        "RESHAPE", "TRANSPOSE", "PAD", "PADV2", "STRIDED_SLICE", "SLICE", "SQUEEZE",
        "EXPAND_DIMS", "GATHER", "SPLIT", "SPLIT_V", "UNPACK", "TILE", "BROADCAST_TO",
        "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND",
        "MAX_POOL_2D", "REDUCE_MAX",
    }
)  # fmt: skip


def _fake_quant_reach(reference: TFLiteModel) -> Callable[[int], bool]:
    """In the float twin of a QAT model a FakeQuant is a QUANTIZE -> DEQUANTIZE pair. A tensor
    is modelled when it reaches a QUANTIZE through data-movement ops only (kvid layers reshape
    between a conv and its output FakeQuant). A quantized tensor that is not modelled is a point
    where int8 rounds with a calibrated range but QAT never trained against that rounding:
    docs/design.md section 7 asks for a fake-quant node at each such point."""
    consumers: dict[int, list[dict[str, Any]]] = {}
    fake_quant_outputs = set()
    for op in reference.ops_details():
        for index in op["inputs"]:
            consumers.setdefault(int(index), []).append(op)
        if op["op_name"] == "DEQUANTIZE":
            fake_quant_outputs.update(int(o) for o in op["outputs"])

    def modelled(index: int) -> bool:
        if index in fake_quant_outputs:  # matched the FakeQuant's own output (model logits)
            return True
        frontier, seen = [index], set()
        while frontier:
            tensor = frontier.pop()
            seen.add(tensor)
            for op in consumers.get(tensor, []):
                if op["op_name"] == "QUANTIZE":
                    return True
                if op["op_name"] in LAYOUT_OPS:
                    frontier.extend(int(o) for o in op["outputs"] if int(o) not in seen)
        return False

    return modelled


def check_budget(
    layers: Sequence[dict[str, Any]],
    max_rmse_steps: float = DEFAULT_MAX_RMSE_STEPS,
    max_relative_rmse: float = DEFAULT_MAX_RELATIVE_RMSE,
) -> list[dict[str, Any]]:
    """Layers over budget, each with a `reasons` list; empty when every layer is within it."""
    over = []
    for layer in layers:
        reasons = []
        # `not <=` so that a NaN metric (no data) counts as over budget instead of passing.
        if not layer["rmse_steps"] <= max_rmse_steps:
            reasons.append(f"rmse {layer['rmse_steps']:.2f} steps > {max_rmse_steps}")
        if not layer["relative_rmse"] <= max_relative_rmse:
            reasons.append(f"relative rmse {layer['relative_rmse']:.3f} > {max_relative_rmse}")
        if reasons:
            over.append({"tensor": layer["tensor"], "op": layer["op"], "reasons": reasons})
    return over


def _badness(layer: dict[str, Any], max_rmse_steps: float, max_relative_rmse: float) -> float:
    """How far a layer is from its budget (1.0 = at budget), for ranking offenders."""
    values = (
        layer["rmse_steps"] / max_rmse_steps,
        layer["relative_rmse"] / max_relative_rmse,
    )
    return max((v if not math.isnan(v) else math.inf) for v in values)


def layer_error_report(
    layers: Sequence[dict[str, Any]],
    method: str,
    reference: str,
    num_clips: int,
    max_rmse_steps: float = DEFAULT_MAX_RMSE_STEPS,
    max_relative_rmse: float = DEFAULT_MAX_RELATIVE_RMSE,
    top: int = 10,
) -> dict[str, Any]:
    """The JSON section: all layers, top offenders, budget and the layers over it."""
    over = check_budget(layers, max_rmse_steps, max_relative_rmse)
    ranked = sorted(layers, key=lambda layer: -_badness(layer, max_rmse_steps, max_relative_rmse))
    report = {
        "method": method,
        "reference": reference,
        "num_clips": num_clips,
        "budget": {"max_rmse_steps": max_rmse_steps, "max_relative_rmse": max_relative_rmse},
        "num_layers": len(layers),
        "passed": not over and bool(layers),
        "over_budget": over,
        "top_offenders": [
            {key: layer[key] for key in ("tensor", "op", "scale", *METRIC_NAMES)}
            for layer in ranked[:top]
        ],
        "layers": list(layers),
    }
    if layers and "fake_quant_in_reference" in layers[0]:
        report["without_fake_quant"] = [
            layer["tensor"] for layer in layers if layer["fake_quant_in_reference"] is False
        ]
        report["num_rounding_points"] = sum(
            layer["fake_quant_in_reference"] is not None for layer in layers
        )
    return report
