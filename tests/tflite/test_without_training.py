"""kvid-convert and kvid-eval run with the training package made unimportable.

The deploy side reads what training writes through `kvid.data` (the dataset format, the input
pipeline, the workdir contract), never through `kvid_training`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from kvid.data import dataset
from kvid.data.video import encode_jpeg

# Runs a console script's `run()` with every import of kvid_training failing.
_BLOCKED_RUN = """
import sys

class _NoTraining:
    def find_spec(self, name, path=None, target=None):
        if name == "kvid_training" or name.startswith("kvid_training."):
            raise ImportError(f"{name} is blocked: the deploy side must not import training")

sys.meta_path.insert(0, _NoTraining())
import importlib
module = importlib.import_module(sys.argv[1])
sys.argv = sys.argv[1:]
module.run()
"""


def _write_dataset(data_dir: str, labels, clip_shape) -> None:
    frames, height, width, _ = clip_shape
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        examples = [
            dataset.encode_clip(
                encode_jpeg(rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8)),
                i % len(labels),
                labels[i % len(labels)],
                f"{split}{i}",
            )
            for i in range(2 * len(labels))
        ]
        dataset.write_shards(iter(examples), data_dir, split, 1)
    dataset.write_dataset_info(
        data_dir, labels, [], [], {"train": 2 * len(labels), "test": 2 * len(labels)},
        frames, (height, width),
    )  # fmt: skip


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, module, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_convert_and_eval_run_without_the_training_package(tmp_path, helpers, float_model):
    data_dir = str(tmp_path / "data")
    _write_dataset(data_dir, helpers.LABELS, helpers.CLIP_SHAPE)
    workdir = helpers.write_workdir(str(tmp_path / "run"), float_model, data_dir=data_dir)

    blocked = _run("kvid_training.train", "--help")
    assert blocked.returncode != 0 and "is blocked" in blocked.stderr  # the blocker works

    converted = _run(
        "kvid_tflite.convert", f"--workdir={workdir}", "--int8", "--num_calibration_clips=4",
        "--num_test_clips=4", "--num_debug_clips=2",
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr[-2000:]
    tflite_path = os.path.join(workdir, "export", "model_int8_ptq.tflite")
    assert not os.path.exists(tflite_path)
    tflite_path = os.path.join(workdir, "export", "model_int8.tflite")
    assert os.path.getsize(tflite_path) > 0

    evaluated = _run("kvid_tflite.evaluate", f"--workdir={workdir}", f"--model={tflite_path}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "top-1" in evaluated.stdout
    assert os.path.exists(os.path.join(workdir, "eval", "eval_model_int8.json"))
