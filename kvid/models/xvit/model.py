"""XViT: a per-frame Vision Transformer whose attention mixes neighbouring frames.

Bulat et al., "Space-time Mixing Attention for Video Transformer", NeurIPS 2021
(arXiv 2106.05968), official code `1adrianb/video-transformers` (class `XVIT`, `VitHead`). Every
frame goes through a ViT; in every layer the keys and values take `C / shift_div` channels from
frame t+1 and as many from t-1 (space-time mixing at the cost of spatial-only attention), and a
one-layer Transformer over the per-frame class tokens (the temporal attention head) classifies
the clip. The paper's summary tokens are optional (`summary_tokens=True`).
"""

from __future__ import annotations

from kvid.backend import keras
from kvid.layers import DropPath, FrameConv, LayerNorm, Normalize, TemporalShift
from kvid.models.registry import merge_preset
from kvid.models.xvit.presets import DEFAULTS, FRAME_POOLS, HEADS, PRESETS
from kvid.models.xvit.space_time_mixing import SpaceTimeMixingAttention, vit_initializer
from kvid.models.xvit.vit import (
    MLP_ACTIVATIONS,
    FeedForward,
    MeanTokens,
    PatchEmbedding,
    PrependClassToken,
    SelectToken,
    SpaceTimeEmbedding,
)


def resolve_config(name: str, overrides: dict) -> dict:
    """The preset's fields with `overrides` applied; unknown keys are a clear error."""
    config = merge_preset(name, DEFAULTS, PRESETS, overrides)
    config["conv_stem"] = tuple(int(c) for c in config["conv_stem"])
    if config["shift_blocks"] is not None:
        config["shift_blocks"] = tuple(int(i) for i in config["shift_blocks"])
    check_config(name, config)
    return config


def check_config(name: str, cfg: dict) -> None:
    size, patch = cfg["image_size"], cfg["patch_size"]
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{name}: image_size must be a positive int, got {size!r}.")
    if size % patch:
        raise ValueError(f"{name}: image_size {size} is not divisible by patch_size {patch}.")
    stem_stride = 2 ** len(cfg["conv_stem"])
    if patch % stem_stride:
        raise ValueError(
            f"{name}: patch_size {patch} is not divisible by the conv_stem stride {stem_stride}."
        )
    for width, heads, field in (
        (cfg["embed_dim"], cfg["num_heads"], "num_heads"),
        (cfg["embed_dim"], cfg["head_heads"], "head_heads"),
    ):
        if width % heads:
            raise ValueError(f"{name}: embed_dim {width} is not divisible by {field} {heads}.")
    frames = cfg["num_frames"]
    for field in ("num_segments", "temporal_length"):
        length = cfg[field]
        if length is not None and (length < 1 or frames % length):
            raise ValueError(f"{name}: num_frames {frames} is not a multiple of {field} {length}.")
    if cfg["shift_div"] and cfg["embed_dim"] // cfg["shift_div"] < 1:
        raise ValueError(f"{name}: shift_div {cfg['shift_div']} leaves no channel to shift.")
    if cfg["frame_pool"] not in FRAME_POOLS:
        raise ValueError(f"{name}: frame_pool {cfg['frame_pool']!r} not in {FRAME_POOLS}.")
    if cfg["mlp_activation"] not in MLP_ACTIVATIONS:
        raise ValueError(
            f"{name}: mlp_activation {cfg['mlp_activation']!r} not in {MLP_ACTIVATIONS}."
        )
    if cfg["head"] not in HEADS:
        raise ValueError(f"{name}: head {cfg['head']!r} not in {HEADS}.")
    blocks = cfg["shift_blocks"]
    if blocks is not None and any(not 0 <= i < cfg["depth"] for i in blocks):
        raise ValueError(f"{name}: shift_blocks {blocks} outside the {cfg['depth']} blocks.")


