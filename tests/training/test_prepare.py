"""Tests of kvid_training.prepare: CSV manifests of real videos -> SequenceExample shards."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kvid.data import dataset
from kvid.data.video import decode_video
from kvid_training import prepare, synthetic

CLASSES = ["dark", "bright"]


def _ramp_video(num_frames: int, height: int = 40, width: int = 48) -> np.ndarray:
    """Frame k is a constant grey level 12 * k: any frame mix-up shows in the decoded values."""
    levels = 12 * np.arange(num_frames, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def _write_csv(path, rows, header=("path", "label")) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _read_examples(paths):
    examples = []
    for record in tf.data.TFRecordDataset(sorted(paths)):
        examples.append(tf.train.SequenceExample.FromString(record.numpy()))
    return examples


def _context(example, key):
    feature = example.context.feature[key]
    return feature.int64_list.value[0] if feature.int64_list.value else feature.bytes_list.value[0]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three good videos (different lengths), one corrupt file and one missing file."""
    root = tmp_path_factory.mktemp("videos")
    os.makedirs(root / "clips")
    lengths = {"clips/a.mp4": 6, "clips/b.mp4": 9, "clips/c.mp4": 12}
    for name, length in lengths.items():
        synthetic.write_video(str(root / name), _ramp_video(length))
    (root / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    return root, lengths


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    root, _ = videos
    rows = [
        ("clips/a.mp4", "dark"),
        ("clips/corrupt.mp4", "bright"),
        ("clips/b.mp4", "bright"),
        ("clips/missing.mp4", "dark"),
        ("clips/c.mp4", "dark"),
    ]
    csv_path = _write_csv(root / "train.csv", rows)
    out_dir = str(tmp_path_factory.mktemp("shards"))
    summary = prepare.prepare_split(csv_path, out_dir, "train", CLASSES, num_shards=2)
    return summary, out_dir, root


def test_decode_video_reads_every_frame_in_order(videos):
    root, lengths = videos
    frames = decode_video(str(root / "clips/c.mp4"))
    assert frames.shape == (12, 40, 48, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), 12 * np.arange(12), atol=2.0)
    assert decode_video(str(root / "clips/c.mp4"), max_frames=5).shape[0] == 5
    assert decode_video(str(root / "clips/c.mp4"), frame_size=(20, 30)).shape[1:3] == (
        20,
        30,
    )
    # An int is the short side: 40x48 -> 30x36.
    assert decode_video(str(root / "clips/c.mp4"), frame_size=30).shape[1:3] == (30, 36)


def test_unreadable_videos_are_reported_and_skipped(prepared):
    summary, out_dir, root = prepared
    assert summary["num_clips"] == 3
    reported = {os.path.basename(error["path"]): error for error in summary["errors"]}
    assert set(reported) == {"corrupt.mp4", "missing.mp4"}
    assert reported["corrupt.mp4"]["line"] == 3 and reported["missing.mp4"]["line"] == 5
    assert all(error["error"] for error in summary["errors"])
    with open(os.path.join(out_dir, "train-errors.json")) as f:
        assert json.load(f) == summary["errors"]
    assert summary["label_counts"] == {"dark": 2, "bright": 1}


def test_shards_hold_sequence_examples_in_model_garden_layout(prepared, videos):
    summary, out_dir, _ = prepared
    _, lengths = videos
    assert [os.path.basename(p) for p in summary["shards"]] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    examples = _read_examples(summary["shards"])
    by_id = {_context(e, "clip/id").decode(): e for e in examples}
    # The id defaults to the path as written in the CSV.
    assert set(by_id) == {"clips/a.mp4", "clips/b.mp4", "clips/c.mp4"}
    for clip_id, example in by_id.items():
        label_text = _context(example, "clip/label/text").decode()
        assert CLASSES[_context(example, "clip/label/index")] == label_text
        jpegs = example.feature_lists.feature_list["image/encoded"].feature
        assert len(jpegs) == _context(example, "clip/num_frames") == lengths[clip_id]
        decoded = [tf.io.decode_jpeg(f.bytes_list.value[0]).numpy() for f in jpegs]
        np.testing.assert_allclose(
            [d.mean() for d in decoded], 12 * np.arange(lengths[clip_id]), atol=2.5
        )
    assert summary["min_frames"] == 6 and summary["max_frames"] == 12
    assert summary["frame_size"] == [40, 48]


def test_worker_processes_return_the_serial_results_in_order(videos):
    root, lengths = videos
    paths = [str(root / name) for name in lengths] + [str(root / "clips/corrupt.mp4")]
    jobs = [(path, None, None, 90) for path in paths] * 17  # 68 jobs: enough for 2 workers
    serial = [prepare._load_clip(job) for job in jobs]
    assert list(prepare.map_in_processes(prepare._load_clip, jobs, num_workers=2)) == serial


