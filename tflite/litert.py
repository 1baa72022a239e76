"""The one module that touches the LiteRT runtime (`ai_edge_litert`).

`tf.lite.Interpreter` is deprecated in TF 2.21 (it warns it is "scheduled for deletion"), so every
`.tflite` that kvid runs goes through `TFLiteModel`, and every read of the flatbuffer goes through
`read_operator_codes`. Swapping the runtime later means editing this file only.

Input layouts (`INPUT_LAYOUTS`): a `.tflite` takes either the clip `(1, T, H, W, 3)` ("clip") or
the frame-stacked image `(1, T * H, W, 3)` ("frame_stacked", the Edge TPU form: a 5-D input has 4
dimensions above 1), where frame t fills rows `t * H` to `(t + 1) * H - 1`, i.e. exactly
`clip.reshape(1, T * H, W, 3)` of the time-major clip. kvid-convert records the layout and the
clip shape in the sidecar `<name>.json`; `read_input_layout` reads them back, and a `TFLiteModel`
given the clip shape takes clips in either layout.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

# Builtin operator code -> name ("CONV_2D"), from the flatbuffer schema's enum class.
_BUILTIN_NAMES = {
    value: name
    for name, value in vars(schema.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(value, int)
}


INPUT_LAYOUTS = ("clip", "frame_stacked")
# The Edge TPU runtime's delegate library (Coral's libedgetpu, or a build of it).
EDGETPU_LIBRARY = "libedgetpu.so.1"


def stack_frames(video: np.ndarray) -> np.ndarray:
    """Clips `(N, T, H, W, C)` -> frame-stacked images `(N, T * H, W, C)` (frame t on rows
    `t * H` to `(t + 1) * H - 1`): a reshape of the time-major clip, no data moves."""
    video = np.asarray(video)
    if video.ndim != 5:
        raise ValueError(f"expected clips (N, T, H, W, C), got shape {video.shape}")
    batch, frames, height, width, channels = video.shape
    return video.reshape(batch, frames * height, width, channels)


def layout_input_shape(clip_shape: Sequence[int], input_layout: str) -> tuple[int, ...]:
    """The model input of one clip `(T, H, W, C)` in `input_layout`, without the batch dim."""
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"unknown input_layout {input_layout!r}; expected one of {INPUT_LAYOUTS}")
    frames, height, width, channels = (int(d) for d in clip_shape)
    if input_layout == "frame_stacked":
        return (frames * height, width, channels)
    return (frames, height, width, channels)


def sidecar_path(tflite_path: str | os.PathLike) -> str:
    """Where kvid-convert writes a `.tflite`'s sidecar JSON: `<name>.json` beside it."""
    return os.path.splitext(os.fspath(tflite_path))[0] + ".json"


def read_sidecar(tflite_path: str | os.PathLike) -> dict[str, Any] | None:
    """A `.tflite`'s sidecar JSON (written by kvid-convert), or None when there is none.

    Raises:
      ValueError: the sidecar is not a JSON object.
    """
    path = sidecar_path(tflite_path)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            side = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"sidecar {path} is not valid JSON: {error}") from error
    if not isinstance(side, dict):
        raise ValueError(f"sidecar {path} is not a JSON object")
    return side


def read_frame_stride(tflite_path: str | os.PathLike) -> int | None:
    """The frame stride the model was trained at, from its metadata or sidecar (None when not
    recorded)."""
    side = read_description(tflite_path) or {}
    stride = (side.get("input") or {}).get("frame_stride")
    return None if stride is None else int(stride)


