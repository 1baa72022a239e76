"""Pieces of the Mobile-Former merge head."""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.conv2plus1d import ACTIVATIONS, apply_activation


@register
class PooledTokenConcat(QuantizableLayer):
    """Global average pool of the feature map, optional activation, then the first tokens appended.

    The Mobile-Former head's merge: `concat(hswish(mean_{t,h,w} x), z_0, ..., z_{k-1})`.

    Args:
      num_cls_tokens: how many leading tokens to append (1 in the reference; 0 for none).
      activation: applied to the pooled features (the reference uses "hard_swish").

    Input shape: `[(batch, frames, height, width, channels), (batch, num_tokens, token_dim)]`.
    Output shape: `(batch, channels + num_cls_tokens * token_dim)`.
    """

    quant_points = ("pooled",)

    def __init__(self, num_cls_tokens: int = 1, activation: str | None = "hard_swish", **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {activation!r}; use {ACTIVATIONS}.")
        self.num_cls_tokens = num_cls_tokens
        self.activation = activation

    def build(self, input_shape):
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, tokens = inputs
        pooled = self.fq("pooled", tf.reduce_mean(x, axis=(1, 2, 3)), training)
        parts = [apply_activation(pooled, self.activation)]
        parts += [tokens[:, i] for i in range(self.num_cls_tokens)]
        return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

    def compute_output_shape(self, input_shape):
        feature_shape, token_shape = input_shape
        width = feature_shape[-1] + self.num_cls_tokens * token_shape[-1]
        return tf.TensorShape((feature_shape[0], width))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_cls_tokens=self.num_cls_tokens, activation=self.activation)
        return config


@register
class DenseBN(QuantizableLayer):
    """Dense layer, batch norm (BatchNorm1d in PyTorch) and activation, for 2-D inputs.

    Args:
      units: output width.
      activation: None, "relu", "relu6" or "hard_swish".
      bn_epsilon: batch-norm epsilon.
      bn_momentum: batch-norm momentum.

    Input shape: `(batch, features)`. Output shape: `(batch, units)`.
    """

    def __init__(
        self,
        units: int,
        activation: str | None = "hard_swish",
        bn_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.dense = keras.layers.Dense(units, name="dense")
        self.bn = keras.layers.BatchNormalization(
            epsilon=bn_epsilon, momentum=bn_momentum, name="bn"
        )

    def build(self, input_shape):
        build_sublayer(self.dense, input_shape)
        build_sublayer(self.bn, (None, self.units))
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.bn(self.dense(inputs), training=self.bn_training(training))
        return apply_activation(x, self.activation)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((input_shape[0], self.units))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            units=self.units,
            activation=self.activation,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
        )
        return config
