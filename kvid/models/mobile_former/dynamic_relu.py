"""Dynamic ReLU whose per-channel slopes are generated from a global token (Mobile-Former)."""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register


def hard_sigmoid(x):
    """relu6(x + 3) / 6, the h_sigmoid of MobileNetV3 and Mobile-Former."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@register
class DynamicReLU(QuantizableLayer):
    """Two-piece dynamic ReLU, `max(a1 * x, a2 * x)`, with slopes from one global token.

    From Mobile-Former (Chen et al., CVPR 2022; `DyReLU` + `HyperFunc`): a two-layer MLP on token
    `token_index` gives `theta = hsigmoid(W2 relu(W1 z + b1) + b2)` with `2 * C` entries;
    `a1 = 2 * (theta[:C] - 0.5) + 1` in [0, 2] and `a2 = 2 * (theta[C:] - 0.5)` in [-1, 1]. The
    slopes are per sample and per channel and broadcast over frames, height and width.

    Args:
      token_index: which global token drives the slopes (the reference uses token 0).
      reduction: hidden width of the MLP is `token_dim // reduction`.
      scale: slope range scale (2 in the reference).

    Input shape: `[(batch, frames, height, width, channels), (batch, num_tokens, token_dim)]`.
    Output shape: `(batch, frames, height, width, channels)`.

    Example:
      >>> DynamicReLU()([tf.ones((1, 2, 4, 4, 8)), tf.ones((1, 6, 32))]).shape
      TensorShape([1, 2, 4, 4, 8])
    """

    # MAXIMUM keeps one int8 scale for both branches and its output, so the branches take the
    # output's range (the layer's output fake-quant), not ranges of their own.
    quant_points = ("slopes",)

    def __init__(self, token_index: int = 0, reduction: int = 4, scale: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.token_index = token_index
        self.reduction = reduction
        self.scale = scale

    def build(self, input_shape):
        feature_shape, token_shape = input_shape
        channels, token_dim = int(feature_shape[-1]), int(token_shape[-1])
        if self.token_index >= int(token_shape[1]):
            raise ValueError(f"{self.name}: token_index {self.token_index} >= {token_shape[1]}.")
        self.fc1 = keras.layers.Dense(token_dim // self.reduction, name="fc1")
        self.fc2 = keras.layers.Dense(2 * channels, name="fc2")
        build_sublayer(self.fc1, (None, token_dim))
        build_sublayer(self.fc2, (None, token_dim // self.reduction))
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, tokens = inputs
        channels = x.shape[-1]
        theta = hard_sigmoid(self.fc2(tf.nn.relu(self.fc1(tokens[:, self.token_index]))))
        theta = self.fq("slopes", theta, training)
        a1 = (theta[:, :channels] - 0.5) * self.scale + 1.0
        a2 = (theta[:, channels:] - 0.5) * self.scale
        a1 = tf.reshape(a1, (-1, 1, 1, 1, channels))
        a2 = tf.reshape(a2, (-1, 1, 1, 1, channels))
        return tf.maximum(x * a1, x * a2)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(token_index=self.token_index, reduction=self.reduction, scale=self.scale)
        return config
