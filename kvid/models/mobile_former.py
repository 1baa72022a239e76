"""Video Mobile-Former: a (2+1)D MobileNet path and a few global tokens joined by a bridge.

Image Mobile-Former (Chen et al., CVPR 2022, arXiv 2108.05895) and its video extension
(Wang et al., arXiv 2208.12257): a light CNN carries local context, a Transformer over very few
global tokens (about 6, one set for the whole clip) carries global context, and two
cross-attentions (Mobile->Former, Former->Mobile) join them in every block. The block structure,
head and weight layout follow the reference PyTorch code (`AAboys/MobileFormer`); video adds
temporal depthwise kernels to the depthwise convolutions ((2+1)D, no Conv3D) and the
int8-sound factorized Mobile->Former attention.
"""

from __future__ import annotations

from typing import NamedTuple

from kvid.backend import keras
from kvid.layers import (
    Activation,
    ChannelShuffle,
    Conv2Plus1D,
    DenseBN,
    DropPath,
    DynamicReLU,
    Former,
    Former2Mobile,
    FrameConv,
    GlobalTokens,
    Mobile2Former,
    Normalize,
    PooledTokenConcat,
)
from kvid.layers.temporal_stack import TemporalStack
from kvid.models.presets import merge_preset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Block(NamedTuple):
    """One Mobile-Former block (the reference's `[type, e1, c, n, s, e2]` with n = 1).

    kind: "dna3" (dw-pw-dw-pw, `DnaBlock3`, downsampling/first) or "dna" (pw-dw-pw, `DnaBlock`).
    A block with `expand1 == 1` or `expand2 == 0` is a plain conv block with no bridge.
    temporal_kernel / temporal_stride: (2+1)D temporal depthwise kernel of its depthwise convs.
    """

    kind: str
    expand1: int
    channels: int
    stride: int
    expand2: int
    temporal_kernel: int = 1
    temporal_stride: int = 1


def _blocks(rows, temporal=None):
    """Block table from reference rows; `temporal` gives (k_t, s_t) per row for video presets."""
    temporal = temporal or [(1, 1)] * len(rows)
    return tuple(Block(*row, *tk) for row, tk in zip(rows, temporal, strict=True))


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
)

# Image presets reproduce the reference factories (mobile_former.py) at 224x224, T = 1.
# Video presets span Video Mobile-Former's stated 0.5-6 GMAC regime (its tables could not be
# read): widths of the image models, 8 or 16 frames, time halved at the 3rd downsampling, the
# factorized bridge. Measured MACs per clip are in the README table (benchmarks/vmf_table.py).
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
    # Small enough to train on a laptop CPU in minutes on the embedded dataset (8x64x64).
    "vmf_tiny": dict(
        blocks=_blocks(
            [("dna3", 2, 16, 2, 0), ("dna", 3, 16, 1, 3), ("dna3", 4, 32, 2, 4),
             ("dna", 3, 32, 1, 3), ("dna3", 4, 64, 2, 4), ("dna", 3, 64, 1, 3)],
            [(3, 1), (3, 1), (3, 1), (3, 1), (3, 2), (3, 1)],  # temporal from the first block
        ),
        stem_channels=8, stem_temporal_kernel=3, num_tokens=6, token_dim=64, head_expansion=4,
        head_features=256, num_frames=8, image_size=64, bridge_formulation="factorized",
        dropout_rate=0.1,
    ),
}  # fmt: skip


def resolve_config(name: str, overrides: dict) -> dict:
    """The preset's fields with `overrides` applied; unknown keys are a clear error."""
    config = merge_preset(name, DEFAULTS, PRESETS, overrides)
    config["blocks"] = tuple(Block(*b) for b in config["blocks"])
    _check_config(name, config)
    return config


def _check_config(name: str, config: dict) -> None:
    size = config["image_size"]
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{name}: image_size must be a positive int, got {size!r}.")
    stride = 2 * _prod(b.stride for b in config["blocks"])
    if size % stride:
        raise ValueError(
            f"{name}: image_size {size} is not divisible by the total spatial stride {stride}."
        )
    t_stride = _prod(b.temporal_stride for b in config["blocks"])
    if config["num_frames"] % t_stride:
        raise ValueError(
            f"{name}: num_frames {config['num_frames']} is not divisible by the total temporal "
            f"stride {t_stride}."
        )
    if config["image_input"] and config["num_frames"] != 1:
        raise ValueError(f"{name}: image_input presets take num_frames=1.")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _conv_alone(x, block: Block, cfg: dict, name: str, identity: bool):
    """dw 3x3 (+temporal) -> BN -> ReLU6 -> [shuffle] -> grouped pw -> BN (no bridge).

    The reference builds this depthwise conv 3x3 whatever its `kernel_size`.
    """
    y = Conv2Plus1D(
        (block.temporal_kernel, 3, 3),
        (block.temporal_stride, block.stride, block.stride),
        depth_multiplier=block.expand1,
        activation="relu6",
        bn_epsilon=cfg["epsilon"],
        name=f"{name}_conv1",
    )(x)
    if cfg["groups"] > 1:
        y = ChannelShuffle(x.shape[-1], name=f"{name}_shuffle1")(y)
    y = FrameConv(block.channels, 1, groups=cfg["groups"], bn_epsilon=cfg["epsilon"],
                  name=f"{name}_conv2")(y)  # fmt: skip
    if identity:
        if block.kind == "dna":
            y = DropPath(cfg["_drop_path"], name=f"{name}_drop_path")(y)
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    return y


