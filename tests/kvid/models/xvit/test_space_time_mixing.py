"""XViT space-time mixing: the shift and the attention against NumPy references, and their cost."""

import numpy as np
import pytest

import kvid
from kvid.backend import keras
from kvid.layers import TemporalShift
from kvid.layers.temporal_shift import temporal_shift_kernel
from kvid.models.xvit.space_time_mixing import SpaceTimeMixingAttention


def numpy_shift(x, fold, num_segments=None):
    """Reference TemporalShift on (B, T, S, C): [0, fold) from t+1, [fold, 2 fold) from t-1."""
    batch, frames, tokens, channels = x.shape
    segments = num_segments or frames
    x = x.reshape(-1, segments, tokens, channels)
    out = x.copy()
    out[:, :, :, : 2 * fold] = 0
    out[:, :-1, :, :fold] = x[:, 1:, :, :fold]
    out[:, 1:, :, fold : 2 * fold] = x[:, :-1, :, fold : 2 * fold]
    return out.reshape(batch, frames, tokens, channels)


def numpy_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_mixing_attention(x, w_qkv, b_qkv, w_o, b_o, heads, fold, summary=False, segments=None):
    """Reference XViT attention on (B, T, N, C): shift k and v (never q), attend per frame."""
    batch, frames, tokens, channels = x.shape
    depth = channels // heads
    qkv = x @ w_qkv + b_qkv
    q, k, v = qkv[..., :channels], qkv[..., channels : 2 * channels], qkv[..., 2 * channels :]
    if summary:
        k_sum, v_sum = k.mean(2), v.mean(2)  # (B, T, C): one summary token per frame
    if fold:
        k, v = numpy_shift(k, fold, segments), numpy_shift(v, fold, segments)
    if summary:
        k = np.concatenate([k, np.repeat(k_sum[:, None], frames, axis=1)], axis=2)
        v = np.concatenate([v, np.repeat(v_sum[:, None], frames, axis=1)], axis=2)

    def heads_first(a):  # (B, T, L, C) -> (B, T, h, L, d), channel = head * d + j
        return a.reshape(*a.shape[:3], heads, depth).transpose(0, 1, 3, 2, 4)

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    attn = numpy_softmax(q @ k.transpose(0, 1, 2, 4, 3) / np.sqrt(depth))
    out = (attn @ v).transpose(0, 1, 3, 2, 4).reshape(batch, frames, tokens, channels)
    return out @ w_o + b_o


@pytest.mark.parametrize("shift_div", [8, 4])
def test_shift_takes_each_channel_from_the_right_frame(shift_div):
    frames, channels = 5, 16
    fold = channels // shift_div
    t = np.arange(frames)[:, None, None]
    c = np.arange(channels)[None, None, :]
    x = np.broadcast_to(10.0 * t + c, (frames, 3, channels)).astype(np.float32)[None]
    y = TemporalShift(shift_div)(x).numpy()[0]
    np.testing.assert_array_equal(y, numpy_shift(x, fold)[0])
    for frame in range(frames):
        row = y[frame, 0]
        # channel 0 holds frame t+1, channel `fold` holds frame t-1, the rest frame t
        assert row[0] == (10 * (frame + 1) if frame < frames - 1 else 0)
        assert row[fold] == (10 * (frame - 1) + fold if frame > 0 else 0)
        np.testing.assert_array_equal(row[2 * fold :], 10 * frame + np.arange(2 * fold, channels))
    assert np.all(y[-1, :, :fold] == 0) and np.all(y[0, :, fold : 2 * fold] == 0)  # not a roll


def test_shift_in_chunks_of_num_segments_zero_pads_each_chunk():
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 8)).astype(np.float32)
    y = TemporalShift(4, num_segments=4)(x).numpy()
    np.testing.assert_array_equal(y, numpy_shift(x, 2, segments := 4))
    assert segments == 4 and np.all(y[:, 3, :, :2] == 0) and np.all(y[:, 4, :, 2:4] == 0)


def test_shift_of_a_feature_map_acts_on_its_time_major_view():
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 5, 8)).astype(np.float32)
    y = TemporalShift(4)(x).numpy()
    np.testing.assert_array_equal(y, numpy_shift(x.reshape(2, 4, 15, 8), 2).reshape(x.shape))


