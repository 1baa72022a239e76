"""DualFormer: local-global stratified Transformer for video.

Liang et al., "DualFormer: Local-Global Stratified Transformer for Efficient Video Recognition"
(arXiv 2112.04674), code `sail-sg/dualformer` (`mmaction/models/backbones/dualformer.py`). Four
stages of pre-norm Transformer layers that alternate LW-MSA (attention inside 3D windows, even
layers) and GP-MSA (attention to keys pooled from the whole clip, odd layers), each followed by
an MLP (ratio 4, exact GELU). A depthwise 3x3x3 PEG follows layer 0 of every stage. The stem is a
`(2, 4, 4)` tubelet embedding, every later stage starts with a `(1, 2, 2)` one, each followed by
LayerNorm; the head (mmaction `I3DHead`) is the backbone's final LayerNorm, a global average
pool, dropout and a linear layer.

Window and pyramid kernels follow from the input size, so a reduced input is the preset plus
matching `window_sizes` / `fine_pyramid_sizes` / `coarse_pyramid_sizes` overrides. The int8
presets keep every softmax at <= 64 keys (docs/design.md section 7). `conv_stem` (not in the
reference) puts 3x3 stride-2 convolutions before the tubelet embedding, for small training sets;
`stem_shift_div` follows each with XViT's temporal channel shift. Other options outside the
reference, off in `DEFAULTS` (`dualformer_cpu` sets `mlp_dwconv=3`): `window_position_bias`
(Swin's relative position bias in LW-MSA), `position_embedding` (a learned absolute space-time
embedding after the first tubelet embedding), `mlp_dwconv` (PVTv2's per-frame depthwise
convolution between the MLP's two linear layers) and `mlp_shift_div` (the temporal channel shift
on the MLP's input).
"""

from __future__ import annotations

import math

from kvid.backend import keras
from kvid.layers import DropPath, FrameConv, LayerNorm, Normalize, TemporalShift
from kvid.models.dualformer.peg import PEG
from kvid.models.dualformer.position_embedding import PositionEmbedding
from kvid.models.dualformer.presets import (
    DEFAULTS,
    PER_STAGE_FIELDS,
    PRESETS,
)
from kvid.models.dualformer.stratified_attention import (
    LINEAR_INITIALIZER,
    GlobalPyramidAttention,
    LocalWindowAttention,
    check_window,
    pyramid_kernels,
    pyramid_tiles,
)
from kvid.models.dualformer.tubelet_conv import TubeletConv
from kvid.models.registry import merge_preset


def resolve_config(name: str, overrides: dict) -> dict:
    """The preset's fields with `overrides` applied; unknown keys are a clear error."""
    config = merge_preset(name, DEFAULTS, PRESETS, overrides)
    check_config(name, config)
    return config


def stage_resolutions(config: dict) -> list[tuple[int, int, int]]:
    """`(frames, height, width)` of every stage's feature map."""
    p_t, p_h, _ = config["patch_size"]
    frames = config["num_frames"] // p_t
    size = config["image_size"] // 2 ** len(config["conv_stem"]) // p_h
    resolutions = []
    for stage in range(len(config["depths"])):
        if stage > 0:
            frames, size = frames // config["temporal_strides"][stage], size // 2
        resolutions.append((frames, size, size))
    return resolutions


