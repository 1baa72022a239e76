"""The TSM / XViT temporal channel shift as a one-hot depthwise convolution.

Some channels of every token come from frame t+1 and as many from frame t-1 (Lin et al., TSM;
Bulat et al., XViT). XViT shifts its keys and values (`kvid.models.xvit`), DualFormer's CPU preset
may shift after its stem convs. The shift is a one-hot `(3, 1)` depthwise convolution on the
time-major view `(batch, frames, tokens, channels)`: exact, zero at the clip ends (not a circular
roll), no GATHER, and its int8 weights are exact (1.0 is 127 at scale 1/127 per channel).
"""

from __future__ import annotations

import numpy as np

from kvid.backend import tf
from kvid.layers.base import QuantizableLayer, register


def shift_fold(channels: int, shift_div: int) -> int:
    """Channels per shifted fold (`C // shift_div`); 0 when the shift is off (`shift_div` 0)."""
    if not shift_div:
        return 0
    if channels < 2 * (channels // shift_div) or channels // shift_div < 1:
        raise ValueError(f"shift_div {shift_div} leaves no channel to shift in {channels}.")
    return channels // shift_div


def temporal_shift_kernel(channels: int, fold: int) -> np.ndarray:
    """One-hot depthwise kernel `(3, 1, channels, 1)` of the XViT shift.

    Tap 2 reads frame t+1 (channels `[0, fold)`), tap 0 reads frame t-1 (`[fold, 2 fold)`), tap 1
    keeps frame t (the rest).
    """
    kernel = np.zeros((3, 1, channels, 1), np.float32)
    kernel[2, 0, :fold] = 1.0
    kernel[0, 0, fold : 2 * fold] = 1.0
    kernel[1, 0, 2 * fold :] = 1.0
    return kernel


def temporal_shift(x, kernel, num_segments: int):
    """Applies the one-hot shift kernel to `x` of shape `(batch, frames, tokens, channels)`.

    Frames are grouped in chunks of `num_segments` (the reference's `NUM_SEGMENTS`): nothing
    crosses a chunk boundary, where zeros come in as at the clip ends.
    """
    _, frames, tokens, channels = x.shape
    if num_segments != frames:
        x = tf.reshape(x, (-1, num_segments, tokens, channels))
    # time is the height axis: a (3, 1) kernel with SAME padding zero-pads one frame each side
    y = tf.nn.depthwise_conv2d(x, kernel, strides=(1, 1, 1, 1), padding="SAME")
    if num_segments != frames:
        y = tf.reshape(y, (-1, frames, tokens, channels))
    return y


@register
class TemporalShift(QuantizableLayer):
    """The XViT/TSM temporal channel shift on the time-major view, as a one-hot depthwise conv.

    `y[t, s, c] = x[t+1, s, c]` for `c < C/shift_div`, `x[t-1, s, c]` for the next `C/shift_div`
    channels, `x[t, s, c]` otherwise; zeros where t+1 or t-1 leaves the clip (or its chunk of
    `num_segments` frames). Costs `3 * T * S * C` MACs (the conv's), no GATHER and no roll.

    Args:
      shift_div: `C / shift_div` channels come from each neighbour (8 or 4 in the reference).
      num_segments: chunk length of the shift (None: the whole clip). The released Kinetics
        configs shift 16-frame clips in chunks of 8.

    Input shape: `(batch, frames, tokens, channels)` or `(batch, frames, height, width, channels)`.
    Output shape: same.

    Example:
      >>> TemporalShift(4)(tf.ones((1, 3, 2, 8)))[0, :, 0].numpy()[:, :4]
      array([[1., 1., 0., 0.],
             [1., 1., 1., 1.],
             [0., 0., 1., 1.]], dtype=float32)
    """

    def __init__(self, shift_div: int = 8, num_segments: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.shift_div = shift_div
        self.num_segments = num_segments

    def build(self, input_shape):
        frames, channels = int(input_shape[1]), int(input_shape[-1])
        self._segments = check_segments(self.name, frames, self.num_segments)
        self._kernel = tf.constant(
            temporal_shift_kernel(channels, shift_fold(channels, self.shift_div))
        )
        super().build(input_shape)

    def call(self, inputs):
        if inputs.shape.rank == 5:  # (B, T, H, W, C): shift on the time-major view
            _, frames, height, width, channels = inputs.shape
            x = tf.reshape(inputs, (-1, frames, height * width, channels))
            x = temporal_shift(x, self._kernel, self._segments)
            return tf.reshape(x, (-1, frames, height, width, channels))
        return temporal_shift(inputs, self._kernel, self._segments)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(shift_div=self.shift_div, num_segments=self.num_segments)
        return config


def check_segments(name: str, frames: int, num_segments: int | None) -> int:
    segments = num_segments or frames
    if frames % segments:
        raise ValueError(f"{name}: {frames} frames are not a multiple of num_segments {segments}.")
    return segments
