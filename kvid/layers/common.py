"""Small kvid layers: input normalization, learned global tokens, stochastic depth, activations."""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import register
from kvid.layers.conv2plus1d import ACTIVATIONS, apply_activation

# The CPU presets' input statistics: raw [0, 1] frames, no normalization op (see Normalize).
RAW_MEAN = (0.0, 0.0, 0.0)
RAW_STD = (1.0, 1.0, 1.0)


@register
class Normalize(keras.layers.Layer):
    """`(x - mean) / std` per channel: the model stores its own input normalization.

    Args:
      mean: per-channel mean (a list of `channels` floats).
      std: per-channel standard deviation.

    Input shape: `(..., channels)` in [0, 1]. Output shape: same. Mean 0 and std 1 is no op.

    Example:
      >>> Normalize([0.5] * 3, [0.25] * 3)(tf.ones((1, 2, 4, 4, 3)))[0, 0, 0, 0].numpy()
      array([2., 2., 2.], dtype=float32)
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"{self.name}: mean/std must match in length and std must be > 0.")

    @property
    def is_identity(self) -> bool:
        return all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    def call(self, inputs):
        if self.is_identity:
            # no op at all: int8 MUL and ADD that broadcast over 3 channels run far below
            # XNNPACK's rate (2 ms at 8x160x160 on one core, as much as MoViNet-A0's first
            # half), so the CPU presets take raw [0, 1] input and learn the scale in the stem
            return inputs
        # x * (1/std) + (-mean/std): a SUB of a constant right after the int8 input makes the
        # converter requantize the input through float
        scale = tf.constant([1.0 / s for s in self.std], inputs.dtype)
        offset = tf.constant([-m / s for m, s in zip(self.mean, self.std)], inputs.dtype)
        return inputs * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config


@register
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample while training.

    Args:
      rate: drop probability; kept samples are scaled by `1 / (1 - rate)`.

    Input shape: any, batch first. Output shape: same.
    """

    def __init__(self, rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, inputs, training=None):
        if not training or self.rate <= 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = [tf.shape(inputs)[0]] + [1] * (inputs.shape.rank - 1)
        mask = tf.floor(keep + tf.random.uniform(shape, dtype=inputs.dtype))
        return inputs / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rate=self.rate)
        return config


@register
class Activation(keras.layers.Layer):
    """A named activation kvid quantizes like any of its layers ("relu6", "hard_swish", ...).

    Args:
      activation: None, "relu", "relu6" or "hard_swish".
    """

    def __init__(self, activation: str | None, **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {activation!r}; use {ACTIVATIONS}.")
        self.activation = activation

    def call(self, inputs):
        return apply_activation(inputs, self.activation)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(activation=self.activation)
        return config
