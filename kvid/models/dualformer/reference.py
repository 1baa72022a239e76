"""Reference DualFormer (`sail-sg/dualformer`) configuration and weights -> kvid model.

The reference is mmaction's Recognizer3D: `backbone` (`DualFormer`) and `cls_head` (`I3DHead`),
with the state_dict names of mmaction checkpoints (`backbone.*`, `cls_head.fc_cls.*`).
"""

from __future__ import annotations

from kvid.models.dualformer.model import build, check_config
from kvid.models.dualformer.peg import peg_kernel_from_conv3d
from kvid.models.dualformer.presets import DEFAULTS
from kvid.models.dualformer.tubelet_conv import conv3d_kernel_to_tubelet
from kvid.models.porting import StateDict, load_batch_norm, load_dense, load_layer_norm

# Reference constructor defaults (DualFormer.__init__) for arguments a config may omit.
_REFERENCE_DEFAULTS = dict(
    video_size=(32, 224, 224), patch_size=(2, 4, 4), in_chans=3, embed_dims=[64, 128, 256, 512],
    num_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4], qkv_bias=False, qk_scale=None,
    depths=[2, 2, 10, 4], local_sizes=[(8, 7, 7)] * 3,
    fine_pysizes=[(8, 7, 7)] * 4, coarse_pysizes=[(4, 4, 4)] * 4, temporal_pooling=[-1, 1, 1, 1],
)  # fmt: skip
# Only stages 0 and 1 of the reference have a coarse pyramid level (GPAttention's `stage < 2`).
_COARSE_STAGES = 2


def _unsupported(name: str, value, supported) -> ValueError:
    return ValueError(
        f"from_reference(dualformer): {name}={value!r} is not supported (supported: {supported})."
    )


def reference_config(kwargs: dict, image_size, num_frames, input_mean, input_std) -> dict:
    """Translates reference backbone arguments into kvid DualFormer fields."""
    ref = dict(_REFERENCE_DEFAULTS, **kwargs)
    if ref["in_chans"] != 3:
        raise _unsupported("in_chans", ref["in_chans"], "3 (RGB video)")
    frames, height, width = ref["video_size"]
    if height != width:
        raise _unsupported("video_size", ref["video_size"], "square frames")
    if image_size is not None and image_size != height or num_frames not in (None, frames):
        # the reference derives its pyramid kernels from video_size: that is the input it takes
        raise ValueError(
            f"from_reference(dualformer): the reference was built for video_size "
            f"{tuple(ref['video_size'])}; build it with that input."
        )
    stages = len(ref["depths"])
    if stages > 4:
        raise _unsupported("depths", ref["depths"], "at most 4 stages")
    p_t, p_h, p_w = ref["patch_size"]
    if p_h != p_w:
        raise _unsupported("patch_size", ref["patch_size"], "square spatial patches")
    temporal = [p_t] + [int(t) for t in ref["temporal_pooling"][1:stages]]
    coarse = [tuple(c) for c in ref["coarse_pysizes"][:stages]]
    return dict(
        num_frames=frames,
        image_size=height,
        input_mean=tuple(input_mean),
        input_std=tuple(input_std),
        patch_size=(p_t, p_h, p_w),
        embed_dims=tuple(ref["embed_dims"][:stages]),
        num_heads=tuple(ref["num_heads"][:stages]),
        depths=tuple(ref["depths"]),
        mlp_ratios=tuple(ref["mlp_ratios"][:stages]),
        temporal_strides=tuple(temporal),
        window_sizes=tuple(tuple(w) for w in ref["local_sizes"][:stages]),
        fine_pyramid_sizes=tuple(tuple(f) for f in ref["fine_pysizes"][:stages]),
        coarse_pyramid_sizes=tuple(c if s < _COARSE_STAGES else None for s, c in enumerate(coarse)),
        qkv_bias=bool(ref["qkv_bias"]),
        qk_scale=ref["qk_scale"],
        drop_path_rate=0.0,
    )


