"""Reference XViT (`1adrianb/video-transformers`, class `XVIT`) configuration and weights -> kvid.

The reference configuration is the `constructor` entry of the golden JSON: the keyword
arguments the ViT received (`vit_kwargs_received`), the ViT's `num_frames` (`vit_num_frames`,
the length of its temporal embedding) and the SlowFast config keys (`cfg`).
"""

from __future__ import annotations

from kvid.models.porting import StateDict, conv_kernel, load_dense, load_layer_norm
from kvid.models.xvit.model import build, check_config
from kvid.models.xvit.presets import DEFAULTS

# SlowFast defaults (slowfast/config/defaults.py) for keys a configuration may omit.
_CFG_DEFAULTS = {
    "MODEL.DROPOUT_RATE": 0.5,
    "XVIT.NUM_SEGMENTS": 8,
    "XVIT.SHIFT_DIV": 8,
    "XVIT.LOCATIONS_LIST": list(range(15)),
    "XVIT.CONSENSUS_TYPE": "vit",
    "XVIT.USE_XVIT": True,
    "XVIT.BEFORE_SOFTMAX": True,
    "XVIT.BACKBONE.NORM_LAYER": "LN",
    "TEMPORAL_HEAD.NUM_ATTENTION_HEADS": 12,
    "TEMPORAL_HEAD.NUM_HIDDEN_LAYERS": 1,
    "TEMPORAL_HEAD.MLP_DIM": 768,
}
# VisionTransformer constructor defaults.
_VIT_DEFAULTS = dict(
    img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
    mlp_ratio=4.0, qkv_bias=True, qk_scale=None, representation_size=None,
)  # fmt: skip


def _unsupported(name: str, value, supported) -> ValueError:
    return ValueError(
        f"from_reference(xvit): {name}={value!r} is not supported (supported: {supported})."
    )


def _norm_eps(norm_layer) -> float:
    """The epsilon of the reference `norm_layer` (a `partial(nn.LayerNorm, eps=...)` string)."""
    text = str(norm_layer)
    if "LayerNorm" not in text:
        raise _unsupported("norm_layer", norm_layer, "LayerNorm")
    if "eps=" in text:
        return float(text.split("eps=")[1].split(")")[0].split(",")[0])
    return 1e-6  # VisionTransformer's own default


def reference_config(constructor: dict, num_frames: int | None, input_mean, input_std) -> dict:
    """Translates the reference `XVIT(cfg)` / `VisionTransformer` arguments into kvid fields."""
    vit = dict(_VIT_DEFAULTS, **constructor.get("vit_kwargs_received", {}))
    cfg = dict(_CFG_DEFAULTS, **constructor.get("cfg", {}))
    if cfg["XVIT.BACKBONE.NORM_LAYER"] != "LN":
        raise _unsupported("XVIT.BACKBONE.NORM_LAYER", cfg["XVIT.BACKBONE.NORM_LAYER"], "LN")
    if not cfg["XVIT.BEFORE_SOFTMAX"]:
        raise _unsupported("XVIT.BEFORE_SOFTMAX", False, "True")
    if cfg["XVIT.CONSENSUS_TYPE"] not in ("vit", "avg"):
        raise _unsupported("XVIT.CONSENSUS_TYPE", cfg["XVIT.CONSENSUS_TYPE"], "vit, avg")
    for key, supported in (("in_chans", 3), ("qk_scale", None), ("representation_size", None)):
        if vit[key] != supported:
            raise _unsupported(key, vit[key], supported)
    if vit["img_size"] != 224:  # the reference bicubically resizes its 224 position embedding
        raise _unsupported("img_size", vit["img_size"], "224")
    frames = num_frames or int(cfg.get("DATA.NUM_FRAMES", 8))
    temporal_length = int(constructor.get("vit_num_frames", 8))
    segments = int(cfg["XVIT.NUM_SEGMENTS"])
    # The reference folds frames into the batch and regroups them by these periods; a period
    # that does not divide the clip would mix clips of a batch, which no kvid model reproduces.
    for name, period in (("vit_num_frames", temporal_length), ("XVIT.NUM_SEGMENTS", segments)):
        if frames % period:
            raise _unsupported(name, period, f"a divisor of the {frames} frames")
    depth = int(vit["depth"])
    shift_blocks = tuple(i for i in cfg["XVIT.LOCATIONS_LIST"] if 0 <= i < depth)
    use_shift = bool(cfg["XVIT.USE_XVIT"]) and shift_blocks
    embed_dim = int(vit["embed_dim"])
    if cfg["XVIT.CONSENSUS_TYPE"] == "vit" and cfg.get("TEMPORAL_HEAD.HIDDEN_DIM", embed_dim) != (
        embed_dim
    ):
        raise _unsupported("TEMPORAL_HEAD.HIDDEN_DIM", cfg["TEMPORAL_HEAD.HIDDEN_DIM"], embed_dim)
    return dict(
        num_frames=frames,
        image_size=224,
        input_mean=tuple(input_mean),
        input_std=tuple(input_std),
        patch_size=int(vit["patch_size"]),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(vit["num_heads"]),
        mlp_ratio=float(vit["mlp_ratio"]),
        qkv_bias=bool(vit["qkv_bias"]),
        shift_div=int(cfg["XVIT.SHIFT_DIV"]) if use_shift else 0,
        shift_blocks=shift_blocks if use_shift else None,
        num_segments=segments,
        temporal_length=temporal_length,
        summary_tokens=False,
        head="temporal_attention" if cfg["XVIT.CONSENSUS_TYPE"] == "vit" else "mean",
        head_heads=int(cfg["TEMPORAL_HEAD.NUM_ATTENTION_HEADS"]),
        head_depth=int(cfg["TEMPORAL_HEAD.NUM_HIDDEN_LAYERS"]),
        head_mlp_dim=int(cfg["TEMPORAL_HEAD.MLP_DIM"]),
        dropout_rate=float(cfg["MODEL.DROPOUT_RATE"]),
        drop_path_rate=0.0,
        epsilon=_norm_eps(vit.get("norm_layer")),
        head_epsilon=1e-5,
    )


