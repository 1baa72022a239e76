"""LayerNorm written with ops that quantize to int8 TFLite at every rank."""

from __future__ import annotations

from kvid.backend import tf
from kvid.layers.base import QuantizableLayer, register


@register
class LayerNorm(QuantizableLayer):
    """Layer normalization over the last axis, int8-clean at every rank.

    `keras.layers.LayerNormalization` on a rank-5 input leaves a float32 SQUARE inside an int8
    TFLite graph (and adds transposes at some rank-3 shapes); this form (mean, sub, mul, mean, add,
    rsqrt, mul, add) converts to int8 MEAN/SUB/MUL/ADD/RSQRT at every rank. In QAT mode the
    centred values and the variance are fake-quantized where TFLite requantizes them.

    The int8 variance has one scale per tensor, so a token whose variance is below half a step
    (next to a token with a large one) rounds to 0, and `rsqrt(0 + epsilon)` multiplies its centred
    values by up to 316: QAT diverges and int8 saturates. In QAT mode epsilon is therefore raised
    to one step of the variance's range, `max(epsilon, range / 255)`: such tokens are damped rather
    than blown up, the same way in training and in the int8 model (the range is a constant there).

    Args:
      epsilon: added to the variance (PyTorch default 1e-5; the Keras default is 1e-3).
      center: learn a bias `beta`.
      scale: learn a gain `gamma`.

    Input shape: `(..., channels)`. Output shape: same.

    Example:
      >>> LayerNorm()(tf.ones((2, 6, 192))).shape
      TensorShape([2, 6, 192])
    """

    # No point after the normalization: the converter folds `* gamma + beta` into the next
    # requantization, and a range of its own there breaks its same-scale constraints.
    quant_points = ("centered", "variance")

    def __init__(self, epsilon: float = 1e-5, center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = (
            self.add_weight(name="gamma", shape=(channels,), initializer="ones")
            if self.scale
            else None
        )
        self.beta = (
            self.add_weight(name="beta", shape=(channels,), initializer="zeros")
            if self.center
            else None
        )
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        centered = inputs - tf.reduce_mean(inputs, axis=-1, keepdims=True)
        centered = self.fq("centered", centered, training)
        variance = tf.reduce_mean(centered * centered, axis=-1, keepdims=True)
        variance = self.fq("variance", variance, training)
        outputs = centered * tf.math.rsqrt(variance + self.variance_floor())
        if self.gamma is not None:
            outputs = outputs * self.gamma
        if self.beta is not None:
            outputs = outputs + self.beta
        return outputs

    def variance_floor(self):
        """The epsilon added to the variance: `epsilon`, or one int8 step of it in QAT mode."""
        if not self.quantized:
            return self.epsilon
        # Read after `fq` has updated the range (variables are read in program order).
        ranges = self._ranges["variance"]
        return tf.maximum(self.epsilon, (ranges["max"] - ranges["min"]) / 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale)
        return config
