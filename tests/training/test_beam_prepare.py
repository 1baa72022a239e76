"""Tests of kvid_training.beam_prepare: the Beam pipeline (DirectRunner) writes what kvid-prepare
writes: the same clips, failures, dataset.json and label map, from the same per-video function."""

import csv
import functools
import glob
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

beam = pytest.importorskip(
    "apache_beam", reason="apache_beam is not installed (pip install 'kvid[beam]')"
)

import kvid.cli  # noqa: E402
from kvid.data import dataset  # noqa: E402
from kvid_training import beam_prepare, prepare  # noqa: E402
from tests.kvid.data.video_files import FORMATS, ramp, write_audio_only, write_video  # noqa: E402


def _flags(**values) -> types.SimpleNamespace:
    """kvid-prepare's flags with their defaults, as `prepare_from_flags` reads them."""
    flag_values = flags.FlagValues()
    names = prepare.define_flags(flag_values)
    parsed = {name: flag_values[name].default for name in names}
    parsed.update(values)
    return types.SimpleNamespace(**parsed)


def _beam(**pipeline):
    args = ["--runner=DirectRunner"] + [f"--{key}={value}" for key, value in pipeline.items()]
    return functools.partial(beam_prepare.prepare_split, pipeline_args=args)


def _clips(out_dir: str, split: str = "train") -> dict:
    """clip id -> (label index, label text, frame JPEGs) of every clip of the split's shards."""
    clips = {}
    for path in sorted(glob.glob(dataset.shard_pattern(out_dir, split))):
        for record in tf.data.TFRecordDataset(path):
            example = tf.train.SequenceExample.FromString(record.numpy())
            context = example.context.feature
            frames = example.feature_lists.feature_list[dataset.IMAGE_KEY].feature
            clip_id = context[dataset.CLIP_ID_KEY].bytes_list.value[0].decode()
            assert clip_id not in clips, f"{clip_id} is in two shards"
            clips[clip_id] = (
                context[dataset.LABEL_INDEX_KEY].int64_list.value[0],
                context[dataset.LABEL_TEXT_KEY].bytes_list.value[0].decode(),
                [frame.bytes_list.value[0] for frame in frames],
            )
    return clips


def _read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of good videos (several containers) and broken files, one of which hangs."""
    root = tmp_path_factory.mktemp("beam_videos")
    (root / "moving").mkdir()
    (root / "still").mkdir()
    for number, name in enumerate(("mp4_h264", "webm_vp9", "avi_mjpeg", "mov_mpeg4")):
        file_name, codec, pix_fmt = FORMATS[name]
        extension = os.path.splitext(file_name)[1]
        write_video(root / "moving" / f"{name}{extension}", ramp(6 + number), codec, pix_fmt)
    write_video(root / "still" / "odd.mp4", ramp(5, 61, 97), "libx264", "yuv444p")
    write_video(root / "still" / "short.mp4", ramp(3))
    data = (root / "moving" / "mp4_h264.mp4").read_bytes()
    (root / "still" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "still" / "zero.mp4").write_bytes(b"")
    (root / "still" / "random.webm").write_bytes(np.random.default_rng(0).bytes(2000))
    write_audio_only(root / "still" / "audio.m4a")
    os.mkfifo(root / "still" / "stuck.mp4")  # opening it blocks: a decoder that hangs
    return root


@pytest.fixture(scope="module")
def both(folder, tmp_path_factory):
    """The folder prepared by kvid-prepare's local worker processes and by the Beam pipeline."""
    out = tmp_path_factory.mktemp("beam_out")
    values = dict(folder=str(folder), split="train", num_shards=2, decode_timeout=2.0)
    lines = {
        "local": prepare.prepare_from_flags(_flags(out_dir=str(out / "local"), **values)),
        "beam": prepare.prepare_from_flags(
            _flags(out_dir=str(out / "beam"), num_workers=2, **values), _beam()
        ),
    }
    return out, lines


