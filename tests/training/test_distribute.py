"""Tests of training/distribute.py and of the checkpoint fallback, in-process and fast.

The strategies themselves run end to end in tests/training/test_train.py (two workers on
127.0.0.1, and the flag errors); these tests cover the decisions around them.
"""

from __future__ import annotations

import glob
import os
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import app

from kvid_training import distribute, loop, optimization, train


@pytest.fixture
def two_workers():
    """A strategy as the batch check sees it: 4 replicas."""
    return types.SimpleNamespace(num_replicas_in_sync=4)


def test_auto_shard_by_file_only_when_every_worker_gets_a_file():
    assert distribute.shard_by_file("auto", 8, 2, "train")
    assert distribute.shard_by_file("auto", 2, 2, "train")
    assert not distribute.shard_by_file("auto", 1, 2, "train")
    assert not distribute.shard_by_file("auto", 8, 1, "train")  # one pipeline: nothing to split
    assert not distribute.shard_by_file("data", 8, 2, "train")
    with pytest.raises(distribute.StrategyError, match=r"^--auto_shard=file: the train split"):
        distribute.shard_by_file("file", 1, 2, "train")


def test_one_worker_outside_multi_worker_strategies():
    assert distribute.num_workers(tf.distribute.get_strategy()) == 1


def test_global_batch_must_divide_over_the_replicas(two_workers):
    assert distribute.check_global_batch(8, two_workers, "--batch_size") == 2
    with pytest.raises(distribute.StrategyError, match=r"^--batch_size=6: .* the 4 replicas"):
        distribute.check_global_batch(6, two_workers, "--batch_size")


@pytest.mark.parametrize(
    "value, message",
    [
        (None, r"^--strategy=multi_worker: TF_CONFIG is not set"),
        ("{not json", r"^TF_CONFIG: not a cluster description \(JSONDecodeError"),
        ('{"cluster": {"worker": ["a:1"]}}', r"^TF_CONFIG: not a cluster description \(KeyError"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            r"^TF_CONFIG: .*task index 1 but 1 workers",
        ),
    ],
)
def test_tf_config_errors_name_the_variable(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(distribute.StrategyError, match=message):
        distribute.cluster_spec_from_env()


def test_default_strategy_is_its_own_chief_and_writes_into_the_workdir(tmp_path):
    strategy = distribute.create_strategy("default")
    assert distribute.is_chief(strategy)
    assert distribute.output_dir(str(tmp_path), strategy) == str(tmp_path)
    distribute.remove_worker_dir(str(tmp_path), strategy)  # the chief's workdir stays
    assert tmp_path.is_dir()


def test_synchronize_batch_norm_switches_every_batch_norm_once():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, x)
    assert distribute.synchronize_batch_norm(model) == 2
    assert all(layer.synchronized for layer in model.layers[2::2])
    assert distribute.synchronize_batch_norm(model) == 0
    model(np.zeros((2, 8, 8, 3), np.float32), training=True)  # one replica: plain batch norm


def _tiny_model() -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    directory = str(tmp_path / "checkpoints")
    model = _tiny_model()
    optimizer = optimization.create_optimizer(
        model, learning_rate=1e-3, total_steps=10, warmup_steps=0, weight_decay=0, grad_clip_norm=0
    )
    checkpoint, manager, _ = loop.phase_checkpoint(model, optimizer, directory)
    assert manager.latest_checkpoint is None
    saved = {}
    for step in (1, 2):
        model.layers[1].kernel.assign(np.full((4, 3), step, np.float32))
        saved[step] = manager.save(checkpoint_number=step)
    # The newest checkpoint's data file is cut short, as by a full disk or a partial copy.
    (data_file,) = glob.glob(saved[2] + ".data-*")
    with open(data_file, "r+b") as file:
        file.truncate(os.path.getsize(data_file) // 2)

    restored = _tiny_model()
    optimizer = optimization.create_optimizer(
        restored,
        learning_rate=1e-3,
        total_steps=10,
        warmup_steps=0,
        weight_decay=0,
        grad_clip_norm=0,
    )
    with caplog.at_level("WARNING"):
        _, manager, _ = loop.phase_checkpoint(restored, optimizer, directory)
    assert f"checkpoint {saved[2]} cannot be read" in caplog.text
    np.testing.assert_array_equal(restored.layers[1].kernel.numpy(), np.ones((4, 3)))
    # The manager continues from the restored checkpoint.
    assert manager.latest_checkpoint == saved[1]
    assert manager.checkpoints == [saved[1]]
    assert tf.train.latest_checkpoint(directory) == saved[1]
    # ... and keeps rotating: a new manager over the folder sees both.
    model.layers[1].kernel.assign(np.full((4, 3), 3, np.float32))
    saved[3] = manager.save(checkpoint_number=3)
    assert tf.train.CheckpointManager(tf.train.Checkpoint(), directory, 3).checkpoints == [
        saved[1],
        saved[3],
    ]


def test_non_chief_waits_for_the_chiefs_dataset(tmp_path, monkeypatch):
    from kvid_training import synthetic

    data_dir = str(tmp_path / "data")
    polls = []

    def ready(path, seed, scale):
        polls.append(path)
        return len(polls) >= 3  # written by the chief meanwhile

    monkeypatch.setattr(synthetic, "default_dataset_ready", ready)
    monkeypatch.setattr(train.time, "sleep", lambda seconds: None)
    train._ensure_data_dir(data_dir, 0, 1.0, generate=True, chief=False)
    assert polls == [data_dir] * 3
    assert not os.path.exists(data_dir)  # the worker itself generated nothing

    monkeypatch.setattr(synthetic, "default_dataset_ready", lambda *args: False)
    monkeypatch.setattr(train, "DATASET_WAIT_SECONDS", 0)
    with pytest.raises(app.UsageError, match=rf"^--data_dir={data_dir}: the chief has not"):
        train._ensure_data_dir(data_dir, 0, 1.0, generate=True, chief=False)


def test_tpu_without_a_tpu_is_one_line():
    with pytest.raises(distribute.StrategyError, match=r"^--strategy=tpu: no TPU on this machine"):
        distribute.create_strategy("tpu")


def test_gather_from_workers_returns_every_replicas_value():
    assert distribute.gather_from_workers(tf.distribute.get_strategy(), 7) == [7]
