"""Edge TPU rule check of a `.tflite`: where the Coral compiler would cut the graph, and why.

This is a PREDICTION from Coral's published rules, not the compiler. `edgetpu_compiler` is
closed source, x86-only and frozen since 2021 (version 16.0.384591198); it can refuse ops that its
table lists ("otherwise supported, but not mapped due to some unspecified limitation") and its
live op list may be longer than the copy used here. Compile the model before relying on a result.

Rules, checked on every op of subgraph 0 in execution order (the flatbuffer's operator order):
  op table      the op is in Coral's table of supported operations (`SUPPORTED_OPS`, with the
                source of each row), and meets the row's limitation (`LIMITATIONS`): Softmax only
                1-D with at most 16,000 elements, FullyConnected with a one-dimensional output,
                Mean/Pad along x and/or y only, StridedSlice with unit strides, Squeeze of leading
                1s only, pooling and Concatenation without fused activation, Concatenation with a
                constant input only as the all-zero second of two inputs;
  int8          every activation tensor is int8 or uint8 and no tensor is float (a float op, or
                float weights, is a violation); the QUANTIZE of a float model input and the
                DEQUANTIZE of a float model output are left on the CPU without cutting the graph
                (float I/O), as the compiler does with such boundary ops [inference];
  static shapes no tensor has a dynamic dimension (-1 in its shape signature);
  constants     weights and biases of convolutions and FullyConnected are constants, not
                computed by ops at run time ("model parameters are constant at compile time");
  batch 1       model inputs and outputs have batch 1;
  rank          "if a tensor has more than 3 dimensions, then only the 3 innermost dimensions may
                have a size greater than 1" (weights and biases of convolutions excepted);
  op version    recorded for every op; `version_status` marks it "rejected" when a public
                compiler-16 log refuses it (the compiler then refuses the whole file, not just the
                op), "known" when TensorFlow dates it to TF 2.5 or earlier, and "unverified"
                otherwise (see COMPILER_KNOWN_VERSIONS and COMPILER_REJECTED_VERSIONS).

The compiler maps ops up to the first unsupported one and runs everything from there on the CPU
("More than one subgraph is not supported"), so the predicted cut is the first op that breaks a
rule. The report gives the share of ops and of MACs before the cut (MACs of CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED, BATCH_MATMUL, TRANSPOSE_CONV and CONV_3D from the tensor
shapes, the docs/design.md section 6 convention) and names the blocking op with the Keras layer it
came from (read from its output tensor's name, which a converted Keras model scopes by layer).
Caveats (things the rules leave open, e.g. a very large depthwise kernel) never cut the graph.

Usable as a function and as a command:
  report = check_edgetpu("model_int8.tflite")      # full report (JSON-serialisable dict)
  summarize(report)                                # compact dict for conversion reports
  kvid-edgetpu-check model_int8.tflite [--json] [--ops] [--max_cpu_ops N]
  python -m kvid_tflite.edgetpu model_int8.tflite
The command exits 1 when more than `--max_cpu_ops` ops (default 0) are predicted to run on the CPU
or when the compiler is expected to refuse the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from kvid_tflite.litert import schema

PREDICTION_NOTE = "prediction from Coral's published rules, not the Edge TPU compiler"

# ------------------------------------------------------------------------------------------------
# Data: the Coral op table, its limitations, and op versions, each with its source.
# ------------------------------------------------------------------------------------------------
CORAL_TABLE = (
    "Coral op table (coral.ai/docs/edgetpu/models-intro, 'Supported operations'; older copy in "
    "dgist-datalab/Datalab_Intern Edge_TPU/convert_model_for_Edge_TPU.md)"
)
ARTPEC7_TABLE = (
    "Axis ARTPEC-7 DLPU op table, compiled with the Edge TPU tooling "
    "(developer.axis.com/computer-vision/on-device/system-on-chip/artpec-7/supported-ops)"
)
COMPILER16_LOGS = (
    "ops mapped in public Edge TPU compiler-16 logs (eehoeskrap/PaperReview#15, "
    "WongKinYiu/yolov7#1672)"
)

# op -> source. Ops outside Coral's own table carry a caveat naming their weaker source.
SUPPORTED_OPS: dict[str, str] = {
    **{
        name: CORAL_TABLE
        for name in (
            "ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D FULLY_CONNECTED "
            "L2_NORMALIZATION LOGISTIC MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PAD RELU RELU6 "
            "RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR SLICE SOFTMAX "
            "SPACE_TO_DEPTH SPLIT SQUEEZE STRIDED_SLICE SUB TANH"
        ).split()
    },
    "PRELU": COMPILER16_LOGS,
    "QUANTIZE": COMPILER16_LOGS,
    "EXPAND_DIMS": ARTPEC7_TABLE,
    "PACK": ARTPEC7_TABLE,
    "REDUCE_MAX": ARTPEC7_TABLE,
    "REDUCE_MIN": ARTPEC7_TABLE,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ARTPEC7_TABLE,
}

# Published limitations of table rows, as text; `_LIMITATION_CHECKS` enforces them.
LIMITATIONS: dict[str, str] = {
    "AVERAGE_POOL_2D": "no fused activation",
    "MAX_POOL_2D": "no fused activation",
    "CONCATENATION": (
        "no fused activation; a constant input only with exactly 2 inputs and all-zero values"
    ),
    "FULLY_CONNECTED": "only the default weight format; output tensor is one-dimensional",
    "MEAN": "reduction along x and/or y only",
    "PAD": "padding along x and/or y only",
    "RESIZE_BILINEAR": "3-D input and output; may stay on the CPU to avoid loss in precision",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input and output; may stay on the CPU",
    "SOFTMAX": "only a 1-D input tensor with at most 16,000 elements",
    "SQUEEZE": "only squeezing leading 1s (no relayout)",
    "STRIDED_SLICE": "all strides 1; ellipsis-axis-mask and new-axis-mask 0",
    "PACK": "not along the batch dimension (ARTPEC-7)",
    "PRELU": "1-D alpha (ARTPEC-7)",
    "REDUCE_MAX": "not along the batch dimension (ARTPEC-7)",
    "REDUCE_MIN": "not along the batch dimension (ARTPEC-7)",
}
SOFTMAX_MAX_ELEMENTS = 16000

# Why common blockers are absent, with the public evidence (shown with the violation).
UNSUPPORTED_NOTES: dict[str, str] = {
    "BATCH_MATMUL": (
        "no Edge TPU op multiplies two activations (google-coral/edgetpu#24); a constant operand "
        "is a Conv2D 1x1 / FullyConnected"
    ),
    "GELU": "builtin code 150 is unknown to the compiler (google-coral/edgetpu#818); use ReLU6",
    "HARD_SWISH": (
        "TF fuses x*relu6(x+3)/6 into HARD_SWISH, which the table lacks; use ReLU6 "
        "(or x*sigmoid(x) as LOGISTIC + MUL)"
    ),
    "TRANSPOSE": "not mapped by the compiler (google-coral/edgetpu#342, #433)",
    "CONV_3D": "no Conv3D on the Edge TPU (google/aiyprojects-raspbian#539), float-only in TFLite",
    "GATHER": "gather is not supported (google-coral/edgetpu#714, #720)",
    "GATHER_ND": "gather_nd is not supported (google-coral/edgetpu#714, #720)",
    "EXP": "EXP is not supported (PINTO0309/PINTO_model_zoo#63)",
    "DIV": "division is not supported (PINTO0309/PINTO_model_zoo#63)",
    "RSQRT": "a LayerNorm's RSQRT: use BatchNorm (folded into the conv) in Edge TPU variants",
    "SQUARED_DIFFERENCE": "a LayerNorm's variance: use BatchNorm in Edge TPU variants",
    "DEQUANTIZE": "a float island: the op after it computes in float",
    "edgetpu-custom-op": "the file is already compiled: check the model given to the compiler",
}

# Highest version of each op that TensorFlow's op-version registry dates to TF 2.5.0 or earlier
# (tensorflow/lite/tools/versioning/runtime_version.cc). Edge TPU Compiler 16.0.384591198 was
# released in June 2021, after TF 2.5.0 (May 2021), and every version that public compiler-16
# logs reject is newer than this table [inference: no log lists the versions it accepts].
COMPILER_KNOWN_VERSIONS_SOURCE = (
    "TF <= 2.5.0 op versions from tensorflow/lite/tools/versioning/runtime_version.cc"
)
# fmt: off
COMPILER_KNOWN_VERSIONS: dict[str, int] = {
    "ABS": 3, "ADD": 3, "ARG_MAX": 2, "ARG_MIN": 2, "AVERAGE_POOL_2D": 3, "BATCH_MATMUL": 4,
    "CAST": 1, "CONCATENATION": 3, "CONV_2D": 5, "CONV_3D": 1, "DEPTH_TO_SPACE": 2,
    "DEPTHWISE_CONV_2D": 6, "DEQUANTIZE": 4, "DIV": 2, "EXP": 1, "EXPAND_DIMS": 1,
    "FULLY_CONNECTED": 9, "GATHER": 5, "GATHER_ND": 3, "HARD_SWISH": 1, "L2_NORMALIZATION": 2,
    "LEAKY_RELU": 2, "LOG_SOFTMAX": 2, "LOGISTIC": 3, "MAX_POOL_2D": 3, "MAXIMUM": 4, "MEAN": 3,
    "MINIMUM": 4, "MIRROR_PAD": 2, "MUL": 4, "NEG": 1, "PACK": 3, "PAD": 3, "PADV2": 3, "POW": 1,
    "PRELU": 1, "QUANTIZE": 2, "REDUCE_MAX": 3, "REDUCE_MIN": 3, "REDUCE_PROD": 1, "RELU": 3,
    "RELU6": 3, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4,
    "RESIZE_NEAREST_NEIGHBOR": 4, "REVERSE_V2": 3, "RSQRT": 2, "SLICE": 5, "SOFTMAX": 3,
    "SPACE_TO_DEPTH": 2, "SPLIT": 4, "SPLIT_V": 2, "SQRT": 1, "SQUARE": 1, "SQUARED_DIFFERENCE": 2,
    "SQUEEZE": 2, "STRIDED_SLICE": 5, "SUB": 5, "SUM": 2, "TANH": 3, "TILE": 2, "TRANSPOSE": 5,
    "TRANSPOSE_CONV": 3, "UNIDIRECTIONAL_SEQUENCE_LSTM": 3, "UNPACK": 4,
}
# fmt: on

# (op, lowest version) -> public log where Edge TPU Compiler 16 refuses to parse it ("Didn't find
# op for builtin opcode ... Are you using an old TFLite binary with a newer model?").
COMPILER_REJECTED_VERSIONS: dict[tuple[str, int], str] = {
    ("CONV_2D", 6): "google-coral/edgetpu#631 (compiler 16.0, TF 2.9.1)",
    ("QUANTIZE", 3): "google-coral/edgetpu#879 (compiler 16.0.384591198)",
    ("TRANSPOSE_CONV", 4): "google-coral/edgetpu#845 (compiler 16.0.384591198)",
    (
        "EXP",
        2,
    ): "google-coral/libedgetpu#71, tensorflow/tflite-micro#2633 (compiler 16.0.384591198)",
    ("TRANSPOSE", 6): "ankandrew/fast-plate-ocr#38",
}
# Builtin codes from here on are "out of range" for compiler 16: GELU (150) in
# google-coral/edgetpu#818 and #667, DYNAMIC_UPDATE_SLICE (151) in #862.
COMPILER_MAX_BUILTIN_CODE = 149
COMPILER_MAX_BUILTIN_CODE_SOURCE = "google-coral/edgetpu#818, #667 (code 150), #862 (code 151)"

# Depthwise kernels this large are in no public Edge TPU compile log we know of (research notes:
# 13x13, 27x27 and 31x1 are open items); a caveat, not a violation.
LARGE_KERNEL_SIDE = 7

# ------------------------------------------------------------------------------------------------
# Reading the flatbuffer
# ------------------------------------------------------------------------------------------------
_BUILTIN_NAMES = {
    value: name
    for name, value in vars(schema.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(value, int)
}
_TENSOR_TYPES = {
    value: name.lower()
    for name, value in vars(schema.TensorType).items()
    if not name.startswith("_") and isinstance(value, int)
}
_NUMPY_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
}
FLOAT_TYPES = ("float16", "float32", "float64", "bfloat16")
QUANTIZED_TYPES = ("int8", "uint8")
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")
# Input positions of weights and biases, which Coral requires to be compile-time constants.
_PARAMETER_INPUTS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "CONV_3D": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
}


@dataclasses.dataclass
class _Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: bool
    constant: bool
    data: np.ndarray | None
    zero_point: int | None

    def record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "constant": self.constant,
        }


@dataclasses.dataclass
class _Op:
    index: int
    name: str
    code: int
    version: int
    inputs: list[_Tensor]
    outputs: list[_Tensor]
    options: Any


def _read_model(content: bytes) -> tuple[list[_Op], list[_Tensor], list[_Tensor]]:
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    subgraph = model.subgraphs[0]
    operators = subgraph.operators or []
    model_inputs = set(int(i) for i in (subgraph.inputs if subgraph.inputs is not None else []))
    produced = {int(i) for op in operators for i in (op.outputs if op.outputs is not None else [])}

    def buffer_bytes(index: int) -> bytes:
        buffer = model.buffers[index] if 0 < index < len(model.buffers) else None
        if buffer is None:
            return b""
        if buffer.data is not None and len(buffer.data):
            return np.asarray(buffer.data, np.uint8).tobytes()
        if buffer.offset > 1 and buffer.size:  # large models keep buffers after the flatbuffer
            return content[buffer.offset : buffer.offset + buffer.size]
        return b""

    tensors = []
    for index, t in enumerate(subgraph.tensors):
        dtype = _TENSOR_TYPES.get(t.type, f"type{t.type}")
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        signature = t.shapeSignature if t.shapeSignature is not None else []
        raw = buffer_bytes(t.buffer)
        constant = bool(raw) or (index not in produced and index not in model_inputs)
        constant = constant and not t.isVariable
        data = None
        if raw and dtype in _NUMPY_TYPES:
            data = np.frombuffer(raw, _NUMPY_TYPES[dtype])
            if data.size == math.prod(shape):
                data = data.reshape(shape)
        zero_point = None
        q = t.quantization
        if q is not None and q.zeroPoint is not None and len(q.zeroPoint):
            zero_point = int(q.zeroPoint[0])
        tensors.append(
            _Tensor(
                index=index,
                name=(t.name or b"").decode("utf-8", "replace"),
                dtype=dtype,
                shape=shape,
                dynamic=any(int(d) < 0 for d in signature),
                constant=constant,
                data=data,
                zero_point=zero_point,
            )
        )

    ops = []
    for index, op in enumerate(operators):
        code = model.operatorCodes[op.opcodeIndex]
        # Codes above 127 live only in builtinCode; old files only fill deprecatedBuiltinCode.
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == schema.BuiltinOperator.CUSTOM and code.customCode:
            name = code.customCode.decode("utf-8", "replace")
        else:
            name = _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
        inputs = op.inputs if op.inputs is not None else []
        outputs = op.outputs if op.outputs is not None else []
        ops.append(
            _Op(
                index=index,
                name=name,
                code=int(builtin),
                version=int(code.version),
                # -1 marks an omitted optional input (a FULLY_CONNECTED without bias).
                inputs=[tensors[int(i)] for i in inputs if i >= 0],
                outputs=[tensors[int(i)] for i in outputs if i >= 0],
                options=op.builtinOptions,
            )
        )
    graph_inputs = [
        tensors[int(i)] for i in (subgraph.inputs if subgraph.inputs is not None else [])
    ]
    graph_outputs = [
        tensors[int(i)] for i in (subgraph.outputs if subgraph.outputs is not None else [])
    ]
    return ops, graph_inputs, graph_outputs


# ------------------------------------------------------------------------------------------------
# Rules
# ------------------------------------------------------------------------------------------------
def version_status(name: str, version: int, code: int | None = None) -> tuple[str, str]:
    """("known" | "unverified" | "rejected", why) for an op version on Edge TPU Compiler 16."""
    if code is not None and code > COMPILER_MAX_BUILTIN_CODE:
        return "rejected", (
            f"builtin code {code} is out of range for compiler 16 "
            f"({COMPILER_MAX_BUILTIN_CODE_SOURCE}): it refuses the whole file"
        )
    for (op, lowest), source in COMPILER_REJECTED_VERSIONS.items():
        if op == name and version >= lowest:
            return "rejected", (
                f"{name} v{lowest}+ is refused by compiler 16 ({source}): it refuses the whole file"
            )
    known = COMPILER_KNOWN_VERSIONS.get(name)
    if known is not None and version <= known:
        return "known", f"{name} v{version} dates to TF <= 2.5 ({COMPILER_KNOWN_VERSIONS_SOURCE})"
    return "unverified", (
        f"{name} v{version} is newer than the TF 2.5 op versions and not seen in public "
        "compiler-16 logs"
    )


def _non_unit(shape: Iterable[int]) -> int:
    return sum(1 for d in shape if d != 1)


def _fused_activation(op: _Op) -> list[str]:
    activation = getattr(op.options, "fusedActivationFunction", 0) or 0
    if activation:
        names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if k.isupper()}
        return [f"fused activation {names.get(activation, activation)} is not allowed"]
    return []


def _spatial_axes(rank: int) -> set[int]:
    """The y and x axes of a (..., y, x, channels) tensor."""
    return {axis for axis in (rank - 3, rank - 2) if axis >= 0}


def _constant_ints(tensor: _Tensor) -> list[int] | None:
    if tensor.data is None:
        return None
    return [int(v) for v in np.asarray(tensor.data).reshape(-1)]


def _check_concatenation(op: _Op) -> list[str]:
    problems = _fused_activation(op)
    constants = [t for t in op.inputs if t.constant]
    for t in constants:
        zero = t.zero_point or 0
        all_zero = t.data is not None and bool(np.all(np.asarray(t.data) == zero))
        if len(op.inputs) != 2 or not all_zero:
            problems.append(
                f"constant input '{t.name}' is allowed only as an all-zero input of a 2-input "
                "concatenation (zero padding)"
            )
    return problems


def _check_fully_connected(op: _Op) -> list[str]:
    problems = []
    if getattr(op.options, "weightsFormat", 0):
        problems.append("non-default weight format")
    for t in op.outputs:
        if _non_unit(t.shape) > 1:
            problems.append(
                f"output {list(t.shape)} is not one-dimensional (write it as a Conv2D 1x1)"
            )
    return problems


def _check_mean(op: _Op) -> list[str]:
    source = op.inputs[0]
    axes = _constant_ints(op.inputs[1]) if len(op.inputs) > 1 else None
    if axes is None:
        return ["reduction axes are not a constant"]
    rank = len(source.shape)
    reduced = {a % rank for a in axes if source.shape[a % rank] != 1} if rank else set()
    outside = sorted(reduced - _spatial_axes(rank))
    if outside:
        return [
            f"reduces axes {outside} of {list(source.shape)}: only x and/or y (axes "
            f"{sorted(_spatial_axes(rank))}) may be reduced"
        ]
    return []


def _check_pad(op: _Op) -> list[str]:
    source = op.inputs[0]
    paddings = _constant_ints(op.inputs[1]) if len(op.inputs) > 1 else None
    if paddings is None:
        return ["paddings are not a constant"]
    rank = len(source.shape)
    if len(paddings) != 2 * rank:
        return [f"paddings {paddings} do not match the input rank {rank}"]
    padded = {axis for axis in range(rank) if paddings[2 * axis] or paddings[2 * axis + 1]}
    outside = sorted(padded - _spatial_axes(rank))
    if outside:
        return [f"pads axes {outside} of {list(source.shape)}: only x and/or y may be padded"]
    return []


def _check_softmax(op: _Op) -> list[str]:
    source = op.inputs[0]
    problems = []
    if _non_unit(source.shape) > 1:
        problems.append(
            f"input {list(source.shape)} is not 1-D ({_non_unit(source.shape)} non-unit dims)"
        )
    size = math.prod(source.shape)
    if size > SOFTMAX_MAX_ELEMENTS:
        problems.append(f"input has {size} elements (max {SOFTMAX_MAX_ELEMENTS})")
    return problems


def _check_squeeze(op: _Op) -> list[str]:
    source, result = tuple(op.inputs[0].shape), tuple(op.outputs[0].shape)
    leading = len(source) - len(result)
    if leading >= 0 and all(d == 1 for d in source[:leading]) and source[leading:] == result:
        return []
    return [f"{list(source)} -> {list(result)} is not a squeeze of leading 1s"]


def _check_strided_slice(op: _Op) -> list[str]:
    problems = []
    strides = _constant_ints(op.inputs[3]) if len(op.inputs) > 3 else None
    if strides is None:
        problems.append("strides are not a constant")
    elif any(s != 1 for s in strides):
        problems.append(f"strides {strides} (all must be 1)")
    for mask in ("ellipsisMask", "newAxisMask"):
        if getattr(op.options, mask, 0):
            problems.append(f"{mask} is {getattr(op.options, mask)} (must be 0)")
    return problems


def _check_batch_axis(op: _Op) -> list[str]:
    """PACK / REDUCE_MAX / REDUCE_MIN: not along the batch dimension (ARTPEC-7)."""
    if op.name == "PACK":
        axes = [getattr(op.options, "axis", 0)]
        rank = len(op.outputs[0].shape)
    else:
        axes = _constant_ints(op.inputs[1]) if len(op.inputs) > 1 else None
        rank = len(op.inputs[0].shape)
        if axes is None:
            return ["reduction axes are not a constant"]
    if rank > 1 and any(a % rank == 0 for a in axes):
        return ["operates along the batch dimension"]
    return []


def _check_prelu(op: _Op) -> list[str]:
    alpha = op.inputs[1]
    return [] if _non_unit(alpha.shape) <= 1 else [f"alpha {list(alpha.shape)} is not 1-D"]


_LIMITATION_CHECKS: dict[str, Callable[[_Op], list[str]]] = {
    "AVERAGE_POOL_2D": _fused_activation,
    "MAX_POOL_2D": _fused_activation,
    "CONCATENATION": _check_concatenation,
    "FULLY_CONNECTED": _check_fully_connected,
    "MEAN": _check_mean,
    "PAD": _check_pad,
    "SOFTMAX": _check_softmax,
    "SQUEEZE": _check_squeeze,
    "STRIDED_SLICE": _check_strided_slice,
    "PACK": _check_batch_axis,
    "REDUCE_MAX": _check_batch_axis,
    "REDUCE_MIN": _check_batch_axis,
    "PRELU": _check_prelu,
}


def _caveats(op: _Op) -> list[str]:
    notes = []
    source = SUPPORTED_OPS.get(op.name)
    if source is not None and source != CORAL_TABLE:
        notes.append(f"{op.name} is not in Coral's older table; supported per {source}")
    if op.name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        notes.append(f"{op.name} may stay on the CPU to avoid loss in precision ({CORAL_TABLE})")
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(op.inputs) > 1:
        dilation = (
            getattr(op.options, "dilationHFactor", 1),
            getattr(op.options, "dilationWFactor", 1),
        )
        if dilation[0] != dilation[1]:
            notes.append(f"dilation {dilation} differs in y and x (ARTPEC-7 needs them equal)")
        kernel = op.inputs[1].shape[1:3]
        if op.name == "DEPTHWISE_CONV_2D" and max(kernel, default=0) > LARGE_KERNEL_SIDE:
            notes.append(
                f"depthwise kernel {kernel[0]}x{kernel[1]} is larger than {LARGE_KERNEL_SIDE}: "
                "unverified on the compiler"
            )
    return notes


def _violations(
    op: _Op, model_inputs: set[int], model_outputs: set[int]
) -> tuple[list[dict[str, str]], bool]:
    """The op's rule violations as [{"rule", "message"}], and whether it is a float I/O boundary
    op (the QUANTIZE of a float model input / DEQUANTIZE to a float model output)."""
    found: list[dict[str, str]] = []

    def add(rule: str, message: str) -> None:
        found.append({"rule": rule, "message": message})

    float_in = [t for t in op.inputs if t.dtype in FLOAT_TYPES]
    float_out = [t for t in op.outputs if t.dtype in FLOAT_TYPES]
    boundary = (
        op.name == "QUANTIZE"
        and float_in
        and all(t.index in model_inputs for t in float_in)
        and not float_out
    ) or (
        op.name == "DEQUANTIZE"
        and float_out
        and all(t.index in model_outputs for t in float_out)
        and not float_in
    )
    # The float I/O boundary runs on the CPU by design: only the shape rules apply to it.
    if not boundary:
        if op.name not in SUPPORTED_OPS:
            note = UNSUPPORTED_NOTES.get(op.name)
            add(
                "op_table",
                f"{op.name} is not in the Coral op table" + (f": {note}" if note else ""),
            )
        for problem in _LIMITATION_CHECKS.get(op.name, lambda _: [])(op):
            add("limitation", f"{op.name} ({LIMITATIONS[op.name]}): {problem}")
        for t in op.inputs + op.outputs:
            if t.dtype in FLOAT_TYPES:
                kind = "weights" if t.constant else "tensor"
                add("float", f"float op: {t.dtype} {kind} '{t.name}'")
            elif not t.constant and t.dtype not in QUANTIZED_TYPES:
                add("dtype", f"{t.dtype} tensor '{t.name}' (only int8/uint8 activations)")
    for position in _PARAMETER_INPUTS.get(op.name, ()):
        if position < len(op.inputs) and not op.inputs[position].constant:
            add(
                "constant_params",
                f"parameter '{op.inputs[position].name}' is computed at run time (Coral: model "
                "parameters are constant at compile time)",
            )
    for position, t in enumerate(op.inputs + op.outputs):
        if t.dynamic:
            add("static_shape", f"tensor '{t.name}' has a dynamic shape")
        is_weight = op.name in _WEIGHT_OPS and 0 < position < len(op.inputs)
        if len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]) and not is_weight:
            add(
                "rank",
                f"tensor '{t.name}' {list(t.shape)} has {_non_unit(t.shape)} non-unit dims: "
                "only the 3 innermost dims may exceed 1",
            )
        if (t.index in model_inputs or t.index in model_outputs) and len(t.shape) >= 2:
            if t.shape[0] != 1:
                add("batch", f"model I/O tensor '{t.name}' {list(t.shape)} has batch {t.shape[0]}")
    # One entry per distinct message: an op reading the same tensor twice lists it once.
    unique = list({(v["rule"], v["message"]): v for v in found}.values())
    return unique, bool(boundary)


def _macs(op: _Op) -> int:
    """Multiply-accumulates of the matrix ops, from static shapes (docs/design.md section 6)."""
    if not op.outputs or len(op.inputs) < 2:
        return 0
    out = math.prod(op.outputs[0].shape)
    if op.name in ("CONV_2D", "CONV_3D"):
        kernel = op.inputs[1].shape  # CONV_2D (O, kh, kw, I); CONV_3D (kd, kh, kw, I, O)
        taps = math.prod(kernel[1:]) if op.name == "CONV_2D" else math.prod(kernel[:-1])
        return out * taps
    if op.name == "DEPTHWISE_CONV_2D":
        return out * math.prod(op.inputs[1].shape[1:3])
    if op.name == "FULLY_CONNECTED":
        return out * op.inputs[1].shape[-1]
    if op.name == "BATCH_MATMUL":
        lhs = op.inputs[0].shape
        contracted = lhs[-2] if getattr(op.options, "adjX", False) else lhs[-1]
        return out * contracted
    if op.name == "TRANSPOSE_CONV":  # inputs: output shape, weights (O, kh, kw, I), input
        weights, source = op.inputs[1].shape, op.inputs[2].shape
        return math.prod(source) * math.prod(weights[:3])
    return 0


# ------------------------------------------------------------------------------------------------
# Layer names
# ------------------------------------------------------------------------------------------------
_WRAPPER = re.compile(r"^(StatefulPartitionedCall|PartitionedCall|serving_default)(_\d+)?(:\d+)?$")
# TF op names that identify which fused part of an output name an op comes from.
_TF_OP_HINTS: dict[str, tuple[str, ...]] = {
    "CONV_2D": ("Conv2D", "convolution", "BiasAdd"),
    "DEPTHWISE_CONV_2D": ("depthwise", "BiasAdd"),
    "FULLY_CONNECTED": ("MatMul", "Tensordot", "BiasAdd"),
    "BATCH_MATMUL": ("MatMul", "einsum", "Einsum"),
    "MEAN": ("Mean",),
    "SOFTMAX": ("Softmax",),
    "RESHAPE": ("Reshape",),
    "ADD": ("add", "Add", "AddV2"),
    "MUL": ("mul", "Mul"),
    "CONCATENATION": ("concat",),
    "TRANSPOSE": ("transpose",),
}


def _layer_candidates(tensor_name: str, layer_names: set[str] | None) -> list[tuple[str, str]]:
    """(layer, TF op) pairs read from a (possibly fused, ';'-joined) tensor name."""
    found = []
    for part in tensor_name.split(";"):
        parts = [c for c in part.split("/") if c]
        while parts and _WRAPPER.match(parts[0]):
            parts = parts[1:]
        if layer_names is not None:
            layer = next((c for c in parts[:-1] if c in layer_names), None)
        else:
            # model scope / layer / [sublayer /] TF op
            layer = parts[1] if len(parts) >= 3 else None
        if layer is not None:
            found.append((layer, parts[-1]))
    return found


def _layer_of(op: _Op, layer_names: set[str] | None) -> tuple[str | None, list[str]]:
    candidates = [c for t in op.outputs for c in _layer_candidates(t.name, layer_names)]
    layers = list(dict.fromkeys(layer for layer, _ in candidates))
    hints = _TF_OP_HINTS.get(op.name, ())
    for layer, tf_op in candidates:
        if hints and tf_op.startswith(hints):
            return layer, layers
    if op.name in ("GELU", "HARD_SWISH", "RELU", "RELU6", "LOGISTIC", "TANH"):
        # Fused activations list the activation layer first; standalone ones name only it.
        return (layers[0] if layers else None), layers
    return (layers[-1] if layers else None), layers


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------
def check_edgetpu(
    model: str | os.PathLike | bytes, layer_names: Iterable[str] | None = None
) -> dict[str, Any]:
    """Checks every op of a `.tflite` against Coral's published Edge TPU rules.

    Args:
      model: path to a `.tflite`, or its bytes.
      layer_names: the Keras model's layer names, if known: the layer of an op is then the first
        scope of its output tensor's name that is one of them (default: the second scope).

    Returns:
      A JSON-serialisable dict (a prediction, see the module docstring):
        prediction: what this is; num_ops; macs (matrix-op MACs of the whole graph);
        ops: [{index, name, version, version_status, layer, layers, outputs, macs, edgetpu,
          violations: [{rule, message}], caveats}], `edgetpu` True for ops before the cut;
        cut: None when every op maps, else {index, op, version, layer, tensor, violations};
        ops_before_cut, op_share, macs_before_cut, mac_share: what maps to the Edge TPU;
        cpu_boundary_ops: float I/O QUANTIZE/DEQUANTIZE ops left on the CPU;
        violating_ops: indices of every op breaking a rule (also after the cut);
        versions: {"known": [...], "unverified": [...], "rejected": [...]} as "NAME vN" strings,
          with rejected_reasons; compiler_refuses: True when a rejected version is present;
        passed: every op maps and the compiler is not expected to refuse the file.
    """
    content = bytes(model) if isinstance(model, (bytes, bytearray)) else None
    where = "model bytes" if content is not None else os.fspath(model)
    if content is None:
        if os.path.isdir(model):
            raise ValueError(f"{where}: a directory, not a .tflite file")
        with open(model, "rb") as f:
            content = f.read()
    if content[4:8] != b"TFL3":
        raise ValueError(f"{where}: not a .tflite model (no TFL3 file identifier)")
    try:
        ops, graph_inputs, graph_outputs = _read_model(content)
    except Exception as error:  # noqa: BLE001 -- a damaged flatbuffer fails in many ways
        raise ValueError(f"{where}: damaged .tflite model ({type(error).__name__})") from None
    model_inputs = {t.index for t in graph_inputs}
    model_outputs = {t.index for t in graph_outputs}
    names = set(layer_names) if layer_names is not None else None

    records = []
    cut = None
    for op in ops:
        violations, boundary = _violations(op, model_inputs, model_outputs)
        status, why = version_status(op.name, op.version, op.code)
        layer, layers = _layer_of(op, names)
        if cut is None and violations:
            cut = op.index
        record = {
            "index": op.index,
            "name": op.name,
            "version": op.version,
            "version_status": status,
            "layer": layer,
            "layers": layers,
            "outputs": [t.record() for t in op.outputs],
            "macs": _macs(op),
            "violations": violations,
            "version_note": why,
            "caveats": _caveats(op),
            "cpu_boundary": boundary,
        }
        records.append(record)
    for record in records:
        before = cut is None or record["index"] < cut
        record["edgetpu"] = before and not record["cpu_boundary"]

    total_macs = sum(r["macs"] for r in records)
    mapped = [r for r in records if r["edgetpu"]]
    macs_before = sum(r["macs"] for r in mapped)
    versions: dict[str, list[str]] = {"known": [], "unverified": [], "rejected": []}
    rejected_reasons = {}
    for r in records:
        key = f"{r['name']} v{r['version']}"
        if key not in versions[r["version_status"]]:
            versions[r["version_status"]].append(key)
        if r["version_status"] == "rejected":
            rejected_reasons[key] = version_status(r["name"], r["version"], ops[r["index"]].code)[1]
    cut_record = None
    if cut is not None:
        blocking = records[cut]
        cut_record = {
            "index": cut,
            "op": blocking["name"],
            "version": blocking["version"],
            "layer": blocking["layer"],
            "tensor": blocking["outputs"][0]["name"] if blocking["outputs"] else None,
            "violations": blocking["violations"],
        }
    refuses = bool(versions["rejected"])
    return {
        "prediction": PREDICTION_NOTE,
        "num_ops": len(records),
        "macs": total_macs,
        "inputs": [t.record() for t in graph_inputs],
        "outputs": [t.record() for t in graph_outputs],
        "cut": cut_record,
        "ops_before_cut": len(mapped),
        "op_share": len(mapped) / len(records) if records else 1.0,
        "macs_before_cut": macs_before,
        "mac_share": macs_before / total_macs if total_macs else float(cut is None),
        "cpu_boundary_ops": [r["index"] for r in records if r["cpu_boundary"]],
        "violating_ops": [r["index"] for r in records if r["violations"]],
        "first_by_rule": _first_by_rule(records),
        "versions": {k: sorted(v) for k, v in versions.items()},
        "rejected_reasons": rejected_reasons,
        "compiler_refuses": refuses,
        "passed": cut is None and not refuses and not any(r["cpu_boundary"] for r in records),
        "ops": records,
    }


def _first_by_rule(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """rule -> the first op breaking it: where each kind of problem starts."""
    first: dict[str, dict[str, Any]] = {}
    for r in records:
        for v in r["violations"]:
            if v["rule"] not in first:
                first[v["rule"]] = {
                    "index": r["index"],
                    "op": r["name"],
                    "layer": r["layer"],
                    "message": v["message"],
                }
    return first


def _layer_label(layer: str | None) -> str:
    return repr(layer) if layer is not None else "unknown (no layer scope in the tensor name)"


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The compact part of a `check_edgetpu` report, for a conversion report."""
    cut = report["cut"]
    first = None
    if cut is not None:
        first = f"{cut['op']} (op {cut['index']}, layer {cut['layer']!r}): " + "; ".join(
            v["message"] for v in cut["violations"]
        )
    return {
        "prediction": report["prediction"],
        "passed": report["passed"],
        "num_ops": report["num_ops"],
        "ops_before_cut": report["ops_before_cut"],
        "op_share": report["op_share"],
        "macs": report["macs"],
        "macs_before_cut": report["macs_before_cut"],
        "mac_share": report["mac_share"],
        "cut": None if cut is None else {k: cut[k] for k in ("index", "op", "layer", "tensor")},
        "first_blocker": first,
        "num_violating_ops": len(report["violating_ops"]),
        "first_by_rule": {
            rule: f"{v['op']} (op {v['index']}, layer {v['layer']!r})"
            for rule, v in report["first_by_rule"].items()
        },
        "unverified_versions": report["versions"]["unverified"],
        "rejected_versions": report["versions"]["rejected"],
        "compiler_refuses": report["compiler_refuses"],
    }


