"""Tests for kvid.profile: exact hand counts of parameters and per-clip MACs."""

import json

import pytest

from kvid import profile as kprofile
from kvid.backend import keras, tf


def _model(input_shape: tuple[int, ...], *layers: keras.layers.Layer, name: str = "net"):
    """A functional model applying `layers` in sequence."""
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name=name)


class MatMulLayer(keras.layers.Layer):
    """`tf.matmul` between two activations: `x[:, :1]` (broadcast batch dims) and `x`."""

    def __init__(self, transpose_a: bool = False, broadcast: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.transpose_a = transpose_a
        self.broadcast = broadcast

    def call(self, x):
        a = x[:, :1] if self.broadcast else x
        return tf.matmul(a, x, transpose_a=self.transpose_a, transpose_b=not self.transpose_a)


class EinsumLayer(keras.layers.Layer):
    """`tf.einsum` with an optional weight operand."""

    def __init__(self, equation: str, weight_shape: tuple[int, ...] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.equation = equation
        self.weight_shape = weight_shape

    def build(self, input_shape):
        if self.weight_shape:
            self.w = self.add_weight(name="w", shape=self.weight_shape)

    def call(self, x):
        return tf.einsum(self.equation, x, self.w if self.weight_shape else x)


class NestedFunctionLayer(keras.layers.Layer):
    """Projects through a `tf.function` that calls another `tf.function` (two nested calls)."""

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], 5))

    @tf.function
    def _outer(self, x):
        return tf.nn.relu(self._inner(x))

    @tf.function
    def _inner(self, x):
        return tf.matmul(x, self.kernel)

    def call(self, x):
        return self._outer(x)


class FunctionCallLayer(keras.layers.Layer):
    """A layer whose `call` is itself a `tf.function` (a StatefulPartitionedCall)."""

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, input_shape[-1], 2))

    @tf.function
    def call(self, x):
        return tf.nn.conv2d(x, self.kernel, strides=1, padding="SAME")


# (name, input shape without batch, layer factory, MACs, op type) -- hand counts.
CASES = [
    # out 4x4x4 (stride 2, same) * 3*3*3
    ("conv_same_stride2", (8, 8, 3), lambda: keras.layers.Conv2D(4, 3, 2, "same"), 1728, "Conv2D"),
    # out 3x3x6 (valid) * 3*3*4
    ("conv_valid", (5, 5, 4), lambda: keras.layers.Conv2D(6, 3), 1944, "Conv2D"),
    # out 4x4x8 * 3*1*(6/2); Keras runs grouped convs through a jit-compiled tf.function
    (
        "conv_groups",
        (4, 4, 6),
        lambda: keras.layers.Conv2D(8, (3, 1), padding="same", groups=2),
        1152,
        "Conv2D",
    ),
    # out 4x4x(5*2) * 3*3
    (
        "depthwise",
        (6, 6, 5),
        lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
        1440,
        "DepthwiseConv2dNative",
    ),
    # out 4x6x6x4 * 3*3*3*2
    ("conv3d", (4, 6, 6, 2), lambda: keras.layers.Conv3D(4, 3, padding="same"), 31104, "Conv3D"),
    # 2-D input: 10 * 7
    ("dense_2d", (10,), lambda: keras.layers.Dense(7), 70, "MatMul"),
    # 3-D input (Tensordot -> MatMul): 4 * 10 * 7
    ("dense_3d", (4, 10), lambda: keras.layers.Dense(7), 280, "MatMul"),
    # 4-D input: 2*3*5 * 3
    ("dense_4d", (2, 3, 5), lambda: keras.layers.Dense(3), 90, "MatMul"),
    # x @ x^T on (5, 8): 5*8*5
    ("matmul_transpose_b", (5, 8), lambda: MatMulLayer(), 200, "BatchMatMulV2"),
    # x^T @ x on (5, 8): 8*5*8
    ("matmul_transpose_a", (5, 8), lambda: MatMulLayer(transpose_a=True), 320, "BatchMatMulV2"),
    # (1,1,5,8) @ (1,3,5,8)^T broadcasts to 3 matmuls of 5*8*5
    ("matmul_broadcast", (3, 5, 8), lambda: MatMulLayer(broadcast=True), 600, "BatchMatMulV2"),
    # b=1, t=4, s=4, c=6
    ("einsum", (4, 6), lambda: EinsumLayer("btc,bsc->bts"), 96, "Einsum"),
    # ... = (1, 2), i=4, j=6, k=3
    ("einsum_ellipsis", (2, 4, 6), lambda: EinsumLayer("...ij,jk->...ik", (6, 3)), 144, "Einsum"),
    # tf.function inside tf.function, tf.matmul of a rank-3 tensor: 4 * 6 * 5
    ("nested_function", (4, 6), lambda: NestedFunctionLayer(), 120, "BatchMatMulV2"),
    # call is a tf.function: out 4x4x2 * 3*3*3
    ("function_call", (4, 4, 3), lambda: FunctionCallLayer(), 864, "Conv2D"),
    # transposed conv: each input element (3x3x4) scatters into 2*2*5 outputs
    (
        "conv_transpose",
        (3, 3, 4),
        lambda: keras.layers.Conv2DTranspose(5, 2, 2),
        720,
        "Conv2DBackpropInput",
    ),
]


