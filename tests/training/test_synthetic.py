"""Tests of the embedded default dataset generator (kvid_training.synthetic)."""

import glob
import hashlib
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from kvid.data import dataset
from kvid.data.video import decode_video
from kvid_training import synthetic

# In CLASSES order, which generate() keeps whatever order it is given.
SUBSET = ["zoom_in", "zoom_out", "rotate_clockwise", "left_then_right", "right_then_left"]
SIZES = {"train": 3, "val": 2, "test": 2}


def _tracks(class_name, index, seed=0):
    rng = synthetic.clip_rng(seed, "train", class_name, index)
    return synthetic.synthesize(class_name, rng).tracks


def _read_clips(data_dir, split):
    """{clip id: (label text, decoded frames (T, H, W, 3), sha1 of the JPEG bytes)}."""
    clips = {}
    for record in tf.data.TFRecordDataset(
        sorted(glob.glob(dataset.shard_pattern(data_dir, split)))
    ):
        example = tf.train.SequenceExample.FromString(record.numpy())
        context = example.context.feature
        jpegs = [
            f.bytes_list.value[0]
            for f in example.feature_lists.feature_list["image/encoded"].feature
        ]
        frames = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs])
        clips[context["clip/id"].bytes_list.value[0].decode()] = (
            context["clip/label/text"].bytes_list.value[0].decode(),
            frames,
            hashlib.sha1(b"".join(jpegs)).hexdigest(),
        )
    return clips


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tiny"))
    info = synthetic.generate(data_dir, seed=0, classes=SUBSET, split_sizes=SIZES)
    return data_dir, info


def test_class_table_has_order_pairs_and_flip_pairs():
    assert len(synthetic.CLASSES) >= 12 and len(set(synthetic.CLASSES)) == len(synthetic.CLASSES)
    pairs = {frozenset(pair) for pair in synthetic.ORDER_PAIRS}
    for pair in [
        ("zoom_in", "zoom_out"),
        ("appear", "disappear"),
        ("rotate_clockwise", "rotate_counterclockwise"),
        ("left_then_right", "right_then_left"),
    ]:
        assert frozenset(pair) in pairs
    for pair in synthetic.FLIP_PAIRS:
        assert set(pair) <= set(synthetic.CLASSES)


def test_same_seed_gives_identical_frames_and_other_seeds_differ():
    for class_name in synthetic.CLASSES:
        frames = synthetic.clip_frames(0, "train", class_name, 3)
        assert frames.shape == (16, 72, 72, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames, synthetic.clip_frames(0, "train", class_name, 3))
        assert not np.array_equal(frames, synthetic.clip_frames(1, "train", class_name, 3))
        assert not np.array_equal(frames, synthetic.clip_frames(0, "train", class_name, 4))
        assert not np.array_equal(frames, synthetic.clip_frames(0, "val", class_name, 3))


@pytest.mark.parametrize("forward, backward", synthetic.ORDER_PAIRS)
def test_order_pairs_are_exact_time_reversals(forward, backward):
    for index in range(3):
        rng = synthetic.clip_rng(0, "test", backward, index)
        played = synthetic.synthesize(forward, rng).frames
        reversed_clip = synthetic.clip_frames(0, "test", backward, index)
        np.testing.assert_array_equal(reversed_clip, played[::-1])
        # Not trivially equal: the clip really changes over time.
        assert not np.array_equal(reversed_clip, played)


def test_motions_match_their_class_names():
    for index in range(4):
        (zoom_in,) = _tracks("zoom_in", index)
        assert np.all(np.diff(zoom_in.scale) > 0)
        (zoom_out,) = _tracks("zoom_out", index)
        assert np.all(np.diff(zoom_out.scale) < 0)
        (appear,) = _tracks("appear", index)
        assert appear.alpha[0] == 0 and appear.alpha[-1] == 1 and np.all(np.diff(appear.alpha) >= 0)
        (disappear,) = _tracks("disappear", index)
        assert disappear.alpha[0] == 1 and disappear.alpha[-1] == 0
        # Angles grow clockwise on screen (image y axis points down).
        assert np.all(np.diff(_tracks("rotate_clockwise", index)[0].angle) > 0)
        assert np.all(np.diff(_tracks("rotate_counterclockwise", index)[0].angle) < 0)
        assert np.all(np.diff(_tracks("move_up", index)[0].y) < 0)
        assert np.all(np.diff(_tracks("move_down", index)[0].y) > 0)
        for name, sign in (("approach", -1), ("separate", 1)):
            a, b = _tracks(name, index)
            distance = np.hypot(a.x - b.x, a.y - b.y)
            assert np.all(np.sign(np.diff(distance)) == sign)
        for name, left_first in (("left_then_right", True), ("right_then_left", False)):
            left, right = sorted(_tracks(name, index), key=lambda track: track.x[0])
            # First frame at which each object is off the ground (y below its resting value).
            takeoff = [int(np.argmax(t.y < t.y.max() - 0.5)) for t in (left, right)]
            landing = [
                int(len(t.y) - 1 - np.argmax(t.y[::-1] < t.y.max() - 0.5)) for t in (left, right)
            ]
            assert (takeoff[0] < takeoff[1]) == left_first
            assert (landing[0] < landing[1]) == left_first


