"""Tests of training/train.py: flags -> config, durations, schedule, workdir, resume, errors.

The end-to-end tests run `python training/train.py` as a subprocess from the repository root,
the way the README runs it, on a tiny generated dataset (3 classes, 12 training clips of 8
frames at 36x36) with `training/flags/vmf_smoke.flags` (a two-block vmf_tiny at 4x32x32).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import app, flags

import kvid
from kvid_training import callbacks, config, optimization, train, workdir

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO_ROOT / "training" / "train.py"
FLAGS_DIR = REPO_ROOT / "training" / "flags"
TINY_CLASSES = ["zoom_in", "zoom_out", "appear"]
# What vmf_smoke.flags asks for, on the tiny dataset: 12 clips / batch 4 = 3 steps per epoch.
SMOKE_FLOAT_STEPS, SMOKE_QAT_STEPS, SMOKE_STEPS_PER_EPOCH = 5, 2, 3
SMOKE_EPOCHS = [("float", 1, 3), ("float", 2, 5), ("qat", 1, 2)]
RUN_TIMEOUT = 300

# A preset and a dataset as config_from_flags sees them (no model, no files).
PRESET = {"num_frames": 8, "image_size": 64, "input_mean": (0.5,) * 3, "input_std": (0.2,) * 3}
DATASET = {
    "classes": ["a", "b", "c"],
    "splits": {"train": 50, "val": 10},
    "num_frames": 16,
    "frame_size": [72, 72],
}


def parse(*args: str) -> flags.FlagValues:
    """Parses train.py's flags into a fresh FlagValues (the process-wide FLAGS is untouched)."""
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train.py", "--workdir=/tmp/unused", *args])
    return flag_values


