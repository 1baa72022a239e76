"""kvid layers: video building blocks that convert to fully int8 TFLite."""

from kvid.layers.base import QuantizableLayer
from kvid.layers.bridge import Former, Former2Mobile, Mobile2Former
from kvid.layers.common import Activation, DropPath, GlobalTokens, Normalize
from kvid.layers.conv2plus1d import ChannelShuffle, Conv2Plus1D, FrameConv
from kvid.layers.dynamic_relu import DynamicReLU
from kvid.layers.head import DenseBN, PooledTokenConcat
from kvid.layers.layer_norm import LayerNorm

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
    "GlobalTokens",
    "LayerNorm",
    "Mobile2Former",
    "Normalize",
    "PooledTokenConcat",
    "QuantizableLayer",
]
