"""DualFormer layers against NumPy references: LW-MSA, GP-MSA, tubelet convs, PEG, partitions."""

import math

import numpy as np
import pytest

from kvid.backend import tf
from kvid.models.dualformer.peg import PEG, peg_kernel_from_conv3d
from kvid.models.dualformer.stratified_attention import (
    GlobalPyramidAttention,
    LocalWindowAttention,
    pyramid_kernels,
    relative_position_index,
    window_merge,
    window_partition,
)
from kvid.models.dualformer.tubelet_conv import TubeletConv, conv3d_kernel_to_tubelet

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv3d_ncdhw(x, weight, bias, stride, padding, groups):
    """Direct NumPy Conv3d on (B, T, H, W, C) with a PyTorch (O, I/groups, kt, kh, kw) kernel."""
    x = np.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
    batch, frames, height, width, channels = x.shape
    out_c, in_per_group, k_t, k_h, k_w = weight.shape
    s_t, s_h, s_w = stride
    out_t, out_h, out_w = ((n - k) // s + 1 for n, k, s in
                           zip((frames, height, width), (k_t, k_h, k_w), stride))  # fmt: skip
    out = np.zeros((batch, out_t, out_h, out_w, out_c), np.float64)
    per_group_out = out_c // groups
    for o in range(out_c):
        g = o // per_group_out
        for t in range(k_t):
            for h in range(k_h):
                for w in range(k_w):
                    patch = x[:, t : t + s_t * out_t : s_t, h : h + s_h * out_h : s_h,
                              w : w + s_w * out_w : s_w, g * in_per_group : (g + 1) * in_per_group]  # fmt: skip
                    out[..., o] += patch @ weight[o, :, t, h, w]
    return (out + bias).astype(np.float32)


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _mha(q, k, v, heads, bias=None):
    """(N, C), (S, C), (S, C) -> (N, C), head-major split, scale (C/h)^-1/2, bias (h, N, S)."""
    depth = q.shape[-1] // heads
    out = []
    for h in range(heads):
        cols = slice(h * depth, (h + 1) * depth)
        scores = q[:, cols] @ k[:, cols].T * depth**-0.5
        attn = _softmax(scores if bias is None else scores + bias[h])
        out.append(attn @ v[:, cols])
    return np.concatenate(out, -1)


def _dense(layer, x):
    kernel, bias = layer.get_weights()
    return x @ kernel + bias


