"""Numerical checks of kvid layers against closed forms and NumPy references."""

import numpy as np
import pytest

from kvid import layers
from kvid.backend import keras, tf


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _dense(layer, x):
    w, b = layer.get_weights()
    return x @ w + b


def _hsig(x):
    return np.clip(x + 3, 0, 6) / 6


@pytest.mark.parametrize("strides", [(1, 1, 1), (2, 2, 2), (1, 2, 2)])
def test_conv2plus1d_equals_conv3d_with_factorised_kernel(strides):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 10, 10, 4)).astype(np.float32)
    layer = layers.Conv2Plus1D((3, 3, 3), strides, batch_norm=False)
    out = layer(x).numpy()
    ks = layer.spatial.get_weights()[0][..., 0]  # (3, 3, C)
    kt = layer.temporal.get_weights()[0][:, 0, :, 0]  # (3, C)
    kernel3d = kt[:, None, None, :] * ks[None]  # (3, 3, 3, C): the factorised kernel
    full = np.zeros((3, 3, 3, 4, 4), np.float32)
    for c in range(4):
        full[..., c, c] = kernel3d[..., c]
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]])
    expected = tf.nn.conv3d(padded, full, (1, *strides, 1), "VALID").numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_temporal_stack_takes_neighbour_frames_with_zeros_at_the_ends():
    frames, channels = 5, 3
    x = np.zeros((2, frames, 2, 3, channels), np.float32)
    for t in range(frames):
        x[:, t] = 10 * (t + 1) + np.arange(channels)  # value = 10 * (frame + 1) + channel
    out = layers.TemporalStack(3)(x).numpy()
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
    conv = layers.FrameConv(4, 3, strides=2, batch_norm=False, use_bias=False)
    out = conv(layers.TemporalStack(kernel_t)(x)).numpy()
    # The Conv2D kernel's input axis is (time, channel) flattened: a Conv3D kernel (t, h, w, c, o).
    kernel = conv.conv.get_weights()[0].reshape(3, 3, kernel_t, 3, 4).transpose(2, 0, 1, 3, 4)
    pad_t = kernel_t // 2
    padded = tf.pad(x, [[0, 0], [pad_t, pad_t], [1, 1], [1, 1], [0, 0]])
    expected = tf.nn.conv3d(padded, kernel, (1, 1, 2, 2, 1), "VALID").numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_frame_conv_is_per_frame_with_symmetric_padding():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 8, 8, 2)).astype(np.float32)
    layer = layers.FrameConv(5, 3, strides=2, batch_norm=False, use_bias=False)
    out = layer(x).numpy()
    kernel = layer.conv.get_weights()[0]
    for t in range(3):
        frame = tf.pad(x[:, t], [[0, 0], [1, 1], [1, 1], [0, 0]])
        expected = tf.nn.conv2d(frame, kernel, 2, "VALID").numpy()
        np.testing.assert_allclose(out[:, t], expected, rtol=1e-5, atol=1e-5)


def test_channel_shuffle_matches_pytorch_view_transpose():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 1, 1, 12)
    out = layers.ChannelShuffle(3)(x).numpy().reshape(12)
    expected = x.reshape(3, 4).T.reshape(12)  # view(g, C/g) -> transpose -> flatten
    np.testing.assert_array_equal(out, expected)


def test_dynamic_relu_closed_form():
    x = np.linspace(-2, 2, 2 * 2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 3, 4)
    tokens = np.random.default_rng(2).standard_normal((2, 3, 8)).astype(np.float32)
    layer = layers.DynamicReLU(token_index=1, reduction=2)
    out = layer([x, tokens]).numpy()
    hidden = np.maximum(_dense(layer.fc1, tokens[:, 1]), 0)
    theta = _hsig(_dense(layer.fc2, hidden))
    a1 = (theta[:, :4] - 0.5) * 2 + 1
    a2 = (theta[:, 4:] - 0.5) * 2
    a1, a2 = a1[:, None, None, None], a2[:, None, None, None]
    np.testing.assert_allclose(out, np.maximum(x * a1, x * a2), rtol=1e-5, atol=1e-6)


