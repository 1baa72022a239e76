"""Port a reference PyTorch model (its constructor arguments and state_dict) to a kvid model.

This is how a user loads an official checkpoint, and how kvid checks itself against the papers'
code (golden parity, `../shared/golden/`): the kvid model is built from the reference
configuration, not from a stored special case, and every reference parameter must be consumed.
"""

from __future__ import annotations

import importlib
import pkgutil
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


def from_reference(
    reference: Mapping,
    state_dict: Mapping[str, np.ndarray],
    image_size: int | None = None,
    num_frames: int | None = None,
    input_mean=(0.0, 0.0, 0.0),
    input_std=(1.0, 1.0, 1.0),
) -> keras.Model:
    """Builds the kvid model of a reference configuration and loads its PyTorch weights.

    Args:
      reference: a dict with `family` (e.g. "mobile_former") and `constructor` (`{"kwargs": ...}`,
        the reference constructor's arguments), as in the golden JSON files.
      state_dict: reference parameter name -> array, in PyTorch layout.
      image_size: input resolution (default: the constructor's `img_size`, else 224).
      num_frames: frames of a video family's input (default: the reference's).
      input_mean, input_std: normalization the kvid model applies to its [0, 1] input; the
        default leaves it unchanged, as the reference models take what they are given.

    Returns:
      A kvid model taking `(batch, [frames,] height, width, 3)` float32 and returning logits.
    """
    family = reference.get("family")
    supported = reference_families()
    if family not in supported:
        raise ValueError(f"from_reference: unsupported family {family!r}; supported: {supported}.")
    module = importlib.import_module(f"kvid.models.{family}_reference")
    return module.build_from_reference(
        reference, StateDict(state_dict), image_size, num_frames, input_mean, input_std
    )


def reference_families() -> list[str]:
    """Families that can be built from a reference: those with a `<family>_reference` module."""
    import kvid.models

    suffix = "_reference"
    return sorted(
        info.name[: -len(suffix)]
        for info in pkgutil.iter_modules(kvid.models.__path__)
        if info.name.endswith(suffix)
    )
