"""Positional gating units of PosMLP-Video: static relative-position token mixing inside a gate.

PosMLP-Video (Hao, Zhou et al., IJCV 2024, arXiv 2407.02934; code `zhouds1918/PosMLP_Video`)
mixes tokens with learned relative-position biases instead of attention. Every unit computes

    [U, V] = act(norm(X) W1),   U' = P U + beta,   out = (U' * V) W2

over non-overlapping local windows of `t x h x w` tokens (frames x rows x columns). The mixing
matrix of channel `c` is `P_g[m, n] = table[index(m, n), g]` with the interleaved channel group
`g = c mod gamma` (the reference's einops `(v s)` split), an `((2t-1)(2h-1)(2w-1), gamma)` table and
a Swin-style relative index; `beta` is one bias per output token of the window. There is no
softmax: `P` is the raw table.

The mixing is input-independent, so it has two exactly equal forms that share the same weights:

- `form="matmul"` (training form): windows are cut out with reshapes and at most 6-D transposes
  and mixed by a constant-matrix batch matmul `(gamma, N, N) x (batch, gamma, N, C/gamma)`. It
  costs `N` MACs per token and channel, the reference's count.
- `form="depthwise"` (deploy form): the mixing is a depthwise convolution with kernel
  `(2t-1, 2h-1, 2w-1)` equal to the table flipped in every axis (zero padding supplies the window
  edges). Temporal mixing is a `(2t-1, 1)` kernel on the time-major view, spatial mixing a
  `(2h-1, 2w-1)` kernel per frame and window, joint mixing a sum of `2t-1` frame-shifted spatial
  depthwise convolutions. About `(2h-1)(2w-1)/(hw)` times the MACs of the training form, but only
  DEPTHWISE_CONV_2D, which the Edge TPU runs.

The table is turned into `P` or the kernel by a gather of constant indices that the TFLite
converter folds away: no GATHER is left at run time. `layout="sliced"` cuts every frame/window out
of the frame-stacked tensor with slices instead of folding them into the batch axis, so no tensor
has more than 3 dimensions above 1 at batch 1 (the Edge TPU rank rule).

Tensors are frame-stacked, `(batch, frames * height, width, channels)`: the Edge TPU allows only 3
non-unit dimensions per tensor, and a 1x1 convolution on this view is exact.
"""

from __future__ import annotations

import math

import numpy as np

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register
from kvid.layers.layer_norm import LayerNorm

FORMS = ("matmul", "depthwise")
LAYOUTS = ("folded", "sliced")
NORMS = ("layer", "batch")
GATE_ACTIVATIONS = ("gelu", "relu6")


# ------------------------------------------------------------------------------------------------
# Relative-position tables (numpy: these are constants of the graph)
# ------------------------------------------------------------------------------------------------
def table_shape(window) -> tuple[int, int, int]:
    """Relative offsets per axis of a `(t, h, w)` window: `(2t-1, 2h-1, 2w-1)`."""
    return tuple(2 * int(k) - 1 for k in window)


def relative_position_index(window) -> np.ndarray:
    """`(N, N)` table row of every (output m, input n) token pair of a `(t, h, w)` window.

    Tokens are numbered row-major over `(t, h, w)`; the row is
    `((dt + t-1)(2h-1) + dh + h-1)(2w-1) + dw + w-1` with `(dt, dh, dw) = pos(m) - pos(n)`. With
    `t = 1` this is Swin's spatial index, with `h = w = 1` the temporal index `dt + t - 1`: the
    reference's `window_relative_position_index` buffers.
    """
    t, h, w = (int(k) for k in window)
    grid = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack(grid).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    return ((rel[0] + t - 1) * (2 * h - 1) + rel[1] + h - 1) * (2 * w - 1) + rel[2] + w - 1


def mixing_matrices(table: np.ndarray, window) -> np.ndarray:
    """`(gamma, N, N)` mixing matrices `P_g[m, n] = table[index(m, n), g]` (training form)."""
    table = np.asarray(table)
    return np.transpose(table[relative_position_index(window)], (2, 0, 1))


