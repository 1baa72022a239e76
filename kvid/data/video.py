"""Video decoding with PyAV: frames as uint8 RGB arrays, and their JPEG encoding.

`decode_frames` streams: each frame is converted, rotated and resized as it is decoded and only
the frames that are kept are converted at all, so a long high-resolution video never holds more
than one full-size frame in memory, and decoding stops as soon as the requested span is read.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

# Timestamps closer than this (seconds) count as equal: frame times and the targets of `fps`
# are both rounded from rational time bases.
_TIME_TOLERANCE = 1e-4


class DecodeError(ValueError):
    """A file that cannot be read as a video; the message says why, without the path."""


# What PyAV and the OS raise for a file that is not a readable video (PyAV's FFmpegError covers
# FFmpeg's own errors; its subclasses also derive from the matching builtin errors).
_READ_ERRORS = (av.FFmpegError, OSError, EOFError, ValueError, IndexError, OverflowError)


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _output_size(
    height: int, width: int, frame_size: int | tuple[int, int] | None
) -> tuple[int, int]:
    """(height, width) of a displayed frame of size height x width after `frame_size`."""
    if frame_size is None:
        return height, width
    if isinstance(frame_size, int):  # short side, aspect ratio kept
        scale = frame_size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return int(frame_size[0]), int(frame_size[1])


def _check_path(path: str) -> None:
    if os.path.isdir(path):
        raise DecodeError("a directory, not a video file")
    if not os.path.exists(path):
        raise DecodeError("no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError("an empty file (0 bytes)")


class _Converter:
    """Decoded frame -> uint8 RGB at the output size, with the display rotation applied."""

    def __init__(self, frame_size: int | tuple[int, int] | None):
        self.frame_size = frame_size
        # One reformatter per video keeps its colour conversion context across frames (a new one
        # per frame doubled the decoding time of short clips).
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        # Phones store portrait video as landscape pixels plus a display rotation
        # (counterclockwise degrees); the stored clip is what a player shows.
        turns = round((frame.rotation or 0) / 90) % 4
        shown = (frame.height, frame.width) if turns % 2 == 0 else (frame.width, frame.height)
        height, width = _output_size(*shown, self.frame_size)
        if turns % 2:
            height, width = width, height
        # Greyscale, alpha and high bit-depth sources all become 8-bit RGB here; scaling in the
        # same swscale pass is cheaper than converting the full-size frame first.
        rgb = self.reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation="AREA"
        ).to_ndarray()
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _stated_duration(stream) -> float | None:
    """Seconds the video stream says it lasts (MP4/MOV header, Matroska DURATION tag)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration") or ""
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag.strip())
    if match:
        hours, minutes, seconds = match.groups()
        return 3600 * int(hours) + 60 * int(minutes) + float(seconds)
    return None


def _check_complete(stream, last_time: float | None, last_duration: float, rate: float) -> None:
    """Raises DecodeError when the frames stop well before the stream's stated duration.

    FFmpeg decodes a cut-off Matroska or WebM file up to the cut without an error; kept, it
    would be a silently shortened clip. A frame and a half (plus 1%) of slack allows for
    rounding of the stated duration.
    """
    stated = _stated_duration(stream)
    if last_time is None or not stated:
        return
    shown_until = last_time + last_duration
    if stated - shown_until > 1.5 / rate + 0.01 * stated:
        raise DecodeError(
            f"truncated: the frames stop at {shown_until:.2f} s of the stated {stated:.2f} s"
        )


