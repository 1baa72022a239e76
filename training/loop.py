"""The two training phases (float, then QAT) of a resolved TrainConfig, resumable.

`training/train.py` turns flags into a `config.TrainConfig` and calls `train`; everything here
takes that config. Each phase restores its latest checkpoint in WORKDIR/checkpoints/<phase>/,
runs the remaining optimizer steps with `model.fit` and exports the result to
WORKDIR/export/<phase>/ (see training/workdir.py for the whole layout).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras
from absl import logging

import kvid
from kvid.data import dataset, pipeline
from kvid_training import callbacks, config, distribute, optimization, workdir

# The range variables of a kvid layer's internal requantization point (kvid.layers.base).
_RANGE_VARIABLE = re.compile(r"(^|/)fq_\w+_(min|max|initialized):0$")


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


def _checkpoint_step(path: str) -> int:
    """The optimizer step of a phase checkpoint (they are numbered by it: `ckpt-<step>`)."""
    return int(path.rsplit("-", 1)[1])


def _unreadable(path: str) -> str | None:
    """Why the checkpoint at `path` cannot be read, or None when every tensor of it reads.

    Only files are read (no variable is touched), so every worker of a multi-worker run can
    check its own checkpoints before they agree on which one to restore together.
    """
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_dtype_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError) as error:
        return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    return None


def _restore(checkpoint: tf.train.Checkpoint, path: str, model: keras.Model) -> None:
    """Restores every object of `checkpoint` from `path`.

    The only objects a checkpoint may lack are activation ranges of requantization points that
    a newer kvid added to a layer (e.g. the symmetric operands of the Mobile-Former bridge): they
    stay uninitialised, so the next QAT training step sets them from its batch, and one warning
    names them. Anything else missing is an error.
    """
    status = checkpoint.restore(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        restore_uid = status._checkpoint.restore_uid  # what the assertion itself compares
        missing = [v.name for v in model.variables if v._update_uid < restore_uid]
        if not missing or not all(_RANGE_VARIABLE.search(name) for name in missing):
            raise
        logging.warning(
            "%s holds no value for %d activation range variables (%s): they are set by the next "
            "QAT training step",
            path,
            len(missing),
            ", ".join(missing),
        )


def phase_checkpoint(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    directory: str,
    agree: Callable[[int], int] | None = None,
) -> tuple[tf.train.Checkpoint, tf.train.CheckpointManager, tf.Variable]:
    """A phase's checkpoint (model, optimizer with its step counter, completed epochs), restored
    from the newest readable one in `directory` if there is one.

    A checkpoint that cannot be read (truncated or corrupt files, e.g. a disk that filled up or a
    copy cut short) is skipped with a warning naming it, and the one before it is restored; the
    checkpoint state file then forgets the newer ones, so the manager continues from there.

    Args:
      model: the phase's model.
      optimizer: its optimizer, built.
      directory: the phase's checkpoint folder.
      agree: for multi-worker runs, maps this worker's newest readable step (0: none) to the step
        all workers restore (the oldest of theirs: a kill can land between two workers' saves of
        the same step). 0 starts the phase from scratch.

    Returns:
      (checkpoint, manager, epoch variable); `manager.latest_checkpoint` is the restored one, or
      None when the phase starts from scratch.

    Raises:
      ValueError: no checkpoint can be read, or none of the agreed step.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    candidates = list(reversed(manager.checkpoints))
    # A state file without timestamps (written by hand or by other tools) lists no checkpoints
    # for the manager; its latest one still counts.
    if manager.latest_checkpoint and manager.latest_checkpoint not in candidates:
        candidates.insert(0, manager.latest_checkpoint)
    readable = []
    for path in candidates:
        if _readable_or_warn(path):
            readable.append(path)
            if agree is None:  # only the newest readable one is needed
                break
    if candidates and not readable and agree is None:
        raise ValueError(
            f"{directory}: none of the checkpoints {', '.join(candidates)} can be read; "
            "delete the folder to start the phase again"
        )
    chosen = readable[0] if readable else None
    if agree is not None:
        own = _checkpoint_step(chosen) if chosen else 0
        step = agree(own)
        if step != own:
            logging.warning("the workers resume from step %d (this one had step %d)", step, own)
            chosen = next((p for p in readable if _checkpoint_step(p) == step), None)
            if step and chosen is None:
                raise ValueError(
                    f"{directory}: the workers resume from step {step} of this phase, and this "
                    "worker has no readable checkpoint of it; delete every worker's checkpoints "
                    "of this phase to start it again"
                )
    if chosen is None:
        return checkpoint, manager, epoch
    _restore(checkpoint, chosen, model)
    if chosen != manager.latest_checkpoint:
        # The state file forgets the newer checkpoints, so the manager (recreated from it)
        # continues from the restored one and its next saves replace them.
        state = tf.train.get_checkpoint_state(directory)
        kept = [
            (path, stamp)
            for path, stamp in zip(
                state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps
            )
            if _checkpoint_step(path) <= _checkpoint_step(chosen)
        ]
        tf.compat.v1.train.update_checkpoint_state(
            directory,
            model_checkpoint_path=chosen,
            all_model_checkpoint_paths=[path for path, _ in kept],
            all_model_checkpoint_timestamps=[stamp for _, stamp in kept],
            last_preserved_timestamp=state.last_preserved_timestamp,
        )
        manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    return checkpoint, manager, epoch


