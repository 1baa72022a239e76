"""Resizing XViT's position embeddings for another frame size or number of frames.

XViT (`1adrianb/video-transformers`, `VisionTransformer.forward_features`) keeps the class
token's entry of its spatial position embedding and bicubically resizes the patch grid when the
frame size differs from 224 (timm's `resize_pos_embed` does the same for a checkpoint); the
temporal embedding has one entry per frame and is resized linearly along time.
"""

from __future__ import annotations

import math

import numpy as np

from kvid.models.xvit.vit import SpaceTimeEmbedding


def _grid_side(tokens: int, layer_name: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"layer {layer_name}: {tokens} patch tokens are not a square grid")
    return side


def resize_space_time_embedding(name, value, source_layer, target_layer, shape) -> np.ndarray:
    """`position_embedding` `(1 + g*g, C)`: grid bicubic, class entry kept; `temporal_embedding`
    `(P, C)`: linear along time."""
    from kvid.models.transfer import TransferError, resize_grid

    if name == "position_embedding":
        if value.shape[1] != shape[1]:
            raise TransferError(
                f"layer {target_layer.name}: position_embedding width {value.shape[1]} != {shape[1]}"
            )
        side = _grid_side(value.shape[0] - 1, source_layer.name)
        new_side = _grid_side(shape[0] - 1, target_layer.name)
        grid = value[1:].reshape(side, side, -1)
        resized = resize_grid(grid, (new_side, new_side), ("cubic", "cubic"))
        return np.concatenate([value[:1], resized.reshape(new_side * new_side, -1)], axis=0)
    if name == "temporal_embedding" and value.shape[1] == shape[1]:
        return resize_grid(value, (shape[0],), ("linear",))
    raise TransferError(
        f"layer {target_layer.name}: {name} is {list(value.shape)} in the source and "
        f"{list(shape)} here, and cannot be resized"
    )


HOOKS = {SpaceTimeEmbedding: resize_space_time_embedding}