def _activation(x, tokens, cfg: dict, dynamic: bool, name: str):
    if dynamic:
        return DynamicReLU(cfg["hyper_token"], cfg["hyper_reduction"], name=name)([x, tokens])
    return Activation("relu6", name=name)(x)


def _bridge_in(x, tokens, cfg: dict, name: str):
    tokens = Mobile2Former(
        cfg["bridge_heads"],
        dynamic_gate=cfg["dynamic_bridge"],
        formulation=cfg["bridge_formulation"],
        max_keys_per_frame=cfg["max_keys_per_frame"],
        epsilon=cfg["epsilon"],
        name=f"{name}_m2f",
    )([x, tokens])
    return Former(cfg["former_heads"], cfg["ffn_expansion"], cfg["epsilon"],
                  name=f"{name}_former")(tokens)  # fmt: skip


def _bridge_out(y, tokens, cfg: dict, name: str):
    return Former2Mobile(cfg["bridge_heads"], name=f"{name}_f2m")([y, tokens])


def dna_block(x, tokens, block: Block, cfg: dict, name: str):
    """`DnaBlock`: bridge in, pw -> DyReLU -> (2+1)D dw -> DyReLU -> pw, skip, bridge out."""
    identity = block.stride == 1 and block.temporal_stride == 1 and x.shape[-1] == block.channels
    if block.expand1 == 1 or block.expand2 == 0:
        return _conv_alone(x, block, cfg, name, identity), tokens
    tokens = _bridge_in(x, tokens, cfg, name)
    hidden = round(x.shape[-1] * block.expand1)
    y = FrameConv(hidden, 1, groups=cfg["groups"], bn_epsilon=cfg["epsilon"],
                  name=f"{name}_conv1")(x)  # fmt: skip
    if cfg["groups"] > 1:
        y = ChannelShuffle(cfg["groups"], name=f"{name}_shuffle1")(y)
    y = _activation(y, tokens, cfg, cfg["dyrelu"][0], f"{name}_act1")
    y = Conv2Plus1D(
        (block.temporal_kernel, cfg["kernel_size"], cfg["kernel_size"]),
        (block.temporal_stride, block.stride, block.stride),
        bn_epsilon=cfg["epsilon"],
        name=f"{name}_conv2",
    )(y)
    y = _activation(y, tokens, cfg, cfg["dyrelu"][1], f"{name}_act2")
    y = FrameConv(block.channels, 1, groups=cfg["groups"], bn_epsilon=cfg["epsilon"],
                  name=f"{name}_conv3")(y)  # fmt: skip
    if cfg["groups"] > 1:
        y = ChannelShuffle(cfg["groups"], name=f"{name}_shuffle3")(y)
    if cfg["bridge_before_skip"]:
        y = _bridge_out(y, tokens, cfg, name)
    if identity:
        y = DropPath(cfg["_drop_path"], name=f"{name}_drop_path")(y)
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    if not cfg["bridge_before_skip"]:
        y = _bridge_out(y, tokens, cfg, name)
    return y, tokens


def dna3_block(x, tokens, block: Block, cfg: dict, name: str):
    """`DnaBlock3`: bridge in, dw -> DyReLU -> pw, dw -> DyReLU -> pw (+inner skip), bridge out."""
    identity = block.stride == 1 and block.temporal_stride == 1 and x.shape[-1] == block.channels
    if block.expand1 == 1 or block.expand2 == 0:
        return _conv_alone(x, block, cfg, name, identity), tokens
    tokens = _bridge_in(x, tokens, cfg, name)
    kernel = (block.temporal_kernel, cfg["kernel_size"], cfg["kernel_size"])
    y = Conv2Plus1D(
        kernel,
        (block.temporal_stride, block.stride, block.stride),
        depth_multiplier=block.expand1,
        bn_epsilon=cfg["epsilon"],
        name=f"{name}_conv1",
    )(x)
    if cfg["groups"] > 1:
        y = ChannelShuffle(x.shape[-1], name=f"{name}_shuffle1")(y)
    y = _activation(y, tokens, cfg, cfg["dyrelu"][0], f"{name}_act1")
    inner = FrameConv(block.channels, 1, groups=cfg["groups"], bn_epsilon=cfg["epsilon"],
                      name=f"{name}_conv2")(y)  # fmt: skip
    y = Conv2Plus1D(kernel, 1, depth_multiplier=block.expand2, bn_epsilon=cfg["epsilon"],
                    name=f"{name}_conv3")(inner)  # fmt: skip
    if cfg["groups"] > 1:
        y = ChannelShuffle(block.channels, name=f"{name}_shuffle3")(y)
    y = _activation(y, tokens, cfg, cfg["dyrelu"][1], f"{name}_act3")
    y = FrameConv(block.channels, 1, groups=cfg["groups"], bn_epsilon=cfg["epsilon"],
                  name=f"{name}_conv4")(y)  # fmt: skip
    y = DropPath(cfg["_drop_path"], name=f"{name}_drop_path")(y)
    y = keras.layers.Add(name=f"{name}_inner_add")([y, inner])
    y = _bridge_out(y, tokens, cfg, name)
    if identity:
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    return y, tokens


