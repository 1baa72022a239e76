"""Tests of kvid_training.prepare: real videos from a CSV, a folder or SSv2 -> SequenceExample shards;
every input in a shard or in the failures file, resumed runs, runs split across machines."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags

import kvid.cli
from kvid.data import dataset
from kvid.data.video import decode_video
from kvid.data.workdir import read_labels, write_json
from kvid_training import inputs, prepare, synthetic
from kvid_training.worker_pool import WorkerPool
from tests.kvid.data.video_files import FORMATS, ramp, write_audio_only, write_video

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
    for record in tf.data.TFRecordDataset(sorted(str(path) for path in paths)):
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
    reported = {os.path.basename(failure["path"]): failure for failure in summary["failures"]}
    assert set(reported) == {"corrupt.mp4", "missing.mp4"}
    assert reported["corrupt.mp4"]["line"] == 3 and reported["missing.mp4"]["line"] == 5
    assert reported["missing.mp4"]["reason"] == "no such file"
    assert all(failure["reason"] for failure in summary["failures"])
    assert summary["num_clips"] + len(summary["failures"]) == summary["num_inputs"] == 5
    with open(os.path.join(out_dir, "train-failures.json")) as f:
        assert json.load(f) == summary["failures"]
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
    options = (None, None, None, None, 90)
    jobs = [(path, None, None, options) for path in paths] * 3
    serial = [(prepare._load_clip(job), None) for job in jobs]
    with WorkerPool(prepare._load_clip, 2, timeout=60) as pool:
        assert list(pool.imap(jobs)) == serial


def test_a_worker_that_hangs_or_dies_costs_only_its_own_job():
    # time.sleep(30) hangs past the timeout; raise_signal kills its own worker.
    with WorkerPool(time.sleep, 2, timeout=2) as pool:
        assert list(pool.imap([0, 30, 0])) == [
            (None, None),
            (None, "timeout after 2s"),
            (None, None),
        ]
    with WorkerPool(signal.raise_signal, 2, timeout=30) as pool:
        assert list(pool.imap([signal.SIGKILL, signal.SIGSEGV])) == [
            (None, "decoder process died (signal 9)"),
            (None, "decoder process died (signal 11)"),
        ]
    with WorkerPool(int, 1, timeout=30) as pool:  # an exception is the job's reason
        assert list(pool.imap(["7", "x"])) == [
            (7, None),
            (None, "ValueError: invalid literal for int() with base 10: 'x'"),
        ]


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
    with open(tmp_path / "train-failures.json") as f:
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
    listed = prepare.read_manifest(csv_path)
    assert listed.classes == ["bright"]  # sorted labels of the CSV when no class list is given
    assert listed.rows[0]["path"] == os.path.join(str(root), "clips/a.mp4")
    assert listed.rows[0]["id"] == "first"


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
    assert "val: 2 clips written, 0 failed, 2 inputs" in result.stdout
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


# --- inputs users bring: folders, CSV spans, Something-Something v2 --------------------------


def _flags(**values) -> types.SimpleNamespace:
    """kvid-prepare's flags with their defaults, as `prepare_from_flags` reads them."""
    flag_values = flags.FlagValues()
    names = prepare.define_flags(flag_values)
    parsed = {name: flag_values[name].default for name in names}
    parsed.update(values)
    return types.SimpleNamespace(**parsed)


