"""Numerical checks of the Mobile-Former layers against closed forms and NumPy references."""

import numpy as np
import pytest

from kvid.backend import tf
from kvid.layers import FrameConv
from kvid.models.mobile_former.bridge import Former, Former2Mobile, Mobile2Former
from kvid.models.mobile_former.dynamic_relu import DynamicReLU
from kvid.models.mobile_former.layers import ChannelShuffle, GlobalTokens
from kvid.models.mobile_former.temporal_stack import TemporalStack
from tests.helpers import np_dense, np_hard_sigmoid, np_layer_norm, np_softmax


def _mobile2former_reference(layer, x, tokens, heads):
    """Mobile-Former Local2Global in NumPy (K = V = raw features, head-major channel split)."""
    b, t, h, w, c = x.shape
    feats = x.reshape(b, t * h * w, heads, c // heads).transpose(0, 2, 1, 3)
    q = np_dense(layer.q, tokens)
    q = q.reshape(b, -1, heads, c // heads).transpose(0, 2, 1, 3)
    attn = np_softmax(q @ feats.transpose(0, 1, 3, 2) * (c // heads) ** -0.5)
    out = (attn @ feats).transpose(0, 2, 1, 3).reshape(b, -1, c)
    out = out * np_hard_sigmoid(np_dense(layer.alpha, tokens)) * 2
    return np_layer_norm(tokens + np_dense(layer.proj, out), *layer.norm.get_weights())


def test_temporal_stack_takes_neighbour_frames_with_zeros_at_the_ends():
    frames, channels = 5, 3
    x = np.zeros((2, frames, 2, 3, channels), np.float32)
    for t in range(frames):
        x[:, t] = 10 * (t + 1) + np.arange(channels)  # value = 10 * (frame + 1) + channel
    out = TemporalStack(3)(x).numpy()
    assert out.shape == (2, frames, 2, 3, 3 * channels)
    for t in range(frames):
        for i, source in enumerate((t - 1, t, t + 1)):
            block = out[:, t, :, :, i * channels : (i + 1) * channels]
            expected = x[:, source] if 0 <= source < frames else np.zeros_like(x[:, 0])
            np.testing.assert_array_equal(block, expected)


@pytest.mark.parametrize("kernel_t", [3, 5])
def test_temporal_stack_then_frame_conv_equals_conv3d(kernel_t):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 10, 10, 3)).astype(np.float32)
    conv = FrameConv(4, 3, strides=2, batch_norm=False, use_bias=False)
    out = conv(TemporalStack(kernel_t)(x)).numpy()
    # The Conv2D kernel's input axis is (time, channel) flattened: a Conv3D kernel (t, h, w, c, o).
    kernel = conv.conv.get_weights()[0].reshape(3, 3, kernel_t, 3, 4).transpose(2, 0, 1, 3, 4)
    pad_t = kernel_t // 2
    padded = tf.pad(x, [[0, 0], [pad_t, pad_t], [1, 1], [1, 1], [0, 0]])
    expected = tf.nn.conv3d(padded, kernel, (1, 1, 2, 2, 1), "VALID").numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_channel_shuffle_matches_pytorch_view_transpose():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 1, 1, 12)
    out = ChannelShuffle(3)(x).numpy().reshape(12)
    expected = x.reshape(3, 4).T.reshape(12)  # view(g, C/g) -> transpose -> flatten
    np.testing.assert_array_equal(out, expected)


def test_dynamic_relu_closed_form():
    x = np.linspace(-2, 2, 2 * 2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 3, 4)
    tokens = np.random.default_rng(2).standard_normal((2, 3, 8)).astype(np.float32)
    layer = DynamicReLU(token_index=1, reduction=2)
    out = layer([x, tokens]).numpy()
    hidden = np.maximum(np_dense(layer.fc1, tokens[:, 1]), 0)
    theta = np_hard_sigmoid(np_dense(layer.fc2, hidden))
    a1 = (theta[:, :4] - 0.5) * 2 + 1
    a2 = (theta[:, 4:] - 0.5) * 2
    a1, a2 = a1[:, None, None, None], a2[:, None, None, None]
    np.testing.assert_allclose(out, np.maximum(x * a1, x * a2), rtol=1e-5, atol=1e-6)


def test_dynamic_relu_with_ones_kernels():
    """Closed form: all-ones weights make theta = hsig(d/r * sum(z) + ...), known slopes."""
    layer = DynamicReLU(reduction=4)
    x = np.full((1, 1, 1, 1, 2), -1.0, np.float32)
    tokens = np.zeros((1, 1, 8), np.float32)
    layer([x, tokens])
    for dense in (layer.fc1, layer.fc2):
        w, b = dense.get_weights()
        dense.set_weights([np.ones_like(w), np.zeros_like(b)])
    # z = 0 -> theta = hsig(0) = 0.5 -> a1 = 1, a2 = 0 -> max(-1, 0) = 0 (a plain ReLU)
    np.testing.assert_allclose(layer([x, tokens]).numpy(), 0.0)


def test_mobile2former_full_matches_numpy():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 4, 8)).astype(np.float32)
    tokens = rng.standard_normal((2, 5, 12)).astype(np.float32)
    layer = Mobile2Former(num_heads=2)
    out = layer([x, tokens]).numpy()
    np.testing.assert_allclose(
        out, _mobile2former_reference(layer, x, tokens, 2), rtol=1e-4, atol=1e-4
    )


