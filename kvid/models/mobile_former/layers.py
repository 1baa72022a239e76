"""Small Mobile-Former layers: the learned global tokens and the channel shuffle of the 26m model."""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import register


@register
class GlobalTokens(keras.layers.Layer):
    """The learned global tokens of Mobile-Former, repeated for every clip of the batch.

    One set of `num_tokens` tokens serves the whole clip (all frames), as in Video Mobile-Former.
    Initialised N(0, 1) like the reference's `nn.Embedding`.

    Args:
      num_tokens: number of global tokens (6 in the larger presets).
      token_dim: token width.

    Input shape: any tensor whose first axis is the batch (the video).
    Output shape: `(batch, num_tokens, token_dim)`.

    Example:
      >>> GlobalTokens(6, 32)(tf.zeros((2, 8, 16, 16, 3))).shape
      TensorShape([2, 6, 32])
    """

    def __init__(self, num_tokens: int, token_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens
        self.token_dim = token_dim

    def build(self, input_shape):
        self.tokens = self.add_weight(
            name="tokens",
            shape=(self.num_tokens, self.token_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        super().build(input_shape)

    def call(self, inputs):
        # zeros * x + tokens: the batch size comes from the input without a TILE op
        first = tf.reshape(inputs, (-1, inputs.shape[1:].num_elements()))[:, :1]
        batch_ones = tf.reshape(tf.ones_like(first), (-1, 1, 1))
        return batch_ones * self.tokens[None]

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((input_shape[0], self.num_tokens, self.token_dim))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, token_dim=self.token_dim)
        return config


@register
class ChannelShuffle(keras.layers.Layer):
    """ShuffleNet channel shuffle: `(groups, C / groups)` channel grid transposed.

    Output channel `j * groups + i` is input channel `i * (C / groups) + j`, as PyTorch's
    `view(B, g, C/g, H, W).transpose(1, 2)`. Lowered to RESHAPE + 3-D TRANSPOSE + RESHAPE.

    Args:
      groups: number of groups; must divide the channel count.

    Input shape: `(..., channels)`. Output shape: same.

    Example:
      >>> ChannelShuffle(2)(tf.range(4.0)[None]).numpy()
      array([[0., 2., 1., 3.]], dtype=float32)
    """

    def __init__(self, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def build(self, input_shape):
        if int(input_shape[-1]) % self.groups:
            raise ValueError(
                f"{self.name}: {input_shape[-1]} channels not divisible by {self.groups} groups."
            )
        super().build(input_shape)

    def call(self, inputs):
        channels = inputs.shape[-1]
        x = tf.reshape(inputs, (-1, self.groups, channels // self.groups))
        x = tf.transpose(x, (0, 2, 1))
        return tf.reshape(x, [-1, *inputs.shape[1:]])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(groups=self.groups)
        return config
