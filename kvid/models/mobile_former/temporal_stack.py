"""Neighbouring frames stacked along channels: a full spatio-temporal convolution as a Conv2D.

A (2+1)D block filters each channel in space, then in time: every channel's filter is separable,
`f(x, y) g(t)`, and a separable filter cannot tell a pattern moving one way from the same pattern
moving the other way (its response to a drifting grating is the same for both directions). Motion
direction needs filters oriented in space-time. Stacking frames `t - k//2 ... t + k//2` along the
channels and convolving each frame with a Conv2D gives exactly a `k x kh x kw` Conv3D with
"same" zero padding in time, which can be oriented, with no CONV_3D op. It is cheap on the 3
input channels of a stem.
"""

from __future__ import annotations

from kvid.backend import tf
from kvid.layers.base import QuantizableLayer, register


@register
class TemporalStack(QuantizableLayer):
    """Concatenates each frame with its `kernel_size - 1` neighbours along the channel axis.

    Output channel `i * C + c` of frame `t` is input channel `c` of frame `t + i - kernel_size // 2`,
    zero beyond the ends of the clip (not wrapped around). A Conv2D applied per frame to the output
    is a Conv3D with temporal kernel `kernel_size`, stride 1 and "same" padding in time; its
    kernel's input axis is the Conv3D kernel's `(time, channel)` axes flattened in that order.

    Pure data movement (pad, slice, concatenate on the time-major view `(B, T, H * W, C)`), so
    int8 TFLite keeps the input's scale.

    Args:
      kernel_size: odd number of frames stacked (1 returns the input unchanged).

    Input shape: `(batch, frames, height, width, channels)`.
    Output shape: `(batch, frames, height, width, kernel_size * channels)`.

    Example:
      >>> TemporalStack(3)(tf.zeros((2, 8, 16, 16, 3))).shape
      TensorShape([2, 8, 16, 16, 9])
    """

    def __init__(self, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{self.name}: kernel_size must be a positive odd int, got "
                             f"{kernel_size!r}.")  # fmt: skip
        self.kernel_size = kernel_size

    def call(self, inputs):
        if self.kernel_size == 1:
            return inputs
        _, frames, height, width, channels = inputs.shape
        pad = self.kernel_size // 2
        x = tf.reshape(inputs, (-1, frames, height * width, channels))
        x = tf.pad(x, [[0, 0], [pad, pad], [0, 0], [0, 0]])
        x = tf.concat([x[:, i : i + frames] for i in range(self.kernel_size)], axis=-1)
        return tf.reshape(x, (-1, frames, height, width, self.kernel_size * channels))

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        channels = None if shape[-1] is None else shape[-1] * self.kernel_size
        return tf.TensorShape([*shape[:-1], channels])

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


__all__ = ["TemporalStack"]
