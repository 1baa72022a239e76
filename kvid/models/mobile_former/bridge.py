"""The two-way bridge of (Video) Mobile-Former: Mobile->Former and Former->Mobile cross-attention.

The local side is never projected (`remove_proj_local=True` in the reference): Mobile->Former uses
the raw features as keys and values, Former->Mobile uses them as queries. Heads split the LOCAL
channel axis head-major (head j owns channels [j*C/h, (j+1)*C/h)), with scale (C/h)^-1/2.
"""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.attention import merge_heads, split_heads
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.layer_norm import LayerNorm
from kvid.models.mobile_former.dynamic_relu import hard_sigmoid

FORMULATIONS = ("full", "factorized")
TOKEN_NORMS = ("layer", "batch")
FFN_ACTIVATIONS = ("gelu", "relu")


def _token_norm(layer: QuantizableLayer, kind: str, name: str, token_dim: int):
    """The tokens' normalization: the reference's LayerNorm, or batch norm per token channel
    (the CPU form: at inference a per-channel scale and shift that XNNPACK runs, no RSQRT)."""
    if kind not in TOKEN_NORMS:
        raise ValueError(f"{layer.name}: norm {kind!r} not in {TOKEN_NORMS}.")
    if kind == "layer":
        norm = LayerNorm(layer.epsilon, quantized=layer.quantized, name=name)
    else:
        norm = keras.layers.BatchNormalization(epsilon=layer.epsilon, momentum=0.9, name=name)
    build_sublayer(norm, (None, None, token_dim))
    return norm


def _apply_norm(layer: QuantizableLayer, norm, x, training):
    if isinstance(norm, LayerNorm):
        return norm(x, training=training)
    return norm(x, training=layer.bn_training(training))