def make_config(*args: str, dataset: dict | None = None) -> config.TrainConfig:
    return train.config_from_flags(
        parse(*args), preset_fields=PRESET, dataset_info=dataset or DATASET
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # quiet C++ logs; absl logging still reports progress
    return env


def run_train(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs train.py from the repository root, like the README's commands."""
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_records(run_dir: Path) -> list[tuple[str, int, int]]:
    records = callbacks.read_metrics(str(run_dir / "metrics.jsonl"))
    return [(r["phase"], r["epoch"], r["step"]) for r in records]


def optimizer_step(checkpoint_dir: Path) -> int:
    """The optimizer step counter stored in the latest checkpoint of a phase."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(checkpoint_dir)))
    return int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory) -> str:
    """A tiny synthetic dataset, generated in a subprocess (the generator forks workers)."""
    data_dir = str(tmp_path_factory.mktemp("tiny_data"))
    code = (
        "from kvid_training import synthetic; "
        f"synthetic.generate({data_dir!r}, classes={TINY_CLASSES!r}, "
        "split_sizes={'train': 4, 'val': 2}, num_frames=8, frame_size=(36, 36))"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=_env(),
        capture_output=True,
        timeout=RUN_TIMEOUT,
    )
    return data_dir


@pytest.fixture(scope="module")
def smoke_run(tiny_data_dir, tmp_path_factory) -> Path:
    """An uninterrupted smoke run; the bare flagfile name resolves to training/flags/."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = run_train(
        "--flagfile=vmf_smoke.flags", f"--data_dir={tiny_data_dir}", f"--workdir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# --- durations, flags -> config -------------------------------------------------------------


def test_resolve_steps_epochs_or_steps():
    kwargs = dict(steps_per_epoch=12, default_epochs=2.0, epochs_flag="epochs", steps_flag="steps")
    assert config.resolve_steps(epochs=3, steps=None, **kwargs) == 36
    assert config.resolve_steps(epochs=None, steps=30, **kwargs) == 30
    assert config.resolve_steps(epochs=None, steps=None, **kwargs) == 24  # default epochs
    assert config.resolve_steps(epochs=0.5, steps=None, **kwargs) == 6
    assert config.resolve_steps(epochs=0.01, steps=None, **kwargs) == 1  # never rounds to 0
    assert config.resolve_steps(epochs=0, steps=None, **kwargs) == 0
    with pytest.raises(ValueError, match="--epochs=3 and --steps=30 are mutually exclusive"):
        config.resolve_steps(epochs=3, steps=30, **kwargs)
    with pytest.raises(ValueError, match="--steps=-1"):
        config.resolve_steps(epochs=None, steps=-1, **kwargs)


def test_config_from_flags_epochs():
    cfg = make_config("--epochs=3", "--batch_size=4")
    assert cfg.steps_per_epoch == 12  # 50 clips // 4, last partial batch dropped
    assert cfg.float_steps == 36 and cfg.float_epochs == 3
    assert cfg.qat_steps == 2 * 12  # default QAT duration: 2 epochs
    assert cfg.warmup_steps == 4  # default warm-up: a tenth of the training (< 1 epoch)
    assert cfg.num_frames == 8 and cfg.image_size == (64, 64)  # the preset's input size
    assert cfg.model_kwargs == {"num_frames": 8, "image_size": 64}
    assert cfg.num_classes == 3 and cfg.eval_batch_size == 4


def test_config_from_flags_steps_and_overrides():
    cfg = make_config(
        "--steps=30",
        "--batch_size=4",
        "--qat_steps=5",
        "--warmup_epochs=1",
        "--num_frames=4",
        "--image_size=32",
        "--dropout_rate=0.2",
        "--model_overrides=drop_path_rate=0.1",
        "--model_overrides=window=(4, 7)",
        "--eval_num_crops=3",
    )
    assert (cfg.float_steps, cfg.qat_steps, cfg.warmup_steps) == (30, 5, 12)
    assert cfg.float_epochs == 3  # 12 + 12 + a partial epoch of 6
    assert cfg.model_kwargs == {
        "num_frames": 4,
        "image_size": 32,
        "dropout_rate": 0.2,
        "drop_path_rate": 0.1,
        "window": (4, 7),
    }
    assert cfg.image_size == (32, 32) and cfg.eval_num_crops == 3
    assert json.loads(json.dumps(cfg.to_json_dict()))["model_overrides"]["window"] == [4, 7]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.float_steps = 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs=2", "--steps=10"], "--epochs=2.0 and --steps=10 are mutually exclusive"),
        (["--qat_epochs=1", "--qat_steps=3"], "--qat_epochs=1.0 and --qat_steps=3"),
        (["--warmup_epochs=1", "--warmup_steps=3"], "--warmup_epochs=1.0 and --warmup_steps=3"),
        (["--steps=10", "--warmup_steps=11"], "--warmup_steps: 11 warm-up steps exceed"),
        (["--steps=0"], "the float phase needs at least one step"),
        (["--batch_size=51"], "--batch_size=51: larger than the train split"),
        (["--image_size=96"], "--image_size: input 96x96 is larger than the stored frames"),
        (["--dropout_rate=0.1", "--model_overrides=dropout_rate=0.2"], "--dropout_rate"),
        (["--model_overrides=num_frames=4"], "--model_overrides: set num_frames with"),
        (["--model_overrides=oops"], "--model_overrides: 'oops' is not of the form key=value"),
    ],
)
def test_config_from_flags_rejects(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_config(*args)


def test_config_from_flags_needs_train_and_val_splits():
    dataset = dict(DATASET, splits={"train": 50, "test": 10})
    with pytest.raises(ValueError, match="--data_dir=data/default: the dataset has no 'val'"):
        make_config(dataset=dataset)


@pytest.mark.parametrize(
    "start, total, per_epoch, calls",
    [
        (0, 12, 3, [(0, 4, 3)]),
        (0, 5, 3, [(0, 1, 3), (1, 2, 2)]),  # a duration in steps ends inside an epoch
        (1, 5, 3, [(0, 2, 2)]),  # resumed inside epoch 0: its 2 steps, then the last 2
        (4, 10, 3, [(1, 2, 2), (2, 3, 3), (3, 4, 1)]),
        (3, 3, 3, []),
        (0, 2, 3, [(0, 1, 2)]),
    ],
)
def test_plan_fit_calls(start, total, per_epoch, calls):
    assert config.plan_fit_calls(start, total, per_epoch) == calls


def test_plan_fit_calls_runs_exactly_the_remaining_steps():
    for total in range(1, 30):
        for per_epoch in range(1, 8):
            for start in range(total + 1):
                calls = config.plan_fit_calls(start, total, per_epoch)
                assert sum((end - begin) * steps for begin, end, steps in calls) == total - start
                # Epochs continue where the previous call stopped and stay within the phase.
                assert all(a[1] == b[0] for a, b in zip(calls, calls[1:]))
                assert not calls or calls[-1][1] == math.ceil(total / per_epoch)


# --- schedule and optimizer -------------------------------------------------------------------


def test_warmup_cosine_values():
    schedule = optimization.WarmupCosineDecay(
        1.0, total_steps=10, warmup_steps=2, final_learning_rate=0.1
    )
    expected = {
        0: 0.5,  # (0 + 1) / 2 of the peak: the first update already learns
        1: 1.0,
        2: 1.0,  # the cosine starts at the peak
        6: 0.1 + 0.9 * 0.5,  # half-way through the 8 decay steps
        8: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)),
        10: 0.1,
        15: 0.1,  # held after the end
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-6), step
    no_warmup = optimization.WarmupCosineDecay(2.0, total_steps=4)
    assert [float(no_warmup(s)) for s in range(5)] == pytest.approx(
        [
            2.0,
            2.0 * 0.5 * (1 + math.cos(math.pi / 4)),
            1.0,
            2.0 * 0.5 * (1 - math.cos(math.pi / 4)),
            0.0,
        ],
        abs=1e-6,
    )


