"""DualFormer's stratified attention: local window MSA (LW-MSA) and global pyramid MSA (GP-MSA).

DualFormer (Liang et al., arXiv 2112.04674, `sail-sg/dualformer`) alternates two pre-norm
Transformer layers: LW-MSA attends within non-overlapping 3D windows (no shift; a relative
position bias only as an option); GP-MSA lets every query attend to a small set of keys pooled
from the whole clip by depthwise convolutions (a fine level, and in the first two stages a
coarse level). Both take the `(batch, frames, height, width, channels)` tensor; the window
partition is one 6-D TRANSPOSE and every batch matmul is 4-D.

Heads split the channels head-major (head j owns channels `[j * C / h, (j + 1) * C / h)`) and
the scores are scaled by `(C / h)^-1/2`, as in the reference.
"""

from __future__ import annotations

import math

import numpy as np

from kvid.backend import keras, tf
from kvid.layers.attention import merge_heads, split_heads
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.conv2plus1d import as_triple
from kvid.layers.layer_norm import LayerNorm
from kvid.models.dualformer.tubelet_conv import TubeletConv

# The reference's first coarse pooling kernel ("1, 7, 7" in GPAttention).
COARSE_FIRST_KERNEL = (1, 7, 7)
# The reference's Linear init (trunc_normal_(std=.02), zero bias): a Transformer trained from
# scratch on a small dataset collapses to a constant output with Keras' Glorot default.
LINEAR_INITIALIZER = dict(class_name="TruncatedNormal", config=dict(stddev=0.02))


def window_partition(x, window_size):
    """`(B, T, H, W, C)` -> `(B * windows, t * h * w, C)`, windows in (T, H, W) raster order.

    Tokens inside a window keep the (t, h, w) raster order. The reference's 8-D permute becomes
    one 6-D transpose because `(B, T/t)` and `(w, C)` stay adjacent.
    """
    _, frames, height, width, channels = x.shape
    l_t, l_h, l_w = window_size
    n_h, n_w = height // l_h, width // l_w
    x = tf.reshape(x, (-1, l_t, n_h, l_h, n_w, l_w * channels))
    x = tf.transpose(x, (0, 2, 4, 1, 3, 5))  # (B * T/t, n_h, n_w, t, h, w * C)
    return tf.reshape(x, (-1, l_t * l_h * l_w, channels))


def window_merge(x, window_size, video_shape):
    """Inverse of `window_partition`: `(B * windows, t * h * w, C)` -> `(B, T, H, W, C)`."""
    frames, height, width, channels = video_shape
    l_t, l_h, l_w = window_size
    n_h, n_w = height // l_h, width // l_w
    x = tf.reshape(x, (-1, n_h, n_w, l_t, l_h, l_w * channels))
    x = tf.transpose(x, (0, 3, 1, 4, 2, 5))  # (B * T/t, t, n_h, h, n_w, w * C)
    return tf.reshape(x, (-1, frames, height, width, channels))


def relative_position_index(window_size) -> np.ndarray:
    """`(L, L)` int32: the table row of query `i` and key `j` of a `(t, h, w)` window.

    Row `((dt + t - 1) * (2h - 1) + dy + h - 1) * (2w - 1) + dx + w - 1` for the offset
    `(dt, dy, dx)` = position of `i` - position of `j`, tokens in (t, h, w) raster order.
    """
    spans = [2 * w - 1 for w in window_size]
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window_size], indexing="ij"), -1)
    coords = coords.reshape(-1, 3)
    offsets = coords[:, None, :] - coords[None, :, :] + np.array(window_size) - 1
    return np.ravel_multi_index(tuple(np.moveaxis(offsets, -1, 0)), spans).astype(np.int32)


def check_window(window_size, resolution, where: str) -> None:
    """Raises a ValueError naming `where` unless the window tiles the `(T, H, W)` resolution."""
    if any(r % w for r, w in zip(resolution, window_size)):
        raise ValueError(
            f"{where}: window {tuple(window_size)} does not tile the "
            f"{'x'.join(map(str, resolution))} feature map; choose sizes that divide it."
        )


