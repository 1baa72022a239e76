"""What DualFormer needs for another input size.

The reference model has no position table: its PEG (a depthwise 3x3x3 convolution) and tubelet
embeddings work at any size, so only the windows and pyramids must still tile every stage. Its
GP-MSA pools keys with depthwise convolutions whose kernel equals `stage size // pyramid size`:
a kernel learned for one input size has no counterpart at another unless the pyramid sizes scale
with the input (then the kernels keep their shape and are copied). kvid's options outside the
reference are resized: LW-MSA's relative position bias (`window_position_bias`) like Swin's
table, the absolute embedding (`position_embedding`) bicubically in space, linearly in time.
"""

from __future__ import annotations

import numpy as np

from kvid.models.dualformer.position_embedding import PositionEmbedding
from kvid.models.dualformer.stratified_attention import (
    GlobalPyramidAttention,
    LocalWindowAttention,
)


def _cannot(target_layer, name, value, shape, why: str):
    from kvid.models.transfer import TransferError

    return TransferError(
        f"layer {target_layer.name}: {name} is {list(value.shape)} in the source and "
        f"{list(shape)} here; {why}"
    )


def resize_window_table(name, value, source_layer, target_layer, shape) -> np.ndarray:
    from kvid.models.transfer import resize_relative_table

    if name == "relative_position_table" and value.shape[1] == shape[1]:
        return resize_relative_table(value, source_layer.window_size, target_layer.window_size)
    raise _cannot(target_layer, name, value, shape, "only the window may change")


def resize_position_embedding(name, value, source_layer, target_layer, shape) -> np.ndarray:
    from kvid.models.transfer import resize_grid

    if name == "spatial" and value.shape[-1] == shape[-1]:
        return resize_grid(value, shape[:2], ("cubic", "cubic"))
    if name == "temporal" and value.shape[-1] == shape[-1]:
        return resize_grid(value, shape[:1], ("linear",))
    raise _cannot(target_layer, name, value, shape, "only the input size may change")


def refuse_pyramid_kernel(name, value, source_layer, target_layer, shape) -> np.ndarray:
    raise _cannot(
        target_layer,
        name,
        value,
        shape,
        "GP-MSA pools with kernel = stage size // pyramid size, which DualFormer cannot resize: "
        f"scale its pyramid sizes (now fine {list(target_layer.fine_pyramid_size)}, coarse "
        f"{target_layer.coarse_pyramid_size and list(target_layer.coarse_pyramid_size)}) with "
        "the input through --model_overrides=fine_pyramid_sizes=... / coarse_pyramid_sizes=... "
        "so the kernels keep their shape",
    )


HOOKS = {
    LocalWindowAttention: resize_window_table,
    PositionEmbedding: resize_position_embedding,
    GlobalPyramidAttention: refuse_pyramid_kernel,
}