def test_shift_kernel_is_one_hot():
    kernel = temporal_shift_kernel(16, 2)
    assert kernel.shape == (3, 1, 16, 1)
    np.testing.assert_array_equal(kernel.sum(axis=(0, 1, 3)), np.ones(16))
    assert kernel[2, 0, :2].all() and kernel[0, 0, 2:4].all() and kernel[1, 0, 4:].all()


def _attention_and_weights(x, heads, **kwargs):
    layer = SpaceTimeMixingAttention(heads, **kwargs)
    layer(x)
    rng = np.random.default_rng(1)
    channels = x.shape[-1]
    weights = [
        rng.standard_normal((channels, 3 * channels)).astype(np.float32) / np.sqrt(channels),
        rng.uniform(-0.2, 0.2, 3 * channels).astype(np.float32),
        rng.standard_normal((channels, channels)).astype(np.float32) / np.sqrt(channels),
        rng.uniform(-0.2, 0.2, channels).astype(np.float32),
    ]
    layer.set_weights(weights)
    return layer, weights


@pytest.mark.parametrize(
    "shift_div, summary, segments",
    [(8, False, None), (4, False, 2), (4, True, None), (0, True, None)],
)
def test_mixing_attention_matches_numpy(shift_div, summary, segments):
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 24)).astype(np.float32)
    layer, w = _attention_and_weights(
        x, 3, shift_div=shift_div, summary_tokens=summary, num_segments=segments
    )
    expected = numpy_mixing_attention(
        x, *w, heads=3, fold=24 // shift_div if shift_div else 0, summary=summary, segments=segments
    )
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_queries_are_not_shifted_and_frames_mix_only_through_the_shift():
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 16)).astype(np.float32)
    plain, _ = _attention_and_weights(x, 2, shift_div=0)
    mixed, weights = _attention_and_weights(x, 2, shift_div=8)
    plain.set_weights(weights)
    changed = x.copy()
    changed[0, 3] += 1.0  # only the last frame changes
    for layer, reaches_frame_2 in ((plain, False), (mixed, True)):
        delta = np.abs(layer(changed).numpy() - layer(x).numpy()).max(axis=(2, 3))[0]
        assert delta[0] == 0 and delta[1] == 0  # +-1 frame per layer
        assert (delta[2] > 0) == reaches_frame_2


def _attention_model(frames, tokens, channels, **kwargs):
    inputs = keras.Input((frames, tokens, channels))
    return keras.Model(inputs, SpaceTimeMixingAttention(4, **kwargs)(inputs))


@pytest.mark.parametrize("shift_div", [8, 4])
def test_mixing_costs_spatial_attention_plus_the_shift_only(shift_div):
    frames, tokens, channels = 4, 17, 32
    spatial = kvid.profile.count_macs(_attention_model(frames, tokens, channels, shift_div=0))
    expected_spatial = frames * (4 * tokens * channels**2 + 2 * tokens**2 * channels)
    assert spatial == expected_spatial
    mixed = kvid.profile.count_macs(_attention_model(frames, tokens, channels, shift_div=shift_div))
    assert mixed - spatial == 6 * frames * tokens * channels  # the one-hot (3, 1) depthwise conv


def test_summary_tokens_add_frames_keys_per_query():
    frames, tokens, channels = 4, 17, 32
    plain = kvid.profile.count_macs(_attention_model(frames, tokens, channels, shift_div=0))
    summary = kvid.profile.count_macs(
        _attention_model(frames, tokens, channels, shift_div=0, summary_tokens=True)
    )
    assert summary - plain == 2 * frames * tokens * frames * channels


def test_invalid_sizes_are_errors():
    with pytest.raises(ValueError, match="not a multiple of num_segments"):
        TemporalShift(4, num_segments=3)(np.zeros((1, 4, 2, 8), np.float32))
    with pytest.raises(ValueError, match="not divisible by heads"):
        SpaceTimeMixingAttention(3)(np.zeros((1, 2, 2, 8), np.float32))
    with pytest.raises(ValueError, match="frames axis"):
        SpaceTimeMixingAttention(2, shift_div=4)(np.zeros((1, 2, 8), np.float32))
