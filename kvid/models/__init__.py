"""Model families and the one lookup for their presets.

    model = kvid.models.create("vmf_tiny", num_classes=12)           # classifier
    backbone = kvid.models.create("vmf_tiny", num_classes=None)      # pooled features
    kvid.models.list_presets()                                        # every preset name
    kvid.models.list_presets(family="xvit")

Each family is a package (`kvid.models.mobile_former`, `.dualformer`, `.xvit`, `.posmlp`) holding
its model, its own layers, its presets and the porting of its reference checkpoints; it is
registered below, by name, and nowhere else.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from kvid.backend import keras
from kvid.models import dualformer, mobile_former, posmlp, xvit
from kvid.models.dualformer.released import REFERENCE_CONFIGS as _DUALFORMER_RELEASED
from kvid.models.mobile_former.released import REFERENCE_CONFIGS as _MOBILE_FORMER_RELEASED
from kvid.models.porting import StateDict
from kvid.models.posmlp.released import REFERENCE_CONFIGS as _POSMLP_RELEASED
from kvid.models.registry import Family, Registry
from kvid.models.xvit.released import REFERENCE_CONFIGS as _XVIT_RELEASED

REGISTRY = Registry()
REGISTRY.register(mobile_former.FAMILY)
REGISTRY.register(dualformer.FAMILY)
REGISTRY.register(xvit.FAMILY)
REGISTRY.register(posmlp.FAMILY)


def list_families() -> list[str]:
    """Names of the registered model families."""
    return REGISTRY.families()


def list_presets(family: str | None = None) -> list[str]:
    """Names of all registered presets (or of one family's)."""
    return REGISTRY.presets(family)


def family_of(name: str) -> str:
    """The family a preset belongs to."""
    return REGISTRY.family_of(name).name


def get_preset(name: str, **overrides) -> dict:
    """The resolved fields of a preset (with `overrides` applied and checked)."""
    return REGISTRY.family_of(name).resolve_config(name, overrides)


def create(name: str, num_classes: int | None = None, **overrides) -> keras.Model:
    """Builds a preset as one flat functional Keras model.

    Args:
      name: a preset from `list_presets()`.
      num_classes: classifier width; `None` returns the backbone (pooled features, no head).
      **overrides: preset fields to change (e.g. `num_frames=8, image_size=64`); an unknown field
        is an error naming the valid ones.

    Returns:
      A functional model taking `(batch, frames, height, width, 3)` float32 in [0, 1] (image
      presets: `(batch, height, width, 3)`) and returning logits `(batch, num_classes)`.
    """
    family = REGISTRY.family_of(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}.")
    cfg = family.resolve_config(name, overrides)
    return family.build(name, cfg, num_classes)


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
      state_dict: reference parameter name -> array, in PyTorch layout. Every entry must be
        consumed, and options kvid does not implement are rejected by name.
      image_size: input resolution (default: the constructor's `img_size`, else 224).
      num_frames: frames of a video family's input (default: the reference's).
      input_mean, input_std: normalization the kvid model applies to its [0, 1] input; the
        default leaves it unchanged, as the reference models take what they are given.

    Returns:
      A kvid model taking `(batch, [frames,] height, width, 3)` float32 and returning logits.
    """
    name = reference.get("family")
    if name not in REGISTRY.families():
        raise ValueError(
            f"from_reference: unsupported family {name!r}; supported: {REGISTRY.families()}."
        )
    return REGISTRY.family(name).build_from_reference(
        reference, StateDict(state_dict), image_size, num_frames, input_mean, input_std
    )


# Named reference configurations of the papers' released checkpoints (kvid/models/*/released.py).
_REFERENCE_CONFIGS = {
    **_MOBILE_FORMER_RELEASED,
    **_DUALFORMER_RELEASED,
    **_XVIT_RELEASED,
    **_POSMLP_RELEASED,
}


def list_reference_configs(family: str | None = None) -> list[str]:
    """Names of the released checkpoints' reference configurations (or of one family's)."""
    if family is not None:
        REGISTRY.family(family)  # an unknown family is an error naming the valid ones
    return sorted(
        name
        for name, config in _REFERENCE_CONFIGS.items()
        if family is None or config["family"] == family
    )


def reference_config(name: str) -> dict:
    """A copy of a released checkpoint's reference configuration, as `from_reference` takes it.

    Besides `family` and `constructor` it holds the checkpoint's input (`num_frames`,
    `image_size`, `normalization`: {"mean", "std"} on [0, 1] inputs), `num_classes`, `dataset`,
    and `checkpoint` / `source` (where the weights and the numbers come from; documentation only,
    nothing is downloaded):

        reference = kvid.models.reference_config("dualformer_tiny_k400")
        model = kvid.models.from_reference(
            reference, state_dict,
            input_mean=reference["normalization"]["mean"],
            input_std=reference["normalization"]["std"])
    """
    if name not in _REFERENCE_CONFIGS:
        raise ValueError(
            f"Unknown reference configuration {name!r}; valid names: {list_reference_configs()}."
        )
    return copy.deepcopy(_REFERENCE_CONFIGS[name])


__all__ = [
    "Family",
    "REGISTRY",
    "create",
    "family_of",
    "from_reference",
    "get_preset",
    "list_families",
    "list_presets",
    "list_reference_configs",
    "reference_config",
]
