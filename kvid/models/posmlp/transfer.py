"""Resizing PosMLP-Video's relative-position tables for another window or number of frames.

A gating unit's table holds one entry per relative offset of a `(t, h, w)` window, a
`(2t-1, 2h-1, 2w-1)` grid, and its token bias one entry per window position. The windows follow
the input: a temporal unit spans the clip (the released code's `WIN_SIZE_T` equals the frames),
a spatial window `None` the whole frame. The released code cannot change them (it loads ImageNet
tables of the same window); kvid resizes both grids, linearly along time and bicubically in space
(Swin's resize of its relative-position bias table).
"""

from __future__ import annotations

import numpy as np

from kvid.models.posmlp.positional_gating import PositionalGating


def resize_gating_tables(name, value, source_layer, target_layer, shape) -> np.ndarray:
    """`relative_position_bias_table` and `token_bias` of `source_layer.window` resized to
    `target_layer.window`."""
    from kvid.models.transfer import TransferError, resize_relative_table, resize_window_bias

    window, new_window = source_layer.window, target_layer.window
    if name == "relative_position_bias_table" and value.shape[1] == shape[1]:
        return resize_relative_table(value, window, new_window)
    if name == "token_bias":
        return resize_window_bias(value, window, new_window)
    raise TransferError(
        f"layer {target_layer.name}: {name} is {list(value.shape)} in the source and "
        f"{list(shape)} here (window {list(window)} -> {list(new_window)}); only the window may "
        "change, not gamma"
    )


HOOKS = {PositionalGating: resize_gating_tables}