def _load_tubelet(layer, sd: StateDict, prefix: str, depthwise: bool) -> None:
    weights = [conv3d_kernel_to_tubelet(sd.take(f"{prefix}.weight"), depthwise)]
    weights.append(sd.take(f"{prefix}.bias"))
    layer.conv.set_weights(weights)


def _load_split_dense(layers, sd: StateDict, prefix: str) -> None:
    """A fused reference Linear (`qkv` or `kv`, split qkv-major) into separate kvid Dense layers."""
    weight = sd.take(f"{prefix}.weight").T  # (in, parts * C)
    bias = sd.take(f"{prefix}.bias") if sd.has(f"{prefix}.bias") else None
    width = weight.shape[1] // len(layers)
    for part, layer in enumerate(layers):
        columns = slice(part * width, (part + 1) * width)
        layer.set_weights([weight[:, columns]] + ([bias[columns]] if bias is not None else []))


def load_weights(model, cfg: dict, sd: StateDict) -> None:
    """Copies reference weights into a kvid DualFormer built from `reference_config`."""
    for stage, depth in enumerate(cfg["depths"]):
        embed = f"backbone.patch_embeds.{stage}"
        _load_tubelet(model.get_layer(f"stage{stage}_embed"), sd, f"{embed}.proj", False)
        load_layer_norm(model.get_layer(f"stage{stage}_embed_norm"), sd, f"{embed}.norm")
        for index in range(depth):
            name, prefix = f"stage{stage}_layer{index}", f"backbone.blocks.{stage}.{index}"
            load_layer_norm(model.get_layer(f"{name}_norm1"), sd, f"{prefix}.norm1")
            load_layer_norm(model.get_layer(f"{name}_norm2"), sd, f"{prefix}.norm2")
            load_dense(model.get_layer(f"{name}_fc1"), sd, f"{prefix}.mlp.fc1")
            load_dense(model.get_layer(f"{name}_fc2"), sd, f"{prefix}.mlp.fc2")
            attn = model.get_layer(f"{name}_attn")
            load_dense(attn.proj, sd, f"{prefix}.attn.proj")
            if index % 2 == 0:
                _load_split_dense([attn.q, attn.k, attn.v], sd, f"{prefix}.attn.qkv")
                continue
            load_dense(attn.q, sd, f"{prefix}.attn.q")
            _load_split_dense([attn.k, attn.v], sd, f"{prefix}.attn.kv")
            if attn.fine is not None:
                _load_tubelet(attn.fine, sd, f"{prefix}.attn.sr", True)
                load_layer_norm(attn.norm, sd, f"{prefix}.attn.norm")
            if attn.coarse_first is not None:
                _load_tubelet(attn.coarse_first, sd, f"{prefix}.attn.lr.0", True)
                load_batch_norm(attn.coarse_bn, sd, f"{prefix}.attn.lr.1")
                _load_tubelet(attn.coarse_second, sd, f"{prefix}.attn.lr.3", True)
        peg = model.get_layer(f"stage{stage}_peg")
        peg.spatial.set_weights(
            [peg_kernel_from_conv3d(sd.take(f"backbone.pos_block.{stage}.proj.0.weight"))]
        )
        peg.bias.assign(sd.take(f"backbone.pos_block.{stage}.proj.0.bias"))
    load_layer_norm(model.get_layer("norm"), sd, "backbone.norm")
    if "logits" in [layer.name for layer in model.layers]:
        load_dense(model.get_layer("logits"), sd, "cls_head.fc_cls")
    sd.check_all_used()


def build_from_reference(reference, sd: StateDict, image_size, num_frames, input_mean, input_std):
    constructor = reference["constructor"]
    kwargs = dict(constructor.get("backbone_kwargs", constructor.get("kwargs", {})))
    head = constructor.get("head_kwargs")
    num_classes = head["num_classes"] if head else None
    kwargs.pop("num_classes", None)  # the backbone's, unused: the head's is the classifier's
    cfg = reference_config(kwargs, image_size, num_frames, input_mean, input_std)
    cfg = dict(DEFAULTS, **cfg)
    check_config("dualformer_reference", cfg, exact_pyramids=False)
    model = build("dualformer_reference", cfg, num_classes)
    load_weights(model, cfg, sd)
    return model
