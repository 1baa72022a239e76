"""Tests of the tf.data input pipeline (kvid_training.pipeline).

The fixture videos carry their own bookkeeping in the pixels: in clip `i`, frame `k` has red = 10k
and green = 20i everywhere, and blue rises from left to right. A sampled frame therefore tells
which clip and which frame it came from, and whether it was flipped.
"""

import dataclasses
import glob
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from kvid.data import dataset, pipeline
from kvid.data.video import encode_jpeg

CLASSES = ["turn_left", "turn_right", "spin", "text"]
FLIP_PAIRS = [["turn_left", "turn_right"]]
FLIP_BREAKS = ["text"]
NUM_CLIPS, NUM_FRAMES, SHORT_CLIP, SHORT_FRAMES = 12, 20, 11, 5
HEIGHT, WIDTH = 48, 64


def _label(clip: int) -> int:
    return clip % len(CLASSES)


def _clip_frames(clip: int) -> np.ndarray:
    length = SHORT_FRAMES if clip == SHORT_CLIP else NUM_FRAMES
    frames = np.zeros((length, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 0] = 10 * np.arange(length)[:, None, None]
    frames[..., 1] = 20 * clip
    frames[..., 2] = np.linspace(0, 255, WIDTH).astype(np.uint8)
    return frames


def _write_dataset(data_dir, make_frames, num_clips, shards) -> None:
    for split, num_shards in shards.items():
        examples = (
            dataset.encode_clip(
                encode_jpeg(make_frames(i), quality=95),
                _label(i),
                CLASSES[_label(i)],
                str(i),
            )
            for i in range(num_clips)
        )
        dataset.write_shards(examples, data_dir, split, num_shards)
    lengths = [len(make_frames(i)) for i in range(num_clips)]
    dataset.write_dataset_info(
        data_dir,
        CLASSES,
        [],
        FLIP_PAIRS,
        {split: num_clips for split in shards},
        min(lengths),
        (HEIGHT, WIDTH),
        flip_breaks=FLIP_BREAKS,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ramps"))
    _write_dataset(path, _clip_frames, NUM_CLIPS, {"train": 3, "test": 2})
    return path


def _config(data_dir, **overrides) -> pipeline.InputConfig:
    values = dict(
        data_dir=data_dir, num_frames=4, image_size=(32, 32), batch_size=4, deterministic=True
    )
    values.update(overrides)
    return pipeline.InputConfig(**values)


def _read(clip_video: np.ndarray):
    """(clip, frame indices, flipped) of one output clip (T, H, W, 3)."""
    red = np.median(clip_video[..., 0], axis=(1, 2)) * 255
    green = np.median(clip_video[..., 1]) * 255
    blue = clip_video[..., 2].mean(axis=(0, 1))
    half = len(blue) // 2
    flipped = blue[:half].mean() > blue[half:].mean()
    return int(round(green / 20)), np.round(red / 10).astype(int).tolist(), bool(flipped)


def _train_samples(config, num_batches):
    samples = []
    for videos, labels in pipeline.train_dataset(config).take(num_batches):
        for video, label in zip(videos.numpy(), labels.numpy()):
            samples.append((*_read(video), int(label)))
    return samples


def _span_start(length: int, num_frames: int, stride: int):
    return max(length - (num_frames - 1) * stride - 1, 0)


def test_train_batches_have_the_documented_shapes_and_range(data_dir):
    videos, labels = next(iter(pipeline.train_dataset(_config(data_dir, batch_size=5))))
    assert videos.shape == (5, 4, 32, 32, 3) and videos.dtype == tf.float32
    assert labels.shape == (5,) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(videos)) and float(tf.reduce_max(videos)) <= 1.0
    # One epoch without repeat drops the partial batch: 12 clips -> 2 batches of 5.
    single_epoch = pipeline.train_dataset(_config(data_dir, batch_size=5), repeat=False)
    assert sum(1 for _ in single_epoch) == 2


def test_train_sampling_follows_the_stride_and_repeats_the_last_frame(data_dir):
    samples = _train_samples(_config(data_dir, num_frames=6, frame_stride=3, batch_size=6), 8)
    starts = set()
    for clip, frames, _, label in samples:
        assert label == _label(clip)
        if clip == SHORT_CLIP:  # 5 frames: 0, 3, then the last frame (4) repeated
            assert frames == [0, 3, 4, 4, 4, 4]
            continue
        assert frames == [frames[0] + 3 * t for t in range(6)]
        assert 0 <= frames[0] <= _span_start(NUM_FRAMES, 6, 3)
        starts.add(frames[0])
    assert len(starts) > 2  # the start is random


def test_stride_jitter_draws_one_stride_per_clip(data_dir):
    config = _config(data_dir, num_frames=4, frame_stride=2, stride_jitter=1, batch_size=6)
    strides = set()
    for clip, frames, _, _ in _train_samples(config, 8):
        if clip != SHORT_CLIP:
            steps = set(np.diff(frames).tolist())
            assert len(steps) == 1 and steps <= {1, 2, 3}
            strides |= steps
    assert strides == {1, 2, 3}


def test_eval_clips_are_uniformly_spaced_and_cover_every_video_once(data_dir):
    config = _config(data_dir, num_frames=4, frame_stride=2, num_clips=3, batch_size=5)
    seen, batch_sizes = [], []
    for videos, labels in pipeline.eval_dataset(config):
        assert videos.shape[1:] == (3, 4, 32, 32, 3)
        batch_sizes.append(len(labels))
        for views, label in zip(videos.numpy(), labels.numpy()):
            clip = _read(views[0])[0]
            seen.append(clip)
            assert label == _label(clip)
            length = SHORT_FRAMES if clip == SHORT_CLIP else NUM_FRAMES
            last = _span_start(length, 4, 2)
            for view, start in zip(views, np.round(np.linspace(0, last, 3)).astype(int)):
                assert _read(view)[1] == [min(start + 2 * t, length - 1) for t in range(4)]
    assert sorted(seen) == list(range(NUM_CLIPS))
    assert batch_sizes == [5, 5, 2]  # the last partial batch is kept


def test_eval_views_are_clip_major_with_three_crops_along_the_long_side(data_dir):
    config = _config(data_dir, num_frames=2, frame_stride=1, num_clips=2, num_crops=3)
    videos, _ = next(iter(pipeline.eval_dataset(config)))
    assert videos.shape == (4, 6, 2, 32, 32, 3)
    views = videos.numpy()[0]
    first_frames = [_read(view)[1][0] for view in views]
    assert first_frames[:3] == [0] * 3 and first_frames[3:] == [NUM_FRAMES - 2] * 3
    # Frames are wider than tall: left, centre and right crops have increasing blue.
    blue = views[..., 2].mean(axis=(1, 2, 3))
    assert blue[0] < blue[1] < blue[2] and blue[3] < blue[4] < blue[5]


def test_eval_middle_clip_and_upsampling(data_dir):
    config = _config(data_dir, num_frames=4, frame_stride=2, image_size=(96, 80), batch_size=12)
    videos, _ = next(iter(pipeline.eval_dataset(config)))
    assert videos.shape == (12, 1, 4, 96, 80, 3)
    middle = _span_start(NUM_FRAMES, 4, 2) // 2
    for view in videos.numpy()[:, 0]:
        if _read(view)[0] != SHORT_CLIP:
            assert _read(view)[1] == [middle + 2 * t for t in range(4)]


def test_representative_clips_are_single_eval_clips(data_dir):
    config = _config(data_dir, num_frames=4, frame_stride=2, num_clips=2, num_crops=3)
    clips = list(pipeline.representative_clips(config, split="train", count=3))
    assert len(clips) == 3
    for clip in clips:
        assert clip.shape == (1, 4, 32, 32, 3) and clip.dtype == np.float32


def test_train_crop_box_is_shared_by_all_frames(tmp_path):
    rng = np.random.default_rng(0)
    textures = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(3)]
    static_dir = str(tmp_path)
    _write_dataset(static_dir, lambda i: np.stack([textures[i]] * 10), 3, {"train": 1})
    config = _config(static_dir, num_frames=4, batch_size=3, min_crop_area=0.2)
    outputs = []
    for videos, _ in pipeline.train_dataset(config).take(4):
        for video in videos.numpy():
            for t in range(1, 4):
                np.testing.assert_array_equal(video[t], video[0])
            outputs.append(video[0].tobytes())
    # The crop itself is random: 12 samples of 3 clips give more than 3 different images.
    assert len(set(outputs)) > 3


