"""PosMLP-Video presets: the released S16 model, the mobile and CPU sizes and the Edge TPU forms, as data."""

from __future__ import annotations

from kvid.layers.common import RAW_MEAN, RAW_STD

BLOCK_TYPES = ("parallel", "sequential", "joint")
STEMS = ("reference", "patch")
# SlowFast's DATA.MEAN / DATA.STD defaults, which the reference training pipeline applies.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# Fields every preset has, with their defaults. Overrides passed to `create` must be among these.
DEFAULTS = dict(
    num_frames=16,
    image_size=224,
    input_mean=KINETICS_MEAN,
    input_std=KINETICS_STD,
    embed_dims=(72, 144, 288, 576),
    depths=(3, 4, 9, 3),
    window_sizes=(14, 14, 14, 7),  # spatial window per stage; None: the whole frame
    temporal_windows=(None, None, None, None),  # PoTGU/PoSTGU frames per window; None: the clip
    gammas=(8, 16, 32, 64),  # channel groups of the relative-position tables
    downsample=(True, True, True),  # stride-2 transition before stages 2-4 (TRANSITIONS)
    block_type="parallel",
    form="matmul",  # "matmul" (training form) or "depthwise" (deploy form): same weights
    layout="folded",  # "sliced": frames/windows cut out with slices (Edge TPU)
    norm="layer",  # "layer" or "batch" (Edge TPU)
    activation="gelu",  # "gelu" (reference) or "relu6" (Edge TPU)
    stem="reference",  # "reference": 3x3/2 convs per frame; "patch": 2x2/2 (Edge TPU)
    drop_path_rate=0.0,
    dropout_rate=0.0,
    epsilon=1e-5,
    # Input (batch, frames * height, width, 3) instead of (batch, frames, height, width, 3): the
    # Edge TPU deploy form (a 5-D input has 4 dimensions above 1). Same weights; "patch" stem only.
    frame_stacked_input=False,
)

_EDGETPU = dict(
    norm="batch", activation="relu6", form="depthwise", layout="sliced", stem="patch",
    window_sizes=(None, None, None, None),
)  # fmt: skip

# posmlp_video_s16 is the only released configuration (configs/SSV1/SSV1_MLP_S16.yaml): 13.51M
# parameters, 40.17 GMACs per 16x224x224 view in the training form (docs/design.md section 6). The
# smaller presets are kvid's (the paper's S/B tables could not be read): channel groups per gamma
# as in the reference, windows that tile each stage. Costs: docs/posmlp.md and
# benchmarks/results/posmlp_table.md.
# They use batch norm (the reference's layout otherwise): kvid's LayerNorm on every position
# loses low-variance positions in int8 (the variance rounds to 0 and RSQRT saturates; measured on
# a trained posmlp_video_tiny with LayerNorm: RSQRT relative error 0.85, int8 logits cosine 0.07).
PRESETS = {
    "posmlp_video_s16": dict(),
    # Mobile presets (0.3-2 GMACs per clip): xs 1.40G, xs_edgetpu 1.16G (deploy form).
    "posmlp_video_xs": dict(
        num_frames=8, image_size=160, embed_dims=(32, 64, 128, 256), depths=(2, 2, 6, 2),
        window_sizes=(10, 10, 10, 5), gammas=(4, 8, 16, 32), norm="batch",
        activation="relu6", input_mean=RAW_MEAN, input_std=RAW_STD,  # the CPU form
    ),
    # Between the mobile presets and s16: 6.86 GMACs per 8x224x224 clip.
    "posmlp_video_s": dict(
        num_frames=8, image_size=224, embed_dims=(48, 96, 192, 384), depths=(2, 3, 6, 2),
        window_sizes=(14, 14, 14, 7), gammas=(4, 8, 16, 32), norm="batch",
    ),
    "posmlp_video_xs_edgetpu": dict(
        num_frames=8, image_size=128, embed_dims=(32, 64, 128, 256), depths=(2, 2, 6, 2),
        gammas=(4, 8, 16, 32), **dict(_EDGETPU, window_sizes=(8, 16, 8, 4)),
    ),
    # Small enough to train on a laptop CPU in minutes on the embedded dataset (8x64x64).
    "posmlp_video_tiny": dict(
        num_frames=8, image_size=64, embed_dims=(24, 48, 96, 192), depths=(1, 1, 2, 1),
        window_sizes=(8, 8, 4, 2), gammas=(4, 8, 16, 32), dropout_rate=0.1, norm="batch",
    ),
    "posmlp_video_tiny_edgetpu": dict(
        num_frames=8, image_size=64, embed_dims=(24, 48, 96, 192), depths=(1, 1, 2, 1),
        gammas=(4, 8, 16, 32), dropout_rate=0.1, **dict(_EDGETPU, window_sizes=(8, 8, 4, 2)),
    ),
}  # fmt: skip