def _readable_or_warn(path: str) -> bool:
    """Whether a checkpoint reads; if not, a warning names it and why."""
    reason = _unreadable(path)
    if reason is not None:
        logging.warning("checkpoint %s cannot be read (%s); trying the one before it", path, reason)
    return reason is None


def run_phase(
    cfg: config.TrainConfig,
    phase: str,
    model: keras.Model,
    *,
    total_steps: int,
    learning_rate: float,
    warmup_steps: int,
    eval_data: tf.data.Dataset,
    strategy: tf.distribute.Strategy,
) -> None:
    """Trains `model` for the phase's remaining steps, resuming from its latest checkpoint.

    The checkpoint (model, optimizer with its step counter, completed epochs) lives in
    WORKDIR/checkpoints/<phase>/ and is numbered by the optimizer step. A restored step
    counter also restores the learning rate schedule's position; `config.plan_fit_calls` splits
    the rest into `fit` calls so the phase ends after exactly `total_steps` optimizer steps.

    The phase's training clips are one stream that depends only on the seed, and a resumed phase
    skips the clips of the steps already taken, so a run killed mid-epoch continues with the
    batch it would have trained on next (in `--deterministic` mode, the very same batches).

    `model` must have been created under `strategy.scope()`; the optimizer and the checkpoint
    are created here under it too. Only the chief logs metrics; every worker validates and saves
    checkpoints (into its own `cfg.workdir`).
    """
    chief = distribute.is_chief(strategy)
    with strategy.scope():
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
        agree = None
        if distribute.num_workers(strategy) > 1:

            def agree(step: int) -> int:
                return min(distribute.gather_from_workers(strategy, step))

        _, manager, epoch = phase_checkpoint(
            model, optimizer, workdir.path(cfg.workdir, "checkpoints", phase), agree
        )
    if int(optimizer.iterations.numpy()):
        logging.info(
            "%s: resumed from %s (step %d, epoch %d)",
            phase,
            manager.latest_checkpoint,
            int(optimizer.iterations.numpy()),
            int(epoch.numpy()),
        )
    start_step = int(optimizer.iterations.numpy())
    metrics_path = workdir.path(cfg.workdir, "metrics.jsonl")
    if chief:
        callbacks.truncate_metrics(metrics_path, phase, start_step)
    if start_step >= total_steps:
        logging.info("%s: all %d steps done.", phase, total_steps)
        return

    # Every worker validates: under a multi-worker strategy, reading batch norm's moving
    # statistics outside a replica is a collective op that all workers must run together. Only
    # the chief logs the result.
    phase_callbacks: list[keras.callbacks.Callback] = [
        callbacks.MultiViewValidation(eval_data, cfg.label_smoothing)
    ]
    if chief:
        phase_callbacks.append(
            callbacks.MetricsLogger(
                metrics_path, phase, workdir.path(cfg.workdir, "tensorboard", phase)
            )
        )
    phase_callbacks.append(
        callbacks.CheckpointSaver(manager, epoch, cfg.steps_per_epoch, cfg.checkpoint_every_steps)
    )
    logging.info(
        "%s: steps %d -> %d (%d per epoch), peak learning rate %g",
        phase,
        start_step,
        total_steps,
        cfg.steps_per_epoch,
        learning_rate,
    )

    step = start_step
    for initial_epoch, epochs, steps in config.plan_fit_calls(
        start_step, total_steps, cfg.steps_per_epoch
    ):
        model.fit(
            training_data(cfg, strategy, step),
            initial_epoch=initial_epoch,
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=phase_callbacks,
            verbose=cfg.verbose if chief else 0,
        )
        step += (epochs - initial_epoch) * steps