def backbone_tensors(inputs, cfg: dict) -> tuple[keras.KerasTensor, keras.KerasTensor, dict]:
    """Builds stem, blocks and the final Mobile->Former; returns (features, tokens, endpoints)."""
    x = inputs
    if cfg["image_input"]:
        size = cfg["image_size"]
        x = keras.layers.Reshape((1, size, size, 3), name="add_frame_axis")(x)
    x = Normalize(cfg["input_mean"], cfg["input_std"], name="normalize")(x)
    tokens = GlobalTokens(cfg["num_tokens"], cfg["token_dim"], name="tokens")(x)
    if cfg["stem_temporal_kernel"] > 1:
        # Direction-selective motion features from the first layer (see TemporalStack).
        x = TemporalStack(cfg["stem_temporal_kernel"], name="stem_frames")(x)
    x = FrameConv(cfg["stem_channels"], 3, strides=2, activation="relu6",
                  bn_epsilon=cfg["epsilon"], name="stem")(x)  # fmt: skip
    endpoints = {"stem": x}
    num_blocks = len(cfg["blocks"])
    for index, block in enumerate(cfg["blocks"]):
        cfg["_drop_path"] = cfg["drop_path_rate"] * (index + 1) / num_blocks
        build = dna3_block if block.kind == "dna3" else dna_block
        x, tokens = build(x, tokens, block, cfg, f"block{index}")
        endpoints[f"block{index}"] = x
        endpoints[f"block{index}_tokens"] = tokens
    tokens = Mobile2Former(
        cfg["bridge_heads"],
        dynamic_gate=cfg["dynamic_bridge"],
        formulation=cfg["bridge_formulation"],
        max_keys_per_frame=cfg["max_keys_per_frame"],
        epsilon=cfg["epsilon"],
        name="final_m2f",
    )([x, tokens])
    endpoints["features"] = x
    endpoints["tokens"] = tokens
    return x, tokens, endpoints


def merge_head(features, tokens, cfg: dict, num_classes: int):
    """The reference `MergeClassifier`: expand, pool, append token 0, fc -> BN -> hswish, logits."""
    x = features
    if cfg["groups"] > 1:
        x = ChannelShuffle(cfg["groups"], name="head_shuffle")(x)
    x = FrameConv(x.shape[-1] * cfg["head_expansion"], 1, groups=cfg["groups"],
                  activation="relu6", bn_epsilon=cfg["epsilon"], name="head_conv")(x)  # fmt: skip
    x = PooledTokenConcat(cfg["num_cls_tokens"], "hard_swish", name="head_pool")([x, tokens])
    x = DenseBN(cfg["head_features"], "hard_swish", bn_epsilon=cfg["epsilon"], name="head_fc")(x)
    if cfg["dropout_rate"] > 0:
        x = keras.layers.Dropout(cfg["dropout_rate"], name="head_dropout")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


def input_shape(cfg: dict) -> tuple[int, ...]:
    size = cfg["image_size"]
    if cfg["image_input"]:
        return (size, size, 3)
    return (cfg["num_frames"], size, size, 3)


def build(name: str, cfg: dict, num_classes: int | None) -> keras.Model:
    """The classifier (or, with `num_classes=None`, the backbone's pooled features) as one flat
    functional graph."""
    inputs = keras.Input(input_shape(cfg), name="video" if not cfg["image_input"] else "image")
    features, tokens, endpoints = backbone_tensors(inputs, cfg)
    if num_classes is None:
        outputs = PooledTokenConcat(cfg["num_cls_tokens"], None, name="pooled")([features, tokens])
    else:
        outputs = merge_head(features, tokens, cfg, num_classes)
    model = keras.Model(inputs, outputs, name=name)
    # Layer names of the intermediate tensors (for feature extraction and parity checks).
    model.kvid_endpoints = {k: v._keras_history.layer.name for k, v in endpoints.items()}
    return model
