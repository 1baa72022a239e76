"""The XViT-B/16 configurations of `1adrianb/video-transformers`, as reference configurations.

Each entry is what `kvid.models.from_reference` takes (`family`, `constructor` in the layout of
the golden configuration: the keyword arguments `XVIT` passes to the ViT, the ViT's `num_frames`
and the SlowFast config keys the model reads), plus the clip the checkpoint was trained on
(`num_frames`, `image_size`, `normalization` on [0, 1] inputs), its classifier width and, as
documentation only, where the checkpoint is published (nothing here downloads). Sources, in
`1adrianb/video-transformers` (commit 82ca176): `configs/Kinetics/xvit_B16_16x16_k400.yaml`,
`configs/Kinetics/xvit_B16_16x16_k600.yaml`, `configs/SSv2/xvit_B16_16x16.yaml`,
`slowfast/config/defaults.py` (the keys the YAML files leave at their defaults),
`slowfast/models/video_model_builder.py` (`XVIT._prepare_base_model`: the ViT kwargs),
`slowfast/models/transformers/vit.py` (`vit_base_patch16_224_in21k`) and `README.md` (the model
zoo: Kinetics-600 and Something-Something-v2 checkpoints; the Kinetics-400 config has none).

The ViT is `vit_base_patch16_224_in21k` built with `num_classes=1000`: `_create_vision_transformer`
drops its representation layer because 1000 differs from the 21843 in-21k classes, and `XVIT`
then replaces its head with a Dropout (`MODEL.DROPOUT_RATE` 0.5). `XVIT` never passes
`num_frames`, so the temporal embedding keeps the ViT's default of 8 entries, applied with period 8
over the 16 frames; the Kinetics configs shift within chunks of `NUM_SEGMENTS=8` frames.
"""

from __future__ import annotations

_SOURCE = {
    "repo": "https://github.com/1adrianb/video-transformers",
    "commit": "82ca1766ef0bd0cc765fea9570698391e2d5245c",
    "files": [
        "configs/Kinetics/xvit_B16_16x16_k400.yaml",
        "configs/Kinetics/xvit_B16_16x16_k600.yaml",
        "configs/SSv2/xvit_B16_16x16.yaml",
        "slowfast/config/defaults.py",
        "slowfast/models/video_model_builder.py",
        "slowfast/models/transformers/vit.py",
        "slowfast/models/head_helper.py",
        "README.md",
    ],
}
# The configs' DATA.MEAN and DATA.STD.
_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# What XVIT._prepare_base_model passes to create_model("vit_base_patch16_224_in21k", ...) merged
# with that factory's patch_size/embed_dim/depth/num_heads (vit.py); drop rates from defaults.py
# (XVIT.BACKBONE.DROP_PATH_RATE, DROP_ATTN_RATE); representation_size removed (see above).
_VIT_KWARGS = dict(
    img_size=224, num_classes=1000, drop_rate=0, drop_path_rate=0.0, attn_drop_rate=0.0,
    norm_layer="functools.partial(<class 'torch.nn.modules.normalization.LayerNorm'>, eps=1e-06)",
    patch_size=16, embed_dim=768, depth=12, num_heads=12, representation_size=None,
)  # fmt: skip
# Keys every config shares: the YAML files' DATA/MODEL/XVIT entries and defaults.py's
# TEMPORAL_HEAD (HIDDEN_DIM 768, 12 heads, 1 layer, MLP_DIM 768) and XVIT.BEFORE_SOFTMAX,
# XVIT.BACKBONE.NORM_LAYER.
_CFG = {
    "MODEL.DROPOUT_RATE": 0.5,
    "DATA.NUM_FRAMES": 16,
    "DATA.TRAIN_CROP_SIZE": 224,
    "DATA.TEST_CROP_SIZE": 224,
    "XVIT.BASE_MODEL": "vit_base_patch16_224_in21k",
    "XVIT.LOCATIONS_LIST": list(range(15)),
    "XVIT.CONSENSUS_TYPE": "vit",
    "XVIT.USE_XVIT": True,
    "XVIT.BEFORE_SOFTMAX": True,
    "XVIT.BACKBONE.NORM_LAYER": "LN",
    "TEMPORAL_HEAD.HIDDEN_DIM": 768,
    "TEMPORAL_HEAD.NUM_ATTENTION_HEADS": 12,
    "TEMPORAL_HEAD.NUM_HIDDEN_LAYERS": 1,
    "TEMPORAL_HEAD.MLP_DIM": 768,
    "TEMPORAL_HEAD.ATTENTION_PROBS_DROPOUT_PROB": 0.0,
    "TEMPORAL_HEAD.HIDDEN_DROPOUT_PROB": 0.0,
}
_MODELS = "https://www.adrianbulat.com/downloads/NeurIPS2021/models"
# Per config: the YAML file's own keys, the dataset, and the README's checkpoint (or None).
_CONFIGS = {
    "xvit_b16_k400": (
        {"MODEL.NUM_CLASSES": 400, "XVIT.SHIFT_DIV": 8, "XVIT.NUM_SEGMENTS": 8},
        "Kinetics-400",
        None,  # the README's model zoo has no Kinetics-400 checkpoint
    ),
    "xvit_b16_k600": (
        {"MODEL.NUM_CLASSES": 600, "XVIT.SHIFT_DIV": 8, "XVIT.NUM_SEGMENTS": 8},
        "Kinetics-600",
        "xvit_b16_16_k600.pth",
    ),
    "xvit_b16_ssv2": (
        {"MODEL.NUM_CLASSES": 174, "XVIT.SHIFT_DIV": 4, "XVIT.NUM_SEGMENTS": 16},
        "Something-Something-v2",
        "xvit_b16_16_ss2.pth",
    ),
}


def _config(name: str) -> dict:
    cfg, dataset, checkpoint = _CONFIGS[name]
    return {
        "family": "xvit",
        "constructor": {
            "model": "XVIT(cfg) with the repository's VisionTransformer",
            "vit_kwargs_received": dict(_VIT_KWARGS),
            "vit_num_frames": 8,  # VisionTransformer's default; XVIT never passes num_frames
            "cfg": dict(_CFG, **cfg),
        },
        "num_frames": 16,
        "image_size": 224,
        "num_classes": cfg["MODEL.NUM_CLASSES"],
        "dataset": dataset,
        "normalization": dict(_NORMALIZATION),
        "checkpoint": {
            "file": checkpoint,
            "url": f"{_MODELS}/{checkpoint}" if checkpoint else None,
        },
        "source": dict(_SOURCE),
    }


REFERENCE_CONFIGS = {name: _config(name) for name in _CONFIGS}

__all__ = ["REFERENCE_CONFIGS"]
