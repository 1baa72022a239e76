"""DualFormer: local window attention, then attention to pyramid-pooled global keys.

model.py (the network), presets.py (the preset table), stratified_attention.py, tubelet_conv.py,
peg.py, position_embedding.py (its layers), reference.py (porting of `sail-sg/dualformer` weights). Documentation: docs/dualformer.md.
"""

from kvid.models.dualformer.model import backbone_tensors, build, check_config, resolve_config
from kvid.models.dualformer.presets import DEFAULTS, PRESETS
from kvid.models.dualformer.reference import build_from_reference
from kvid.models.registry import Family

FAMILY = Family(
    name="dualformer",
    presets=PRESETS,
    resolve_config=resolve_config,
    build=build,
    build_from_reference=build_from_reference,
)

__all__ = [
    "DEFAULTS",
    "FAMILY",
    "PRESETS",
    "backbone_tensors",
    "build",
    "check_config",
    "resolve_config",
]
