"""Vision Transformer pieces for video: per-frame patches, space-time embeddings, MLP, class tokens.

The timm ViT (Dosovitskiy et al., arXiv 2010.11929) as XViT uses it (Bulat et al., arXiv
2106.05968, code `1adrianb/video-transformers`): every frame is a ViT image, with a temporal
embedding added to all of its tokens, and a temporal head that reads the per-frame class tokens
through a learnable class token of its own.
"""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.models.xvit.space_time_mixing import vit_initializer


@register
class PatchEmbedding(keras.layers.Layer):
    """Per-frame patch embedding: a `patch x patch` convolution with stride `patch`, flattened.

    Frames are folded into the batch axis (kernel = stride, no Conv3D); patches are flattened
    row-major, as PyTorch's `proj(x).flatten(2).transpose(1, 2)`.

    Args:
      embed_dim: token width.
      patch_size: square patch size; must divide the frame size.

    Input shape: `(batch, frames, height, width, channels)`.
    Output shape: `(batch, frames, (height / patch) * (width / patch), embed_dim)`.

    Example:
      >>> PatchEmbedding(32, 8)(tf.zeros((1, 2, 32, 32, 3))).shape
      TensorShape([1, 2, 16, 32])
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.patch_size = patch_size

    def build(self, input_shape):
        _, _, height, width, channels = input_shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{self.name}: frame size {height}x{width} is not divisible by patch_size "
                f"{self.patch_size}."
            )
        self.proj = keras.layers.Conv2D(
            self.embed_dim, self.patch_size, strides=self.patch_size, padding="valid", name="proj"
        )
        build_sublayer(self.proj, (None, height, width, channels))
        super().build(input_shape)

    def call(self, inputs):
        _, frames, height, width, channels = inputs.shape
        x = self.proj(tf.reshape(inputs, (-1, height, width, channels)))
        return tf.reshape(x, (-1, frames, x.shape[1] * x.shape[2], self.embed_dim))

    def compute_output_shape(self, input_shape):
        batch, frames, height, width, _ = input_shape
        patches = (height // self.patch_size) * (width // self.patch_size)
        return tf.TensorShape((batch, frames, patches, self.embed_dim))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(embed_dim=self.embed_dim, patch_size=self.patch_size)
        return config


@register
class SpaceTimeEmbedding(keras.layers.Layer):
    """Prepends the class token to every frame and adds spatial and temporal embeddings.

    `x_t = [cls; patches_t] + E_pos + e_(t mod P)`: the spatial embedding `E_pos`
    (`tokens + 1` entries) is shared by all frames; the temporal embedding (P entries, zero
    initialised as in the reference) is added to all tokens of frame t, class token included.
    P = `temporal_length` defaults to the number of frames; the released Kinetics configs keep
    P = 8 with 16 frames, so the 8 entries repeat (`temporal_length=8`).

    The class token is written as zero padding plus a constant (PAD + ADD in TFLite; no TILE).
    The weights are named `*_embedding`, which the trainer keeps out of weight decay (timm excludes
    `pos_embed` and `cls_token`).

    Args:
      temporal_length: entries of the temporal embedding (None: frames); must divide frames.

    Input shape: `(batch, frames, tokens, channels)`.
    Output shape: `(batch, frames, tokens + 1, channels)`.

    Example:
      >>> SpaceTimeEmbedding()(tf.zeros((1, 4, 16, 8))).shape
      TensorShape([1, 4, 17, 8])
    """

    def __init__(self, temporal_length: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.temporal_length = temporal_length

    def build(self, input_shape):
        frames, tokens, channels = (int(d) for d in input_shape[1:])
        length = self.temporal_length or frames
        if frames % length:
            raise ValueError(
                f"{self.name}: {frames} frames are not a multiple of temporal_length {length}."
            )
        self.cls_token = self.add_weight(
            name="class_embedding", shape=(channels,), initializer=vit_initializer()
        )
        self.pos_embed = self.add_weight(
            name="position_embedding", shape=(tokens + 1, channels), initializer=vit_initializer()
        )
        self.temp_embed = self.add_weight(
            name="temporal_embedding", shape=(length, channels), initializer="zeros"
        )
        super().build(input_shape)

    def call(self, inputs):
        frames = inputs.shape[1]
        x = tf.pad(inputs, [[0, 0], [0, 0], [1, 0], [0, 0]])  # an all-zero class slot
        cls = tf.pad(self.cls_token[None], [[0, self.pos_embed.shape[0] - 1], [0, 0]])
        temporal = self.temp_embed
        if temporal.shape[0] != frames:
            temporal = tf.tile(temporal, (frames // temporal.shape[0], 1))
        # one constant (frames, tokens + 1, C): folded at export
        embedding = (cls + self.pos_embed)[None] + temporal[:, None]
        return x + embedding

    def compute_output_shape(self, input_shape):
        batch, frames, tokens, channels = input_shape
        return tf.TensorShape((batch, frames, tokens + 1, channels))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(temporal_length=self.temporal_length)
        return config


MLP_ACTIVATIONS = ("gelu", "relu")


@register
class FeedForward(QuantizableLayer):
    """Transformer MLP: `fc2(act(fc1(x)))`, the exact (erf) GELU by default.

    Args:
      hidden_dim: width of the hidden layer (`mlp_ratio * channels`).
      dropout_rate: dropout after the activation and after fc2 (timm `Mlp`).
      activation: "gelu" (exact, the reference) or "relu" (the CPU form: fused into fc1 in
        int8, where the GELU is a kernel outside XNNPACK).

    Input shape: `(..., channels)`. Output shape: same.

    Example:
      >>> FeedForward(32)(tf.zeros((1, 4, 5, 8))).shape
      TensorShape([1, 4, 5, 8])
    """

    quant_points = ("fc1", "hidden")

    def __init__(
        self, hidden_dim: int, dropout_rate: float = 0.0, activation: str = "gelu", **kwargs
    ):
        super().__init__(**kwargs)
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(f"{self.name}: activation {activation!r} not in {MLP_ACTIVATIONS}.")
        self.hidden_dim = hidden_dim
        self.dropout_rate = dropout_rate
        self.activation = activation

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.fc1 = keras.layers.Dense(
            self.hidden_dim, name="fc1", kernel_initializer=vit_initializer()
        )
        build_sublayer(self.fc1, (None, channels))
        self.fc2 = keras.layers.Dense(channels, name="fc2", kernel_initializer=vit_initializer())
        build_sublayer(self.fc2, (None, self.hidden_dim))
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.fq("fc1", self.fc1(inputs), training)
        if self.activation == "gelu":
            x = tf.nn.gelu(x, approximate=False)
        else:
            x = tf.nn.relu(x)
        x = self.fq("hidden", x, training)
        x = self.dropout(x, training=training)
        return self.dropout(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim, dropout_rate=self.dropout_rate, activation=self.activation
        )
        return config


@register
class SelectToken(keras.layers.Layer):
    """Takes one token: `x[..., index, :]` (the class token of every frame, or of the clip).

    Args:
      index: token index along the second-to-last axis.

    Input shape: `(batch, ..., tokens, channels)`. Output shape: `(batch, ..., channels)`.

    Example:
      >>> SelectToken(0)(tf.ones((2, 4, 5, 8))).shape
      TensorShape([2, 4, 8])
    """

    def __init__(self, index: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def call(self, inputs):
        return inputs[..., self.index, :]

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((*input_shape[:-2], input_shape[-1]))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(index=self.index)
        return config


@register
class MeanTokens(keras.layers.Layer):
    """Average of the tokens: `mean(x[..., :, :], axis=-2)` (global average pooling of a frame).

    Input shape: `(batch, ..., tokens, channels)`. Output shape: `(batch, ..., channels)`.

    Example:
      >>> MeanTokens()(tf.ones((2, 4, 5, 8))).shape
      TensorShape([2, 4, 8])
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, inputs):
        return tf.reduce_mean(inputs, axis=-2)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((*input_shape[:-2], input_shape[-1]))


@register
class PrependClassToken(keras.layers.Layer):
    """Prepends a learnable class token to a token sequence (the XViT temporal head's `cls`).

    No positional embedding is added (the reference `VitHead` has none). Zero initialised, as in
    the reference.

    Input shape: `(batch, tokens, channels)`. Output shape: `(batch, tokens + 1, channels)`.

    Example:
      >>> PrependClassToken()(tf.ones((2, 8, 16))).shape
      TensorShape([2, 9, 16])
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.cls_token = self.add_weight(
            name="class_embedding", shape=(int(input_shape[-1]),), initializer="zeros"
        )
        super().build(input_shape)

    def call(self, inputs):
        x = tf.pad(inputs, [[0, 0], [1, 0], [0, 0]])
        return x + tf.pad(self.cls_token[None], [[0, inputs.shape[1]], [0, 0]])

    def compute_output_shape(self, input_shape):
        batch, tokens, channels = input_shape
        return tf.TensorShape((batch, tokens + 1, channels))


__all__ = [
    "FeedForward",
    "MeanTokens",
    "PatchEmbedding",
    "PrependClassToken",
    "SelectToken",
    "SpaceTimeEmbedding",
]
