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

from kvid.backend import keras
from kvid.layers import Activation, Conv2Plus1D, DropPath, FrameConv, Normalize
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
from kvid.models.mobile_former.presets import (
    DEFAULTS,
    PRESETS,
    Block,
)
from kvid.models.mobile_former.temporal_stack import TemporalStack
from kvid.models.registry import merge_preset


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
    if config["edgetpu"] and (config["image_input"] or config["groups"] > 1):
        raise ValueError(f"{name}: the edgetpu form takes video input and groups=1.")
    if config["edgetpu"] and not all(b.bridge for b in config["blocks"]):
        raise ValueError(f"{name}: the edgetpu form bridges every bridged block (bridge=True).")


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
        norm=cfg["token_norm"],
        name=f"{name}_m2f",
    )([x, tokens])
    return Former(cfg["former_heads"], cfg["ffn_expansion"], cfg["epsilon"], cfg["token_norm"],
                  cfg["ffn_activation"], name=f"{name}_former")(tokens)  # fmt: skip


def _bridge_out(y, tokens, cfg: dict, name: str):
    return Former2Mobile(cfg["bridge_heads"], name=f"{name}_f2m")([y, tokens])


def dna_block(x, tokens, block: Block, cfg: dict, name: str):
    """`DnaBlock`: bridge in, pw -> DyReLU -> (2+1)D dw -> DyReLU -> pw, skip, bridge out."""
    identity = block.stride == 1 and block.temporal_stride == 1 and x.shape[-1] == block.channels
    if block.expand1 == 1 or block.expand2 == 0:
        return _conv_alone(x, block, cfg, name, identity), tokens
    if block.bridge:
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
    if block.bridge and cfg["bridge_before_skip"]:
        y = _bridge_out(y, tokens, cfg, name)
    if identity:
        y = DropPath(cfg["_drop_path"], name=f"{name}_drop_path")(y)
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    if block.bridge and not cfg["bridge_before_skip"]:
        y = _bridge_out(y, tokens, cfg, name)
    return y, tokens


def dna3_block(x, tokens, block: Block, cfg: dict, name: str):
    """`DnaBlock3`: bridge in, dw -> DyReLU -> pw, dw -> DyReLU -> pw (+inner skip), bridge out."""
    identity = block.stride == 1 and block.temporal_stride == 1 and x.shape[-1] == block.channels
    if block.expand1 == 1 or block.expand2 == 0:
        return _conv_alone(x, block, cfg, name, identity), tokens
    if block.bridge:
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
    if block.bridge:
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
        norm=cfg["token_norm"],
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
    activation = cfg["head_activation"]
    x = PooledTokenConcat(cfg["num_cls_tokens"], activation, name="head_pool")([x, tokens])
    x = DenseBN(cfg["head_features"], activation, bn_epsilon=cfg["epsilon"], name="head_fc")(x)
    if cfg["dropout_rate"] > 0:
        x = keras.layers.Dropout(cfg["dropout_rate"], name="head_dropout")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


# ------------------------------------------------------------------------------------------------
# The Edge TPU form (`edgetpu=True`): frame-stacked tensors and the static bridge
# (kvid.models.mobile_former.edgetpu). Same block table and DyReLU, ReLU6 instead of hard-swish.
# ------------------------------------------------------------------------------------------------
def _stacked_conv(x, filters, kernel, strides, frames, cfg, name, activation=None, multiplier=1):
    return StackedConv(
        filters, kernel, strides, num_frames=frames, depth_multiplier=multiplier,
        activation=activation, bn_epsilon=cfg["epsilon"], name=name,
    )(x)  # fmt: skip


def _stacked_bridge_in(x, tokens, frames: int, cfg: dict, name: str):
    tokens = PooledMobile2Former(frames, cfg["bridge_grid"], cfg["dynamic_bridge"], cfg["epsilon"],
                                 name=f"{name}_m2f")([x, tokens])  # fmt: skip
    hidden = cfg["token_dim"] * cfg["ffn_expansion"]
    return TokenMLP(hidden, cfg["epsilon"], name=f"{name}_former")(tokens)


def _stacked_activation(y, tokens, cfg: dict, dynamic: bool, name: str):
    if dynamic:
        return StackedDynamicReLU(cfg["token_dim"], token_index=cfg["hyper_token"],
                                  reduction=cfg["hyper_reduction"], name=name)([y, tokens])  # fmt: skip
    return Activation("relu6", name=name)(y)


