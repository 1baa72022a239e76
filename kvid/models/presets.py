"""The one preset lookup every family's `resolve_config` starts from."""

from __future__ import annotations


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
