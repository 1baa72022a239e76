"""XViT presets: the reference ViT-B/16 model and the mobile and CPU sizes, as data."""

from __future__ import annotations

from kvid.layers.common import RAW_MEAN, RAW_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("temporal_attention", "mean")
FRAME_POOLS = ("class_token", "mean")

# Fields every preset has, with their defaults (the reference ViT-B/16 XViT, K400 config, with
# the temporal embedding and the shift spanning the whole clip). Overrides must be among these.
DEFAULTS = dict(
    num_frames=16,
    image_size=224,
    input_mean=(0.5, 0.5, 0.5),  # the reference configs' DATA.MEAN / DATA.STD
    input_std=(0.5, 0.5, 0.5),
    patch_size=16,
    conv_stem=(),  # channels of 3x3 stride-2 convs (BN, ReLU) before the patch embedding
    stem_shift_div=0,  # temporal shift (TSM) after each stem conv; 0: none
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    shift_div=8,  # 0: no shift (a per-frame ViT)
    shift_blocks=None,  # indices of the blocks with the shift (None: all, LOCATIONS_LIST)
    num_segments=None,  # shift chunk length (None: the clip; 8 in the released K400 configs)
    temporal_length=None,  # temporal embedding entries (None: frames; 8 in the released code)
    summary_tokens=False,
    frame_pool="class_token",  # or "mean": a frame's feature is the average of its tokens
    head="temporal_attention",  # or "mean": average of the per-frame features
    head_heads=12,
    head_depth=1,
    head_mlp_dim=768,
    mlp_activation="gelu",  # every MLP's and the head's; the CPU form's "relu" fuses into fc1
    dropout_rate=0.5,
    drop_path_rate=0.0,
    epsilon=1e-6,  # backbone LayerNorm (timm ViT)
    head_epsilon=1e-5,  # temporal head LayerNorm (PyTorch default)
)

# xvit_base_16x224: the reference backbone (ViT-B/16, `configs/Kinetics/xvit_B16_16x16_k400.yaml`
# shift_div 8; the SSv2 config uses 4). Mobile presets: small ViTs (DeiT-Tiny width 192, head
# dim 64) at 96-128 px with 16-pixel patches, so each per-frame softmax spans 37-65 keys and
# stays within what the int8 SOFTMAX resolves (docs/design.md section 7). xvit_tiny trains on a
# laptop CPU on the embedded dataset (8 x 64 x 64, 8-pixel patches: 65 keys per softmax) from
# scratch. Measured there: with a plain 8x8 patch embedding and class-token readout (and with a
# conv stem alone) training stayed at chance for 3-6 epochs: its classes differ only in motion
# of small shapes on a flat background. So it takes two 3x3 stride-2 convs (BN, ReLU) before a
# 2x2 patch embedding ("Early convolutions help transformers see better", Xiao et al. 2021),
# each followed by the same temporal shift (TSM-style, `stem_shift_div`), ImageNet input
# statistics and the average of each frame's tokens as the frame feature. xvit_xs is in the CPU
# form: raw [0, 1] input (no normalization op) and ReLU MLPs (no GELU kernel outside XNNPACK).
PRESETS = {
    "xvit_base_16x224": dict(),
    "xvit_xs": dict(
        num_frames=8, image_size=112, embed_dim=192, depth=4, num_heads=3, head_heads=3,
        head_mlp_dim=192, input_mean=RAW_MEAN, input_std=RAW_STD, mlp_activation="relu",
    ),
    "xvit_s": dict(
        num_frames=8, image_size=128, embed_dim=192, depth=6, num_heads=3, head_heads=3,
        head_mlp_dim=192,
    ),
    "xvit_m": dict(
        num_frames=16, image_size=96, embed_dim=192, depth=6, num_heads=3, head_heads=3,
        head_mlp_dim=192, shift_div=4,
    ),
    "xvit_tiny": dict(
        num_frames=8, image_size=64, patch_size=8, conv_stem=(16, 32), stem_shift_div=4,
        frame_pool="mean",
        input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD, embed_dim=64, depth=4, num_heads=2,
        head_heads=2, head_mlp_dim=64, shift_div=4, dropout_rate=0.1,
    ),
}  # fmt: skip
