"""Model families and the one lookup for their presets.

model = kvid.models.create("vmf_tiny", num_classes=12)           # classifier
backbone = kvid.models.create("vmf_tiny", num_classes=None)      # pooled features
kvid.models.list_presets()
"""

from __future__ import annotations

from kvid.backend import keras
from kvid.models import dualformer, mobile_former, posmlp, xvit
from kvid.models.reference import from_reference

# family name -> module with PRESETS, resolve_config(name, overrides) and build(name, cfg, classes)
FAMILIES = {
    "mobile_former": mobile_former,
    "xvit": xvit,
    "dualformer": dualformer,
    "posmlp": posmlp,
}


def _family_of(name: str):
    for family in FAMILIES.values():
        if name in family.PRESETS:
            return family
    raise ValueError(f"Unknown preset {name!r}; valid presets: {list_presets()}.")


def list_presets(family: str | None = None) -> list[str]:
    """Names of all registered presets (or of one family's)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; valid families: {sorted(FAMILIES)}.")
    modules = [FAMILIES[family]] if family else FAMILIES.values()
    return sorted(name for module in modules for name in module.PRESETS)


def get_preset(name: str, **overrides) -> dict:
    """The resolved fields of a preset (with `overrides` applied and checked)."""
    return _family_of(name).resolve_config(name, overrides)


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
    family = _family_of(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}.")
    cfg = family.resolve_config(name, overrides)
    return family.build(name, cfg, num_classes)


__all__ = ["FAMILIES", "create", "from_reference", "get_preset", "list_presets"]
