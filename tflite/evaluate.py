"""`kvid-eval`: accuracy, int8-vs-float agreement and a time-reversal control on a data split.

  kvid-eval --workdir=/tmp/run --model=/tmp/run/export/model_int8.tflite
  kvid-eval --workdir=/tmp/run --model=/tmp/run/export/float --num_clips=2 --num_crops=3

Eval sampling (docs/design.md section 8): each video gives num_clips x num_crops views; the model
runs on every view and the softmax scores are averaged over views. Reported: top-1, top-5, per-class
accuracy, per-order-pair accuracy, the confusion matrix (also as a PNG), and against each
reference (the float SavedModel by default for a `.tflite`, the QAT SavedModel when present) the
cosine of the view-averaged logits (mean, min over clips) and top-1 agreement.

Every metric is computed twice: on the clips as sampled (`forward`) and with the frames of every
clip reversed in time (`reversed`). On an order pair (zoom in / zoom out ...) a model that uses
time swaps its answers when time runs backwards, so `reversed` pair accuracy should be low; a
model that ignores time scores the same both ways.

A frame-stacked `.tflite` (`kvid-convert --input_layout=frame_stacked`, input `(1, T * H, W, 3)`)
is fed the same clips with their frames stacked; T, H and W come from its sidecar `<name>.json`.

Writes `OUTPUT_DIR/eval_<name>.json`, `confusion_<name>.png`, `confusion_<name>_reversed.png`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

import kvid.cli
from kvid.data.dataset import held_out_split
from kvid.data.workdir import (
    LABEL_MAP_JSON,
    MODEL_JSON,
    WorkdirError,
    is_saved_model,
    load_workdir,
    read_labels,
    resolve_order_pairs,
)
from kvid_tflite import metrics as metrics_lib

Classifier = Callable[[np.ndarray], np.ndarray]
ORDERS = ("forward", "reversed")
# Contract thresholds of docs/design.md section 7 (c), checked when the references are present.
MIN_COSINE = 0.99
MAX_TOP1_DROP = 0.01
MIN_QAT_AGREEMENT = 0.98


# ------------------------------------------------------------------------------------------------
# Running models
# ------------------------------------------------------------------------------------------------
def load_classifier(path: str, num_threads: int | None = None) -> tuple[Classifier, str, tuple]:
    """A `.tflite` file or SavedModel dir as a callable `(N, T, H, W, 3) -> (N, classes)`.

    A `.tflite`'s input layout and clip shape come from its sidecar (`read_input_layout`); a
    `.tflite` without one must take clips `(1, T, H, W, 3)`.

    Returns:
      (classifier, kind, clip_shape) with kind "tflite" or "saved_model".
    """
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise WorkdirError(f"{path} is an empty file, not a model")
    if os.path.isfile(path) and path.endswith(".tflite"):
        from kvid_tflite.litert import (
            TFLiteModel,
            read_frame_stride,
            read_input_layout,
            sidecar_path,
        )

        try:
            _, clip_shape = read_input_layout(path)
            model = TFLiteModel(path, num_threads=num_threads, clip_shape=clip_shape)
        except ValueError as error:
            message = (
                str(error) if path in str(error) else f"{path}: not a usable .tflite ({error})"
            )
            raise WorkdirError(message) from error
        if len(model.clip_shape) != 4:
            raise WorkdirError(
                f"{path} takes {list(model.input_shape)}, not clips (1, T, H, W, 3), and records "
                f"no input_layout (in its kvid metadata or a sidecar {sidecar_path(path)}): "
                "convert it with kvid-convert"
            )
        model.frame_stride = read_frame_stride(path)
        return model, "tflite", model.clip_shape
    if is_saved_model(path):
        from kvid_tflite.saved_model import load_serving_model

        model = load_serving_model(path)
        return model, "saved_model", model.clip_shape
    raise WorkdirError(f"{path} is neither a .tflite file nor a SavedModel directory")


def collect_view_logits(
    models: dict[str, Classifier],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    max_clips: int | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Runs every model on every view, as sampled and time-reversed.

    Args:
      models: name -> classifier.
      batches: `(video (B, V, T, H, W, 3) float32, label (B,))` pairs.
      max_clips: stop after this many clips (None: all).

    Returns:
      ({order: {name: logits (N, V, classes)}}, labels (N,)) for order in ORDERS.
    """
    collected: dict[str, dict[str, list[np.ndarray]]] = {
        order: {name: [] for name in models} for order in ORDERS
    }
    labels: list[np.ndarray] = []
    seen = 0
    for video, label in batches:
        video = np.asarray(video, np.float32)
        label = np.asarray(label).reshape(-1)
        if max_clips is not None:
            video, label = video[: max_clips - seen], label[: max_clips - seen]
        if video.ndim != 6:
            raise ValueError(f"expected video (B, V, T, H, W, 3), got shape {video.shape}")
        batch, views = video.shape[:2]
        flat = video.reshape(batch * views, *video.shape[2:])
        for order in ORDERS:
            inputs = flat if order == "forward" else metrics_lib.reverse_time(flat)
            for name, model in models.items():
                logits = np.asarray(model(np.ascontiguousarray(inputs)), np.float32)
                collected[order][name].append(logits.reshape(batch, views, -1))
        labels.append(label.astype(np.int64))
        seen += batch
        if max_clips is not None and seen >= max_clips:
            break
    if not labels:
        raise ValueError("the evaluation split yielded no clips")
    return (
        {
            order: {name: np.concatenate(parts, axis=0) for name, parts in by_name.items()}
            for order, by_name in collected.items()
        },
        np.concatenate(labels),
    )


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def evaluate_order(
    view_logits: dict[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    order_pairs: Sequence[Sequence[int]] = (),
    model_key: str = "model",
) -> dict[str, Any]:
    """Metrics of `view_logits[model_key]`, plus comparisons with every other entry."""
    scores, logits = metrics_lib.average_views(view_logits[model_key])
    result = metrics_lib.classification_metrics(scores, labels, order_pairs)
    counts = np.bincount(labels, minlength=len(class_names))
    result["per_class_accuracy"] = [
        {"index": i, "class": name, "num_clips": int(counts[i]), "accuracy": accuracy}
        for i, (name, accuracy) in enumerate(zip(class_names, result["per_class_accuracy"]))
    ]
    for pair in result["order_pairs"]:
        pair["classes"] = [class_names[i] for i in pair["pair"]]
    predicted = metrics_lib.predictions(scores)
    for name, reference_view_logits in view_logits.items():
        if name == model_key:
            continue
        reference_scores, reference_logits = metrics_lib.average_views(reference_view_logits)
        cosine = metrics_lib.cosine_similarity(logits, reference_logits)
        result[f"vs_{name}"] = {
            "cosine_mean": float(np.mean(cosine)),
            "cosine_min": float(np.min(cosine)),
            "top1_agreement": metrics_lib.agreement(
                predicted, metrics_lib.predictions(reference_scores)
            ),
            "reference_top1": metrics_lib.top_k_accuracy(reference_scores, labels, 1),
            "reference_top5": metrics_lib.top_k_accuracy(reference_scores, labels, 5),
        }
    return result


def contract_checks(forward: dict[str, Any]) -> dict[str, bool]:
    """docs/design.md section 7 (c) on the forward metrics, for the references that were run."""
    checks = {}
    if "vs_float" in forward:
        vs_float = forward["vs_float"]
        checks[f"cosine_mean_vs_float>={MIN_COSINE}"] = vs_float["cosine_mean"] >= MIN_COSINE
        checks["top1_within_1_point_of_float"] = (
            vs_float["reference_top1"] - forward["top1"] <= MAX_TOP1_DROP + 1e-9
        )
    if "vs_qat" in forward:
        checks[f"top1_agreement_vs_qat>={MIN_QAT_AGREEMENT}"] = (
            forward["vs_qat"]["top1_agreement"] >= MIN_QAT_AGREEMENT
        )
    return checks


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str) -> None:
    """Saves a confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a training box
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(class_names) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if len(class_names) <= 30:  # counts stay readable up to about 30 classes
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                color = "white" if count > threshold else "black"
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(
    models: dict[str, Classifier],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    order_pairs: Sequence[Sequence[int]] = (),
    model_key: str = "model",
    max_clips: int | None = None,
) -> dict[str, Any]:
    """Forward and time-reversed metrics of `models[model_key]` against the other models."""
    view_logits, labels = collect_view_logits(models, batches, max_clips)
    result: dict[str, Any] = {
        "num_clips": int(labels.shape[0]),
        "views_per_clip": int(view_logits["forward"][model_key].shape[1]),
    }
    for order in ORDERS:
        result[order] = evaluate_order(
            view_logits[order], labels, class_names, order_pairs, model_key
        )
    result["checks"] = contract_checks(result["forward"])
    return result


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Defines kvid-eval's flags and returns their names. Called by `run()` only
    (kvid_tflite.convert shares names)."""
    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "model", None, "The .tflite file or SavedModel directory to evaluate.", **fv
    )
    flags.DEFINE_string(
        "workdir", None, "Training workdir: data_dir, labels, order pairs, references.", **fv
    )
    flags.DEFINE_string(
        "data_dir", None, "Dataset directory (overrides / replaces the workdir's).", **fv
    )
    flags.DEFINE_string(
        "reference",
        None,
        "Float reference (SavedModel or .tflite); default "
        "WORKDIR/export/float for a .tflite model; 'none' to skip.",
        **fv,
    )
    flags.DEFINE_string(
        "qat_reference",
        None,
        "QAT reference; default WORKDIR/export/qat if present; 'none' to skip.",
        **fv,
    )
    flags.DEFINE_string(
        "split", None, "Dataset split (default: test, else val when the dataset has no test).", **fv
    )
    flags.DEFINE_integer("num_clips", 1, "Uniformly spaced clips per video.", **fv)
    flags.DEFINE_integer("num_crops", 1, "Spatial crops per clip (1 or 3).", **fv)
    flags.DEFINE_integer(
        "frame_stride",
        None,
        "Frame stride (default: model.json's, else the .tflite sidecar's, else 1).",
        **fv,
    )
    flags.DEFINE_integer("batch_size", 8, "Videos per pipeline batch.", **fv)
    flags.DEFINE_integer(
        "max_videos", None, "Evaluate at most this many videos (quick runs).", **fv
    )
    flags.DEFINE_integer("num_threads", None, "LiteRT interpreter threads.", **fv)
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where to write eval_<name>.json and the confusion "
        "PNGs (default WORKDIR/eval, else the model's directory).",
        **fv,
    )
    return sorted(set(flag_values) - before)