def test_unknown_label_names_the_csv_and_line(videos, tmp_path):
    root, _ = videos
    csv_path = _write_csv(
        tmp_path / "bad.csv", [("clips/a.mp4", "dark"), ("clips/b.mp4", "purple")]
    )
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: unknown label 'purple'"):
        prepare.prepare_split(csv_path, str(tmp_path / "out"), "train", CLASSES)


def test_a_split_with_no_readable_video_is_an_error(videos, tmp_path):
    root, _ = videos
    csv_path = _write_csv(root / "broken.csv", [("clips/corrupt.mp4", "dark")])
    with pytest.raises(ValueError, match=r"broken\.csv: none of the 1 videos could be read"):
        prepare.prepare_split(csv_path, str(tmp_path), "train", CLASSES)
    with open(tmp_path / "train-errors.json") as f:
        assert [os.path.basename(e["path"]) for e in json.load(f)] == ["corrupt.mp4"]


def test_header_is_required(tmp_path):
    csv_path = _write_csv(tmp_path / "nohead.csv", [("a.mp4", "dark")], header=("video", "class"))
    with pytest.raises(ValueError, match=r"nohead\.csv.*path,label"):
        prepare.read_manifest(csv_path, CLASSES)


def test_paths_resolve_against_the_csv_folder_and_ids_come_from_the_id_column(
    videos, tmp_path, monkeypatch
):
    root, _ = videos
    csv_path = _write_csv(
        root / "with_ids.csv", [("clips/a.mp4", "bright", "first")], header=("path", "label", "id")
    )
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    rows, classes = prepare.read_manifest(csv_path)
    assert classes == ["bright"]  # sorted labels of the CSV when no class list is given
    assert rows[0]["path"] == os.path.join(str(root), "clips/a.mp4")
    assert rows[0]["id"] == "first"


def test_preparing_again_replaces_the_old_shards(videos, tmp_path):
    root, _ = videos
    csv_path = _write_csv(root / "few.csv", [("clips/a.mp4", "dark"), ("clips/b.mp4", "dark")])
    out_dir = str(tmp_path / "out")
    prepare.prepare_split(csv_path, out_dir, "val", CLASSES, num_shards=2)
    summary = prepare.prepare_split(csv_path, out_dir, "val", CLASSES, num_shards=1)
    assert tf.io.gfile.glob(dataset.shard_pattern(out_dir, "val")) == summary["shards"]
    assert len(_read_examples(summary["shards"])) == 2


def test_dataset_info_round_trip_and_errors(tmp_path):
    path = dataset.write_dataset_info(
        str(tmp_path),
        ["a", "b", "c"],
        order_pairs=[["a", "b"]],
        flip_pairs=[["b", "c"]],
        counts={"train": 4, "test": 2},
        num_frames=16,
        frame_size=(72, 72),
    )
    info = dataset.read_dataset_info(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "dataset.json")
    assert info["classes"] == ["a", "b", "c"] and info["order_pairs"] == [["a", "b"]]
    assert info["flip_pairs"] == [["b", "c"]] and info["splits"] == {"train": 4, "test": 2}
    assert info["num_frames"] == 16 and info["frame_size"] == [72, 72]
    with pytest.raises(ValueError, match="flip_pairs.*'z'"):
        dataset.write_dataset_info(str(tmp_path), ["a", "b"], [], [["a", "z"]], {}, 16, None)
    with pytest.raises(FileNotFoundError, match="empty"):
        dataset.read_dataset_info(str(tmp_path / "empty"))


def test_command_line_prepares_a_split_and_keeps_other_splits(videos, tmp_path):
    root, _ = videos
    csv_path = _write_csv(root / "cli.csv", [("clips/a.mp4", "dark"), ("clips/b.mp4", "bright")])
    out_dir = str(tmp_path / "data")
    dataset.write_dataset_info(out_dir, CLASSES, [], [], {"train": 7}, 9, (40, 48))
    command = [
        sys.executable,
        "-c",
        "from kvid_training.prepare import run; run()",
        f"--csv={csv_path}",
        f"--out_dir={out_dir}",
        "--split=val",
        "--flip_pairs=dark:bright",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val: 2 clips in 1 shards, 0 unreadable videos skipped" in result.stdout
    info = dataset.read_dataset_info(out_dir)
    assert info["classes"] == CLASSES  # taken from the existing dataset.json
    assert info["splits"] == {"train": 7, "val": 2}
    assert info["flip_pairs"] == [["dark", "bright"]]
    assert info["num_frames"] == 6 and info["frame_size"] == [40, 48]


def test_command_line_reports_a_bad_label_without_a_traceback(videos, tmp_path):
    root, _ = videos
    csv_path = _write_csv(root / "cli_bad.csv", [("clips/a.mp4", "purple")])
    command = [
        sys.executable,
        "-c",
        "from kvid_training.prepare import run; run()",
        f"--csv={csv_path}",
        f"--out_dir={tmp_path}",
        "--split=train",
        "--classes=dark,bright",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "cli_bad.csv, line 2: unknown label 'purple'" in result.stderr
    assert "Traceback" not in result.stderr