def transformer_block(
    x,
    num_heads: int,
    mlp_hidden: int,
    epsilon: float,
    name: str,
    shift_div: int = 0,
    num_segments: int | None = None,
    summary_tokens: bool = False,
    qkv_bias: bool = True,
    drop_path: float = 0.0,
    mlp_activation: str = "gelu",
):
    """Pre-norm Transformer block: `x + Attn(LN(x))`, then `x + MLP(LN(x))` (timm `Block`)."""
    y = LayerNorm(epsilon, name=f"{name}_norm1")(x)
    y = SpaceTimeMixingAttention(
        num_heads,
        shift_div=shift_div,
        num_segments=num_segments,
        summary_tokens=summary_tokens,
        qkv_bias=qkv_bias,
        name=f"{name}_attn",
    )(y)
    if drop_path > 0:
        y = DropPath(drop_path, name=f"{name}_drop_path1")(y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = LayerNorm(epsilon, name=f"{name}_norm2")(x)
    y = FeedForward(mlp_hidden, activation=mlp_activation, name=f"{name}_mlp")(y)
    if drop_path > 0:
        y = DropPath(drop_path, name=f"{name}_drop_path2")(y)
    return keras.layers.Add(name=f"{name}_add2")([x, y])


def backbone_tensors(inputs, cfg: dict) -> tuple[keras.KerasTensor, dict]:
    """Per-frame ViT with space-time mixing; returns the per-frame features (class tokens,
    or token averages with `frame_pool="mean"`) and the endpoints."""
    x = Normalize(cfg["input_mean"], cfg["input_std"], name="normalize")(inputs)
    for index, channels in enumerate(cfg["conv_stem"]):
        x = FrameConv(channels, 3, strides=2, activation="relu", name=f"stem{index}")(x)
        if cfg["stem_shift_div"]:
            x = TemporalShift(cfg["stem_shift_div"], name=f"stem{index}_shift")(x)
    patch = cfg["patch_size"] // 2 ** len(cfg["conv_stem"])
    x = PatchEmbedding(cfg["embed_dim"], patch, name="patch_embed")(x)
    endpoints = {"patch_embed": x}
    x = SpaceTimeEmbedding(cfg["temporal_length"], name="embed")(x)
    depth = cfg["depth"]
    shift_blocks = range(depth) if cfg["shift_blocks"] is None else cfg["shift_blocks"]
    for index in range(depth):
        x = transformer_block(
            x,
            cfg["num_heads"],
            int(cfg["embed_dim"] * cfg["mlp_ratio"]),
            cfg["epsilon"],
            f"block{index}",
            shift_div=cfg["shift_div"] if index in shift_blocks else 0,
            num_segments=cfg["num_segments"],
            summary_tokens=cfg["summary_tokens"],
            qkv_bias=cfg["qkv_bias"],
            drop_path=cfg["drop_path_rate"] * index / max(depth - 1, 1),
            mlp_activation=cfg["mlp_activation"],
        )
        endpoints[f"block{index}"] = x
    x = LayerNorm(cfg["epsilon"], name="norm")(x)
    endpoints["norm"] = x
    if cfg["frame_pool"] == "class_token":
        features = SelectToken(0, name="frame_features")(x)  # (batch, frames, C)
    else:
        features = MeanTokens(name="frame_features")(x)
    endpoints["frame_features"] = features
    return features, endpoints


def temporal_attention_head(features, cfg: dict, num_classes: int, endpoints: dict):
    """The reference `VitHead`: a class token and Transformer layer(s) over the frames' tokens,
    then LN -> fc -> GELU -> dropout -> fc on the class token."""
    x = PrependClassToken(name="head_cls")(features)
    width = features.shape[-1]
    for index in range(cfg["head_depth"]):
        x = transformer_block(
            x, cfg["head_heads"], 4 * width, cfg["head_epsilon"], f"head_block{index}",
            qkv_bias=False, mlp_activation=cfg["mlp_activation"],
        )  # fmt: skip
    endpoints["temporal_encoder"] = x
    x = SelectToken(0, name="head_token")(x)
    x = LayerNorm(cfg["head_epsilon"], name="head_norm")(x)
    x = keras.layers.Dense(
        cfg["head_mlp_dim"],
        activation=cfg["mlp_activation"],
        name="head_fc",
        kernel_initializer=vit_initializer(),
    )(x)
    if cfg["dropout_rate"] > 0:
        x = keras.layers.Dropout(cfg["dropout_rate"], name="head_dropout")(x)
    return keras.layers.Dense(num_classes, name="logits", kernel_initializer=vit_initializer())(x)


def mean_head(features, cfg: dict, num_classes: int):
    """Average of the per-frame features, dropout, linear (the reference `avg` consensus:
    the linear layer commutes with the average)."""
    x = keras.layers.GlobalAveragePooling1D(name="pooled")(features)
    if cfg["dropout_rate"] > 0:
        x = keras.layers.Dropout(cfg["dropout_rate"], name="head_dropout")(x)
    return keras.layers.Dense(num_classes, name="logits", kernel_initializer=vit_initializer())(x)


def input_shape(cfg: dict) -> tuple[int, ...]:
    size = cfg["image_size"]
    return (cfg["num_frames"], size, size, 3)


def build(name: str, cfg: dict, num_classes: int | None) -> keras.Model:
    """The classifier (or, with `num_classes=None`, the backbone's clip features: the average of
    the per-frame features) as one flat functional graph."""
    inputs = keras.Input(input_shape(cfg), name="video")
    features, endpoints = backbone_tensors(inputs, cfg)
    if num_classes is None:
        outputs = keras.layers.GlobalAveragePooling1D(name="pooled")(features)
    elif cfg["head"] == "temporal_attention":
        outputs = temporal_attention_head(features, cfg, num_classes, endpoints)
    else:
        outputs = mean_head(features, cfg, num_classes)
    model = keras.Model(inputs, outputs, name=name)
    model.kvid_endpoints = {k: v._keras_history.layer.name for k, v in endpoints.items()}
    return model
