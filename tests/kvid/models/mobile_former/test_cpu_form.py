"""The CPU form of Video Mobile-Former (`vmf_xs_cpu`): every op XNNPACK lacks in int8 replaced.

XNNPACK has no int8 GELU, HARD_SWISH, MAXIMUM (DyReLU) or RSQRT (LayerNorm): in the CPU form the
Former's FFN uses ReLU, the head ReLU6, the blocks ReLU6, the input is not normalized, and the
first blocks run without their bridge. Its int8 model, by either route (QAT model through the
converter, or post-training quantization), keeps none of those ops outside XNNPACK but the
tokens' LayerNorms (six tokens: batch norm there saved no time and lost int8 fidelity), has no
float op, and stays within cosine 0.99 of the Keras model.
"""

from __future__ import annotations

import numpy as np
import pytest

import kvid
import kvid.quantization
from kvid.backend import keras
from kvid.layers.layer_norm import LayerNorm
from kvid.models.mobile_former.bridge import Former, Mobile2Former
from kvid.models.mobile_former.dynamic_relu import DynamicReLU
from kvid_tflite import benchmark
from kvid_tflite.audit import audit_model, check_int8
from tests.helpers import convert_int8, flat_graph_ops, int8_vs_keras_cosines, smooth_clips

ISLANDS = {"GELU", "HARD_SWISH", "MAXIMUM", "BATCH_MATMUL"}
SMALL = dict(num_frames=4, image_size=64)


def _model(**overrides):
    keras.utils.set_random_seed(0)
    return kvid.models.create("vmf_xs_cpu", num_classes=10, **{**SMALL, **overrides})


def _with_batch_statistics(model, clips, steps: int = 30):
    """Batch-norm moving statistics from `clips`, as training leaves them. With the initial
    statistics (mean 0, variance 1) the raw-input CPU form's logits do not depend on the clip,
    and an int8-vs-float cosine would only measure a constant."""
    batch = np.concatenate(clips)
    for _ in range(steps):
        model(batch, training=True)
    return model


def test_cpu_form_leaves_out_the_first_bridges_only():
    model = _model()
    names = {layer.name for layer in model.layers}
    blocks = kvid.models.get_preset("vmf_xs_cpu")["blocks"]
    for index, block in enumerate(blocks):
        bridged = block.bridge and block.expand2 > 0
        assert (f"block{index}_m2f" in names) == bridged, index
        assert (f"block{index}_f2m" in names) == bridged, index
    assert not blocks[4].bridge and blocks[5].bridge
    # no GELU, hard-swish or dynamic ReLU left anywhere; LayerNorm only on the tokens
    assert not [m.name for m in model.submodules if isinstance(m, DynamicReLU)]
    norms = {m.name for m in model.submodules if isinstance(m, LayerNorm)}
    assert norms == {"norm", "norm1", "norm2"}, norms  # in the Mobile->Formers and Formers
    assert not {op.type for op in flat_graph_ops(model)} & {"Gelu", "Maximum", "HardSwish"}


@pytest.mark.parametrize("route", ["ptq", "qat"])
def test_cpu_form_int8_runs_inside_xnnpack(route):
    model = _model()
    shape = model.input_shape[1:]
    calibration = smooth_clips(shape, 8, seed=1)
    clips = smooth_clips(shape, 3, seed=2)
    _with_batch_statistics(model, calibration)
    if route == "qat":
        reference = kvid.quantization.calibrate(
            kvid.quantization.quantize_model(model), calibration
        )
    else:
        reference = model
    tflite_bytes = convert_int8(reference, calibration)
    check_int8(audit_model(tflite_bytes))
    fallback = benchmark.xnnpack_fallback(tflite_bytes)
    assert not ISLANDS & set(fallback["fallback_by_name"]), fallback["fallback_by_name"]
    for layer_op in fallback["fallback_by_layer"]:  # the tokens' LayerNorms, nothing else
        if layer_op.endswith(" RSQRT"):
            assert layer_op.split()[0].endswith(("_m2f", "_former")), layer_op
    assert not benchmark.asymmetric_batch_matmuls(tflite_bytes)
    assert min(int8_vs_keras_cosines(tflite_bytes, reference, clips)) >= 0.99


def test_token_norm_and_ffn_choices_round_trip_and_refuse_unknown_values():
    tokens = np.random.default_rng(0).normal(size=(2, 6, 32)).astype(np.float32)
    features = np.random.default_rng(1).normal(size=(2, 2, 4, 4, 8)).astype(np.float32)
    former = Former(norm="batch", activation="relu", name="former")
    bridge = Mobile2Former(formulation="factorized", norm="batch", name="m2f")
    for layer, inputs in ((former, tokens), (bridge, [features, tokens])):
        out = layer(inputs, training=False)
        copy = type(layer).from_config(layer.get_config())
        copy(inputs)
        copy.set_weights(layer.get_weights())
        np.testing.assert_allclose(copy(inputs, training=False), out, rtol=1e-6, atol=1e-6)
        # batch norm: moving statistics per token channel, frozen into the int8 model
        assert any("moving_mean" in w.name for w in layer.weights)
    with pytest.raises(ValueError, match="former_x: norm 'group'"):
        Former(norm="group", name="former_x")(tokens)
    with pytest.raises(ValueError, match="former_y: activation 'swish'"):
        Former(activation="swish", name="former_y")