def test_mobile2former_factorized_equals_full_on_one_frame_without_pooling():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 1, 4, 4, 8)).astype(np.float32)
    tokens = rng.standard_normal((2, 3, 12)).astype(np.float32)
    full = Mobile2Former(formulation="full")
    factorized = Mobile2Former(formulation="factorized", max_keys_per_frame=16)
    full([x, tokens])
    factorized([x, tokens])
    factorized.set_weights(full.get_weights())
    np.testing.assert_allclose(
        factorized([x, tokens]).numpy(), full([x, tokens]).numpy(), rtol=1e-5, atol=1e-5
    )


def test_mobile2former_factorized_matches_numpy():
    """Per-frame softmax over pooled keys, then a softmax over frames of each frame's max."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 3, 4, 4, 8)).astype(np.float32)
    tokens = rng.standard_normal((1, 2, 12)).astype(np.float32)
    layer = Mobile2Former(formulation="factorized", max_keys_per_frame=4)
    out = layer([x, tokens]).numpy()
    assert layer.pool == 2
    pooled = x.reshape(1, 3, 2, 2, 2, 2, 8).mean(axis=(3, 5))  # 2x2 average pooling
    heads, depth = 2, 4
    keys = pooled.reshape(1, 3, 4, heads, depth).transpose(0, 3, 1, 2, 4)  # (B, h, T, S, d)
    q = np_dense(layer.q, tokens).reshape(1, 2, heads, depth).transpose(0, 2, 1, 3)  # (B,h,M,d)
    scores = np.einsum("bhmd,bhtsd->bhmts", q, keys) * depth**-0.5
    per_frame = np.einsum("bhmts,bhtsd->bhmtd", np_softmax(scores), keys)
    frame_weights = np_softmax(scores.max(-1))  # (B, h, M, T)
    attended = np.einsum("bhmt,bhmtd->bhmd", frame_weights, per_frame)
    attended = attended.transpose(0, 2, 1, 3).reshape(1, 2, 8)
    attended = attended * np_hard_sigmoid(np_dense(layer.alpha, tokens)) * 2
    expected = np_layer_norm(tokens + np_dense(layer.proj, attended), *layer.norm.get_weights())
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_former2mobile_matches_numpy():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 3, 3, 8)).astype(np.float32)
    tokens = rng.standard_normal((2, 4, 12)).astype(np.float32)
    layer = Former2Mobile(num_heads=2)
    out = layer([x, tokens]).numpy()
    q = x.reshape(2, 18, 2, 4).transpose(0, 2, 1, 3)
    k = np_dense(layer.k, tokens).reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
    v = np_dense(layer.proj, tokens).reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
    attn = np_softmax(q @ k.transpose(0, 1, 3, 2) * 4**-0.5)  # softmax over the tokens
    expected = x + (attn @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_former_matches_numpy():
    rng = np.random.default_rng(10)
    z = rng.standard_normal((2, 6, 16)).astype(np.float32)
    layer = Former(num_heads=4)
    out = layer(z).numpy()
    q = np_dense(layer.q, z).reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)
    kv = z.reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)  # keys = values = tokens, 4 heads
    attended = (np_softmax(q @ kv.transpose(0, 1, 3, 2) * 0.5) @ kv).transpose(0, 2, 1, 3)
    z1 = np_layer_norm(
        z + np_dense(layer.proj, attended.reshape(2, 6, 16)), *layer.norm1.get_weights()
    )
    from scipy.special import erf

    hidden = np_dense(layer.fc1, z1)
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))  # exact GELU
    expected = np_layer_norm(z1 + np_dense(layer.fc2, hidden), *layer.norm2.get_weights())
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_global_tokens_are_shared_across_the_batch():
    layer = GlobalTokens(4, 8)
    out = layer(np.zeros((3, 2, 4, 4, 3), np.float32)).numpy()
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], layer.get_weights()[0])
