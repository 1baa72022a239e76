"""XViT: per-frame attention whose keys and values mix channels of neighbouring frames.

model.py (the network), presets.py (the preset table), space_time_mixing.py, vit.py (its
layers), reference.py (porting of `1adrianb/video-transformers` weights). Documentation: docs/xvit.md.
"""

from kvid.models.registry import Family
from kvid.models.xvit.model import backbone_tensors, build, resolve_config
from kvid.models.xvit.presets import DEFAULTS, PRESETS
from kvid.models.xvit.reference import build_from_reference

FAMILY = Family(
    name="xvit",
    presets=PRESETS,
    resolve_config=resolve_config,
    build=build,
    build_from_reference=build_from_reference,
)

__all__ = ["DEFAULTS", "FAMILY", "PRESETS", "backbone_tensors", "build", "resolve_config"]
