"""Reference Mobile-Former (`AAboys/MobileFormer`) configuration and weights -> kvid model."""

from __future__ import annotations

from kvid.models.mobile_former.model import build
from kvid.models.mobile_former.presets import DEFAULTS, Block
from kvid.models.porting import (
    StateDict,
    conv_kernel,
    depthwise_kernel,
    load_batch_norm,
    load_dense,
    load_layer_norm,
)

# Reference constructor defaults (MobileFormer.__init__) for arguments a config may omit.
_REFERENCE_DEFAULTS = dict(
    width_mult=1.0, stem_chs=16, num_features=1280, dw_conv="dw", kernel_size=(3, 3),
    group_num=1, se_flag=[2, 0, 2, 0], hyper_token_id=0, hyper_reduction_ratio=4,
    token_dim=128, token_num=6, cls_token_num=1, last_act="relu", last_exp=6, gbr_type="mlp",
    gbr_dynamic=[False, False, False], gbr_norm="post", gbr_ffn=False, gbr_before_skip=False,
    attn_num_heads=2, remove_proj_local=True, img_size=224,
)  # fmt: skip


def _make_divisible(value: float, divisor: int) -> int:
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


def _unsupported(name: str, value, supported) -> ValueError:
    return ValueError(
        f"from_reference(mobile_former): {name}={value!r} is not supported (supported: {supported})."
    )


def reference_config(kwargs: dict, image_size: int | None, input_mean, input_std) -> dict:
    """Translates reference constructor arguments into kvid Mobile-Former fields."""
    ref = dict(_REFERENCE_DEFAULTS, **kwargs)
    checks = {
        "dw_conv": ("dw",), "gbr_type": ("attn",), "gbr_norm": ("post",), "last_act": ("relu",),
        "remove_proj_local": (True,), "gbr_ffn": (True,),
    }  # fmt: skip
    for key, supported in checks.items():
        if ref[key] not in supported:
            raise _unsupported(key, ref[key], supported)
    se_flag = list(ref["se_flag"])
    if se_flag[0] not in (0, 2) or se_flag[2] not in (0, 2) or se_flag[3] != 0:
        raise _unsupported("se_flag", se_flag, "[0 or 2, *, 0 or 2, 0]")
    if list(ref["gbr_dynamic"])[1:] != [False, False]:
        raise _unsupported("gbr_dynamic", ref["gbr_dynamic"], "[bool, False, False]")
    k1, k2 = ref["kernel_size"]
    if k1 != k2:
        raise _unsupported("kernel_size", ref["kernel_size"], "equal sizes")
    if not 0 <= ref["hyper_token_id"] < ref["token_num"]:  # -1: slopes from attention maps
        raise _unsupported("hyper_token_id", ref["hyper_token_id"], f"0..{ref['token_num'] - 1}")
    if ref.get("in_chans", 3) != 3:
        raise _unsupported("in_chans", ref["in_chans"], "3 (RGB video)")
    if ref["cls_token_num"] < 1:
        raise _unsupported("cls_token_num", ref["cls_token_num"], ">= 1")
    width = ref["width_mult"]
    divisor = 8 if width > 1.01 else 4
    blocks = []
    for index, (kind, e1, channels, repeats, stride, e2) in enumerate(ref["block_args"]):
        channels = _make_divisible(channels * width, divisor if index > 0 else 4)
        kind = {"DnaBlock3": "dna3", "DnaBlock": "dna"}[kind]
        for repeat in range(repeats):
            blocks.append(Block(kind, e1, channels, stride if repeat == 0 else 1, e2))
    return dict(
        num_frames=1,
        image_size=image_size or ref["img_size"],
        image_input=True,
        input_mean=tuple(input_mean),
        input_std=tuple(input_std),
        blocks=tuple(blocks),
        stem_channels=ref["stem_chs"],
        num_tokens=ref["token_num"],
        token_dim=ref["token_dim"],
        groups=ref["group_num"],
        kernel_size=k1,
        bridge_heads=ref["attn_num_heads"],
        hyper_reduction=ref["hyper_reduction_ratio"],
        hyper_token=ref["hyper_token_id"],
        dynamic_bridge=bool(ref["gbr_dynamic"][0]),
        bridge_before_skip=bool(ref["gbr_before_skip"]),
        head_expansion=ref["last_exp"],
        head_features=ref["num_features"],
        num_cls_tokens=ref["cls_token_num"],
        dyrelu=(se_flag[0] == 2, se_flag[2] == 2),
    )


def _load_bridge(model, sd: StateDict, name: str, prefix: str) -> None:
    m2f = model.get_layer(f"{name}_m2f")
    load_dense(m2f.q, sd, f"{prefix}.local_global.q")
    if m2f.dynamic_gate:
        load_dense(m2f.alpha, sd, f"{prefix}.local_global.alpha.0")
    load_dense(m2f.proj, sd, f"{prefix}.local_global.proj")
    load_layer_norm(m2f.norm, sd, f"{prefix}.local_global.layer_norm")
    former = model.get_layer(f"{name}_former")
    load_dense(former.q, sd, f"{prefix}.global_block.q")
    load_dense(former.proj, sd, f"{prefix}.global_block.channel_mlp")
    load_layer_norm(former.norm1, sd, f"{prefix}.global_block.layer_norm")
    load_dense(former.fc1, sd, f"{prefix}.global_block.ffn.0")
    load_dense(former.fc2, sd, f"{prefix}.global_block.ffn.2")
    load_layer_norm(former.norm2, sd, f"{prefix}.global_block.ffn_norm")
    f2m = model.get_layer(f"{name}_f2m")
    load_dense(f2m.k, sd, f"{prefix}.global_local.k")
    load_dense(f2m.proj, sd, f"{prefix}.global_local.proj")