def test_warmup_cosine_serializes():
    schedule = optimization.WarmupCosineDecay(0.3, total_steps=100, warmup_steps=7)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, optimization.WarmupCosineDecay)
    assert restored.get_config() == schedule.get_config()
    assert float(restored(50)) == float(schedule(50))


def test_optimizer_decays_weights_but_not_norms_biases_tokens():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(name="norm")(hidden)
    model = keras.Model(inputs, outputs)
    tokens = model.add_weight(name="global_tokens", shape=(2,), initializer="ones")
    for variable in model.trainable_variables:
        variable.assign(tf.ones_like(variable))
    optimizer = optimization.create_optimizer(
        model,
        learning_rate=0.5,
        total_steps=10,
        warmup_steps=0,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    # Zero gradients: Adam moves nothing, so any change is the decoupled weight decay.
    optimizer.apply_gradients((tf.zeros_like(v), v) for v in model.trainable_variables)
    values = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in model.trainable_variables}
    np.testing.assert_allclose(values["kernel"], 1 - 0.5 * 0.1)
    for name in ("bias", "gamma", "beta"):
        np.testing.assert_allclose(values[name], 1.0)
    np.testing.assert_allclose(tokens.numpy(), 1.0)
    assert int(optimizer.iterations) == 1
    assert optimization.last_learning_rate(optimizer) == pytest.approx(0.5)


# --- flagfiles and workdir helpers --------------------------------------------------------------


def test_bare_flagfile_name_resolves_next_to_train_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.flags").write_text("--steps=3\n")
    resolved = train.resolve_flagfile_args(
        [
            "train.py",
            "--flagfile=vmf.flags",
            "--flagfile=local.flags",
            "--flagfile=nope.flags",
            "--steps=3",
        ]
    )
    assert resolved == [
        "train.py",
        f"--flagfile={FLAGS_DIR / 'vmf.flags'}",  # not in the cwd: training/flags/ has it
        "--flagfile=local.flags",  # found from the cwd: absl's own rule wins
        "--flagfile=nope.flags",  # nowhere: left for absl to report
        "--steps=3",
    ]
    assert Path(train.FLAGFILE_DIR) == FLAGS_DIR


