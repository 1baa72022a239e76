"""Non-overlapping space-time convolutions (kernel = stride) with Conv2D / DepthwiseConv2D only.

A Conv3D whose kernel equals its stride sees each `k_t x k_h x k_w` tubelet once. Its time taps
can be moved next to an axis a 2D convolution already reduces over, with one relayout:

* full convolution: the `k_t` frames of a tubelet are stacked on the channel axis,
  `(B, T, H, W, C) -> (B * T / k_t, H, W, k_t * C)`, and a `k_h x k_w` Conv2D with stride
  `(k_h, k_w)` reduces over `(h, w, t, c)`;
* depthwise convolution: the `k_t` frames are interleaved row by row,
  `(B, T, H, W, C) -> (B * T / k_t, H * k_t, W, C)` (row `h * k_t + t`), so the `k_h * k_t` rows
  of a tubelet are contiguous and a `(k_h * k_t) x k_w` DepthwiseConv2D with that stride is exact.

Both relayouts are one TRANSPOSE of rank <= 6 (docs/design.md section 4); with `k_t = 1` there is
none and the frames are folded into the batch axis.
"""

from __future__ import annotations

import numpy as np

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.conv2plus1d import as_triple


def conv3d_kernel_to_tubelet(weight: np.ndarray, depthwise: bool) -> np.ndarray:
    """PyTorch Conv3d kernel `(O, I/groups, k_t, k_h, k_w)` -> the kernel of `TubeletConv`.

    Full: Conv2D kernel `(k_h, k_w, k_t * I, O)`, input channel `t * I + i`.
    Depthwise (`groups = I = O`): DepthwiseConv2D kernel `(k_h * k_t, k_w, I, 1)`, row `h * k_t + t`.
    """
    weight = np.asarray(weight, np.float32)
    out_channels, in_per_group, k_t, k_h, k_w = weight.shape
    if depthwise:
        if in_per_group != 1:
            raise ValueError(
                f"A depthwise kernel has 1 input channel per group, got {weight.shape}."
            )
        kernel = np.transpose(weight[:, 0], (2, 1, 3, 0))  # (k_h, k_t, k_w, C)
        return kernel.reshape(k_h * k_t, k_w, out_channels, 1)
    kernel = np.transpose(weight, (3, 4, 2, 1, 0))  # (k_h, k_w, k_t, I, O)
    return kernel.reshape(k_h, k_w, k_t * in_per_group, out_channels)


@register
class TubeletConv(QuantizableLayer):
    """A Conv3D with kernel = stride (patch embedding, pyramid pooling), without Conv3D.

    Computes `y[t, h, w] = b + sum_{tubelet} K * x` over non-overlapping `k_t x k_h x k_w`
    tubelets, as PyTorch's `Conv3d(kernel_size=k, stride=k)` (full or `groups=channels`). Sizes
    that are not multiples of the kernel are floored like PyTorch does (the remainder is dropped).
    DualFormer's patch embeddings (`(2, 4, 4)` then `(1, 2, 2)`) and GP-MSA's depthwise pyramid
    pooling (Liang et al., arXiv 2112.04674) are of this kind.

    Args:
      filters: output channels of a full convolution; ignored (None) when `depthwise`.
      kernel_size: `(k_t, k_h, k_w)` (also the stride) or an int `k` for `(1, k, k)`.
      depthwise: one kernel per channel (`groups = channels`); output channels = input channels.
      use_bias: add a bias.

    Input shape: `(batch, frames, height, width, channels)`.
    Output shape: `(batch, frames // k_t, height // k_h, width // k_w, filters or channels)`.

    Example:
      >>> TubeletConv(16, (2, 4, 4))(tf.zeros((1, 8, 32, 32, 3))).shape
      TensorShape([1, 4, 8, 8, 16])
    """

    def __init__(
        self,
        filters: int | None = None,
        kernel_size=(1, 2, 2),
        depthwise: bool = False,
        use_bias: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not depthwise and not filters:
            raise ValueError(f"{self.name}: a full TubeletConv needs `filters`.")
        self.filters = filters
        self.kernel_size = as_triple(kernel_size)
        self.depthwise = depthwise
        self.use_bias = use_bias
        k_t, k_h, k_w = self.kernel_size
        if depthwise:
            rows = k_h * k_t
            # TensorFlow's depthwise kernel takes only equal strides on the CPU and GPU: with
            # unequal ones, each band of `rows` rows is folded into the batch axis first
            # (`call`), where any vertical stride gives the one output row.
            self.conv = keras.layers.DepthwiseConv2D(
                (rows, k_w), strides=k_w, padding="valid", use_bias=use_bias, name="conv"
            )
        else:
            self.conv = keras.layers.Conv2D(
                filters, (k_h, k_w), strides=(k_h, k_w), padding="valid", use_bias=use_bias,
                name="conv",
            )  # fmt: skip

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        k_t, k_h, k_w = self.kernel_size
        if frames // k_t < 1 or height // k_h < 1 or width // k_w < 1:
            raise ValueError(
                f"{self.name}: kernel {self.kernel_size} is larger than the "
                f"{frames}x{height}x{width} input."
            )
        if self.depthwise:
            build_sublayer(self.conv, (None, k_h * k_t, width, channels))
        else:
            build_sublayer(self.conv, (None, height, width, channels * k_t))
        super().build(input_shape)

    def call(self, inputs, training=None):
        _, frames, height, width, channels = inputs.shape
        k_t, k_h, _ = self.kernel_size
        groups = frames // k_t
        x = inputs
        if groups * k_t != frames:  # PyTorch drops the frames past the last whole tubelet
            x = x[:, : groups * k_t]
        if k_t == 1:
            x = tf.reshape(x, (-1, height, width, channels))
        elif self.depthwise:
            x = tf.reshape(x, (-1, groups, k_t, height, width * channels))
            x = tf.transpose(x, (0, 1, 3, 2, 4))  # rows h * k_t + t
            x = tf.reshape(x, (-1, height * k_t, width, channels))
        else:
            x = tf.reshape(x, (-1, groups, k_t, height, width, channels))
            x = tf.transpose(x, (0, 1, 3, 4, 2, 5))  # channels t * C + c
            x = tf.reshape(x, (-1, height, width, k_t * channels))
        if self.depthwise:  # one band of k_h * k_t rows per output row, folded into the batch
            out_h, rows = height // k_h, k_h * k_t
            if out_h * rows != x.shape[1]:
                x = x[:, : out_h * rows]
            x = self.conv(tf.reshape(x, (-1, rows, width, channels)))
            return tf.reshape(x, (-1, groups, out_h, x.shape[2], channels))
        x = self.conv(x)
        return tf.reshape(x, (-1, groups, *x.shape[1:]))

    def compute_output_shape(self, input_shape):
        batch, frames, height, width, channels = input_shape
        k_t, k_h, k_w = self.kernel_size
        out_channels = channels if self.depthwise else self.filters
        return tf.TensorShape((batch, frames // k_t, height // k_h, width // k_w, out_channels))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=list(self.kernel_size),
            depthwise=self.depthwise,
            use_bias=self.use_bias,
        )
        return config
