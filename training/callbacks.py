"""Keras callbacks of a training phase: multi-view validation, JSON-lines metrics, checkpoints.

They run in this order at the end of each epoch, sharing one `logs` dict: the validation adds
`val_loss` / `val_accuracy`, the metrics logger writes the JSON line and the TensorBoard scalars,
then the checkpoint is saved.
A metrics line is therefore never newer than the latest checkpoint by more than the epoch in
flight, and a resumed run drops such lines (`truncate_metrics`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import tensorflow as tf
import tf_keras as keras
from absl import logging
from tensorflow.core.framework import summary_pb2

from kvid_training import optimization

# TensorBoard's scalar plugin reads summaries tagged with this metadata. Writing them with
# `tf.summary.write` needs no `tensorboard` package: TF 2.21 no longer installs it, and
# `keras.callbacks.TensorBoard` (through `tf.summary.scalar`) fails without it.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


class MultiViewValidation(keras.callbacks.Callback):
    """Validates on clips sampled the evaluation way: every view through the model, averaged.

    The evaluation dataset yields `(video (B, V, T, H, W, 3), label (B,))` with V = clips x crops.
    The views are folded into the batch, the model runs on all of them, and the mean of the
    per-view logits is scored, like the reported evaluation (MoViNet, X3D multi-view testing).

    Args:
      dataset: finite evaluation dataset.
      label_smoothing: same smoothing as the training loss, so `val_loss` and `loss` compare.
    """

    def __init__(self, dataset: tf.data.Dataset, label_smoothing: float):
        super().__init__()
        self.dataset = dataset
        self.label_smoothing = label_smoothing
        self._step_fn = None

    def _make_step_fn(self):
        model = self.model
        loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True,
            label_smoothing=self.label_smoothing,
            reduction=keras.losses.Reduction.SUM,
        )

        @tf.function
        def step(video, label):
            views = tf.shape(video)[1]
            flat = tf.reshape(video, tf.concat([[-1], tf.shape(video)[2:]], axis=0))
            logits = model(flat, training=False)
            logits = tf.reshape(logits, [-1, views, tf.shape(logits)[-1]])
            logits = tf.reduce_mean(logits, axis=1)
            one_hot = tf.one_hot(tf.cast(label, tf.int32), tf.shape(logits)[-1])
            correct = tf.reduce_sum(
                tf.cast(
                    tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(label, tf.int32)),
                    tf.float32,
                )
            )
            return loss_fn(one_hot, logits), correct, tf.cast(tf.shape(label)[0], tf.float32)

        return step

    def evaluate(self) -> dict[str, float]:
        """Returns {"val_loss", "val_accuracy"} over the whole evaluation dataset."""
        if self._step_fn is None:
            self._step_fn = self._make_step_fn()
        total_loss = total_correct = total_count = 0.0
        for video, label in self.dataset:
            loss, correct, count = self._step_fn(video, label)
            total_loss += float(loss)
            total_correct += float(correct)
            total_count += float(count)
        if total_count == 0:
            raise ValueError("the validation split is empty")
        return {"val_loss": total_loss / total_count, "val_accuracy": total_correct / total_count}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs.update(self.evaluate())


class MetricsLogger(keras.callbacks.Callback):
    """Logs each epoch: a JSON line in `path`, TensorBoard scalars in `tensorboard_dir`, absl.

    The JSON line holds the phase, the epoch (1-based, like the progress bar), the optimizer step
    at the end of the epoch, the Keras metrics, the learning rate of the epoch's last update
    and times.
    TensorBoard gets `epoch_<metric>` scalars at the optimizer step (train metrics and the
    learning rate under train/, `val_*` under validation/, the layout of
    `keras.callbacks.TensorBoard`), so the curves of a resumed run continue where they stopped.
    """

    def __init__(self, path: str, phase: str, tensorboard_dir: str):
        super().__init__()
        self.path = path
        self.phase = phase
        self._writers = {
            name: tf.summary.create_file_writer(os.path.join(tensorboard_dir, name))
            for name in ("train", "validation")
        }
        self._epoch_start = time.time()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {key: float(value) for key, value in sorted((logs or {}).items())}
        now = time.time()
        step = int(self.model.optimizer.iterations.numpy())
        learning_rate = optimization.last_learning_rate(self.model.optimizer)
        record = {
            "phase": self.phase,
            "epoch": epoch + 1,
            "step": step,
            **metrics,
            "lr": learning_rate,
            "epoch_seconds": round(now - self._epoch_start, 3),
            "wall_time": now,
        }
        _write_records(self.path, [*read_metrics(self.path), record])
        scalars = {"train": {"epoch_learning_rate": learning_rate}, "validation": {}}
        for key, value in metrics.items():
            if key.startswith("val_"):
                scalars["validation"][f"epoch_{key[4:]}"] = value
            else:
                scalars["train"][f"epoch_{key}"] = value
        for name, values in scalars.items():
            with self._writers[name].as_default():
                for tag, value in values.items():
                    tf.summary.write(
                        tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA
                    )
            self._writers[name].flush()
        logging.info(
            "%s epoch %d step %d: %s",
            self.phase,
            record["epoch"],
            step,
            ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()),
        )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.flush()


class CheckpointSaver(keras.callbacks.Callback):
    """Saves the phase checkpoint at the end of every epoch and every `every_steps` steps.

    Run it after the callbacks that log the epoch (see the module docstring).

    The checkpoint number is the optimizer step, so `tf.train.CheckpointManager` keeps them in
    order and a resumed run restores the latest one. `epoch_variable` records completed epochs
    (a partial last epoch counts once it is done).
    """

    def __init__(
        self,
        manager: tf.train.CheckpointManager,
        epoch_variable: tf.Variable,
        steps_per_epoch: int,
        every_steps: int = 0,
    ):
        super().__init__()
        self.manager = manager
        self.epoch_variable = epoch_variable
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self._last_saved_step = -1

    def _save(self, completed_epochs: int) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step == self._last_saved_step:
            return
        self.epoch_variable.assign(completed_epochs)
        path = self.manager.save(checkpoint_number=step)
        self._last_saved_step = step
        logging.info("saved checkpoint %s", path)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # The last batch of an epoch is saved by on_epoch_end, after its metrics line: a
        # checkpoint here could survive a crash that loses that line, and the resumed run, which
        # starts after that epoch, would never write it.
        if not self.every_steps or batch + 1 == self.params.get("steps"):
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps == 0:
            self._save(step // self.steps_per_epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._save(epoch + 1)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (empty when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def truncate_metrics(path: str, phase: str, last_step: int) -> None:
    """Drops the `phase` records after `last_step`: epochs that a crash made the run repeat."""
    records = read_metrics(path)
    kept = [r for r in records if r["phase"] != phase or r["step"] <= last_step]
    if len(kept) != len(records):
        _write_records(path, kept)


def _write_records(path: str, records: list[dict[str, Any]]) -> None:
    """Writes a metrics.jsonl file atomically (a killed run never leaves half a line)."""
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    os.replace(tmp_path, path)
