"""Positional gating units: the reference's relative index and interleaved grouping, and the
equality of the training (batch matmul) and deploy (depthwise) forms."""

import numpy as np
import pytest

from kvid.backend import tf
from kvid.models.posmlp.positional_gating import (
    PoSGU,
    PoSTGU,
    PoTGU,
    depthwise_kernel,
    mixing_matrices,
    relative_position_index,
    table_from_depthwise,
)

FRAMES, HEIGHT, WIDTH, CHANNELS = 4, 8, 8, 8
UNITS = [
    (PoSGU, dict(window_size=4)),
    (PoSGU, dict()),
    (PoTGU, dict()),
    (PoTGU, dict(temporal_window=2)),
    (PoSTGU, dict(temporal_window=2, window_size=4)),
    (PoSTGU, dict()),
]
FORMS = [("matmul", "folded"), ("depthwise", "folded"), ("depthwise", "sliced")]


def _inputs(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, FRAMES * HEIGHT, WIDTH, CHANNELS)).astype(np.float32)


def _unit(cls, kwargs, form="matmul", layout="folded", gamma=2, seed=1):
    """A built unit with non-trivial tables and token biases (they start at ~0 and 0)."""
    layer = cls(FRAMES, form=form, layout=layout, gamma=gamma, **kwargs)
    layer(_inputs())
    rng = np.random.default_rng(seed)
    layer.table.assign(rng.standard_normal(layer.table.shape))
    layer.token_bias.assign(rng.standard_normal(layer.token_bias.shape))
    return layer


