"""Layers of the Edge TPU form of Video Mobile-Former: frame-stacked tensors, a static bridge.

The Edge TPU takes no tensor with more than 3 dimensions above 1, no matmul of two activations,
no softmax over more than one axis, no LayerNorm (RSQRT) and no GELU/HARD_SWISH (docs/design.md
section 3, `kvid_tflite.edgetpu`). In this form every feature map is frame-stacked,
`(batch, frames * height, width, channels)`; a temporal kernel runs on the time-major view
`(batch, frames, height * width, channels)` (3 dimensions above 1 at batch 1); the global tokens
are one flat vector `(batch, num_tokens * token_dim)`, so every linear map on them is a
FULLY_CONNECTED with a one-dimensional output.

The bridge is the reference code's static ("mlp") formulation (`AAboys/MobileFormer`
`Local2Global`/`GlobalBlock`/`Global2Local` with `block_type="mlp"`) adapted to video:
Mobile->Former mixes a coarse average-pooled grid of every frame into the tokens with a static
linear map (optionally gated by `2 sigmoid(W z)` as the reference's dynamic gate), the Former is
an MLP over the flattened tokens, and Former->Mobile modulates every frame's channels, cell by
cell of the same grid, by `x * 2 sigmoid(W_g z) + W_b z` instead of a softmax over tokens. The
dynamic ReLU of the blocks stays (MUL and MAXIMUM). Spatial kernels pad every frame on its own, so
the convolutions compute exactly what `vmf_tiny`'s per-frame and (2+1)D convolutions compute.
"""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.conv2plus1d import (
    apply_activation,
    as_triple,
    every_nth_frame,
    symmetric_pad,
)
from kvid.models.mobile_former.dynamic_relu import DynamicReLU, hard_sigmoid

ACTIVATIONS = (None, "relu6")


def _batch_norm(epsilon: float, momentum: float, name: str):
    return keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name=name)


