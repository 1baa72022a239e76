"""Shared machinery of kvid layers: serialization registration and in-layer fake quantization.

TFMOT's QuantizeConfig reaches only a layer's weights, activations and outputs. A kvid layer that
multiplies two activations, takes a softmax or adds two branches inside `call` requantizes there in
the int8 TFLite graph, so in QAT mode (`quantized=True`) it inserts its own fake-quant nodes at
exactly those points, with range variables of its own.

A point that feeds the right-hand operand of a matmul of two activations is *symmetric*: its range
is `[-m, m]` with a narrow range (levels -127..127), so the converted int8 tensor has zero point 0.
XNNPACK takes an int8 BATCH_MATMUL of two activations only then (LiteRT's
`xnnpack_delegate.cc`); any other zero point leaves it to the builtin reference kernel.
"""

from __future__ import annotations

from kvid.backend import keras, tf

# EMA decay of the activation ranges during QAT; the first training batch sets them directly so
# short fine-tuning runs do not start from an arbitrary range.
RANGE_EMA_DECAY = 0.99
# TFLite's int8 SOFTMAX output is fixed at scale 1/256, zero point -128: [0, 255/256].
SOFTMAX_RANGE = (0.0, 255.0 / 256.0)


def register(cls):
    """Registers a kvid layer once, under the `kvid` package name."""
    return keras.utils.register_keras_serializable(package="kvid")(cls)


def build_sublayer(layer: keras.layers.Layer, input_shape) -> None:
    """Builds a sub-layer under its own name scope, so its weights are `parent/sub/kernel`."""
    with tf.name_scope(layer.name):
        layer.build(input_shape)


def create_range_variables(layer: keras.layers.Layer, name: str) -> dict[str, tf.Variable]:
    """Creates the min/max (and initialised flag) variables of one quantization point.

    Under a distribution strategy every replica computes the same new range (the batch range is
    reduced over all replicas first, see `fake_quant_with_range`), so the first replica's value is
    the one kept.
    """
    kwargs = dict(
        shape=(),
        trainable=False,
        initializer="zeros",
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
    return {
        "min": layer.add_weight(name=f"{name}_min", **kwargs),
        "max": layer.add_weight(name=f"{name}_max", **kwargs),
        "initialized": layer.add_weight(name=f"{name}_initialized", **kwargs),
    }


def fake_quant_with_range(
    x, variables: dict[str, tf.Variable], training, symmetric: bool = False
) -> tf.Tensor:
    """Fake-quantizes `x` to 8 bits with an EMA-tracked range (updated only when training).

    The range always contains 0 (int8 zero points must be exact). Under a distribution strategy
    the batch range is the range of the global batch (gathered from all replicas), so training on
    several replicas tracks the same range as one device with the same global batch.

    With `symmetric`, the tracked range is `[-m, m]` (m the larger magnitude of the batch range)
    and the fake quant uses the narrow range -127..127: the TFLite converter then gives the tensor
    zero point 0 exactly, the only one XNNPACK takes for the right-hand operand of an int8
    BATCH_MATMUL of two activations. A one-signed tensor loses one bit of its 8.
    """
    if training:
        batch_min = tf.minimum(tf.reduce_min(x), 0.0)
        batch_max = tf.maximum(tf.reduce_max(x), 0.0)
        batch_min, batch_max = _global_range(batch_min, batch_max)
        if symmetric:
            batch_max = tf.maximum(batch_max, -batch_min)
            batch_min = -batch_max
        init = variables["initialized"]
        decay = RANGE_EMA_DECAY * init  # 0 on the first batch: take the batch range as is
        new_min = decay * variables["min"] + (1.0 - decay) * batch_min
        new_max = decay * variables["max"] + (1.0 - decay) * batch_max
        if symmetric:  # symmetric at once even from a stored range that is not (older weights)
            new_max = tf.maximum(new_max, -new_min)
            new_min = -new_max
        updates = [
            variables["min"].assign(new_min),
            variables["max"].assign(new_max),
            init.assign(1.0),
        ]
        with tf.control_dependencies(updates):
            return tf.quantization.fake_quant_with_min_max_vars(
                x, new_min, new_max, num_bits=8, narrow_range=symmetric
            )
    # A symmetric point's variables hold -m and m exactly after any training step, and are read
    # as they are: the converter takes the fake quant's range only from constants.
    return tf.quantization.fake_quant_with_min_max_vars(
        x, variables["min"], variables["max"], num_bits=8, narrow_range=symmetric
    )


def _global_range(batch_min: tf.Tensor, batch_max: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The (min, max) over all replicas of a strategy (unchanged on one replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return batch_min, batch_max
    gathered = context.all_gather(tf.stack([batch_min, -batch_max])[None], axis=0)
    reduced = tf.reduce_min(gathered, axis=0)
    return reduced[0], -reduced[1]


def fake_quant_softmax(x) -> tf.Tensor:
    """Fake-quantizes a softmax output to the fixed int8 SOFTMAX output grid of TFLite."""
    return tf.quantization.fake_quant_with_min_max_args(
        x, min=SOFTMAX_RANGE[0], max=SOFTMAX_RANGE[1], num_bits=8
    )


class QuantizableLayer(keras.layers.Layer):
    """Base of kvid layers with internal requantization points.

    Args:
      quantized: QAT mode. Inserts fake-quant nodes at the layer's internal requantization points
        and freezes its batch-norm statistics. Set by `kvid.quantization.quantize_model`.
    """

    # Names of the internal requantization points; subclasses override.
    quant_points: tuple[str, ...] = ()
    # The points that feed the right-hand operand of a matmul of two activations: symmetric
    # ranges, int8 zero point 0 (see the module docstring).
    symmetric_points: tuple[str, ...] = ()

    def __init__(self, quantized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.quantized = quantized
        self._ranges: dict[str, dict[str, tf.Variable]] = {}

    def build_quant_points(self, names=None) -> None:
        """Creates range variables for the internal points (QAT mode only)."""
        if not self.quantized:
            return
        for name in names if names is not None else self.quant_points:
            self._ranges[name] = create_range_variables(self, f"fq_{name}")

    def fq(self, name: str, x, training) -> tf.Tensor:
        """Fake-quantizes `x` at internal point `name` in QAT mode; identity otherwise."""
        if not self.quantized:
            return x
        symmetric = name in self.symmetric_points
        return fake_quant_with_range(x, self._ranges[name], bool(training), symmetric)

    def fq_softmax(self, x) -> tf.Tensor:
        return fake_quant_softmax(x) if self.quantized else x

    def bn_training(self, training):
        """Batch norm follows `training` in float mode and is frozen in QAT mode."""
        return False if self.quantized else training

    def get_config(self) -> dict:
        config = super().get_config()
        config["quantized"] = self.quantized
        return config
