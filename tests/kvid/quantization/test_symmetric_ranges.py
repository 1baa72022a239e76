"""Symmetric fake-quant points: the ranges that give a matmul's right-hand operand zero point 0."""

import numpy as np
import pytest

from kvid.backend import keras, tf
from kvid.layers.base import create_range_variables, fake_quant_with_range
from kvid.models.dualformer.stratified_attention import LocalWindowAttention
from kvid.models.mobile_former.bridge import Former, Former2Mobile, Mobile2Former
from kvid.models.posmlp.positional_gating import PoSGU
from kvid.models.xvit.space_time_mixing import SpaceTimeMixingAttention


def _ranges(layer):
    return {
        name: (float(v["min"].numpy()), float(v["max"].numpy()))
        for name, v in layer._ranges.items()
    }


def test_symmetric_range_is_minus_m_to_m_with_zero_exact():
    holder = keras.layers.Layer()
    variables = create_range_variables(holder, "point")
    x = tf.constant(np.linspace(0.0, 2.0, 101, dtype=np.float32))  # one-signed, as after a ReLU
    out = fake_quant_with_range(x, variables, training=True, symmetric=True).numpy()
    assert float(variables["min"].numpy()) == -2.0 and float(variables["max"].numpy()) == 2.0
    step = 2.0 / 127  # narrow range: -127..127, zero point 0
    np.testing.assert_allclose(out / step, np.round(out / step), atol=1e-3)
    assert out[0] == 0.0 and out[-1] == pytest.approx(2.0)
    # a second batch moves the range by the EMA and keeps it symmetric, exactly
    fake_quant_with_range(-3.0 * x, variables, training=True, symmetric=True)
    assert float(variables["min"].numpy()) == -float(variables["max"].numpy())
    assert float(variables["max"].numpy()) == pytest.approx(0.99 * 2.0 + 0.01 * 6.0)
    # a range stored asymmetric (weights from before the point was symmetric) is symmetric
    # after one step
    variables["min"].assign(-0.5)
    fake_quant_with_range(x, variables, training=True, symmetric=True)
    assert float(variables["min"].numpy()) == -float(variables["max"].numpy())
    # inference reads the stored range as it is
    again = fake_quant_with_range(x, variables, training=False, symmetric=True).numpy()
    assert np.abs(again - x.numpy()).max() <= float(variables["max"].numpy()) / 127


def test_asymmetric_range_is_unchanged():
    holder = keras.layers.Layer()
    variables = create_range_variables(holder, "point")
    x = tf.constant(np.linspace(0.0, 2.0, 11, dtype=np.float32))
    fake_quant_with_range(x, variables, training=True)
    assert float(variables["min"].numpy()) == 0.0 and float(variables["max"].numpy()) == 2.0


@pytest.mark.parametrize(
    "layer, inputs, symmetric",
    [
        (Former2Mobile(quantized=True), [(1, 2, 4, 4, 8), (1, 3, 16)], {"keys", "values"}),
        (Former(num_heads=2, quantized=True), [(1, 3, 16)], {"tokens"}),
        (
            Mobile2Former(formulation="factorized", max_keys_per_frame=4, quantized=True),
            [(1, 2, 4, 4, 8), (1, 3, 16)],
            {"keys", "attended"},
        ),
        (Mobile2Former(formulation="full", quantized=True), [(1, 2, 4, 4, 8), (1, 3, 16)],
         {"keys"}),
        (LocalWindowAttention(2, (2, 2, 2), quantized=True), [(1, 2, 4, 4, 8)], {"key", "value"}),
        (SpaceTimeMixingAttention(num_heads=2, shift_div=4, quantized=True), [(1, 2, 5, 16)],
         {"qkv", "shifted"}),
        (PoSGU(num_frames=2, window_size=2, gamma=4, quantized=True), [(1, 8, 4, 8)], {"u"}),
    ],
)  # fmt: skip
def test_right_hand_operands_of_attention_layers_get_symmetric_ranges(layer, inputs, symmetric):
    rng = np.random.default_rng(0)
    values = [tf.constant(rng.random(shape, dtype=np.float32) + 0.5) for shape in inputs]
    layer(values if len(values) > 1 else values[0], training=True)
    ranges = _ranges(layer)
    assert symmetric <= set(ranges)
    for name, (low, high) in ranges.items():
        if name in symmetric:
            assert low == -high and high > 0, name
    # the positive inputs keep one-signed ranges wherever the layer does not need symmetry
    assert any(low != -high for name, (low, high) in ranges.items() if name not in symmetric)
