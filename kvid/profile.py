"""Cost counting for kvid models: trainable parameters and MACs of the matrix ops.

The convention is docs/design.md section 6: MACs are multiply-accumulates of the matrix ops only
(convolutions, matmuls, einsums), read from the static shapes of the traced inference graph at
batch 1 (one clip). Batch norm, norms, activations, pooling and elementwise ops are not counted.

Example:
    >>> report = kvid.profile.profile(model)          # input shape from model.input_shape
    >>> print(report.table(top=10))
    >>> kvid.profile.count_macs(model, (16, 224, 224, 3))
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import warnings
from collections.abc import Sequence

from tensorflow.core.framework import function_pb2

# Private TF helpers: rebuilding a function body with the call site's static shapes has no
# public API (the library FuncGraphs keep the `None` batch they were first traced with).
from tensorflow.python.framework import function_def_to_graph as _fdef_to_graph
from tensorflow.python.ops import handle_data_util as _handle_data

from kvid.backend import keras, tf

__all__ = ["CostReport", "count_macs", "count_params", "profile"]

OTHER = "<other>"
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_IF_OPS = frozenset({"If", "StatelessIf"})
_CASE_OPS = frozenset({"Case", "StatelessCase"})
_WHILE_OPS = frozenset({"While", "StatelessWhile"})
_BATCH_MATMUL_OPS = frozenset({"BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"})
_BODY_SCOPE = "body"  # import scope of rebuilt function bodies, stripped from reported names

_Record = tuple[str, str, int]  # (op path, op type, MACs)


def count_params(model: keras.Model) -> int:
    """Number of elements in the model's trainable variables (each shared variable once).

    The PyTorch "parameters" convention: batch-norm gamma/beta count, moving statistics and
    quantization range variables (non-trainable) do not. Layers frozen with `trainable=False`
    drop out too, so count on the model as built, before any freezing.
    """
    unique = {id(v): v for v in model.trainable_variables}
    return sum(math.prod(v.shape.as_list()) for v in unique.values())


@dataclasses.dataclass(frozen=True)
class CostReport:
    """Parameters and per-clip MACs of a model, with MACs split by layer and by op type.

    Attributes:
        params: trainable parameter count (see `count_params`).
        macs: total MACs for one clip (batch 1).
        macs_by_layer: top-level layer name (or `"<other>"`) -> MACs, layers with MACs only,
            largest first; sums to `macs`.
        macs_by_op_type: TF op type (`"Conv2D"`, `"MatMul"`, `"Einsum"`, ...) -> MACs.
        input_shape: the profiled input shape, without batch.
    """

    params: int
    macs: int
    macs_by_layer: dict[str, int]
    macs_by_op_type: dict[str, int]
    input_shape: tuple[int, ...]

    def table(self, top: int | None = None) -> str:
        """A printable per-layer table sorted by MACs with each layer's share of the total.

        Args:
            top: show only the `top` most expensive layers and sum the rest into one row.
        """
        rows = sorted(self.macs_by_layer.items(), key=lambda kv: (-kv[1], kv[0]))
        if top is not None and len(rows) > top:
            rest = rows[top:]
            rows = rows[:top] + [(f"({len(rest)} more)", sum(macs for _, macs in rest))]
        rows.append(("total", self.macs))
        width = max(len(name) for name, _ in rows + [("layer", 0)])
        shape = "x".join(str(d) for d in self.input_shape)
        lines = [
            f"input {shape}  params {_human(self.params)}  MACs per clip {_human(self.macs)}",
            f"{'layer':<{width}}  {'MACs':>16}  {'':>8}  {'share':>6}",
        ]
        for name, macs in rows:
            share = f"{100.0 * macs / self.macs:.1f}%" if self.macs else "-"
            lines.append(f"{name:<{width}}  {macs:>16,}  {_human(macs):>8}  {share:>6}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as a JSON-serialisable dict."""
        return {
            "params": self.params,
            "macs": self.macs,
            "macs_by_layer": dict(self.macs_by_layer),
            "macs_by_op_type": dict(self.macs_by_op_type),
            "input_shape": list(self.input_shape),
        }


