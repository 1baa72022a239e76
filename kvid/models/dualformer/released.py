"""The released DualFormer Kinetics-400 checkpoints, as reference configurations.

Each entry is what `kvid.models.from_reference` takes (`family`, `constructor` with the mmaction
model dict's `backbone` and `cls_head` arguments), plus the clip the checkpoint was trained on
(`num_frames`, `image_size`, `normalization` on [0, 1] inputs), its classifier width and, as
documentation only, where the checkpoint is published (nothing here downloads). Sources, in
`sail-sg/dualformer` (commit 058c10c): `configs/_base_/models/dualformer/dualformer_tiny.py` (the
model dict; `_small.py` and `_base.py` override depths, widths, heads and the head's input),
`configs/recognition/dualformer/dualformer_<size>_patch244_window877_kinetics400_1k.py` (drop
path, the 32-frame clips and `img_norm_cfg`) and `README.md` (the checkpoint links).

The reference derives its pyramid kernels from `video_size`, so a checkpoint is built for
32x224x224 clips (`from_reference` refuses another input).
"""

from __future__ import annotations

_SOURCE = {
    "repo": "https://github.com/sail-sg/dualformer",
    "commit": "058c10c6a07885b150a4c05b729230e243e81440",
    "files": [
        "configs/_base_/models/dualformer/dualformer_tiny.py",
        "configs/_base_/models/dualformer/dualformer_small.py",
        "configs/_base_/models/dualformer/dualformer_base.py",
        "configs/recognition/dualformer/dualformer_{tiny,small,base}_patch244_window877_"
        "kinetics400_1k.py",
        "mmaction/models/backbones/dualformer.py",
        "mmaction/models/heads/i3d_head.py",
        "README.md",
    ],
}
# The recognition configs' img_norm_cfg (mean=[123.675, 116.28, 103.53], std=[58.395, 57.12,
# 57.375] on 0-255 pixels), divided by 255.
_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# dualformer_tiny.py `model.backbone` (the small and base files inherit it).
_BACKBONE = dict(
    video_size=[32, 224, 224], patch_size=[2, 4, 4], in_chans=3, num_classes=1000, qk_scale=None,
    drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, embed_dims=[64, 128, 256, 512],
    num_heads=[2, 4, 8, 16], mlp_ratios=[4, 4, 4, 4], qkv_bias=True, depths=[2, 2, 10, 4],
    temporal_pooling=[-1, 1, 1, 1], local_sizes=[[8, 7, 7], [8, 7, 7], [8, 7, 7], [8, 7, 7]],
    fine_pysizes=[[8, 7, 7], [8, 7, 7], [8, 7, 7], [16, 7, 7]],
)  # fmt: skip
# dualformer_tiny.py `model.cls_head`, num_classes 400 (Kinetics-400).
_HEAD = dict(in_channels=512, num_classes=400, spatial_type="avg", dropout_ratio=0.5)
# Per size: backbone and head overrides (dualformer_{small,base}.py), the recognition config's
# drop_path_rate, the README "Download" link (Google Drive) and the checkpoint file name the
# README's test commands use.
_SIZES = {
    "tiny": (dict(), 512, 0.1, "1dvG6vjC7udHTwTaqmOAfn6U3HNs3T-QF"),
    "small": (dict(depths=[2, 2, 18, 2], embed_dims=[96, 192, 384, 768],
                   num_heads=[3, 6, 12, 24]), 768, 0.2, "1dNHPnSl39Vbh7Z-KSWYjNV3PGFlWL3TY"),
    "base": (dict(depths=[2, 2, 18, 2], embed_dims=[128, 256, 512, 1024],
                  num_heads=[4, 8, 16, 32]), 1024, 0.3, "1U_hxRWzh92ru2efgpiFH7a0e4LCc_3m8"),
}  # fmt: skip


def _config(size: str) -> dict:
    backbone, head_channels, drop_path_rate, drive_id = _SIZES[size]
    return {
        "family": "dualformer",
        "constructor": {
            "model": "Recognizer3D (mmaction): backbone DualFormer, cls_head I3DHead",
            "backbone_kwargs": dict(_BACKBONE, **backbone, drop_path_rate=drop_path_rate),
            "head_kwargs": dict(_HEAD, in_channels=head_channels),
        },
        "num_frames": 32,  # SampleFrames clip_len=32, frame_interval=2
        "image_size": 224,
        "num_classes": 400,
        "dataset": "Kinetics-400",
        "normalization": dict(_NORMALIZATION),
        "checkpoint": {
            "file": f"dualformer_{size}_patch244_window877.pth",
            "url": f"https://drive.google.com/file/d/{drive_id}/view?usp=sharing",
        },
        "source": dict(_SOURCE),
    }


REFERENCE_CONFIGS = {f"dualformer_{size}_k400": _config(size) for size in _SIZES}

__all__ = ["REFERENCE_CONFIGS"]