def test_dynamic_relu_with_ones_kernels():
    """Closed form: all-ones weights make theta = hsig(d/r * sum(z) + ...), known slopes."""
    layer = layers.DynamicReLU(reduction=4)
    x = np.full((1, 1, 1, 1, 2), -1.0, np.float32)
    tokens = np.zeros((1, 1, 8), np.float32)
    layer([x, tokens])
    for dense in (layer.fc1, layer.fc2):
        w, b = dense.get_weights()
        dense.set_weights([np.ones_like(w), np.zeros_like(b)])
    # z = 0 -> theta = hsig(0) = 0.5 -> a1 = 1, a2 = 0 -> max(-1, 0) = 0 (a plain ReLU)
    np.testing.assert_allclose(layer([x, tokens]).numpy(), 0.0)


@pytest.mark.parametrize("shape", [(3, 16), (2, 3, 4, 5, 8)])
def test_layer_norm_matches_keras(shape):
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32) * 3 + 1
    ours = layers.LayerNorm(epsilon=1e-5)
    ref = keras.layers.LayerNormalization(epsilon=1e-5)
    ours(x)
    ref(x)
    gamma = np.random.default_rng(4).standard_normal(shape[-1]).astype(np.float32)
    beta = np.random.default_rng(5).standard_normal(shape[-1]).astype(np.float32)
    ours.set_weights([gamma, beta])
    ref.set_weights([gamma, beta])
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-4, atol=1e-5)


def _mobile2former_reference(layer, x, tokens, heads):
    """Mobile-Former Local2Global in NumPy (K = V = raw features, head-major channel split)."""
    b, t, h, w, c = x.shape
    feats = x.reshape(b, t * h * w, heads, c // heads).transpose(0, 2, 1, 3)
    q = _dense(layer.q, tokens)
    q = q.reshape(b, -1, heads, c // heads).transpose(0, 2, 1, 3)
    attn = _softmax(q @ feats.transpose(0, 1, 3, 2) * (c // heads) ** -0.5)
    out = (attn @ feats).transpose(0, 2, 1, 3).reshape(b, -1, c)
    out = out * _hsig(_dense(layer.alpha, tokens)) * 2
    return _layer_norm(tokens + _dense(layer.proj, out), *layer.norm.get_weights())


def test_mobile2former_full_matches_numpy():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 4, 8)).astype(np.float32)
    tokens = rng.standard_normal((2, 5, 12)).astype(np.float32)
    layer = layers.Mobile2Former(num_heads=2)
    out = layer([x, tokens]).numpy()
    np.testing.assert_allclose(
        out, _mobile2former_reference(layer, x, tokens, 2), rtol=1e-4, atol=1e-4
    )


def test_mobile2former_factorized_equals_full_on_one_frame_without_pooling():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 1, 4, 4, 8)).astype(np.float32)
    tokens = rng.standard_normal((2, 3, 12)).astype(np.float32)
    full = layers.Mobile2Former(formulation="full")
    factorized = layers.Mobile2Former(formulation="factorized", max_keys_per_frame=16)
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
    layer = layers.Mobile2Former(formulation="factorized", max_keys_per_frame=4)
    out = layer([x, tokens]).numpy()
    assert layer.pool == 2
    pooled = x.reshape(1, 3, 2, 2, 2, 2, 8).mean(axis=(3, 5))  # 2x2 average pooling
    heads, depth = 2, 4
    keys = pooled.reshape(1, 3, 4, heads, depth).transpose(0, 3, 1, 2, 4)  # (B, h, T, S, d)
    q = _dense(layer.q, tokens).reshape(1, 2, heads, depth).transpose(0, 2, 1, 3)  # (B,h,M,d)
    scores = np.einsum("bhmd,bhtsd->bhmts", q, keys) * depth**-0.5
    per_frame = np.einsum("bhmts,bhtsd->bhmtd", _softmax(scores), keys)
    frame_weights = _softmax(scores.max(-1))  # (B, h, M, T)
    attended = np.einsum("bhmt,bhmtd->bhmd", frame_weights, per_frame)
    attended = attended.transpose(0, 2, 1, 3).reshape(1, 2, 8)
    attended = attended * _hsig(_dense(layer.alpha, tokens)) * 2
    expected = _layer_norm(tokens + _dense(layer.proj, attended), *layer.norm.get_weights())
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_former2mobile_matches_numpy():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 3, 3, 8)).astype(np.float32)
    tokens = rng.standard_normal((2, 4, 12)).astype(np.float32)
    layer = layers.Former2Mobile(num_heads=2)
    out = layer([x, tokens]).numpy()
    q = x.reshape(2, 18, 2, 4).transpose(0, 2, 1, 3)
    k = _dense(layer.k, tokens).reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
    v = _dense(layer.proj, tokens).reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
    attn = _softmax(q @ k.transpose(0, 1, 3, 2) * 4**-0.5)  # softmax over the tokens
    expected = x + (attn @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_former_matches_numpy():
    rng = np.random.default_rng(10)
    z = rng.standard_normal((2, 6, 16)).astype(np.float32)
    layer = layers.Former(num_heads=4)
    out = layer(z).numpy()
    q = _dense(layer.q, z).reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)
    kv = z.reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)  # keys = values = tokens, 4 heads
    attended = (_softmax(q @ kv.transpose(0, 1, 3, 2) * 0.5) @ kv).transpose(0, 2, 1, 3)
    z1 = _layer_norm(z + _dense(layer.proj, attended.reshape(2, 6, 16)), *layer.norm1.get_weights())
    from scipy.special import erf

    hidden = _dense(layer.fc1, z1)
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))  # exact GELU
    expected = _layer_norm(z1 + _dense(layer.fc2, hidden), *layer.norm2.get_weights())
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_quantized_layer_fake_quantizes_to_256_levels():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 16)).astype(np.float32)
    layer = layers.LayerNorm(quantized=True)
    layer(x, training=True)  # the first training batch sets the ranges
    ranges = layer._ranges["centered"]
    assert float(ranges["min"].numpy()) < 0 < float(ranges["max"].numpy())
    centered = layer.fq("centered", tf.constant(x - x.mean(-1, keepdims=True)), False).numpy()
    assert len(np.unique(centered)) <= 256