def _layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_window_partition_is_the_reference_8d_permute_and_merge_inverts_it():
    x = _randn(2, 4, 6, 8, 3)
    window = (2, 3, 4)
    got = window_partition(tf.constant(x), window).numpy()
    b, t, h, w, c = x.shape
    ref = x.reshape(b, t // 2, 2, h // 3, 3, w // 4, 4, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    np.testing.assert_array_equal(got, ref.reshape(-1, 24, c))
    np.testing.assert_array_equal(window_merge(tf.constant(got), window, x.shape[1:]).numpy(), x)


def test_window_partition_uses_at_most_6d_transposes():
    layer = LocalWindowAttention(2, (2, 2, 2))
    graph = (
        tf.function(lambda v: layer(v)).get_concrete_function(tf.TensorSpec((1, 4, 4, 4, 8))).graph
    )
    ranks = {op.type: [] for op in graph.get_operations()}
    for op in graph.get_operations():
        ranks[op.type].append(op.inputs[0].shape.rank if op.inputs else 0)
    assert max(ranks["Transpose"]) <= 6
    assert max(ranks["BatchMatMulV2"]) <= 4


def test_local_window_attention_matches_numpy():
    heads, window = 2, (2, 2, 3)
    x = _randn(2, 4, 4, 6, 8)
    layer = LocalWindowAttention(heads, window)
    got = layer(tf.constant(x)).numpy()
    expected = np.zeros_like(x)
    for b in range(2):
        for t0 in range(0, 4, 2):
            for h0 in range(0, 4, 2):
                for w0 in range(0, 6, 3):
                    block = x[b, t0 : t0 + 2, h0 : h0 + 2, w0 : w0 + 3].reshape(-1, 8)
                    q, k, v = (_dense(d, block) for d in (layer.q, layer.k, layer.v))
                    out = _dense(layer.proj, _mha(q, k, v, heads))
                    expected[b, t0 : t0 + 2, h0 : h0 + 2, w0 : w0 + 3] = out.reshape(2, 2, 3, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_relative_position_index_is_one_row_per_offset():
    window = (2, 3, 4)
    index = relative_position_index(window)
    coords = [(t, h, w) for t in range(2) for h in range(3) for w in range(4)]
    rows = {}
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            offset = tuple(x - y for x, y in zip(a, b))
            assert rows.setdefault(offset, index[i, j]) == index[i, j]
    assert len(rows) == len(set(rows.values())) == 3 * 5 * 7  # a bijection onto the table
    assert index[0, 0] == (1 * 5 + 2) * 7 + 3  # offset (0, 0, 0) is the table's centre


def test_local_window_attention_with_relative_position_bias_matches_numpy():
    heads, window = 2, (2, 2, 3)
    x = _randn(1, 2, 4, 6, 8)
    layer = LocalWindowAttention(heads, window, relative_position_bias=True)
    layer.build(x.shape)
    table = _randn(3 * 3 * 5, heads)
    layer.relative_position_table.assign(table)
    got = layer(tf.constant(x)).numpy()
    coords = [(t, h, w) for t in range(2) for h in range(2) for w in range(3)]
    bias = np.zeros((heads, 12, 12), np.float32)
    for i, (t, h, w) in enumerate(coords):
        for j, (u, g, v) in enumerate(coords):
            bias[:, i, j] = table[((t - u + 1) * 3 + h - g + 1) * 5 + w - v + 2]
    for h0 in range(0, 4, 2):
        for w0 in range(0, 6, 3):
            block = x[0, :, h0 : h0 + 2, w0 : w0 + 3].reshape(-1, 8)
            q, k, v = (_dense(d, block) for d in (layer.q, layer.k, layer.v))
            out = _dense(layer.proj, _mha(q, k, v, heads, bias)).reshape(2, 2, 3, 8)
            np.testing.assert_allclose(
                got[0, :, h0 : h0 + 2, w0 : w0 + 3], out, rtol=1e-4, atol=1e-5
            )
    # the bias is what makes the layer position-aware: without it the same weights give another
    # output (the table is far from zero)
    layer.relative_position_table.assign(np.zeros_like(table))
    assert np.abs(layer(tf.constant(x)).numpy() - got).max() > 1e-3


def test_window_that_does_not_tile_names_the_layer():
    with pytest.raises(ValueError, match="stage1_attn: window \\(2, 3, 3\\) does not tile"):
        LocalWindowAttention(1, (2, 3, 3), name="stage1_attn")(tf.zeros((1, 4, 8, 8, 4)))


def _gp_reference(layer, x):
    """NumPy GP-MSA with the reference's depthwise Conv3d poolings (kernel = stride)."""
    channels = x.shape[-1]
    kernels = layer.kernels
    batch = x.shape[0]
    out = np.zeros_like(x)
    for b in range(batch):
        tokens = x[b].reshape(-1, channels)
        q = _dense(layer.q, tokens)
        if kernels["fine_kernel"] is None:
            pooled = tokens
        else:
            w, bias = layer.fine.conv.get_weights()
            fine = _conv3d_ncdhw(x[b : b + 1], _depthwise_from_tubelet(w, kernels["fine_kernel"]),
                                 bias, kernels["fine_kernel"], (0, 0, 0), channels)  # fmt: skip
            pooled = fine.reshape(-1, channels)
            if kernels["coarse_kernels"] is not None:
                first, second = kernels["coarse_kernels"]
                w1, b1 = layer.coarse_first.conv.get_weights()
                hidden = _conv3d_ncdhw(x[b : b + 1], _depthwise_from_tubelet(w1, first), b1,
                                       first, (0, 0, 0), channels)  # fmt: skip
                gamma, beta, mean, var = layer.coarse_bn.get_weights()
                hidden = np.maximum((hidden - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0)
                w2, b2 = layer.coarse_second.conv.get_weights()
                coarse = _conv3d_ncdhw(hidden, _depthwise_from_tubelet(w2, second), b2, second,
                                       (0, 0, 0), channels)  # fmt: skip
                pooled = np.concatenate([pooled, coarse.reshape(-1, channels)])
            pooled = _layer_norm(pooled, *layer.norm.get_weights())
        k, v = _dense(layer.k, pooled), _dense(layer.v, pooled)
        out[b] = _dense(layer.proj, _mha(q, k, v, layer.num_heads)).reshape(x.shape[1:])
    return out


def _depthwise_from_tubelet(kernel, size):
    """Inverse of conv3d_kernel_to_tubelet for depthwise kernels: back to (C, 1, kt, kh, kw)."""
    k_t, k_h, k_w = size
    channels = kernel.shape[2]
    kernel = kernel.reshape(k_h, k_t, k_w, channels)
    return np.transpose(kernel, (3, 1, 0, 2))[:, None]


def _randomize(layer):
    for weight in layer.weights:
        weight.assign(RNG.uniform(0.5, 1.5, weight.shape) if "variance" in weight.name
                      else RNG.standard_normal(weight.shape) * 0.5)  # fmt: skip


@pytest.mark.parametrize(
    "fine, coarse",
    [((2, 2, 2), (1, 2, 2)), ((2, 2, 2), None), ((4, 4, 8), None)],
    ids=["fine+coarse", "fine", "no-pyramid"],
)
def test_global_pyramid_attention_matches_numpy(fine, coarse):
    x = _randn(2, 4, 4, 8, 8)
    layer = GlobalPyramidAttention(2, fine, coarse, coarse_first_kernel=(1, 2, 2))
    layer(tf.constant(x))
    _randomize(layer)
    got = layer(tf.constant(x), training=False).numpy()
    np.testing.assert_allclose(got, _gp_reference(layer, x), rtol=1e-4, atol=2e-4)


def test_pyramid_token_counts_at_the_reference_input():
    """456 / 456 / 392 / 784 keys per stage at 32x224x224 (8x7x7 fine, 4x4x4 coarse)."""
    resolutions = [(16, 56, 56), (16, 28, 28), (16, 14, 14), (16, 7, 7)]
    fine = [(8, 7, 7)] * 3 + [(16, 7, 7)]
    coarse = [(4, 4, 4), (4, 4, 4), None, None]
    counts = [pyramid_kernels(r, f, c)["num_keys"] for r, f, c in zip(resolutions, fine, coarse)]
    assert counts == [456, 456, 392, 784]
    stage0 = pyramid_kernels(resolutions[0], fine[0], coarse[0])
    assert stage0["fine_kernel"] == (2, 8, 8) and stage0["coarse_kernels"] == ((1, 7, 7), (4, 2, 2))
    layer = GlobalPyramidAttention(1, (8, 7, 7), (4, 4, 4))
    layer.build((None, 16, 28, 28, 8))
    assert layer.num_keys == 456


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("kernel, frames", [((2, 4, 4), 4), ((3, 2, 2), 7), ((1, 2, 2), 3)])
def test_tubelet_conv_matches_conv3d(depthwise, kernel, frames):
    channels, filters = 4, 6
    x = _randn(2, frames, 8, 9, channels)  # 7 frames / 9 columns: PyTorch floors the remainder
    layer = TubeletConv(None if depthwise else filters, kernel, depthwise=depthwise)
    layer(tf.constant(x))
    out_c = channels if depthwise else filters
    weight = _randn(out_c, 1 if depthwise else channels, *kernel)
    bias = _randn(out_c)
    layer.conv.set_weights([conv3d_kernel_to_tubelet(weight, depthwise), bias])
    expected = _conv3d_ncdhw(x, weight, bias, kernel, (0, 0, 0), channels if depthwise else 1)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_peg_full_is_the_depthwise_conv3d_plus_residual():
    x = _randn(2, 4, 5, 6, 3)
    layer = PEG()
    layer(tf.constant(x))
    weight, bias = _randn(3, 1, 3, 3, 3), _randn(3)
    layer.spatial.set_weights([peg_kernel_from_conv3d(weight)])
    layer.bias.assign(bias)
    expected = x + _conv3d_ncdhw(x, weight, bias, (1, 1, 1), (1, 1, 1), 3)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_peg_factorized_equals_full_with_a_rank_one_kernel():
    x = _randn(1, 4, 5, 5, 3)
    spatial, temporal, bias = _randn(3, 3, 3), _randn(3, 3), _randn(3)  # (kh, kw, C), (kt, C)
    factorized, full = PEG(form="factorized"), PEG(form="full")
    factorized(tf.constant(x))
    full(tf.constant(x))
    factorized.spatial.set_weights([spatial[..., None]])
    factorized.temporal.set_weights([temporal[:, None, :, None], bias])
    kernel3d = np.einsum("tc,hwc->cthw", temporal, spatial)[:, None]
    full.spatial.set_weights([peg_kernel_from_conv3d(kernel3d)])
    full.bias.assign(bias)
    np.testing.assert_allclose(
        factorized(tf.constant(x)).numpy(), full(tf.constant(x)).numpy(), rtol=1e-4, atol=1e-4
    )
    assert math.prod(full.spatial.get_weights()[0].shape) == 27 * 3