def read_input_layout(tflite_path: str | os.PathLike) -> tuple[str, tuple[int, ...] | None]:
    """The input layout and clip shape `(T, H, W, 3)` recorded in a `.tflite`'s metadata (or,
    for older files, its sidecar).

    Returns ("clip", None) when neither records a layout (a sidecar written before layouts
    existed describes a clip-layout model).

    Raises:
      ValueError: the record is not valid JSON, or has an unknown layout or no clip shape.
    """
    path = os.fspath(tflite_path)
    side = read_description(tflite_path)
    if side is None:
        return "clip", None
    model_input = side.get("input") or {}
    layout = model_input.get("input_layout")
    if layout is None:
        return "clip", None
    if layout not in INPUT_LAYOUTS:
        raise ValueError(f"{path}: input_layout {layout!r} is not one of {INPUT_LAYOUTS}")
    try:
        height, width = (int(d) for d in model_input["image_size"])
        clip_shape = (int(model_input["num_frames"]), height, width, int(model_input["shape"][-1]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: input_layout {layout!r} without num_frames / image_size ({error})"
        ) from error
    return layout, clip_shape


def _integer_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """Affine-quantizes float values: `clip(round(x / scale) + zero_point)` in `dtype`."""
    low, high = _integer_range(np.dtype(dtype))
    quantized = np.round(np.asarray(values, np.float32) / scale) + zero_point
    return np.clip(quantized, low, high).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Inverse of `quantize`: `(q - zero_point) * scale` as float32."""
    return ((np.asarray(values).astype(np.float32) - zero_point) * scale).astype(np.float32)


# The name of kvid's entry in the flatbuffer's `metadata` list: a UTF-8 JSON object with what an
# app needs to feed the model and read it (what kvid-convert also writes to the sidecar JSON).
METADATA_NAME = "kvid"


def read_metadata(model_content: bytes) -> dict[str, Any] | None:
    """kvid's metadata embedded in a `.tflite` (`embed_metadata`), or None when there is none.

    Raises:
      ValueError: the bytes are not a TFLite flatbuffer, or the entry is not a JSON object.
    """
    if len(model_content) < 8 or model_content[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.Model.GetRootAs(model_content, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if (entry.Name() or b"").decode("utf-8", "replace") != METADATA_NAME:
            continue
        data = model.Buffers(entry.Buffer()).DataAsNumpy()
        try:
            value = json.loads(bytes(data).decode("utf-8"))
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"the model's {METADATA_NAME!r} metadata is not JSON: {error}"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(f"the model's {METADATA_NAME!r} metadata is not a JSON object")
        return value
    return None


def embed_metadata(model_content: bytes, info: dict[str, Any] | None) -> bytes:
    """The `.tflite` with `info` as its kvid metadata entry (replaced when present; None removes
    it).

    Tensors, ops, signatures and the other metadata entries (the converter's own) are kept; the
    interpreter ignores metadata, so the model computes exactly what it computed before. (The
    replaced entry's buffer stays in the file, unreferenced.)
    """
    import flatbuffers

    read_metadata(model_content)  # a TFLite flatbuffer, with readable kvid metadata if any
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_content), 0)
    model.metadata = [
        entry
        for entry in (model.metadata or [])
        if (entry.name or b"").decode("utf-8", "replace") != METADATA_NAME
    ]
    data = b""
    if info is not None:
        data = json.dumps(info, sort_keys=True).encode("utf-8")
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(model_content) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_description(tflite_path: str | os.PathLike) -> dict[str, Any] | None:
    """What kvid-convert recorded about a `.tflite`: its embedded metadata, else the sidecar JSON
    beside it (files converted before the metadata existed); None when there is neither."""
    with open(tflite_path, "rb") as f:
        content = f.read()
    try:
        embedded = read_metadata(content)
    except ValueError as error:
        raise ValueError(f"{os.fspath(tflite_path)}: {error}") from None
    return embedded if embedded is not None else read_sidecar(tflite_path)


def probe_delegate(
    library: str, timeout: float = 60.0, command: Sequence[str] | None = None
) -> str | None:
    """Loads a LiteRT delegate library in a separate process; None when that worked, else why not.

    A delegate built against another TFLite version can crash (segfault) the process that loads
    it, so it is tried in a child first. `command` replaces the child's command line (tests).
    """
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ai_edge_litert.interpreter import load_delegate\n"
        "load_delegate(sys.argv[1])\n"
    )
    argv = list(command) if command is not None else [sys.executable, "-c", code, library]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"loading {library} did not finish in {timeout:.0f} s"
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        return (
            f"loading {library} crashed the process (signal {-result.returncode}): the installed "
            "library does not match this LiteRT runtime"
        )
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit code {result.returncode}"
    return f"cannot load {library} ({reason}); is the Edge TPU runtime installed?"


def read_operator_codes(model_content: bytes) -> list[dict[str, Any]]:
    """Reads (name, version) of every operator of subgraph 0, in flatbuffer order.

    The interpreter's op details carry no op version, but the Edge TPU compiler rejects versions
    it does not know (docs/design.md section 3), so the audit reads them from the flatbuffer.
    """
    model = schema.Model.GetRootAs(model_content, 0)
    codes = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # Codes above 127 live only in BuiltinCode; old files only fill DeprecatedBuiltinCode.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM and code.CustomCode():
            name = code.CustomCode().decode("utf-8")
        else:
            name = _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
        codes.append({"name": name, "version": int(code.Version())})
    subgraph = model.Subgraphs(0)
    return [codes[subgraph.Operators(i).OpcodeIndex()] for i in range(subgraph.OperatorsLength())]


class TFLiteModel:
    """A single-input, single-output `.tflite` classifier run with the LiteRT interpreter.

    Float video in, float logits out: an int8 (or uint8) input is quantized with the input
    tensor's scale and zero point, an integer output is dequantized with the output's. A model
    exported at static batch 1 is run one clip at a time when given a larger batch.

    Args:
      model: path to a `.tflite` file, or its bytes.
      num_threads: interpreter threads (None: the runtime's default).
      preserve_all_tensors: keep every intermediate tensor readable after `invoke` (debugging:
        per-layer error reports); this also disables the default XNNPACK delegate, which would
        otherwise compute fused subgraphs whose intermediates are never materialised.
      use_xnnpack: apply LiteRT's default delegate (XNNPACK), as on a phone. Set False to
        run the reference kernels node by node.
      clip_shape: `(T, H, W, 3)` of one clip. Needed for a frame-stacked input `(1, T * H, W, 3)`
        (the metadata has it: `read_input_layout`), whose `__call__` then also takes clips and
        stacks their frames; None: the input tensor is taken as the clip (5-D input).
      delegates: LiteRT delegates to apply (`load_delegate(...)`, e.g. the Edge TPU's).

    Example:
      model = TFLiteModel("export/model_int8.tflite", num_threads=2)
      logits = model(video)  # (batch, T, H, W, 3) float32 in [0, 1] -> (batch, classes)
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        num_threads: int | None = None,
        preserve_all_tensors: bool = False,
        use_xnnpack: bool = True,
        clip_shape: Sequence[int] | None = None,
        delegates: Sequence[Any] | None = None,
    ) -> None:
        if isinstance(model, bytes | bytearray):
            self.model_content = bytes(model)
            self.path = None
        else:
            self.path = os.fspath(model)
            with open(self.path, "rb") as f:
                self.model_content = f.read()
        self.num_threads = num_threads
        self.preserve_all_tensors = preserve_all_tensors
        self.use_xnnpack = use_xnnpack and not preserve_all_tensors
        resolver = (
            OpResolverType.AUTO
            if self.use_xnnpack
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        self.interpreter = Interpreter(
            model_content=self.model_content,
            num_threads=num_threads,
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=preserve_all_tensors,
            experimental_delegates=list(delegates) if delegates else None,
        )
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"TFLiteModel expects one input and one output, got {len(inputs)} inputs and "
                f"{len(outputs)} outputs ({self.path or 'model bytes'})"
            )
        self.input_details: dict[str, Any] = inputs[0]
        self.output_details: dict[str, Any] = outputs[0]
        self.input_layout, self.clip_shape = self._resolve_layout(clip_shape)

    def _resolve_layout(self, clip_shape: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
        """(input layout, clip shape) from the input tensor and the clip shape, if given."""
        single = self.input_shape[1:]
        if clip_shape is None:
            return "clip", single
        clip_shape = tuple(int(d) for d in clip_shape)
        for layout in INPUT_LAYOUTS:
            if len(clip_shape) == 4 and layout_input_shape(clip_shape, layout) == single:
                return layout, clip_shape
        raise ValueError(
            f"{self.path or 'model bytes'}: input {list(self.input_shape)} is neither the clip "
            f"{list(clip_shape)} nor its frame-stacked image"
        )

    # --- shapes, dtypes and quantization ------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input_details["shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.output_details["shape"])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input_details["dtype"])

    @property
    def output_dtype(self) -> np.dtype:
        return np.dtype(self.output_details["dtype"])

    @property
    def input_quantization(self) -> tuple[float, int]:
        """(scale, zero_point) of the input; (0.0, 0) for a float input."""
        scale, zero_point = self.input_details["quantization"]
        return float(scale), int(zero_point)

    @property
    def output_quantization(self) -> tuple[float, int]:
        """(scale, zero_point) of the output; (0.0, 0) for a float output."""
        scale, zero_point = self.output_details["quantization"]
        return float(scale), int(zero_point)

    def quantize_input(self, video: np.ndarray) -> np.ndarray:
        """Converts float video to the input tensor's dtype (identity for a float input)."""
        if np.issubdtype(self.input_dtype, np.integer):
            scale, zero_point = self.input_quantization
            return quantize(video, scale, zero_point, self.input_dtype)
        return np.asarray(video, dtype=self.input_dtype)

    def dequantize_output(self, raw: np.ndarray) -> np.ndarray:
        """Converts the raw output tensor to float32 logits."""
        if np.issubdtype(self.output_dtype, np.integer):
            scale, zero_point = self.output_quantization
            return dequantize(raw, scale, zero_point)
        return np.asarray(raw, dtype=np.float32)

    # --- running --------------------------------------------------------------------------------
    def invoke_raw(self, model_input: np.ndarray) -> np.ndarray:
        """Runs one invoke on an input already in the input tensor's dtype and shape."""
        model_input = np.asarray(model_input)
        if model_input.dtype != self.input_dtype:
            raise TypeError(f"invoke_raw expects {self.input_dtype}, got {model_input.dtype}")
        if tuple(model_input.shape) != self.input_shape:
            raise ValueError(
                f"invoke_raw expects shape {self.input_shape}, got {model_input.shape}"
            )
        self.interpreter.set_tensor(self.input_details["index"], model_input)
        self.interpreter.invoke()
        return np.copy(self.interpreter.get_tensor(self.output_details["index"]))

    def __call__(self, video: np.ndarray) -> np.ndarray:
        """Float video `(N, T, H, W, 3)` -> float32 logits `(N, classes)`, chunked by batch.

        A frame-stacked model also takes its own input `(N, T * H, W, 3)`.
        """
        video = np.asarray(video, np.float32)
        if self.input_layout == "frame_stacked" and tuple(video.shape[1:]) == self.clip_shape:
            video = stack_frames(video)
        batch = self.input_shape[0]
        expected = self.input_shape[1:]
        if tuple(video.shape[1:]) != expected:
            accepted = f"clips of shape {self.clip_shape}" + (
                f" or frame-stacked {expected}" if self.input_layout == "frame_stacked" else ""
            )
            raise ValueError(f"expected {accepted}, got {video.shape[1:]}")
        if video.shape[0] % batch:
            raise ValueError(f"batch {video.shape[0]} is not a multiple of the model's {batch}")
        outputs = [
            self.dequantize_output(self.invoke_raw(self.quantize_input(video[i : i + batch])))
            for i in range(0, video.shape[0], batch)
        ]
        return np.concatenate(outputs, axis=0)

    def invoke_times(self, runs: int = 20, warmup: int = 3, seed: int = 0) -> list[float]:
        """Wall time in ms of `runs` invokes on one random input, after `warmup` untimed ones."""
        rng = np.random.default_rng(seed)
        video = rng.random(self.input_shape, dtype=np.float32)
        model_input = self.quantize_input(video)
        for _ in range(warmup):
            self.invoke_raw(model_input)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.invoke_raw(model_input)
            times.append((time.perf_counter() - start) * 1000.0)
        return times

    def latency(self, runs: int = 20, warmup: int = 3, seed: int = 0) -> float:
        """Median wall time of one invoke in milliseconds, on a random input."""
        return float(statistics.median(self.invoke_times(runs, warmup, seed)))

    # --- introspection --------------------------------------------------------------------------
    def signature_list(self) -> dict[str, dict[str, list[str]]]:
        return self.interpreter.get_signature_list()

    def tensor_details(self) -> list[dict[str, Any]]:
        return self.interpreter.get_tensor_details()

    def ops_details(self) -> list[dict[str, Any]]:
        """Node details in execution order, without the DELEGATE nodes a delegate appends."""
        # pylint: disable-next=protected-access
        details = self.interpreter._get_ops_details()
        return [op for op in details if op["op_name"] != "DELEGATE"]

    def get_tensor(self, index: int) -> np.ndarray:
        """Value of tensor `index` after the last invoke (needs `preserve_all_tensors`)."""
        return np.copy(self.interpreter.get_tensor(index))

    def model_io_indices(self) -> tuple[Sequence[int], Sequence[int]]:
        inputs = [d["index"] for d in self.interpreter.get_input_details()]
        outputs = [d["index"] for d in self.interpreter.get_output_details()]
        return inputs, outputs
