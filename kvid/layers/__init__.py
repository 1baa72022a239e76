"""kvid layers: video building blocks that convert to fully int8 TFLite."""

from kvid.layers.base import QuantizableLayer
from kvid.layers.bridge import Former, Former2Mobile, Mobile2Former
from kvid.layers.common import Activation, DropPath, GlobalTokens, Normalize, PositionEmbedding
from kvid.layers.conv2plus1d import ChannelShuffle, Conv2Plus1D, FrameConv
from kvid.layers.dynamic_relu import DynamicReLU
from kvid.layers.head import DenseBN, PooledTokenConcat
from kvid.layers.layer_norm import LayerNorm
from kvid.layers.peg import PEG
from kvid.layers.positional_gating import PatchMerge, PoSGU, PoSTGU, PoTGU
from kvid.layers.space_time_mixing import SpaceTimeMixingAttention, TemporalShift
from kvid.layers.stratified_attention import GlobalPyramidAttention, LocalWindowAttention
from kvid.layers.temporal_stack import TemporalStack
from kvid.layers.tubelet_conv import TubeletConv
from kvid.layers.vit import (
    FeedForward,
    MeanTokens,
    PatchEmbedding,
    PrependClassToken,
    SelectToken,
    SpaceTimeEmbedding,
)

__all__ = [
    "Activation",
    "ChannelShuffle",
    "Conv2Plus1D",
    "DenseBN",
    "DropPath",
    "DynamicReLU",
    "Former",
    "Former2Mobile",
    "FrameConv",
    "GlobalPyramidAttention",
    "GlobalTokens",
    "LayerNorm",
    "LocalWindowAttention",
    "Mobile2Former",
    "Normalize",
    "PatchMerge",
    "PoSGU",
    "PoSTGU",
    "PoTGU",
    "PEG",
    "PooledTokenConcat",
    "PositionEmbedding",
    "QuantizableLayer",
    "TemporalStack",
    "TubeletConv",
    # XViT
    "FeedForward",
    "MeanTokens",
    "PatchEmbedding",
    "PrependClassToken",
    "SelectToken",
    "SpaceTimeEmbedding",
    "SpaceTimeMixingAttention",
    "TemporalShift",
]