@pytest.mark.parametrize(
    "input_shape, make_layer, expected, op_type",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_layer_macs(input_shape, make_layer, expected, op_type):
    layer = make_layer()
    report = kprofile.profile(_model(input_shape, layer))
    assert report.macs == expected
    assert report.macs_by_op_type == {op_type: expected}
    assert report.macs_by_layer == {layer.name: expected}
    assert report.input_shape == input_shape


def test_count_params_excludes_moving_statistics():
    model = _model(
        (6, 6, 3),
        keras.layers.Conv2D(4, 3),  # 3*3*3*4 + 4
        keras.layers.BatchNormalization(),  # gamma, beta: 4 + 4 (moving mean/var excluded)
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),  # 4*2 + 2
    )
    assert kprofile.count_params(model) == 112 + 8 + 10
    assert model.count_params() == 112 + 16 + 10  # Keras counts the moving statistics
    assert kprofile.profile(model).params == 130


def test_attribution_sums_to_total():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)  # 4x4x4 * 27 = 1728
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)  # 2x2x4 * 9 = 144
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    shared = keras.layers.Dense(4, name="shared")
    x = shared(shared(x))  # called twice (scopes "shared" and "shared_1"): 2 * 16
    x = keras.layers.Dense(3, name="head")(x)  # 12
    model = keras.Model(inputs, x, name="attr")

    report = kprofile.profile(model)
    assert report.macs_by_layer == {"stem": 1728, "dw": 144, "shared": 32, "head": 12}
    assert list(report.macs_by_layer) == ["stem", "dw", "shared", "head"]  # largest first
    assert report.macs_by_op_type == {"Conv2D": 1728, "DepthwiseConv2dNative": 144, "MatMul": 44}
    assert report.macs == sum(report.macs_by_layer.values()) == 1916
    assert kprofile.count_macs(model) == 1916


def test_ops_outside_layers_are_other():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.proj = keras.layers.Dense(6, name="proj")

        def call(self, x):
            x = self.proj(x)  # 4*5*6
            return tf.matmul(x, x, transpose_b=True)  # no layer scope: 4*6*4

    model = Subclassed()
    model.build((None, 4, 5))
    report = kprofile.profile(model, (4, 5))
    assert report.macs_by_layer == {"proj": 120, kprofile.OTHER: 96}
    assert report.macs == 216


def test_explicit_input_shape_overrides_dynamic_input():
    model = _model((None, 8, 8, 3), keras.layers.Conv3D(2, 1))  # frames unknown
    with pytest.raises(ValueError, match="'dynamic'.*not fully static"):
        kprofile.profile(keras.Model(model.input, model.output, name="dynamic"))
    assert kprofile.count_macs(model, (5, 8, 8, 3)) == 5 * 8 * 8 * 2 * 3


def test_unbuilt_model_raises_clear_error():
    model = keras.Sequential([keras.layers.Dense(2)], name="unbuilt")
    with pytest.raises(ValueError, match="'unbuilt'.*input_shape"):
        kprofile.profile(model)


def test_einsum_macs_formula():
    assert (
        kprofile._einsum_macs("bhqd,bhkd->bhqk", [[2, 3, 5, 7], [2, 3, 11, 7]])
        == 2 * 3 * 5 * 7 * 11
    )
    assert (
        kprofile._einsum_macs("...ij,...jk->...ik", [[4, 1, 2, 3], [5, 3, 6]]) == 4 * 5 * 2 * 3 * 6
    )
    assert kprofile._einsum_macs("ij->ji", [[3, 4]]) == 0


def test_table_and_json():
    model = _model((4, 10), keras.layers.Dense(7, name="a"), keras.layers.Dense(2, name="b"))
    report = kprofile.profile(model)  # a: 4*10*7 = 280, b: 4*7*2 = 56
    table = report.table()
    assert table.index("a ") < table.index("b ") < table.index("total")
    assert "83.3%" in table and "16.7%" in table and "100.0%" in table
    assert "(1 more)" in report.table(top=1)
    assert json.loads(json.dumps(report.to_json())) == {
        "params": 10 * 7 + 7 + 7 * 2 + 2,
        "macs": 336,
        "macs_by_layer": {"a": 280, "b": 56},
        "macs_by_op_type": {"MatMul": 336},
        "input_shape": [4, 10],
    }
