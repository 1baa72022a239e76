"""PosMLP-Video: positional gating units (PoSGU, PoTGU, PoSTGU) from relative position biases.

model.py (the network), presets.py (the preset table), positional_gating.py (its layers),
reference.py (porting of `zhouds1918/PosMLP_Video` weights). Documentation: docs/posmlp.md.
"""

from kvid.models.posmlp.model import backbone_tensors, build, convert_form, resolve_config
from kvid.models.posmlp.presets import DEFAULTS, PRESETS
from kvid.models.posmlp.reference import build_from_reference
from kvid.models.registry import Family

FAMILY = Family(
    name="posmlp",
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
    "convert_form",
    "resolve_config",
]
