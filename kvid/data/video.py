"""Video decoding with PyAV: frames as uint8 RGB arrays, and their JPEG encoding."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image


def _resize(frame: np.ndarray, frame_size: int | tuple[int, int] | None) -> np.ndarray:
    if frame_size is None:
        return frame
    height, width = frame.shape[:2]
    if isinstance(frame_size, int):  # short side, aspect ratio kept
        scale = frame_size / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        size = (frame_size[1], frame_size[0])
    if size == (width, height):
        return frame
    # PIL widens the bilinear kernel when shrinking, so downscaling is anti-aliased.
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def decode_frames(
    path: str, frame_size: int | tuple[int, int] | None, max_frames: int | None
) -> Iterator[np.ndarray]:
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        # Parallelism is across clips; per-file decoder threads cost more than they save here.
        stream.thread_count = 1
        # One reformatter per video keeps its colour conversion context across frames (a new one
        # per frame doubled the decoding time of short clips).
        reformatter = VideoReformatter()
        count = 0
        for frame in container.decode(stream):
            rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
            yield _resize(rgb, frame_size)
            count += 1
            if max_frames is not None and count >= max_frames:
                return
        if count == 0:
            raise ValueError("no decodable video frame")


def video_frame_rate(path: str) -> float | None:
    """Frames per second of a video's first video stream (its average rate), None if unknown."""
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else None


def decode_video(
    path: str,
    frame_size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decodes all frames (or the first `max_frames`) of a video as uint8 RGB (T, H, W, 3).

    `frame_size` is `(height, width)`, or an int for the short side (aspect ratio kept).
    """
    return np.stack(list(decode_frames(path, frame_size, max_frames)))


def encode_jpeg(frames: np.ndarray | Sequence[np.ndarray], quality: int = 90) -> list[bytes]:
    """JPEG-encodes every frame of a uint8 RGB clip (T, H, W, 3)."""
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    return encoded