def stacked_block(x, tokens, frames: int, block: Block, cfg: dict, name: str):
    """`DnaBlock3` / `DnaBlock` / a conv block of the Edge TPU form; returns (x, tokens, frames)."""
    identity = block.stride == 1 and block.temporal_stride == 1 and x.shape[-1] == block.channels
    out_frames = (frames - 1) // block.temporal_stride + 1
    kernel = (block.temporal_kernel, cfg["kernel_size"], cfg["kernel_size"])
    strides = (block.temporal_stride, block.stride, block.stride)
    dyrelu1, dyrelu2 = cfg["dyrelu"]
    if block.expand1 == 1 or block.expand2 == 0:
        y = _stacked_conv(x, None, (block.temporal_kernel, 3, 3), strides, frames, cfg,
                          f"{name}_conv1", "relu6", block.expand1)  # fmt: skip
        y = _stacked_conv(y, block.channels, 1, 1, out_frames, cfg, f"{name}_conv2")
    else:
        tokens = _stacked_bridge_in(x, tokens, frames, cfg, name)
        if block.kind == "dna3":
            y = _stacked_conv(x, None, kernel, strides, frames, cfg, f"{name}_conv1",
                              multiplier=block.expand1)  # fmt: skip
            y = _stacked_activation(y, tokens, cfg, dyrelu1, f"{name}_act1")
            inner = _stacked_conv(y, block.channels, 1, 1, out_frames, cfg, f"{name}_conv2")
            y = _stacked_conv(inner, None, kernel, 1, out_frames, cfg, f"{name}_conv3",
                              multiplier=block.expand2)  # fmt: skip
            y = _stacked_activation(y, tokens, cfg, dyrelu2, f"{name}_act3")
            y = _stacked_conv(y, block.channels, 1, 1, out_frames, cfg, f"{name}_conv4")
            y = DropPath(cfg["_drop_path"], name=f"{name}_drop_path")(y)
            y = keras.layers.Add(name=f"{name}_inner_add")([y, inner])
        else:
            hidden = round(x.shape[-1] * block.expand1)
            y = _stacked_conv(x, hidden, 1, 1, frames, cfg, f"{name}_conv1")
            y = _stacked_activation(y, tokens, cfg, dyrelu1, f"{name}_act1")
            y = _stacked_conv(y, None, kernel, strides, frames, cfg, f"{name}_conv2")
            y = _stacked_activation(y, tokens, cfg, dyrelu2, f"{name}_act2")
            y = _stacked_conv(y, block.channels, 1, 1, out_frames, cfg, f"{name}_conv3")
        y = GatedFormer2Mobile(out_frames, cfg["token_dim"], cfg["bridge_grid"],
                               name=f"{name}_f2m")([y, tokens])  # fmt: skip
    if identity:
        if block.kind == "dna":
            y = DropPath(cfg["_drop_path"], name=f"{name}_drop_path")(y)
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    return y, tokens, out_frames


def stacked_backbone_tensors(inputs, cfg: dict):
    """The Edge TPU form's stem, blocks and final Mobile->Former on frame-stacked tensors."""
    frames, size = cfg["num_frames"], cfg["image_size"]
    # frame-stacked before the first op: a 5-D activation has 4 dimensions above 1
    x = keras.layers.Reshape((frames * size, size, 3), name="frame_stack")(inputs)
    x = Normalize(cfg["input_mean"], cfg["input_std"], name="normalize")(x)
    tokens = FlatTokens(cfg["num_tokens"], cfg["token_dim"], name="tokens")(x)
    if cfg["stem_temporal_kernel"] > 1:
        x = StackedTemporalStack(cfg["stem_temporal_kernel"], frames, name="stem_frames")(x)
    x = _stacked_conv(x, cfg["stem_channels"], 3, 2, frames, cfg, "stem", "relu6")
    endpoints = {"stem": x}
    num_blocks = len(cfg["blocks"])
    for index, block in enumerate(cfg["blocks"]):
        cfg["_drop_path"] = cfg["drop_path_rate"] * (index + 1) / num_blocks
        x, tokens, frames = stacked_block(x, tokens, frames, block, cfg, f"block{index}")
        endpoints[f"block{index}"] = x
        endpoints[f"block{index}_tokens"] = tokens
    tokens = PooledMobile2Former(frames, cfg["bridge_grid"], cfg["dynamic_bridge"], cfg["epsilon"],
                                 name="final_m2f")([x, tokens])  # fmt: skip
    endpoints["features"] = x
    endpoints["tokens"] = tokens
    cfg["_frames"] = frames
    return x, tokens, endpoints


def stacked_merge_head(features, tokens, cfg: dict, num_classes: int | None):
    """The merge head on frame-stacked features, ReLU6 for hard-swish."""
    pool = StackedPooledTokenConcat
    if num_classes is None:
        return pool(cfg["num_cls_tokens"], cfg["token_dim"], name="pooled")([features, tokens])
    x = _stacked_conv(features, features.shape[-1] * cfg["head_expansion"], 1, 1,
                      cfg["_frames"], cfg, "head_conv", "relu6")  # fmt: skip
    x = pool(cfg["num_cls_tokens"], cfg["token_dim"], name="head_pool")([x, tokens])
    x = DenseBN(cfg["head_features"], "relu6", bn_epsilon=cfg["epsilon"], name="head_fc")(x)
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
    if cfg["edgetpu"]:
        features, tokens, endpoints = stacked_backbone_tensors(inputs, cfg)
        outputs = stacked_merge_head(features, tokens, cfg, num_classes)
    else:
        features, tokens, endpoints = backbone_tensors(inputs, cfg)
        if num_classes is None:
            outputs = PooledTokenConcat(cfg["num_cls_tokens"], None, name="pooled")(
                [features, tokens]
            )
        else:
            outputs = merge_head(features, tokens, cfg, num_classes)
    model = keras.Model(inputs, outputs, name=name)
    # Layer names of the intermediate tensors (for feature extraction and parity checks).
    model.kvid_endpoints = {k: v._keras_history.layer.name for k, v in endpoints.items()}
    return model
