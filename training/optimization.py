"""Learning rate schedule and optimizer of both training phases (float and QAT)."""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf
import tf_keras as keras

# Variables whose name contains one of these are not weight-decayed: norm scales and shifts,
# biases, learned global tokens and embeddings. Decaying them pulls norms towards zero and tokens
# towards the origin, which hurts accuracy (DeiT, Mobile-Former recipes).
NO_WEIGHT_DECAY_NAMES = ("bias", "gamma", "beta", "tokens", "embedding")


@keras.utils.register_keras_serializable(package="kvid_training")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_learning_rate`, then cosine decay to `final_learning_rate`.

    With `s` the optimizer step counted from 0 (`optimizer.iterations` before the update):
      s < warmup_steps:  peak * (s + 1) / warmup_steps
      otherwise:         final + (peak - final) * (1 + cos(pi * p)) / 2,
                         p = min(1, (s - warmup_steps) / (total_steps - warmup_steps))
    The warm-up counts from `s + 1` so that the first update already moves the weights (a step at
    learning rate 0 is wasted compute); the cosine starts at the peak on the first step after
    warm-up and is held at `final_learning_rate` past `total_steps`.

    Args:
      peak_learning_rate: learning rate at the end of the warm-up.
      total_steps: optimizer steps of the whole schedule, warm-up included.
      warmup_steps: linear warm-up steps (0 starts directly with the cosine).
      final_learning_rate: learning rate at `total_steps`.
      name: optional name scope.
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        final_learning_rate: float = 0.0,
        name: str | None = None,
    ):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_learning_rate = final_learning_rate
        self.name = name

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "WarmupCosineDecay"):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(self.peak_learning_rate, tf.float32)
            final = tf.constant(self.final_learning_rate, tf.float32)
            warmup = float(self.warmup_steps)
            decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
            cosine = final + (peak - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
            if self.warmup_steps == 0:
                return cosine
            linear = peak * (step + 1.0) / warmup
            return tf.where(step < warmup, linear, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_learning_rate": self.final_learning_rate,
            "name": self.name,
        }


def create_optimizer(
    model: keras.Model,
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int,
    weight_decay: float,
    grad_clip_norm: float,
) -> keras.optimizers.Optimizer:
    """AdamW on a warm-up + cosine schedule, built for `model` so a checkpoint can restore it.

    The optimizer is built (its moment slots created) here, not lazily at the first step:
    `tf.train.Checkpoint.restore` then assigns saved moments directly, and the weight-decay
    exclusions, which must be set before building, are in place.
    """
    schedule = WarmupCosineDecay(learning_rate, total_steps=total_steps, warmup_steps=warmup_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        global_clipnorm=grad_clip_norm if grad_clip_norm > 0 else None,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY_NAMES))
    optimizer.build(model.trainable_variables)
    return optimizer


def last_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's latest update (call after at least one step).

    With a schedule, tf_keras' `optimizer.learning_rate` is the value it computed for the latest
    `apply_gradients`, i.e. the schedule at step `iterations - 1`.
    """
    return float(keras.backend.get_value(optimizer.learning_rate))
