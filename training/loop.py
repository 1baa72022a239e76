"""The two training phases (float, then QAT) of a resolved TrainConfig, resumable.

`training/train.py` turns flags into a `config.TrainConfig` and calls `train`; everything here
takes that config. Each phase restores its latest checkpoint in WORKDIR/checkpoints/<phase>/,
runs the remaining optimizer steps with `model.fit` and exports the result to
WORKDIR/export/<phase>/ (see training/workdir.py for the whole layout).
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf
import tf_keras as keras
from absl import logging

import kvid
from kvid.data import pipeline
from kvid_training import callbacks, config, optimization, workdir


def input_config(cfg: config.TrainConfig, *, training: bool, seed: int) -> pipeline.InputConfig:
    """The pipeline's InputConfig: train sampling and augmentation, or eval views."""
    return pipeline.InputConfig(
        data_dir=cfg.data_dir,
        num_frames=cfg.num_frames,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size if training else cfg.eval_batch_size,
        frame_stride=cfg.frame_stride,
        stride_jitter=cfg.stride_jitter if training else 0,
        num_clips=1 if training else cfg.eval_num_clips,
        num_crops=1 if training else cfg.eval_num_crops,
        min_crop_area=cfg.min_crop_area,
        flip=cfg.flip and training,
        deterministic=cfg.deterministic,
        seed=seed,
    )


@tf.autograph.experimental.do_not_convert  # plain TF ops: nothing for AutoGraph to rewrite
def _one_hot_labels(video: tf.Tensor, label: tf.Tensor, num_classes: int):
    return video, tf.one_hot(label, num_classes)


def phase_checkpoint(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, directory: str
) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager, tf.Variable]:
    """A phase's checkpoint (model, optimizer with its step counter, completed epochs), restored
    from the latest one in `directory` if there is one.

    Returns:
      (checkpoint, manager, epoch variable).
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return checkpoint, manager, epoch


def run_phase(
    cfg: config.TrainConfig,
    phase: str,
    model: keras.Model,
    *,
    total_steps: int,
    learning_rate: float,
    warmup_steps: int,
    eval_data: tf.data.Dataset,
) -> None:
    """Trains `model` for the phase's remaining steps, resuming from its latest checkpoint.

    The checkpoint (model, optimizer with its step counter, completed epochs) lives in
    WORKDIR/checkpoints/<phase>/ and is numbered by the optimizer step. A restored step
    counter also restores the learning rate schedule's position; `config.plan_fit_calls` splits
    the rest into `fit` calls so the phase ends after exactly `total_steps` optimizer steps.
    """
    optimizer = optimization.create_optimizer(
        model,
        learning_rate=learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip_norm=cfg.grad_clip_norm,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=cfg.label_smoothing
        ),
        metrics=["accuracy"],
    )
    _, manager, epoch = phase_checkpoint(
        model, optimizer, workdir.path(cfg.workdir, "checkpoints", phase)
    )
    if manager.latest_checkpoint:
        logging.info(
            "%s: resumed from %s (step %d, epoch %d)",
            phase,
            manager.latest_checkpoint,
            int(optimizer.iterations),
            int(epoch),
        )
    start_step = int(optimizer.iterations)
    metrics_path = workdir.path(cfg.workdir, "metrics.jsonl")
    callbacks.truncate_metrics(metrics_path, phase, start_step)
    if start_step >= total_steps:
        logging.info("%s: all %d steps done.", phase, total_steps)
        return

    phase_callbacks = [
        callbacks.MultiViewValidation(eval_data, cfg.label_smoothing),
        callbacks.MetricsLogger(
            metrics_path, phase, workdir.path(cfg.workdir, "tensorboard", phase)
        ),
        callbacks.CheckpointSaver(manager, epoch, cfg.steps_per_epoch, cfg.checkpoint_every_steps),
    ]
    logging.info(
        "%s: steps %d -> %d (%d per epoch), peak learning rate %g",
        phase,
        start_step,
        total_steps,
        cfg.steps_per_epoch,
        learning_rate,
    )

    for initial_epoch, epochs, steps in config.plan_fit_calls(
        start_step, total_steps, cfg.steps_per_epoch
    ):
        # A new seed per call: a resumed run does not replay the clips of the first epochs.
        train_data = pipeline.train_dataset(
            input_config(cfg, training=True, seed=cfg.seed + initial_epoch), split="train"
        )
        # One-hot labels: CategoricalCrossentropy applies the label smoothing.
        train_data = train_data.map(functools.partial(_one_hot_labels, num_classes=cfg.num_classes))
        model.fit(
            train_data,
            initial_epoch=initial_epoch,
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=phase_callbacks,
            verbose=cfg.verbose,
        )


def export_phase(cfg: config.TrainConfig, phase: str, model: keras.Model) -> None:
    """Writes export/<phase>/ (SavedModel) and export/<phase>.weights.h5."""
    height, width = cfg.image_size
    os.makedirs(workdir.path(cfg.workdir, "export"), exist_ok=True)
    workdir.save_weights(model, workdir.path(cfg.workdir, "export", f"{phase}.weights.h5"))
    workdir.export_saved_model(
        model, workdir.path(cfg.workdir, "export", phase), [cfg.num_frames, height, width, 3]
    )
    logging.info("%s: exported %s", phase, workdir.path(cfg.workdir, "export", phase))


def train(cfg: config.TrainConfig, float_model: keras.Model) -> None:
    """Float phase, its export, QAT phase, its export, the training curve. Resumable.

    Args:
      cfg: the run's config.
      float_model: the freshly built float classifier (`build_model`), seeded.
    """
    eval_data = pipeline.eval_dataset(input_config(cfg, training=False, seed=cfg.seed), split="val")
    run_phase(
        cfg,
        "float",
        float_model,
        total_steps=cfg.float_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        eval_data=eval_data,
    )
    if not workdir.export_complete(cfg.workdir, "float"):
        export_phase(cfg, "float", float_model)

    if cfg.qat_steps > 0:
        # QAT starts from the final float weights (restored above when the float phase was
        # finished by an earlier run); a QAT checkpoint, if any, then overrides them.
        qat_model = kvid.quantization.quantize_model(float_model)
        run_phase(
            cfg,
            "qat",
            qat_model,
            total_steps=cfg.qat_steps,
            learning_rate=cfg.qat_learning_rate,
            warmup_steps=0,
            eval_data=eval_data,
        )
        if not workdir.export_complete(cfg.workdir, "qat"):
            export_phase(cfg, "qat", qat_model)

    records = callbacks.read_metrics(workdir.path(cfg.workdir, "metrics.jsonl"))
    workdir.plot_training_curve(records, workdir.path(cfg.workdir, "training_curve.png"))
    for phase in ("float", "qat"):
        last = [r for r in records if r["phase"] == phase]
        if last:
            logging.info(
                "%s: final step %d, val_accuracy %.4f",
                phase,
                last[-1]["step"],
                last[-1].get("val_accuracy", float("nan")),
            )
