"""What Mobile-Former needs for another input size: nothing, except in its Edge TPU form.

Mobile-Former has no position table: its global tokens are learned vectors that attend to the
feature map at any size, and its (2+1)D convolutions work at any frame size and number of
frames. The Edge TPU form's static bridges (`PooledMobile2Former`, `GatedFormer2Mobile`) map every
frame's grid cells to the tokens and back with one weight per frame, so they keep the number of
frames they were trained with (the frame size may change when the grid still tiles it).
"""

from __future__ import annotations

import numpy as np

from kvid.models.mobile_former.edgetpu import GatedFormer2Mobile, PooledMobile2Former


def refuse_frame_maps(name, value, source_layer, target_layer, shape) -> np.ndarray:
    from kvid.models.transfer import TransferError

    raise TransferError(
        f"layer {target_layer.name}: {name} is {list(value.shape)} in the source and "
        f"{list(shape)} here; the Edge TPU bridge maps each of the {source_layer.num_frames} "
        f"frames' grid cells and cannot change to {target_layer.num_frames} frames: keep "
        f"--num_frames={source_layer.num_frames}"
    )


HOOKS = {PooledMobile2Former: refuse_frame_maps, GatedFormer2Mobile: refuse_frame_maps}
