"""The released Mobile-Former ImageNet checkpoints, as reference configurations.

Each entry is what `kvid.models.from_reference` takes (`family`, `constructor`), plus the input
the checkpoint was trained on (`image_size`, `num_frames`, `normalization` on [0, 1] inputs), its
classifier width and, as documentation only, where the checkpoint is published (nothing here
downloads). The constructor arguments are those of the factories `mobile_former_<n>m()` in
`AAboys/MobileFormer` (commit f447310) `mobile_former.py`: `common_model_kwargs` merged with each
factory's own `model_kwargs` and block table (`dna_blocks`).

    reference = kvid.models.reference_config("mobile_former_508m_in1k")
    model = kvid.models.from_reference(reference, state_dict,
                                       input_mean=reference["normalization"]["mean"],
                                       input_std=reference["normalization"]["std"])
"""

from __future__ import annotations

_SOURCE = {
    "repo": "https://github.com/AAboys/MobileFormer",
    "commit": "f44731062abb22a87962f0783467393dae23a9c5",
    "files": ["mobile_former.py", "dna_blocks.py", "README.md"],
}
# mobile_former.py `_cfg`: timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD, 224x224 input.
_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# mobile_former.py `common_model_kwargs` (every factory passes these).
_COMMON = dict(
    cnn_drop_path_rate=0.1, dw_conv="dw", kernel_size=[3, 3], cnn_exp=[6, 4], cls_token_num=1,
    hyper_token_id=0, hyper_reduction_ratio=4, attn_num_heads=2, gbr_norm="post",
    mlp_token_exp=4, gbr_before_skip=False, gbr_drop=[0.0, 0.0], last_act="relu",
    remove_proj_local=True,
)  # fmt: skip
# The factories' `model_kwargs` entries every one of them sets the same way.
_FACTORY = dict(
    width_mult=1.0, se_flag=[2, 0, 2, 0], gbr_type="attn", gbr_dynamic=[True, False, False],
    gbr_ffn=True,
)  # fmt: skip

# mobile_former.py `dna_blocks` of each factory: [block, e1, c, n, s, e2].
_BLOCKS_508M = [
    ["DnaBlock3", 2, 24, 1, 1, 0], ["DnaBlock3", 6, 40, 1, 2, 4], ["DnaBlock", 3, 40, 1, 1, 3],
    ["DnaBlock3", 6, 72, 1, 2, 4], ["DnaBlock", 3, 72, 1, 1, 3], ["DnaBlock3", 6, 128, 1, 2, 4],
    ["DnaBlock", 4, 128, 1, 1, 4], ["DnaBlock", 6, 176, 1, 1, 4], ["DnaBlock", 6, 176, 1, 1, 4],
    ["DnaBlock3", 6, 240, 1, 2, 4], ["DnaBlock", 6, 240, 1, 1, 4], ["DnaBlock", 6, 240, 1, 1, 4],
]  # fmt: skip
_BLOCKS_294M = [
    ["DnaBlock3", 2, 16, 1, 1, 0], ["DnaBlock3", 6, 24, 1, 2, 4], ["DnaBlock", 4, 24, 1, 1, 4],
    ["DnaBlock3", 6, 48, 1, 2, 4], ["DnaBlock", 4, 48, 1, 1, 4], ["DnaBlock3", 6, 96, 1, 2, 4],
    ["DnaBlock", 4, 96, 1, 1, 4], ["DnaBlock", 6, 128, 1, 1, 4], ["DnaBlock", 6, 128, 1, 1, 4],
    ["DnaBlock3", 6, 192, 1, 2, 4], ["DnaBlock", 6, 192, 1, 1, 4], ["DnaBlock", 6, 192, 1, 1, 4],
]  # fmt: skip
_BLOCKS_214M = [
    ["DnaBlock3", 2, 12, 1, 1, 0], ["DnaBlock3", 6, 20, 1, 2, 4], ["DnaBlock", 3, 20, 1, 1, 4],
    ["DnaBlock3", 6, 40, 1, 2, 4], ["DnaBlock", 4, 40, 1, 1, 4], ["DnaBlock3", 6, 80, 1, 2, 4],
    ["DnaBlock", 4, 80, 1, 1, 4], ["DnaBlock", 6, 112, 1, 1, 4], ["DnaBlock", 6, 112, 1, 1, 4],
    ["DnaBlock3", 6, 160, 1, 2, 4], ["DnaBlock", 6, 160, 1, 1, 4], ["DnaBlock", 6, 160, 1, 1, 4],
]  # fmt: skip
_BLOCKS_151M = [
    ["DnaBlock3", 2, 12, 1, 1, 0], ["DnaBlock3", 6, 16, 1, 2, 4], ["DnaBlock", 3, 16, 1, 1, 3],
    ["DnaBlock3", 6, 32, 1, 2, 4], ["DnaBlock", 3, 32, 1, 1, 3], ["DnaBlock3", 6, 64, 1, 2, 4],
    ["DnaBlock", 4, 64, 1, 1, 4], ["DnaBlock", 6, 88, 1, 1, 4], ["DnaBlock", 6, 88, 1, 1, 4],
    ["DnaBlock3", 6, 128, 1, 2, 4], ["DnaBlock", 6, 128, 1, 1, 4], ["DnaBlock", 6, 128, 1, 1, 4],
]  # fmt: skip
_BLOCKS_96M = [
    ["DnaBlock3", 2, 12, 1, 1, 0], ["DnaBlock3", 6, 16, 1, 2, 4], ["DnaBlock3", 6, 32, 1, 2, 4],
    ["DnaBlock", 3, 32, 1, 1, 3], ["DnaBlock3", 6, 64, 1, 2, 4], ["DnaBlock", 4, 64, 1, 1, 4],
    ["DnaBlock", 6, 88, 1, 1, 4], ["DnaBlock3", 6, 128, 1, 2, 4], ["DnaBlock", 6, 128, 1, 1, 4],
]  # fmt: skip
# mobile_former_52m and mobile_former_26m share this table (26m adds group_num=4).
_BLOCKS_52M = [
    ["DnaBlock3", 3, 12, 1, 2, 0], ["DnaBlock", 3, 12, 1, 1, 3], ["DnaBlock3", 6, 24, 1, 2, 4],
    ["DnaBlock", 3, 24, 1, 1, 3], ["DnaBlock3", 6, 48, 1, 2, 4], ["DnaBlock", 4, 48, 1, 1, 4],
    ["DnaBlock", 6, 64, 1, 1, 4], ["DnaBlock3", 6, 96, 1, 2, 4], ["DnaBlock", 6, 96, 1, 1, 4],
]  # fmt: skip

