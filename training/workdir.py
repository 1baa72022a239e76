"""The files of a training workdir.

```
WORKDIR/flags.txt            resolved flags in flagfile format (replayable with --flagfile)
WORKDIR/config.json          the frozen TrainConfig
WORKDIR/checkpoints/{float,qat}/   tf.train.CheckpointManager checkpoints
WORKDIR/tensorboard/{float,qat}/   TensorBoard logs
WORKDIR/metrics.jsonl        one JSON line per epoch
WORKDIR/training_curve.png   loss / accuracy curves of both phases
```
plus what the deploy tools read, `model.json`, `label_map.json` and `export/` (the contract in
`kvid.data.workdir`).
Every file is written to a temporary name and renamed, so a killed run never leaves a partial one:
an existing export is complete, and a resumed run uses `export/float/` as the marker that the
float phase is finished. (TensorBoard event files are appended to by TensorFlow; checkpoints are
written by `tf.train.CheckpointManager`, which renames them into place and updates its state file
last.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from kvid.data.workdir import (
    INPUT_NAME,
    LABEL_MAP_JSON,
    MODEL_JSON,
    OUTPUT_NAME,
    SIGNATURE_KEY,
    model_json,
    read_labels,
    write_json,
)
from kvid_training import config

# Flags that do not change what a run computes: a re-run may change them and still resume.
# The strategy too: a run checkpointed on one device may resume on several, and the other way round
# (the global batch, which the data order depends on, is compared).
_FLAGS_IGNORED_FOR_RESUME = frozenset(
    {"verbose", "checkpoint_every_steps", "workdir", "strategy", "tpu", "num_cpu_devices"}
)


def path(workdir: str, *parts: str) -> str:
    """A path inside the workdir."""
    return os.path.join(workdir, *parts)


def write_run_files(
    cfg: config.TrainConfig, preset_fields: Mapping[str, Any], info: Mapping[str, Any]
) -> None:
    """Writes config.json, model.json and label_map.json into the run's workdir.

    Args:
      cfg: the run's config.
      preset_fields: `kvid.models.get_preset(cfg.preset)` (input normalisation).
      info: the dataset's dataset.json (class names and order pairs).
    """
    write_json(path(cfg.workdir, "config.json"), cfg.to_json_dict())
    write_json(path(cfg.workdir, LABEL_MAP_JSON), list(info["classes"]))
    write_json(
        path(cfg.workdir, MODEL_JSON),
        model_json(
            preset=cfg.preset,
            num_classes=cfg.num_classes,
            overrides=cfg.to_json_dict()["model_overrides"],
            num_frames=cfg.num_frames,
            image_size=cfg.image_size,
            frame_stride=cfg.frame_stride,
            labels=info["classes"],
            order_pairs=info.get("order_pairs", []),
            normalization={
                "mean": preset_fields.get("input_mean"),
                "std": preset_fields.get("input_std"),
            },
            data_dir=cfg.data_dir,
        ),
    )


def label_difference(labels: Sequence[str], other: Sequence[str]) -> str:
    """How two label maps differ, in a few words (they must be equal in order and names)."""
    labels, other = [str(name) for name in labels], [str(name) for name in other]
    if len(labels) != len(other):
        return f"{len(labels)} classes vs {len(other)}"
    if sorted(labels) == sorted(other):
        return "the same classes in another order"
    index = next(i for i, (a, b) in enumerate(zip(labels, other)) if a != b)
    return f"class {index} is {labels[index]!r} vs {other[index]!r}"


def check_label_map(workdir: str, classes: Sequence[str], dataset_json: str) -> None:
    """Raises ValueError when the workdir holds a label_map.json other than `classes`.

    A resumed run must train on the classes its checkpoints were trained on, in the same order.

    Args:
      workdir: the run's workdir (it may hold no label map yet).
      classes: the dataset's classes, in label order.
      dataset_json: the file they come from, for the message.
    """
    label_path = path(workdir, LABEL_MAP_JSON)
    if not os.path.exists(label_path):
        return
    saved = read_labels(label_path)
    if list(saved) != [str(name) for name in classes]:
        raise ValueError(
            f"{label_path} differs from the classes of {dataset_json} "
            f"({label_difference(saved, classes)}): this workdir was trained on another label "
            "map; use a new --workdir or the dataset it was trained on"
        )


def write_text(file_path: str, text: str) -> None:
    """Writes a text file atomically (temporary file, then rename)."""
    tmp_path = file_path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp_path, file_path)


def format_flagfile(lines: Sequence[str], header: str) -> str:
    """Flagfile text: a comment header, then the `--name=value` lines."""
    return "\n".join([f"# {line}" for line in header.splitlines()] + list(lines)) + "\n"


def _compared_lines(lines: Sequence[str]) -> list[str]:
    """Flag lines that define the run: comments and ignored flags dropped, sorted."""
    kept = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lstrip("-").partition("=")[0] not in _FLAGS_IGNORED_FOR_RESUME:
            kept.append(line)
    return sorted(kept)


def check_same_run(flags_path: str, lines: Sequence[str]) -> None:
    """Raises ValueError when `flags_path` holds a different run's flags.

    Only flags that change what the run computes are compared, so a resumed run may, e.g., ask
    for more frequent checkpoints or another verbosity.
    """
    if not os.path.exists(flags_path):
        return
    with open(flags_path, encoding="utf-8") as file:
        saved = _compared_lines(file.read().splitlines())
    current = _compared_lines(lines)
    if saved != current:
        only_now = [line for line in current if line not in saved]
        only_saved = [line for line in saved if line not in current]
        raise ValueError(
            f"--workdir={os.path.dirname(flags_path)} holds a run with different flags "
            f"(now: {' '.join(only_now) or '-'}; saved: {' '.join(only_saved) or '-'}); "
            "use a new --workdir or delete this one"
        )


def export_saved_model(model: keras.Model, export_dir: str, input_shape: Sequence[int]) -> None:
    """Saves the classifier as a SavedModel whose serving_default maps "video" to "logits".

    The signature is an explicit `tf.function` with a named, batch-polymorphic input, so the
    TFLite converter and `tf.saved_model.load` see `video: (None, T, H, W, 3) float32`. Only the
    variables are tracked (not the Keras object), which skips Keras' per-layer tracing: it is slow
    and fails on layers (e.g. tfmot wrappers) whose calls need extra arguments.
    """

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name=INPUT_NAME)])
    def serve(video):
        return {OUTPUT_NAME: model(video, training=False)}

    module = tf.Module()
    module.model_variables = list(model.variables)
    module.serve = serve
    tmp_dir = export_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tf.saved_model.save(module, tmp_dir, signatures={SIGNATURE_KEY: serve})
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(tmp_dir, export_dir)


def save_weights(model: keras.Model, weights_path: str) -> None:
    """Saves Keras HDF5 weights atomically."""
    tmp_path = weights_path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp_path)
    os.replace(tmp_path, weights_path)


def export_complete(workdir: str, phase: str) -> bool:
    """Whether both exports of `phase` ("float" or "qat") exist."""
    return os.path.exists(path(workdir, "export", phase, "saved_model.pb")) and os.path.exists(
        path(workdir, "export", f"{phase}.weights.h5")
    )


def plot_training_curve(records: Sequence[Mapping[str, Any]], png_path: str) -> None:
    """Loss and accuracy (train and validation) against the global step, for both phases.

    QAT steps are drawn after the float steps, with a dashed line where QAT starts.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    float_end = max((r["step"] for r in records if r["phase"] == "float"), default=0)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for phase, color in (("float", "tab:blue"), ("qat", "tab:orange")):
            rows = [r for r in records if r["phase"] == phase]
            if not rows:
                continue
            offset = float_end if phase == "qat" else 0
            steps = [r["step"] + offset for r in rows]
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                points = [(s, r[key]) for s, r in zip(steps, rows) if key in r]
                if points:
                    axis.plot(
                        *zip(*points),
                        style,
                        color=color,
                        marker="o",
                        markersize=3,
                        label=f"{phase} {key}",
                    )
        if any(r["phase"] == "qat" for r in records):
            axis.axvline(float_end, color="gray", linestyle=":", linewidth=1)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    tmp_path = png_path[: -len(".png")] + ".tmp.png"
    figure.savefig(tmp_path, dpi=100)
    plt.close(figure)
    os.replace(tmp_path, png_path)
