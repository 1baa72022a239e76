"""Positional encoding generator (PEG): a depthwise 3x3x3 convolution added to its input."""

from __future__ import annotations

import numpy as np

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register

PEG_FORMS = ("full", "factorized")


def peg_kernel_from_conv3d(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise Conv3d kernel `(C, 1, 3, 3, 3)` -> the full PEG's `(3, 3, C, 3)` kernel.

    Depth multiplier index `t` of channel `c` holds the spatial kernel of time tap `t`.
    """
    weight = np.asarray(weight, np.float32)
    return np.transpose(weight[:, 0], (2, 3, 0, 1))


@register
class PEG(QuantizableLayer):
    """`x + DWConv3d_{k x k x k}(x)`: the conditional position encoding of DualFormer.

    DualFormer (Liang et al., arXiv 2112.04674, `PosCNN`, after CPVT arXiv 2102.10882) adds a
    depthwise 3x3x3 convolution with bias and zero padding 1 to its input once per stage; it is
    the model's only position information. No Conv3D:

    * `form="full"` (exact, the reference): one per-frame depthwise `k x k` convolution with depth
      multiplier `k` gives, for every channel, the response of each of the `k` time taps; on the
      time-major view `(batch, frames, height * width, channels * k)`, zero-padded by `k // 2`
      frames, tap `t` is read `t` frames later and the taps are summed (slices and adds). The
      weights are exactly a `(k, k, k)` depthwise kernel.
    * `form="factorized"`: (2+1)D, a per-frame depthwise `k x k` then a depthwise `(k, 1)`
      temporal convolution on the time-major view: a rank-1 kernel `K_t[t] * K_s[h, w]`.

    Args:
      kernel_size: `k`, the size of the cubic kernel (3 in the reference).
      form: "full" or "factorized".

    Input shape: `(batch, frames, height, width, channels)`. Output shape: same.

    Example:
      >>> PEG()(tf.zeros((1, 4, 8, 8, 16))).shape
      TensorShape([1, 4, 8, 8, 16])
    """

    def __init__(self, kernel_size: int = 3, form: str = "full", **kwargs):
        super().__init__(**kwargs)
        if form not in PEG_FORMS:
            raise ValueError(f"{self.name}: form {form!r} not in {PEG_FORMS}.")
        if kernel_size % 2 != 1:
            raise ValueError(f"{self.name}: kernel_size must be odd, got {kernel_size}.")
        self.kernel_size = kernel_size
        self.form = form
        k = kernel_size
        if form == "full":
            self.spatial = keras.layers.DepthwiseConv2D(
                k, padding="same", depth_multiplier=k, use_bias=False, name="spatial"
            )
            self.bias = None
        else:
            self.spatial = keras.layers.DepthwiseConv2D(
                k, padding="same", use_bias=False, name="spatial"
            )
            self.temporal = keras.layers.DepthwiseConv2D(
                (k, 1), padding="valid", use_bias=True, name="temporal"
            )

    @property
    def quant_points(self):
        return ("taps", "partial", "conv") if self.form == "full" else ("spatial", "conv")

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        build_sublayer(self.spatial, (None, height, width, channels))
        if self.form == "full":
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        else:
            build_sublayer(self.temporal, (None, frames, None, channels))
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        _, frames, height, width, channels = inputs.shape
        k, pad = self.kernel_size, self.kernel_size // 2
        x = self.spatial(tf.reshape(inputs, (-1, height, width, channels)))
        if self.form == "full":
            # time-major view, tap index last: (B, T + 2 pad, H * W * C, k)
            taps = self.fq(
                "taps", tf.reshape(x, (-1, frames, height * width * channels, k)), training
            )
            taps = tf.pad(taps, [[0, 0], [pad, pad], [0, 0], [0, 0]])
            conv = taps[:, 0:frames, :, 0]
            for t in range(1, k):
                conv = conv + taps[:, t : t + frames, :, t]
                if t < k - 1:
                    conv = self.fq("partial", conv, training)
            conv = tf.reshape(conv, (-1, frames, height, width, channels)) + self.bias
        else:
            x = self.fq("spatial", tf.reshape(x, (-1, frames, height * width, channels)), training)
            x = self.temporal(tf.pad(x, [[0, 0], [pad, pad], [0, 0], [0, 0]]))
            conv = tf.reshape(x, (-1, frames, height, width, channels))
        return inputs + self.fq("conv", conv, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, form=self.form)
        return config