def profile(model: keras.Model, input_shape: Sequence[int] | None = None) -> CostReport:
    """Counts the parameters and per-clip MACs of `model` (docs/design.md section 6).

    The model is traced with `training=False` at batch 1; every matrix op of the graph, including
    those inside nested function calls, is counted from its static shapes and attributed to the
    top-level layer whose name scope contains it.

    Args:
        model: a built Keras model with a single input.
        input_shape: input shape without batch; defaults to `model.input_shape[1:]`. Must be
            fully static.

    Returns:
        The `CostReport`.

    Raises:
        ValueError: the input shape is missing or not static, or a counted op has a dynamic shape.
    """
    shape = _resolve_input_shape(model, input_shape)
    inputs = getattr(model, "inputs", None)
    dtype = inputs[0].dtype if inputs else tf.float32
    traced = tf.function(lambda x: model(x, training=False))
    graph = traced.get_concrete_function(tf.TensorSpec((1, *shape), dtype)).graph
    try:
        records = _GraphWalker(graph.as_graph_def().library).walk(graph)
    except ValueError as error:
        raise ValueError(f"Cannot count MACs of model {model.name!r}: {error}") from None

    layer_names = {layer.name for layer in model.layers}
    by_layer: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for path, op_type, macs in records:
        layer = _attribute(path, model.name, layer_names)
        by_layer[layer] = by_layer.get(layer, 0) + macs
        by_type[op_type] = by_type.get(op_type, 0) + macs
    return CostReport(
        params=count_params(model),
        macs=sum(by_layer.values()),
        macs_by_layer=dict(sorted(by_layer.items(), key=lambda kv: (-kv[1], kv[0]))),
        macs_by_op_type=dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
        input_shape=shape,
    )


def count_macs(model: keras.Model, input_shape: Sequence[int] | None = None) -> int:
    """Per-clip MACs of `model`: `profile(model, input_shape).macs`."""
    return profile(model, input_shape).macs


