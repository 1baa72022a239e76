"""Per-frame and (2+1)D convolutions of video tensors with Conv2D/DepthwiseConv2D only.

TFLite's CONV_3D is float-only and the Edge TPU has no Conv3D, so every kvid convolution is a
Conv2D or DepthwiseConv2D on a reshaped view of the `(batch, frames, height, width, channels)`
buffer: spatial kernels run on frames folded into the batch axis, temporal kernels run as `(k, 1)`
kernels on the time-major view `(batch, frames, height * width, channels)`.
"""

from __future__ import annotations

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer, build_sublayer, register

ACTIVATIONS = (None, "relu", "relu6", "hard_swish")


def apply_activation(x, activation: str | None):
    """The activations kvid convs fuse; hard-swish as x * relu6(x + 3) / 6 (TFLite HARD_SWISH)."""
    if activation is None:
        return x
    if activation == "relu":
        return tf.nn.relu(x)
    if activation == "relu6":
        return tf.nn.relu6(x)
    if activation == "hard_swish":
        return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)
    raise ValueError(f"Unknown activation {activation!r}; expected one of {ACTIVATIONS}.")


def symmetric_pad(x, pad_h: int, pad_w: int):
    """Zero-pads rows/columns on both sides, as PyTorch's `padding=k//2` does for any stride."""
    if pad_h == 0 and pad_w == 0:
        return x
    return tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])


def every_nth_frame(x, stride: int):
    """Frames 0, stride, 2 * stride, ... of a time-major `(batch, frames, positions, channels)`.

    A temporal stride is a stride-1 temporal conv followed by this, not a DepthwiseConv2D with
    strides `(s_t, 1)`: TensorFlow's depthwise kernel takes only equal strides on the CPU (unless
    oneDNN is on, which it is only on AVX-512 machines) and on the GPU. The frames are selected
    with a reshape and a stride-1 slice, which XNNPACK runs, rather than a strided slice.
    """
    if stride == 1:
        return x
    _, frames, positions, channels = x.shape
    kept = (frames - 1) // stride + 1
    if kept * stride > frames:  # pad the tail with frames that are never selected
        x = tf.pad(x, [[0, 0], [0, kept * stride - frames], [0, 0], [0, 0]])
    x = tf.reshape(x, (-1, kept, stride * positions, channels))
    return x[:, :, :positions]


def _batch_norm(epsilon: float, momentum: float, name: str):
    return keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name=name)