def key_pool_size(height: int, width: int, max_keys_per_frame: int) -> int:
    """Smallest square pooling window that leaves at most `max_keys_per_frame` keys per frame."""
    pool = 1
    while (height // pool) * (width // pool) > max_keys_per_frame:
        pool += 1
    return pool


@register
class Mobile2Former(QuantizableLayer):
    """Mobile->Former cross-attention: global tokens read the local feature map.

    Reference math (Mobile-Former `Local2Global`, `formulation="full"`): per head j,
    `A_j = softmax_N(Q_j X_j^T (C/h)^-1/2)`, `O = concat_j A_j X_j` with `Q = z W_q` and the raw
    features as keys and values; if `dynamic`, `O *= 2 hsigmoid(z W_alpha)`; then
    `z = LayerNorm(z + O W_o)`. For video the tokens attend over all `frames * height * width`
    positions.

    The int8 TFLite SOFTMAX has a fixed output scale of 1/256, so a softmax over hundreds of
    positions rounds most probabilities to zero. `formulation="factorized"` keeps each softmax
    small: keys are average-pooled to at most `max_keys_per_frame` per frame, a softmax within each
    frame gives one attended vector per frame, and a softmax over frames of each frame's best score
    (max over its keys, a bound on the frame's log-partition) weights the frames. Each stage is a
    matmul whose output stays at feature scale.

    Args:
      num_heads: heads over the local channels (2 in the reference).
      dynamic_gate: gate the attended features by `2 * hsigmoid(z W_alpha)` (on in the reference).
      formulation: "full" (reference) or "factorized" (int8-sound video form).
      max_keys_per_frame: key budget per frame of the factorized form.
      epsilon: LayerNorm epsilon.
      norm: "layer" (reference) or "batch" (CPU form: batch norm per token channel).

    Input shape: `[(batch, frames, height, width, channels), (batch, num_tokens, token_dim)]`.
    Output shape: `(batch, num_tokens, token_dim)`.

    Example:
      >>> Mobile2Former()([tf.ones((1, 2, 4, 4, 8)), tf.ones((1, 6, 32))]).shape
      TensorShape([1, 6, 32])
    """

    quant_points = (
        "query",
        "keys",
        "scores",
        "attended",
        "frame_attended",
        "alpha",
        "gated",
        "projected",
        "residual",
    )

    @property
    def symmetric_points(self) -> tuple[str, ...]:
        # the raw features are the keys and values; the factorized form's per-frame attended
        # vectors are the right-hand operand of the matmul over frames
        return ("keys", "attended") if self.formulation == "factorized" else ("keys",)

    def __init__(
        self,
        num_heads: int = 2,
        dynamic_gate: bool = True,
        formulation: str = "full",
        max_keys_per_frame: int = 64,
        epsilon: float = 1e-5,
        norm: str = "layer",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if formulation not in FORMULATIONS:
            raise ValueError(f"{self.name}: formulation {formulation!r} not in {FORMULATIONS}.")
        self.num_heads = num_heads
        self.dynamic_gate = dynamic_gate
        self.formulation = formulation
        self.max_keys_per_frame = max_keys_per_frame
        self.epsilon = epsilon
        self.norm_kind = norm

    def build(self, input_shape):
        feature_shape, token_shape = input_shape
        _, _, height, width, channels = (int(d) if d is not None else None for d in feature_shape)
        token_dim = int(token_shape[-1])
        if channels % self.num_heads:
            raise ValueError(f"{self.name}: {channels} channels not divisible by heads.")
        self.scale = (channels // self.num_heads) ** -0.5
        self.pool = (
            key_pool_size(height, width, self.max_keys_per_frame)
            if self.formulation == "factorized"
            else 1
        )
        self.q = keras.layers.Dense(channels, name="q")
        build_sublayer(self.q, (None, token_dim))
        if self.dynamic_gate:
            self.alpha = keras.layers.Dense(channels, name="alpha")
            build_sublayer(self.alpha, (None, token_dim))
        self.proj = keras.layers.Dense(token_dim, name="proj")
        build_sublayer(self.proj, (None, channels))
        self.norm = _token_norm(self, self.norm_kind, "norm", token_dim)
        self.build_quant_points()
        super().build(input_shape)

    def _attend_full(self, x, q, training):
        _, frames, height, width, channels = x.shape
        x = self.fq("keys", x, training)
        keys = split_heads(tf.reshape(x, (-1, frames * height * width, channels)), self.num_heads)
        scores = tf.matmul(q, keys, transpose_b=True) * self.scale  # (B, h, M, N)
        scores = self.fq("scores", scores, training)
        attn = self.fq_softmax(tf.nn.softmax(scores, axis=-1))
        return self.fq("attended", tf.matmul(attn, keys), training)  # (B, h, M, C/h)

    def _attend_factorized(self, x, q, training):
        _, frames, height, width, channels = x.shape
        heads, depth, tokens = self.num_heads, channels // self.num_heads, q.shape[2]
        if self.pool > 1:
            pooled = tf.reshape(x, (-1, height, width, channels))
            pooled = tf.nn.avg_pool2d(pooled, self.pool, self.pool, "VALID")
            height, width = pooled.shape[1], pooled.shape[2]
            x = tf.reshape(pooled, (-1, frames, height, width, channels))
        x = self.fq("keys", x, training)  # after the pooling: requantizes the fewest values
        keys_per_frame = height * width
        keys = tf.reshape(x, (-1, frames, keys_per_frame, heads, depth))
        keys = tf.transpose(keys, (0, 3, 1, 2, 4))  # (B, h, T, S, d)
        flat_keys = tf.reshape(keys, (-1, heads, frames * keys_per_frame, depth))
        scores = tf.matmul(q, flat_keys, transpose_b=True) * self.scale  # (B, h, M, T*S)
        scores = self.fq("scores", scores, training)
        scores = tf.reshape(scores, (-1, heads, tokens, frames, keys_per_frame))
        attn = self.fq_softmax(tf.nn.softmax(scores, axis=-1))  # within each frame
        attn = tf.transpose(attn, (0, 1, 3, 2, 4))  # (B, h, T, M, S)
        per_frame = self.fq("attended", tf.matmul(attn, keys), training)  # (B, h, T, M, d)
        frame_scores = tf.reduce_max(scores, axis=-1)  # REDUCE_MAX keeps the scores' int8 scale
        frame_attn = self.fq_softmax(tf.nn.softmax(frame_scores, axis=-1))  # (B, h, M, T)
        frame_attn = tf.reshape(frame_attn, (-1, heads, tokens, 1, frames))
        per_frame = tf.transpose(per_frame, (0, 1, 3, 2, 4))  # (B, h, M, T, d)
        out = tf.matmul(frame_attn, per_frame)  # (B, h, M, 1, d)
        out = tf.reshape(out, (-1, heads, tokens, depth))
        return self.fq("frame_attended", out, training)

    def call(self, inputs, training=None):
        x, tokens = inputs
        q = split_heads(self.fq("query", self.q(tokens), training), self.num_heads)
        if self.formulation == "full":
            attended = self._attend_full(x, q, training)
        else:
            attended = self._attend_factorized(x, q, training)
        attended = merge_heads(attended)  # (B, M, C)
        if self.dynamic_gate:
            alpha = self.fq("alpha", hard_sigmoid(self.alpha(tokens)) * 2.0, training)
            attended = self.fq("gated", attended * alpha, training)
        projected = self.fq("projected", self.proj(attended), training)
        residual = self.fq("residual", tokens + projected, training)
        return _apply_norm(self, self.norm, residual, training)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            dynamic_gate=self.dynamic_gate,
            formulation=self.formulation,
            max_keys_per_frame=self.max_keys_per_frame,
            epsilon=self.epsilon,
            norm=self.norm_kind,
        )
        return config


@register
class Former2Mobile(QuantizableLayer):
    """Former->Mobile cross-attention: every local position reads the global tokens.

    Reference math (Mobile-Former `Global2Local`): the raw features are the queries (no
    projection), `K = z W_k`, `V = z W_v`; per head j, `A_j = softmax_M(X_j K_j^T (C/h)^-1/2)`
    and `x = x + concat_j A_j V_j`. The softmax spans only the `num_tokens` tokens, so it is
    int8-sound at any resolution.

    Args:
      num_heads: heads over the local channels (2 in the reference).

    Input shape: `[(batch, frames, height, width, channels), (batch, num_tokens, token_dim)]`.
    Output shape: `(batch, frames, height, width, channels)`.

    Example:
      >>> Former2Mobile()([tf.ones((1, 2, 4, 4, 8)), tf.ones((1, 6, 32))]).shape
      TensorShape([1, 2, 4, 4, 8])
    """

    quant_points = ("keys", "values", "scores", "attended")
    symmetric_points = ("keys", "values")

    def __init__(self, num_heads: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def build(self, input_shape):
        feature_shape, token_shape = input_shape
        channels, token_dim = int(feature_shape[-1]), int(token_shape[-1])
        if channels % self.num_heads:
            raise ValueError(f"{self.name}: {channels} channels not divisible by heads.")
        self.scale = (channels // self.num_heads) ** -0.5
        self.k = keras.layers.Dense(channels, name="k")
        build_sublayer(self.k, (None, token_dim))
        self.proj = keras.layers.Dense(channels, name="proj")  # the values
        build_sublayer(self.proj, (None, token_dim))
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, tokens = inputs
        _, frames, height, width, channels = x.shape
        queries = split_heads(
            tf.reshape(x, (-1, frames * height * width, channels)), self.num_heads
        )
        keys = split_heads(self.fq("keys", self.k(tokens), training), self.num_heads)
        values = split_heads(self.fq("values", self.proj(tokens), training), self.num_heads)
        scores = tf.matmul(queries, keys, transpose_b=True) * self.scale  # (B, h, N, M)
        attn = self.fq_softmax(tf.nn.softmax(self.fq("scores", scores, training), axis=-1))
        attended = self.fq("attended", merge_heads(tf.matmul(attn, values)), training)
        return x + tf.reshape(attended, (-1, frames, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_heads=self.num_heads)
        return config


@register
class Former(QuantizableLayer):
    """The Former: self-attention among the global tokens, then a feed-forward network.

    Reference math (Mobile-Former `GlobalBlock`, post-norm): `Q = z W_q`, keys = values = z (no
    projection), 4 heads over the token dimension (its constructor default; the bridges use 2),
    `z = LN(z + Attn W_c)`, then `z = LN(z + W_2 GELU(W_1 z))` with expansion 2 and exact GELU.

    Args:
      num_heads: heads over the token dimension.
      ffn_expansion: hidden width of the FFN is `token_dim * ffn_expansion`.
      epsilon: LayerNorm epsilon.
      norm: "layer" (reference) or "batch" (CPU form: batch norm per token channel).
      activation: the FFN's "gelu" (reference, exact) or "relu" (CPU form: fused into fc1).

    Input shape: `(batch, num_tokens, token_dim)`. Output shape: same.

    Example:
      >>> Former()(tf.ones((1, 6, 32))).shape
      TensorShape([1, 6, 32])
    """

    quant_points = (
        "query",
        "tokens",
        "scores",
        "attended",
        "projected",
        "residual",
        "hidden",
        "ffn",
        "ffn_residual",
    )
    symmetric_points = ("tokens",)  # the keys and values

    def __init__(
        self,
        num_heads: int = 4,
        ffn_expansion: int = 2,
        epsilon: float = 1e-5,
        norm: str = "layer",
        activation: str = "gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in FFN_ACTIVATIONS:
            raise ValueError(f"{self.name}: activation {activation!r} not in {FFN_ACTIVATIONS}.")
        self.num_heads = num_heads
        self.ffn_expansion = ffn_expansion
        self.epsilon = epsilon
        self.norm_kind = norm
        self.activation = activation

    def build(self, input_shape):
        token_dim = int(input_shape[-1])
        if token_dim % self.num_heads:
            raise ValueError(f"{self.name}: token_dim {token_dim} not divisible by heads.")
        self.scale = (token_dim // self.num_heads) ** -0.5
        self.q = keras.layers.Dense(token_dim, name="q")
        self.proj = keras.layers.Dense(token_dim, name="proj")
        self.fc1 = keras.layers.Dense(token_dim * self.ffn_expansion, name="fc1")
        self.fc2 = keras.layers.Dense(token_dim, name="fc2")
        for dense, width in ((self.q, token_dim), (self.proj, token_dim), (self.fc1, token_dim)):
            build_sublayer(dense, (None, width))
        build_sublayer(self.fc2, (None, token_dim * self.ffn_expansion))
        self.norm1 = _token_norm(self, self.norm_kind, "norm1", token_dim)
        self.norm2 = _token_norm(self, self.norm_kind, "norm2", token_dim)
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        q = split_heads(self.fq("query", self.q(inputs), training), self.num_heads)
        kv = split_heads(self.fq("tokens", inputs, training), self.num_heads)
        scores = self.fq("scores", tf.matmul(q, kv, transpose_b=True) * self.scale, training)
        attn = self.fq_softmax(tf.nn.softmax(scores, axis=-1))
        attended = self.fq("attended", merge_heads(tf.matmul(attn, kv)), training)
        projected = self.fq("projected", self.proj(attended), training)
        z = _apply_norm(
            self, self.norm1, self.fq("residual", inputs + projected, training), training
        )
        hidden = self.fc1(z)
        if self.activation == "gelu":
            hidden = tf.nn.gelu(hidden, approximate=False)
        else:
            hidden = tf.nn.relu(hidden)
        ffn = self.fq("ffn", self.fc2(self.fq("hidden", hidden, training)), training)
        return _apply_norm(self, self.norm2, self.fq("ffn_residual", z + ffn, training), training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            ffn_expansion=self.ffn_expansion,
            epsilon=self.epsilon,
            norm=self.norm_kind,
            activation=self.activation,
        )
        return config


__all__ = [
    "FFN_ACTIVATIONS",
    "FORMULATIONS",
    "TOKEN_NORMS",
    "Former",
    "Former2Mobile",
    "Mobile2Former",
    "key_pool_size",
]
