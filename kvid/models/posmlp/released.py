"""The released PosMLP-Video S16 configuration, as a reference configuration.

The entry is what `kvid.models.from_reference` takes (`family`, `constructor` with the cfg fields
`PosMLP_Video(cfg)` reads), plus the clip it is trained on (`num_frames`, `image_size`,
`normalization` on [0, 1] inputs) and its classifier width. Sources, in `zhouds1918/PosMLP_Video`
(commit 6de3b88): `configs/SSV1/SSV1_MLP_S16.yaml` (the values), `slowfast/config/defaults.py`
(the keys it leaves at their defaults: `DATA.MEAN`, `DATA.STD`) and `slowfast/models/posmlp.py`
(which cfg keys `PosMLP_Video.__init__` reads).

Only this configuration is consistent with the model code. The repository's README links no
checkpoint (`POSMLP_VIDEO.PRETRAIN_PATH: pretrained/model72andt.pth` is an ImageNet
initialisation that is not published), and its other "S16" files are stale: for example
`configs/K400/K400_MLP_S16x4.yaml` sets `EMBED_DIMS [112, 224, 392, 784]` and a MorphMLP-style
`SEGMENT_DIM`, and leaves `WIN_SIZE_T` at the default `[8, 3, 3, 3]` (the temporal gate needs
the 16 frames) and `POSGAMMA` at `[8, 16, 32, 64]` (392 channels are not divisible by 32), so
`PosMLP_Video` cannot be built from it.
"""

from __future__ import annotations

_SOURCE = {
    "repo": "https://github.com/zhouds1918/PosMLP_Video",
    "commit": "6de3b88f7132c9eaa0fd73bccfb91f030d4150f9",
    "files": ["configs/SSV1/SSV1_MLP_S16.yaml", "slowfast/config/defaults.py",
              "slowfast/models/posmlp.py"],
}  # fmt: skip

# configs/SSV1/SSV1_MLP_S16.yaml: the keys PosMLP_Video(cfg) reads (and DATA.NUM_FRAMES).
_SSV1_S16 = {
    "WIN_SIZE": [14, 14, 14, 7],
    "WIN_SIZE_T": [16, 16, 16, 16],
    "POSGAMMA": [8, 16, 32, 64],
    "POSMLP_VIDEO": {
        "SHIFT": False,
        "LAYERS": [3, 4, 9, 3],
        "TRANSITIONS": [True, True, True, True],
        "EMBED_DIMS": [72, 144, 288, 576],
        "PATCH_SIZE": 4,
        "DROP_DEPTH_RATE": 0.1,
    },
    "MODEL": {"NUM_CLASSES": 174},
    "DATA": {"NUM_FRAMES": 16, "TRAIN_CROP_SIZE": 224, "INPUT_CHANNEL_NUM": [3]},
}

REFERENCE_CONFIGS = {
    "posmlp_video_s16_ssv1": {
        "family": "posmlp",
        "constructor": {"class": "PosMLP_Video(cfg)", "cfg": _SSV1_S16},
        "num_frames": 16,  # DATA.NUM_FRAMES (SAMPLING_RATE 4, USE_OFFSET_SAMPLING)
        "image_size": 224,
        "num_classes": 174,
        "dataset": "Something-Something-v1",
        # defaults.py DATA.MEAN / DATA.STD (the YAML file sets neither)
        "normalization": {"mean": [0.45, 0.45, 0.45], "std": [0.225, 0.225, 0.225]},
        "checkpoint": {"file": None, "url": None},  # the repository publishes no checkpoint
        "source": dict(_SOURCE),
    },
}

__all__ = ["REFERENCE_CONFIGS"]