def depthwise_kernel(table: np.ndarray, window, channels: int) -> np.ndarray:
    """`(2t-1, 2h-1, 2w-1, channels)` depthwise kernel equal to the mixing (deploy form).

    Channel `c` uses group `c mod gamma`; the table is flipped in every axis because a convolution
    correlates (`out[m] = sum_n table[pos(m) - pos(n)] u[n]`).
    """
    table = np.asarray(table)
    gamma = table.shape[1]
    kernel = table.reshape(*table_shape(window), gamma)[::-1, ::-1, ::-1]
    return np.ascontiguousarray(kernel[..., np.arange(channels) % gamma])


def table_from_depthwise(kernel: np.ndarray, gamma: int) -> np.ndarray:
    """Inverse of `depthwise_kernel`; the kernel must tie channels `c` and `c + gamma`."""
    kernel = np.asarray(kernel)
    channels = kernel.shape[-1]
    if channels % gamma:
        raise ValueError(f"{channels} kernel channels are not a multiple of gamma={gamma}.")
    grouped = kernel.reshape(*kernel.shape[:-1], channels // gamma, gamma)
    if not np.allclose(grouped, grouped[..., :1, :]):
        raise ValueError(
            "The depthwise kernel does not tie the channels of each group c mod gamma."
        )
    table = grouped[..., 0, :][::-1, ::-1, ::-1]
    return np.ascontiguousarray(table.reshape(-1, gamma))


def _shift_frames(x, offset: int):
    """`out[:, i] = x[:, i - offset]` along axis 1, zero where `i - offset` is outside."""
    if offset == 0:
        return x
    length = x.shape[1]
    paddings = [[0, 0]] * x.shape.rank
    if offset > 0:
        paddings[1] = [offset, 0]
        return tf.pad(x, paddings)[:, :length]
    paddings[1] = [0, -offset]
    return tf.pad(x, paddings)[:, -offset:]


# ------------------------------------------------------------------------------------------------
# The gating units
# ------------------------------------------------------------------------------------------------
class PositionalGating(QuantizableLayer):
    """Base of PoSGU, PoTGU and PoSTGU: one gated positional-mixing branch (see the module doc).

    Subclasses set the window `(t, h, w)` through `window_for(frames, height, width)`.

    Args:
      num_frames: frames stacked in the input's height axis.
      gamma: channel groups; channel `c` uses mixing matrix `c mod gamma`.
      form: "matmul" (training form) or "depthwise" (deploy form); both use the same weights.
      layout: "folded" (frames/windows folded into the batch axis) or "sliced" (cut out with
        slices; at most 3 dimensions above 1 at batch 1, depthwise form only).
      norm: "layer" (the reference's LayerNorm) or "batch" (BatchNorm, for the Edge TPU).
      activation: "gelu" (reference, exact erf form) or "relu6" (Edge TPU).
      epsilon: normalization epsilon (PyTorch's 1e-5).
      bn_momentum: batch-norm moving-average momentum (norm="batch").

    Input shape: `(batch, num_frames * height, width, channels)`. Output shape: same.
    """

    def __init__(
        self,
        num_frames: int,
        gamma: int = 8,
        form: str = "matmul",
        layout: str = "folded",
        norm: str = "layer",
        activation: str = "gelu",
        epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for field, value, valid in (
            ("form", form, FORMS),
            ("layout", layout, LAYOUTS),
            ("norm", norm, NORMS),
            ("activation", activation, GATE_ACTIVATIONS),
        ):
            if value not in valid:
                raise ValueError(f"{self.name}: {field}={value!r} not in {valid}.")
        if form == "matmul" and layout == "sliced":
            raise ValueError(f"{self.name}: layout='sliced' needs form='depthwise'.")
        self.num_frames = int(num_frames)
        self.gamma = int(gamma)
        self.form = form
        self.layout = layout
        self.norm = norm
        self.activation = activation
        self.epsilon = epsilon
        self.bn_momentum = bn_momentum

    def window_for(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        raise NotImplementedError

    @property
    def symmetric_points(self) -> tuple[str, ...]:
        # u is the right-hand operand of the matmul form's mixing (constant matrices on the left)
        return ("u",) if self.form == "matmul" else ()

    @property
    def quant_points(self) -> tuple[str, ...]:
        points = ("u", "v", "mixed", "biased", "gated")
        if self.activation == "gelu":
            points += ("u_linear", "v_linear")
        if self.norm == "batch":
            points += ("normed",)
        return points

    def build(self, input_shape):
        _, stacked, width, channels = (int(d) if d is not None else None for d in input_shape)
        frames = self.num_frames
        if stacked % frames:
            raise ValueError(f"{self.name}: height axis {stacked} is not num_frames={frames} high.")
        height = stacked // frames
        window = tuple(int(k) for k in self.window_for(frames, height, width))
        for axis, size, k in zip(
            ("num_frames", "height", "width"), (frames, height, width), window
        ):
            if k < 1 or size % k:
                raise ValueError(f"{self.name}: window {window} does not tile {axis}={size}.")
        if channels % self.gamma:
            raise ValueError(
                f"{self.name}: {channels} channels not divisible by gamma={self.gamma}."
            )
        t, h, w = window
        if self.layout == "sliced" and t not in (1, frames):
            raise ValueError(f"{self.name}: layout='sliced' needs a temporal window 1 or the clip.")
        if self.layout == "sliced" and t > 1 and h * w > 1:
            raise ValueError(f"{self.name}: joint spatio-temporal mixing needs layout='folded'.")
        self.window = window
        self.grid = (frames, height, width)
        self.channels = channels
        if self.norm == "layer":
            self.norm_layer = LayerNorm(self.epsilon, quantized=self.quantized, name="norm")
        else:
            self.norm_layer = keras.layers.BatchNormalization(
                epsilon=self.epsilon, momentum=self.bn_momentum, name="norm"
            )
        build_sublayer(self.norm_layer, (None, None, None, channels))
        self.fc1_u = keras.layers.Conv2D(channels, 1, name="fc1_u")
        self.fc1_v = keras.layers.Conv2D(channels, 1, name="fc1_v")
        self.fc2 = keras.layers.Conv2D(channels, 1, name="fc2")
        for layer in (self.fc1_u, self.fc1_v, self.fc2):
            build_sublayer(layer, (None, None, None, channels))
        self.table = self.add_weight(
            name="relative_position_bias_table",
            shape=(math.prod(table_shape(window)), self.gamma),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.token_bias = self.add_weight(
            name="token_bias", shape=(math.prod(window),), initializer="zeros"
        )
        self._index = relative_position_index(window)
        self.build_quant_points()
        super().build(input_shape)

    # -- constants built from the table ----------------------------------------------------------
    # Each is ONE gather of constant indices from a weight: the converter folds it into a constant.
    # A chain (gather, reshape, reverse, slice) would be quantized and run op by op at run time.
    def _gather_table(self, rows: np.ndarray, groups: np.ndarray):
        # read first: the converter cannot freeze a ResourceGatherNd
        table = tf.convert_to_tensor(self.table)
        return tf.gather_nd(table, np.stack(np.broadcast_arrays(rows, groups), axis=-1))

    def mixing_matrices(self):
        """`(gamma, N, N)` matrices of the training form."""
        groups = np.arange(self.gamma)[:, None, None]
        return self._gather_table(self._index[None], groups)

    def depthwise_kernel(self, frame_offset: int | None = None):
        """Deploy-form kernel: `(2t-1, 2h-1, 2w-1, channels)` (channel c: group c mod gamma).

        With `frame_offset` (an index of the first axis) one spatial `(2h-1, 2w-1, channels, 1)`
        slice, with `frame_offset=-1` the temporal `(2t-1, 1, channels, 1)` kernel (`h = w = 1`),
        both in `tf.nn.depthwise_conv2d` layout.
        """
        shape = table_shape(self.window)
        rows = np.arange(math.prod(shape)).reshape(shape)[::-1, ::-1, ::-1]  # flipped: correlation
        groups = np.arange(self.channels) % self.gamma
        if frame_offset is None:
            return self._gather_table(rows[..., None], groups)
        rows = rows[:, 0] if frame_offset == -1 else rows[frame_offset]
        return self._gather_table(rows[:, :, None, None], groups[:, None])

    def bias_map(self):
        """Token bias tiled over the frame-stacked grid: `(frames * height, width, 1)`."""
        (t, h, w), (frames, height, width) = self.window, self.grid
        tokens = np.arange(t * h * w).reshape(t, h, w)
        tokens = np.tile(tokens, (frames // t, height // h, width // w))
        return tf.gather(self.token_bias, tokens.reshape(frames * height, width, 1))

    # -- mixing ----------------------------------------------------------------------------------
    def _partition(self, x):
        """(batch, T*H, W, C) -> (batch * windows, t, h, w * C), window-major (<= 6-D transpose)."""
        (t, h, w), (_, height, width) = self.window, self.grid
        nh, nw, c = height // h, width // w, self.channels
        x = tf.reshape(x, (-1, t, nh, h, nw, w * c))
        if nh > 1 or nw > 1:
            x = tf.transpose(x, (0, 2, 4, 1, 3, 5))
        return tf.reshape(x, (-1, t, h, w * c))

    def _unpartition(self, x):
        (t, h, w), (frames, height, width) = self.window, self.grid
        nh, nw, c = height // h, width // w, self.channels
        x = tf.reshape(x, (-1, nh, nw, t, h, w * c))
        if nh > 1 or nw > 1:
            x = tf.transpose(x, (0, 3, 1, 4, 2, 5))
        return tf.reshape(x, (-1, frames * height, width, c))

    def _mix_matmul(self, u):
        n, c, s = math.prod(self.window), self.channels, self.gamma
        x = tf.reshape(self._partition(u), (-1, n, c // s, s))
        x = tf.transpose(x, (0, 3, 1, 2))  # (windows, gamma, N, C / gamma)
        x = tf.matmul(self.mixing_matrices(), x)  # constant (gamma, N, N), broadcast over windows
        x = tf.transpose(x, (0, 2, 3, 1))
        return self._unpartition(tf.reshape(x, (-1, *self.window[:2], self.window[2] * c)))

    def _depthwise(self, x, kernel):
        return tf.nn.depthwise_conv2d(x, kernel, (1, 1, 1, 1), "SAME")

    def _mix_depthwise(self, u):
        (t, h, w), (frames, height, width) = self.window, self.grid
        c = self.channels
        if h == 1 and w == 1 and t > 1:  # temporal: a (2t-1, 1) kernel on the time-major view
            x = tf.reshape(u, (-1, t, height * width, c))
            x = self._depthwise(x, self.depthwise_kernel(frame_offset=-1))
            return tf.reshape(x, (-1, frames * height, width, c))
        if t == 1 and self.layout == "sliced":
            kernel = self.depthwise_kernel(frame_offset=0)
            rows = []
            for top in range(0, frames * height, h):
                cols = [
                    self._depthwise(u[:, top : top + h, left : left + w], kernel)
                    for left in range(0, width, w)
                ]
                rows.append(tf.concat(cols, axis=2) if len(cols) > 1 else cols[0])
            return tf.concat(rows, axis=1) if len(rows) > 1 else rows[0]
        windows = tf.reshape(self._partition(u), (-1, h, w, c))  # every frame of every window
        if t == 1:
            return self._unpartition(self._depthwise(windows, self.depthwise_kernel(0)))
        # joint: out[tau] = sum_d spatial_d(x[tau - d]), one spatial kernel per frame offset d
        mixed = None
        for d in range(-(t - 1), t):
            y = self._depthwise(windows, self.depthwise_kernel(t - 1 - d))
            y = tf.reshape(y, (-1, t, h, w * c))
            y = _shift_frames(y, d)
            mixed = y if mixed is None else mixed + y
        return self._unpartition(mixed)

    def call(self, inputs, training=None):
        if self.norm == "layer":
            x = self.norm_layer(inputs, training=training)
        else:
            x = self.norm_layer(inputs, training=self.bn_training(training))
            x = self.fq("normed", x, training)
        u, v = self.fc1_u(x), self.fc1_v(x)
        if self.activation == "gelu":
            u = tf.nn.gelu(self.fq("u_linear", u, training), approximate=False)
            v = tf.nn.gelu(self.fq("v_linear", v, training), approximate=False)
        else:
            u, v = tf.nn.relu6(u), tf.nn.relu6(v)
        u, v = self.fq("u", u, training), self.fq("v", v, training)
        mix = self._mix_matmul if self.form == "matmul" else self._mix_depthwise
        mixed = self.fq("mixed", mix(u), training)
        mixed = self.fq("biased", mixed + self.bias_map(), training)
        gated = self.fq("gated", mixed * v, training)
        return self.fc2(gated)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_frames=self.num_frames,
            gamma=self.gamma,
            form=self.form,
            layout=self.layout,
            norm=self.norm,
            activation=self.activation,
            epsilon=self.epsilon,
            bn_momentum=self.bn_momentum,
        )
        return config


@register
class PoSGU(PositionalGating):
    """Spatial positional gating unit: mixing inside `w x w` windows of every frame.

    The reference's `PosMLPLayer` + `PoSGU` + `LearnedPosMap` (spatial branch of each block).

    Args:
      num_frames: frames stacked in the input's height axis.
      window_size: spatial window `w` (must tile height and width); None: the whole frame.
      **kwargs: `PositionalGating` arguments (gamma, form, layout, norm, activation, ...).

    Input shape: `(batch, num_frames * height, width, channels)`. Output shape: same.

    Example:
      >>> PoSGU(num_frames=4, window_size=4, gamma=2)(tf.zeros((1, 4 * 8, 8, 8))).shape
      TensorShape([1, 32, 8, 8])
    """

    def __init__(self, num_frames: int, window_size: int | None = None, **kwargs):
        super().__init__(num_frames, **kwargs)
        self.window_size = window_size

    def window_for(self, frames, height, width):
        if self.window_size is None:
            return (1, height, width)
        return (1, self.window_size, self.window_size)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(window_size=self.window_size)
        return config


@register
class PoTGU(PositionalGating):
    """Temporal positional gating unit: mixing across frames at every spatial position.

    The reference's `PosMLPLayerT` + `PoSGUT` + `LearnedPosMapT`, which mixes the whole clip
    (its `WIN_SIZE_T` must equal the number of frames).

    Args:
      num_frames: frames stacked in the input's height axis.
      temporal_window: frames per temporal window; None: the whole clip (the reference).
      **kwargs: `PositionalGating` arguments.

    Input shape: `(batch, num_frames * height, width, channels)`. Output shape: same.

    Example:
      >>> PoTGU(num_frames=4, gamma=2)(tf.zeros((1, 4 * 8, 8, 8))).shape
      TensorShape([1, 32, 8, 8])
    """

    def __init__(self, num_frames: int, temporal_window: int | None = None, **kwargs):
        super().__init__(num_frames, **kwargs)
        self.temporal_window = temporal_window

    def window_for(self, frames, height, width):
        return (self.temporal_window or frames, 1, 1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(temporal_window=self.temporal_window)
        return config


@register
class PoSTGU(PositionalGating):
    """Spatio-temporal positional gating unit: joint mixing inside `t x w x w` windows.

    Not in the released code. Read from the paper's definition: PoSGU's relative-position mixing
    extended to a 3-D window, one `((2t-1)(2w-1)^2, gamma)` table indexed by the (time, row,
    column) offset, the same interleaved groups and one bias per output token of the window.

    Args:
      num_frames: frames stacked in the input's height axis.
      temporal_window: frames per window `t`; None: the whole clip.
      window_size: spatial window `w`; None: the whole frame.
      **kwargs: `PositionalGating` arguments (layout must be "folded").

    Input shape: `(batch, num_frames * height, width, channels)`. Output shape: same.

    Example:
      >>> PoSTGU(4, temporal_window=2, window_size=4, gamma=2)(tf.zeros((1, 32, 8, 8))).shape
      TensorShape([1, 32, 8, 8])
    """

    def __init__(
        self,
        num_frames: int,
        temporal_window: int | None = None,
        window_size: int | None = None,
        **kwargs,
    ):
        super().__init__(num_frames, **kwargs)
        self.temporal_window = temporal_window
        self.window_size = window_size

    def window_for(self, frames, height, width):
        t = self.temporal_window or frames
        if self.window_size is None:
            return (t, height, width)
        return (t, self.window_size, self.window_size)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(temporal_window=self.temporal_window, window_size=self.window_size)
        return config


@register
class PatchMerge(QuantizableLayer):
    """Per-frame patch embedding on the frame-stacked view: conv with kernel = stride, BN, act.

    A kernel equal to its stride never reads across a frame boundary when the frame height is
    divisible by the stride, so the frame-stacked tensor is convolved as is (no batch folding, at
    most 3 dimensions above 1 at batch 1: the Edge TPU's stem and downsampling).

    Args:
      filters: output channels.
      patch_size: kernel size and stride.
      num_frames: frames stacked in the input's height axis.
      batch_norm: batch normalization after the convolution.
      activation: None or "relu6".
      bn_epsilon: batch-norm epsilon.
      bn_momentum: batch-norm momentum.

    Input shape: `(batch, num_frames * height, width, channels)`.
    Output shape: `(batch, num_frames * height / patch_size, width / patch_size, filters)`.

    Example:
      >>> PatchMerge(16, 2, num_frames=4)(tf.zeros((1, 4 * 8, 8, 3))).shape
      TensorShape([1, 16, 4, 16])
    """

    def __init__(
        self,
        filters: int,
        patch_size: int,
        num_frames: int,
        batch_norm: bool = True,
        activation: str | None = None,
        bn_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in (None, "relu6"):
            raise ValueError(f"{self.name}: activation must be None or 'relu6'.")
        self.filters = filters
        self.patch_size = patch_size
        self.num_frames = num_frames
        self.batch_norm = batch_norm
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.conv = keras.layers.Conv2D(
            filters, patch_size, strides=patch_size, use_bias=not batch_norm, name="conv"
        )
        self.bn = (
            keras.layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name="bn")
            if batch_norm
            else None
        )

    def build(self, input_shape):
        stacked, width, channels = (int(d) for d in input_shape[1:])
        height = stacked // self.num_frames
        if stacked % self.num_frames or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{self.name}: frames of {height}x{width} do not tile into patches of "
                f"{self.patch_size}."
            )
        build_sublayer(self.conv, (None, None, None, channels))
        if self.bn is not None:
            build_sublayer(self.bn, (None, None, None, self.filters))
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.conv(inputs)
        if self.bn is not None:
            x = self.bn(x, training=self.bn_training(training))
        return tf.nn.relu6(x) if self.activation == "relu6" else x

    def compute_output_shape(self, input_shape):
        batch, stacked, width, _ = input_shape
        p = self.patch_size
        return tf.TensorShape((batch, stacked // p, width // p, self.filters))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            patch_size=self.patch_size,
            num_frames=self.num_frames,
            batch_norm=self.batch_norm,
            activation=self.activation,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
        )
        return config