def _load_block(model, sd: StateDict, name: str, prefix: str, qkv_bias: bool) -> None:
    load_layer_norm(model.get_layer(f"{name}_norm1"), sd, f"{prefix}.norm1")
    attn = model.get_layer(f"{name}_attn")
    weights = [sd.take(f"{prefix}.attn.qkv.weight").T]
    if qkv_bias:
        weights.append(sd.take(f"{prefix}.attn.qkv.bias"))
    attn.qkv.set_weights(weights)
    load_dense(attn.proj, sd, f"{prefix}.attn.proj")
    load_layer_norm(model.get_layer(f"{name}_norm2"), sd, f"{prefix}.norm2")
    mlp = model.get_layer(f"{name}_mlp")
    load_dense(mlp.fc1, sd, f"{prefix}.mlp.fc1")
    load_dense(mlp.fc2, sd, f"{prefix}.mlp.fc2")


def load_weights(model, cfg: dict, sd: StateDict) -> None:
    """Copies reference weights into a kvid XViT built from `reference_config`."""
    base = "base_model"
    model.get_layer("patch_embed").proj.set_weights(
        [conv_kernel(sd.take(f"{base}.patch_embed.proj.weight")),
         sd.take(f"{base}.patch_embed.proj.bias")]
    )  # fmt: skip
    embed = model.get_layer("embed")
    embed.set_weights(
        [
            sd.take(f"{base}.cls_token").reshape(-1),
            sd.take(f"{base}.pos_embed")[0],
            sd.take(f"{base}.temp_embed")[0, :, 0],
        ]
    )
    for index in range(cfg["depth"]):
        _load_block(model, sd, f"block{index}", f"{base}.blocks.{index}", cfg["qkv_bias"])
    load_layer_norm(model.get_layer("norm"), sd, f"{base}.norm")
    if cfg["head"] == "temporal_attention":
        model.get_layer("head_cls").set_weights([sd.take("consensus.cls_token").reshape(-1)])
        for index in range(cfg["head_depth"]):
            prefix = f"consensus.temporal_encoder.{index}"
            _load_block(model, sd, f"head_block{index}", prefix, qkv_bias=False)
        load_layer_norm(model.get_layer("head_norm"), sd, "consensus.mlp_head.0")
        load_dense(model.get_layer("head_fc"), sd, "consensus.mlp_head.1")
        load_dense(model.get_layer("logits"), sd, "consensus.mlp_head.4")
        # `new_fc` exists in the reference state_dict but the `vit` consensus never uses it
        for key in ("new_fc.weight", "new_fc.bias"):
            if sd.has(key):
                sd.take(key)
    elif sd.has("new_fc.weight"):  # dropout > 0: base_model.head is a Dropout, new_fc classifies
        load_dense(model.get_layer("logits"), sd, "new_fc")
    else:
        load_dense(model.get_layer("logits"), sd, f"{base}.head")
    sd.check_all_used()


def build_from_reference(reference, sd: StateDict, image_size, num_frames, input_mean, input_std):
    constructor = reference["constructor"]
    if image_size not in (None, 224):
        raise _unsupported("image_size", image_size, "224")
    cfg = dict(DEFAULTS, **reference_config(constructor, num_frames, input_mean, input_std))
    check_config("xvit_reference", cfg)
    num_classes = int(constructor.get("cfg", {}).get("MODEL.NUM_CLASSES", 400))
    model = build("xvit_reference", cfg, num_classes)
    load_weights(model, cfg, sd)
    return model