def _count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def format_report(report: dict[str, Any], show_ops: bool = False, limit: int = 20) -> str:
    """Human-readable lines for a `check_edgetpu` report."""
    lines = [f"Edge TPU rule check ({report['prediction']})"]
    if show_ops:
        for r in report["ops"]:
            where = "TPU" if r["edgetpu"] else "CPU"
            lines.append(
                f"  {where} op {r['index']:>3} {r['name']} v{r['version']} "
                f"({r['version_status']}) layer={r['layer']} macs={_count(r['macs'])}"
                + "".join(f"\n        ! {v['rule']}: {v['message']}" for v in r["violations"])
            )
    cut = report["cut"]
    if cut is None:
        lines.append("  no rule broken: every op is predicted to map to the Edge TPU")
    else:
        lines.append(
            f"  predicted cut at op {cut['index']} {cut['op']} v{cut['version']}, "
            f"layer {_layer_label(cut['layer'])} (output '{cut['tensor']}'):"
        )
        lines += [f"    {v['rule']}: {v['message']}" for v in cut["violations"]]
    lines.append(
        f"  before the cut: {report['ops_before_cut']}/{report['num_ops']} ops "
        f"({100 * report['op_share']:.1f}%), {_count(report['macs_before_cut'])}/"
        f"{_count(report['macs'])} MACs ({100 * report['mac_share']:.1f}%)"
    )
    if report["cpu_boundary_ops"]:
        lines.append(
            f"  float I/O: ops {report['cpu_boundary_ops']} (QUANTIZE/DEQUANTIZE) stay on the CPU"
        )
    violating = [r for r in report["ops"] if r["violations"]]
    if violating:
        lines.append(f"  {len(violating)} op(s) break a rule:")
        for r in violating[:limit]:
            rules = ", ".join(dict.fromkeys(v["rule"] for v in r["violations"]))
            lines.append(f"    op {r['index']} {r['name']} (layer {r['layer']!r}): {rules}")
        if len(violating) > limit:
            lines.append(f"    ... and {len(violating) - limit} more (--ops lists all)")
        lines.append("  first op breaking each rule:")
        for rule, v in report["first_by_rule"].items():
            lines.append(
                f"    {rule}: op {v['index']} {v['op']} (layer {v['layer']!r}): {v['message']}"
            )
    versions = report["versions"]
    lines.append(
        f"  op versions: {len(versions['known'])} known, unverified: "
        f"{', '.join(versions['unverified']) or 'none'}"
    )
    for key, why in report["rejected_reasons"].items():
        lines.append(f"  REJECTED {key}: {why}")
    for caveat in dict.fromkeys(c for r in report["ops"] for c in r["caveats"]):
        lines.append(f"  caveat: {caveat}")
    return "\n".join(lines)