def reference_mixing(u, window, table, bias, gamma, interleaved=True):
    """The reference's window partition + einsum('wmns,bwnvs->bwmvs') in numpy.

    `u` is `(batch, frames, height, width, channels)`; channel c is `(v, s)` with s = c mod gamma
    (einops `(v s)`), or `(s, v)` (contiguous groups) when `interleaved` is False.
    """
    batch = u.shape[0]
    t, h, w = window
    x = u.reshape(batch, FRAMES // t, t, HEIGHT // h, h, WIDTH // w, w, CHANNELS)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, -1, t * h * w, CHANNELS)
    groups = (CHANNELS // gamma, gamma) if interleaved else (gamma, CHANNELS // gamma)
    x = x.reshape(*x.shape[:3], *groups)
    if not interleaved:
        x = np.swapaxes(x, -1, -2)
    out = np.einsum("smn,bwnvs->bwmvs", mixing_matrices(table, window), x)
    out = out + bias[None, None, :, None, None]
    if not interleaved:
        out = np.swapaxes(out, -1, -2)
    out = out.reshape(batch, FRAMES // t, HEIGHT // h, WIDTH // w, t, h, w, CHANNELS)
    return out.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, FRAMES * HEIGHT, WIDTH, CHANNELS)


def _reference_unit(layer, x, interleaved=True):
    """The whole unit with the reference's mixing: norm, fc1 -> GELU, U' * V, fc2."""
    y = layer.norm_layer(x)
    u = tf.nn.gelu(layer.fc1_u(y), approximate=False).numpy()
    v = tf.nn.gelu(layer.fc1_v(y), approximate=False).numpy()
    u = u.reshape(u.shape[0], FRAMES, HEIGHT, WIDTH, CHANNELS)
    mixed = reference_mixing(
        u, layer.window, layer.table.numpy(), layer.token_bias.numpy(), layer.gamma, interleaved
    )
    return layer.fc2(mixed * v).numpy()


def test_relative_position_index_equals_the_reference_buffers(golden_dir):
    arrays = np.load(golden_dir / "posmlp.npz")
    spatial = arrays["blocks1.0.fc.encoder.gate_unit.pos.window_relative_position_index"]
    temporal = arrays["blocks1.0.t_fc.encoder.gate_unit.pos.window_relative_position_index"]
    last = arrays["blocks4.0.fc.encoder.gate_unit.pos.window_relative_position_index"]
    np.testing.assert_array_equal(relative_position_index((1, 14, 14)), spatial)
    np.testing.assert_array_equal(relative_position_index((16, 1, 1)), temporal[..., 0])
    np.testing.assert_array_equal(relative_position_index((1, 7, 7)), last)


def test_joint_index_is_time_major_over_spatial_offsets():
    index = relative_position_index((2, 2, 3))
    # token 0 = (0, 0, 0); token 11 = (1, 1, 2): offset (-1, -1, -2) -> row (0 * 3 + 0) * 5 + 0
    assert index[0, 11] == 0
    assert index[11, 0] == (2 * 3 + 2) * 5 + 4  # (+1, +1, +2): the last row
    assert index.max() == 3 * 3 * 5 - 1 and index[5, 5] == (1 * 3 + 1) * 5 + 2  # centre


@pytest.mark.parametrize("cls, kwargs", UNITS, ids=[f"{c.__name__}{k}" for c, k in UNITS])
def test_training_form_equals_the_reference_einsum(cls, kwargs):
    layer = _unit(cls, kwargs)
    x = _inputs()
    expected = _reference_unit(layer, x)
    tolerance = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=tolerance)
    # the check sees the grouping: contiguous groups (a classic porting mistake) differ
    contiguous = _reference_unit(layer, x, interleaved=False)
    assert np.abs(contiguous - expected).max() > 100 * tolerance


@pytest.mark.parametrize("cls, kwargs", UNITS, ids=[f"{c.__name__}{k}" for c, k in UNITS])
@pytest.mark.parametrize("form, layout", FORMS[1:])
def test_deploy_form_equals_training_form(cls, kwargs, form, layout):
    training = _unit(cls, kwargs)
    window = training.window
    if layout == "sliced" and (window[0] not in (1, FRAMES) or (window[0] > 1 and window[1] > 1)):
        with pytest.raises(ValueError, match="layout"):
            _unit(cls, kwargs, form, layout)
        return
    deploy = _unit(cls, kwargs, form, layout)
    deploy.set_weights(training.get_weights())  # the forms share every weight
    x = _inputs(seed=3)
    expected = training(x).numpy()
    np.testing.assert_allclose(deploy(x).numpy(), expected, atol=2e-5 * np.abs(expected).max())


def test_interleaved_groups_channel_c_uses_column_c_mod_gamma():
    layer = _unit(PoSGU, dict(window_size=4), form="depthwise", gamma=4)
    kernel = layer.depthwise_kernel().numpy()  # (1, 7, 7, channels)
    table = layer.table.numpy().reshape(1, 7, 7, 4)[::-1, ::-1, ::-1]
    for c in range(CHANNELS):
        np.testing.assert_array_equal(kernel[..., c], table[..., c % 4])
    np.testing.assert_array_equal(kernel, depthwise_kernel(layer.table.numpy(), (1, 4, 4), 8))
    matrices = layer.mixing_matrices().numpy()
    np.testing.assert_array_equal(matrices, mixing_matrices(layer.table.numpy(), (1, 4, 4)))
    assert not np.allclose(matrices[0], matrices[1])


def test_depthwise_kernel_and_table_convert_both_ways():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((3 * 5 * 7, 4))
    kernel = depthwise_kernel(table, (2, 3, 4), 12)
    assert kernel.shape == (3, 5, 7, 12)
    np.testing.assert_array_equal(table_from_depthwise(kernel, 4), table)
    kernel[..., 5] += 1.0  # channel 5 no longer equals channel 1 of its group
    with pytest.raises(ValueError, match="tie"):
        table_from_depthwise(kernel, 4)


def test_depthwise_kernel_is_the_mixing_as_a_convolution():
    """One channel, one window: the (2w-1)^2 convolution with SAME padding is P @ u."""
    rng = np.random.default_rng(2)
    table = rng.standard_normal((7 * 7, 1)).astype(np.float32)
    u = rng.standard_normal((1, 4, 4, 1)).astype(np.float32)
    kernel = depthwise_kernel(table, (1, 4, 4), 1)[0][..., None]
    conv = tf.nn.depthwise_conv2d(u, kernel, (1, 1, 1, 1), "SAME").numpy().reshape(16)
    expected = mixing_matrices(table, (1, 4, 4))[0] @ u.reshape(16)
    np.testing.assert_allclose(conv, expected, atol=1e-5)


def test_sizes_that_do_not_tile_name_the_problem():
    with pytest.raises(ValueError, match="does not tile height=8"):
        PoSGU(FRAMES, window_size=3)(_inputs())
    with pytest.raises(ValueError, match="does not tile num_frames=4"):
        PoTGU(FRAMES, temporal_window=3)(_inputs())
    with pytest.raises(ValueError, match="not divisible by gamma=3"):
        PoSGU(FRAMES, gamma=3)(_inputs())
    with pytest.raises(ValueError, match="needs form='depthwise'"):
        PoSGU(FRAMES, layout="sliced")
    with pytest.raises(ValueError, match="activation"):
        PoSGU(FRAMES, activation="hard_swish")
