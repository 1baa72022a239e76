"""Mobile-Former presets: the reference image models and the Video Mobile-Former sizes, as data."""

from __future__ import annotations

from typing import NamedTuple

from kvid.layers.common import RAW_MEAN, RAW_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Block(NamedTuple):
    """One Mobile-Former block (the reference's `[type, e1, c, n, s, e2]` with n = 1).

    kind: "dna3" (dw-pw-dw-pw, `DnaBlock3`, downsampling/first) or "dna" (pw-dw-pw, `DnaBlock`).
    A block with `expand1 == 1` or `expand2 == 0` is a plain conv block with no bridge.
    temporal_kernel / temporal_stride: (2+1)D temporal depthwise kernel of its depthwise convs.
    bridge: False for a bridged block type run without its bridge (the tokens pass it unchanged;
    the CPU form leaves the bridge out where the feature map is large).
    """

    kind: str
    expand1: int
    channels: int
    stride: int
    expand2: int
    temporal_kernel: int = 1
    temporal_stride: int = 1
    bridge: bool = True


def _blocks(rows, temporal=None, bridged=None):
    """Block table from reference rows; `temporal` gives (k_t, s_t) per row for video presets,
    `bridged` the indices of the rows that keep their bridge (default: all)."""
    temporal = temporal or [(1, 1)] * len(rows)
    bridged = range(len(rows)) if bridged is None else bridged
    return tuple(
        Block(*row, *tk, bridge=i in bridged)
        for i, (row, tk) in enumerate(zip(rows, temporal, strict=True))
    )


# Reference block tables (mobile_former.py, [block, e1, c, s, e2] with n = 1 everywhere).
_MF508 = [
    ("dna3", 2, 24, 1, 0), ("dna3", 6, 40, 2, 4), ("dna", 3, 40, 1, 3), ("dna3", 6, 72, 2, 4),
    ("dna", 3, 72, 1, 3), ("dna3", 6, 128, 2, 4), ("dna", 4, 128, 1, 4), ("dna", 6, 176, 1, 4),
    ("dna", 6, 176, 1, 4), ("dna3", 6, 240, 2, 4), ("dna", 6, 240, 1, 4), ("dna", 6, 240, 1, 4),
]  # fmt: skip
_MF294 = [
    ("dna3", 2, 16, 1, 0), ("dna3", 6, 24, 2, 4), ("dna", 4, 24, 1, 4), ("dna3", 6, 48, 2, 4),
    ("dna", 4, 48, 1, 4), ("dna3", 6, 96, 2, 4), ("dna", 4, 96, 1, 4), ("dna", 6, 128, 1, 4),
    ("dna", 6, 128, 1, 4), ("dna3", 6, 192, 2, 4), ("dna", 6, 192, 1, 4), ("dna", 6, 192, 1, 4),
]  # fmt: skip
_MF214 = [
    ("dna3", 2, 12, 1, 0), ("dna3", 6, 20, 2, 4), ("dna", 3, 20, 1, 4), ("dna3", 6, 40, 2, 4),
    ("dna", 4, 40, 1, 4), ("dna3", 6, 80, 2, 4), ("dna", 4, 80, 1, 4), ("dna", 6, 112, 1, 4),
    ("dna", 6, 112, 1, 4), ("dna3", 6, 160, 2, 4), ("dna", 6, 160, 1, 4), ("dna", 6, 160, 1, 4),
]  # fmt: skip
_MF151 = [
    ("dna3", 2, 12, 1, 0), ("dna3", 6, 16, 2, 4), ("dna", 3, 16, 1, 3), ("dna3", 6, 32, 2, 4),
    ("dna", 3, 32, 1, 3), ("dna3", 6, 64, 2, 4), ("dna", 4, 64, 1, 4), ("dna", 6, 88, 1, 4),
    ("dna", 6, 88, 1, 4), ("dna3", 6, 128, 2, 4), ("dna", 6, 128, 1, 4), ("dna", 6, 128, 1, 4),
]  # fmt: skip
_MF96 = [
    ("dna3", 2, 12, 1, 0), ("dna3", 6, 16, 2, 4), ("dna3", 6, 32, 2, 4), ("dna", 3, 32, 1, 3),
    ("dna3", 6, 64, 2, 4), ("dna", 4, 64, 1, 4), ("dna", 6, 88, 1, 4), ("dna3", 6, 128, 2, 4),
    ("dna", 6, 128, 1, 4),
]  # fmt: skip
_MF52 = [
    ("dna3", 3, 12, 2, 0), ("dna", 3, 12, 1, 3), ("dna3", 6, 24, 2, 4), ("dna", 3, 24, 1, 3),
    ("dna3", 6, 48, 2, 4), ("dna", 4, 48, 1, 4), ("dna", 6, 64, 1, 4), ("dna3", 6, 96, 2, 4),
    ("dna", 6, 96, 1, 4),
]  # fmt: skip
# Video: temporal kernel 3 on every bridged block; time halved at the 3rd downsampling.
_T12 = [(1, 1)] + [(3, 1)] * 4 + [(3, 2)] + [(3, 1)] * 3 + [(3, 1)] * 3
_T12_LATE = [(1, 1)] + [(3, 1)] * 8 + [(3, 2)] + [(3, 1)] * 2  # time halved at the 4th

