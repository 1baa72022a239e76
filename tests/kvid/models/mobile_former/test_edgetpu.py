"""Video Mobile-Former's Edge TPU form: its layers against the clip-layout layers and NumPy, and
the preset's shape of things (same blocks as vmf_tiny, no attention, no 5-D tensor)."""

import numpy as np
import pytest

import kvid.models
from kvid.layers import Conv2Plus1D, FrameConv
from kvid.models.mobile_former.bridge import Former, Former2Mobile, Mobile2Former
from kvid.models.mobile_former.dynamic_relu import DynamicReLU
from kvid.models.mobile_former.edgetpu import (
    GatedFormer2Mobile,
    PooledMobile2Former,
    StackedConv,
    StackedDynamicReLU,
    StackedTemporalStack,
)
from kvid.models.mobile_former.temporal_stack import TemporalStack
from tests.helpers import np_dense

FRAMES, HEIGHT, WIDTH, CHANNELS = 4, 8, 6, 5


def _clip(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, FRAMES, HEIGHT, WIDTH, CHANNELS)).astype(np.float32)


def _stack(clip):
    return clip.reshape(clip.shape[0], -1, *clip.shape[3:])


def test_stacked_temporal_stack_is_temporal_stack_on_stacked_frames():
    clip = _clip()
    expected = _stack(TemporalStack(3)(clip).numpy())
    np.testing.assert_array_equal(StackedTemporalStack(3, FRAMES)(_stack(clip)).numpy(), expected)


@pytest.mark.parametrize(
    "kernel, strides, multiplier",
    [((3, 3, 3), (2, 2, 2), 2), ((3, 3, 3), (1, 1, 1), 1), ((1, 3, 3), (1, 2, 2), 1)],
)
def test_stacked_conv_is_the_2plus1d_conv_of_the_clip(kernel, strides, multiplier):
    """Every frame is padded on its own: the frame-stacked conv equals the (2+1)D conv of the
    clip layout exactly, spatial and temporal strides included."""
    clip = _clip(1)
    reference = Conv2Plus1D(kernel, strides, depth_multiplier=multiplier)
    stacked = StackedConv(None, kernel, strides, FRAMES, depth_multiplier=multiplier)
    reference(clip), stacked(_stack(clip))  # built
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in reference.get_weights()]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
    reference.set_weights(weights)
    stacked.set_weights(weights)
    expected = _stack(reference(clip, training=False).numpy())
    np.testing.assert_allclose(
        stacked(_stack(clip), training=False).numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_stacked_full_conv_is_the_frame_conv_of_the_clip():
    clip = _clip(10)
    reference, stacked = FrameConv(7, 3, strides=2), StackedConv(7, 3, 2, FRAMES)
    reference(clip), stacked(_stack(clip))  # built
    stacked.set_weights(reference.get_weights())
    np.testing.assert_allclose(
        stacked(_stack(clip)).numpy(), _stack(reference(clip).numpy()), rtol=1e-5, atol=1e-5
    )


def test_pooled_mobile2former_reads_each_frames_grid_in_frame_order():
    clip, tokens = _clip(3), np.random.default_rng(4).standard_normal((2, 12)).astype(np.float32)
    layer = PooledMobile2Former(FRAMES, grid_size=2, dynamic_gate=True, bn_epsilon=1e-3)
    layer([_stack(clip), tokens])
    rng = np.random.default_rng(5)
    for weight in layer.update.weights + layer.alpha.weights:
        weight.assign(rng.standard_normal(weight.shape) * 0.3)
    grid = clip.reshape(2, FRAMES, 2, HEIGHT // 2, 2, WIDTH // 2, CHANNELS).mean(axis=(3, 5))
    update = np_dense(layer.update, grid.reshape(2, -1))
    gate = 2 / (1 + np.exp(-np_dense(layer.alpha, tokens)))
    expected = (tokens + update * gate) / np.sqrt(1 + 1e-3)  # fresh BN: mean 0, variance 1
    got = layer([_stack(clip), tokens], training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_gated_former2mobile_gates_and_shifts_each_cell_of_each_frame():
    clip, tokens = _clip(6), np.random.default_rng(7).standard_normal((2, 12)).astype(np.float32)
    layer = GatedFormer2Mobile(FRAMES, hidden_units=8, grid_size=2)
    layer([_stack(clip), tokens])
    hidden = np.clip(np_dense(layer.hidden, tokens), 0, 6)
    gate = 2 / (1 + np.exp(-np_dense(layer.gate, hidden)))
    shift = np_dense(layer.shift, hidden)

    def spread(values):  # cell (t, i, j) covers rows i*H/2.. and columns j*W/2.. of frame t
        cells = values.reshape(2, FRAMES, 2, 2, CHANNELS)
        return cells.repeat(HEIGHT // 2, axis=2).repeat(WIDTH // 2, axis=3)

    expected = clip * spread(gate) + spread(shift)
    got = layer([_stack(clip), tokens]).numpy()
    np.testing.assert_allclose(got, _stack(expected), rtol=1e-4, atol=1e-5)


def test_stacked_dynamic_relu_is_dynamic_relu_on_flat_tokens():
    clip = _clip(8)
    tokens = np.random.default_rng(9).standard_normal((2, 3, 4)).astype(np.float32)
    reference = DynamicReLU(token_index=1, reduction=2)
    stacked = StackedDynamicReLU(4, token_index=1, reduction=2)
    reference([clip, tokens]), stacked([_stack(clip), tokens.reshape(2, -1)])  # built
    stacked.set_weights(reference.get_weights())
    np.testing.assert_allclose(
        stacked([_stack(clip), tokens.reshape(2, -1)]).numpy(),
        _stack(reference([clip, tokens]).numpy()),
        rtol=1e-6,
    )


def test_edgetpu_preset_is_vmf_tiny_without_attention_or_5d_tensors():
    tiny, edgetpu = kvid.models.get_preset("vmf_tiny"), kvid.models.get_preset("vmf_tiny_edgetpu")
    assert edgetpu["edgetpu"] and not tiny["edgetpu"]
    for key in ("blocks", "num_frames", "image_size", "stem_channels", "token_dim", "num_tokens"):
        assert edgetpu[key] == tiny[key], key
    model = kvid.models.create("vmf_tiny_edgetpu", num_classes=5, num_frames=4, image_size=32)
    ranks = {len(layer.output.shape) for layer in model.layers[1:]}
    assert ranks <= {2, 4}  # frame-stacked feature maps and flat tokens only
    attention = (Mobile2Former, Former2Mobile, Former)
    assert not any(isinstance(layer, attention) for layer in model.layers)
