"""Tests of kvid.data.video: real files of the containers and codecs users bring, and bad ones."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvid.data.video import DecodeError, decode_frames, decode_video
from tests.kvid.data.video_files import FORMATS, ramp, write_audio_only, write_video

FRAMES = 12


def _levels(frames: np.ndarray) -> np.ndarray:
    """Mean grey level of each frame below the white band."""
    return frames[:, frames.shape[1] // 2 :].mean(axis=(1, 2, 3))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    paths = {}
    for name, (file_name, codec, pix_fmt) in FORMATS.items():
        paths[name] = write_video(root / f"{name}_{file_name}", ramp(FRAMES), codec, pix_fmt)
    paths["webm_16"] = write_video(root / "long.webm", ramp(16), "libvpx-vp9")
    paths["gray_odd"] = write_video(
        root / "gray.mkv", ramp(FRAMES, 61, 97), "ffv1", "gray", source_format="gray"
    )
    paths["odd"] = write_video(root / "odd.mp4", ramp(FRAMES, 61, 97), "libx264", "yuv444p")
    paths["alpha"] = write_video(
        root / "alpha.mov",
        np.concatenate([ramp(FRAMES), np.full((FRAMES, 48, 64, 1), 99, np.uint8)], axis=-1),
        "png",
        "rgba",
        source_format="rgba",
    )
    for degrees in (90, -90):
        paths[f"rotate{degrees}"] = write_video(
            root / f"rotate{degrees}.mp4", ramp(FRAMES), rotation=degrees
        )
    paths["vfr"] = write_video(
        root / "vfr.mp4", ramp(8), times_ms=[0, 100, 150, 400, 500, 900, 950, 1000]
    )
    return root, paths


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_container_and_codec_decodes_every_frame_in_order(files, name):
    _, paths = files
    frames = decode_video(paths[name])
    assert frames.shape == (FRAMES, 48, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(_levels(frames), 16 * np.arange(FRAMES), atol=4.0)


def test_greyscale_alpha_and_odd_sizes_become_rgb(files):
    _, paths = files
    gray = decode_video(paths["gray_odd"])
    assert gray.shape == (FRAMES, 61, 97, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    np.testing.assert_allclose(_levels(gray), 16 * np.arange(FRAMES), atol=1.0)
    assert decode_video(paths["odd"]).shape == (FRAMES, 61, 97, 3)
    # The short side is set while decoding: 61x97 -> 30x48.
    assert decode_video(paths["odd"], frame_size=30).shape == (FRAMES, 30, 48, 3)
    alpha = decode_video(paths["alpha"])
    assert alpha.shape == (FRAMES, 48, 64, 3)
    np.testing.assert_allclose(_levels(alpha), 16 * np.arange(FRAMES), atol=1.0)


@pytest.mark.parametrize("degrees, band_column", [(90, 0), (-90, -1)])
def test_the_display_rotation_is_applied(files, degrees, band_column):
    _, paths = files
    frames = decode_video(paths[f"rotate{degrees}"], frame_size=24)
    # 48x64 stored, shown rotated: 64x48, the short side resized to 24 -> 32x24.
    assert frames.shape == (FRAMES, 32, 24, 3)
    # The white top band of the stored frames is on the left (counterclockwise) or right.
    columns = frames[-1].mean(axis=(0, 2))
    assert columns[band_column] > 240 and columns[len(columns) // 2] < 200


def test_fps_resamples_variable_frame_rate_by_timestamps(files):
    _, paths = files
    frames = decode_video(paths["vfr"], fps=10)
    times = np.array([0, 100, 150, 400, 500, 900, 950, 1000]) / 1000
    # Each output time k / 10 shows the latest frame whose time is not after it.
    expected = [np.searchsorted(times, k / 10 + 1e-6) - 1 for k in range(10)]
    np.testing.assert_allclose(_levels(frames)[:10], 16 * np.array(expected), atol=4.0)
    # After 1.0 s the last frame is shown for as long as the file says it lasts.
    np.testing.assert_allclose(_levels(frames)[10:], 16 * 7, atol=4.0)
    every = decode_video(paths["vfr"])
    assert len(every) == 8


def test_span_seconds_and_frame_limits(files):
    _, paths = files
    # 8 frames per second: frame k is at k / 8 s.
    cut = decode_video(paths["mp4_h264"], start=0.5, end=1.25)
    np.testing.assert_allclose(_levels(cut), 16 * np.arange(4, 10), atol=4.0)
    assert len(decode_video(paths["mp4_h264"], start=0.5, max_seconds=0.5)) == 4
    assert len(decode_video(paths["mp4_h264"], max_frames=3)) == 3
    halved = decode_video(paths["mp4_h264"], fps=4)
    np.testing.assert_allclose(_levels(halved), 32 * np.arange(6), atol=4.0)
    with pytest.raises(DecodeError, match="no frame after 5 s"):
        decode_video(paths["mp4_h264"], start=5)


def test_decoding_stops_once_enough_frames_are_taken(files, tmp_path):
    _, paths = files
    data = open(paths["webm_16"], "rb").read()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(DecodeError, match="truncated"):
        decode_video(str(cut))
    # The first frames come before the cut: taking only them never reads it.
    assert len(decode_video(str(cut), max_frames=2)) == 2


def _bad_files(root, paths) -> dict:
    bad = {}
    for name in ("mp4_h264", "webm_16"):
        data = open(paths[name], "rb").read()
        for fraction in (0.1, 0.5, 0.8):
            path = root / f"truncated_{fraction}_{os.path.basename(paths[name])}"
            path.write_bytes(data[: int(len(data) * fraction)])
            bad[f"{name} truncated at {fraction}"] = str(path)
    (root / "zero.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "notes.mp4").write_text("these are not the frames you are looking for\n" * 20)
    from PIL import Image

    Image.fromarray(ramp(1)[0]).save(root / "picture.png")
    os.rename(root / "picture.png", root / "picture.mp4")
    (root / "folder.mp4").mkdir()
    bad.update(
        zero=str(root / "zero.mp4"),
        random=str(root / "random.mp4"),
        text_with_video_extension=str(root / "notes.mp4"),
        image_with_video_extension=str(root / "picture.mp4"),
        audio_only=write_audio_only(root / "audio.m4a"),
        directory=str(root / "folder.mp4"),
        missing=str(root / "missing.mp4"),
    )
    return bad


def test_every_kind_of_bad_file_is_a_decode_error_with_a_reason(files, tmp_path):
    _, paths = files
    bad = _bad_files(tmp_path, paths)
    reasons = {}
    for name, path in bad.items():
        with pytest.raises(DecodeError) as error:
            decode_video(path)
        reasons[name] = str(error.value)
        assert reasons[name] and path not in reasons[name]
    assert reasons["zero"] == "an empty file (0 bytes)"
    assert reasons["audio_only"] == "no video stream (streams: audio)"
    assert reasons["directory"] == "a directory, not a video file"
    assert reasons["missing"] == "no such file"
    assert reasons["image_with_video_extension"].startswith("an image, not a video")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(min_size=1, max_size=3000), offset=st.integers(0, 2000), keep=st.booleans())
def test_random_bytes_never_escape_as_anything_but_a_decode_error(
    files, tmp_path, data, offset, keep
):
    """Random bytes, alone or written over part of a real file: frames or a DecodeError."""
    _, paths = files
    content = data
    if keep:
        real = bytearray(open(paths["mp4_h264"], "rb").read())
        real[offset : offset + len(data)] = data
        content = bytes(real)
    path = tmp_path / "fuzz.mp4"
    path.write_bytes(content)
    try:
        for frame in decode_frames(str(path)):
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    except DecodeError as error:
        assert str(error)