def test_beam_writes_the_clips_of_a_local_run(both):
    out, lines = both
    local, piped = _clips(str(out / "local")), _clips(str(out / "beam"))
    assert sorted(local) == sorted(piped)
    assert len(local) == 6
    for clip_id, (index, label, frames) in local.items():
        assert piped[clip_id] == (index, label, frames), clip_id
        assert len(frames) > 0
    # Each clip lands in the same shard, in the same place.
    for index in range(2):
        name = f"train-{index:05d}-of-00002.tfrecord"
        assert list(_clips_in(out / "local" / name)) == list(_clips_in(out / "beam" / name))
    assert lines["beam"].startswith("train: 6 clips written, 5 failed, 11 inputs")
    assert lines["local"].startswith("train: 6 clips written, 5 failed, 11 inputs")


def _clips_in(path):
    for record in tf.data.TFRecordDataset(str(path)):
        example = tf.train.SequenceExample.FromString(record.numpy())
        yield example.context.feature[dataset.CLIP_ID_KEY].bytes_list.value[0]


def test_beam_lists_the_same_failures_with_their_reasons(both, folder):
    out, _ = both
    local = _read_json(out / "local" / "train-failures.json")
    piped = _read_json(out / "beam" / "train-failures.json")
    assert piped == local
    reasons = {os.path.basename(entry["path"]): entry["reason"] for entry in piped}
    assert set(reasons) == {
        "truncated.mp4",
        "zero.mp4",
        "random.webm",
        "audio.m4a",
        "stuck.mp4",
    }
    assert reasons["zero.mp4"] == "an empty file (0 bytes)"
    assert reasons["audio.m4a"] == "no video stream (streams: audio)"
    assert reasons["stuck.mp4"] == "timeout after 2s"  # the hung decoder cost only its video
    inputs = glob.glob(str(folder / "*" / "*"))
    assert len(_clips(str(out / "beam"))) + len(piped) == len(inputs) == 11


def test_beam_writes_the_same_dataset_info_and_label_map(both):
    out, _ = both
    local = dataset.read_dataset_info(str(out / "local"))
    piped = dataset.read_dataset_info(str(out / "beam"))
    assert piped == local
    assert piped["classes"] == ["moving", "still"] and piped["splits"] == {"train": 6}
    label_map = (out / "beam" / dataset.LABEL_MAP).read_bytes()
    assert label_map == (out / "local" / dataset.LABEL_MAP).read_bytes()
    assert json.loads(label_map) == ["moving", "still"]
    # Per-shard state files agree too, so either can resume the other's run.
    for path in sorted((out / "local").glob("*.tfrecord.json")):
        assert _read_json(path) | {"bytes": 0} == _read_json(out / "beam" / path.name) | {
            "bytes": 0
        }


def test_beam_keeps_the_shards_a_local_run_finished(both, folder, tmp_path):
    out, _ = both
    target = tmp_path / "resumed"
    os.makedirs(target)
    for path in (out / "local").iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    values = dict(folder=str(folder), split="train", num_shards=2, decode_timeout=2.0)
    line = prepare.prepare_from_flags(_flags(out_dir=str(target), **values), _beam())
    assert "(11 kept from finished shards)" in line
    assert "6 clips written, 5 failed, 11 inputs" in line


def test_beam_max_failures_and_label_map_errors_are_kvid_prepares(both, folder, tmp_path):
    out, _ = both
    values = dict(folder=str(folder), split="train", num_shards=2, decode_timeout=2.0)
    with pytest.raises(kvid.cli.ToolError, match=r"5 of 11 inputs failed.*train-failures\.json"):
        prepare.prepare_from_flags(
            _flags(out_dir=str(tmp_path / "strict"), max_failures="4", **values), _beam()
        )
    assert not os.path.exists(tmp_path / "strict" / "dataset.json")
    with pytest.raises(ValueError, match=r"\['still', 'moving'\] differ.*label_map\.json"):
        prepare.prepare_from_flags(
            _flags(out_dir=str(out / "beam"), classes=["still", "moving"], **values), _beam()
        )


def test_flags_split_between_kvid_prepare_and_beam():
    own_flags = {"csv", "out_dir", "num_workers", "verbosity", "split"}
    own, beam_args = beam_prepare.split_args(
        [
            "prog",
            "--csv=a.csv",
            "--runner=DataflowRunner",
            "--project",
            "p",
            "--out_dir",
            "gs://b/out",
            "--num_workers=2",
            "--",
            "--num_workers=10",
        ],
        own_flags,
    )
    assert own == ["prog", "--csv=a.csv", "--out_dir", "gs://b/out", "--num_workers=2"]
    assert beam_args == ["--runner=DataflowRunner", "--project", "p", "--num_workers=10"]
    with pytest.raises(ValueError, match="--no_such_option=1: neither a kvid-prepare flag"):
        beam_prepare.check_pipeline_args(["--runner=DirectRunner", "--no_such_option=1"])


