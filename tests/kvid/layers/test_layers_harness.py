"""Every kvid layer, shared or family-private, through the shared harness."""

import pytest

from kvid.backend import keras
from kvid.layers import (
    Activation,
    Conv2Plus1D,
    DropPath,
    FrameConv,
    LayerNorm,
    Normalize,
    TemporalShift,
)
from kvid.models.dualformer.peg import PEG
from kvid.models.dualformer.position_embedding import PositionEmbedding
from kvid.models.dualformer.stratified_attention import (
    GlobalPyramidAttention,
    LocalWindowAttention,
)
from kvid.models.dualformer.tubelet_conv import TubeletConv
from kvid.models.mobile_former.bridge import Former, Former2Mobile, Mobile2Former
from kvid.models.mobile_former.dynamic_relu import DynamicReLU
from kvid.models.mobile_former.edgetpu import (
    FlatTokens,
    GatedFormer2Mobile,
    PooledMobile2Former,
    StackedConv,
    StackedDynamicReLU,
    StackedPooledTokenConcat,
    StackedTemporalStack,
    TokenMLP,
)
from kvid.models.mobile_former.head import DenseBN, PooledTokenConcat
from kvid.models.mobile_former.layers import ChannelShuffle, GlobalTokens
from kvid.models.mobile_former.temporal_stack import TemporalStack
from kvid.models.posmlp.positional_gating import PatchMerge, PoSGU, PoSTGU, PoTGU
from kvid.models.xvit.space_time_mixing import SpaceTimeMixingAttention
from kvid.models.xvit.vit import (
    FeedForward,
    MeanTokens,
    PatchEmbedding,
    PrependClassToken,
    SelectToken,
    SpaceTimeEmbedding,
)
from tests.kvid.layers.harness import run_layer_checks

VIDEO = (4, 8, 8, 8)
TOKENS = (3, 16)