def eval_batches(
    data_dir: str,
    clip_shape: Sequence[int],
    split: str,
    num_clips: int,
    num_crops: int,
    frame_stride: int,
    batch_size: int,
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """`(video (B, V, T, H, W, 3), label (B,))` numpy batches from the input pipeline."""
    from kvid.data import pipeline  # the CLI's glue; `evaluate` takes any iterable

    config = pipeline.InputConfig(
        data_dir=data_dir,
        num_frames=int(clip_shape[0]),
        image_size=(int(clip_shape[1]), int(clip_shape[2])),
        batch_size=batch_size,
        frame_stride=frame_stride,
        num_clips=num_clips,
        num_crops=num_crops,
        deterministic=True,
    )
    dataset = pipeline.eval_dataset(config, split=split)
    iterator = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for video, label in iterator:
        yield np.asarray(video), np.asarray(label)


def _workdir_labels(workdir) -> tuple[str, list[str]]:
    """(file, labels) of a workdir's label map: label_map.json, else model.json's labels."""
    label_path = os.path.join(workdir.path, LABEL_MAP_JSON)
    if os.path.isfile(label_path):
        return label_path, read_labels(label_path)
    return os.path.join(workdir.path, MODEL_JSON), list(workdir.labels)


def check_labels(model_labels: tuple[str, Sequence[str]], data_dir: str) -> None:
    """Raises WorkdirError when the model's label map is not the dataset's classes.

    Scores are read by class index, so the names must be equal and in the same order (a
    permutation is a mismatch).

    Args:
      model_labels: (the file they come from, class names in label order).
      data_dir: the dataset; its dataset.json holds its classes.
    """
    from kvid.data.dataset import DATASET_INFO, read_dataset_info

    where, labels = model_labels
    if not os.path.isfile(os.path.join(data_dir, DATASET_INFO)):
        return  # no dataset there: reading the split names the missing file
    classes = [str(name) for name in read_dataset_info(data_dir)["classes"]]
    labels = [str(name) for name in labels]
    if labels == classes:
        return
    if len(labels) != len(classes):
        how = f"{len(labels)} classes vs {len(classes)}"
    elif sorted(labels) == sorted(classes):
        how = "the same classes in another order"
    else:
        index = next(i for i, (a, b) in enumerate(zip(labels, classes)) if a != b)
        how = f"class {index} is {labels[index]!r} vs {classes[index]!r}"
    raise WorkdirError(
        f"the label map of {where} differs from the classes of "
        f"{os.path.join(data_dir, DATASET_INFO)} ({how}): evaluate the model on the dataset it "
        "was trained on, or fine-tune it on this one (train.py --init_from)"
    )


def _model_name(path: str) -> str:
    path = path.rstrip("/")
    base = os.path.basename(path)
    return os.path.splitext(base)[0] if base.endswith(".tflite") else base


def _resolve_reference(flag: str | None, default: str | None, model_path: str) -> str | None:
    if flag is not None:
        return None if flag.lower() in ("", "none") else flag
    if default and os.path.abspath(default) != os.path.abspath(model_path.rstrip("/")):
        return default
    return None


def evaluate_from_flags(values: flags.FlagValues) -> int:
    """The command, on parsed flags; returns the exit code.

    Raises:
      UsageError, ValueError, OSError: bad flags or input, named in the message.
    """
    if not values.model:
        raise app.UsageError("--model is required")
    if not values.workdir and not values.data_dir:
        raise app.UsageError("pass --workdir or --data_dir")
    workdir = load_workdir(values.workdir) if values.workdir else None
    # --data_dir, else the workdir's dataset (one of the two is given)
    data_dir = values.data_dir or workdir.require_data_dir()
    if workdir is not None:
        check_labels(_workdir_labels(workdir), data_dir)
    model, kind, clip_shape = load_classifier(values.model, values.num_threads)
    if kind == "tflite":
        from kvid_tflite.litert import read_description

        recorded = (read_description(values.model) or {}).get("labels")
        if recorded:
            check_labels((f"{values.model} (its kvid metadata)", recorded), data_dir)
    if workdir is not None:
        class_names, pairs = list(workdir.labels), [list(p) for p in workdir.order_pairs]
        frame_stride = values.frame_stride or workdir.frame_stride
    else:
        from kvid.data.dataset import read_dataset_info

        info = read_dataset_info(values.data_dir)
        class_names = list(info["classes"])
        pairs = [list(p) for p in resolve_order_pairs(info.get("order_pairs", []), class_names)]
        frame_stride = values.frame_stride or getattr(model, "frame_stride", None) or 1
    split = values.split or held_out_split(data_dir)
    if split is None:
        raise app.UsageError(
            f"--data_dir={data_dir} has neither a test nor a val split; pass --split"
        )
    float_default = workdir.float_saved_model if workdir and kind == "tflite" else None
    qat_default = workdir.qat_saved_model if workdir and workdir.has_qat else None
    references = {
        "float": _resolve_reference(values.reference, float_default, values.model),
        "qat": _resolve_reference(values.qat_reference, qat_default, values.model),
    }
    models: dict[str, Classifier] = {"model": model}
    for name, path in references.items():
        if path:
            models[name], _, reference_shape = load_classifier(path, values.num_threads)
            if tuple(reference_shape) != tuple(clip_shape):
                raise WorkdirError(
                    f"reference {path} takes clips {reference_shape}, model {clip_shape}"
                )

    batches = eval_batches(
        data_dir,
        clip_shape,
        split,
        values.num_clips,
        values.num_crops,
        frame_stride,
        values.batch_size,
    )
    result = evaluate(models, batches, class_names, pairs, max_clips=values.max_videos)
    name = _model_name(values.model)
    output_dir = values.output_dir or (
        os.path.join(workdir.path, "eval") if workdir else os.path.dirname(values.model.rstrip("/"))
    )
    os.makedirs(output_dir, exist_ok=True)
    report = {
        "model": os.path.abspath(values.model),
        "name": name,
        "kind": kind,
        "input_layout": getattr(model, "input_layout", "clip"),
        "split": split,
        "data_dir": data_dir,
        "num_clips_per_video": values.num_clips,
        "num_crops": values.num_crops,
        "labels": class_names,
        "order_pairs": pairs,
        "references": {k: os.path.abspath(v) for k, v in references.items() if v},
        **result,
    }
    json_path = os.path.join(output_dir, f"eval_{name}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    for order in ORDERS:
        suffix = "" if order == "forward" else "_reversed"
        plot_confusion(
            np.array(result[order]["confusion_matrix"]),
            class_names,
            os.path.join(output_dir, f"confusion_{name}{suffix}.png"),
            f"{name} ({split}, {order}): top-1 {100 * result[order]['top1']:.1f}%",
        )
    print(summary(report))
    print(f"wrote {json_path}")
    return 0


def summary(report: dict[str, Any]) -> str:
    """A few human lines about an evaluation report."""
    lines = [
        f"kvid-eval: {report['name']} on {report['split']} ({report['num_clips']} clips, "
        f"{report['views_per_clip']} views each)"
    ]
    for order in ORDERS:
        metrics = report[order]
        line = (
            f"  {order:8s} top-1 {100 * metrics['top1']:.1f}%  top-5 {100 * metrics['top5']:.1f}%"
        )
        pair_accuracies = [
            p["accuracy"] for p in metrics["order_pairs"] if p["accuracy"] is not None
        ]
        if pair_accuracies:
            line += f"  order pairs {100 * float(np.mean(pair_accuracies)):.1f}%"
        for key, value in metrics.items():
            if key.startswith("vs_"):
                line += (
                    f"  {key}: cos {value['cosine_mean']:.4f} (min {value['cosine_min']:.4f}) "
                    f"agree {100 * value['top1_agreement']:.1f}%"
                )
        lines.append(line)
    for check, passed in report["checks"].items():
        lines.append(f"  {'PASS' if passed else 'FAIL'} {check}")
    return "\n".join(lines)


def run() -> None:
    """Console-script entry point (`kvid-eval`)."""
    kvid.cli.run_tool(
        "kvid-eval", __doc__, define_flags, lambda argv: evaluate_from_flags(flags.FLAGS)
    )


if __name__ == "__main__":
    run()