def test_flip_swaps_paired_labels_and_spares_flip_breaks(data_dir):
    config = _config(data_dir, num_frames=2, batch_size=12, flip=True)
    swap = {0: 1, 1: 0, 2: 2}
    flipped_classes, kept_classes = set(), set()
    for clip, _, flipped, label in _train_samples(config, 10):
        original = _label(clip)
        if flipped:
            assert original != CLASSES.index("text")
            assert label == swap[original]
            flipped_classes.add(original)
        else:
            assert label == original
            kept_classes.add(original)
    assert flipped_classes == {0, 1, 2} and kept_classes == {0, 1, 2, 3}
    unflipped = _train_samples(dataclasses.replace(config, flip=False), 3)
    assert not any(flipped for _, _, flipped, _ in unflipped)


def test_deterministic_mode_gives_identical_batches(data_dir):
    config = _config(data_dir, stride_jitter=1, flip=True, shuffle_buffer=8)

    def batches(dataset):
        return [(video.numpy(), label.numpy()) for video, label in dataset.take(4)]

    dataset = pipeline.train_dataset(config)
    first = batches(dataset)
    for again in (batches(dataset), batches(pipeline.train_dataset(config))):
        for (video_a, label_a), (video_b, label_b) in zip(first, again):
            np.testing.assert_array_equal(video_a, video_b)
            np.testing.assert_array_equal(label_a, label_b)
    other_seed = batches(pipeline.train_dataset(dataclasses.replace(config, seed=1)))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other_seed))


