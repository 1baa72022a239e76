"""XViT space-time mixing attention: per-frame attention over keys and values mixed across time.

Bulat et al., "Space-time Mixing Attention for Video Transformer", NeurIPS 2021 (arXiv 2106.05968),
official code `1adrianb/video-transformers` (`TemporalShift` on `Attention`'s k and v). Every
frame attends over its own tokens, but the keys and values (never the queries) take their first
`C / shift_div` channels from frame t+1 and the next `C / shift_div` from frame t-1, so attention
mixes a +-1 frame window at the cost of spatial-only attention; depth extends the window.

The shift is a one-hot `(3, 1)` depthwise convolution on the time-major view `(batch, frames,
tokens, channels)`: exact, zero at the clip ends (not a circular roll), no GATHER, and its int8
weights are exact (1.0 is 127 at scale 1/127 per channel).
"""

from __future__ import annotations

import numpy as np

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.temporal_shift import (
    check_segments,
    shift_fold,
    temporal_shift,
    temporal_shift_kernel,
)


def vit_initializer() -> keras.initializers.Initializer:
    """Kernel initialisation of kvid's ViT layers: Xavier/Glorot uniform, as the original JAX
    ViT and big_vision (timm's truncated normal with std 0.02 is sized for width 768; at the
    widths of the small presets it starts the residual branches 4x too weak)."""
    return keras.initializers.GlorotUniform()


@register
class SpaceTimeMixingAttention(QuantizableLayer):
    """XViT attention: per-frame multi-head attention with time-shifted keys and values.

    Reference math (`Attention` with `TemporalShift` on k and v): `[q, k, v] = x W_qkv + b`;
    `k~, v~` = the temporal shift of `k, v` over the channels flattened head-major
    (`c = head * d + j`, a GLOBAL split: with `shift_div` 8 and 12 heads, head 0 reads t+1, head 1
    is mixed, head 2 reads t-1); per frame and head, `A = softmax(q k~^T / sqrt(d))`,
    `out = concat_heads(A v~) W_o + b_o`. Only k and v are shifted; the CLS token is shifted too.

    Summary tokens (`summary_tokens=True`, implemented from the paper's description, section 3;
    not in the released code): every frame's spatial average of its keys and values (R = 1
    summary token per frame, the average of the projected tokens, which equals the projection of
    the averaged tokens) is appended to the keys and values of ALL frames, so each query also
    attends to `frames` clip-wide summaries at O(T S) extra cost.

    With `shift_div=0` and no summary tokens this is plain per-frame ViT attention; a rank-3
    input `(batch, tokens, channels)` is one sequence (the temporal head's attention).

    Args:
      num_heads: attention heads.
      shift_div: `C / shift_div` key/value channels from t+1 and as many from t-1; 0 turns the
        shift off.
      num_segments: chunk length of the shift (None: the whole clip).
      summary_tokens: append per-frame average tokens to every frame's keys and values.
      qkv_bias: bias of the q/k/v projection (True in the backbone, False in the temporal head).

    Input shape: `(batch, frames, tokens, channels)` or `(batch, tokens, channels)`.
    Output shape: same.

    Example:
      >>> SpaceTimeMixingAttention(num_heads=2, shift_div=4)(tf.ones((1, 4, 5, 16))).shape
      TensorShape([1, 4, 5, 16])
    """

    quant_points = ("qkv", "shifted", "summary", "scores", "attended")
    # keys and values are right-hand matmul operands (the queries share the qkv range)
    symmetric_points = ("qkv", "shifted", "summary")

    def __init__(
        self,
        num_heads: int = 12,
        shift_div: int = 8,
        num_segments: int | None = None,
        summary_tokens: bool = False,
        qkv_bias: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.shift_div = shift_div
        self.num_segments = num_segments
        self.summary_tokens = summary_tokens
        self.qkv_bias = qkv_bias

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.num_heads:
            raise ValueError(f"{self.name}: {channels} channels not divisible by heads.")
        video = len(input_shape) == 4
        if (self.shift_div or self.summary_tokens) and not video:
            raise ValueError(f"{self.name}: the shift and summary tokens need a frames axis.")
        self.scale = (channels // self.num_heads) ** -0.5
        self._kernel = None
        if self.shift_div:
            self._segments = check_segments(self.name, int(input_shape[1]), self.num_segments)
            kernel = temporal_shift_kernel(channels, shift_fold(channels, self.shift_div))
            self._kernel = tf.constant(np.concatenate([kernel, kernel], axis=2))  # k and v
        self.qkv = keras.layers.Dense(
            3 * channels, use_bias=self.qkv_bias, name="qkv", kernel_initializer=vit_initializer()
        )
        build_sublayer(self.qkv, (None, channels))
        self.proj = keras.layers.Dense(channels, name="proj", kernel_initializer=vit_initializer())
        build_sublayer(self.proj, (None, channels))
        self.build_quant_points()
        super().build(input_shape)

    def _split_heads(self, x):
        """(..., tokens, channels) -> (-1, heads, tokens, depth), head-major channels."""
        tokens, channels = x.shape[-2], x.shape[-1]
        x = tf.reshape(x, (-1, tokens, self.num_heads, channels // self.num_heads))
        return tf.transpose(x, (0, 2, 1, 3))

    def call(self, inputs, training=None):
        video = inputs.shape.rank == 4
        frames = inputs.shape[1] if video else 1
        tokens, channels = inputs.shape[-2], inputs.shape[-1]
        qkv = self.fq("qkv", self.qkv(inputs), training)
        q, kv = qkv[..., :channels], qkv[..., channels:]
        if self._kernel is not None:
            # one depthwise conv shifts keys and values together: 6 * T * S * C MACs
            kv = self.fq("shifted", temporal_shift(kv, self._kernel, self._segments), training)
        k, v = kv[..., :channels], kv[..., channels:]
        if self.summary_tokens:
            # (batch, frames, 2C): each frame's average (unshifted) key and value
            summary = tf.reduce_mean(qkv[..., channels:], axis=2)
            summary = self.fq("summary", summary, training)[:, None]
            # the same `frames` summaries for every frame: CONCATENATION of copies, exact in
            # int8 (no TILE / BROADCAST_TO)
            summary = tf.concat([summary] * frames, axis=1)  # (batch, frames, frames, 2C)
            k = tf.concat([k, summary[..., :channels]], axis=2)
            v = tf.concat([v, summary[..., channels:]], axis=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        scores = tf.matmul(q, k, transpose_b=True) * self.scale  # (B*T, h, N, keys)
        attn = self.fq_softmax(tf.nn.softmax(self.fq("scores", scores, training), axis=-1))
        attended = tf.matmul(attn, v)  # (B*T, h, N, d)
        attended = tf.reshape(tf.transpose(attended, (0, 2, 1, 3)), (-1, tokens, channels))
        attended = self.fq("attended", attended, training)
        out = self.proj(attended)
        shape = (-1, frames, tokens, channels) if video else (-1, tokens, channels)
        return tf.reshape(out, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            shift_div=self.shift_div,
            num_segments=self.num_segments,
            summary_tokens=self.summary_tokens,
            qkv_bias=self.qkv_bias,
        )
        return config


__all__ = ["SpaceTimeMixingAttention", "vit_initializer"]