def decode_frames(
    path: str,
    frame_size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    *,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Yields the frames of a video's first video stream as uint8 RGB arrays (H, W, 3).

    Args:
      path: any file FFmpeg reads.
      frame_size: None keeps the displayed size; (height, width) resizes; an int sets the short
        side (aspect ratio kept). Applied while decoding.
      max_frames: stop after this many frames.
      fps: resample to this frame rate by timestamps (each output time takes the latest frame
        shown at that time), so variable frame rate video comes out evenly spaced; None keeps
        every decoded frame.
      start, end: the span to keep, in seconds from the start of the video (None = from the
        start / to the end). The decoder seeks to `start`.
      max_seconds: keep at most this many seconds after `start`.

    Raises:
      DecodeError: the file cannot be read as a video (the message says why). It is raised
        for any unreadable input, also part-way through a file.
    """
    _check_path(path)
    try:
        yield from _decode(path, frame_size, max_frames, fps, start, end, max_seconds)
    except DecodeError:
        raise
    except _READ_ERRORS as error:
        raise DecodeError(_reason(error)) from None


def _decode(path, frame_size, max_frames, fps, start, end, max_seconds) -> Iterator[np.ndarray]:
    start = max(0.0, float(start or 0.0))
    stop = math.inf if end is None else float(end)
    if max_seconds is not None:
        stop = min(stop, start + float(max_seconds))
    if stop <= start:
        raise DecodeError(f"empty span: start {start:g} s, end {stop:g} s")
    limit = math.inf if max_frames is None else max_frames
    # Only local files: a playlist or concat file must not make FFmpeg open URLs.
    options = {"protocol_whitelist": "file"}
    with av.open(path, metadata_errors="ignore", container_options=options) as container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise DecodeError(f"an image, not a video (format {container.format.name})")
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            raise DecodeError(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        # Parallelism is across videos; per-file decoder threads cost more than they save here.
        stream.thread_count = 1
        time_base = stream.time_base
        origin = (
            float(stream.start_time * time_base)
            if stream.start_time is not None and time_base
            else 0.0
        )
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        if start > 0:
            try:
                container.seek(round((origin + start) / time_base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0)  # not seekable: decode from the beginning
        convert = _Converter(frame_size)
        count, last_time, held, held_rgb, held_duration = 0, None, None, None, 1.0 / rate
        target = start  # the next output time when resampling
        for frame in container.decode(stream):
            time = None if frame.time is None else frame.time - origin
            if time is None or (last_time is not None and time <= last_time):
                # No usable timestamp: the frame follows its predecessor.
                time = 0.0 if last_time is None else last_time + 1.0 / rate
            if frame.duration and time_base:
                held_duration = float(frame.duration * time_base)
            if fps is None:
                last_time = time
                if time < start - _TIME_TOLERANCE:
                    continue
                if time >= stop - _TIME_TOLERANCE:
                    break
                yield convert(frame)
                count += 1
                if count >= limit:
                    return
                continue
            # Resampling: the held frame is shown until this one's time.
            while held is not None and target < min(time, stop) - _TIME_TOLERANCE:
                if held_rgb is None:
                    held_rgb = convert(held)
                yield held_rgb
                count += 1
                target = start + count / fps
                if count >= limit:
                    return
            if target >= stop - _TIME_TOLERANCE:
                break
            held, held_rgb, last_time = frame, None, time
        else:  # the stream ended before any limit: it must reach its stated duration
            _check_complete(stream, last_time, held_duration, rate)
        if fps is not None and held is not None:
            shown_until = min(stop, last_time + held_duration)
            while target < shown_until - _TIME_TOLERANCE and count < limit:
                if held_rgb is None:
                    held_rgb = convert(held)
                yield held_rgb
                count += 1
                target = start + count / fps
        if count == 0:
            if start > 0 or stop < math.inf:
                span = f"after {start:g} s" if stop == math.inf else f"in {start:g}-{stop:g} s"
                raise DecodeError(f"no frame {span} (the last is at {last_time or 0:.2f} s)")
            raise DecodeError("no decodable video frame")


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
    **options: float | None,
) -> np.ndarray:
    """Decodes a video as uint8 RGB (T, H, W, 3): `decode_frames` (same arguments) stacked."""
    return np.stack(list(decode_frames(path, frame_size, max_frames, **options)))


def encode_jpeg(frames: np.ndarray | Sequence[np.ndarray], quality: int = 90) -> list[bytes]:
    """JPEG-encodes every frame of a uint8 RGB clip (T, H, W, 3)."""
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    return encoded
