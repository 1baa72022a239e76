"""Reference PosMLP-Video (`zhouds1918/PosMLP_Video`) configuration and weights -> kvid model.

The reference is `PosMLP_Video(cfg)` (`slowfast/models/posmlp.py`); `reference["constructor"]`
holds the cfg fields it reads: `WIN_SIZE`, `WIN_SIZE_T`, `POSGAMMA`, `POSMLP_VIDEO.{SHIFT, LAYERS,
TRANSITIONS, EMBED_DIMS, PATCH_SIZE, DROP_DEPTH_RATE}`, `MODEL.NUM_CLASSES`,
`DATA.{TRAIN_CROP_SIZE, INPUT_CHANNEL_NUM}` (optionally `DATA.NUM_FRAMES`).
"""

from __future__ import annotations

import numpy as np

from kvid.models.porting import StateDict, conv_kernel, load_batch_norm, load_layer_norm
from kvid.models.posmlp.model import build, resolve_config
from kvid.models.posmlp.positional_gating import relative_position_index


def _unsupported(name: str, value, supported) -> ValueError:
    return ValueError(
        f"from_reference(posmlp): {name}={value!r} is not supported (supported: {supported})."
    )


def reference_config(cfg: dict, image_size, num_frames, input_mean, input_std) -> dict:
    """Translates the reference cfg into kvid PosMLP-Video fields (training form, CPU target)."""
    video = cfg["POSMLP_VIDEO"]
    if video.get("SHIFT", False):
        raise _unsupported("POSMLP_VIDEO.SHIFT", True, "False (the shift path is dead code)")
    if list(cfg.get("DATA", {}).get("INPUT_CHANNEL_NUM", [3])) != [3]:
        raise _unsupported("DATA.INPUT_CHANNEL_NUM", cfg["DATA"]["INPUT_CHANNEL_NUM"], "[3]")
    t_windows = [int(t) for t in cfg["WIN_SIZE_T"]]
    frames = num_frames or cfg.get("DATA", {}).get("NUM_FRAMES") or t_windows[0]
    if any(t != frames for t in t_windows):
        # LearnedPosMapT mixes the whole clip: its window must be the number of frames.
        raise _unsupported("WIN_SIZE_T", t_windows, f"all equal to the frame count {frames}")
    dims = [int(d) for d in video["EMBED_DIMS"]]
    transitions = [bool(t) for t in video["TRANSITIONS"]][:3]
    downsample = tuple(t or dims[i] != dims[i + 1] for i, t in enumerate(transitions))
    size = image_size or cfg.get("DATA", {}).get("TRAIN_CROP_SIZE", 224)
    return dict(
        num_frames=int(frames),
        image_size=int(size),
        input_mean=tuple(input_mean),
        input_std=tuple(input_std),
        embed_dims=tuple(dims),
        depths=tuple(int(d) for d in video["LAYERS"]),
        window_sizes=tuple(int(w) for w in cfg["WIN_SIZE"]),
        temporal_windows=(None,) * 4,
        gammas=tuple(int(g) for g in cfg["POSGAMMA"]),
        downsample=downsample,
        drop_path_rate=float(video.get("DROP_DEPTH_RATE", 0.0)),
    )


def _load_conv(layer, sd: StateDict, conv: str, bn: str | None) -> None:
    weight = sd.take(f"{conv}.weight")[:, :, 0]  # (O, I, 1, kh, kw): temporal kernel 1
    layer.conv.set_weights([conv_kernel(weight), sd.take(f"{conv}.bias")])
    if bn is not None:
        load_batch_norm(layer.bn, sd, bn)


def _load_unit(unit, sd: StateDict, prefix: str) -> None:
    """`PosMLPLayer(T)`: norm, fc1 (u = first half), relative-position map, fc2."""
    load_layer_norm(unit.norm_layer, sd, f"{prefix}.norm")
    fc1, bias1 = sd.take(f"{prefix}.fc1.weight"), sd.take(f"{prefix}.fc1.bias")
    c = fc1.shape[1]
    unit.fc1_u.set_weights([fc1[:c].T[None, None], bias1[:c]])
    unit.fc1_v.set_weights([fc1[c:].T[None, None], bias1[c:]])
    unit.fc2.set_weights(
        [sd.take(f"{prefix}.fc2.weight").T[None, None], sd.take(f"{prefix}.fc2.bias")]
    )
    pos = f"{prefix}.gate_unit.pos"
    index_key = f"{pos}.window_relative_position_index"
    if sd.has(index_key):
        stored = sd.take(index_key).astype(np.int64).reshape(unit._index.shape)
        if not np.array_equal(stored, relative_position_index(unit.window)):
            raise ValueError(f"from_reference(posmlp): {index_key} differs from kvid's index.")
    unit.table.assign(sd.take(f"{pos}.window_relative_position_bias_table"))
    unit.token_bias.assign(sd.take(f"{pos}.token_proj_n_bias").reshape(-1))


def load_weights(model, cfg: dict, sd: StateDict) -> None:
    """Copies reference weights into a kvid PosMLP-Video built from `reference_config`."""
    _load_conv(model.get_layer("stem_conv1"), sd, "patch_embed1.proj1", "patch_embed1.norm1")
    _load_conv(model.get_layer("stem_conv2"), sd, "patch_embed1.proj2", "patch_embed1.norm2")
    for stage, depth in enumerate(cfg["depths"]):
        if stage > 0 and cfg["downsample"][stage - 1]:
            ref = f"patch_embed{stage + 1}"
            _load_conv(model.get_layer(f"downsample{stage}_conv"), sd, f"{ref}.proj", None)
            load_layer_norm(model.get_layer(f"downsample{stage}"), sd, f"{ref}.norm")
        for j in range(depth):
            name, ref = f"stage{stage}_block{j}", f"blocks{stage + 1}.{j}"
            _load_unit(model.get_layer(f"{name}_spatial"), sd, f"{ref}.fc.encoder")
            _load_unit(model.get_layer(f"{name}_temporal"), sd, f"{ref}.t_fc.encoder")
    load_layer_norm(model.get_layer("head_norm"), sd, "norm")
    logits = model.get_layer("logits")
    logits.set_weights([sd.take("head.weight").T, sd.take("head.bias")])
    sd.check_all_used()


def build_from_reference(reference, sd: StateDict, image_size, num_frames, input_mean, input_std):
    cfg_in = reference["constructor"]["cfg"]
    num_classes = int(cfg_in.get("MODEL", {}).get("NUM_CLASSES", 400))
    cfg = reference_config(cfg_in, image_size, num_frames, input_mean, input_std)
    cfg = resolve_config("posmlp_video_s16", cfg)
    model = build("posmlp_reference", cfg, num_classes)
    load_weights(model, cfg, sd)
    return model