# vmf_tiny's blocks and sizes, shared by its clip, CPU and Edge TPU forms.
_TINY = dict(
    blocks=_blocks(
        [("dna3", 2, 16, 2, 0), ("dna", 3, 16, 1, 3), ("dna3", 4, 32, 2, 4),
         ("dna", 3, 32, 1, 3), ("dna3", 4, 64, 2, 4), ("dna", 3, 64, 1, 3)],
        [(3, 1), (3, 1), (3, 1), (3, 1), (3, 2), (3, 1)],  # temporal from the first block
    ),
    stem_channels=8, stem_temporal_kernel=3, num_tokens=6, token_dim=64, head_expansion=4,
    head_features=256, num_frames=8, image_size=64, dropout_rate=0.1,
)  # fmt: skip

# Fields every preset has, with their defaults. Overrides passed to `create` must be among these.
DEFAULTS = dict(
    num_frames=1,
    image_size=224,
    image_input=False,  # (batch, height, width, 3) input: the image model (T = 1)
    input_mean=IMAGENET_MEAN,
    input_std=IMAGENET_STD,
    blocks=(),
    stem_channels=16,
    stem_temporal_kernel=1,  # > 1: the stem is a full k x 3 x 3 spatio-temporal conv
    num_tokens=6,
    token_dim=192,
    groups=1,  # grouped pointwise convs + channel shuffles (26m)
    kernel_size=3,
    bridge_heads=2,
    former_heads=4,  # GlobalBlock's constructor default: the reference never passes 2 to it
    ffn_expansion=2,
    hyper_reduction=4,
    hyper_token=0,
    dynamic_bridge=True,
    bridge_formulation="full",
    max_keys_per_frame=64,
    bridge_before_skip=False,
    head_expansion=6,
    head_features=1280,
    num_cls_tokens=1,
    dropout_rate=0.0,
    drop_path_rate=0.0,
    epsilon=1e-5,
    dyrelu=(True, True),  # DyReLU (else ReLU6) after the two expanded depthwise/pointwise convs
    # The CPU form's choices (docs/mobile_former.md, "The CPU form"): "batch" norm of the tokens
    # instead of LayerNorm, a ReLU FFN in the Former, "relu6" in the head instead of hard-swish.
    token_norm="layer",
    ffn_activation="gelu",
    head_activation="hard_swish",
    # The Edge TPU form (kvid.models.mobile_former.edgetpu): frame-stacked tensors, the static
    # pooled/MLP/gated bridge, ReLU6 for hard-swish, batch norm for LayerNorm. Ignores the
    # bridge_formulation, max_keys_per_frame, bridge_heads and former_heads fields.
    edgetpu=False,
    bridge_grid=2,  # edgetpu: the bridge reads and writes a bridge_grid x bridge_grid grid per frame
)