@pytest.mark.parametrize("name", sorted(p.name for p in FLAGS_DIR.glob("*.flags")))
def test_flagfiles_parse_and_state_cost_and_metric(name):
    text = (FLAGS_DIR / name).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("#")
    for needed in ("Command", f"--flagfile={name}", "Hardware", "wall time", "accuracy"):
        assert any(needed in line for line in header), (name, needed)
    assert "TODO" not in text
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train.py", "--workdir=/tmp/unused", f"--flagfile={FLAGS_DIR / name}"])
    assert flag_values.preset in kvid.models.list_presets()


def test_vmf_flags_is_the_default_dataset_at_8x64x64():
    flag_values = parse(f"--flagfile={FLAGS_DIR / 'vmf.flags'}")
    assert flag_values.preset == "vmf_tiny"
    assert flag_values.data_dir == train.DEFAULT_DATA_DIR
    assert (flag_values.num_frames, flag_values.image_size) == (8, 64)
    assert flag_values.qat_epochs > 0


def test_model_overrides_parse_literals():
    assert config.parse_model_overrides(
        ["a=1", "b=0.5", "c=(1, 2)", "d=relu6", "e=True", "f=[1,2]"]
    ) == {"a": 1, "b": 0.5, "c": (1, 2), "d": "relu6", "e": True, "f": [1, 2]}
    assert config.freeze_overrides({"f": [1, 2], "a": 1}) == (("a", 1), ("f", (1, 2)))


def test_check_same_run(tmp_path):
    lines = ["--steps=5", "--verbose=1", "--noflip", "--workdir=/a"]
    flags_path = str(tmp_path / "flags.txt")
    workdir.check_same_run(flags_path, lines)  # no previous run
    with open(flags_path, "w") as file:
        file.write(workdir.format_flagfile(lines, "header"))
    workdir.check_same_run(flags_path, lines)
    # Verbosity, checkpoint frequency and the workdir's spelling do not change the results.
    workdir.check_same_run(flags_path, ["--steps=5", "--verbose=2", "--noflip", "--workdir=a"])
    with pytest.raises(
        ValueError,
        match=r"different flags \(now: --flip --steps=6; saved: "
        r"--noflip --steps=5\)",
    ):
        workdir.check_same_run(flags_path, ["--steps=6", "--flip"])