def check_config(name: str, config: dict, exact_pyramids: bool = True) -> None:
    """Raises a ValueError naming the preset, stage and field of any size that does not fit.

    Args:
      exact_pyramids: also require every pyramid pooling to tile its map (presets); a reference
        configuration may pool with a remainder, which PyTorch drops, and so does kvid.
    """
    stages = len(config["depths"])
    for field in PER_STAGE_FIELDS:
        if len(config[field]) != stages:
            raise ValueError(f"{name}: {field} needs {stages} entries (one per stage).")
    p_t, p_h, p_w = config["patch_size"]
    frames, size = config["num_frames"], config["image_size"]
    if size % 2 ** len(config["conv_stem"]):
        raise ValueError(f"{name}: image_size {size} is not divisible by the conv stem's stride.")
    size //= 2 ** len(config["conv_stem"])
    if p_h != p_w or frames % p_t or size % p_h:
        raise ValueError(
            f"{name}: the {frames}x{size}x{size} input is not divisible by patch_size "
            f"{tuple(config['patch_size'])}."
        )
    if size // p_h % 2 ** (stages - 1):
        raise ValueError(
            f"{name}: image_size {config['image_size']} is not divisible by the total spatial "
            f"stride {p_h * 2 ** (stages - 1 + len(config['conv_stem']))}."
        )
    t = frames // p_t
    for stage in range(1, stages):
        if t % config["temporal_strides"][stage]:
            raise ValueError(
                f"{name}: stage {stage}: {t} frames not divisible by temporal stride "
                f"{config['temporal_strides'][stage]}."
            )
        t //= config["temporal_strides"][stage]
    for stage, resolution in enumerate(stage_resolutions(config)):
        dim, heads = config["embed_dims"][stage], config["num_heads"][stage]
        if dim % heads:
            raise ValueError(f"{name}: stage {stage}: embed_dims {dim} not divisible by {heads}.")
        where = f"{name}: stage {stage} window_sizes"
        if config["depths"][stage] > 0:
            check_window(config["window_sizes"][stage], resolution, where)
        if config["depths"][stage] > 1:
            where = f"{name}: stage {stage} fine_pyramid_sizes/coarse_pyramid_sizes"
            kernels = pyramid_kernels(
                resolution, config["fine_pyramid_sizes"][stage],
                config["coarse_pyramid_sizes"][stage], config["coarse_first_kernel"], where,
            )  # fmt: skip
            if exact_pyramids and not pyramid_tiles(resolution, kernels):
                raise ValueError(
                    f"{where}: the pyramid poolings {kernels} do not tile the "
                    f"{'x'.join(map(str, resolution))} feature map."
                )
    if config["mlp_dwconv"] and (config["mlp_dwconv"] < 0 or config["mlp_dwconv"] % 2 == 0):
        raise ValueError(f"{name}: mlp_dwconv must be 0 (none) or an odd kernel size.")
    if config["peg_form"] not in ("full", "factorized"):
        raise ValueError(f"{name}: peg_form must be 'full' or 'factorized'.")
    if config["norm"] not in ("layer", "batch"):
        raise ValueError(f"{name}: norm must be 'layer' or 'batch'.")
    if config["mlp_activation"] not in ("gelu", "relu"):
        raise ValueError(f"{name}: mlp_activation must be 'gelu' or 'relu'.")


def num_keys(config: dict) -> list[list[int]]:
    """Keys each attention softmax spans, per stage and layer (LW: window, GP: pooled)."""
    keys = []
    for stage, resolution in enumerate(stage_resolutions(config)):
        window = math.prod(config["window_sizes"][stage])
        pooled = pyramid_kernels(
            resolution, config["fine_pyramid_sizes"][stage],
            config["coarse_pyramid_sizes"][stage], config["coarse_first_kernel"],
        )["num_keys"]  # fmt: skip
        keys.append([window if j % 2 == 0 else pooled for j in range(config["depths"][stage])])
    return keys


def _linear_init():
    """A fresh initializer per layer (an unseeded Keras initializer repeats its values)."""
    return keras.initializers.get(LINEAR_INITIALIZER)


def _norm(cfg: dict, name: str):
    """The reference's LayerNorm, or (CPU form, `norm="batch"`) batch norm per channel: at
    inference a per-channel scale and shift, no RSQRT and no statistics per token."""
    if cfg["norm"] == "layer":
        return LayerNorm(cfg["epsilon"], name=name)
    return keras.layers.BatchNormalization(epsilon=cfg["epsilon"], momentum=0.9, name=name)


