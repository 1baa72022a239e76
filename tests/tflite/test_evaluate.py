"""Evaluation metrics on hand-made logits, the time-reversal control, and kvid-eval's output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from absl import flags

from kvid_tflite import evaluate, metrics
from kvid_tflite.convert import convert_saved_model
from kvid_tflite.litert import TFLiteModel
from kvid_tflite.saved_model import load_serving_model

SCORES = np.array(
    [
        [0.1, 0.7, 0.2],  # label 1: top-1 hit
        [0.5, 0.3, 0.2],  # label 1: top-2 hit
        [0.2, 0.3, 0.5],  # label 0: top-3 hit only
        [0.6, 0.3, 0.1],  # label 2: top-3 hit only
    ]
)
LABELS = np.array([1, 1, 0, 2])


def test_top_k_accuracy():
    assert metrics.top_k_accuracy(SCORES, LABELS, 1) == 0.25
    assert metrics.top_k_accuracy(SCORES, LABELS, 2) == 0.5
    assert metrics.top_k_accuracy(SCORES, LABELS, 5) == 1.0  # k capped at 3 classes


def test_per_class_and_confusion():
    predicted = metrics.predictions(SCORES)  # [1, 0, 2, 0]
    assert metrics.per_class_accuracy(predicted, LABELS, 4) == [0.0, 0.5, 0.0, None]
    np.testing.assert_array_equal(
        metrics.confusion_matrix(predicted, LABELS, 3), [[0, 0, 1], [1, 1, 0], [1, 0, 0]]
    )


def test_order_pair_accuracy_uses_the_full_argmax():
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 2, 2])  # clip 3 (label 1) predicted as 2: wrong, not swapped
    (pair,) = metrics.order_pair_accuracy(predicted, labels, [[0, 1]])
    assert pair == {"pair": [0, 1], "num_clips": 4, "accuracy": 0.5, "swapped": 0.25}
    (empty,) = metrics.order_pair_accuracy(predicted, labels, [[3, 4]])
    assert empty["accuracy"] is None


def test_cosine_and_agreement():
    a = np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 4.0], [-1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, b), [0.0, 1.0, -1.0, 1.0])
    assert metrics.agreement([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    compared = metrics.compare_logits(a[:3], b[:3])
    assert compared["cosine_min"] == pytest.approx(-1.0)
    assert compared["top1_agreement"] == pytest.approx(1 / 3)  # argmax [0,1,0] vs [1,1,1]


def test_views_average_softmax_scores_and_logits():
    view_logits = np.log(np.array([[[0.8, 0.2], [0.4, 0.6]]]))  # one clip, two views
    scores, logits = metrics.average_views(view_logits)
    np.testing.assert_allclose(scores, [[0.6, 0.4]])
    np.testing.assert_allclose(logits, view_logits.mean(axis=1))


def test_evaluate_order_against_a_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 1, 3))  # one view: argmax(-x) is argmin(x), never argmax(x)
    result = evaluate.evaluate_order(
        {"model": logits, "float": 2.0 * logits, "other": -logits},
        np.array([0, 1, 2, 0]),
        ["a", "b", "c"],
        [[0, 1]],
    )
    assert result["vs_float"]["cosine_min"] == pytest.approx(1.0)  # scaled logits
    assert result["vs_other"]["cosine_mean"] == pytest.approx(-1.0)
    assert result["vs_other"]["top1_agreement"] == 0.0
    assert [c["num_clips"] for c in result["per_class_accuracy"]] == [2, 1, 1]
    assert result["order_pairs"][0]["classes"] == ["a", "b"]
    assert sum(map(sum, result["confusion_matrix"])) == 4


def _ramp_clip(brightening: bool, frames: int = 4) -> np.ndarray:
    """(T, 2, 2, 3) clip whose frames get brighter (or darker) over time."""
    levels = np.linspace(0.1, 0.9, frames)
    levels = levels if brightening else levels[::-1]
    return np.broadcast_to(levels[:, None, None, None], (frames, 2, 2, 3)).astype(np.float32)


def _first_frame_classifier(video: np.ndarray) -> np.ndarray:
    """Class 0 ("brighten") when frame 0 is dark, class 1 ("darken") when it is bright."""
    brightness = video[:, 0].mean(axis=(1, 2, 3))
    return np.stack([1.0 - brightness, brightness], axis=1)


def test_reversed_time_control_swaps_an_order_pair():
    video = np.stack([_ramp_clip(True), _ramp_clip(False)] * 3)[:, None]  # (6, V=1, T, H, W, 3)
    labels = np.array([0, 1] * 3)
    batches = [(video[:4], labels[:4]), (video[4:], labels[4:])]
    result = evaluate.evaluate(
        {"model": _first_frame_classifier}, batches, ["brighten", "darken"], [[0, 1]]
    )
    assert result["num_clips"] == 6 and result["views_per_clip"] == 1
    assert result["forward"]["top1"] == 1.0
    assert result["reversed"]["top1"] == 0.0
    assert result["reversed"]["order_pairs"][0]["swapped"] == 1.0


def test_reverse_time_flips_only_the_frame_axis():
    video = np.arange(2 * 3 * 4 * 1 * 1 * 1).reshape(2, 3, 4, 1, 1, 1)  # (B, V, T, H, W, C)
    reversed_video = metrics.reverse_time(video)
    np.testing.assert_array_equal(reversed_video, video[:, :, ::-1])


def test_reversed_views_reach_a_tflite_model_frame_zero(tmp_path, helpers):
    """A real .tflite that reads only frame 0 sees the last frame under the reversal control."""
    path = helpers.save_serving(helpers.build_classifier("first_frame"), str(tmp_path / "sm"))
    model = TFLiteModel(convert_saved_model(load_serving_model(path), "float32"))
    clips = np.concatenate(helpers.random_clips(4, seed=9)).reshape(2, 2, *helpers.CLIP_SHAPE)
    logits, _ = evaluate.collect_view_logits({"model": model}, [(clips, np.array([0, 1]))])
    flat = clips.reshape(4, *helpers.CLIP_SHAPE)
    last_frame_first = np.repeat(flat[:, -1:], helpers.CLIP_SHAPE[0], axis=1)
    np.testing.assert_allclose(
        logits["reversed"]["model"].reshape(4, -1), model(last_frame_first), atol=1e-5
    )
    np.testing.assert_allclose(logits["forward"]["model"].reshape(4, -1), model(flat), atol=1e-6)


def test_kvid_eval_writes_json_and_confusion_pngs(qat_workdir, helpers, monkeypatch, tmp_path):
    export = os.path.join(qat_workdir, "export")
    tflite_path = os.path.join(str(tmp_path), "model_float32.tflite")
    with open(tflite_path, "wb") as f:
        f.write(convert_saved_model(load_serving_model(os.path.join(export, "float")), "float32"))
    rng = np.random.default_rng(10)
    video = rng.random((5, 2, *helpers.CLIP_SHAPE), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    seen = {}

    def eval_batches(data_dir, clip_shape, split, num_clips, num_crops, frame_stride, batch):
        seen.update(data_dir=data_dir, num_clips=num_clips, num_crops=num_crops, split=split)
        return [(video[:3], labels[:3]), (video[3:], labels[3:])]

    monkeypatch.setattr(evaluate, "eval_batches", eval_batches)
    values = flags.FlagValues()
    evaluate.define_flags(values)
    values(
        [
            "kvid-eval",
            f"--workdir={qat_workdir}",
            f"--model={tflite_path}",
            "--num_clips=2",
            "--split=test",
        ]
    )
    assert evaluate.evaluate_from_flags(values) == 0

    output_dir = os.path.join(qat_workdir, "eval")
    with open(os.path.join(output_dir, "eval_model_float32.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert seen == {"data_dir": os.path.join(qat_workdir, "data"), "num_clips": 2,
                    "num_crops": 1, "split": "test"}  # fmt: skip
    assert report["num_clips"] == 5 and report["views_per_clip"] == 2
    assert set(report["references"]) == {"float", "qat"}  # defaults from the workdir
    forward, backward = report["forward"], report["reversed"]
    # A float32 .tflite of the float SavedModel reproduces it.
    assert forward["vs_float"]["cosine_min"] > 0.9999 and forward["vs_float"]["top1_agreement"] == 1
    assert "vs_qat" in forward and "vs_float" in backward
    assert report["labels"] == helpers.LABELS and len(forward["order_pairs"]) == 2
    assert set(report["checks"]) >= {"cosine_mean_vs_float>=0.99", "top1_within_1_point_of_float"}
    for suffix in ("", "_reversed"):
        with open(os.path.join(output_dir, f"confusion_model_float32{suffix}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _write_dataset_info(data_dir: str, classes: list[str]) -> None:
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump({"classes": classes, "splits": {"test": 4}}, f)


@pytest.mark.parametrize("reorder", ["permuted", "renamed"])
def test_kvid_eval_refuses_a_dataset_with_another_label_map(
    float_workdir, helpers, tmp_path, reorder
):
    classes = list(helpers.LABELS)
    classes = classes[::-1] if reorder == "permuted" else [*classes[:-1], "something_else"]
    data_dir = str(tmp_path / "data")
    _write_dataset_info(data_dir, classes)
    values = flags.FlagValues()
    evaluate.define_flags(values)
    values(
        [
            "kvid-eval",
            f"--workdir={float_workdir}",
            f"--model={os.path.join(float_workdir, 'export', 'float')}",
            f"--data_dir={data_dir}",
        ]
    )
    with pytest.raises(evaluate.WorkdirError) as raised:
        evaluate.evaluate_from_flags(values)
    message = str(raised.value)
    # The workdir's labels (model.json: this workdir has no label_map.json) and the dataset's.
    assert message.startswith(
        f"the label map of {os.path.join(float_workdir, 'model.json')} differs from the "
        f"classes of {os.path.join(data_dir, 'dataset.json')} ("
    )
    how = "the same classes in another order" if reorder == "permuted" else "class 4 is"
    assert how in message


def test_kvid_eval_refuses_a_tflite_whose_labels_differ(tmp_path, helpers, float_workdir):
    tflite_path = str(tmp_path / "model.tflite")
    saved = load_serving_model(os.path.join(float_workdir, "export", "float"))
    with open(tflite_path, "wb") as f:
        f.write(convert_saved_model(saved, "float32"))
    with open(tflite_path[: -len(".tflite")] + ".json", "w", encoding="utf-8") as f:
        json.dump({"labels": list(helpers.LABELS)}, f)  # a sidecar as kvid-convert writes
    data_dir = str(tmp_path / "data")
    _write_dataset_info(data_dir, list(helpers.LABELS)[::-1])
    values = flags.FlagValues()
    evaluate.define_flags(values)
    values(["kvid-eval", f"--model={tflite_path}", f"--data_dir={data_dir}"])
    with pytest.raises(
        evaluate.WorkdirError, match=r"^the label map of .*model\.tflite \(its kvid"
    ):
        evaluate.evaluate_from_flags(values)
