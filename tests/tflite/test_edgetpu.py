"""Edge TPU rule check: tiny full-int8 models that each break one Coral rule, and one that passes.

Every model is a flat Keras graph on a (1, H, W, C) input converted with the kvid-convert int8
path; each failing test asserts the violation, the predicted cut (op index, op name, layer) and
the share of ops and MACs before it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from kvid_tflite import edgetpu
from kvid_tflite.convert import convert_keras_model


def _proj(shape=(8, 8, 4), name="proj"):
    """Input and a 1x1 conv (8 channels): op 0 of every failing model, on the Edge TPU."""
    inputs = keras.Input(shape, name="image")
    return inputs, keras.layers.Conv2D(8, 1, name=name)(inputs)


def _head(x, inputs, name):
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name=name)


def build_passing() -> keras.Model:
    """Conv2D / ReLU6 / DepthwiseConv2D / Add / mean pooling / FullyConnected / 1-D Softmax."""
    inputs = keras.Input((8, 8, 3), name="image")
    stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    stem = keras.layers.ReLU(6.0, name="stem_relu6")(stem)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(stem)
    x = keras.layers.ReLU(6.0, name="dw_relu6")(x)
    x = keras.layers.Conv2D(8, 1, name="project")(x)
    x = keras.layers.Add(name="residual")([stem, x])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, name="logits")(x)
    return keras.Model(inputs, keras.layers.Softmax(name="probs")(x), name="passing")


# MACs from the shapes: stem 8*8*8 outputs x 3*3*3 taps, depthwise 8*8*8 x 3*3, project 8*8*8 x 8,
# logits 5 x 8.
PASSING_MACS = 512 * 27 + 512 * 9 + 512 * 8 + 5 * 8


def build_rank() -> keras.Model:
    """A (1, 2, 4, 8, 8) view with 4 non-unit dims (frames split out of the frame-stacked view)."""
    inputs, x = _proj()
    x = keras.layers.Reshape((2, 4, 8, 8), name="split_frames")(x)
    bias = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(1, 2, 1, 1, 8)
    # A per-frame bias keeps the converter from folding the 5-D view away.
    x = keras.layers.Lambda(lambda t: t + bias, name="frame_bias")(x)
    x = keras.layers.Reshape((8, 8, 8), name="merge_frames")(x)
    return _head(keras.layers.GlobalAveragePooling2D(name="pool")(x), inputs, "rank")


def build_gelu() -> keras.Model:
    inputs, x = _proj()
    x = keras.layers.Activation(tf.nn.gelu, name="gelu_act")(x)
    return _head(keras.layers.GlobalAveragePooling2D(name="pool")(x), inputs, "gelu")


def build_hard_swish() -> keras.Model:
    inputs, x = _proj()
    # TF 2.21 fuses x * relu6(x + 3) / 6 into one HARD_SWISH op.
    x = keras.layers.Activation(lambda t: t * tf.nn.relu6(t + 3.0) / 6.0, name="hswish")(x)
    return _head(keras.layers.GlobalAveragePooling2D(name="pool")(x), inputs, "hard_swish")


def build_batch_matmul() -> keras.Model:
    """Token Gram matrix: a BATCH_MATMUL between two activations."""
    inputs, x = _proj()
    tokens = keras.layers.Reshape((64, 8), name="tokens")(x)
    gram = keras.layers.Dot(axes=(2, 2), name="gram")([tokens, tokens])
    return _head(keras.layers.GlobalAveragePooling1D(name="pool")(gram), inputs, "batch_matmul")


def build_softmax_2d() -> keras.Model:
    """Softmax over channels of a (1, 64, 8) token tensor: 2-D, Coral allows only 1-D."""
    inputs, x = _proj()
    tokens = keras.layers.Reshape((64, 8), name="tokens")(x)
    x = keras.layers.Softmax(name="token_softmax")(tokens)
    return _head(keras.layers.GlobalAveragePooling1D(name="pool")(x), inputs, "softmax_2d")


def build_softmax_large() -> keras.Model:
    """A 1-D softmax over 16,384 elements (Coral: at most 16,000)."""
    inputs, x = _proj((1, 2048, 4))
    x = keras.layers.Reshape((16384,), name="flatten")(x)
    return _head(keras.layers.Softmax(name="big_softmax")(x), inputs, "softmax_large")


def build_mean_channels() -> keras.Model:
    """MEAN over the channel axis (Coral: x and/or y only)."""
    inputs, x = _proj()
    x = keras.layers.Lambda(lambda t: tf.reduce_mean(t, axis=-1), name="channel_mean")(x)
    return _head(keras.layers.Flatten(name="flatten")(x), inputs, "mean_channels")


BUILDERS = {
    "passing": build_passing,
    "rank": build_rank,
    "gelu": build_gelu,
    "hard_swish": build_hard_swish,
    "batch_matmul": build_batch_matmul,
    "softmax_2d": build_softmax_2d,
    "softmax_large": build_softmax_large,
    "mean_channels": build_mean_channels,
}
PROJ_MACS = 64 * 8 * 4  # the 1x1 conv of `_proj` on (8, 8, 4)


@pytest.fixture(scope="module")
def converted():
    """(kind, mode) -> (keras model, .tflite bytes), each converted once per module."""
    cache: dict[tuple[str, str], tuple[keras.Model, bytes]] = {}

    def get(kind: str, mode: str = "int8") -> tuple[keras.Model, bytes]:
        if (kind, mode) not in cache:
            keras.utils.set_random_seed(0)
            model = BUILDERS[kind]()
            shape = model.input_shape[1:]
            rng = np.random.default_rng(0)
            clips = [rng.random(shape, dtype=np.float32) for _ in range(4)]
            # the converter's own graph, whose op indices the rule checks below name
            content = convert_keras_model(model, mode, lambda: iter(clips), symmetric_rhs=False)
            cache[kind, mode] = (model, content)
        return cache[kind, mode]

    return get


def _check(converted, kind: str, mode: str = "int8") -> dict:
    model, content = converted(kind, mode)
    report = edgetpu.check_edgetpu(content)
    json.dumps(report)  # the report is JSON-serialisable
    return report


def _assert_cut(report: dict, index: int, op: str, layer: str, rule: str, text: str) -> None:
    cut = report["cut"]
    assert (cut["index"], cut["op"], cut["layer"]) == (index, op, layer), cut
    messages = [v["message"] for v in cut["violations"] if v["rule"] == rule]
    assert any(text in m for m in messages), cut["violations"]
    assert report["ops_before_cut"] == index
    assert report["op_share"] == pytest.approx(index / report["num_ops"])
    assert not report["passed"]
    assert [r["edgetpu"] for r in report["ops"]] == [i < index for i in range(report["num_ops"])]
    # Every op before the cut is clean: the cut is the first violation in execution order.
    assert report["violating_ops"][0] == index


def test_passing_model_maps_every_op_and_mac(converted):
    model, content = converted("passing")
    report = edgetpu.check_edgetpu(content, layer_names=[layer.name for layer in model.layers])
    names = [r["name"] for r in report["ops"]]
    assert names == [
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "CONV_2D",
        "ADD",
        "MEAN",
        "FULLY_CONNECTED",
        "SOFTMAX",  # 1-D with 5 elements: allowed by the table
    ]
    assert report["cut"] is None and report["passed"]
    assert report["violating_ops"] == []
    assert report["op_share"] == 1.0 and report["mac_share"] == 1.0
    assert report["macs"] == report["macs_before_cut"] == PASSING_MACS
    assert [r["macs"] for r in report["ops"]] == [512 * 27, 512 * 9, 512 * 8, 0, 0, 40, 0]
    assert {r["version_status"] for r in report["ops"]} == {"known"}
    assert not report["compiler_refuses"]
    layers = [r["layer"] for r in report["ops"]]
    assert layers[:5] == ["stem", "dw", "project", "residual", "pool"]
    assert report["ops"][0]["layers"] == ["stem_relu6", "stem"]  # ReLU6 fused into the conv
    summary = edgetpu.summarize(report)
    assert summary["passed"] and summary["cut"] is None and summary["first_blocker"] is None


def test_float_model_is_cut_at_its_first_op(converted):
    report = _check(converted, "passing", "float32")
    _assert_cut(report, 0, "CONV_2D", "stem", "float", "float op: float32")
    assert report["mac_share"] == 0.0
    assert len(report["violating_ops"]) == report["num_ops"]


def test_four_non_unit_dims_cut_at_the_reshape(converted):
    report = _check(converted, "rank")
    _assert_cut(report, 1, "RESHAPE", "split_frames", "rank", "[1, 2, 4, 8, 8] has 4 non-unit")
    assert report["mac_share"] == pytest.approx(PROJ_MACS / report["macs"])
    by_index = {r["index"]: r for r in report["ops"]}
    assert by_index[2]["name"] == "ADD" and by_index[2]["layer"] == "frame_bias"
    assert by_index[3]["layer"] == "merge_frames"
    assert report["violating_ops"] == [1, 2, 3]  # back to 3 non-unit dims after merge_frames


def test_gelu_is_not_in_the_table_and_its_code_is_refused(converted):
    report = _check(converted, "gelu")
    _assert_cut(report, 1, "GELU", "gelu_act", "op_table", "GELU is not in the Coral op table")
    # Compiler 16 does not know builtin code 150 at all: it refuses the file.
    assert report["compiler_refuses"]
    assert [k for k in report["rejected_reasons"]] == [f"GELU v{report['ops'][1]['version']}"]
    assert "out of range" in report["rejected_reasons"][report["versions"]["rejected"][0]]


def test_hard_swish_is_not_in_the_table(converted):
    report = _check(converted, "hard_swish")
    _assert_cut(report, 1, "HARD_SWISH", "hswish", "op_table", "use ReLU6")
    assert not report["compiler_refuses"]  # HARD_SWISH v1 is an old op: it parses, on the CPU


def test_batch_matmul_between_activations(converted):
    report = _check(converted, "batch_matmul")
    _assert_cut(report, 2, "BATCH_MATMUL", "gram", "op_table", "two activations")
    assert report["ops"][1]["name"] == "RESHAPE"
    gram_macs = 64 * 64 * 8
    assert report["ops"][2]["macs"] == gram_macs
    assert report["macs"] == PROJ_MACS + gram_macs + 3 * 64
    assert report["mac_share"] == pytest.approx(PROJ_MACS / report["macs"])


def test_two_dimensional_softmax(converted):
    report = _check(converted, "softmax_2d")
    _assert_cut(report, 2, "SOFTMAX", "token_softmax", "limitation", "[1, 64, 8] is not 1-D")


def test_one_dimensional_softmax_over_16000_elements(converted):
    report = _check(converted, "softmax_large")
    index = next(r["index"] for r in report["ops"] if r["name"] == "SOFTMAX")
    _assert_cut(report, index, "SOFTMAX", "big_softmax", "limitation", "16384 elements")
    assert all("not 1-D" not in v["message"] for v in report["cut"]["violations"])


def test_mean_over_channels(converted):
    report = _check(converted, "mean_channels")
    _assert_cut(report, 1, "MEAN", "channel_mean", "limitation", "reduces axes [3]")


def test_version_status_table():
    assert edgetpu.version_status("CONV_2D", 3)[0] == "known"
    assert edgetpu.version_status("CONV_2D", 6)[0] == "rejected"
    assert "#631" in edgetpu.version_status("CONV_2D", 7)[1]
    assert edgetpu.version_status("QUANTIZE", 3)[0] == "rejected"
    assert edgetpu.version_status("ADD", 4)[0] == "unverified"  # TF 2.6: no public log
    assert edgetpu.version_status("MADE_UP_OP", 1)[0] == "unverified"
    assert edgetpu.version_status("GELU", 1, code=150)[0] == "rejected"
    # The known table stays below every publicly rejected version.
    for (name, lowest), _ in edgetpu.COMPILER_REJECTED_VERSIONS.items():
        assert edgetpu.COMPILER_KNOWN_VERSIONS[name] < lowest


def test_cli_exit_codes_and_json(converted, tmp_path, capsys):
    _, passing = converted("passing")
    _, batch_matmul = converted("batch_matmul")
    (tmp_path / "passing.tflite").write_bytes(passing)
    (tmp_path / "bmm.tflite").write_bytes(batch_matmul)

    assert edgetpu.main([str(tmp_path / "passing.tflite")]) == 0
    assert "every op is predicted to map" in capsys.readouterr().out

    assert edgetpu.main([str(tmp_path / "bmm.tflite"), "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["cut"]["op"] == "BATCH_MATMUL" and report["cut"]["layer"] == "gram"
    assert "FAILURE" in captured.err and "BATCH_MATMUL (op 2, layer 'gram')" in captured.err

    # The BATCH_MATMUL and the 2 ops after it on the CPU: allowed as a 3-op tail.
    assert edgetpu.main([str(tmp_path / "bmm.tflite"), "--ops", "--max_cpu_ops", "3"]) == 0
    out = capsys.readouterr().out
    assert "CPU op   2 BATCH_MATMUL" in out and "TPU op   0 CONV_2D" in out


def _float_io_int8(static_batch: bool) -> bytes:
    """The passing model in int8 with float32 I/O (QUANTIZE first, DEQUANTIZE last)."""
    keras.utils.set_random_seed(0)
    model = build_passing()
    rng = np.random.default_rng(0)
    clips = [rng.random((1, 8, 8, 3), dtype=np.float32) for _ in range(4)]
    if static_batch:
        spec = tf.TensorSpec([1, 8, 8, 3], tf.float32)
        function = tf.function(lambda x: model(x), input_signature=[spec])
        concrete = function.get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)  # batch stays dynamic
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([clip] for clip in clips)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def test_float_io_boundary_ops_stay_on_the_cpu_without_cutting():
    report = edgetpu.check_edgetpu(_float_io_int8(static_batch=True))
    names = [r["name"] for r in report["ops"]]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    assert report["cut"] is None and report["violating_ops"] == []
    assert report["cpu_boundary_ops"] == [0, len(names) - 1]
    assert report["ops_before_cut"] == len(names) - 2
    assert report["mac_share"] == 1.0 and not report["passed"]  # the boundary runs on the CPU


def test_dynamic_batch_breaks_the_static_shape_rule():
    report = edgetpu.check_edgetpu(_float_io_int8(static_batch=False))
    rules = {v["rule"] for v in report["cut"]["violations"]}
    assert report["cut"]["index"] == 0 and rules == {"static_shape"}
    assert (
        "'serving_default_image:0' has a dynamic shape" in report["cut"]["violations"][0]["message"]
    )


def test_weights_computed_at_run_time_break_the_constant_parameter_rule():
    # Seen in converted graphs whose depthwise kernel is sliced from a table by ops: the filter
    # is an op output, not a constant.
    def tensor(index, name, shape, constant):
        return edgetpu._Tensor(index, name, "int8", shape, False, constant, None, 0)

    source = tensor(0, "x", (1, 8, 8, 24), False)
    kernel = tensor(1, "table_dw/strided_slice", (1, 15, 15, 24), False)
    bias = tensor(2, "table_dw/bias", (24,), True)
    out = tensor(3, "table_dw/depthwise", (1, 8, 8, 24), False)
    op = edgetpu._Op(0, "DEPTHWISE_CONV_2D", 4, 3, [source, kernel, bias], [out], None)
    violations, boundary = edgetpu._violations(op, model_inputs={0}, model_outputs={3})
    assert not boundary
    assert [v["rule"] for v in violations] == ["constant_params"]
    assert "'table_dw/strided_slice' is computed at run time" in violations[0]["message"]