def _resolve_input_shape(model: keras.Model, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The static input shape without batch, or a ValueError naming the model."""
    if input_shape is None:
        try:
            full = model.input_shape
        except (AttributeError, ValueError) as error:
            raise ValueError(
                f"Model {model.name!r} has no defined input shape ({error}); pass input_shape."
            ) from None
        if isinstance(full, list):
            raise ValueError(f"Model {model.name!r} has {len(full)} inputs; profile needs one.")
        input_shape = tuple(full[1:])
    shape = tuple(input_shape)
    if not all(isinstance(d, numbers.Integral) and d > 0 for d in shape):
        raise ValueError(
            f"Model {model.name!r}: input shape {shape} (without batch) is not fully static; "
            "pass a static input_shape, e.g. (16, 224, 224, 3)."
        )
    return tuple(int(d) for d in shape)


def _attribute(path: str, model_name: str, layer_names: set[str]) -> str:
    """The top-level layer owning the op at `path` (`model/layer/...`), else `OTHER`.

    The layer is the first name scope below the model's own. A layer called more than once gets
    scopes `name_1`, `name_2`, ...: those map back to `name` unless a layer has that exact name.
    """
    parts = path.split("/")
    if len(parts) > 1 and parts[0] == model_name:
        parts = parts[1:]
    if len(parts) < 2:  # an op directly in the model's scope belongs to no layer
        return OTHER
    scope = parts[0]
    if scope in layer_names:
        return scope
    match = re.fullmatch(r"(.+)_\d+", scope)
    if match and match.group(1) in layer_names:
        return match.group(1)
    return OTHER


class _GraphWalker:
    """Collects the matrix ops of a graph, recursing into the function bodies it calls."""

    def __init__(self, library: function_pb2.FunctionDefLibrary) -> None:
        self._library = library
        self._fdefs = {fdef.signature.name: fdef for fdef in library.function}

    def walk(self, graph: tf.Graph, prefix: str = "") -> list[_Record]:
        records: list[_Record] = []
        for op in graph.get_operations():
            name = op.name
            if prefix and name.startswith(_BODY_SCOPE + "/"):
                name = name[len(_BODY_SCOPE) + 1 :]
            path = prefix + name
            macs = _op_macs(op)
            if macs:
                records.append((path, op.type, macs))
            records.extend(self._walk_called_functions(op, path + "/"))
        return records

    def _walk_called_functions(self, op: tf.Operation, prefix: str) -> list[_Record]:
        """MAC records of the function bodies that `op` calls (none for ordinary ops)."""
        inputs = list(op.inputs)
        if op.type in _CALL_OPS:
            return self._walk_function(op.get_attr("f").name, inputs, prefix)
        if op.type in self._fdefs:  # a function called directly as an op
            return self._walk_function(op.type, inputs, prefix)
        if op.type in _IF_OPS or op.type in _CASE_OPS:
            if op.type in _IF_OPS:
                names = [op.get_attr("then_branch").name, op.get_attr("else_branch").name]
            else:
                names = [branch.name for branch in op.get_attr("branches")]
            # Only one branch runs: count the most expensive one (an upper bound).
            branches = [self._walk_function(name, inputs[1:], prefix) for name in names]
            return max(branches, key=lambda records: sum(r[2] for r in records))
        if op.type in _WHILE_OPS:
            warnings.warn(
                f"{op.name}: loop body counted once; its trip count is not static.", stacklevel=2
            )
            return self._walk_function(op.get_attr("body").name, inputs, prefix)
        return []

    def _walk_function(self, name: str, inputs: list[tf.Tensor], prefix: str) -> list[_Record]:
        return self.walk(self._instantiate(name, inputs), prefix)

    def _instantiate(self, name: str, inputs: list[tf.Tensor]) -> tf.Graph:
        """Rebuilds function `name` in a new graph, with the static shapes of its call site.

        Resource arguments keep their variable's shape (handle data), so kernels read inside the
        body have static shapes too.
        """
        fdef = function_pb2.FunctionDef()
        fdef.CopyFrom(self._fdefs[name])
        for attrs in fdef.arg_attr.values():  # traced shapes would override the call-site ones
            attrs.attr.pop("_output_shapes", None)
        graph_def, tensor_names = _fdef_to_graph.function_def_to_graph_def(
            fdef, input_shapes=[t.shape for t in inputs]
        )
        graph_def.library.CopyFrom(self._library)
        graph = tf.Graph()
        with graph.as_default():
            input_map = {}
            for index, (arg, tensor) in enumerate(zip(fdef.signature.input_arg, inputs)):
                arg_tensor = tf.compat.v1.placeholder(tensor.dtype, tensor.shape, f"arg{index}")
                if tensor.dtype == tf.resource:
                    _handle_data.copy_handle_data(tensor, arg_tensor)
                input_map[tensor_names[arg.name]] = arg_tensor
            tf.graph_util.import_graph_def(graph_def, input_map=input_map, name=_BODY_SCOPE)
        return graph


def _op_macs(op: tf.Operation) -> int:
    """MACs of one op from its static shapes; 0 for ops that are not matrix ops."""
    kind = op.type
    if kind in ("Conv2D", "Conv3D"):  # kernel (k..., in_channels / groups, out_channels)
        return _numel(op.outputs[0], op) * math.prod(_dims(op.inputs[1], op)[:-1])
    if kind == "DepthwiseConv2dNative":  # kernel (kh, kw, in_channels, multiplier)
        return _numel(op.outputs[0], op) * math.prod(_dims(op.inputs[1], op)[:2])
    if kind in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):
        # Transposed conv: the same MACs as the forward conv from its output to its input.
        return _numel(op.inputs[2], op) * math.prod(_dims(op.inputs[1], op)[:-1])
    if kind == "MatMul":
        a = _dims(op.inputs[0], op)
        depth = a[0] if op.get_attr("transpose_a") else a[1]
        return _numel(op.outputs[0], op) * depth
    if kind in _BATCH_MATMUL_OPS:  # the output already has the broadcast batch dims
        a = _dims(op.inputs[0], op)
        depth = a[-2] if op.get_attr("adj_x") else a[-1]
        return _numel(op.outputs[0], op) * depth
    if kind == "Einsum":
        equation = op.get_attr("equation").decode()
        return _einsum_macs(equation, [_dims(t, op) for t in op.inputs])
    return 0


def _einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """Product of the sizes of every distinct index (and of the broadcast `...` dims).

    One-operand equations (transposes, traces, reductions) multiply nothing and count 0.
    """
    terms = equation.replace(" ", "").split("->")[0].split(",")
    if len(terms) < 2:
        return 0
    sizes: dict[str, int] = {}
    ellipsis_shapes = []
    for term, shape in zip(terms, shapes):
        head, _, tail = term.partition("...")
        if "..." in term:
            num_broadcast = len(shape) - len(head) - len(tail)
            ellipsis_shapes.append(shape[len(head) : len(head) + num_broadcast])
            shape = shape[: len(head)] + shape[len(head) + num_broadcast :]
        for label, size in zip(head + tail, shape):
            sizes[label] = max(sizes.get(label, 1), size)  # a size-1 label broadcasts
    broadcast = _broadcast_shape(ellipsis_shapes)
    return math.prod(sizes.values()) * math.prod(broadcast)


def _broadcast_shape(shapes: list[list[int]]) -> list[int]:
    """NumPy broadcasting of static shapes."""
    rank = max((len(s) for s in shapes), default=0)
    result = [1] * rank
    for shape in shapes:
        for i, size in enumerate(shape, start=rank - len(shape)):
            result[i] = max(result[i], size)
    return result


def _dims(tensor: tf.Tensor, op: tf.Operation) -> list[int]:
    if not tensor.shape.is_fully_defined():
        raise ValueError(
            f"op {op.name!r} ({op.type}) has the non-static shape {tensor.shape} at batch 1."
        )
    return tensor.shape.as_list()


def _numel(tensor: tf.Tensor, op: tf.Operation) -> int:
    return math.prod(_dims(tensor, op))


def _human(count: int) -> str:
    """1234567 -> '1.23M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)