def _layer(x, cfg: dict, stage: int, index: int, drop_path: float, name: str):
    """Pre-norm layer: `x + Attn(LN(x))`, then `x + MLP(LN(x))`; LW at even, GP at odd index."""
    dim = x.shape[-1]
    y = _norm(cfg, f"{name}_norm1")(x)
    common = dict(qkv_bias=cfg["qkv_bias"], qk_scale=cfg["qk_scale"], name=f"{name}_attn")
    if index % 2 == 0:
        y = LocalWindowAttention(
            cfg["num_heads"][stage], cfg["window_sizes"][stage],
            relative_position_bias=cfg["window_position_bias"], **common,
        )(y)  # fmt: skip
    else:
        y = GlobalPyramidAttention(
            cfg["num_heads"][stage],
            cfg["fine_pyramid_sizes"][stage],
            cfg["coarse_pyramid_sizes"][stage],
            cfg["coarse_first_kernel"],
            epsilon=cfg["epsilon"],
            bn_epsilon=cfg["bn_epsilon"],
            norm=cfg["norm"],
            **common,
        )(y)
    if drop_path > 0:
        y = DropPath(drop_path, name=f"{name}_drop_path1")(y)
    x = keras.layers.Add(name=f"{name}_add1")([x, y])
    y = _norm(cfg, f"{name}_norm2")(x)
    if cfg["mlp_shift_div"]:
        y = TemporalShift(cfg["mlp_shift_div"], name=f"{name}_mlp_shift")(y)
    y = keras.layers.Dense(
        int(dim * cfg["mlp_ratios"][stage]), kernel_initializer=_linear_init(), name=f"{name}_fc1"
    )(y)
    if cfg["mlp_dwconv"]:
        # PVTv2's Mix-FFN: He init over the k * k taps, so the conv starts at about unit gain
        k = cfg["mlp_dwconv"]
        init = keras.initializers.RandomNormal(stddev=math.sqrt(2 / k**2))
        y = FrameConv(kernel_size=k, depthwise=True, use_bias=True, batch_norm=False,
                      kernel_initializer=init, name=f"{name}_dwconv")(y)  # fmt: skip
    # exact (erf) GELU, or ReLU in the CPU form (fused into fc1)
    y = keras.layers.Activation(cfg["mlp_activation"], name=f"{name}_{cfg['mlp_activation']}")(y)
    y = keras.layers.Dense(dim, kernel_initializer=_linear_init(), name=f"{name}_fc2")(y)
    if drop_path > 0:
        y = DropPath(drop_path, name=f"{name}_drop_path2")(y)
    return keras.layers.Add(name=f"{name}_add2")([x, y])


def backbone_tensors(inputs, cfg: dict) -> tuple[keras.KerasTensor, dict]:
    """Normalize, stages and the final LayerNorm; returns (features, endpoints)."""
    x = Normalize(cfg["input_mean"], cfg["input_std"], name="normalize")(inputs)
    endpoints = {}
    for index, channels in enumerate(cfg["conv_stem"]):
        x = FrameConv(channels, 3, strides=2, activation="relu6", bn_epsilon=cfg["bn_epsilon"],
                      name=f"conv_stem{index}")(x)  # fmt: skip
        if cfg["stem_shift_div"]:
            x = TemporalShift(cfg["stem_shift_div"], name=f"conv_stem{index}_shift")(x)
    total = sum(cfg["depths"])
    done = 0
    for stage, depth in enumerate(cfg["depths"]):
        kernel = cfg["patch_size"] if stage == 0 else (cfg["temporal_strides"][stage], 2, 2)
        x = TubeletConv(cfg["embed_dims"][stage], kernel, name=f"stage{stage}_embed")(x)
        x = _norm(cfg, f"stage{stage}_embed_norm")(x)
        if stage == 0 and cfg["position_embedding"]:
            x = PositionEmbedding(name="position_embedding")(x)
        endpoints[f"patch_embed{stage}"] = x
        for index in range(depth):
            # the reference's linear stochastic-depth ramp from 0 over all layers
            drop_path = cfg["drop_path_rate"] * (done + index) / max(total - 1, 1)
            x = _layer(x, cfg, stage, index, drop_path, f"stage{stage}_layer{index}")
            if index == 0:
                x = PEG(3, cfg["peg_form"], name=f"stage{stage}_peg")(x)
                endpoints[f"stage{stage}_block0_after_peg"] = x
        done += depth
        endpoints[f"stage{stage}_out"] = x
    x = _norm(cfg, "norm")(x)
    endpoints["backbone_out"] = x
    return x, endpoints


def build(name: str, cfg: dict, num_classes: int | None) -> keras.Model:
    """The classifier (or, with `num_classes=None`, the pooled backbone features) as one flat
    functional graph."""
    size = cfg["image_size"]
    inputs = keras.Input((cfg["num_frames"], size, size, 3), name="video")
    features, endpoints = backbone_tensors(inputs, cfg)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(features)
    if num_classes is not None:
        if cfg["dropout_rate"] > 0:
            x = keras.layers.Dropout(cfg["dropout_rate"], name="head_dropout")(x)
        x = keras.layers.Dense(num_classes, kernel_initializer=_linear_init(), name="logits")(x)
    model = keras.Model(inputs, x, name=name)
    # Layer names of the intermediate tensors (for feature extraction and parity checks).
    model.kvid_endpoints = {k: v._keras_history.layer.name for k, v in endpoints.items()}
    return model