def test_skip_clips_continues_the_stream_where_a_resumed_run_stopped(data_dir):
    config = _config(data_dir, stride_jitter=1, flip=True, shuffle_buffer=8)
    whole = [(v.numpy(), y.numpy()) for v, y in pipeline.train_dataset(config).take(5)]
    # Three batches taken (12 clips), across the end of the first pass over the train split.
    resumed = pipeline.train_dataset(config, skip_clips=3 * config.batch_size).take(2)
    for (video, label), (expected_video, expected_label) in zip(resumed, whole[3:]):
        np.testing.assert_array_equal(video.numpy(), expected_video)
        np.testing.assert_array_equal(label.numpy(), expected_label)


def test_shards_by_clip_hold_exactly_the_clips_of_the_whole_stream(data_dir):
    config = _config(data_dir, batch_size=2, shuffle_buffer=8)
    whole = pipeline.train_dataset(dataclasses.replace(config, batch_size=4), skip_clips=4)
    shards = [
        pipeline.train_dataset(
            config, skip_clips=4, num_shards=2, shard_index=index, shard_files=False
        )
        for index in (0, 1)
    ]
    for expected, first, second in zip(whole.take(3), shards[0].take(3), shards[1].take(3)):
        clips = np.concatenate([first[0], second[0]])
        order = [0, 2, 1, 3]  # shard i holds the clips i, i + 2 of each global batch
        np.testing.assert_array_equal(clips[np.argsort(order)], expected[0].numpy())


def test_bad_inputs_give_errors_naming_the_problem(data_dir, tmp_path, caplog):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere.*'train'"):
        pipeline.train_dataset(_config(missing))
    with pytest.raises(
        FileNotFoundError, match=r"split 'val'.*splits found there: \['test', 'train'\]"
    ):
        pipeline.eval_dataset(_config(data_dir), split="val")
    with pytest.raises(ValueError, match="num_crops"):
        _config(data_dir, num_crops=2)
    assert pipeline.num_examples(data_dir, "train") == NUM_CLIPS
    with pytest.raises(ValueError, match="'val'"):
        pipeline.num_examples(data_dir, "val")

    caplog.set_level(logging.WARNING)
    pipeline.train_dataset(_config(data_dir, num_frames=4))
    assert not caplog.records
    pipeline.train_dataset(_config(data_dir, num_frames=16, frame_stride=4))
    assert any("shortest clip" in record.getMessage() for record in caplog.records)


def test_shards_without_dataset_json(data_dir, tmp_path):
    for path in glob.glob(dataset.shard_pattern(data_dir, "train")):
        shutil.copy(path, tmp_path / os.path.basename(path))
    assert pipeline.num_examples(str(tmp_path), "train") == NUM_CLIPS  # counted from the shards
    videos, _ = next(iter(pipeline.train_dataset(_config(str(tmp_path)))))
    assert videos.shape == (4, 4, 32, 32, 3)
    with pytest.raises(FileNotFoundError, match="flip=True needs .*dataset.json"):
        pipeline.train_dataset(_config(str(tmp_path), flip=True))