def _failures(path) -> dict:
    with open(path) as f:
        return {os.path.basename(entry["path"]): entry for entry in json.load(f)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two class folders: a video of each container/codec, odd sizes, and broken files."""
    root = tmp_path_factory.mktemp("by_class")
    good, bad = root / "good", root / "broken"
    good.mkdir()
    bad.mkdir()
    for name, (file_name, codec, pix_fmt) in FORMATS.items():
        write_video(good / f"{name}{os.path.splitext(file_name)[1]}", ramp(8), codec, pix_fmt)
    write_video(good / "odd.mp4", ramp(8, 61, 97), "libx264", "yuv444p")
    write_video(good / "grey.mkv", ramp(8, 61, 97), "ffv1", "gray", source_format="gray")
    write_video(good / "portrait.mp4", ramp(8), rotation=-90)
    # FFmpeg reads a video by its content: a wrong extension on a real video is no failure.
    write_video(good / "really_an_mp4.avi", ramp(8))
    (good / ".hidden.mp4").write_bytes(b"skipped: hidden")
    data = (good / "mp4_h264.mp4").read_bytes()
    for fraction in (0.2, 0.6):
        (bad / f"truncated_{fraction}.mp4").write_bytes(data[: int(len(data) * fraction)])
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "random.webm").write_bytes(np.random.default_rng(1).bytes(3000))
    (bad / "text.mp4").write_text("not a video\n" * 50)
    write_audio_only(bad / "audio.m4a")
    (bad / "a_folder").mkdir()
    return root


def test_a_folder_per_class_puts_every_input_in_a_shard_or_the_failures_file(folder, tmp_path):
    out_dir = str(tmp_path / "out")
    line = prepare.prepare_from_flags(
        _flags(folder=str(folder), out_dir=out_dir, split="train", num_shards=2)
    )
    failures = _failures(tmp_path / "out" / "train-failures.json")
    assert set(failures) == {
        "truncated_0.2.mp4",
        "truncated_0.6.mp4",
        "zero.mp4",
        "random.webm",
        "text.mp4",
        "audio.m4a",
        "a_folder",
    }
    assert all(entry["line"] is None and entry["reason"] for entry in failures.values())
    assert failures["audio.m4a"]["reason"] == "no video stream (streams: audio)"
    assert failures["a_folder"]["reason"] == "a directory, not a video file"
    examples = _read_examples(glob.glob(dataset.shard_pattern(out_dir, "train")))
    ids = sorted(_context(e, "clip/id").decode() for e in examples)
    assert ids == sorted(f"good/{name}" for name in os.listdir(folder / "good") if name[0] != ".")
    assert len(ids) + len(failures) == 16  # the hidden file is no input
    assert line.startswith("train: 9 clips written, 7 failed, 16 inputs")
    info = dataset.read_dataset_info(out_dir)
    assert info["classes"] == ["broken", "good"] and info["splits"] == {"train": 9}
    by_id = {_context(e, "clip/id").decode(): e for e in examples}
    portrait = by_id["good/portrait.mp4"].feature_lists.feature_list["image/encoded"].feature
    assert tf.io.decode_jpeg(portrait[0].bytes_list.value[0]).shape == (64, 48, 3)


def test_max_failures_is_a_count_or_a_fraction_and_names_the_failures_file(folder, tmp_path):
    out_dir = str(tmp_path / "out")
    for limit in ("6", "0.4"):  # 7 of 16 failed: more than 6, more than 40%
        with pytest.raises(kvid.cli.ToolError, match=r"7 of 16 inputs failed.*train-failures"):
            prepare.prepare_from_flags(
                _flags(folder=str(folder), out_dir=out_dir, split="train", max_failures=limit)
            )
    assert not os.path.exists(os.path.join(out_dir, "dataset.json"))
    # The same command with a limit it meets finishes from the written shard.
    line = prepare.prepare_from_flags(
        _flags(folder=str(folder), out_dir=out_dir, split="train", max_failures="0.5")
    )
    assert "(16 kept from finished shards)" in line
    assert dataset.read_dataset_info(out_dir)["splits"] == {"train": 9}
    with pytest.raises(ValueError, match="--max_failures=1.5"):
        prepare.parse_max_failures("1.5")


def test_exactly_one_input_mode(folder, tmp_path):
    for values in (
        {},
        dict(folder=str(folder), csv="a.csv"),
        dict(folder=str(folder), video_dir=str(folder)),
        dict(ssv2_json="x.json"),
    ):
        with pytest.raises(app.UsageError, match="--"):
            prepare.prepare_from_flags(_flags(out_dir=str(tmp_path), split="train", **values))


def test_csv_start_and_end_cut_each_video(videos, tmp_path):
    root, _ = videos
    # c.mp4: 12 frames at synthetic.FPS frames per second.
    rate = synthetic.FPS
    rows = [
        (str(root / "clips/c.mp4"), "dark", "whole", "", ""),
        (str(root / "clips/c.mp4"), "dark", "middle", 2 / rate, 6 / rate),
        (str(root / "clips/c.mp4"), "bright", "tail", 9 / rate, ""),
        (str(root / "clips/c.mp4"), "bright", "past_the_end", 50 / rate, 60 / rate),
    ]
    csv_path = _write_csv(tmp_path / "spans.csv", rows, ("path", "label", "id", "start", "end"))
    summary = prepare.prepare_split(csv_path, str(tmp_path / "out"), "train", CLASSES)
    examples = {_context(e, "clip/id").decode(): e for e in _read_examples(summary["shards"])}
    assert {name: _context(e, "clip/num_frames") for name, e in examples.items()} == {
        "whole": 12,
        "middle": 4,
        "tail": 3,
    }
    middle = examples["middle"].feature_lists.feature_list["image/encoded"].feature
    levels = [tf.io.decode_jpeg(f.bytes_list.value[0]).numpy().mean() for f in middle]
    np.testing.assert_allclose(levels, 12 * np.arange(2, 6), atol=2.5)
    [failure] = summary["failures"]
    assert failure["line"] == 5 and failure["reason"].startswith("no frame in")
    bad = _write_csv(
        tmp_path / "bad.csv", [("a.mp4", "dark", "3", "1")], ("path", "label", "start", "end")
    )
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: end 1 s is not after start 3 s"):
        prepare.read_manifest(bad, CLASSES)


def test_something_something_v2_labels_come_from_templates_and_labels_json(tmp_path):
    videos = tmp_path / "20bn"
    videos.mkdir()
    for clip_id in ("101", "102"):
        write_video(videos / f"{clip_id}.webm", ramp(8), "libvpx-vp9")
    labels = {"Pushing something from left to right": "1", "Holding something": "0"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    annotations = [
        {"id": "101", "template": "Pushing [something] from left to right", "label": "x"},
        {"id": "102", "template": "Holding [something]", "placeholders": ["a cup"]},
        {"id": "103", "template": "Holding [something]"},  # no video file
    ]
    (tmp_path / "train.json").write_text(json.dumps(annotations))
    out_dir = str(tmp_path / "out")
    prepare.prepare_from_flags(
        _flags(
            ssv2_json=str(tmp_path / "train.json"),
            video_dir=str(videos),
            out_dir=out_dir,
            split="train",
        )
    )
    assert dataset.read_dataset_info(out_dir)["classes"] == [
        "Holding something",
        "Pushing something from left to right",
    ]
    examples = _read_examples(glob.glob(dataset.shard_pattern(out_dir, "train")))
    assert {_context(e, "clip/id").decode(): _context(e, "clip/label/index") for e in examples} == {
        "101": 1,
        "102": 0,
    }
    assert _failures(os.path.join(out_dir, "train-failures.json"))["103.webm"]["reason"] == (
        "no such file"
    )
    assert (
        inputs.ssv2_label("Putting [something] on [a surface]") == "Putting something on a surface"
    )


# --- resumed runs and runs split across machines ---------------------------------------------


def test_shards_split_across_machines_equal_a_one_machine_run(folder, tmp_path):
    one = str(tmp_path / "one")
    prepare.prepare_from_flags(_flags(folder=str(folder), out_dir=one, split="val", num_shards=3))
    split = str(tmp_path / "split")
    for index in (2, 0):
        line = prepare.prepare_from_flags(
            _flags(folder=str(folder), out_dir=split, split="val", num_shards=3, shard_index=index)
        )
        assert f"val (shard {index} of 3)" in line
        assert os.path.exists(os.path.join(split, f"val-{index:05d}-of-00003-failures.json"))
    assert "dataset.json follows once every shard is written" in line
    assert not os.path.exists(os.path.join(split, "dataset.json"))
    prepare.prepare_from_flags(
        _flags(folder=str(folder), out_dir=split, split="val", num_shards=3, shard_index=1)
    )
    # The last machine to finish writes dataset.json and the split's failures list.
    assert dataset.read_dataset_info(split) == dataset.read_dataset_info(one)
    assert _failures(os.path.join(split, "val-failures.json")) == _failures(
        os.path.join(one, "val-failures.json")
    )
    for index in range(3):
        name = f"val-{index:05d}-of-00003.tfrecord"
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    with pytest.raises(ValueError, match="--shard_index=3 needs --num_shards"):
        prepare.prepare_from_flags(
            _flags(folder=str(folder), out_dir=split, split="val", num_shards=3, shard_index=3)
        )


def test_a_damaged_shard_is_redone_and_finished_ones_are_kept(folder, tmp_path):
    out_dir = tmp_path / "out"
    values = dict(folder=str(folder), out_dir=str(out_dir), split="train", num_shards=3)
    prepare.prepare_from_flags(_flags(**values))
    shards = sorted(out_dir.glob("train-*-of-00003.tfrecord"))
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in shards}
    shards[1].write_bytes(shards[1].read_bytes()[:-10])  # cut short
    line = prepare.prepare_from_flags(_flags(**values))
    assert "kept from finished shards" in line and "written, 7 failed, 16 inputs" in line
    after = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in shards}
    assert after[shards[0].name] == before[shards[0].name]
    assert after[shards[2].name] == before[shards[2].name]
    assert after[shards[1].name][1] == before[shards[1].name][1]  # rewritten, same clips
    # Other settings are another job: every shard is redone.
    line = prepare.prepare_from_flags(_flags(**values, max_frames=4))
    assert "kept from finished shards" not in line


@pytest.mark.slow  # two command-line runs (TensorFlow loads in each) and two decode timeouts
def test_a_run_killed_mid_way_resumes_with_the_same_shards(videos, tmp_path):
    """SIGKILL while a decoder hangs on a named pipe; the rerun keeps the finished shards."""
    root, _ = videos
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: a decoder that hangs
    names = ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4"] * 2
    rows = [(str(root / name), "dark", f"clip{i}") for i, name in enumerate(names)]
    rows.append((str(fifo), "bright", "stuck"))
    # Put the stuck input in the last of 3 shards, so the first ones finish before it.
    dealt = prepare.shard_inputs(list(range(len(rows))), 3, shuffle_seed=0)
    last = dealt[2][0]
    rows[last], rows[-1] = rows[-1], rows[last]
    csv_path = _write_csv(tmp_path / "train.csv", rows, ("path", "label", "id"))
    out_dir = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        "from kvid_training.prepare import run; run()",
        f"--csv={csv_path}",
        f"--out_dir={out_dir}",
        "--split=train",
        "--num_shards=3",
        "--num_workers=1",
        "--decode_timeout=4",
        "--classes=dark,bright",
    ]
    # No pipes: the orphaned worker would hold them open after the kill.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out_dir / "train-00000-of-00003.tfrecord.json"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Its worker, blocked on the named pipe, ends with it (no reader left to open for).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody has it open for reading
            break
        time.sleep(0.1)
    else:
        pytest.fail("the killed run's worker still waits on the named pipe")
    finished = {
        path.name: path.stat().st_mtime_ns
        for path in out_dir.glob("train-*.tfrecord")
        if (out_dir / f"{path.name}.json").exists()
    }
    assert "train-00000-of-00003.tfrecord" in finished
    assert "train-00002-of-00003.tfrecord" not in finished
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 6 clips written, 1 failed, 7 inputs" in result.stdout
    for name, mtime in finished.items():
        assert (out_dir / name).stat().st_mtime_ns == mtime
    assert _failures(out_dir / "train-failures.json")["stuck.mp4"]["reason"] == "timeout after 4s"
    ids = [_context(e, "clip/id").decode() for e in _read_examples(out_dir.glob("*.tfrecord"))]
    assert sorted(ids) == sorted(f"clip{i}" for i in range(6))
    assert not list(out_dir.glob("*.partial"))


def test_a_video_whose_decoder_hangs_fails_with_the_timeout_and_the_others_are_written(
    videos, tmp_path
):
    root, _ = videos
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: a decoder that hangs
    rows = [(str(root / "clips/a.mp4"), "dark"), (str(fifo), "bright")]
    csv_path = _write_csv(tmp_path / "train.csv", rows)
    summary = prepare.prepare_split(
        csv_path, str(tmp_path / "out"), "train", CLASSES, decode_timeout=1, num_workers=1
    )
    assert summary["num_clips"] == 1
    assert summary["failures"] == [dict(path=str(fifo), line=3, reason="timeout after 1s")]


# --- the label map beside the shards ---------------------------------------------------------


def test_label_map_beside_the_shards_is_a_workdirs_label_map(folder, tmp_path):
    out_dir = tmp_path / "out"
    prepare.prepare_from_flags(_flags(folder=str(folder), out_dir=str(out_dir), split="train"))
    # Byte for byte what training writes into a workdir for the same classes: a plain diff works.
    workdir_map = tmp_path / "label_map.json"
    write_json(str(workdir_map), ["broken", "good"])
    assert (out_dir / "label_map.json").read_bytes() == workdir_map.read_bytes()
    assert read_labels(str(out_dir / "label_map.json")) == ["broken", "good"]
    assert dataset.stored_classes(str(out_dir)) == (
        ["broken", "good"],
        str(out_dir / "label_map.json"),
    )


def test_another_class_order_into_the_same_out_dir_names_both(folder, videos, tmp_path):
    out_dir = str(tmp_path / "out")
    prepare.prepare_from_flags(_flags(folder=str(folder), out_dir=out_dir, split="train"))
    before = sorted(os.listdir(out_dir))
    with pytest.raises(ValueError) as error:
        prepare.prepare_from_flags(
            _flags(folder=str(folder), out_dir=out_dir, split="val", classes=["good", "broken"])
        )
    message = str(error.value)
    assert f"the classes of {folder} ['good', 'broken'] differ" in message
    assert f"{os.path.join(out_dir, 'label_map.json')}: ['broken', 'good']" in message
    assert sorted(os.listdir(out_dir)) == before  # nothing written
    # Without --classes the label map's order is used; a label it lacks is named with it.
    root, _ = videos
    csv_path = _write_csv(tmp_path / "val.csv", [(str(root / "clips/a.mp4"), "purple")])
    with pytest.raises(ValueError, match=r"unknown label 'purple'.*\(the classes of .*label_map"):
        prepare.prepare_from_flags(_flags(csv=csv_path, out_dir=out_dir, split="val"))
    # The same order (here taken from the label map) is fine.
    line = prepare.prepare_from_flags(_flags(folder=str(folder), out_dir=out_dir, split="val"))
    assert line.startswith("val: 9 clips written")
    assert dataset.read_dataset_info(out_dir)["splits"] == {"train": 9, "val": 9}


def test_a_dataset_prepared_before_label_maps_keeps_its_class_order(videos, tmp_path):
    root, _ = videos
    out_dir = str(tmp_path / "old")
    dataset.write_dataset_info(out_dir, CLASSES, [], [], {"train": 3}, 6, (40, 48))
    os.remove(os.path.join(out_dir, "label_map.json"))  # as kvid wrote it before label maps
    csv_path = _write_csv(tmp_path / "val.csv", [(str(root / "clips/a.mp4"), "bright")])
    values = dict(csv=csv_path, out_dir=out_dir, split="val")
    with pytest.raises(
        ValueError, match=r"\['bright'\] differ.*dataset\.json: \['dark', 'bright'\]"
    ):
        prepare.prepare_from_flags(_flags(classes=["bright"], **values))
    line = prepare.prepare_from_flags(_flags(**values))
    assert line.startswith("val: 1 clips written")
    with open(os.path.join(out_dir, "label_map.json")) as f:
        assert json.load(f) == CLASSES
