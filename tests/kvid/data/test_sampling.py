"""kvid.data.sampling (numpy) gives the input pipeline's evaluation views."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from kvid.data import dataset, pipeline, sampling


@pytest.mark.parametrize(
    "frame_size, size",
    [((72, 72), (64, 64)), ((96, 48), (40, 21)), ((20, 30), (45, 31)), ((37, 53), (37, 53))],
)
def test_resize_is_tensorflows_antialiased_bilinear(frame_size, size):
    frames = np.random.default_rng(0).integers(0, 256, (2, *frame_size, 3), dtype=np.uint8)
    expected = tf.image.resize(frames, size, method="bilinear", antialias=True).numpy() / 255.0
    np.testing.assert_allclose(sampling.resize_frames(frames, size), expected, atol=1e-4)


@settings(max_examples=200, deadline=None)
@given(
    num_available=st.integers(1, 300),
    num_frames=st.integers(1, 16),
    frame_stride=st.integers(1, 4),
    num_clips=st.integers(2, 10),
)
def test_clip_starts_are_the_pipelines(num_available, num_frames, frame_stride, num_clips):
    last_start = max(num_available - (num_frames - 1) * frame_stride - 1, 0)
    positions = tf.linspace(0.0, tf.cast(last_start, tf.float32), num_clips)
    expected = tf.cast(tf.round(positions), tf.int32).numpy()
    starts = sampling.clip_starts(num_available, num_frames, frame_stride, num_clips)
    np.testing.assert_array_equal(starts, expected)


def _write_dataset(folder, videos):
    examples = [
        dataset.encode_clip([tf.io.encode_jpeg(f).numpy() for f in frames], 0, "a", f"v{i}")
        for i, frames in enumerate(videos)
    ]
    dataset.write_shards(iter(examples), str(folder), "test", 1)
    dataset.write_dataset_info(
        str(folder), ["a"], [], [], {"test": len(videos)}, min(len(v) for v in videos), None
    )


@pytest.mark.parametrize("num_clips, num_crops", [(1, 1), (3, 3)])
def test_eval_views_are_the_pipelines_on_the_same_frames(tmp_path, num_clips, num_crops):
    rng = np.random.default_rng(1)
    shapes = [(5, 72, 72), (16, 48, 96), (40, 100, 60), (23, 30, 30)]  # long, wide, tall, small
    videos = [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for n, h, w in shapes]
    _write_dataset(tmp_path, videos)
    config = pipeline.InputConfig(
        data_dir=str(tmp_path),
        num_frames=8,
        image_size=(32, 40),
        batch_size=1,
        frame_stride=2,
        num_clips=num_clips,
        num_crops=num_crops,
        deterministic=True,
    )
    batches = list(pipeline.eval_dataset(config, "test"))
    assert len(batches) == len(videos)
    for (views, _), frames in zip(batches, videos, strict=True):
        # The pipeline decodes the stored JPEGs: feed numpy the same decoded frames.
        stored = np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(f)).numpy() for f in frames])
        mine = sampling.eval_views(stored, 8, (32, 40), 2, num_clips, num_crops)
        assert mine.shape == views.shape[1:]
        np.testing.assert_allclose(mine, views.numpy()[0], atol=1e-4)


def test_window_starts_cover_the_video():
    assert sampling.window_starts(100, 8, 2, 10) == list(range(0, 86, 10))
    assert sampling.window_starts(5, 8, 2, 4) == [0]  # shorter than one clip: one window
    with pytest.raises(ValueError, match="window stride"):
        sampling.window_starts(100, 8, 2, 0)