# Per factory: its block table and the model_kwargs that differ between factories
# (mobile_former.py), and the README.md "download" link of its checkpoint (Google Drive).
_FACTORIES = {
    "508m": (dict(block_args=_BLOCKS_508M, group_num=1, num_features=1920, stem_chs=24,
                  token_num=6, token_dim=192), "1bqLIcpbCaxK-Eb4wcxk0iJpFJ1nXfGuF"),
    "294m": (dict(block_args=_BLOCKS_294M, group_num=1, num_features=1920, stem_chs=16,
                  token_num=6, token_dim=192), "1JBSM7NJ60fN9TgT5sMnbhmbZwrzcBd0r"),
    "214m": (dict(block_args=_BLOCKS_214M, group_num=1, num_features=1600, stem_chs=12,
                  token_num=6, token_dim=192), "13MOjdIMMBJgqyq_ld-grRhBBHOFU5Ggd"),
    "151m": (dict(block_args=_BLOCKS_151M, group_num=1, num_features=1280, stem_chs=12,
                  token_num=6, token_dim=192), "1w4QO-zhJ8QI1zGu7iOZ7lXxYJ5G1VXdF"),
    "96m": (dict(block_args=_BLOCKS_96M, group_num=1, num_features=1280, stem_chs=12,
                 token_num=4, token_dim=128), "1kMbRceswujtliCHKr-nxMFsrkvBrEfrW"),
    "52m": (dict(block_args=_BLOCKS_52M, group_num=1, num_features=1024, stem_chs=8,
                 token_num=3, token_dim=128), "1ekq_FPl57gjIlYX16Ll0nBuEyB0pjgGt"),
    "26m": (dict(block_args=_BLOCKS_52M, group_num=4, num_features=1024, stem_chs=8,
                 token_num=3, token_dim=128), "15uWYzx2VWWUjacZQHB56vOHzKxQDlp5O"),
}  # fmt: skip


def _config(size: str) -> dict:
    kwargs, drive_id = _FACTORIES[size]
    return {
        "family": "mobile_former",
        "constructor": {
            "factory": f"mobile_former_{size}()",
            "class": "MobileFormer",
            # num_classes: MobileFormer's default (the factories do not pass it); img_size too.
            "kwargs": dict(_FACTORY, **kwargs, **_COMMON, num_classes=1000, img_size=224),
        },
        # an image model: kvid.models.mobile_former.inflate makes a video model of any length
        "num_frames": None,
        "image_size": 224,
        "num_classes": 1000,
        "dataset": "ImageNet-1k",
        "normalization": dict(_NORMALIZATION),
        "checkpoint": {
            "file": None,  # the README links a Google Drive file, not a file name
            "url": f"https://drive.google.com/file/d/{drive_id}/view?usp=sharing",
        },
        "source": dict(_SOURCE),
    }


REFERENCE_CONFIGS = {f"mobile_former_{size}_in1k": _config(size) for size in _FACTORIES}

__all__ = ["REFERENCE_CONFIGS"]