def _check_activation(layer: keras.layers.Layer, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{layer.name}: activation must be one of {ACTIVATIONS}.")


@register
class StackedConv(QuantizableLayer):
    """A (2+1)D convolution of frame-stacked video: spatial conv, temporal depthwise, BN, act.

    The spatial convolution (full with `filters`, else depthwise with `depth_multiplier`) runs on
    the stacked frames with each frame zero-padded by `k // 2` on its own (pads, reshapes and a
    slice: no kernel reads across a frame boundary, so it equals `FrameConv`/`Conv2Plus1D` on the
    clip); a temporal kernel `k_t > 1` or stride `s_t > 1` adds a `(k_t, 1)` depthwise convolution
    on the time-major view, zero-padded by `k_t // 2` frames each side, keeping every `s_t`-th
    frame.

    Args:
      filters: output channels of a full convolution; None for a depthwise one.
      kernel_size: `(k_t, k, k)` or an int `k` for `(1, k, k)`.
      strides: `(s_t, s, s)` or an int `s` for `(1, s, s)`.
      num_frames: frames stacked in the input's height axis.
      depth_multiplier: outputs per channel of a depthwise spatial convolution.
      activation: None or "relu6".
      bn_epsilon: batch-norm epsilon.
      bn_momentum: batch-norm momentum.

    Input shape: `(batch, num_frames * height, width, channels)`.
    Output shape: `(batch, num_frames / s_t * height / s, width / s, out_channels)`.

    Example:
      >>> StackedConv(None, (3, 3, 3), (2, 2, 2), num_frames=4)(tf.zeros((1, 32, 8, 6))).shape
      TensorShape([1, 8, 4, 6])
    """

    quant_points = ("spatial",)

    def __init__(
        self,
        filters: int | None = None,
        kernel_size=1,
        strides=1,
        num_frames: int = 1,
        depth_multiplier: int = 1,
        activation: str | None = None,
        bn_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_activation(self, activation)
        kernel_size = as_triple(kernel_size)
        strides = as_triple(strides)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.num_frames = num_frames
        self.depth_multiplier = depth_multiplier
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        (k_t, k, _), (s_t, s, _) = kernel_size, strides
        if filters is None:
            self.spatial = keras.layers.DepthwiseConv2D(
                k, s, padding="valid", depth_multiplier=depth_multiplier, use_bias=False,
                name="spatial",
            )  # fmt: skip
        else:
            self.spatial = keras.layers.Conv2D(
                filters, k, s, padding="valid", use_bias=False, name="spatial"
            )
        self.has_temporal = k_t > 1 or s_t > 1
        self.temporal = (
            keras.layers.DepthwiseConv2D((k_t, 1), padding="valid", use_bias=False, name="temporal")
            if self.has_temporal
            else None
        )
        self.bn = _batch_norm(bn_epsilon, bn_momentum, "bn")

    def _out_channels(self, channels: int) -> int:
        return self.filters if self.filters is not None else channels * self.depth_multiplier

    def build(self, input_shape):
        stacked, width, channels = (int(d) for d in input_shape[1:])
        if stacked % self.num_frames or (stacked // self.num_frames) % self.strides[1]:
            raise ValueError(
                f"{self.name}: {stacked} stacked rows are not {self.num_frames} frames of a "
                f"height divisible by the stride {self.strides[1]}."
            )
        out = self._out_channels(channels)
        build_sublayer(self.spatial, (None, None, width + 2 * (self.kernel_size[1] // 2), channels))
        if self.temporal is not None:
            build_sublayer(self.temporal, (None, self.num_frames, None, out))
            self.build_quant_points()
        build_sublayer(self.bn, (None, None, None, out))
        super().build(input_shape)

    def _spatial_per_frame(self, inputs):
        """The spatial conv with each frame zero-padded on its own: no kernel reads across a
        frame boundary (symmetric `k // 2` padding, as `FrameConv` and PyTorch for any stride)."""
        k, s, frames = self.kernel_size[1], self.strides[1], self.num_frames
        if k == 1:
            return self.spatial(inputs)
        _, stacked, width, channels = inputs.shape
        pad, height = k // 2, stacked // frames
        x = tf.reshape(inputs, (-1, frames, height, width * channels))  # rows of each frame
        x = tf.pad(x, [[0, 0], [0, 0], [pad, pad], [0, 0]])
        x = tf.reshape(x, (-1, frames * (height + 2 * pad), width, channels))
        x = self.spatial(tf.pad(x, [[0, 0], [0, 0], [pad, pad], [0, 0]]))
        # output rows of frame t start at t * (height + 2 pad) / s; the rest read its padding
        rows, out_height = (height + 2 * pad) // s, (height + 2 * pad - k) // s + 1
        x = tf.pad(x, [[0, 0], [0, frames * rows - x.shape[1]], [0, 0], [0, 0]])
        _, _, out_width, out_channels = x.shape
        x = tf.reshape(x, (-1, frames, rows, out_width * out_channels))[:, :, :out_height]
        return tf.reshape(x, (-1, frames * out_height, out_width, out_channels))

    def call(self, inputs, training=None):
        x = self._spatial_per_frame(inputs)
        _, stacked, width, channels = x.shape
        height = stacked // self.num_frames
        if self.temporal is not None:
            k_t, s_t = self.kernel_size[0], self.strides[0]
            x = self.fq("spatial", x, training)
            x = tf.reshape(x, (-1, self.num_frames, height * width, channels))
            x = every_nth_frame(self.temporal(symmetric_pad(x, k_t // 2, 0)), s_t)
            x = tf.reshape(x, (-1, x.shape[1] * height, width, channels))
        x = self.bn(x, training=self.bn_training(training))
        return apply_activation(x, self.activation)

    def compute_output_shape(self, input_shape):
        batch, stacked, width, channels = input_shape
        s = self.strides[1]
        frames = (self.num_frames - 1) // self.strides[0] + 1
        height = -(-(stacked // self.num_frames) // s)
        return tf.TensorShape(
            (batch, frames * height, -(-width // s), self._out_channels(channels))
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=list(self.kernel_size),
            strides=list(self.strides),
            num_frames=self.num_frames,
            depth_multiplier=self.depth_multiplier,
            activation=self.activation,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
        )
        return config


@register
class StackedTemporalStack(QuantizableLayer):
    """`TemporalStack` on frame-stacked video: each frame with its neighbours along channels.

    Output channel `i * C + c` of frame `t` is input channel `c` of frame
    `t + i - kernel_size // 2`, zero beyond the clip. Pad, slices and a concatenation on the
    time-major view `(batch, frames, height * width, channels)`.

    Args:
      kernel_size: odd number of frames stacked.
      num_frames: frames stacked in the input's height axis.

    Input shape: `(batch, num_frames * height, width, channels)`.
    Output shape: `(batch, num_frames * height, width, kernel_size * channels)`.

    Example:
      >>> StackedTemporalStack(3, num_frames=4)(tf.zeros((1, 32, 8, 3))).shape
      TensorShape([1, 32, 8, 9])
    """

    def __init__(self, kernel_size: int = 3, num_frames: int = 1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{self.name}: kernel_size must be a positive odd int, got "
                             f"{kernel_size!r}.")  # fmt: skip
        self.kernel_size = kernel_size
        self.num_frames = num_frames

    def call(self, inputs):
        if self.kernel_size == 1:
            return inputs
        _, stacked, width, channels = inputs.shape
        frames, pad = self.num_frames, self.kernel_size // 2
        x = tf.reshape(inputs, (-1, frames, (stacked // frames) * width, channels))
        x = tf.pad(x, [[0, 0], [pad, pad], [0, 0], [0, 0]])
        x = tf.concat([x[:, i : i + frames] for i in range(self.kernel_size)], axis=-1)
        return tf.reshape(x, (-1, stacked, width, self.kernel_size * channels))

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        return tf.TensorShape([*shape[:-1], shape[-1] * self.kernel_size])

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, num_frames=self.num_frames)
        return config


@register
class FlatTokens(keras.layers.Layer):
    """The learned global tokens as one flat vector per clip, `(batch, num_tokens * token_dim)`.

    Initialised N(0, 1) like the reference's `nn.Embedding`; token `m` is entries
    `[m * token_dim, (m + 1) * token_dim)`.

    Args:
      num_tokens: number of global tokens.
      token_dim: token width.

    Input shape: any tensor whose first axis is the batch (the video).
    Output shape: `(batch, num_tokens * token_dim)`.

    Example:
      >>> FlatTokens(6, 32)(tf.zeros((2, 32, 8, 3))).shape
      TensorShape([2, 192])
    """

    def __init__(self, num_tokens: int, token_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens
        self.token_dim = token_dim

    def build(self, input_shape):
        self.tokens = self.add_weight(
            name="tokens",
            shape=(1, self.num_tokens * self.token_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        super().build(input_shape)

    def call(self, inputs):
        # zeros * x + tokens: the batch size comes from the input without a TILE op
        first = tf.reshape(inputs, (-1, inputs.shape[1:].num_elements()))[:, :1]
        return tf.ones_like(first) * self.tokens

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((input_shape[0], self.num_tokens * self.token_dim))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, token_dim=self.token_dim)
        return config


@register
class PooledMobile2Former(QuantizableLayer):
    """Mobile->Former of the Edge TPU form: a coarse per-frame grid mixed into the tokens.

    Every frame is average-pooled to a `grid_size x grid_size` grid (pooling windows tile each
    frame: no window spans two frames), and `z = BN(z + (W_p p) * 2 sigmoid(W_a z))` with `p` the
    flattened grids of all frames in frame order: a static linear map from frames, grid cells and
    channels to every token, the reference's "mlp" Local2Global (a static map from positions to
    tokens) at grid resolution, optionally gated by the tokens (its `use_dynamic` gate). The grid
    keeps where things are (which side moved first), which a mean over the frame would lose.
    AVERAGE_POOL_2D, FULLY_CONNECTED, LOGISTIC, MUL and ADD: no matmul of two activations.

    Args:
      num_frames: frames stacked in the feature map's height axis.
      grid_size: side of the pooled grid per frame; must divide the frame's height and width.
      dynamic_gate: gate the update by `2 sigmoid(W_a z)`.
      bn_epsilon: batch-norm epsilon.
      bn_momentum: batch-norm momentum.

    Input shape: `[(batch, num_frames * height, width, channels), (batch, token_width)]`.
    Output shape: `(batch, token_width)`.

    Example:
      >>> PooledMobile2Former(num_frames=2)([tf.ones((1, 8, 4, 8)), tf.ones((1, 12))]).shape
      TensorShape([1, 12])
    """

    quant_points = ("pooled", "update", "gate", "gated", "residual")

    def __init__(
        self,
        num_frames: int = 1,
        grid_size: int = 2,
        dynamic_gate: bool = True,
        bn_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.grid_size = grid_size
        self.dynamic_gate = dynamic_gate
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

    def build(self, input_shape):
        stacked, frame_width, channels, width, grid = _bridge_shapes(self, input_shape)
        self.update = keras.layers.Dense(width, name="update")
        build_sublayer(self.update, (None, self.num_frames * grid * grid * channels))
        if self.dynamic_gate:
            self.alpha = keras.layers.Dense(width, name="alpha")
            build_sublayer(self.alpha, (None, width))
        self.bn = _batch_norm(self.bn_epsilon, self.bn_momentum, "bn")
        build_sublayer(self.bn, (None, width))
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, tokens = inputs
        _, stacked, width, channels = x.shape
        window = (stacked // self.num_frames // self.grid_size, width // self.grid_size)
        if window != (1, 1):
            x = tf.nn.avg_pool2d(x, window, window, "VALID")
        pooled = self.fq(
            "pooled", tf.reshape(x, (-1, x.shape[1] * x.shape[2] * channels)), training
        )
        update = self.fq("update", self.update(pooled), training)
        if self.dynamic_gate:
            gate = self.fq("gate", 2.0 * tf.sigmoid(self.alpha(tokens)), training)
            update = self.fq("gated", update * gate, training)
        residual = self.fq("residual", tokens + update, training)
        return self.bn(residual, training=self.bn_training(training))

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_frames=self.num_frames,
            grid_size=self.grid_size,
            dynamic_gate=self.dynamic_gate,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
        )
        return config


@register
class TokenMLP(QuantizableLayer):
    """The Former of the Edge TPU form: an MLP over the flattened tokens, post-norm residual.

    `z = BN(z + W_2 relu6(W_1 z))`: static token mixing (the reference's "mlp" GlobalBlock mixes
    across tokens, then across channels; one map on the flat vector does both), through a
    bottleneck of `hidden_units` so that its weights stay small.

    Args:
      hidden_units: hidden width.
      bn_epsilon: batch-norm epsilon.
      bn_momentum: batch-norm momentum.

    Input shape: `(batch, token_width)`. Output shape: same.

    Example:
      >>> TokenMLP(8)(tf.ones((1, 12))).shape
      TensorShape([1, 12])
    """

    quant_points = ("hidden", "mixed", "residual")

    def __init__(
        self, hidden_units: int = 128, bn_epsilon: float = 1e-5, bn_momentum: float = 0.9, **kwargs
    ):
        super().__init__(**kwargs)
        self.hidden_units = hidden_units
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.fc1 = keras.layers.Dense(self.hidden_units, name="fc1")
        self.fc2 = keras.layers.Dense(width, name="fc2")
        build_sublayer(self.fc1, (None, width))
        build_sublayer(self.fc2, (None, self.hidden_units))
        self.bn = _batch_norm(self.bn_epsilon, self.bn_momentum, "bn")
        build_sublayer(self.bn, (None, width))
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        hidden = self.fq("hidden", tf.nn.relu6(self.fc1(inputs)), training)
        mixed = self.fq("mixed", self.fc2(hidden), training)
        residual = self.fq("residual", inputs + mixed, training)
        return self.bn(residual, training=self.bn_training(training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            hidden_units=self.hidden_units, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum
        )
        return config


@register
class GatedFormer2Mobile(QuantizableLayer):
    """Former->Mobile of the Edge TPU form: the tokens gate and shift every frame, cell by cell.

    `h = relu6(W_h z)`, then `x = x * 2 sigmoid(W_g h) + W_b h`, with one gate and one shift per
    frame, cell of a `grid_size x grid_size` grid of the frame, and channel, broadcast over the
    cell's positions by a nearest-neighbour resize of the stacked grid (each frame's cells tile
    exactly its rows). A sigmoid gate instead of a softmax over tokens: the reference's "mlp"
    Global2Local is a static map from tokens to positions, here at grid resolution.

    Args:
      num_frames: frames stacked in the feature map's height axis.
      hidden_units: width of `h`.
      grid_size: side of the grid per frame; must divide the frame's height and width.

    Input shape: `[(batch, num_frames * height, width, channels), (batch, token_width)]`.
    Output shape: `(batch, num_frames * height, width, channels)`.

    Example:
      >>> GatedFormer2Mobile(2, 4)([tf.ones((1, 8, 4, 8)), tf.ones((1, 12))]).shape
      TensorShape([1, 8, 4, 8])
    """

    quant_points = ("hidden", "gate", "shift", "gated")

    def __init__(self, num_frames: int = 1, hidden_units: int = 64, grid_size: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.hidden_units = hidden_units
        self.grid_size = grid_size

    def build(self, input_shape):
        stacked, frame_width, channels, width, grid = _bridge_shapes(self, input_shape)
        cells = self.num_frames * grid * grid * channels
        self.hidden = keras.layers.Dense(self.hidden_units, name="hidden")
        self.gate = keras.layers.Dense(cells, name="gate")
        self.shift = keras.layers.Dense(cells, name="shift")
        build_sublayer(self.hidden, (None, width))
        build_sublayer(self.gate, (None, self.hidden_units))
        build_sublayer(self.shift, (None, self.hidden_units))
        self.build_quant_points()
        super().build(input_shape)

    def _spread(self, values, stacked: int, width: int, channels: int):
        """`(batch, cells)` -> `(batch, stacked, width, channels)`, each cell over its positions."""
        grid = tf.reshape(values, (-1, self.num_frames * self.grid_size, self.grid_size, channels))
        if (stacked, width) == (grid.shape[1], grid.shape[2]):
            return grid
        return tf.image.resize(grid, (stacked, width), method="nearest")

    def call(self, inputs, training=None):
        x, tokens = inputs
        _, stacked, width, channels = x.shape
        hidden = self.fq("hidden", tf.nn.relu6(self.hidden(tokens)), training)
        gate = self.fq("gate", 2.0 * tf.sigmoid(self.gate(hidden)), training)
        shift = self.fq("shift", self.shift(hidden), training)
        gated = self.fq("gated", x * self._spread(gate, stacked, width, channels), training)
        return gated + self._spread(shift, stacked, width, channels)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_frames=self.num_frames, hidden_units=self.hidden_units, grid_size=self.grid_size
        )
        return config


@register
class StackedDynamicReLU(DynamicReLU):
    """`DynamicReLU` on frame-stacked features, its slopes from one token of the flat tokens.

    `max(a1 * x, a2 * x)` with per-channel slopes from token `token_index` (entries
    `[token_index * token_dim, (token_index + 1) * token_dim)`), broadcast over every frame and
    position: FULLY_CONNECTED, MUL, ADD and MAXIMUM, all Edge TPU ops.

    Args:
      token_dim: width of one token in the flat token vector.
      token_index, reduction, scale: as in `DynamicReLU`.

    Input shape: `[(batch, frames * height, width, channels), (batch, token_width)]`.
    Output shape: `(batch, frames * height, width, channels)`.

    Example:
      >>> StackedDynamicReLU(8)([tf.ones((1, 8, 4, 6)), tf.ones((1, 16))]).shape
      TensorShape([1, 8, 4, 6])
    """

    def __init__(self, token_dim: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.token_dim = token_dim

    def build(self, input_shape):
        feature_shape, token_shape = input_shape
        if (self.token_index + 1) * self.token_dim > int(token_shape[-1]):
            raise ValueError(
                f"{self.name}: token {self.token_index} of width {self.token_dim} is outside the "
                f"{token_shape[-1]} token entries."
            )
        super().build(
            [feature_shape, (None, int(token_shape[-1]) // self.token_dim, self.token_dim)]
        )

    def call(self, inputs, training=None):
        x, tokens = inputs
        channels, start = x.shape[-1], self.token_index * self.token_dim
        token = tokens[:, start : start + self.token_dim]
        theta = hard_sigmoid(self.fc2(tf.nn.relu(self.fc1(token))))
        theta = self.fq("slopes", theta, training)
        a1 = tf.reshape((theta[:, :channels] - 0.5) * self.scale + 1.0, (-1, 1, 1, channels))
        a2 = tf.reshape((theta[:, channels:] - 0.5) * self.scale, (-1, 1, 1, channels))
        return tf.maximum(x * a1, x * a2)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(token_dim=self.token_dim)
        return config


@register
class StackedPooledTokenConcat(QuantizableLayer):
    """The merge head's pooling on frame-stacked features: `concat(relu6(mean x), z_0, ...)`.

    Args:
      num_cls_tokens: how many leading tokens to append.
      token_dim: width of one token in the flat token vector.

    Input shape: `[(batch, frames * height, width, channels), (batch, token_width)]`.
    Output shape: `(batch, channels + num_cls_tokens * token_dim)`.

    Example:
      >>> StackedPooledTokenConcat(1, 6)([tf.ones((1, 8, 4, 8)), tf.ones((1, 12))]).shape
      TensorShape([1, 14])
    """

    quant_points = ("pooled",)

    def __init__(self, num_cls_tokens: int = 1, token_dim: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_cls_tokens = num_cls_tokens
        self.token_dim = token_dim

    def build(self, input_shape):
        self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, tokens = inputs
        pooled = self.fq("pooled", tf.reduce_mean(x, axis=(1, 2)), training)
        parts = [tf.nn.relu6(pooled)]
        if self.num_cls_tokens:
            parts.append(tokens[:, : self.num_cls_tokens * self.token_dim])
        return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

    def compute_output_shape(self, input_shape):
        feature_shape, _ = input_shape
        width = feature_shape[-1] + self.num_cls_tokens * self.token_dim
        return tf.TensorShape((feature_shape[0], width))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_cls_tokens=self.num_cls_tokens, token_dim=self.token_dim)
        return config


def _bridge_shapes(layer, input_shape) -> tuple[int, int, int, int, int]:
    """(stacked height, frame width, channels, token width, grid size) of a bridge's
    `(features, tokens)` inputs; the frames must tile into the layer's grid."""
    feature_shape, token_shape = input_shape
    stacked, frame_width, channels = (int(d) for d in feature_shape[1:])
    width, grid = int(token_shape[-1]), layer.grid_size
    frames = layer.num_frames
    if stacked % frames or (stacked // frames) % grid or frame_width % grid:
        raise ValueError(
            f"{layer.name}: {frames} frames of {stacked // frames}x{frame_width} do not tile "
            f"into a {grid}x{grid} grid."
        )
    return stacked, frame_width, channels, width, grid


__all__ = [
    "FlatTokens",
    "GatedFormer2Mobile",
    "PooledMobile2Former",
    "StackedConv",
    "StackedDynamicReLU",
    "StackedPooledTokenConcat",
    "StackedTemporalStack",
    "TokenMLP",
]