CASES = [
    (LayerNorm, {}, [VIDEO]),
    (FrameConv, dict(filters=12, kernel_size=3, strides=2, activation="relu6"), [VIDEO]),
    (FrameConv, dict(filters=12, kernel_size=1, groups=4), [VIDEO]),
    (FrameConv, dict(depthwise=True, depth_multiplier=2, kernel_size=3), [VIDEO]),
    (FrameConv, dict(filters=4, kernel_size=3, kernel_initializer="he_normal"), [VIDEO]),
    (Conv2Plus1D, dict(kernel_size=(3, 3, 3), strides=(2, 2, 2)), [VIDEO]),
    (Conv2Plus1D, dict(kernel_size=3, depth_multiplier=3, activation="hard_swish"), [VIDEO]),
    (ChannelShuffle, dict(groups=4), [VIDEO]),
    (DynamicReLU, dict(token_index=1, reduction=4), [VIDEO, TOKENS]),
    (Mobile2Former, dict(num_heads=2), [VIDEO, TOKENS]),
    (Mobile2Former, dict(formulation="factorized", max_keys_per_frame=16), [VIDEO, TOKENS]),
    (Former2Mobile, dict(num_heads=2), [VIDEO, TOKENS]),
    (Former, dict(num_heads=4, ffn_expansion=2), [TOKENS]),
    (GlobalTokens, dict(num_tokens=3, token_dim=16), [VIDEO]),
    (Normalize, dict(mean=[0.5] * 8, std=[0.25] * 8), [VIDEO]),
    (DropPath, dict(rate=0.2), [VIDEO]),
    (Activation, dict(activation="hard_swish"), [VIDEO]),
    (PooledTokenConcat, dict(num_cls_tokens=2), [VIDEO, TOKENS]),
    (DenseBN, dict(units=8), [(12,)]),
    (TemporalStack, dict(kernel_size=3), [VIDEO]),
    # Mobile-Former's Edge TPU form (frame-stacked: 4 frames of 8x8; flat tokens)
    (StackedConv, dict(filters=12, kernel_size=3, strides=2, num_frames=4), [(32, 8, 8)]),
    (
        StackedConv,
        dict(kernel_size=(3, 3, 3), strides=(2, 1, 1), num_frames=4, activation="relu6"),
        [(32, 8, 8)],
    ),  # fmt: skip
    (StackedTemporalStack, dict(kernel_size=3, num_frames=4), [(32, 8, 8)]),
    (FlatTokens, dict(num_tokens=3, token_dim=16), [(32, 8, 8)]),
    (PooledMobile2Former, dict(num_frames=4, grid_size=2, dynamic_gate=True), [(32, 8, 8), (48,)]),
    (TokenMLP, dict(hidden_units=16), [(48,)]),
    (GatedFormer2Mobile, dict(num_frames=4, hidden_units=8), [(32, 8, 8), (48,)]),
    (GatedFormer2Mobile, dict(num_frames=4, grid_size=2), [(32, 8, 8), (48,)]),
    (StackedDynamicReLU, dict(token_dim=16, token_index=1), [(32, 8, 8), (48,)]),
    (StackedPooledTokenConcat, dict(num_cls_tokens=1, token_dim=16), [(32, 8, 8), (48,)]),
    # DualFormer
    (TubeletConv, dict(filters=12, kernel_size=(2, 2, 2)), [VIDEO]),
    (TubeletConv, dict(depthwise=True, kernel_size=(2, 4, 4)), [VIDEO]),
    (PEG, dict(form="full"), [VIDEO]),
    (PEG, dict(form="factorized"), [VIDEO]),
    (PositionEmbedding, {}, [VIDEO]),
    (LocalWindowAttention, dict(num_heads=2, window_size=(2, 4, 4)), [VIDEO]),
    (
        LocalWindowAttention,
        dict(num_heads=2, window_size=(2, 2, 4), relative_position_bias=True),
        [VIDEO],
    ),  # fmt: skip
    (
        GlobalPyramidAttention,
        dict(
            num_heads=2,
            fine_pyramid_size=(2, 2, 2),
            coarse_pyramid_size=(1, 2, 2),
            coarse_first_kernel=(1, 2, 2),
        ),
        [VIDEO],
    ),  # fmt: skip
    (GlobalPyramidAttention, dict(num_heads=2, fine_pyramid_size=(4, 8, 8)), [VIDEO]),
    # PosMLP-Video (frame-stacked: 4 frames of 8x8)
    (PoSGU, dict(num_frames=4, window_size=4, gamma=2), [(32, 8, 8)]),
    (
        PoSGU,
        dict(
            num_frames=4,
            gamma=4,
            form="depthwise",
            layout="sliced",
            norm="batch",
            activation="relu6",
        ),
        [(32, 8, 8)],
    ),  # fmt: skip
    (PoTGU, dict(num_frames=4, gamma=2, form="depthwise"), [(32, 8, 8)]),
    (PoSTGU, dict(num_frames=4, temporal_window=2, window_size=4, gamma=2), [(32, 8, 8)]),
    (
        PatchMerge,
        dict(filters=12, patch_size=2, num_frames=4, activation="relu6"),
        [(32, 8, 8)],
    ),  # fmt: skip
    # XViT (time-major tokens: 4 frames of 5 tokens)
    (TemporalShift, dict(shift_div=4), [(4, 5, 16)]),
    (TemporalShift, dict(shift_div=8, num_segments=2), [(4, 5, 16)]),
    (TemporalShift, dict(shift_div=4), [VIDEO]),
    (SpaceTimeMixingAttention, dict(num_heads=2, shift_div=4), [(4, 5, 16)]),
    (
        SpaceTimeMixingAttention,
        dict(num_heads=2, shift_div=8, num_segments=2, summary_tokens=True),
        [(4, 5, 16)],
    ),  # fmt: skip
    (SpaceTimeMixingAttention, dict(num_heads=2, shift_div=0, qkv_bias=False), [(5, 16)]),
    (PatchEmbedding, dict(embed_dim=16, patch_size=4), [VIDEO]),
    (SpaceTimeEmbedding, dict(temporal_length=2), [(4, 5, 16)]),
    (FeedForward, dict(hidden_dim=32, dropout_rate=0.1), [(4, 5, 16)]),
    (SelectToken, dict(index=0), [(4, 5, 16)]),
    (MeanTokens, {}, [(4, 5, 16)]),
    (PrependClassToken, {}, [(5, 16)]),
]


@pytest.mark.parametrize(
    "cls, kwargs, shapes", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_layer_harness(cls, kwargs, shapes):
    run_layer_checks(cls, kwargs, shapes)


def test_every_registered_kvid_layer_is_covered():
    """Every layer class registered under the "kvid" package (shared or family-private)."""
    covered = {cls.__name__ for cls, _, _ in CASES}
    registered = {
        name.partition(">")[2]
        for name, obj in keras.utils.get_custom_objects().items()
        if name.startswith("kvid>")
        and isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer)
    }
    assert len(registered) > 30
    # The abstract bases are exercised through their subclasses.
    assert registered - {"PositionalGating", "QuantizableLayer"} <= covered, sorted(
        registered - covered
    )
