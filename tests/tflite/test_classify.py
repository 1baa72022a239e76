"""kvid-classify and the self-describing .tflite: metadata round trip, a model alone in a folder,
the same views and scores as evaluation, sliding windows, and the Edge TPU delegate probe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from kvid.data import dataset, pipeline
from kvid_tflite import classify
from kvid_tflite.litert import (
    EDGETPU_LIBRARY,
    TFLiteModel,
    embed_metadata,
    probe_delegate,
    read_metadata,
)
from tests.helpers import read_json, run_kvid_convert

FRAMES, HEIGHT, WIDTH = 12, 20, 24  # stored videos: resized and cropped to the 4x16x16 clip


def _smooth_video(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Low-frequency colour fields drifting over time: little codec and JPEG loss."""
    grid = rng.uniform(0, 255, (3, 3, 3))
    ys, xs = np.linspace(0, 2, HEIGHT), np.linspace(0, 2, WIDTH)
    video = []
    for t in range(frames):
        shift = t / max(frames - 1, 1)
        y = np.clip(ys + shift, 0, 2)[:, None]
        x = np.clip(xs + shift, 0, 2)[None, :]
        y0, x0 = np.minimum(y.astype(int), 1), np.minimum(x.astype(int), 1)
        fy, fx = (y - y0)[..., None], (x - x0)[..., None]
        top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
        bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
        video.append(top * (1 - fy) + bottom * fy)
    return np.clip(np.stack(video), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, helpers, float_model):
    """Videos prepared by kvid-prepare's code, a workdir, and its int8 .tflite."""
    from kvid_training.prepare import prepare_split
    from kvid_training.synthetic import write_video

    root = tmp_path_factory.mktemp("classify")
    videos, data_dir = root / "videos", str(root / "data")
    videos.mkdir()
    rng = np.random.default_rng(0)
    counts, paths = {}, {}
    for split, per_class in (("train", 2), ("test", 1)):
        rows = ["path,label"]
        for label in helpers.LABELS:
            for i in range(per_class):
                name = f"{split}_{label}_{i}.mp4"
                write_video(str(videos / name), _smooth_video(rng, FRAMES))
                rows.append(f"{name},{label}")
                paths.setdefault(split, []).append(str(videos / name))
        (videos / f"{split}.csv").write_text("\n".join(rows) + "\n")
        summary = prepare_split(
            str(videos / f"{split}.csv"),
            data_dir,
            split,
            classes=helpers.LABELS,
            shuffle_seed=None,
            num_workers=1,
        )
        counts[split] = summary["num_clips"]
    dataset.write_dataset_info(data_dir, helpers.LABELS, [], [], counts, FRAMES, [HEIGHT, WIDTH])
    workdir = helpers.write_workdir(str(root / "run"), float_model, data_dir=data_dir)
    code = run_kvid_convert(
        f"--workdir={workdir}",
        "--int8",
        "--num_calibration_clips=10",
        "--num_test_clips=5",
        "--num_debug_clips=1",
    )
    assert code == 0
    return os.path.join(workdir, "export", "model_int8.tflite"), data_dir, paths["test"]


