"""DualFormer presets: the paper's T/S/B models and the mobile and CPU sizes, as data."""

from __future__ import annotations

from kvid.layers.common import RAW_MEAN, RAW_STD
from kvid.models.dualformer.stratified_attention import COARSE_FIRST_KERNEL

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # mmaction's img_norm_cfg, on [0, 1] inputs
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fields every preset has, with their defaults (the reference's DualFormer-T at 32x224x224).
# Per-stage fields are tuples with one entry per stage.
DEFAULTS = dict(
    num_frames=32,
    image_size=224,
    input_mean=IMAGENET_MEAN,
    input_std=IMAGENET_STD,
    patch_size=(2, 4, 4),
    conv_stem=(),  # channels of 3x3 stride-2 per-frame conv+BN+ReLU6 layers before the patches
    stem_shift_div=0,  # temporal channel shift (TSM) after each conv_stem layer; 0: none
    embed_dims=(64, 128, 256, 512),
    num_heads=(2, 4, 8, 16),
    depths=(2, 2, 10, 4),
    mlp_ratios=(4, 4, 4, 4),
    temporal_strides=(1, 1, 1, 1),  # temporal patch of stages 1..3 (entry 0 is patch_size[0])
    window_sizes=((8, 7, 7),) * 4,
    fine_pyramid_sizes=((8, 7, 7),) * 3 + ((16, 7, 7),),
    coarse_pyramid_sizes=((4, 4, 4), (4, 4, 4), None, None),  # the reference: stages 0-1 only
    coarse_first_kernel=COARSE_FIRST_KERNEL,
    qkv_bias=True,
    qk_scale=None,
    window_position_bias=False,  # not in the reference: LW-MSA's relative position bias
    position_embedding=False,  # not in the reference: learned absolute space + time embedding
    mlp_dwconv=0,  # not in the reference: per-frame depthwise k x k conv after fc1; 0: none
    mlp_shift_div=0,  # not in the reference: temporal channel shift before fc1; 0: none
    peg_form="full",
    norm="layer",  # or "batch": batch norm for every LayerNorm (faster in int8, less faithful)
    mlp_activation="gelu",  # the CPU form's "relu" (exact GELU in the reference)
    drop_path_rate=0.1,
    dropout_rate=0.5,
    epsilon=1e-5,
    bn_epsilon=1e-5,
)
CPU_FORM = dict(
    input_mean=RAW_MEAN, input_std=RAW_STD, mlp_activation="relu", peg_form="factorized"
)  # fmt: skip
PER_STAGE_FIELDS = ("embed_dims", "num_heads", "depths", "mlp_ratios", "temporal_strides",
              "window_sizes", "fine_pyramid_sizes", "coarse_pyramid_sizes")  # fmt: skip

PRESETS = {
    # The reference configs (configs/_base_/models/dualformer/dualformer_{tiny,small,base}.py and
    # the recognition configs' drop path), 32 frames at 224x224 (4 views x 1 crop at test time).
    "dualformer_tiny": dict(drop_path_rate=0.1),
    "dualformer_small": dict(
        embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 18, 2),
        drop_path_rate=0.2,
    ),
    "dualformer_base": dict(
        embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 2, 18, 2),
        drop_path_rate=0.3,
    ),
    # Mobile presets (int8 CPU): the reference layout (head_dim 32, ratio-4 MLPs, alternating
    # LW/GP, PEG) at 8-16 frames of 128x128, with windows of 32 keys and pyramids of 32 + 16 keys,
    # so every int8 softmax spans at most 64 keys: the int8 SOFTMAX's 1/256 output step does not
    # hold the reference's 392-784 (measured on dualformer_cpu, PTQ: softmax relative RMSE
    # 0.18-0.25 with 256-key windows and pyramids, 0.02-0.03 with 32-36 keys). The CPU form
    # (docs/dualformer.md, benchmarks/cpu_form.py): raw [0, 1] input, ReLU MLPs and the
    # factorized PEG. Batch norm for LayerNorm ran 1.6x faster but lost int8 fidelity.
    "dualformer_mobile_s": dict(
        num_frames=8, image_size=128, embed_dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8),
        depths=(2, 2, 6, 2), window_sizes=((2, 4, 4),) * 4,
        fine_pyramid_sizes=((2, 4, 4), (2, 4, 4), (2, 4, 4), (4, 4, 4)),
        coarse_pyramid_sizes=((1, 4, 4), (1, 4, 4), None, None), coarse_first_kernel=(1, 4, 4),
        drop_path_rate=0.05, dropout_rate=0.2, **CPU_FORM,
    ),
    "dualformer_mobile_m": dict(
        num_frames=16, image_size=128, embed_dims=(32, 64, 128, 256), num_heads=(1, 2, 4, 8),
        depths=(2, 2, 6, 2), window_sizes=((2, 4, 4),) * 4,
        fine_pyramid_sizes=((2, 4, 4), (2, 4, 4), (2, 4, 4), (4, 4, 4)),
        coarse_pyramid_sizes=((1, 4, 4), (1, 4, 4), None, None), coarse_first_kernel=(1, 4, 4),
        drop_path_rate=0.1, dropout_rate=0.2, **CPU_FORM,
    ),
    # Trains on a laptop CPU in minutes on the embedded dataset (8 frames of 64x64): the golden
    # configuration's widths, 32-key windows, 36/32/32/16-key pyramids, and a convolutional stem
    # (two 3x3 stride-2 convs, then 2-frame tubelets), which fitted 128 training clips faster
    # than the (2, 4, 4) patchify stem (loss 2.16 vs 2.38 after 64 Adam steps). The MLPs' 3x3
    # depthwise conv halves the epochs to the 92.9% validation plateau and, with learning rate
    # 1e-3, learned the rotation direction in four runs of six (docs/dualformer.md has the runs).
    "dualformer_cpu": dict(
        num_frames=8, image_size=64, conv_stem=(16, 16), patch_size=(2, 1, 1),
        embed_dims=(16, 32, 64, 128), num_heads=(1, 1, 2, 4),
        depths=(2, 2, 2, 2), window_sizes=((2, 4, 4),) * 3 + ((4, 2, 2),),
        fine_pyramid_sizes=((2, 4, 4), (2, 4, 4), (2, 4, 4), (4, 2, 2)),
        coarse_pyramid_sizes=((1, 2, 2), None, None, None), coarse_first_kernel=(1, 4, 4),
        mlp_dwconv=3, drop_path_rate=0.05, dropout_rate=0.1,
    ),
}  # fmt: skip
