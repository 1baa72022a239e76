"""The one preset lookup every family's `resolve_config` starts from."""

from __future__ import annotations


def merge_preset(name: str, defaults: dict, presets: dict, overrides: dict) -> dict:
    """`defaults`, then preset `name`, then `overrides`; an unknown override key is an error."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown override(s) {unknown} for preset {name!r}; valid fields: {sorted(defaults)}."
        )
    return {**defaults, **presets[name], **overrides}