def test_metadata_round_trip_keeps_the_model(converted, tmp_path):
    path, _, _ = converted
    with open(path, "rb") as f:
        content = f.read()
    side = read_json(os.path.splitext(path)[0] + ".json")
    embedded = read_metadata(content)
    assert embedded == {k: v for k, v in side.items() if k != "saved_model"}
    assert embedded["input"]["sampling"]["stored_frame_size"] == [HEIGHT, WIDTH]
    replaced = embed_metadata(content, {"labels": ["x"]})
    assert read_metadata(replaced) == {"labels": ["x"]}
    assert read_metadata(embed_metadata(content, None)) is None
    clip = np.random.default_rng(3).random((1, 4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_array_equal(TFLiteModel(replaced)(clip), TFLiteModel(content)(clip))
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        read_metadata(b"not a model")


def test_a_tflite_alone_classifies_like_evaluation(converted, helpers, tmp_path):
    path, data_dir, videos = converted
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(path, alone / "model.tflite")  # no sidecar, no workdir
    classifier = classify.Classifier(str(alone / "model.tflite"))
    assert classifier.labels == helpers.LABELS  # read from the model file alone
    config = pipeline.InputConfig(
        data_dir=data_dir,
        num_frames=4,
        image_size=(16, 16),
        batch_size=1,
        num_clips=2,
        num_crops=3,
        deterministic=True,
    )
    evaluated = {}
    for views, label in pipeline.eval_dataset(config, "test"):
        scores, _ = classifier.scores(views.numpy()[0])
        evaluated[int(label.numpy()[0])] = scores.mean(axis=0)
    for index, video in enumerate(videos):  # one test video per class, in label order
        result = classifier.classify(video, top_k=5, num_clips=2, num_crops=3)
        assert result["views"] == 6 and len(result["top"]) == 5
        assert result["top"][0]["label"] in classifier.labels
        mine, theirs = np.array(result["scores"]), evaluated[index]
        # Decoded frames vs the JPEG-stored ones: a few grey levels apart, through an int8 model.
        np.testing.assert_allclose(mine, theirs, atol=0.05)
        assert np.argmax(mine) == np.argmax(theirs)


def test_command_prints_top_k_and_sliding_windows_without_tensorflow(converted, tmp_path):
    path, _, videos = converted
    from kvid_training.synthetic import write_video

    long_video = str(tmp_path / "long.mp4")
    write_video(long_video, _smooth_video(np.random.default_rng(5), 40), fps=10)
    code = (
        "import sys\n"
        "from kvid_tflite import classify\n"
        "sys.argv = ['kvid-classify'] + sys.argv[1:]\n"
        "try:\n"
        "    classify.run()\n"
        "finally:\n"
        "    assert 'tensorflow' not in sys.modules, 'kvid-classify imported TensorFlow'\n"
    )

    def run(*args):
        return subprocess.run(
            [sys.executable, "-c", code, f"--model={path}", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    text = run("--top_k=3", videos[0])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    from kvid_training.synthetic import FPS

    head = f"{videos[0]}: {FRAMES} frames at {FPS:.2f} fps; 1 view(s) of 4x16x16; "
    assert lines[0].startswith(head) and lines[0].endswith(" ms per clip"), lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2.", "3."]

    windows = run("--json", "--window_stride=6", "--smooth=2", long_video, str(tmp_path / "no.mp4"))
    assert windows.returncode == 2  # the missing video, reported on one line; the other ran
    error_lines = [line for line in windows.stderr.splitlines() if "error" in line]
    assert error_lines == [error_lines[0]] and "no.mp4: cannot decode" in error_lines[0]
    (result,) = json.loads(windows.stdout)["videos"]
    spans = [(w["start_frame"], w["end_frame"]) for w in result["windows"]]
    assert spans == [(s, s + 4) for s in range(0, 37, 6)]  # 4 frames at stride 1, every 6
    assert result["windows"][1]["start_s"] == pytest.approx(0.6)


def test_delegate_probe_names_the_library_and_survives_a_crash():
    assert probe_delegate("x", command=[sys.executable, "-c", "pass"]) is None
    crash = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGSEGV)})"]
    assert "crashed the process (signal 11)" in probe_delegate("libedgetpu.so.1", command=crash)
    missing = probe_delegate("libkvid_no_such_delegate.so.1")
    assert "cannot load libkvid_no_such_delegate.so.1" in missing


def test_edgetpu_device_without_the_runtime_is_one_line(converted, tmp_path):
    if probe_delegate(EDGETPU_LIBRARY) is None:
        pytest.skip("an Edge TPU runtime is installed here")
    path, _, videos = converted
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "kvid-classify"), f"--model={path}",
         "--device=edgetpu", videos[0]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("kvid-classify:")
    ]
    assert f"--device=edgetpu: cannot load {EDGETPU_LIBRARY}" in result.stderr
