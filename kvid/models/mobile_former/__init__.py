"""Video Mobile-Former: a (2+1)D MobileNet path and a few global tokens joined by a two-way bridge.

model.py (the network), presets.py (the preset table), bridge.py, dynamic_relu.py, head.py,
layers.py, temporal_stack.py (its layers), edgetpu.py (the layers of its Edge TPU form),
reference.py (porting of `AAboys/MobileFormer` weights). Documentation: docs/mobile_former.md.
"""

from kvid.models.mobile_former.model import backbone_tensors, build, resolve_config
from kvid.models.mobile_former.presets import DEFAULTS, PRESETS, Block
from kvid.models.mobile_former.reference import build_from_reference
from kvid.models.registry import Family

FAMILY = Family(
    name="mobile_former",
    presets=PRESETS,
    resolve_config=resolve_config,
    build=build,
    build_from_reference=build_from_reference,
)

__all__ = ["Block", "DEFAULTS", "FAMILY", "PRESETS", "backbone_tensors", "build", "resolve_config"]
