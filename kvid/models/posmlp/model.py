"""PosMLP-Video: token mixing by learned relative-position biases inside gated MLP branches.

PosMLP-Video (Hao, Zhou et al., IJCV 2024, arXiv 2407.02934; code `zhouds1918/PosMLP_Video`,
`slowfast/models/posmlp.py`): a four-stage pyramid (a two-conv stem to 1/4 resolution, stride-2
downsampling between stages, no temporal downsampling) of blocks built from positional gating
units (`kvid.models.posmlp.positional_gating`). The token mixing is static, so the whole network is
convolutions, depthwise convolutions and elementwise ops in its deploy form.

Block types (`block_type`). The released code has one; the paper names three spatio-temporal
factorised blocks whose definitions could not be read, so the other two are this reading of them:
- "parallel" (released code, `PermutatorBlock`): `x + PoSGU(x) + PoTGU(x)`, both branches on the
  same input, no channel MLP.
- "sequential": `x = x + PoSGU(x)`, then `x = x + PoTGU(x)` (spatial first, each with its own
  residual, like the divided space-time blocks of video transformers).
- "joint": `x + PoSTGU(x)`, one unit mixing a local `t x w x w` window.

Tensors between layers are frame-stacked, `(batch, frames * height, width, channels)`: at batch 1
no tensor has more than 3 dimensions above 1, as the Edge TPU requires. The `*_edgetpu` presets
follow docs/design.md section 3 throughout: batch norm instead of LayerNorm, ReLU6 instead of GELU,
1x1 convolutions for every linear map on 4-D tensors, depthwise-form mixing with frames/windows
sliced out (no transpose, no batch matmul), kernel-equals-stride patch convolutions (no
overlapping kernel across frames), no softmax.
"""

from __future__ import annotations

from kvid.backend import keras
from kvid.layers import DropPath, FrameConv, LayerNorm, Normalize
from kvid.models.posmlp.positional_gating import (
    FORMS,
    LAYOUTS,
    NORMS,
    PatchMerge,
    PoSGU,
    PositionalGating,
    PoSTGU,
    PoTGU,
)
from kvid.models.posmlp.presets import (
    BLOCK_TYPES,
    DEFAULTS,
    PRESETS,
    STEMS,
)
from kvid.models.registry import merge_preset


def resolve_config(name: str, overrides: dict) -> dict:
    """The preset's fields with `overrides` applied; unknown keys are a clear error."""
    config = merge_preset(name, DEFAULTS, PRESETS, overrides)
    for key in ("embed_dims", "depths", "window_sizes", "temporal_windows", "gammas", "downsample"):
        config[key] = tuple(config[key])
    check_config(name, config)
    return config


def stage_sizes(config: dict) -> list[int]:
    """Feature-map side of every stage (1/4 after the stem, halved at each transition)."""
    size = config["image_size"] // 4
    sizes = [size]
    for down in config["downsample"]:
        size = size // 2 if down else size
        sizes.append(size)
    return sizes


def check_config(name: str, config: dict) -> None:
    """Raises a ValueError naming the stage and field of any size that does not tile."""
    choices = dict(block_type=BLOCK_TYPES, form=FORMS, layout=LAYOUTS, norm=NORMS, stem=STEMS)
    choices["activation"] = ("gelu", "relu6")
    for field, valid in choices.items():
        if config[field] not in valid:
            raise ValueError(f"{name}: {field}={config[field]!r} not in {valid}.")
    for field in ("embed_dims", "depths", "window_sizes", "temporal_windows", "gammas"):
        if len(config[field]) != 4:
            raise ValueError(f"{name}: {field} needs 4 values (one per stage).")
    if config["frame_stacked_input"] and config["stem"] != "patch":
        raise ValueError(f"{name}: frame_stacked_input needs stem='patch'.")
    if len(config["downsample"]) != 3:
        raise ValueError(f"{name}: downsample needs 3 values (transitions to stages 2-4).")
    size, frames = config["image_size"], config["num_frames"]
    if not isinstance(size, int) or size % (4 * 2 ** sum(config["downsample"])):
        raise ValueError(f"{name}: image_size {size} is not divisible by the total stride.")
    for stage in range(3):
        dims = config["embed_dims"]
        if not config["downsample"][stage] and dims[stage] != dims[stage + 1]:
            raise ValueError(
                f"{name}: stage {stage + 2} changes embed_dims without a downsample transition."
            )
    for stage, side in enumerate(stage_sizes(config)):
        window = config["window_sizes"][stage]
        if window is not None and side % window:
            raise ValueError(
                f"{name}: window_sizes[{stage}]={window} does not tile the {side}x{side} map of "
                f"stage {stage + 1}."
            )
        t_window = config["temporal_windows"][stage]
        if t_window is not None and frames % t_window:
            raise ValueError(
                f"{name}: temporal_windows[{stage}]={t_window} does not tile num_frames={frames}."
            )
        if config["embed_dims"][stage] % config["gammas"][stage]:
            raise ValueError(
                f"{name}: embed_dims[{stage}]={config['embed_dims'][stage]} is not divisible by "
                f"gammas[{stage}]={config['gammas'][stage]}."
            )
        if config["depths"][stage] < 1:
            raise ValueError(f"{name}: depths[{stage}] must be >= 1.")