def training_data(cfg: config.TrainConfig, strategy: tf.distribute.Strategy, step: int):
    """The training stream from optimizer step `step` on, for `fit` under `strategy`.

    On one device, the pipeline's dataset. On several replicas, a `DatasetCreator`: each input
    pipeline (one per worker) builds its own shard of the stream, batched per replica, and the
    replicas together take one global batch per step (`--auto_shard`,
    `distribute.shard_by_file`).
    """
    one_hot = functools.partial(_one_hot_labels, num_classes=cfg.num_classes)
    base = input_config(cfg, training=True, seed=cfg.seed)
    if strategy.num_replicas_in_sync == 1:
        data = pipeline.train_dataset(base, split="train", skip_clips=step * cfg.batch_size)
        # One-hot labels: CategoricalCrossentropy applies the label smoothing.
        return data.map(one_hot)
    num_files = len(glob.glob(dataset.shard_pattern(cfg.data_dir, "train")))
    by_file = distribute.shard_by_file(
        cfg.auto_shard, num_files, distribute.num_workers(strategy), "train"
    )

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines = context.num_input_pipelines
        # Sharded by clip, the pipelines must walk the whole stream in the same order.
        config_ = dataclasses.replace(
            base,
            batch_size=context.get_per_replica_batch_size(cfg.batch_size),
            deterministic=cfg.deterministic or (pipelines > 1 and not by_file),
        )
        # Clips of this pipeline's stream per step: sharded by file, its share of the global
        # batch; sharded by clip, the skip counts clips of the whole stream.
        per_step = cfg.batch_size // pipelines if by_file else cfg.batch_size
        data = pipeline.train_dataset(
            config_,
            split="train",
            skip_clips=step * per_step,
            num_shards=pipelines,
            shard_index=context.input_pipeline_id,
            shard_files=by_file,
        )
        return data.map(one_hot)

    return keras.utils.experimental.DatasetCreator(dataset_fn)


def export_phase(cfg: config.TrainConfig, phase: str, model: keras.Model) -> None:
    """Writes export/<phase>/ (SavedModel) and export/<phase>.weights.h5."""
    height, width = cfg.image_size
    os.makedirs(workdir.path(cfg.workdir, "export"), exist_ok=True)
    workdir.save_weights(model, workdir.path(cfg.workdir, "export", f"{phase}.weights.h5"))
    workdir.export_saved_model(
        model, workdir.path(cfg.workdir, "export", phase), [cfg.num_frames, height, width, 3]
    )
    logging.info("%s: exported %s", phase, workdir.path(cfg.workdir, "export", phase))


def _float32_output(model: keras.Model) -> keras.Model:
    """A mixed-precision classifier with its logits cast to float32 for the loss."""
    logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(model.output)
    return keras.Model(model.input, logits, name=model.name)


def train(
    cfg: config.TrainConfig,
    float_model: keras.Model,
    *,
    strategy: tf.distribute.Strategy | None = None,
    build_float32: Callable[[], keras.Model] | None = None,
) -> None:
    """Float phase, its export, QAT phase, its export, the training curve. Resumable.

    Args:
      cfg: the run's config.
      float_model: the freshly built float classifier (`build_model`), seeded, created under
        `strategy.scope()` and, with `cfg.mixed_precision`, under that dtype policy.
      strategy: the distribution strategy (default: the default strategy).
      build_float32: with `cfg.mixed_precision`, builds the same classifier in float32 (called
        under the float32 policy): the float weights are copied into it for the float export
        and for QAT, which always run in float32.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    eval_data = pipeline.eval_dataset(input_config(cfg, training=False, seed=cfg.seed), split="val")
    mixed = cfg.mixed_precision != "float32"
    with strategy.scope():
        training_model = _float32_output(float_model) if mixed else float_model
        if cfg.sync_batch_norm:
            distribute.synchronize_batch_norm(training_model)
    run_phase(
        cfg,
        "float",
        training_model,
        total_steps=cfg.float_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        eval_data=eval_data,
        strategy=strategy,
    )
    if mixed:
        if build_float32 is None:
            raise ValueError("train: cfg.mixed_precision needs build_float32")
        keras.mixed_precision.set_global_policy("float32")
        with strategy.scope():
            float32_model = build_float32()
            float32_model.set_weights(float_model.get_weights())
        float_model = float32_model
    if not workdir.export_complete(cfg.workdir, "float"):
        export_phase(cfg, "float", float_model)

    if cfg.qat_steps > 0:
        # QAT starts from the final float weights (restored above when the float phase was
        # finished by an earlier run); a QAT checkpoint, if any, then overrides them.
        with strategy.scope():
            qat_model = kvid.quantization.quantize_model(float_model)
            if cfg.sync_batch_norm:
                distribute.synchronize_batch_norm(qat_model)
        run_phase(
            cfg,
            "qat",
            qat_model,
            total_steps=cfg.qat_steps,
            learning_rate=cfg.qat_learning_rate,
            warmup_steps=0,
            eval_data=eval_data,
            strategy=strategy,
        )
        if not workdir.export_complete(cfg.workdir, "qat"):
            export_phase(cfg, "qat", qat_model)

    if not chief:
        return
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
