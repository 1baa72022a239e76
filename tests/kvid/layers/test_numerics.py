"""Numerical checks of kvid layers against closed forms and NumPy references."""

import numpy as np
import pytest

from kvid import layers
from kvid.backend import keras, tf


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