def test_quantized_layer_norm_damps_tokens_whose_variance_rounds_to_zero():
    rng = np.random.default_rng(12)
    # One loud token (std 30) sets the variance range; the quiet one (std 0.5) keeps its centred
    # values in int8 but its variance (0.25) is below half a variance step (about 1.8).
    x = rng.standard_normal((1, 2, 64)).astype(np.float32) * np.array([[[30.0], [0.5]]], np.float32)
    layer = layers.LayerNorm(quantized=True)
    layer(x, training=True)
    variance_max = float(layer._ranges["variance"]["max"].numpy())
    assert variance_max > 500
    np.testing.assert_allclose(float(layer.variance_floor()), variance_max / 255, rtol=1e-6)
    out = layer(x, training=False).numpy()
    assert np.all(np.isfinite(out))
    # Without the floor the quiet token would be scaled by rsqrt(1e-5) = 316 (to hundreds); with
    # it, by at most 1 / sqrt(one variance step).
    assert np.abs(out[0, 1]).max() > 0
    assert np.abs(out[0, 1]).max() <= np.abs(x[0, 1]).max() / np.sqrt(variance_max / 255) * 1.5
    assert np.abs(out[0, 1]).max() < 2.0
    # The loud token is normalized as in float.
    loud = x[0, 0] - x[0, 0].mean()
    np.testing.assert_allclose(out[0, 0], loud / loud.std(), atol=0.1)
    # Float mode keeps the plain epsilon.
    assert layers.LayerNorm(epsilon=1e-5).variance_floor() == 1e-5


def test_global_tokens_are_shared_across_the_batch():
    layer = layers.GlobalTokens(4, 8)
    out = layer(np.zeros((3, 2, 4, 4, 3), np.float32)).numpy()
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], layer.get_weights()[0])


def test_position_embedding_adds_the_spatial_and_temporal_tables():
    layer = layers.PositionEmbedding()
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    out = layer(x).numpy()
    spatial, temporal = layer.spatial.numpy(), layer.temporal.numpy()
    assert spatial.shape == (4, 5, 6) and temporal.shape == (3, 6)
    assert spatial.std() > 0.01 and temporal.std() > 0.01
    np.testing.assert_allclose(out - x, np.broadcast_to(
        spatial[None, None] + temporal[None, :, None, None], x.shape), atol=1e-6)  # fmt: skip
