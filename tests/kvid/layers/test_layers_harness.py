"""Every kvid layer through the shared harness."""

import pytest

from kvid import layers
from tests.kvid.layers.harness import run_layer_checks

VIDEO = (4, 8, 8, 8)
TOKENS = (3, 16)

CASES = [
    (layers.LayerNorm, {}, [VIDEO]),
    (layers.FrameConv, dict(filters=12, kernel_size=3, strides=2, activation="relu6"), [VIDEO]),
    (layers.FrameConv, dict(filters=12, kernel_size=1, groups=4), [VIDEO]),
    (layers.FrameConv, dict(depthwise=True, depth_multiplier=2, kernel_size=3), [VIDEO]),
    (layers.FrameConv, dict(filters=4, kernel_size=3, kernel_initializer="he_normal"), [VIDEO]),
    (layers.Conv2Plus1D, dict(kernel_size=(3, 3, 3), strides=(2, 2, 2)), [VIDEO]),
    (layers.Conv2Plus1D, dict(kernel_size=3, depth_multiplier=3, activation="hard_swish"), [VIDEO]),
    (layers.ChannelShuffle, dict(groups=4), [VIDEO]),
    (layers.DynamicReLU, dict(token_index=1, reduction=4), [VIDEO, TOKENS]),
    (layers.Mobile2Former, dict(num_heads=2), [VIDEO, TOKENS]),
    (layers.Mobile2Former, dict(formulation="factorized", max_keys_per_frame=16), [VIDEO, TOKENS]),
    (layers.Former2Mobile, dict(num_heads=2), [VIDEO, TOKENS]),
    (layers.Former, dict(num_heads=4, ffn_expansion=2), [TOKENS]),
    (layers.GlobalTokens, dict(num_tokens=3, token_dim=16), [VIDEO]),
    (layers.Normalize, dict(mean=[0.5] * 8, std=[0.25] * 8), [VIDEO]),
    (layers.DropPath, dict(rate=0.2), [VIDEO]),
    (layers.Activation, dict(activation="hard_swish"), [VIDEO]),
    (layers.PooledTokenConcat, dict(num_cls_tokens=2), [VIDEO, TOKENS]),
    (layers.DenseBN, dict(units=8), [(12,)]),
    (layers.TemporalStack, dict(kernel_size=3), [VIDEO]),
    # DualFormer
    (layers.TubeletConv, dict(filters=12, kernel_size=(2, 2, 2)), [VIDEO]),
    (layers.TubeletConv, dict(depthwise=True, kernel_size=(2, 4, 4)), [VIDEO]),
    (layers.PEG, dict(form="full"), [VIDEO]),
    (layers.PEG, dict(form="factorized"), [VIDEO]),
    (layers.PositionEmbedding, {}, [VIDEO]),
    (layers.LocalWindowAttention, dict(num_heads=2, window_size=(2, 4, 4)), [VIDEO]),
    (
        layers.LocalWindowAttention,
        dict(num_heads=2, window_size=(2, 2, 4), relative_position_bias=True),
        [VIDEO],
    ),  # fmt: skip
    (
        layers.GlobalPyramidAttention,
        dict(
            num_heads=2,
            fine_pyramid_size=(2, 2, 2),
            coarse_pyramid_size=(1, 2, 2),
            coarse_first_kernel=(1, 2, 2),
        ),
        [VIDEO],
    ),  # fmt: skip
    (layers.GlobalPyramidAttention, dict(num_heads=2, fine_pyramid_size=(4, 8, 8)), [VIDEO]),
    # PosMLP-Video (frame-stacked: 4 frames of 8x8)
    (layers.PoSGU, dict(num_frames=4, window_size=4, gamma=2), [(32, 8, 8)]),
    (
        layers.PoSGU,
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
    (layers.PoTGU, dict(num_frames=4, gamma=2, form="depthwise"), [(32, 8, 8)]),
    (layers.PoSTGU, dict(num_frames=4, temporal_window=2, window_size=4, gamma=2), [(32, 8, 8)]),
    (
        layers.PatchMerge,
        dict(filters=12, patch_size=2, num_frames=4, activation="relu6"),
        [(32, 8, 8)],
    ),  # fmt: skip
    # XViT (time-major tokens: 4 frames of 5 tokens)
    (layers.TemporalShift, dict(shift_div=4), [(4, 5, 16)]),
    (layers.TemporalShift, dict(shift_div=8, num_segments=2), [(4, 5, 16)]),
    (layers.TemporalShift, dict(shift_div=4), [VIDEO]),
    (layers.SpaceTimeMixingAttention, dict(num_heads=2, shift_div=4), [(4, 5, 16)]),
    (
        layers.SpaceTimeMixingAttention,
        dict(num_heads=2, shift_div=8, num_segments=2, summary_tokens=True),
        [(4, 5, 16)],
    ),  # fmt: skip
    (layers.SpaceTimeMixingAttention, dict(num_heads=2, shift_div=0, qkv_bias=False), [(5, 16)]),
    (layers.PatchEmbedding, dict(embed_dim=16, patch_size=4), [VIDEO]),
    (layers.SpaceTimeEmbedding, dict(temporal_length=2), [(4, 5, 16)]),
    (layers.FeedForward, dict(hidden_dim=32, dropout_rate=0.1), [(4, 5, 16)]),
    (layers.SelectToken, dict(index=0), [(4, 5, 16)]),
    (layers.MeanTokens, {}, [(4, 5, 16)]),
    (layers.PrependClassToken, {}, [(5, 16)]),
]


@pytest.mark.parametrize(
    "cls, kwargs, shapes", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_layer_harness(cls, kwargs, shapes):
    run_layer_checks(cls, kwargs, shapes)


def test_every_exported_layer_is_covered():
    covered = {cls.__name__ for cls, _, _ in CASES}
    exported = set(layers.__all__) - {"QuantizableLayer"}
    assert exported <= covered, sorted(exported - covered)