def _load_conv(layer, sd: StateDict, conv_prefix: str, bn_prefix: str, in_channels: int) -> None:
    """Loads a FrameConv or a (temporal-free) Conv2Plus1D and its batch norm."""
    weight = sd.take(f"{conv_prefix}.weight")
    if hasattr(layer, "spatial"):
        layer.spatial.set_weights([depthwise_kernel(weight, in_channels)])
    elif layer.depthwise:
        layer.conv.set_weights([depthwise_kernel(weight, in_channels)])
    else:
        layer.conv.set_weights([conv_kernel(weight)])
    load_batch_norm(layer.bn, sd, bn_prefix)


def _load_hyper(model, sd: StateDict, name: str, prefix: str) -> None:
    layer = model.get_layer(name)
    if hasattr(layer, "fc1"):  # DynamicReLU (a plain ReLU6 has no weights)
        load_dense(layer.fc1, sd, f"{prefix}.hyper.0")
        load_dense(layer.fc2, sd, f"{prefix}.hyper.2")


def load_weights(model, cfg: dict, sd: StateDict) -> None:
    """Copies reference weights into a kvid Mobile-Former built from `reference_config`."""
    model.get_layer("tokens").set_weights([sd.take("tokens.weight")])
    _load_conv(model.get_layer("stem"), sd, "stem.0", "stem.1", 3)
    channels = cfg["stem_channels"]
    for index, block in enumerate(cfg["blocks"]):
        name, prefix = f"block{index}", f"features.{index}"
        layer = model.get_layer
        if block.expand1 == 1 or block.expand2 == 0:
            _load_conv(layer(f"{name}_conv1"), sd, f"{prefix}.conv.0", f"{prefix}.conv.1", channels)
            _load_conv(layer(f"{name}_conv2"), sd, f"{prefix}.conv.4", f"{prefix}.conv.5", 0)
        elif block.kind == "dna3":
            _load_bridge(model, sd, name, prefix)
            _load_conv(
                layer(f"{name}_conv1"), sd, f"{prefix}.conv1.0", f"{prefix}.conv1.1", channels
            )
            _load_hyper(model, sd, f"{name}_act1", f"{prefix}.hyper1")
            _load_conv(layer(f"{name}_conv2"), sd, f"{prefix}.conv2.0", f"{prefix}.conv2.1", 0)
            _load_conv(
                layer(f"{name}_conv3"), sd, f"{prefix}.conv3.0", f"{prefix}.conv3.1", block.channels
            )
            _load_hyper(model, sd, f"{name}_act3", f"{prefix}.hyper3")
            _load_conv(layer(f"{name}_conv4"), sd, f"{prefix}.conv4.0", f"{prefix}.conv4.1", 0)
        else:
            hidden = round(channels * block.expand1)
            _load_bridge(model, sd, name, prefix)
            _load_conv(layer(f"{name}_conv1"), sd, f"{prefix}.conv1.0", f"{prefix}.conv1.1", 0)
            _load_hyper(model, sd, f"{name}_act1", f"{prefix}.hyper1")
            _load_conv(layer(f"{name}_conv2"), sd, f"{prefix}.conv2.0", f"{prefix}.conv2.1", hidden)
            _load_hyper(model, sd, f"{name}_act2", f"{prefix}.hyper2")
            _load_conv(layer(f"{name}_conv3"), sd, f"{prefix}.conv3.0", f"{prefix}.conv3.1", 0)
        channels = block.channels
    final = model.get_layer("final_m2f")
    load_dense(final.q, sd, "local_global.q")
    if final.dynamic_gate:
        load_dense(final.alpha, sd, "local_global.alpha.0")
    load_dense(final.proj, sd, "local_global.proj")
    load_layer_norm(final.norm, sd, "local_global.layer_norm")
    _load_conv(model.get_layer("head_conv"), sd, "classifier.conv.1", "classifier.conv.2", 0)
    head_fc = model.get_layer("head_fc")
    load_dense(head_fc.dense, sd, "classifier.fc.0")
    load_batch_norm(head_fc.bn, sd, "classifier.fc.1")
    load_dense(model.get_layer("logits"), sd, "classifier.classifier.1")
    sd.check_all_used()


def build_from_reference(reference, sd: StateDict, image_size, num_frames, input_mean, input_std):
    kwargs = dict(reference["constructor"]["kwargs"])
    num_classes = kwargs.pop("num_classes", 1000)
    cfg = reference_config(kwargs, image_size, input_mean, input_std)
    cfg = dict(DEFAULTS, **cfg)
    model = build("mobile_former_reference", cfg, num_classes)
    load_weights(model, cfg, sd)
    return model