def test_command_line_runs_the_pipeline_and_reports_bad_options_in_one_line(folder, tmp_path):
    good = tmp_path / "good.csv"
    with open(good, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "start", "end"])
        writer.writerow([str(folder / "moving" / "mp4_h264.mp4"), "moving", "0.25", "0.5"])
        writer.writerow([str(folder / "still" / "zero.mp4"), "still", "", ""])
    command = [
        sys.executable,
        "-m",
        "kvid_training.beam_prepare",
        f"--csv={good}",
        f"--out_dir={tmp_path / 'out'}",
        "--split=val",
        "--num_workers=1",
        "--runner=DirectRunner",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val: 1 clips written, 1 failed, 2 inputs" in result.stdout
    [(_, _, frames)] = _clips(str(tmp_path / "out"), "val").values()
    assert len(frames) == 2  # 0.25-0.5 s at 8 frames per second
    result = subprocess.run(
        command + ["--no_such_option=1"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 2
    assert "--no_such_option=1: neither a kvid-prepare flag" in result.stderr
    assert "Traceback" not in result.stderr


# --- acceptance: 50 videos of mixed containers and codecs, 10 broken files -------------------

_CORPUS_FORMATS = ("mp4_h264", "webm_vp9", "avi_mjpeg", "mkv_hevc", "mov_mpeg4")
_CORPUS_CLASSES = ("drift", "pulse", "sweep", "flash", "rise")


def _write_corpus(root) -> dict:
    """50 good videos (5 classes x 10; 5 containers/codecs; 2-4 s at 15 fps; 128x96 to 480x270)
    and 10 broken files in the first class folder; returns {good path: frame count}."""
    sizes = ((96, 128), (120, 160), (180, 320), (270, 480))
    good = {}
    for name in _CORPUS_CLASSES:
        (root / name).mkdir()
    for number in range(50):
        file_name, codec, pix_fmt = FORMATS[_CORPUS_FORMATS[number % 5]]
        height, width = sizes[number % len(sizes)]
        path = (
            root / _CORPUS_CLASSES[number // 10] / f"v{number:02d}{os.path.splitext(file_name)[1]}"
        )
        num_frames = 15 * (2 + number % 3)
        write_video(path, ramp(num_frames, height, width), codec, pix_fmt, rate=15)
        good[str(path)] = num_frames
    broken = root / _CORPUS_CLASSES[0]
    mp4, mkv, webm = (
        (root / _CORPUS_CLASSES[1] / name).read_bytes()
        for name in ("v10.mp4", "v13.mkv", "v11.webm")
    )
    (broken / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    (broken / "truncated.mkv").write_bytes(mkv[: len(mkv) // 2])
    (broken / "truncated.webm").write_bytes(webm[: len(webm) // 3])
    (broken / "zero.mp4").write_bytes(b"")
    (broken / "random.mov").write_bytes(np.random.default_rng(0).bytes(5000))
    (broken / "notes.mp4").write_text("not a video\n" * 100)  # a wrong extension
    (broken / "damaged_header.mp4").write_bytes(b"\x00" * 64 + mp4[64:])
    from PIL import Image

    Image.fromarray(ramp(1, 64, 64)[0]).save(broken / "photo.mp4", "PNG")  # an image as .mp4
    write_audio_only(broken / "audio.m4a")
    (broken / "a_folder").mkdir()
    return good


def _prepare_command(module: str, *args: str) -> subprocess.CompletedProcess:
    """`kvid-prepare ARGS` (module kvid_training.prepare) or `python -m MODULE ARGS`."""
    if module == "kvid_training.prepare":
        command = [sys.executable, "-c", "from kvid_training.prepare import run; run()"]
    else:
        command = [sys.executable, "-m", module]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # four command-line runs over 60 inputs: 50-100 s on the shared 2-core machine
def test_acceptance_fifty_mixed_videos_and_ten_broken_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = _write_corpus(videos)
    settings = ["--split=train", "--frame_size=72", "--fps=15"]
    local = tmp_path / "local"
    result = _prepare_command(
        "kvid_training.prepare", f"--folder={videos}", f"--out_dir={local}", *settings
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 50 clips written, 10 failed, 60 inputs" in result.stdout
    failures = _read_json(local / "train-failures.json")
    broken = [name for name in os.listdir(videos / _CORPUS_CLASSES[0]) if name[0] != "v"]
    assert len(broken) == 10
    assert sorted(os.path.basename(entry["path"]) for entry in failures) == sorted(broken)
    assert all(entry["reason"] for entry in failures)
    clips = _clips(str(local))
    assert sorted(clips) == sorted(os.path.relpath(path, videos) for path in good)

    strict = tmp_path / "strict"
    result = _prepare_command(
        "kvid_training.prepare",
        f"--folder={videos}",
        f"--out_dir={strict}",
        "--max_failures=5",
        *settings,
    )
    assert result.returncode == 2
    assert (
        f"10 of 60 inputs failed, more than --max_failures=5; see {strict}/train-failures.json"
        in result.stderr
    )

    manifest = tmp_path / "spans.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "start", "end"])
        for path in good:
            writer.writerow([path, os.path.basename(os.path.dirname(path)), "0.5", "1.5"])
    cut = tmp_path / "cut"
    result = _prepare_command(
        "kvid_training.prepare", f"--csv={manifest}", f"--out_dir={cut}", *settings
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 50 clips written, 0 failed, 50 inputs" in result.stdout
    cut_clips = _clips(str(cut))
    for path, num_frames in good.items():
        frames = cut_clips[path][2]
        assert len(frames) == 15 < num_frames, path  # 1 s of every video, at 15 fps

    piped = tmp_path / "beam"
    result = _prepare_command(
        "kvid_training.beam_prepare",
        f"--folder={videos}",
        f"--out_dir={piped}",
        *settings,
        "--runner=DirectRunner",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 50 clips written, 10 failed, 60 inputs" in result.stdout
    assert _clips(str(piped)) == clips
    assert _read_json(piped / "train-failures.json") == failures
    assert dataset.read_dataset_info(str(piped)) == dataset.read_dataset_info(str(local))


def test_videos_at_urls_are_fetched_by_the_workers(folder, tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    # A filesystem Beam would read (gs://...), served from the local folder for the test.
    def open_url(path, *args, **kwargs):
        assert path.startswith("kvidtest://"), path
        if path.endswith("denied.mp4"):
            raise PermissionError("403 Forbidden")
        return open(folder / path.removeprefix("kvidtest://"), "rb")

    monkeypatch.setattr(FileSystems, "open", staticmethod(open_url))
    manifest = tmp_path / "urls.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerow(["kvidtest://moving/webm_vp9.webm", "moving"])
        writer.writerow(["kvidtest://still/odd.mp4", "still"])
        writer.writerow(["kvidtest://still/gone.mp4", "still"])
        writer.writerow(["kvidtest://still/denied.mp4", "still"])
    out_dir = tmp_path / "out"
    line = prepare.prepare_from_flags(
        _flags(csv=str(manifest), out_dir=str(out_dir), split="train", num_workers=1), _beam()
    )
    assert line.startswith("train: 2 clips written, 2 failed, 4 inputs")
    clips = _clips(str(out_dir))
    assert sorted(clips) == ["kvidtest://moving/webm_vp9.webm", "kvidtest://still/odd.mp4"]
    local = tmp_path / "local.csv"
    local.write_text(f"path,label,id\n{folder}/still/odd.mp4,still,kvidtest://still/odd.mp4\n")
    prepare.prepare_from_flags(
        _flags(
            csv=str(local),
            out_dir=str(tmp_path / "local"),
            split="train",
            classes=["moving", "still"],
        )
    )
    assert (
        _clips(str(tmp_path / "local"))["kvidtest://still/odd.mp4"]
        == clips["kvidtest://still/odd.mp4"]
    )
    assert _read_json(out_dir / "train-failures.json") == [
        dict(
            path="kvidtest://still/gone.mp4",
            line=4,
            reason=f"cannot fetch: [Errno 2] No such file or directory: '{folder}/still/gone.mp4'",
        ),
        dict(path="kvidtest://still/denied.mp4", line=5, reason="cannot fetch: 403 Forbidden"),
    ]
