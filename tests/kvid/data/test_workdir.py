"""The workdir contract: what `model_json` writes, `load_workdir` reads back; clear errors that
name the workdir and the file."""

from __future__ import annotations

import json
import os

import pytest

from kvid.data.workdir import (
    MODEL_JSON,
    WorkdirError,
    load_workdir,
    model_json,
    read_labels,
    resolve_order_pairs,
    write_json,
)

LABELS = ["class_0", "class_1", "class_2", "class_3"]


def test_model_json_reads_back_through_load_workdir(tmp_path):
    document = model_json(
        preset="vmf_tiny",
        num_classes=4,
        overrides={"num_frames": 4, "image_size": 32, "token_dim": 32},
        num_frames=4,
        image_size=(32, 48),
        frame_stride=2,
        labels=LABELS,
        order_pairs=[["class_1", "class_0"], ["class_2", "class_3"]],
        normalization={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
        data_dir="data",
    )
    write_json(str(tmp_path / MODEL_JSON), document)
    workdir = load_workdir(str(tmp_path))
    assert workdir.preset == "vmf_tiny" and workdir.num_classes == 4
    assert workdir.input_shape == (4, 32, 48, 3) and workdir.num_frames == 4
    assert workdir.image_size == (32, 48) and workdir.frame_stride == 2
    assert workdir.labels == tuple(LABELS) and workdir.order_pairs == ((1, 0), (2, 3))
    assert workdir.raw["overrides"] == {"num_frames": 4, "image_size": 32, "token_dim": 32}
    assert workdir.normalization == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert workdir.data_dir == os.path.join(str(tmp_path), "data")  # relative to the workdir
    assert workdir.float_saved_model == os.path.join(str(tmp_path), "export", "float")
    assert not workdir.has_float and not workdir.has_qat
    with pytest.raises(WorkdirError, match=f"workdir {tmp_path}: no float SavedModel"):
        workdir.require_float()


def test_load_workdir_errors(tmp_path):
    with pytest.raises(WorkdirError, match="does not exist"):
        load_workdir(str(tmp_path / "nope"))
    with pytest.raises(WorkdirError, match=f"workdir {tmp_path}: missing model.json"):
        load_workdir(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"num_classes": 2, "labels": ["a", "b"]}))
    with pytest.raises(WorkdirError, match="model.json lacks input_shape"):
        load_workdir(str(tmp_path))
    (tmp_path / "model.json").write_text(
        json.dumps({"num_classes": 3, "labels": ["a", "b"], "input_shape": [4, 8, 8, 3]})
    )
    with pytest.raises(WorkdirError, match="2 labels but num_classes=3"):
        load_workdir(str(tmp_path))


def test_read_labels_text_and_json(tmp_path):
    (tmp_path / "labels.txt").write_text("zoom_in\nzoom_out\n\n")
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["a", "b"]}))
    assert read_labels(str(tmp_path / "labels.txt")) == ["zoom_in", "zoom_out"]
    assert read_labels(str(tmp_path / "labels.json")) == ["a", "b"]


def test_order_pairs_accept_class_names():
    assert resolve_order_pairs([["class_1", "class_0"], [2, 3]], LABELS) == ((1, 0), (2, 3))
    with pytest.raises(WorkdirError, match="'walk' is not a class"):
        resolve_order_pairs([["class_1", "walk"]], LABELS)