class _OneLineErrorParser(argparse.ArgumentParser):
    """A bad argument is one line naming it (argparse would print the usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """`kvid-edgetpu-check MODEL [--json] [--ops] [--max_cpu_ops N]`; exit 1 when it fails."""
    parser = _OneLineErrorParser(
        prog="kvid-edgetpu-check",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Edge TPU rule check of a .tflite (" + PREDICTION_NOTE + ").",
    )
    parser.add_argument("model", help="path to a .tflite")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--ops", action="store_true", help="list every op")
    parser.add_argument(
        "--max_cpu_ops",
        type=int,
        default=0,
        help="pass when at most this many ops (a tail) are predicted to run on the CPU",
    )
    args = parser.parse_args(argv)
    try:
        report = check_edgetpu(args.model)
    except (OSError, ValueError) as error:
        message = str(error) if isinstance(error, ValueError) else f"{args.model}: {error.strerror}"
        print(f"kvid-edgetpu-check: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report, show_ops=args.ops))
    on_cpu = report["num_ops"] - report["ops_before_cut"]
    if report["compiler_refuses"] or on_cpu > args.max_cpu_ops:
        reason = (
            "the compiler is expected to refuse the file: " + ", ".join(report["rejected_reasons"])
            if report["compiler_refuses"]
            else summarize(report)["first_blocker"] or "float I/O ops on the CPU"
        )
        print(
            f"FAILURE: {on_cpu} of {report['num_ops']} ops predicted on the CPU "
            f"(allowed {args.max_cpu_ops}); {reason}",
            file=sys.stderr,
        )
        return 1
    return 0


def run() -> None:
    """Console-script entry point (`kvid-edgetpu-check`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
