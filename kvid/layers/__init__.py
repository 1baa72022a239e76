"""Layers that two or more kvid model families share.

Each family keeps its own layers beside its model (`kvid.models.mobile_former.bridge`,
`kvid.models.dualformer.stratified_attention`, ...); this package holds what they have in common:
the QAT-aware base class, per-frame and (2+1)D convolutions, LayerNorm, the temporal shift, the
attention head split, input normalisation, stochastic depth and activations.
"""

from kvid.layers.base import QuantizableLayer
from kvid.layers.common import Activation, DropPath, Normalize
from kvid.layers.conv2plus1d import Conv2Plus1D, FrameConv
from kvid.layers.layer_norm import LayerNorm
from kvid.layers.temporal_shift import TemporalShift

__all__ = [
    "Activation",
    "Conv2Plus1D",
    "DropPath",
    "FrameConv",
    "LayerNorm",
    "Normalize",
    "QuantizableLayer",
    "TemporalShift",
]
