"""The preset registry: every model family registers its presets here, explicitly.

A family is a package under `kvid/models/` that exposes one `FAMILY` object (its presets, how a
preset's fields are resolved, how a model is built, how a reference checkpoint is ported).
`kvid/models/__init__.py` registers each family by name, in one place: importing a module never
registers anything as a side effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Family:
    """What the registry needs from a model family.

    Attributes:
      name: the family's name, as in `kvid.models.list_presets(family=...)` and in a reference
        configuration's `family` field.
      presets: preset name -> the fields the preset sets (the rest come from the defaults).
      resolve_config: `(preset, overrides) -> fields`, every field resolved and checked.
      build: `(preset, fields, num_classes) -> keras.Model`; `num_classes=None` builds the
        backbone (pooled features).
      build_from_reference: `(reference, state_dict, image_size, num_frames, input_mean,
        input_std) -> keras.Model` with the reference weights loaded (see `from_reference`).
    """

    name: str
    presets: Mapping[str, Mapping[str, Any]]
    resolve_config: Callable[[str, dict], dict]
    build: Callable[..., Any]
    build_from_reference: Callable[..., Any]


class Registry:
    """Preset name -> family, filled by `register` calls."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def register(self, family: Family) -> None:
        """Adds a family; a family name or preset name that is already taken is an error."""
        if family.name in self._families:
            raise ValueError(f"Model family {family.name!r} is registered twice.")
        taken = {p: f.name for f in self._families.values() for p in f.presets}
        clashes = sorted(set(family.presets) & set(taken))
        if clashes:
            raise ValueError(
                f"Family {family.name!r}: preset names already registered by another family: "
                f"{[(p, taken[p]) for p in clashes]}."
            )
        self._families[family.name] = family

    def families(self) -> list[str]:
        return sorted(self._families)

    def family(self, name: str) -> Family:
        if name not in self._families:
            raise ValueError(f"Unknown model family {name!r}; valid families: {self.families()}.")
        return self._families[name]

    def family_of(self, preset: str) -> Family:
        for family in self._families.values():
            if preset in family.presets:
                return family
        raise ValueError(f"Unknown preset {preset!r}; valid presets: {self.presets()}.")

    def presets(self, family: str | None = None) -> list[str]:
        families = [self.family(family)] if family is not None else self._families.values()
        return sorted(name for f in families for name in f.presets)


def merge_preset(name: str, defaults: dict, presets: dict, overrides: dict) -> dict:
    """`defaults`, then preset `name`, then `overrides`.

    An unknown override key is an error, and so is a string for a field that is not a string
    (e.g. `--model_overrides=a=1,b=2`, which parses as `a="1,b=2"`).
    """
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown override(s) {unknown} for preset {name!r}; valid fields: {sorted(defaults)}."
        )
    merged = {**defaults, **presets[name]}
    for key, value in overrides.items():
        current = merged[key]
        if isinstance(value, str) and current is not None and not isinstance(current, str):
            raise ValueError(
                f"Override {key}={value!r} for preset {name!r}: expected "
                f"{type(current).__name__} (the preset has {current!r}), got a string. Give one "
                "key=value per --model_overrides flag."
            )
    return {**merged, **overrides}