# Image presets reproduce the reference factories (mobile_former.py) at 224x224, T = 1.
# Video presets span Video Mobile-Former's stated 0.5-6 GMAC regime (its tables could not be
# read): widths of the image models, 8 or 16 frames, time halved at the 3rd downsampling, the
# factorized bridge. Measured MACs per clip are in docs/mobile_former.md (benchmarks/vmf_table.py).
PRESETS = {
    "mobile_former_508m": dict(
        blocks=_blocks(_MF508), stem_channels=24, head_features=1920, image_input=True
    ),
    "mobile_former_294m": dict(
        blocks=_blocks(_MF294), stem_channels=16, head_features=1920, image_input=True
    ),
    "mobile_former_214m": dict(
        blocks=_blocks(_MF214), stem_channels=12, head_features=1600, image_input=True
    ),
    "mobile_former_151m": dict(
        blocks=_blocks(_MF151), stem_channels=12, head_features=1280, image_input=True
    ),
    "mobile_former_96m": dict(
        blocks=_blocks(_MF96), stem_channels=12, num_tokens=4, token_dim=128,
        head_features=1280, image_input=True,
    ),
    "mobile_former_52m": dict(
        blocks=_blocks(_MF52), stem_channels=8, num_tokens=3, token_dim=128,
        head_features=1024, image_input=True,
    ),
    "mobile_former_26m": dict(
        blocks=_blocks(_MF52), stem_channels=8, num_tokens=3, token_dim=128,
        head_features=1024, groups=4, image_input=True,
    ),
    "vmf_xs": dict(
        blocks=_blocks(_MF151, _T12), stem_channels=12, head_features=1280,
        num_frames=8, image_size=160, bridge_formulation="factorized",
    ),
    "vmf_s": dict(
        blocks=_blocks(_MF151, _T12), stem_channels=12, head_features=1280,
        num_frames=8, image_size=192, bridge_formulation="factorized",
    ),
    "vmf_m": dict(
        blocks=_blocks(_MF294, _T12), stem_channels=16, head_features=1920,
        num_frames=8, image_size=192, bridge_formulation="factorized",
    ),
    "vmf_l": dict(
        blocks=_blocks(_MF294, _T12), stem_channels=16, head_features=1920,
        num_frames=16, image_size=192, bridge_formulation="factorized",
    ),
    "vmf_xl": dict(
        blocks=_blocks(_MF508, _T12_LATE), stem_channels=24, head_features=1920,
        num_frames=16, image_size=224, bridge_formulation="factorized",
    ),
    # The CPU form at vmf_xs's input (docs/mobile_former.md, "The CPU form"): thin at 80x80 and
    # 40x40, wide pointwise convs at 10x10 and 5x5 (where int8 convs run fastest), one depthwise
    # conv per block, temporal kernels and bridges only where the map is small (10x10 onwards),
    # raw [0, 1] input (no normalization op), ReLU6 instead of DyReLU, a ReLU FFN and a ReLU6
    # head. The tokens keep LayerNorm: batch norm saved no clear time and lost int8 fidelity.
    "vmf_xs_cpu": dict(
        blocks=_blocks(
            [("dna3", 3, 16, 2, 0), ("dna", 3, 32, 2, 3), ("dna", 3, 32, 1, 3),
             ("dna", 6, 64, 2, 4), ("dna", 4, 64, 1, 4), ("dna", 6, 112, 1, 4),
             ("dna", 6, 160, 2, 4), ("dna", 4, 160, 1, 4), ("dna", 6, 160, 1, 4)],
            [(1, 1)] * 3 + [(3, 1)] * 6,
            bridged=range(5, 9),
        ),
        stem_channels=8, head_features=1280, num_frames=8, image_size=160,
        input_mean=RAW_MEAN, input_std=RAW_STD,
        bridge_formulation="factorized", dyrelu=(False, False), ffn_activation="relu",
        head_activation="relu6",
    ),
    # Small enough to train on a laptop CPU in minutes on the embedded dataset (8x64x64).
    "vmf_tiny": dict(_TINY, bridge_formulation="factorized"),
    # vmf_tiny in the CPU form (vmf_cpu.flags): same blocks, widths, bridges and input; raw [0, 1]
    # input, ReLU6 instead of DyReLU, a ReLU FFN and a ReLU6 head.
    "vmf_tiny_cpu": dict(
        _TINY, bridge_formulation="factorized", input_mean=RAW_MEAN, input_std=RAW_STD,
        dyrelu=(False, False), ffn_activation="relu", head_activation="relu6",
    ),
    # vmf_tiny in the Edge TPU form: same blocks, widths and input; only Edge TPU ops in int8.
    "vmf_tiny_edgetpu": dict(_TINY, edgetpu=True, dynamic_bridge=False),
}  # fmt: skip
