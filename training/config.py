"""The frozen training configuration, and the arithmetic that turns durations into steps.

`training/train.py` converts its absl flags into one `TrainConfig` exactly once; everything after
that (the input pipeline, the optimizers, the phases, the tests) reads this object, never `FLAGS`.
The config holds resolved values only: every duration is a number of optimizer steps, the input
size is the one the model is built for, and the model overrides are the exact keyword arguments
given to `kvid.models.create`.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Keys of `kvid.models.create` that train.py sets from its own flags; `--model_overrides` may not
# set them too, or the same value would have two sources.
_INPUT_KEYS = ("num_frames", "image_size")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs, resolved from the flags of `training/train.py`.

    Attributes:
      preset: name of the kvid preset, e.g. "vmf_tiny".
      model_overrides: keyword arguments for `kvid.models.create` as sorted (key, value) pairs;
        they include `num_frames` and `image_size` so that the model matches the input pipeline.
      num_classes: number of classes of the dataset.
      workdir: folder of the run (checkpoints, exports, logs).
      data_dir: prepared dataset folder (holds dataset.json and the TFRecord shards).
      num_frames: frames per clip.
      image_size: (height, width) of the frames given to the model.
      frame_stride: temporal stride between sampled frames.
      stride_jitter: random +- change of the stride during training.
      min_crop_area: smallest area fraction of the random resized crop.
      flip: random horizontal flips (the pipeline swaps labels of flip pairs).
      batch_size: training batch size.
      eval_batch_size: batch size of the validation pass (in clips; each has several views).
      eval_num_clips: clips per validation video (views are averaged).
      eval_num_crops: crops per validation clip (1 or 3).
      num_train_examples: clips in the train split.
      steps_per_epoch: optimizer steps per epoch (the train split divided by the batch size).
      float_steps: optimizer steps of the float phase.
      warmup_steps: linear warm-up steps of the float learning rate schedule.
      qat_steps: optimizer steps of the quantization-aware phase (0 skips it).
      learning_rate: peak learning rate of the float phase.
      qat_learning_rate: peak learning rate of the QAT phase (cosine decay, no warm-up).
      weight_decay: decoupled AdamW weight decay (norms, biases and tokens excluded).
      label_smoothing: label smoothing of the cross-entropy loss.
      grad_clip_norm: global gradient norm clip; 0 disables clipping.
      seed: seed of the weights, the dropout and the input pipeline.
      deterministic: deterministic tf.data order and TF ops (slower).
      checkpoint_every_steps: extra checkpoints every N steps inside an epoch; 0 = per epoch only.
      verbose: Keras `fit` verbosity (0 silent, 1 progress bar, 2 one line per epoch).
      mixed_precision: dtype policy of the float phase: "float32", "mixed_float16" or
        "mixed_bfloat16" (QAT and the exports are always float32).
      sync_batch_norm: batch norm statistics over the global batch instead of per replica.
      auto_shard: how workers split the training files: "auto", "file" or "data"
        (`distribute.shard_by_file`).
      init_from: the workdir (trained or ported) whose float weights start the float phase, or
        None for random weights; the model then has its architecture (`preset` and
        `model_overrides` are its own plus this run's).
    """

    preset: str
    model_overrides: tuple[tuple[str, Any], ...]
    num_classes: int
    workdir: str
    data_dir: str
    num_frames: int
    image_size: tuple[int, int]
    frame_stride: int
    stride_jitter: int
    min_crop_area: float
    flip: bool
    batch_size: int
    eval_batch_size: int
    eval_num_clips: int
    eval_num_crops: int
    num_train_examples: int
    steps_per_epoch: int
    float_steps: int
    warmup_steps: int
    qat_steps: int
    learning_rate: float
    qat_learning_rate: float
    weight_decay: float
    label_smoothing: float
    grad_clip_norm: float
    seed: int
    deterministic: bool
    checkpoint_every_steps: int
    verbose: int
    # Fields added after the first release: the defaults are what earlier runs did.
    mixed_precision: str = "float32"
    sync_batch_norm: bool = False
    auto_shard: str = "auto"
    init_from: str | None = None

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `kvid.models.create(preset, num_classes, **model_kwargs)`."""
        return dict(self.model_overrides)

    @property
    def float_epochs(self) -> int:
        """Epochs of the float phase (the last one is partial when steps do not divide evenly)."""
        return math.ceil(self.float_steps / self.steps_per_epoch)

    @property
    def qat_epochs(self) -> int:
        """Epochs of the QAT phase (the last one may be partial)."""
        return math.ceil(self.qat_steps / self.steps_per_epoch)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: tuples (also nested ones) become lists, overrides a mapping."""
        values = {
            field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)
        }
        values["model_overrides"] = dict(values["model_overrides"])
        return values


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so that a JSON round trip gives back equal values."""
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


def resolve_steps(
    *,
    epochs: float | None,
    steps: int | None,
    steps_per_epoch: int,
    default_epochs: float,
    epochs_flag: str,
    steps_flag: str,
) -> int:
    """Resolves a duration given in epochs or in steps to a number of optimizer steps.

    This is the only place where epochs become steps (big_vision's `get_steps`): a duration is
    either `--<epochs_flag>` (a float, rounded to the nearest step, at least one step when
    positive) or `--<steps_flag>`, never both; with neither, `default_epochs` applies.

    Args:
      epochs: the duration in epochs, or None.
      steps: the duration in optimizer steps, or None.
      steps_per_epoch: optimizer steps in one pass over the train split.
      default_epochs: duration when neither is given.
      epochs_flag: name of the epochs flag, for error messages.
      steps_flag: name of the steps flag, for error messages.

    Returns:
      The number of optimizer steps (>= 0).

    Raises:
      ValueError: both are given, or one is negative. The message names the flag.
    """
    if epochs is not None and steps is not None:
        raise ValueError(
            f"--{epochs_flag}={epochs} and --{steps_flag}={steps} are mutually exclusive: "
            "give the duration in epochs or in steps"
        )
    if steps is not None:
        if steps < 0:
            raise ValueError(f"--{steps_flag}={steps}: must be >= 0")
        return int(steps)
    if epochs is None:
        epochs = default_epochs
    if epochs < 0:
        raise ValueError(f"--{epochs_flag}={epochs}: must be >= 0")
    if epochs == 0:
        return 0
    return max(1, round(epochs * steps_per_epoch))


def parse_model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parses `key=value` strings; values are Python literals when they parse as one.

    `dropout_rate=0.1` gives a float, `window_size=(4,7,7)` a tuple, `act=relu6` the string.
    Whether a key is a field of the preset is checked by `kvid.models.create` itself.

    Raises:
      ValueError: an item has no `=`, or sets an input key that has its own flag.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model_overrides: {item!r} is not of the form key=value")
        if key in _INPUT_KEYS:
            raise ValueError(f"--model_overrides: set {key} with --{key}, not as an override")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        overrides[key] = value
    return overrides


def freeze_overrides(overrides: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Sorted (key, value) pairs with lists turned into tuples, so the config stays immutable."""
    return tuple(
        (key, tuple(value) if isinstance(value, list) else value)
        for key, value in sorted(overrides.items())
    )


def plan_fit_calls(
    start_step: int, total_steps: int, steps_per_epoch: int
) -> list[tuple[int, int, int]]:
    """Splits the remaining steps of a phase into `model.fit` calls with whole epochs each.

    `fit` runs a fixed number of steps per epoch, but a resumed phase may start inside an epoch
    (a `--checkpoint_every_steps` checkpoint) and a duration in steps may end inside one. Epoch
    `e` covers steps [e * steps_per_epoch, min((e + 1) * steps_per_epoch, total_steps)); the
    remaining part of each epoch is computed and consecutive epochs of equal length share a call,
    so an uninterrupted and a resumed phase run exactly the same number of optimizer steps.

    Args:
      start_step: optimizer steps already done in this phase.
      total_steps: optimizer steps of the whole phase.
      steps_per_epoch: optimizer steps of a full epoch.

    Returns:
      A list of `(initial_epoch, epochs, steps_per_epoch)` arguments for `model.fit`, in order;
      empty when the phase is complete.
    """
    calls: list[tuple[int, int, int]] = []
    step = start_step
    while step < total_steps:
        epoch = step // steps_per_epoch
        epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
        length = epoch_end - step
        if calls and calls[-1][2] == length and calls[-1][1] == epoch:
            initial_epoch, _, _ = calls[-1]
            calls[-1] = (initial_epoch, epoch + 1, length)
        else:
            calls.append((epoch, epoch + 1, length))
        step = epoch_end
    return calls
