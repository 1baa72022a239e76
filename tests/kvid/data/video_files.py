"""Tiny real video files for the decoding and preparation tests, written with PyAV."""

from __future__ import annotations

import fractions

import av
import numpy as np

# name -> (file name, codec, pixel format): one per container/codec family users bring.
FORMATS = {
    "mp4_h264": ("clip.mp4", "libx264", "yuv420p"),
    "webm_vp9": ("clip.webm", "libvpx-vp9", "yuv420p"),
    "avi_mjpeg": ("clip.avi", "mjpeg", "yuvj420p"),
    "mkv_hevc": ("clip.mkv", "libx265", "yuv420p"),
    "mov_mpeg4": ("clip.mov", "mpeg4", "yuv420p"),
}


def ramp(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame k is grey level 16 * k, with a white top band: frame order and orientation show."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[:] = (16 * np.arange(num_frames, dtype=np.uint8))[:, None, None, None]
    frames[:, : max(1, height // 4)] = 255
    return frames


def write_video(
    path: str,
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rate: int = 8,
    rotation: int | None = None,
    times_ms: list[int] | None = None,
    source_format: str = "rgb24",
) -> str:
    """Writes frames (T, H, W, C) with `codec`; `times_ms` gives variable frame times."""
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=none"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                array[..., 0] if source_format == "gray" else array, format=source_format
            )
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def write_audio_only(path: str) -> str:
    """An AAC .m4a file: a valid media file without a video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)