def test_truncate_metrics_drops_epochs_after_the_checkpoint(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    rows = [("float", 3), ("float", 6), ("qat", 2), ("qat", 4)]
    with open(path, "w") as file:
        file.writelines(json.dumps({"phase": p, "step": s}) + "\n" for p, s in rows)
    callbacks.truncate_metrics(path, "qat", 2)
    assert [(r["phase"], r["step"]) for r in callbacks.read_metrics(path)] == rows[:3]
    callbacks.truncate_metrics(path, "float", 0)
    assert [(r["phase"], r["step"]) for r in callbacks.read_metrics(path)] == [("qat", 2)]


# --- bad flags: one clear line naming the flag --------------------------------------------------

# One case per place where train.py rejects flags: absl's parser, the preset lookup, the data
# check, the flags -> config conversion and the model factory. (Every message of the conversion
# is checked in-process by test_config_from_flags_rejects.)
BAD_FLAGS = {
    "num_frames_zero": (["--num_frames=0"], "--num_frames=0: 0 is not a positive integer"),
    "unknown_preset": (["--preset=vmf_nope"], "--preset=vmf_nope: unknown preset; valid: "),
    "missing_data_dir": (["--data_dir={tmp}/nowhere"], "--data_dir={tmp}/nowhere: no prepared"),
    "epochs_and_steps": (["--epochs=2"], "--epochs=2.0 and --steps=5 are mutually exclusive"),
    "image_size_rejected_by_preset": (["--image_size=24"], "--image_size: vmf_tiny rejects"),
    "multi_worker_without_tf_config": (
        ["--strategy=multi_worker"],
        "--strategy=multi_worker: TF_CONFIG is not set",
    ),
    "tpu_on_a_machine_without_one": (["--strategy=tpu"], "--strategy=tpu: no TPU on this machine"),
    "init_from_missing_workdir": (
        ["--init_from={tmp}/nowhere"],
        "--init_from={tmp}/nowhere: workdir {tmp}/nowhere does not exist",
    ),
    "global_batch_not_divisible": (
        ["--strategy=mirrored", "--num_cpu_devices=2", "--batch_size=3"],
        "--batch_size=3: the global batch must be a multiple of the 2 replicas",
    ),
}


@pytest.fixture(scope="module")
def bad_flag_results(tiny_data_dir, tmp_path_factory) -> dict:
    """Runs every BAD_FLAGS case at once (they are independent short processes)."""
    tmp = str(tmp_path_factory.mktemp("bad_flags"))
    processes = {}
    for case, (args, _) in BAD_FLAGS.items():
        run_dir = os.path.join(tmp, case)
        base = [
            "--preset=vmf_tiny",
            f"--data_dir={tiny_data_dir}",
            f"--workdir={run_dir}",
            "--num_frames=4",
            "--image_size=32",
            "--batch_size=4",
            "--steps=5",
        ]
        processes[case] = (
            run_dir,
            subprocess.Popen(
                [sys.executable, str(TRAIN_PY), *base, *[a.format(tmp=tmp) for a in args]],
                cwd=REPO_ROOT,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    results = {}
    for case, (run_dir, process) in processes.items():
        _, stderr = process.communicate(timeout=RUN_TIMEOUT)
        results[case] = (process.returncode, stderr, run_dir, tmp)
    return results


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flag_stops_with_one_line_naming_it(case, bad_flag_results):
    returncode, stderr, run_dir, tmp = bad_flag_results[case]
    expected = BAD_FLAGS[case][1].format(tmp=tmp)
    last_line = stderr.strip().splitlines()[-1]
    assert returncode != 0
    assert last_line.startswith("train.py: error: "), stderr[-2000:]
    assert expected in last_line, last_line
    assert "Traceback" not in stderr
    # Nothing was written: the corrected command can use the same workdir.
    assert not os.path.exists(run_dir)
    if case == "unknown_preset":
        assert "vmf_tiny" in last_line


def test_model_flag_rejected_by_the_preset_is_named():
    cfg = make_config("--num_frames=4", "--image_size=32", "--model_overrides=no_such_field=1")
    blame = {
        "--num_frames": ["num_frames"],
        "--image_size": ["image_size"],
        "--model_overrides": ["no_such_field"],
    }
    with pytest.raises(
        app.UsageError,
        match=r"^--model_overrides: vmf_tiny rejects .*"
        r"no_such_field",
    ):
        train.build_model(dataclasses.replace(cfg, preset="vmf_tiny"), blame)
    cfg = make_config("--num_frames=3", "--image_size=32")
    with pytest.raises(app.UsageError, match=r"^--num_frames: vmf_tiny rejects .*num_frames 3"):
        train.build_model(dataclasses.replace(cfg, preset="vmf_tiny"), blame)


def test_image_presets_are_refused_and_importing_defines_no_global_flag():
    with pytest.raises(app.UsageError, match=r"^--preset=mobile_former_26m: an image preset"):
        train._preset_fields("mobile_former_26m")
    assert train._preset_fields("vmf_tiny")["num_frames"] == 8
    # Flags are defined by run() only, so this module can share a process with other CLIs.
    assert "checkpoint_every_steps" not in flags.FLAGS


def test_workdir_of_another_run_is_refused(smoke_run, tiny_data_dir):
    before = (smoke_run / "metrics.jsonl").read_text()
    result = run_train(
        "--flagfile=vmf_smoke.flags",
        f"--data_dir={tiny_data_dir}",
        f"--workdir={smoke_run}",
        "--steps=6",
    )
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert last_line.startswith(
        f"train.py: error: --workdir={smoke_run} holds a run with "
        "different flags (now: --steps=6; saved: --steps=5)"
    )
    assert (smoke_run / "metrics.jsonl").read_text() == before


# --- end to end ---------------------------------------------------------------------------------


def test_smoke_run_writes_the_workdir_contract(smoke_run, tiny_data_dir):
    for name in [
        "flags.txt",
        "config.json",
        "model.json",
        "label_map.json",
        "metrics.jsonl",
        "training_curve.png",
        "export/float/saved_model.pb",
        "export/qat/saved_model.pb",
        "export/float.weights.h5",
        "export/qat.weights.h5",
        "checkpoints/float/checkpoint",
        "checkpoints/qat/checkpoint",
    ]:
        assert (smoke_run / name).is_file(), name
    assert (smoke_run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((smoke_run / "label_map.json").read_text()) == TINY_CLASSES

    model_info = json.loads((smoke_run / "model.json").read_text())
    assert model_info["preset"] == "vmf_tiny" and model_info["num_classes"] == 3
    assert model_info["input_shape"] == [4, 32, 32, 3]
    assert model_info["labels"] == TINY_CLASSES
    assert model_info["order_pairs"] == [["zoom_in", "zoom_out"]]
    assert model_info["normalization"] == {
        "mean": list(kvid.models.get_preset("vmf_tiny")["input_mean"]),
        "std": list(kvid.models.get_preset("vmf_tiny")["input_std"]),
    }
    assert model_info["data_dir"] == tiny_data_dir
    assert model_info["input"] == {"num_frames": 4, "image_size": [32, 32], "frame_stride": 1}
    assert model_info["overrides"]["num_frames"] == 4
    assert model_info["overrides"]["image_size"] == 32

    # flags.txt replays to the same config.
    replayed = train.config_from_flags(
        parse(f"--flagfile={smoke_run / 'flags.txt'}"),
        preset_fields=kvid.models.get_preset("vmf_tiny"),
        dataset_info=json.loads((Path(tiny_data_dir) / "dataset.json").read_text()),
    )
    assert replayed.to_json_dict() == json.loads((smoke_run / "config.json").read_text())
    assert (replayed.float_steps, replayed.qat_steps) == (SMOKE_FLOAT_STEPS, SMOKE_QAT_STEPS)

    records = callbacks.read_metrics(str(smoke_run / "metrics.jsonl"))
    assert [(r["phase"], r["epoch"], r["step"]) for r in records] == SMOKE_EPOCHS
    for record in records:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "wall_time"):
            assert math.isfinite(record[key]), (key, record)
        assert 0 <= record["val_accuracy"] <= 1
    assert optimizer_step(smoke_run / "checkpoints/float") == SMOKE_FLOAT_STEPS
    assert optimizer_step(smoke_run / "checkpoints/qat") == SMOKE_QAT_STEPS

    for phase in ("float", "qat"):
        for split, tags in (
            ("train", {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}),
            ("validation", {"epoch_loss", "epoch_accuracy"}),
        ):
            events = list((smoke_run / "tensorboard" / phase / split).glob("events.out.*"))
            seen = set()
            for event in tf.compat.v1.train.summary_iterator(str(events[0])):
                for value in event.summary.value:
                    assert value.metadata.plugin_data.plugin_name == "scalars"
                    seen.add(value.tag)
            assert seen == tags, (phase, split, seen)


def test_exports_serve_video_to_logits_and_match_the_weights(smoke_run):
    model_info = json.loads((smoke_run / "model.json").read_text())
    video = np.random.default_rng(0).random((2, 4, 32, 32, 3), dtype=np.float32)
    for phase in ("float", "qat"):
        loaded = tf.saved_model.load(str(smoke_run / "export" / phase))
        signature = loaded.signatures["serving_default"]
        _, inputs = signature.structured_input_signature
        assert list(inputs) == ["video"]
        assert inputs["video"].shape.as_list() == [None, 4, 32, 32, 3]
        assert list(signature.structured_outputs) == ["logits"]
        served = signature(video=tf.constant(video))["logits"].numpy()
        assert served.shape == (2, 3)

        # The Keras weights rebuild the same classifier from model.json.
        model = kvid.models.create(
            model_info["preset"], model_info["num_classes"], **model_info["overrides"]
        )
        if phase == "qat":
            model = kvid.quantization.quantize_model(model)
        model.load_weights(str(smoke_run / "export" / f"{phase}.weights.h5"))
        # As a graph, as served: eager and graph float rounding may differ by one int8 step of a
        # QAT fake quant, and so move a logit by that step.
        rebuilt = tf.function(lambda clip: model(clip, training=False))  # noqa: B023
        np.testing.assert_allclose(rebuilt(tf.constant(video)).numpy(), served, atol=1e-5)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_resume_after_sigkill_runs_the_same_steps(smoke_run, tiny_data_dir, tmp_path):
    """SIGKILL inside the float phase, then inside QAT; the resumed run matches the smoke run."""
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        str(TRAIN_PY),
        "--flagfile=vmf_smoke.flags",
        f"--data_dir={tiny_data_dir}",
        f"--workdir={run_dir}",
    ]

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    # 1. Killed as soon as the first float checkpoint (step 1, inside epoch 1) is written.
    process = start()
    _wait_for(run_dir / "checkpoints/float/checkpoint", process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (run_dir / "export/float").exists()  # the float phase was not finished
    killed_at = optimizer_step(run_dir / "checkpoints/float")
    assert killed_at < SMOKE_FLOAT_STEPS

    # 2. Resumed, and killed again at the first QAT checkpoint.
    process = start()
    _wait_for(run_dir / "checkpoints/qat/checkpoint", process)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert f"float: resumed from {run_dir}/checkpoints/float/ckpt-{killed_at} " in stderr
    assert (run_dir / "export/float/saved_model.pb").exists()
    assert not (run_dir / "export/qat").exists()

    # 3. Resumed: the float phase is complete, so it goes straight to QAT.
    result = run_train(*args[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"float: all {SMOKE_FLOAT_STEPS} steps done" in result.stderr
    assert f"qat: resumed from {run_dir}/checkpoints/qat/ckpt-" in result.stderr

    assert read_records(run_dir) == read_records(smoke_run) == SMOKE_EPOCHS
    assert optimizer_step(run_dir / "checkpoints/float") == SMOKE_FLOAT_STEPS
    assert optimizer_step(run_dir / "checkpoints/qat") == SMOKE_QAT_STEPS
    assert workdir.export_complete(str(run_dir), "qat")
    # The resumed phases continued the data stream where it stopped (vmf_smoke.flags is
    # deterministic and has no dropout), so they took the uninterrupted run's very steps.
    for phase in ("float", "qat"):
        resumed = h5_arrays(run_dir / "export" / f"{phase}.weights.h5")
        uninterrupted = h5_arrays(smoke_run / "export" / f"{phase}.weights.h5")
        assert resumed.keys() == uninterrupted.keys()
        for name, value in resumed.items():
            np.testing.assert_allclose(value, uninterrupted[name], rtol=0, atol=1e-6, err_msg=name)


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """The model weights of a Keras HDF5 weights file by their path in the file (the compiled
    metrics' running totals, which restart with every `fit`, left out)."""
    import h5py

    arrays = {}

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset) and not name.startswith("metrics/"):
            arrays[name] = item[()]

    with h5py.File(path, "r") as file:
        file.visititems(visit)
    return arrays


# --- several workers ----------------------------------------------------------------------------

# Relative loss difference allowed between two workers (one replica each, synchronized batch norm)
# and one worker with the same global batch. The float phase differs only in the order of the
# gradient all-reduce (measured 5e-5); in QAT, TFMOT's activation ranges follow the mean of the
# replicas' batch ranges instead of the global batch's (measured 1e-3).
MULTI_WORKER_RTOL = {"float": 1e-3, "qat": 1e-2}
# Hard limit for the two workers (each traces its steps with collective ops; about 2 min idle).
MULTI_WORKER_TIMEOUT = 600


def assert_same_losses(run_dir: Path, reference_dir: Path) -> None:
    """The runs logged the same epochs, with losses within MULTI_WORKER_RTOL."""
    records = callbacks.read_metrics(str(run_dir / "metrics.jsonl"))
    reference = callbacks.read_metrics(str(reference_dir / "metrics.jsonl"))
    assert [(r["phase"], r["epoch"], r["step"]) for r in records] == SMOKE_EPOCHS
    for record, expected in zip(records, reference):
        np.testing.assert_allclose(
            record["loss"], expected["loss"], rtol=MULTI_WORKER_RTOL[record["phase"]]
        )


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_follow_the_single_worker_run(smoke_run, tiny_data_dir, tmp_path):
    """MultiWorkerMirroredStrategy on 127.0.0.1: two processes with TF_CONFIG, each with its own
    --workdir, give the single-worker losses; only the chief's workdir receives outputs."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = _env()
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(TRAIN_PY),
                    "--flagfile=vmf_smoke.flags",
                    "--strategy=multi_worker",
                    "--sync_batch_norm",
                    f"--data_dir={tiny_data_dir}",
                    f"--workdir={tmp_path / f'worker{index}'}",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        errors = [process.communicate(timeout=MULTI_WORKER_TIMEOUT)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, stderr in zip(processes, errors):
        assert process.returncode == 0, stderr[-3000:]
    assert "2 replica(s), 2 clips per replica per step" in errors[0]

    chief = tmp_path / "worker0"
    assert workdir.export_complete(str(chief), "float")
    assert workdir.export_complete(str(chief), "qat")
    # The other worker saved into a temporary folder of its own and removed it at the end.
    assert not (tmp_path / "worker1").exists()

    assert_same_losses(chief, smoke_run)


@pytest.mark.slow
def test_mirrored_replicas_and_mixed_precision(smoke_run, tiny_data_dir, tmp_path):
    """Two replicas on two logical CPU devices follow the single-device losses; a mixed_float16
    float phase trains and still exports float32 SavedModels."""
    mirrored = tmp_path / "mirrored"
    result = run_train(
        "--flagfile=vmf_smoke.flags",
        "--strategy=mirrored",
        "--num_cpu_devices=2",
        "--sync_batch_norm",
        f"--data_dir={tiny_data_dir}",
        f"--workdir={mirrored}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored strategy: 2 replica(s), 2 clips per replica per step" in result.stderr
    assert_same_losses(mirrored, smoke_run)

    mixed = tmp_path / "mixed"
    result = run_train(
        "--flagfile=vmf_smoke.flags",
        "--mixed_precision=mixed_float16",
        f"--data_dir={tiny_data_dir}",
        f"--workdir={mixed}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_records(mixed) == SMOKE_EPOCHS
    for phase in ("float", "qat"):
        # Exported from the float32 build: the mixed-precision model itself returns float16.
        served = tf.saved_model.load(str(mixed / "export" / phase)).signatures["serving_default"]
        assert served.structured_outputs["logits"].dtype == tf.float32
        assert served.structured_input_signature[1]["video"].dtype == tf.float32