def test_motion_is_visible_in_any_8_frames_and_not_aliased_at_stride_2():
    for class_name, index in itertools.product(synthetic.CLASSES, range(4)):
        tracks = _tracks(class_name, index)
        for start in range(16 - 8 + 1):
            window = slice(start, start + 8)
            change = 0.0
            for t in tracks:
                x, y, radius = t.x[window], t.y[window], t.sprite.radius * t.scale[window]
                change = max(
                    change,
                    np.hypot(x - x[0], y - y[0]).max(),  # pixels travelled
                    np.ptp(radius),  # growth in pixels
                    np.ptp(t.angle[window]) * radius.min(),  # arc travelled by the rim
                    np.ptp(t.alpha[window]) * 10,  # a 30% fade counts as 3 px
                )
            assert change >= 3.0, (class_name, index, start, change)
        for t in tracks:
            # At stride 2 the texture under the rim (1.23 radii out at square corners) moves less
            # than 0.3 of the finest stripe period (2 / frequency radii): no temporal aliasing.
            step = np.abs(np.diff(t.angle[::2])).max()
            assert 1.23 * step < 0.3 * 2.0 / t.sprite.frequency, (class_name, index, step)


def test_tiny_dataset_layout_and_dataset_info(tiny):
    data_dir, info = tiny
    assert info["classes"] == SUBSET
    assert info["order_pairs"] == [["zoom_in", "zoom_out"], ["left_then_right", "right_then_left"]]
    assert info["flip_pairs"] == [["left_then_right", "right_then_left"]]
    # Its flip partner is absent from the subset, so flipping rotate_clockwise makes no class.
    assert info["flip_breaks"] == ["rotate_clockwise"]
    assert info["splits"] == {split: n * len(SUBSET) for split, n in SIZES.items()}
    assert info["num_frames"] == 16 and info["frame_size"] == [72, 72]
    assert (
        info["generator"]["seed"] == 0
        and info["generator"]["version"] == synthetic.GENERATOR_VERSION
    )
    for split in SIZES:
        assert os.path.exists(os.path.join(data_dir, f"{split}.csv"))
    video = os.path.join(data_dir, "videos", "train", "zoom_in", "00002.mp4")
    assert decode_video(video).shape == (16, 72, 72, 3)


def test_decoded_clips_match_the_generated_frames_including_reversed_classes(tiny):
    data_dir, _ = tiny
    clips = _read_clips(data_dir, "test")
    for clip_id, (label, frames, _) in clips.items():
        split, class_name, index = clip_id.split("/")
        assert split == "test" and class_name == label
        generated = synthetic.clip_frames(0, split, class_name, int(index)).astype(np.float64)
        # H.264 and JPEG are lossy, but only by a few grey levels on average.
        assert np.abs(frames - generated).mean() < 5.0, clip_id
    # The stored zoom_out clip is the zoom_in generator's clip (own parameters) played backwards.
    label, frames, _ = clips["test/zoom_out/00001"]
    played = synthetic.synthesize("zoom_in", synthetic.clip_rng(0, "test", "zoom_out", 1)).frames
    right_order = np.abs(frames - played[::-1].astype(np.float64)).mean()
    wrong_order = np.abs(frames - played.astype(np.float64)).mean()
    assert right_order < 5.0 and wrong_order > 2 * right_order


def test_splits_share_no_clip_id_or_content(tiny):
    data_dir, _ = tiny
    ids, hashes = {}, {}
    for split in SIZES:
        clips = _read_clips(data_dir, split)
        ids[split] = set(clips)
        hashes[split] = {content_hash for _, _, content_hash in clips.values()}
        hashes[split] |= {
            hashlib.sha1(synthetic.clip_frames(0, split, c, i).tobytes()).hexdigest()
            for c in SUBSET
            for i in range(SIZES[split])
        }
        assert len(ids[split]) == SIZES[split] * len(SUBSET)
        assert all(clip_id.startswith(f"{split}/") for clip_id in ids[split])
    for a, b in itertools.combinations(SIZES, 2):
        assert not ids[a] & ids[b]
        assert not hashes[a] & hashes[b]


def test_generation_is_reproducible_down_to_the_tfrecord_bytes(tiny, tmp_path):
    data_dir, _ = tiny
    again = str(tmp_path / "again")
    synthetic.generate(again, seed=0, classes=SUBSET, split_sizes=SIZES)
    first = sorted(glob.glob(os.path.join(data_dir, "*.tfrecord")))
    second = sorted(glob.glob(os.path.join(again, "*.tfrecord")))
    assert [os.path.basename(p) for p in first] == [os.path.basename(p) for p in second]
    for a, b in zip(first, second):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read(), a


def test_ensure_default_dataset_reuses_regenerates_and_protects(tmp_path):
    data_dir = str(tmp_path / "default")
    assert synthetic.ensure_default_dataset(data_dir, seed=0, scale=0.01) == data_dir
    info = dataset.read_dataset_info(data_dir)
    assert info["classes"] == list(synthetic.CLASSES)
    # Scale 0.01 of 150/25/50 clips per class rounds to 2/0/0, and every split keeps one clip.
    per_class = {"train": 2, "val": 1, "test": 1}
    assert info["splits"] == {split: n * len(synthetic.CLASSES) for split, n in per_class.items()}
    info_path = os.path.join(data_dir, "dataset.json")
    stamp = os.stat(info_path).st_mtime_ns
    synthetic.ensure_default_dataset(data_dir, seed=0, scale=0.01)
    assert os.stat(info_path).st_mtime_ns == stamp  # same seed and scale: nothing regenerated
    synthetic.ensure_default_dataset(data_dir, seed=1, scale=0.01)
    assert dataset.read_dataset_info(data_dir)["generator"]["seed"] == 1

    other = str(tmp_path / "user_data")
    dataset.write_dataset_info(other, ["a", "b"], [], [], {"train": 1}, 8, None)
    with pytest.raises(ValueError, match="did not write"):
        synthetic.ensure_default_dataset(other)