def pyramid_kernels(resolution, fine_pyramid_size, coarse_pyramid_size=None,
                    coarse_first_kernel=COARSE_FIRST_KERNEL, where: str = "GP-MSA") -> dict:  # fmt: skip
    """The pooling kernels and key counts of a GP-MSA layer at a `(T, H, W)` resolution.

    As the reference computes them: fine kernel = stride = `resolution // fine_pyramid_size`;
    no pyramid (global attention over all tokens) when its product is <= 1; the coarse level is
    `coarse_first_kernel`, then `(resolution // coarse_pyramid_size) // coarse_first_kernel`.

    Returns:
      dict(fine_kernel, coarse_kernels (None or two kernels), num_keys).
    """
    resolution = tuple(int(r) for r in resolution)
    fine = tuple(r // p for r, p in zip(resolution, fine_pyramid_size))
    if math.prod(fine) <= 1:
        return dict(fine_kernel=None, coarse_kernels=None, num_keys=math.prod(resolution))
    if min(fine) < 1:
        raise ValueError(
            f"{where}: fine pyramid {tuple(fine_pyramid_size)} is larger than the "
            f"{'x'.join(map(str, resolution))} feature map in one dimension."
        )
    num_keys = math.prod(r // k for r, k in zip(resolution, fine))
    coarse = None
    if coarse_pyramid_size is not None:
        coarse_kernel = [r // p for r, p in zip(resolution, coarse_pyramid_size)]
        second = tuple(c // f for c, f in zip(coarse_kernel, coarse_first_kernel))
        if min(second) < 1:
            raise ValueError(
                f"{where}: coarse pyramid {tuple(coarse_pyramid_size)} with first kernel "
                f"{tuple(coarse_first_kernel)} does not fit the "
                f"{'x'.join(map(str, resolution))} feature map."
            )
        coarse = (tuple(coarse_first_kernel), second)
        after_first = [r // k for r, k in zip(resolution, coarse_first_kernel)]
        num_keys += math.prod(a // k for a, k in zip(after_first, second))
    return dict(fine_kernel=fine, coarse_kernels=coarse, num_keys=num_keys)


def pyramid_tiles(resolution, kernels: dict) -> bool:
    """Whether every pooling of `pyramid_kernels` covers its input without a remainder."""
    if kernels["fine_kernel"] is None:
        return True
    if any(r % k for r, k in zip(resolution, kernels["fine_kernel"])):
        return False
    if kernels["coarse_kernels"] is not None:
        first, second = kernels["coarse_kernels"]
        after = [r // k for r, k in zip(resolution, first)]
        if any(r % k for r, k in zip(resolution, first)) or any(
            a % k for a, k in zip(after, second)
        ):
            return False
    return True


class _Attention(QuantizableLayer):
    """Shared parts: head split checks, the scaled-dot-product core and the config."""

    def __init__(self, num_heads: int = 1, qkv_bias: bool = True, qk_scale: float | None = None,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.qk_scale = qk_scale

    def _check_heads(self, channels: int) -> None:
        if channels % self.num_heads:
            raise ValueError(
                f"{self.name}: {channels} channels not divisible by {self.num_heads} heads."
            )
        self.scale = self.qk_scale or (channels // self.num_heads) ** -0.5

    def _dense(self, name: str, channels: int, bias: bool):
        layer = keras.layers.Dense(
            channels,
            use_bias=bias,
            kernel_initializer=keras.initializers.get(LINEAR_INITIALIZER),
            name=name,
        )
        build_sublayer(layer, (None, channels))
        return layer

    # keys and values are the right-hand operands of the two matmuls
    symmetric_points = ("key", "value")

    def _attend(self, q, k, v, training, bias=None):
        """q (B', N, C), k and v (B', S, C) -> (B', N, C): softmax over the S keys per head.

        `bias` (heads, N, S), if given, is added to the scaled scores.
        """
        q = split_heads(q, self.num_heads)
        k = split_heads(k, self.num_heads)
        v = split_heads(v, self.num_heads)
        scores = tf.matmul(q, k, transpose_b=True) * self.scale
        if bias is not None:
            scores = scores + bias
        scores = self.fq("scores", scores, training)
        attn = self.fq_softmax(tf.nn.softmax(scores, axis=-1))
        return self.fq("attended", merge_heads(tf.matmul(attn, v)), training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_heads=self.num_heads, qkv_bias=self.qkv_bias, qk_scale=self.qk_scale)
        return config


@register
class LocalWindowAttention(_Attention):
    """LW-MSA: multi-head self-attention inside non-overlapping 3D windows.

    Per window of `t x h x w` tokens (DualFormer `LWAttention`): `Q, K, V = X W_q, X W_k, X W_v`
    (the reference's `qkv` Linear, split qkv-major), `A = softmax(Q K^T (C/h)^-1/2)` per head,
    `O = concat_heads(A V) W_o + b_o`. No shift, no mask and, as in the reference, no position
    bias unless `relative_position_bias` is set. The softmax spans `t * h * w` keys (392 at the
    reference's 8x7x7): an int8 SOFTMAX (output scale 1/256) keeps it only if the window is
    small (docs/design.md section 7).

    Args:
      num_heads: attention heads.
      window_size: `(t, h, w)` window; must divide the input's `(frames, height, width)`.
      qkv_bias: bias on the query/key/value projections.
      qk_scale: score scale; None for `(channels / num_heads)^-1/2`.
      relative_position_bias: not in DualFormer. Adds a learned bias `B[h, dt, dy, dx]` per head
        and relative offset of query and key inside the window to the scores (the Swin / Video
        Swin table of `(2t-1)(2h-1)(2w-1)` entries per head), so that attention can tell where a
        key sits relative to its query; without it attention inside a window is blind to
        position. The table lookup has constant indices: the converter folds it into one
        constant per layer.

    Input shape: `(batch, frames, height, width, channels)` (already layer-normed).
    Output shape: same.

    Example:
      >>> LocalWindowAttention(2, (2, 4, 4))(tf.zeros((1, 4, 8, 8, 16))).shape
      TensorShape([1, 4, 8, 8, 16])
    """

    quant_points = ("query", "key", "value", "scores", "attended")

    def __init__(self, num_heads: int = 1, window_size=(8, 7, 7), qkv_bias: bool = True,
                 qk_scale: float | None = None, relative_position_bias: bool = False,
                 **kwargs):  # fmt: skip
        super().__init__(num_heads, qkv_bias, qk_scale, **kwargs)
        self.window_size = as_triple(window_size)
        self.relative_position_bias = bool(relative_position_bias)

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        check_window(self.window_size, (frames, height, width), self.name)
        self._check_heads(channels)
        self.q = self._dense("q", channels, self.qkv_bias)
        self.k = self._dense("k", channels, self.qkv_bias)
        self.v = self._dense("v", channels, self.qkv_bias)
        self.proj = self._dense("proj", channels, True)
        if self.relative_position_bias:
            self.relative_position_table = self.add_weight(
                name="relative_position_table",
                shape=(math.prod(2 * w - 1 for w in self.window_size), self.num_heads),
                initializer=keras.initializers.get(LINEAR_INITIALIZER),
            )
            self.relative_position_index = relative_position_index(self.window_size)
        self.build_quant_points()
        super().build(input_shape)

    def position_bias(self):
        """`(heads, L, L)` bias of query `i` and key `j` of a window (raster order), or None."""
        if not self.relative_position_bias:
            return None
        length = math.prod(self.window_size)
        bias = tf.gather(self.relative_position_table, self.relative_position_index.reshape(-1))
        return tf.transpose(tf.reshape(bias, (length, length, self.num_heads)), (2, 0, 1))

    def call(self, inputs, training=None):
        windows = window_partition(inputs, self.window_size)  # (B * n, L, C)
        q = self.fq("query", self.q(windows), training)
        k = self.fq("key", self.k(windows), training)
        v = self.fq("value", self.v(windows), training)
        attended = self._attend(q, k, v, training, self.position_bias())
        # the projection is per token: applied after the merge, on the video layout
        return self.proj(window_merge(attended, self.window_size, inputs.shape[1:]))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            window_size=list(self.window_size), relative_position_bias=self.relative_position_bias
        )
        return config


@register
class GlobalPyramidAttention(_Attention):
    """GP-MSA: every token attends to keys and values pooled from the whole clip.

    DualFormer `GPAttention`: `Q = X W_q` over all `N = T * H * W` tokens; keys and values come
    from `P = LN([P_fine; P_coarse])`, where `P_fine` is a depthwise conv with kernel = stride =
    `resolution // fine_pyramid_size` and `P_coarse` (optional) is a depthwise
    `coarse_first_kernel` conv, BatchNorm, ReLU and a second depthwise conv with kernel = stride =
    `(resolution // coarse_pyramid_size) // coarse_first_kernel`; `K, V = P W_k, P W_v` (the
    reference's `kv` Linear, split kv-major). When the fine kernel's product is <= 1 there is no
    pooling and no LN: plain global attention over all tokens. The softmax spans the pooled keys
    (456 / 456 / 392 / 784 per stage at 32x224x224).

    Args:
      num_heads: attention heads.
      fine_pyramid_size: `(t, h, w)` tokens of the fine level.
      coarse_pyramid_size: `(t, h, w)` of the coarse level, or None for no coarse level.
      coarse_first_kernel: kernel = stride of the coarse level's first pooling.
      qkv_bias: bias on the query/key/value projections.
      qk_scale: score scale; None for `(channels / num_heads)^-1/2`.
      epsilon: epsilon of the LayerNorm on the pooled tokens.
      bn_epsilon: batch-norm epsilon of the coarse level.
      norm: "layer" (reference) or "batch" (CPU form: batch norm of the pooled tokens).
      bn_momentum: batch-norm momentum (PyTorch's 0.1 is Keras' 0.9).

    Input shape: `(batch, frames, height, width, channels)` (already layer-normed).
    Output shape: same.

    Example:
      >>> GlobalPyramidAttention(2, (2, 2, 2), None)(tf.zeros((1, 4, 8, 8, 16))).shape
      TensorShape([1, 4, 8, 8, 16])
    """

    def __init__(self, num_heads: int = 1, fine_pyramid_size=(8, 7, 7),
                 coarse_pyramid_size=(4, 4, 4), coarse_first_kernel=COARSE_FIRST_KERNEL,
                 qkv_bias: bool = True, qk_scale: float | None = None, epsilon: float = 1e-5,
                 bn_epsilon: float = 1e-5, bn_momentum: float = 0.9, norm: str = "layer",
                 **kwargs):  # fmt: skip
        super().__init__(num_heads, qkv_bias, qk_scale, **kwargs)
        if norm not in ("layer", "batch"):
            raise ValueError(f"{self.name}: norm must be 'layer' or 'batch', got {norm!r}.")
        self.norm_kind = norm
        self.fine_pyramid_size = as_triple(fine_pyramid_size)
        self.coarse_pyramid_size = (
            None if coarse_pyramid_size is None else as_triple(coarse_pyramid_size)
        )
        self.coarse_first_kernel = as_triple(coarse_first_kernel)
        self.epsilon = epsilon
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

    @property
    def quant_points(self):
        points = ["query", "key", "value", "scores", "attended"]
        if self.kernels["fine_kernel"] is not None:
            points.append("fine")
            if self.kernels["coarse_kernels"] is not None:
                points += ["coarse_hidden", "coarse"]
        return tuple(points)

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        self._check_heads(channels)
        self.kernels = pyramid_kernels(
            (frames, height, width), self.fine_pyramid_size, self.coarse_pyramid_size,
            self.coarse_first_kernel, where=self.name,
        )  # fmt: skip
        self.num_keys = self.kernels["num_keys"]
        self.q = self._dense("q", channels, self.qkv_bias)
        self.k = self._dense("k", channels, self.qkv_bias)
        self.v = self._dense("v", channels, self.qkv_bias)
        self.proj = self._dense("proj", channels, True)
        self.fine = self.coarse_first = self.coarse_bn = self.coarse_second = self.norm = None
        video = (None, frames, height, width, channels)
        if self.kernels["fine_kernel"] is not None:
            self.fine = TubeletConv(None, self.kernels["fine_kernel"], depthwise=True, name="fine")
            build_sublayer(self.fine, video)
            if self.kernels["coarse_kernels"] is not None:
                first, second = self.kernels["coarse_kernels"]
                self.coarse_first = TubeletConv(None, first, depthwise=True, name="coarse_first")
                build_sublayer(self.coarse_first, video)
                self.coarse_bn = keras.layers.BatchNormalization(
                    epsilon=self.bn_epsilon, momentum=self.bn_momentum, name="coarse_bn"
                )
                build_sublayer(self.coarse_bn, (None, None, None, None, channels))
                pooled = self.coarse_first.compute_output_shape(video)
                self.coarse_second = TubeletConv(None, second, depthwise=True, name="coarse_second")
                build_sublayer(self.coarse_second, pooled)
            if self.norm_kind == "layer":
                self.norm = LayerNorm(self.epsilon, quantized=self.quantized, name="norm")
            else:
                self.norm = keras.layers.BatchNormalization(
                    epsilon=self.epsilon, momentum=self.bn_momentum, name="norm"
                )
            build_sublayer(self.norm, (None, None, channels))
        self.build_quant_points()
        super().build(input_shape)

    def pooled_tokens(self, inputs, training=None):
        """The keys' source: `(batch, num_keys, channels)` (pooled and normed, or all tokens)."""
        channels = inputs.shape[-1]
        if self.fine is None:
            return tf.reshape(inputs, (-1, self.num_keys, channels))
        fine = self.fq("fine", self.fine(inputs), training)
        tokens = tf.reshape(fine, (-1, math.prod(fine.shape[1:4]), channels))
        if self.coarse_first is not None:
            coarse = self.coarse_first(inputs)
            coarse = self.coarse_bn(coarse, training=self.bn_training(training))
            coarse = self.fq("coarse_hidden", tf.nn.relu(coarse), training)
            coarse = self.fq("coarse", self.coarse_second(coarse), training)
            coarse = tf.reshape(coarse, (-1, math.prod(coarse.shape[1:4]), channels))
            tokens = tf.concat([tokens, coarse], axis=1)
        if self.norm_kind == "batch":
            return self.norm(tokens, training=self.bn_training(training))
        return self.norm(tokens, training=training)

    def call(self, inputs, training=None):
        _, frames, height, width, channels = inputs.shape
        flat = tf.reshape(inputs, (-1, frames * height * width, channels))
        q = self.fq("query", self.q(flat), training)
        tokens = self.pooled_tokens(inputs, training)
        k = self.fq("key", self.k(tokens), training)
        v = self.fq("value", self.v(tokens), training)
        attended = self._attend(q, k, v, training)
        return tf.reshape(self.proj(attended), (-1, frames, height, width, channels))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            fine_pyramid_size=list(self.fine_pyramid_size),
            coarse_pyramid_size=(
                None if self.coarse_pyramid_size is None else list(self.coarse_pyramid_size)
            ),
            coarse_first_kernel=list(self.coarse_first_kernel),
            epsilon=self.epsilon,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            norm=self.norm_kind,
        )
        return config


__all__ = [
    "COARSE_FIRST_KERNEL",
    "GlobalPyramidAttention",
    "LocalWindowAttention",
    "check_window",
    "pyramid_kernels",
    "pyramid_tiles",
    "window_merge",
    "window_partition",
]
