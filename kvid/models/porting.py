"""Helpers that every family's reference porting shares (`kvid.models.<family>.reference`).

A port builds the kvid model from the reference configuration (the reference constructor's
arguments) and loads the reference PyTorch `state_dict` into it; `StateDict` records which
entries were consumed, so that a port that leaves a parameter behind fails. This is how a user
loads an official checkpoint, and how kvid checks itself against the papers' code (golden
parity, docs/design.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kvid.backend import keras

_IGNORED_SUFFIXES = ("num_batches_tracked",)


class StateDict:
    """A reference state_dict that records which entries were consumed."""

    def __init__(self, state_dict: Mapping[str, np.ndarray]):
        self._arrays = {k: np.asarray(v) for k, v in state_dict.items()}
        self._used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self._arrays

    def take(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            raise KeyError(f"Reference state_dict has no entry {key!r}.")
        self._used.add(key)
        return self._arrays[key].astype(np.float32)

    def check_all_used(self) -> None:
        unused = sorted(
            k for k in self._arrays if k not in self._used and not k.endswith(_IGNORED_SUFFIXES)
        )
        if unused:
            raise ValueError(f"{len(unused)} reference parameters were not loaded: {unused[:10]}")


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch (O, I/groups, kh, kw) -> Keras Conv2D (kh, kw, I/groups, O)."""
    return np.transpose(weight, (2, 3, 1, 0))


def depthwise_kernel(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """PyTorch depthwise (I*m, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, I, m).

    PyTorch output channel `i * m + j` reads input channel `i`, the Keras channel order too.
    """
    out_channels, _, kh, kw = weight.shape
    weight = weight.reshape(in_channels, out_channels // in_channels, kh, kw)
    return np.transpose(weight, (2, 3, 0, 1))


def load_dense(layer: keras.layers.Dense, sd: StateDict, prefix: str) -> None:
    weights = [sd.take(f"{prefix}.weight").T]
    if layer.use_bias:
        weights.append(sd.take(f"{prefix}.bias"))
    layer.set_weights(weights)


def load_batch_norm(layer: keras.layers.BatchNormalization, sd: StateDict, prefix: str) -> None:
    layer.set_weights(
        [sd.take(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
    )


def load_layer_norm(layer, sd: StateDict, prefix: str) -> None:
    layer.set_weights([sd.take(f"{prefix}.weight"), sd.take(f"{prefix}.bias")])
