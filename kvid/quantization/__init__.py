"""Quantization-aware training of kvid models with TFMOT.

One entry point, `quantize_model(model)`, returns the QAT model of any kvid preset:

1. every kvid layer is rebuilt with `quantized=True`, which inserts its own fake-quant nodes at the
   points where int8 TFLite requantizes inside it (matmul outputs, softmax outputs, adds) and
   freezes its batch-norm statistics; the points that feed the right-hand operand of a matmul of
   two activations are symmetric (int8 zero point 0, the only one XNNPACK takes there, see
   `kvid.layers.base`);
2. every layer is annotated with a kvid `QuantizeConfig` (TFMOT has none for custom layers, and its
   built-in configs would initialise output ranges at +-6 and move them slowly);
3. `tfmot.quantization.keras.quantize_apply` wraps the layers, adding output fake-quants.

Weights are not fake-quantized: the converter quantizes them per channel, with a rounding error
far below the activations'.
"""

from __future__ import annotations

import contextlib

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
    QuantizeLayer,
)

from kvid.backend import keras
from kvid.layers.base import QuantizableLayer, create_range_variables, fake_quant_with_range
from kvid.layers.common import DropPath

_quantize_keras = tfmot.quantization.keras

# Layers whose output carries its input's quantization unchanged (TFLite keeps the scale).
PASS_THROUGH = ("ChannelShuffle", "DropPath", "Dropout", "Reshape", "InputLayer")


@keras.utils.register_keras_serializable(package="kvid")
class RangeQuantizer(_quantize_keras.quantizers.Quantizer):
    """8-bit activation quantizer whose range is set by the first batch, then an EMA."""

    def build(self, tensor_shape, name, layer):
        return create_range_variables(layer, name)

    def __call__(self, inputs, training, weights, **kwargs):
        return fake_quant_with_range(inputs, weights, bool(training))

    def get_config(self):
        return {}

    def __eq__(self, other):
        return isinstance(other, RangeQuantizer)

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="kvid")
class InputQuantizer(_quantize_keras.quantizers.Quantizer):
    """Leaves the model input un-fake-quantized: the converter calibrates it instead.

    TFMOT's input QuantizeLayer starts at [-6, 6] and moves with the data, and a fake-quant right
    before the first layer's constant MUL/ADD makes the converter requantize the int8 input
    through float (DEQUANTIZE -> QUANTIZE). Calibration on [0, 1] clips gives the input the
    same scale the PTQ path gives it.
    """

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return inputs

    def get_config(self):
        return {}

    def __eq__(self, other):
        return isinstance(other, InputQuantizer)

    def __ne__(self, other):
        return not self.__eq__(other)


@keras.utils.register_keras_serializable(package="kvid")
class KvidQuantizeConfig(_quantize_keras.QuantizeConfig):
    """QuantizeConfig of kvid layers: output fake-quant unless the layer only moves data.

    Internal requantization points are fake-quantized by the layer itself in QAT mode.
    """

    def __init__(self, quantize_output: bool = True):
        self.quantize_output = quantize_output

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [RangeQuantizer()] if self.quantize_output else []

    def get_config(self):
        return {"quantize_output": self.quantize_output}


def quantize_config_for(layer: keras.layers.Layer) -> KvidQuantizeConfig:
    """The QuantizeConfig kvid uses for `layer` (any kvid or Keras layer of a kvid model)."""
    return KvidQuantizeConfig(quantize_output=type(layer).__name__ not in PASS_THROUGH)


def custom_objects() -> dict:
    """Everything needed to deserialize a kvid QAT model."""
    objects = {
        "RangeQuantizer": RangeQuantizer,
        "InputQuantizer": InputQuantizer,
        "KvidQuantizeConfig": KvidQuantizeConfig,
    }
    objects.update(keras.utils.get_custom_objects())
    return objects


@contextlib.contextmanager
def quantize_scope():
    """Context in which kvid QAT models (and their SavedModels/weights) can be loaded."""
    with _quantize_keras.quantize_scope(custom_objects()):
        yield


def _path_in_layer(weight, layer) -> str:
    """The weight's name below its layer (the prefix above the layer depends on build order)."""
    marker = f"{layer.name}/"
    name = weight.name
    return name[name.index(marker) + len(marker) :] if marker in name else name


def _quantized_copy(model: keras.Model) -> keras.Model:
    """Rebuilds `model` with every kvid layer in QAT mode and copies its weights by name."""
    config = model.get_config()
    for layer_config in config["layers"]:
        registered = layer_config.get("registered_name") or layer_config["class_name"]
        cls = keras.utils.get_registered_object(registered)
        if cls is not None and issubclass(cls, QuantizableLayer):
            layer_config["config"]["quantized"] = True
    if not any(c["config"].get("quantized") for c in config["layers"]):
        raise ValueError(f"quantize_model: {model.name!r} has no kvid layer to quantize.")
    copy = keras.Model.from_config(config, custom_objects=custom_objects())
    for source, target in zip(model.layers, copy.layers, strict=True):
        # Names differ in their uniquified prefix only: match on the path inside the layer.
        values = {
            _path_in_layer(w, source): v
            for w, v in zip(source.weights, source.get_weights(), strict=True)
        }
        for weight in target.weights:
            path = _path_in_layer(weight, target)
            if path in values:
                weight.assign(values.pop(path))
        if values:
            raise ValueError(f"quantize_model: weights of layer {source.name!r} not copied: "
                             f"{sorted(values)}")  # fmt: skip
    return copy


def quantize_model(model: keras.Model) -> keras.Model:
    """Returns the quantization-aware-training model of a kvid model (weights copied).

    Args:
      model: a functional kvid model (from `kvid.models.create` or `from_reference`).

    Returns:
      An uncompiled QAT model with the same inputs and outputs. Its activation ranges are set by
      its first training batch (or `calibrate`). Convert it with full-integer quantization (it
      still needs a representative dataset for the input's range).
    """
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise TypeError(f"quantize_model needs a functional Keras model, got {type(model)}.")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(f"quantize_model: nested models are not quantizable: {nested}.")
    quantized = _quantized_copy(model)

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return _quantize_keras.quantize_annotate_layer(layer, quantize_config_for(layer))

    annotated = keras.models.clone_model(quantized, clone_function=annotate)
    with quantize_scope():
        qat_model = _quantize_keras.quantize_apply(annotated)
    _unquantize_input(qat_model)
    return qat_model


def calibrate(qat_model: keras.Model, batches) -> keras.Model:
    """Sets every activation range of a fresh QAT model from a few batches of clips.

    The ranges of a QAT model are set by its first training batch; a QAT model that is converted
    without training needs this first. Batch norm is frozen in QAT mode, and dropout and stochastic
    depth are switched off here, so only the ranges move and they see the inference activations.
    """
    stochastic = [
        layer
        for wrapper in qat_model.layers
        for layer in [getattr(wrapper, "layer", wrapper)]
        if isinstance(layer, (keras.layers.Dropout, DropPath))
    ]
    rates = [layer.rate for layer in stochastic]
    try:
        for layer in stochastic:
            layer.rate = 0.0
        for batch in batches:
            qat_model(batch, training=True)
    finally:
        for layer, rate in zip(stochastic, rates, strict=True):
            layer.rate = rate
    return qat_model


def _unquantize_input(model: keras.Model) -> None:
    """Replaces TFMOT's input quantizer by `InputQuantizer` (see there why)."""
    for layer in model.layers:
        if isinstance(layer, QuantizeLayer):
            layer.quantizer = InputQuantizer()
