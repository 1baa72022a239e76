"""Classification and agreement metrics on plain arrays (no TensorFlow).

Conventions: `scores` and `logits` are `(num_clips, num_classes)`; `labels` and `predictions`
are `(num_clips,)` integer class indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - np.max(logits, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


def average_views(view_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip view averages of `(num_clips, num_views, num_classes)` logits.

    Returns:
      (scores, logits): the mean softmax over views (what the prediction uses: eval sampling
      averages scores, docs/design.md section 8) and the mean logits (what the cosine uses).
    """
    view_logits = np.asarray(view_logits, np.float64)
    return softmax(view_logits).mean(axis=1), view_logits.mean(axis=1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of clips whose label is among the `k` highest scores (k capped at num_classes)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    k = min(k, scores.shape[1])
    # Stable sort on the negated scores: ties go to the lower class index, as argmax does.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def predictions(scores: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(scores), axis=1)


def per_class_accuracy(
    predicted: np.ndarray, labels: np.ndarray, num_classes: int
) -> list[float | None]:
    """Accuracy over the clips of each class; None for a class with no clips."""
    predicted = np.asarray(predicted)
    labels = np.asarray(labels)
    result: list[float | None] = []
    for cls in range(num_classes):
        mask = labels == cls
        result.append(float(np.mean(predicted[mask] == cls)) if mask.any() else None)
    return result


def order_pair_accuracy(
    predicted: np.ndarray, labels: np.ndarray, pairs: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """For each order pair (a, b): accuracy over the clips labelled a or b, with the
    prediction taken over all classes (a clip of a predicted as c counts as wrong too).

    A model that ignores time cannot beat chance on a pair (its two classes hold the same frames
    in opposite orders); on time-reversed clips a model that uses time swaps its answers.
    """
    predicted = np.asarray(predicted)
    labels = np.asarray(labels)
    result = []
    for a, b in pairs:
        mask = (labels == a) | (labels == b)
        result.append(
            {
                "pair": [int(a), int(b)],
                "num_clips": int(mask.sum()),
                "accuracy": float(np.mean(predicted[mask] == labels[mask])) if mask.any() else None,
                # Share of the pair's clips predicted as the *other* class of the pair.
                "swapped": float(np.mean(predicted[mask] == np.where(labels[mask] == a, b, a)))
                if mask.any()
                else None,
            }
        )
    return result


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true, predicted]`."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def cosine_similarity(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine of `(N, D)` arrays; two zero rows count as identical (1.0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    dot = np.sum(a * b, axis=-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    both_zero = (np.linalg.norm(a, axis=-1) < eps) & (np.linalg.norm(b, axis=-1) < eps)
    return np.where(both_zero, 1.0, dot / np.maximum(norms, eps))


def agreement(predicted_a: np.ndarray, predicted_b: np.ndarray) -> float:
    """Share of clips where two models predict the same class."""
    return float(np.mean(np.asarray(predicted_a) == np.asarray(predicted_b)))


def compare_logits(logits: np.ndarray, reference_logits: np.ndarray) -> dict[str, float]:
    """Cosine (mean, min) of per-clip logits and top-1 agreement against a reference."""
    cosine = cosine_similarity(logits, reference_logits)
    return {
        "cosine_mean": float(np.mean(cosine)),
        "cosine_min": float(np.min(cosine)),
        "top1_agreement": agreement(predictions(logits), predictions(reference_logits)),
    }


def classification_metrics(
    scores: np.ndarray, labels: np.ndarray, pairs: Sequence[Sequence[int]] = ()
) -> dict[str, Any]:
    """Top-1, top-5, per-class and per-order-pair accuracy, and the confusion matrix."""
    scores = np.asarray(scores)
    num_classes = scores.shape[1]
    predicted = predictions(scores)
    return {
        "num_clips": int(scores.shape[0]),
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "per_class_accuracy": per_class_accuracy(predicted, labels, num_classes),
        "order_pairs": order_pair_accuracy(predicted, labels, pairs),
        "confusion_matrix": confusion_matrix(predicted, labels, num_classes).tolist(),
    }


def reverse_time(video: np.ndarray, time_axis: int = -4) -> np.ndarray:
    """Reverses the frame axis of `(..., T, H, W, C)` video (the negative control)."""
    return np.flip(np.asarray(video), axis=time_axis)