def _unit_kwargs(cfg: dict, stage: int) -> dict:
    return dict(
        num_frames=cfg["num_frames"],
        gamma=cfg["gammas"][stage],
        form=cfg["form"],
        layout=cfg["layout"],
        norm=cfg["norm"],
        activation=cfg["activation"],
        epsilon=cfg["epsilon"],
    )


def _residual(x, branch, rate: float, name: str):
    if rate > 0:
        branch = DropPath(rate, name=f"{name}_drop_path")(branch)
    return keras.layers.Add(name=f"{name}_add")([x, branch])


def block(x, cfg: dict, stage: int, rate: float, name: str):
    """One PosMLP block of `cfg["block_type"]` (see the module docstring)."""
    unit = _unit_kwargs(cfg, stage)
    window, t_window = cfg["window_sizes"][stage], cfg["temporal_windows"][stage]
    kind = cfg["block_type"]
    if kind == "parallel":
        spatial = PoSGU(window_size=window, name=f"{name}_spatial", **unit)(x)
        temporal = PoTGU(temporal_window=t_window, name=f"{name}_temporal", **unit)(x)
        branches = keras.layers.Add(name=f"{name}_branches")([spatial, temporal])
        return _residual(x, branches, rate, name)
    if kind == "sequential":
        spatial = PoSGU(window_size=window, name=f"{name}_spatial", **unit)(x)
        x = _residual(x, spatial, rate, f"{name}_spatial")
        temporal = PoTGU(temporal_window=t_window, name=f"{name}_temporal", **unit)(x)
        return _residual(x, temporal, rate, f"{name}_temporal")
    joint = PoSTGU(temporal_window=t_window, window_size=window, name=f"{name}_joint", **unit)(x)
    return _residual(x, joint, rate, name)


def _norm(cfg: dict, name: str):
    if cfg["norm"] == "layer":
        return LayerNorm(cfg["epsilon"], name=name)
    return keras.layers.BatchNormalization(epsilon=cfg["epsilon"], momentum=0.9, name=name)


