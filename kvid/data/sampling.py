"""Evaluation clip sampling in numpy: the same clips, resize and crops as the input pipeline.

`kvid.data.pipeline` samples evaluation views in-graph (TensorFlow); on a device, or in
`kvid-classify`, there is no TensorFlow, so this module states the same rules with numpy:

- `clip_starts`: `num_clips` uniformly spaced clips of `num_frames` frames every `frame_stride`
  frames (one clip: the middle one); frames past the end repeat the last frame.
- `eval_resize_size`: the frame is scaled so that the centre crop keeps `EVAL_CROP_FRACTION` of
  the tighter side, never upsampled beyond the decoded frame unless the model input is larger.
- `resize_frames`: bilinear with antialiasing (a triangle kernel widened when shrinking), the
  kernel of `tf.image.resize(..., "bilinear", antialias=True)`.
- `crop_offsets`: the centre crop, or start / centre / end along the long side.

A test holds `eval_views` equal to the pipeline's evaluation views on the same stored frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The centre crop keeps 87.5% of the frame (the 224-of-256 ImageNet convention).
EVAL_CROP_FRACTION = 0.875


def clip_span(num_frames: int, frame_stride: int) -> int:
    """Frames covered by one clip: `(num_frames - 1) * frame_stride + 1`."""
    return (num_frames - 1) * frame_stride + 1


def clip_starts(
    num_available: int, num_frames: int, frame_stride: int, num_clips: int
) -> np.ndarray:
    """First frame of each of `num_clips` uniformly spaced clips (one clip: the middle one)."""
    last_start = max(num_available - clip_span(num_frames, frame_stride), 0)
    if num_clips == 1:
        return np.array([last_start // 2])
    # float32 as in the pipeline (tf.linspace), rounded half to even as tf.round does.
    step = np.float32(last_start) / np.float32(num_clips - 1)
    positions = np.arange(num_clips, dtype=np.float32) * step
    return np.round(positions).astype(np.int64)


def clip_indices(
    starts: Sequence[int], num_frames: int, frame_stride: int, num_available: int
) -> np.ndarray:
    """(clips, num_frames) frame indices; indices past the end repeat the last frame."""
    indices = np.asarray(starts)[:, None] + np.arange(num_frames)[None, :] * frame_stride
    return np.minimum(indices, num_available - 1)


def eval_resize_size(frame_size: Sequence[int], image_size: Sequence[int]) -> tuple[int, int]:
    """(height, width) the evaluation resizes a `frame_size` frame to before cropping."""
    shape = np.asarray(frame_size, np.float32)
    target = np.asarray(image_size, np.float32)
    scale = np.minimum(np.max(target / (shape * np.float32(EVAL_CROP_FRACTION))), np.float32(1))
    scale = np.maximum(scale, np.max(target / shape))
    new_size = np.ceil(shape * scale - np.float32(1e-3)).astype(np.int64)
    new_size = np.maximum(new_size, np.asarray(image_size, np.int64))
    return int(new_size[0]), int(new_size[1])


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of the antialiased bilinear (triangle) kernel, half-pixel centres."""
    inverse_scale = in_size / out_size
    kernel_scale = max(inverse_scale, 1.0)  # widened when shrinking: antialiasing
    centres = (np.arange(out_size) + 0.5) * inverse_scale
    distance = (np.arange(in_size)[None, :] + 0.5 - centres[:, None]) / kernel_scale
    weights = np.maximum(0.0, 1.0 - np.abs(distance))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_frames(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 frames (N, h, w, 3) -> float32 in [0, 1] at `size` (height, width)."""
    frames = np.asarray(frames)
    height, width = int(size[0]), int(size[1])
    pixels = frames.astype(np.float32)
    if frames.shape[1:3] != (height, width):
        rows = _resize_weights(frames.shape[1], height)
        cols = _resize_weights(frames.shape[2], width)
        pixels = np.einsum("hi,nijc->nhjc", rows, pixels)
        pixels = np.einsum("wj,nhjc->nhwc", cols, pixels)
    return np.clip(pixels / 255.0, 0.0, 1.0)


def crop_offsets(
    resized: Sequence[int], image_size: Sequence[int], num_crops: int
) -> list[tuple[int, int]]:
    """(y, x) of each crop: the centre, or start / centre / end along the long side."""
    new_height, new_width = resized
    height, width = image_size
    mid_y, mid_x = (new_height - height) // 2, (new_width - width) // 2
    if num_crops == 1:
        return [(mid_y, mid_x)]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    tall = new_height > new_width  # square frames: along the width
    ends = ((0, 0), (mid_y, mid_x), (new_height - height, new_width - width))
    return [(y, mid_x) if tall else (mid_y, x) for y, x in ends]


def eval_views(
    frames: np.ndarray,
    num_frames: int,
    image_size: Sequence[int],
    frame_stride: int = 1,
    num_clips: int = 1,
    num_crops: int = 1,
) -> np.ndarray:
    """The evaluation views of one video: uint8 frames (N, h, w, 3) -> float32
    (num_clips * num_crops, num_frames, H, W, 3) in [0, 1], clip-major (`v = clip * crops + crop`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"expected frames (N, h, w, 3) with N > 0, got {frames.shape}")
    starts = clip_starts(len(frames), num_frames, frame_stride, num_clips)
    indices = clip_indices(starts, num_frames, frame_stride, len(frames))
    resized_size = eval_resize_size(frames.shape[1:3], image_size)
    return views_from_resized(resize_frames(frames, resized_size), indices, image_size, num_crops)


def views_from_resized(
    resized: np.ndarray, indices: np.ndarray, image_size: Sequence[int], num_crops: int = 1
) -> np.ndarray:
    """Views (clips * crops, T, H, W, 3) from frames already at `eval_resize_size`.

    `indices` is (clips, T) as from `clip_indices`.
    """
    height, width = image_size
    clips = resized[indices]  # (clips, T, h, w, 3)
    views = [
        clips[:, :, y : y + height, x : x + width]
        for y, x in crop_offsets(resized.shape[1:3], image_size, num_crops)
    ]
    stacked = np.stack(views, axis=1)  # (clips, crops, T, H, W, 3)
    return stacked.reshape(-1, *stacked.shape[2:])


def window_starts(num_available: int, num_frames: int, frame_stride: int, stride: int) -> list[int]:
    """First frame of each sliding window over a video, every `stride` frames; a video shorter
    than one clip gives one window (its frames repeat the last one)."""
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")
    last_start = max(num_available - clip_span(num_frames, frame_stride), 0)
    return list(range(0, last_start + 1, stride))
