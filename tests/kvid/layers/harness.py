"""One shared harness for kvid layers (keras-hub's test_case habits).

For every layer: eager and symbolic output shapes agree with `compute_output_shape`, the JSON
config round-trips and rebuilds an equal layer that computes the same outputs, every constructor
argument is in `get_config()`, one `fit` step changes the trainable weights, and the QAT mode
builds and runs.
"""

from __future__ import annotations

import inspect
import json

import numpy as np

from kvid.backend import keras, tf
from kvid.layers.base import QuantizableLayer


def _random(shapes, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((2, *s)).astype(np.float32) for s in shapes]
    return arrays if len(arrays) > 1 else arrays[0]


def _as_list(x):
    return x if isinstance(x, list) else [x]


def run_layer_checks(cls, init_kwargs: dict, input_shapes: list[tuple], fit: bool = True):
    """Runs every harness check on `cls(**init_kwargs)` with inputs of `input_shapes` (no batch)."""
    inputs = _random(input_shapes)
    layer = cls(**init_kwargs)
    eager = layer(inputs)
    shapes = [(None, *s) for s in input_shapes]
    expected = layer.compute_output_shape(shapes if len(shapes) > 1 else shapes[0])
    assert tuple(eager.shape[1:]) == tuple(expected[1:]), (cls.__name__, eager.shape, expected)

    symbolic_inputs = [keras.Input(s) for s in input_shapes]
    symbolic = cls(**init_kwargs)(symbolic_inputs if len(shapes) > 1 else symbolic_inputs[0])
    assert tuple(symbolic.shape[1:]) == tuple(eager.shape[1:])

    # every constructor argument is in the config, and the config survives JSON
    config = layer.get_config()
    arguments = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    for base in cls.__mro__[1:]:
        if base is keras.layers.Layer:
            break
        arguments |= set(inspect.signature(base.__init__).parameters) - {"self", "kwargs"}
    missing = sorted(arguments - set(config))
    assert not missing, f"{cls.__name__}.get_config() misses {missing}"
    restored_config = json.loads(json.dumps(config))
    clone = cls.from_config(restored_config)
    assert clone.get_config() == config
    clone(inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(inputs).numpy(), eager.numpy(), rtol=1e-5, atol=1e-5)

    if fit:
        _fit_one_step(cls, init_kwargs, input_shapes, inputs)
    if issubclass(cls, QuantizableLayer):
        quantized = cls(**dict(init_kwargs, quantized=True))
        out = quantized(inputs, training=True)
        assert out.shape == eager.shape
        assert np.all(np.isfinite(quantized(inputs, training=False).numpy()))
    return layer


def _fit_one_step(cls, init_kwargs, input_shapes, inputs):
    symbolic_inputs = [keras.Input(s) for s in input_shapes]
    layer = cls(**init_kwargs)
    x = layer(symbolic_inputs if len(symbolic_inputs) > 1 else symbolic_inputs[0])
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, kernel_initializer="ones")(x)
    model = keras.Model(symbolic_inputs, outputs)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    before = [w.numpy().copy() for w in layer.trainable_weights]
    targets = np.ones((2, 1), np.float32)
    history = model.fit(inputs, targets, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    if before:
        changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, layer.trainable_weights)]
        assert any(changed), f"{cls.__name__}: one fit step changed no trainable weight"


__all__ = ["run_layer_checks", "tf"]
