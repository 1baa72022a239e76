r"""Trains a kvid video classifier: float training, then quantization-aware training (QAT).

Run from the repository root; a bare flagfile name resolves to training/flags/:

  python training/train.py --flagfile=vmf.flags
  python training/train.py --preset=vmf_tiny --workdir=/tmp/run --epochs=12 --qat_epochs=2

Fine-tuning starts the float phase from another workdir's weights (trained, or ported from a
reference checkpoint by kvid-port), with a new classification head when the classes differ:

  python training/train.py --init_from=runs/vmf_tiny --data_dir=data/mine --workdir=/tmp/ft

Without --data_dir the embedded default dataset is generated into data/default on first use.
Re-running the same command resumes from the latest checkpoint in --workdir (a finished float
phase goes straight to QAT). Everything the run produces is in --workdir; see
training/workdir.py for the layout that kvid-convert and kvid-eval read.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from absl import app, flags, logging

import kvid
import kvid.cli

# Sibling modules come from the installed package (never relative imports: this file also runs as
# a script, where it has no parent package). TensorFlow and the modules that load it are imported
# where they are needed, after the flags are checked: a bad flag fails at once, and the native
# logs are silenced before TensorFlow loads (kvid.cli).
from kvid.data import dataset
from kvid_training import config

if TYPE_CHECKING:
    import tf_keras as keras

    from kvid.data.workdir import Workdir

FLAGS = flags.FLAGS

# The folder where bare `--flagfile=NAME` arguments are looked up when NAME is not found relative
# to the working directory.
FLAGFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flags")
DEFAULT_DATA_DIR = "data/default"
# Durations when neither the epochs nor the steps flag of a phase is given.
DEFAULT_EPOCHS = 10.0
DEFAULT_QAT_EPOCHS = 2.0
# How long a non-chief worker waits for the chief to generate the default dataset.
DATASET_WAIT_SECONDS = 1800


def define_flags(flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Defines the training flags on `flag_values` and returns their names.

    Called by `run()` only: importing this module never touches the global FLAGS (another CLI
    with a `--workdir` flag may share the process, e.g. in tests), and tests parse flags into a
    fresh `flags.FlagValues`.
    """
    before = set(flag_values)
    fv = {"flag_values": flag_values}
    # Model.
    flags.DEFINE_string("preset", "vmf_tiny", "kvid preset (kvid.models.list_presets()).", **fv)
    flags.DEFINE_float("dropout_rate", None, "Head dropout; default: the preset's.", **fv)
    flags.DEFINE_multi_string(
        "model_overrides",
        [],
        "Preset field override key=value (repeat the flag), given to "
        "kvid.models.create; values are Python literals, e.g. drop_path_rate=0.1.",
        **fv,
    )
    flags.DEFINE_string(
        "init_from",
        None,
        "Workdir (trained, or ported by kvid-port) whose float weights start the float phase; "
        "the model is its architecture at this run's classes and input size (--model_overrides "
        "add to it). A resumed run keeps its checkpoint.",
        **fv,
    )
    # Data.
    flags.DEFINE_string("workdir", None, "Output folder of the run; re-running resumes it.", **fv)
    flags.DEFINE_string(
        "data_dir",
        DEFAULT_DATA_DIR,
        "Prepared dataset (dataset.json + TFRecords, see "
        f"kvid-prepare). The default, {DEFAULT_DATA_DIR}, is generated when missing.",
        **fv,
    )
    flags.DEFINE_float(
        "dataset_scale", 1.0, "Size factor of the generated default dataset.", lower_bound=0.0, **fv
    )
    flags.DEFINE_integer("dataset_seed", 0, "Seed of the generated default dataset.", **fv)
    flags.DEFINE_integer(
        "num_frames", None, "Frames per clip; default: the preset's.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "image_size", None, "Square frame size; default: the preset's.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "frame_stride", 1, "Temporal stride between sampled frames.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "stride_jitter", 0, "Random +- stride change in training.", lower_bound=0, **fv
    )
    flags.DEFINE_float(
        "min_crop_area",
        0.35,
        "Smallest area of the random resized crop.",
        lower_bound=0.01,
        upper_bound=1.0,
        **fv,
    )
    flags.DEFINE_bool("flip", False, "Random horizontal flips (flip pairs swap labels).", **fv)
    flags.DEFINE_integer("batch_size", 8, "Training batch size.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "eval_batch_size", None, "Validation batch size; default: batch_size.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "eval_num_clips", 1, "Validation clips per video (averaged).", lower_bound=1, **fv
    )
    flags.DEFINE_integer("eval_num_crops", 1, "Validation crops per clip: 1 (centre) or 3.", **fv)
    flags.register_validator(
        "eval_num_crops",
        lambda value: value in (1, 3),
        message="must be 1 (centre crop) or 3",
        flag_values=flag_values,
    )
    # Durations: epochs or steps, resolved by config.resolve_steps.
    flags.DEFINE_float(
        "epochs",
        None,
        f"Float training epochs (default {DEFAULT_EPOCHS:g}); exclusive with --steps.",
        **fv,
    )
    flags.DEFINE_integer("steps", None, "Float training steps; exclusive with --epochs.", **fv)
    flags.DEFINE_float(
        "qat_epochs",
        None,
        f"QAT epochs (default {DEFAULT_QAT_EPOCHS:g}, 0 skips QAT); exclusive with --qat_steps.",
        **fv,
    )
    flags.DEFINE_integer("qat_steps", None, "QAT steps; exclusive with --qat_epochs.", **fv)
    flags.DEFINE_float(
        "warmup_epochs",
        None,
        "Linear warm-up of the float phase (default: 1 "
        "epoch or a tenth of the training, the shorter).",
        **fv,
    )
    flags.DEFINE_integer(
        "warmup_steps", None, "Warm-up in steps; exclusive with --warmup_epochs.", **fv
    )
    # Optimisation.
    flags.DEFINE_float(
        "learning_rate", 1e-3, "Peak AdamW learning rate (float phase).", lower_bound=0.0, **fv
    )
    flags.DEFINE_float(
        "qat_learning_rate", 1e-4, "Peak AdamW learning rate (QAT, cosine).", lower_bound=0.0, **fv
    )
    flags.DEFINE_float(
        "weight_decay",
        0.05,
        "Decoupled weight decay (not on norms, biases, tokens).",
        lower_bound=0.0,
        **fv,
    )
    flags.DEFINE_float(
        "label_smoothing", 0.1, "Label smoothing.", lower_bound=0.0, upper_bound=0.99, **fv
    )
    flags.DEFINE_float(
        "grad_clip_norm", 1.0, "Global gradient norm clip (0: none).", lower_bound=0.0, **fv
    )
    # Run.
    flags.DEFINE_integer("seed", 0, "Seed of weights, dropout and data order.", **fv)
    flags.DEFINE_bool("deterministic", False, "Deterministic data order and TF ops (slower).", **fv)
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        0,
        "Also checkpoint every N steps (0: only at epoch ends).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "verbose",
        1,
        "Keras fit output: 0 silent, 1 progress bar, 2 a line per epoch.",
        lower_bound=0,
        upper_bound=2,
        **fv,
    )
    # Distribution (training/distribute.py).
    flags.DEFINE_enum(
        "strategy",
        "default",
        ["default", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy: one device, all local GPUs, the workers of TF_CONFIG, or a TPU. "
        "--batch_size is the global batch.",
        **fv,
    )
    flags.DEFINE_string("tpu", None, "--strategy=tpu: TPU name or grpc:// address (local).", **fv)
    flags.DEFINE_integer(
        "num_cpu_devices",
        0,
        "Split the CPU into N logical devices (replicas of --strategy=mirrored without GPUs).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_bool(
        "sync_batch_norm", False, "Batch norm statistics over the global batch.", **fv
    )
    flags.DEFINE_enum(
        "auto_shard",
        "auto",
        ["auto", "file", "data"],
        "How workers split the training data: by file (each reads its own shard files), by "
        "element, or auto (file when every worker gets a file).",
        **fv,
    )
    flags.DEFINE_enum(
        "mixed_precision",
        "float32",
        ["float32", "mixed_float16", "mixed_bfloat16"],
        "Dtype policy of the float phase; QAT and the exports stay float32.",
        **fv,
    )
    flags.DEFINE_bool(
        "generate_dataset",
        False,
        "Generate the embedded default dataset into --data_dir when it holds none (always on "
        f"for {DEFAULT_DATA_DIR}).",
        **fv,
    )
    flags.mark_flag_as_required("workdir", flag_values=flag_values)
    return sorted(set(flag_values) - before)


def resolve_flagfile_args(argv: Sequence[str], flagfile_dir: str = FLAGFILE_DIR) -> list[str]:
    """Rewrites `--flagfile=NAME` to `flagfile_dir/NAME` when NAME is not found from the cwd.

    absl opens flagfiles relative to the working directory; the README's commands run from the
    repository root with bare names (`--flagfile=vmf.flags`) of files kept in training/flags/.
    """
    resolved = []
    for arg in argv:
        prefix, sep, name = arg.partition("=")
        if sep and prefix in ("--flagfile", "-flagfile") and not os.path.exists(name):
            candidate = os.path.join(flagfile_dir, name)
            if os.path.exists(candidate):
                arg = f"{prefix}={candidate}"
        resolved.append(arg)
    return resolved


def flag_lines(flag_values: flags.FlagValues, names: Sequence[str]) -> list[str]:
    """The set flags in flagfile form, one `--name=value` line each (unset ones skipped)."""
    lines = []
    for name in names:
        if flag_values[name].value not in (None, []):
            lines.extend(flag_values[name].serialize().splitlines())
    return lines


def _square(size: Any) -> tuple[int, int]:
    """(height, width) from a preset's image_size, an int or a pair."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def config_from_flags(
    flag_values: flags.FlagValues,
    *,
    preset_fields: Mapping[str, Any],
    dataset_info: Mapping[str, Any],
    preset: str | None = None,
    base_overrides: Mapping[str, Any] | None = None,
) -> config.TrainConfig:
    """Converts parsed flags into the frozen TrainConfig (the only FLAGS -> config step).

    Args:
      flag_values: parsed flags (defined by `define_flags`).
      preset_fields: `kvid.models.get_preset(preset)`, for the default input size (with
        --init_from, the source model's fields: its input size is the default).
      dataset_info: the dataset's dataset.json (classes, clips per split, stored clip size).
      preset: the model's preset (default: --preset); with --init_from, the source's.
      base_overrides: overrides under --model_overrides (with --init_from, the source's).

    Raises:
      ValueError: a flag value is impossible; the message starts with the flag's name.
    """
    fv = flag_values
    splits = dataset_info.get("splits", {})
    for split in ("train", "val"):
        if not splits.get(split):
            raise ValueError(
                f"--data_dir={fv.data_dir}: the dataset has no {split!r} split "
                f"(splits: {dict(splits)})"
            )
    num_train_examples = int(splits["train"])
    num_frames = fv.num_frames or int(preset_fields["num_frames"])
    preset_size = preset_fields["image_size"]
    if fv.image_size is None:
        image_size, size_override = _square(preset_size), preset_size
    else:
        image_size = (fv.image_size, fv.image_size)
        # Keep the preset's own type (int or pair) so the override reads like the preset table.
        size_override = fv.image_size if isinstance(preset_size, int) else image_size
    # Upsampling stored frames only costs compute without adding detail: almost surely a
    # preset meant for another dataset. (Clips shorter than the sampled span are allowed: the
    # pipeline repeats their last frame.)
    stored_size = dataset_info.get("frame_size")
    if stored_size and (image_size[0] > stored_size[0] or image_size[1] > stored_size[1]):
        flag = "--image_size" if fv.image_size is not None else f"--preset={preset or fv.preset}"
        raise ValueError(
            f"{flag}: input {image_size[0]}x{image_size[1]} is larger than the "
            f"stored frames ({stored_size[0]}x{stored_size[1]}) of --data_dir; "
            "use a smaller --image_size or prepare the videos at a larger size"
        )
    overrides = config.parse_model_overrides(fv.model_overrides)
    if fv.dropout_rate is not None:
        if "dropout_rate" in overrides:
            raise ValueError("--dropout_rate: also set in --model_overrides; give it once")
        overrides["dropout_rate"] = fv.dropout_rate
    base = {
        k: v for k, v in (base_overrides or {}).items() if k not in ("num_frames", "image_size")
    }
    overrides = {**base, **overrides}
    overrides.update(num_frames=num_frames, image_size=size_override)

    if fv.batch_size > num_train_examples:
        raise ValueError(
            f"--batch_size={fv.batch_size}: larger than the train split ({num_train_examples} "
            "clips), so an epoch would have no full batch"
        )
    steps_per_epoch = num_train_examples // fv.batch_size
    float_steps = config.resolve_steps(
        epochs=fv.epochs,
        steps=fv.steps,
        steps_per_epoch=steps_per_epoch,
        default_epochs=DEFAULT_EPOCHS,
        epochs_flag="epochs",
        steps_flag="steps",
    )
    if float_steps < 1:
        raise ValueError(
            f"--epochs={fv.epochs} / --steps={fv.steps}: the float phase needs at least one step"
        )
    qat_steps = config.resolve_steps(
        epochs=fv.qat_epochs,
        steps=fv.qat_steps,
        steps_per_epoch=steps_per_epoch,
        default_epochs=DEFAULT_QAT_EPOCHS,
        epochs_flag="qat_epochs",
        steps_flag="qat_steps",
    )
    warmup_steps = config.resolve_steps(
        epochs=fv.warmup_epochs,
        steps=fv.warmup_steps,
        steps_per_epoch=steps_per_epoch,
        default_epochs=min(1.0, float_steps / steps_per_epoch / 10),
        epochs_flag="warmup_epochs",
        steps_flag="warmup_steps",
    )
    if warmup_steps > float_steps:
        name = "warmup_steps" if fv.warmup_steps is not None else "warmup_epochs"
        raise ValueError(
            f"--{name}: {warmup_steps} warm-up steps exceed the {float_steps} "
            "steps of the float phase"
        )
    return config.TrainConfig(
        preset=preset or fv.preset,
        model_overrides=config.freeze_overrides(overrides),
        num_classes=len(dataset_info["classes"]),
        workdir=os.path.abspath(fv.workdir),
        data_dir=os.path.abspath(fv.data_dir),
        num_frames=num_frames,
        image_size=image_size,
        frame_stride=fv.frame_stride,
        stride_jitter=fv.stride_jitter,
        min_crop_area=fv.min_crop_area,
        flip=fv.flip,
        batch_size=fv.batch_size,
        eval_batch_size=fv.eval_batch_size or fv.batch_size,
        eval_num_clips=fv.eval_num_clips,
        eval_num_crops=fv.eval_num_crops,
        num_train_examples=num_train_examples,
        steps_per_epoch=steps_per_epoch,
        float_steps=float_steps,
        warmup_steps=warmup_steps,
        qat_steps=qat_steps,
        learning_rate=fv.learning_rate,
        qat_learning_rate=fv.qat_learning_rate,
        weight_decay=fv.weight_decay,
        label_smoothing=fv.label_smoothing,
        grad_clip_norm=fv.grad_clip_norm,
        seed=fv.seed,
        deterministic=fv.deterministic,
        checkpoint_every_steps=fv.checkpoint_every_steps,
        verbose=fv.verbose,
        mixed_precision=fv.mixed_precision,
        sync_batch_norm=fv.sync_batch_norm,
        auto_shard=fv.auto_shard,
        init_from=os.path.abspath(fv.init_from) if fv.init_from else None,
    )


def _preset_fields(name: str) -> dict[str, Any]:
    """The preset's fields; an unknown preset is a usage error listing the valid ones."""
    presets = kvid.models.list_presets()
    if name not in presets:
        raise app.UsageError(f"--preset={name}: unknown preset; valid: {', '.join(presets)}")
    fields = dict(kvid.models.get_preset(name))
    if fields.get("image_input"):
        videos = [p for p in presets if not kvid.models.get_preset(p).get("image_input")]
        raise app.UsageError(
            f"--preset={name}: an image preset (input (batch, height, width, "
            f"3)); train.py trains video presets: {', '.join(videos)}"
        )
    return fields


def _ensure_data_dir(
    data_dir: str,
    dataset_seed: int,
    dataset_scale: float,
    *,
    generate: bool = False,
    chief: bool = True,
) -> None:
    """Generates the default dataset on first use; any other data_dir must be prepared.

    The default folder gets the embedded default dataset: on the chief
    `synthetic.ensure_default_dataset` runs every time (it returns at once when the dataset there
    matches --dataset_seed / --dataset_scale, and regenerates it otherwise). With `generate`, any
    other folder that holds no dataset gets it too (one that holds one is used as it is). The
    other workers of a multi-worker run wait until the chief has written it instead of racing
    it.
    """
    from kvid_training import synthetic

    default = os.path.normpath(data_dir) == os.path.normpath(DEFAULT_DATA_DIR)
    if not default:
        if os.path.exists(os.path.join(data_dir, dataset.DATASET_INFO)):
            return
        if not generate:
            raise app.UsageError(
                f"--data_dir={data_dir}: no prepared dataset there ({dataset.DATASET_INFO} "
                f"missing); prepare videos with kvid-prepare, add --generate_dataset for the "
                f"embedded default dataset, or leave --data_dir at {DEFAULT_DATA_DIR}"
            )
    if not chief:
        deadline = time.time() + DATASET_WAIT_SECONDS
        while not synthetic.default_dataset_ready(data_dir, dataset_seed, dataset_scale):
            if time.time() > deadline:
                raise app.UsageError(
                    f"--data_dir={data_dir}: the chief has not written the default dataset "
                    f"after {DATASET_WAIT_SECONDS} s; is the chief running with the same "
                    "--data_dir on a filesystem this worker shares?"
                )
            time.sleep(1.0)
        return
    if not os.path.exists(os.path.join(data_dir, dataset.DATASET_INFO)):
        logging.info("Generating the default dataset in %s (first run only).", data_dir)
    try:
        synthetic.ensure_default_dataset(data_dir, seed=dataset_seed, scale=dataset_scale)
    except ValueError as error:  # another dataset sits in the folder
        raise app.UsageError(f"--data_dir={data_dir}: {error}") from error


def _init_source(init_from: str, preset_flag: flags.Flag) -> tuple[Workdir, dict[str, Any]]:
    """The --init_from workdir and its model's fields (input size and normalisation).

    Only model.json is read here; the weights are read when the float phase starts from them.
    """
    from kvid.data.workdir import WorkdirError, load_workdir
    from kvid.models import transfer

    try:
        source = load_workdir(init_from)
        preset, overrides = transfer.workdir_architecture(source)
        fields = kvid.models.get_preset(preset, **overrides)
    except (WorkdirError, ValueError) as error:
        raise app.UsageError(f"--init_from={init_from}: {error}") from error
    if fields.get("image_input"):
        raise app.UsageError(
            f"--init_from={init_from}: an image model ({preset}); train.py trains video models"
        )
    if preset_flag.present and preset_flag.value != preset:
        raise app.UsageError(
            f"--preset={preset_flag.value}: --init_from={init_from} holds a {preset} model, "
            "which the run trains; leave --preset out"
        )
    return source, fields


def build_model(
    cfg: config.TrainConfig, blame: Mapping[str, Sequence[str]] | None = None
) -> keras.Model:
    """The float classifier; a rejected size or override is a usage error naming its flag.

    Args:
      cfg: the run's config.
      blame: {flag: preset fields it sets} for the flags given on the command line; the error
        names the flag whose field the preset's message mentions first (the message may go on
        to list every valid field), or all of them when it mentions none.
    """
    try:
        return kvid.models.create(cfg.preset, num_classes=cfg.num_classes, **cfg.model_kwargs)
    except ValueError as error:
        message = " ".join(str(error).split())
        blame = blame or {}
        mentions = sorted(
            (message.find(field), flag)
            for flag, fields in blame.items()
            for field in fields
            if field in message
        )
        names = [mentions[0][1]] if mentions else list(blame) or [f"--preset={cfg.preset}"]
        raise app.UsageError(
            f"{' / '.join(names)}: {cfg.preset} rejects this input or override: {message}"
        ) from error


def _source_architecture(source: Workdir | None) -> dict[str, Any]:
    """`config_from_flags`' preset and base overrides for an --init_from workdir (none without).

    A ported workdir's reference configuration becomes its family's closest preset plus the
    fields that differ (`kvid.models.transfer.workdir_architecture`): the fine-tuned model is an
    ordinary kvid model, which model.json rebuilds at any input size.
    """
    if source is None:
        return {}
    from kvid.models import transfer

    preset, overrides = transfer.workdir_architecture(source)
    return {"preset": preset, "base_overrides": overrides}


def _label_map_path(workdir: Workdir) -> str:
    """The file a workdir's labels are read from: label_map.json, else model.json."""
    from kvid.data.workdir import LABEL_MAP_JSON

    label_path = os.path.join(workdir.path, LABEL_MAP_JSON)
    return label_path if os.path.isfile(label_path) else os.path.join(workdir.path, "model.json")


def initialize_from(
    cfg: config.TrainConfig,
    model: keras.Model,
    source: Workdir,
    classes: Sequence[str],
    dataset_json: str,
) -> bool:
    """Copies the --init_from workdir's float weights into `model`, unless the run resumes.

    The head is kept when the two label maps are equal (same names, same order), else it stays
    newly initialised; every other weight is copied by its path, input-size tables resized
    (`kvid.models.transfer`). Each decision is logged in one line.

    Returns:
      Whether the weights were copied (False: the run resumes from its own checkpoints).

    Raises:
      UsageError: the weights file is missing or does not fit, or a weight cannot be mapped.
    """
    import tensorflow as tf

    from kvid.data.workdir import read_labels
    from kvid.models import transfer
    from kvid_training import workdir

    flag = f"--init_from={cfg.init_from}"
    for phase in ("float", "qat"):
        checkpoints = workdir.path(cfg.workdir, "checkpoints", phase)
        if tf.train.get_checkpoint_state(checkpoints) is not None:
            logging.info(
                "%s is ignored: the run resumes from its checkpoints in %s", flag, checkpoints
            )
            return False
    weights = os.path.join(source.export_dir, "float.weights.h5")
    if not os.path.isfile(weights):
        raise app.UsageError(
            f"{flag}: missing {weights} (the float weights training/train.py and kvid-port export)"
        )
    try:
        source_model = transfer.build_workdir_model(source)
        source_model.load_weights(weights)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())[:300]
        raise app.UsageError(
            f"{flag}: {weights} does not load into the model of {source.path}/model.json: {message}"
        ) from error
    label_path = _label_map_path(source)
    try:
        source_labels = (
            list(source.labels) if label_path.endswith("model.json") else read_labels(label_path)
        )
    except ValueError as error:
        raise app.UsageError(f"{flag}: {error}") from error
    same = [str(c) for c in source_labels] == [str(c) for c in classes]
    try:
        report = transfer.transfer_weights(source_model, model, keep_head=same)
    except transfer.TransferError as error:
        raise app.UsageError(f"{flag}: {error}") from error
    if report.head is not None:
        if same:
            logging.info(
                "%s: classification head %s kept: the label map of %s equals the classes of %s",
                flag,
                report.head,
                label_path,
                dataset_json,
            )
        else:
            logging.info(
                "%s: new classification head %s: the label map of %s differs from the classes "
                "of %s (%s)",
                flag,
                report.head,
                label_path,
                dataset_json,
                workdir.label_difference(source_labels, classes),
            )
    logging.info("%s: %s", flag, report.summary())
    return True


def _blamed_fields(flag_values: flags.FlagValues) -> dict[str, list[str]]:
    """The model flags given on the command line and the preset fields each one sets."""
    blame = {}
    for name in ("image_size", "num_frames", "dropout_rate"):
        if flag_values[name].present:
            blame[f"--{name}"] = [name]
    if flag_values.model_overrides:
        blame["--model_overrides"] = list(config.parse_model_overrides(flag_values.model_overrides))
    return blame


def main(argv: Sequence[str], flag_names: Sequence[str]) -> None:
    """Flags -> config -> data -> training; a bad flag or dataset raises a UsageError naming it.

    Args:
      argv: positional arguments left by absl (only the program name is expected).
      flag_names: the training flags (`define_flags`), written to flags.txt.
    """
    import tensorflow as tf
    import tf_keras as keras

    from kvid_training import distribute, loop, workdir

    started = time.time()
    if FLAGS.num_cpu_devices:
        distribute.split_cpu(FLAGS.num_cpu_devices)  # before TensorFlow creates its devices
    try:
        strategy = distribute.create_strategy(FLAGS.strategy, FLAGS.tpu)
    except distribute.StrategyError as error:
        raise app.UsageError(str(error)) from error
    chief = distribute.is_chief(strategy)
    # The chief writes into --workdir; the other workers into a temporary folder of their own.
    out_dir = distribute.output_dir(os.path.abspath(FLAGS.workdir), strategy)
    lines = flag_lines(FLAGS, flag_names)
    flags_path = workdir.path(out_dir, "flags.txt")
    try:
        workdir.check_same_run(flags_path, lines)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    source = None
    if FLAGS.init_from:
        source, preset_fields = _init_source(FLAGS.init_from, FLAGS["preset"])
    else:
        preset_fields = _preset_fields(FLAGS.preset)
    _ensure_data_dir(
        FLAGS.data_dir,
        FLAGS.dataset_seed,
        FLAGS.dataset_scale,
        generate=FLAGS.generate_dataset,
        chief=chief,
    )
    info = dataset.read_dataset_info(FLAGS.data_dir)
    dataset_json = os.path.join(os.path.abspath(FLAGS.data_dir), dataset.DATASET_INFO)
    try:
        # A resumed run trains on the classes its checkpoints know, in the same order.
        workdir.check_label_map(out_dir, info["classes"], dataset_json)
        cfg = config_from_flags(
            FLAGS,
            preset_fields=preset_fields,
            dataset_info=info,
            **_source_architecture(source),
        )
        distribute.check_global_batch(cfg.batch_size, strategy, "--batch_size")
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    cfg = dataclasses.replace(cfg, workdir=out_dir)
    logging.info(
        "%s strategy: %d replica(s), %d clips per replica per step%s",
        FLAGS.strategy,
        strategy.num_replicas_in_sync,
        cfg.batch_size // strategy.num_replicas_in_sync,
        "" if chief else f"; this worker writes to {out_dir}",
    )
    # Seeded before the model is built, so its initial weights follow --seed.
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    # Built before anything is written: a rejected size must not leave a workdir behind
    # whose flags.txt would block the corrected command.
    blame = _blamed_fields(FLAGS)
    with strategy.scope():
        float_model = build_model(cfg, blame)
    if source is not None:
        initialize_from(cfg, float_model, source, info["classes"], dataset_json)
    os.makedirs(cfg.workdir, exist_ok=True)
    workdir.write_text(
        flags_path,
        workdir.format_flagfile(
            lines,
            "Resolved flags of this run, written by training/train.py.\n"
            f"Replay: python training/train.py --flagfile={flags_path}",
        ),
    )
    workdir.write_run_files(cfg, preset_fields, info)
    loop.train(cfg, float_model, strategy=strategy, build_float32=lambda: build_model(cfg, blame))
    distribute.remove_worker_dir(os.path.abspath(FLAGS.workdir), strategy)
    logging.info("Done in %.1f min; outputs in %s", (time.time() - started) / 60, FLAGS.workdir)


def run(argv: Sequence[str] | None = None) -> None:
    """Console script `kvid-train` (and `python training/train.py`)."""
    argv = list(sys.argv if argv is None else argv)
    names: list[str] = []

    def define(flag_values: flags.FlagValues) -> list[str]:
        names.extend(define_flags(flag_values))
        return names

    kvid.cli.run_tool(
        os.path.basename(argv[0]) or "train.py",
        __doc__,
        define,
        lambda args: main(args, names),
        argv=resolve_flagfile_args(argv),
    )


if __name__ == "__main__":
    run()
