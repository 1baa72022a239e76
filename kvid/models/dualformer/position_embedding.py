"""DualFormer's optional learned absolute space-time position embedding (not in the paper)."""

from __future__ import annotations

from kvid.backend import keras
from kvid.layers.base import register


@register
class PositionEmbedding(keras.layers.Layer):
    """Adds learned absolute position embeddings to a video's tokens: spatial plus temporal.

    `y[t, h, w] = x[t, h, w] + spatial[h, w] + temporal[t]` (the factorised space-time embedding
    of TimeSformer and XViT), each initialised N(0, 0.02) truncated. The two tables are summed
    into one constant, so the int8 graph has a single ADD.

    Input shape: `(batch, frames, height, width, channels)`. Output shape: same.

    Example:
      >>> PositionEmbedding()(tf.zeros((1, 4, 8, 8, 16))).shape
      TensorShape([1, 4, 8, 8, 16])
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        self.spatial = self.add_weight(
            name="spatial",
            shape=(height, width, channels),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.temporal = self.add_weight(
            name="temporal",
            shape=(frames, channels),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs + (self.spatial[None] + self.temporal[:, None, None])

    def compute_output_shape(self, input_shape):
        return input_shape