@register
class FrameConv(QuantizableLayer):
    """A 2D convolution applied to every frame, with optional batch norm and activation.

    Frames are folded into the batch axis (exact for any kernel; no Conv3D). Padding is symmetric
    `kernel_size // 2` for every stride, which is what PyTorch models do (Keras "same" pads
    asymmetrically for stride 2).

    Args:
      filters: output channels; ignored (None) for depthwise convolutions.
      kernel_size: spatial kernel size.
      strides: spatial stride.
      groups: groups of a grouped convolution (grouped pointwise convs of Mobile-Former 26m).
      depthwise: a depthwise convolution with `depth_multiplier` outputs per input channel.
      depth_multiplier: see `depthwise`.
      use_bias: add a bias (usually off before batch norm).
      batch_norm: follow the convolution by batch normalization.
      activation: None, "relu", "relu6" or "hard_swish".
      bn_epsilon: batch-norm epsilon (PyTorch default 1e-5).
      bn_momentum: batch-norm moving-average momentum (PyTorch's 0.1 is Keras' 0.9).
      kernel_initializer: the convolution kernel's initializer (default: Keras' glorot uniform).

    Input shape: `(batch, frames, height, width, channels)`.
    Output shape: `(batch, frames, height / strides, width / strides, filters)`.

    Example:
      >>> FrameConv(16, 3, strides=2)(tf.zeros((1, 4, 32, 32, 3))).shape
      TensorShape([1, 4, 16, 16, 16])
    """

    def __init__(
        self,
        filters: int | None = None,
        kernel_size: int = 1,
        strides: int = 1,
        groups: int = 1,
        depthwise: bool = False,
        depth_multiplier: int = 1,
        use_bias: bool = False,
        batch_norm: bool = True,
        activation: str | None = None,
        bn_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self.name}: unknown activation {activation!r}; use {ACTIVATIONS}.")
        if not depthwise and not filters:
            raise ValueError(f"{self.name}: a non-depthwise FrameConv needs `filters`.")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.groups = groups
        self.depthwise = depthwise
        self.depth_multiplier = depth_multiplier
        self.use_bias = use_bias
        self.batch_norm = batch_norm
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._padding = "same" if strides == 1 else "valid"
        if depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                kernel_size,
                strides=strides,
                padding=self._padding,
                depth_multiplier=depth_multiplier,
                use_bias=use_bias,
                depthwise_initializer=self.kernel_initializer,
                name="conv",
            )
        else:
            self.conv = keras.layers.Conv2D(
                filters,
                kernel_size,
                strides=strides,
                padding=self._padding,
                groups=groups,
                use_bias=use_bias,
                kernel_initializer=self.kernel_initializer,
                name="conv",
            )
        self.bn = _batch_norm(bn_epsilon, bn_momentum, "bn") if batch_norm else None

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        if not self.depthwise and channels % self.groups:
            raise ValueError(f"{self.name}: {channels} input channels not divisible by groups.")
        build_sublayer(self.conv, (None, height, width, channels))
        out_channels = channels * self.depth_multiplier if self.depthwise else self.filters
        if self.bn is not None:
            build_sublayer(self.bn, (None, None, None, out_channels))
        super().build(input_shape)

    def call(self, inputs, training=None):
        _, frames, height, width, channels = inputs.shape
        x = tf.reshape(inputs, (-1, height, width, channels))  # frames folded into batch
        if self._padding == "valid":
            pad = self.kernel_size // 2
            x = symmetric_pad(x, pad, pad)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=self.bn_training(training))
        x = apply_activation(x, self.activation)
        return tf.reshape(x, (-1, frames, *x.shape[1:]))

    def compute_output_shape(self, input_shape):
        batch, frames, height, width, channels = input_shape
        out_h = (height + 2 * (self.kernel_size // 2) - self.kernel_size) // self.strides + 1
        out_w = (width + 2 * (self.kernel_size // 2) - self.kernel_size) // self.strides + 1
        out_c = channels * self.depth_multiplier if self.depthwise else self.filters
        return tf.TensorShape((batch, frames, out_h, out_w, out_c))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            groups=self.groups,
            depthwise=self.depthwise,
            depth_multiplier=self.depth_multiplier,
            use_bias=self.use_bias,
            batch_norm=self.batch_norm,
            activation=self.activation,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


@register
class Conv2Plus1D(QuantizableLayer):
    """(2+1)D depthwise convolution: spatial depthwise per frame, then temporal depthwise.

    A `k_t x k x k` depthwise Conv3D whose kernel factorises as `K[t, i, j, c] = Kt[t, c] *
    Ks[i, j, c]` is exactly this layer (without the batch norm in between: there is none). The
    temporal kernel is a `(k_t, 1)` DepthwiseConv2D on the time-major view `(batch, frames,
    height * width, channels)`, zero-padded by `k_t // 2` frames on each side. With `k_t = 1` and
    temporal stride 1 it is a plain per-frame depthwise convolution (the image model).

    Args:
      kernel_size: `(k_t, k, k)` or an int `k` for `(1, k, k)`.
      strides: `(s_t, s, s)` or an int `s` for `(1, s, s)`.
      depth_multiplier: output channels per input channel of the spatial convolution.
      batch_norm: batch normalization after the temporal convolution.
      activation: None, "relu", "relu6" or "hard_swish".
      bn_epsilon: batch-norm epsilon.
      bn_momentum: batch-norm momentum.

    Input shape: `(batch, frames, height, width, channels)`.
    Output shape: `(batch, frames / s_t, height / s, width / s, channels * depth_multiplier)`.

    Example:
      >>> Conv2Plus1D((3, 3, 3), strides=(2, 2, 2))(tf.zeros((1, 8, 16, 16, 8))).shape
      TensorShape([1, 4, 8, 8, 8])
    """

    quant_points = ("spatial",)

    def __init__(
        self,
        kernel_size=3,
        strides=1,
        depth_multiplier: int = 1,
        batch_norm: bool = True,
        activation: str | None = None,
        bn_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        kernel_size = as_triple(kernel_size)
        strides = as_triple(strides)
        if kernel_size[1] != kernel_size[2] or strides[1] != strides[2]:
            raise ValueError(f"{self.name}: spatial kernels and strides must be square.")
        self.kernel_size = kernel_size
        self.strides = strides
        self.depth_multiplier = depth_multiplier
        self.batch_norm = batch_norm
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        k_t, k, _ = kernel_size
        s_t, s, _ = strides
        self.spatial = keras.layers.DepthwiseConv2D(
            k,
            strides=s,
            padding="same" if s == 1 else "valid",
            depth_multiplier=depth_multiplier,
            use_bias=False,
            name="spatial",
        )
        self.has_temporal = k_t > 1 or s_t > 1
        self.temporal = (
            keras.layers.DepthwiseConv2D((k_t, 1), padding="valid", use_bias=False, name="temporal")
            if self.has_temporal
            else None
        )
        self.bn = _batch_norm(bn_epsilon, bn_momentum, "bn") if batch_norm else None

    def build(self, input_shape):
        _, frames, height, width, channels = input_shape
        out_channels = channels * self.depth_multiplier
        build_sublayer(self.spatial, (None, height, width, channels))
        if self.temporal is not None:
            build_sublayer(self.temporal, (None, frames, None, out_channels))
        if self.bn is not None:
            build_sublayer(self.bn, (None, None, None, out_channels))
        if self.temporal is not None:
            self.build_quant_points()
        super().build(input_shape)

    def call(self, inputs, training=None):
        _, frames, height, width, channels = inputs.shape
        k_t, k, _ = self.kernel_size
        x = tf.reshape(inputs, (-1, height, width, channels))
        if self.strides[1] > 1:
            x = symmetric_pad(x, k // 2, k // 2)
        x = self.spatial(x)
        _, out_h, out_w, out_c = x.shape
        # time-major view: a (k_t, 1) kernel on (frames, height * width) is a temporal conv
        x = tf.reshape(x, (-1, frames, out_h * out_w, out_c))
        if self.temporal is not None:
            x = self.fq("spatial", x, training)
            x = symmetric_pad(x, k_t // 2, 0)
            x = every_nth_frame(self.temporal(x), self.strides[0])
        if self.bn is not None:
            x = self.bn(x, training=self.bn_training(training))
        x = apply_activation(x, self.activation)
        return tf.reshape(x, (-1, x.shape[1], out_h, out_w, out_c))

    def compute_output_shape(self, input_shape):
        batch, frames, height, width, channels = input_shape
        (k_t, k, _), (s_t, s, _) = self.kernel_size, self.strides
        return tf.TensorShape(
            (
                batch,
                (frames + 2 * (k_t // 2) - k_t) // s_t + 1,
                (height + 2 * (k // 2) - k) // s + 1,
                (width + 2 * (k // 2) - k) // s + 1,
                channels * self.depth_multiplier,
            )
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            kernel_size=list(self.kernel_size),
            strides=list(self.strides),
            depth_multiplier=self.depth_multiplier,
            batch_norm=self.batch_norm,
            activation=self.activation,
            bn_epsilon=self.bn_epsilon,
            bn_momentum=self.bn_momentum,
        )
        return config


def as_triple(value) -> tuple[int, int, int]:
    """A (time, height, width) size from an int (a 1 x n x n spatial size) or three sizes."""
    if isinstance(value, int):
        return (1, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or min(value) < 1:
        raise ValueError(f"Expected an int or 3 positive sizes (time, height, width), got {value}.")
    return value