def stem(x, cfg: dict):
    """Input normalization and stem to 1/4 resolution; returns the frame-stacked features."""
    frames, size, dims = cfg["num_frames"], cfg["image_size"], cfg["embed_dims"]
    if cfg["stem"] == "reference":
        x = Normalize(cfg["input_mean"], cfg["input_std"], name="normalize")(x)
        # Conv3d (1,3,3)/(1,2,2) -> BN -> GELU -> Conv3d -> BN, per frame (PatchEmbed)
        eps = cfg["epsilon"]
        x = FrameConv(dims[0] // 2, 3, 2, use_bias=True, bn_epsilon=eps, name="stem_conv1")(x)
        x = keras.layers.Activation("gelu", name="stem_act")(x)
        x = FrameConv(dims[0], 3, 2, use_bias=True, bn_epsilon=eps, name="stem_conv2")(x)
        side = size // 4
        return keras.layers.Reshape((frames * side, side, dims[0]), name="stem")(x)
    # frame-stacked before the first op: the 5-D input has 4 dimensions above 1
    if not cfg["frame_stacked_input"]:
        x = keras.layers.Reshape((frames * size, size, 3), name="frame_stack")(x)
    x = Normalize(cfg["input_mean"], cfg["input_std"], name="normalize")(x)
    x = PatchMerge(dims[0] // 2, 2, frames, activation="relu6", bn_epsilon=cfg["epsilon"],
                   name="stem_conv1")(x)  # fmt: skip
    return PatchMerge(dims[0], 2, frames, bn_epsilon=cfg["epsilon"], name="stem")(x)


def transition(x, cfg: dict, stage: int, side: int):
    """Stride-2 downsampling into `stage` (the reference's Conv3d (1,3,3)/(1,2,2) + LayerNorm)."""
    frames, dims, name = cfg["num_frames"], cfg["embed_dims"], f"downsample{stage}"
    if cfg["stem"] == "patch":
        return PatchMerge(dims[stage], 2, frames, bn_epsilon=cfg["epsilon"], name=name)(x)
    x = keras.layers.Reshape((frames, side, side, dims[stage - 1]), name=f"{name}_frames")(x)
    if cfg["norm"] == "batch":  # conv + BN (folded into the conv at conversion)
        x = FrameConv(dims[stage], 3, 2, bn_epsilon=cfg["epsilon"], name=f"{name}_conv")(x)
        return keras.layers.Reshape((frames * side // 2, side // 2, dims[stage]), name=name)(x)
    x = FrameConv(dims[stage], 3, 2, use_bias=True, batch_norm=False, name=f"{name}_conv")(x)
    x = keras.layers.Reshape((frames * side // 2, side // 2, dims[stage]), name=f"{name}_stack")(x)
    return LayerNorm(cfg["epsilon"], name=name)(x)


def backbone_tensors(inputs, cfg: dict):
    """Stem and the four stages; returns (final normalized features, endpoints)."""
    x = stem(inputs, cfg)
    endpoints = {"stem": x}
    sides = stage_sizes(cfg)
    total, index = sum(cfg["depths"]), 0
    for stage, depth in enumerate(cfg["depths"]):
        if stage > 0 and cfg["downsample"][stage - 1]:
            x = transition(x, cfg, stage, sides[stage - 1])
        for j in range(depth):
            rate = cfg["drop_path_rate"] * index / max(total - 1, 1)
            x = block(x, cfg, stage, rate, f"stage{stage}_block{j}")
            index += 1
        endpoints[f"stage{stage}"] = x
    x = _norm(cfg, "head_norm")(x)
    endpoints["final_norm"] = x
    return x, endpoints


def input_shape(cfg: dict) -> tuple[int, ...]:
    size = cfg["image_size"]
    if cfg["frame_stacked_input"]:
        return (cfg["num_frames"] * size, size, 3)
    return (cfg["num_frames"], size, size, 3)


def build(name: str, cfg: dict, num_classes: int | None) -> keras.Model:
    """The classifier (or, with `num_classes=None`, the pooled features) as one flat graph.

    Head: norm, mean over all frames and positions (MEAN over the frame-stacked x/y), linear.
    """
    inputs = keras.Input(input_shape(cfg), name="video")
    features, endpoints = backbone_tensors(inputs, cfg)
    x = keras.layers.GlobalAveragePooling2D(name="pooled")(features)
    if num_classes is not None:
        if cfg["dropout_rate"] > 0:
            x = keras.layers.Dropout(cfg["dropout_rate"], name="head_dropout")(x)
        x = keras.layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, x, name=name)
    model.kvid_endpoints = {k: v._keras_history.layer.name for k, v in endpoints.items()}
    return model


def convert_form(model: keras.Model, form: str, layout: str | None = None) -> keras.Model:
    """The same model with every positional gating unit in `form` (and `layout`), weights copied.

    Both forms compute the same function from the same weights (the relative-position tables):
    train in the "matmul" form, deploy in the "depthwise" form (or the reverse).
    """
    if form not in FORMS:
        raise ValueError(f"convert_form: form={form!r} not in {FORMS}.")
    config = model.get_config()
    for layer_config in config["layers"]:
        registered = layer_config.get("registered_name") or layer_config["class_name"]
        cls = keras.utils.get_registered_object(registered)
        if cls is not None and issubclass(cls, PositionalGating):
            layer_config["config"]["form"] = form
            if layout is not None:
                layer_config["config"]["layout"] = layout
            elif form == "matmul":
                layer_config["config"]["layout"] = "folded"
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    copy.kvid_endpoints = getattr(model, "kvid_endpoints", {})
    return copy
