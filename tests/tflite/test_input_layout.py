"""kvid-convert --input_layout=frame_stacked: the Edge TPU input `(1, T * H, W, 3)`, and kvid-eval
reading the layout from the sidecar.

The model is a small posmlp_video_tiny_edgetpu at the test clip shape (4, 16, 16, 3), whose first
op frame-stacks the clip. Its positional-gating tables get weight so that its logits depend on
frame order and on which rows belong to which frame: a stacking by the wrong rule (frames
interleaved row by row, or in the wrong order) gives other logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

import kvid.models
from kvid.data.workdir import WorkdirError
from kvid.models.posmlp.positional_gating import PositionalGating
from kvid_tflite import convert, edgetpu, evaluate
from kvid_tflite.audit import audit_model
from kvid_tflite.litert import (
    TFLiteModel,
    embed_metadata,
    read_input_layout,
    read_operator_codes,
    stack_frames,
)
from kvid_tflite.metrics import cosine_similarity
from kvid_tflite.saved_model import load_serving_model
from tests.helpers import read_json, run_kvid_convert

SIGNATURE = {"serving_default": {"inputs": ["video"], "outputs": ["logits"]}}


def _build_posmlp(helpers):
    frames, size, _, _ = helpers.CLIP_SHAPE
    model = kvid.models.create(
        "posmlp_video_tiny_edgetpu", num_classes=helpers.NUM_CLASSES, num_frames=frames,
        image_size=size, embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), gammas=(4, 8, 8, 8),
        downsample=(True, False, False), window_sizes=(None,) * 4, dropout_rate=0.0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for layer in model.layers:  # the tables start near 0: give them weight
        if isinstance(layer, PositionalGating):
            layer.table.assign(rng.standard_normal(layer.table.shape) * 0.3)
            layer.token_bias.assign(rng.standard_normal(layer.token_bias.shape))
    return model


@pytest.fixture(scope="module")
def posmlp_exports(tmp_path_factory, helpers):
    """A PTQ workdir of the posmlp model, exported in both layouts under the default names."""
    workdir = helpers.write_workdir(
        str(tmp_path_factory.mktemp("posmlp_workdir")), _build_posmlp(helpers)
    )

    def clip_sources(data_dir, clip_shape, frame_stride, num_calibration, num_test):
        assert tuple(clip_shape) == helpers.CLIP_SHAPE  # the pipeline always reads clips
        calibration = helpers.random_clips(num_calibration, seed=1)
        return (lambda: iter(calibration)), helpers.random_clips(num_test, seed=2)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert, "load_clip_sources", clip_sources)
        common = (f"--workdir={workdir}", "--int8", "--num_test_clips=8", "--num_debug_clips=4")
        assert run_kvid_convert(*common) == 0
        assert run_kvid_convert(*common, "--input_layout=frame_stacked") == 0
    export = os.path.join(workdir, "export")
    return (
        workdir,
        os.path.join(export, "model_int8"),
        os.path.join(export, "model_int8_frame_stacked"),
    )


def _activations_over_3_dims(path: str) -> list:
    audit = audit_model(path)
    tensors = audit["inputs"] + [t for op in audit["ops"] for t in op["outputs"]]
    return [t["shape"] for t in tensors if sum(d > 1 for d in t["shape"]) > 3]


def test_frame_stacked_int8_export_maps_to_the_edgetpu_and_matches_the_clip_export(
    posmlp_exports, helpers
):
    _, clip_stem, stacked_stem = posmlp_exports
    frames, height, width, _ = helpers.CLIP_SHAPE
    clip_model = TFLiteModel(clip_stem + ".tflite")
    stacked = TFLiteModel(stacked_stem + ".tflite")
    assert clip_model.input_shape == (1, frames, height, width, 3)
    assert stacked.input_shape == (1, frames * height, width, 3)
    assert stacked.input_dtype == np.int8 and stacked.output_dtype == np.int8
    assert stacked.signature_list() == SIGNATURE
    assert audit_model(stacked_stem + ".tflite")["float_ops"] == []

    # The wrapper's reshape and the model's frame_stack reshape cancel: the same ops minus the
    # leading RESHAPE, and no activation keeps 4 dimensions above 1.
    clip_ops = [op["name"] for op in read_operator_codes(clip_model.model_content)]
    stacked_ops = [op["name"] for op in read_operator_codes(stacked.model_content)]
    assert clip_ops[0] == "RESHAPE" and stacked_ops == clip_ops[1:]
    assert _activations_over_3_dims(clip_stem + ".tflite") == [[1, frames, height, width, 3]]
    assert _activations_over_3_dims(stacked_stem + ".tflite") == []
    assert max(len(t["shape"]) for t in stacked.tensor_details()) <= 4

    clip_check = edgetpu.check_edgetpu(clip_model.model_content)
    assert clip_check["cut"]["index"] == 0 and clip_check["cut"]["op"] == "RESHAPE"
    check = edgetpu.check_edgetpu(stacked.model_content)
    assert check["passed"] and check["cut"] is None
    assert check["op_share"] == 1.0 and check["mac_share"] == 1.0

    # Same int8 logits for the same clips, stacked along the height axis.
    clips = np.concatenate(helpers.random_clips(6, seed=5))
    logits = clip_model(clips)
    scale = clip_model.output_quantization[0]
    stacked_input = clips.reshape(6, frames * height, width, 3)
    assert np.abs(stacked(stacked_input) - logits).max() <= 1.01 * scale  # int8 steps
    assert cosine_similarity(stacked(stacked_input), logits).min() >= 0.99
    # The comparison tells stackings apart: frames interleaved row by row, or in reverse order.
    interleaved = clips.transpose(0, 2, 1, 3, 4).reshape(stacked_input.shape)
    reversed_order = clips[:, ::-1].reshape(stacked_input.shape)
    for wrong in (interleaved, reversed_order):
        assert cosine_similarity(stacked(wrong), logits).min() < 0.9

    # Given the clip shape, the model takes clips and stacks them itself.
    stacked_clips = TFLiteModel(stacked_stem + ".tflite", clip_shape=helpers.CLIP_SHAPE)
    assert stacked_clips.input_layout == "frame_stacked"
    np.testing.assert_array_equal(stacked_clips(clips), stacked_clips(stack_frames(clips)))
    np.testing.assert_array_equal(stacked_clips(clips), clip_model(clips))


def test_frame_stacked_sidecar_and_report(posmlp_exports, helpers):
    _, clip_stem, stacked_stem = posmlp_exports
    frames, height, width, _ = helpers.CLIP_SHAPE
    side = read_json(stacked_stem + ".json")["input"]
    assert side["input_layout"] == "frame_stacked"
    assert side["shape"] == [1, frames * height, width, 3]
    assert side["num_frames"] == frames and side["image_size"] == [height, width]
    assert read_input_layout(stacked_stem + ".tflite") == ("frame_stacked", helpers.CLIP_SHAPE)
    assert read_input_layout(clip_stem + ".tflite") == ("clip", helpers.CLIP_SHAPE)

    clip_report = read_json(clip_stem + ".report.json")
    report = read_json(stacked_stem + ".report.json")
    assert report["audit"]["passed"] and report["input"]["activations_over_3_dims"] == []
    assert clip_report["input"]["activations_over_3_dims"][0].startswith("input: ")
    # The references ran on the clips, the .tflite on the stacked clips: the same numbers.
    for key in ("cosine_mean", "cosine_min", "top1_agreement"):
        assert report["fidelity"]["float"][key] == pytest.approx(
            clip_report["fidelity"]["float"][key], abs=1e-6
        )
    assert report["fidelity"]["float"]["cosine_mean"] > 0.98
    # The debugger's per-layer errors, on stacked debug clips: the clip model's, minus its RESHAPE.
    layers = report["layer_errors"]
    assert layers["method"] == "quantization_debugger"
    clip_layers = clip_report["layer_errors"]["layers"]
    assert clip_layers[0]["op"] == "RESHAPE"
    assert [layer["op"] for layer in layers["layers"]] == [layer["op"] for layer in clip_layers[1:]]
    # The first op of each absorbs the input rounding; every later one sees the same errors.
    for mine, theirs in zip(layers["layers"][1:], clip_layers[2:]):
        assert mine["tensor"] == theirs["tensor"]
        assert mine["rmse_steps"] == pytest.approx(theirs["rmse_steps"], rel=1e-3, abs=1e-6)


def test_kvid_eval_reads_the_layout_from_the_sidecar(
    posmlp_exports, helpers, monkeypatch, tmp_path
):
    workdir, clip_stem, stacked_stem = posmlp_exports
    rng = np.random.default_rng(10)
    video = rng.random((5, 2, *helpers.CLIP_SHAPE), dtype=np.float32)
    labels = np.arange(5)
    seen = []

    def eval_batches(data_dir, clip_shape, split, num_clips, num_crops, frame_stride, batch):
        seen.append(tuple(clip_shape))
        return [(video[:3], labels[:3]), (video[3:], labels[3:])]

    monkeypatch.setattr(evaluate, "eval_batches", eval_batches)

    def run_eval(model: str) -> tuple[int, dict | None]:
        values = flags.FlagValues()
        evaluate.define_flags(values)
        values(["kvid-eval", f"--workdir={workdir}", f"--model={model}", "--num_clips=2",
                "--split=test", f"--output_dir={tmp_path}"])  # fmt: skip
        code = evaluate.evaluate_from_flags(values)
        name = os.path.splitext(os.path.basename(model))[0]
        path = os.path.join(str(tmp_path), f"eval_{name}.json")
        return code, (read_json(path) if code == 0 else None)

    code, clip_report = run_eval(clip_stem + ".tflite")
    assert code == 0 and clip_report["input_layout"] == "clip"
    code, report = run_eval(stacked_stem + ".tflite")
    assert code == 0 and report["input_layout"] == "frame_stacked"
    assert seen == [helpers.CLIP_SHAPE, helpers.CLIP_SHAPE]  # T, H, W from the sidecar
    assert report["num_clips"] == 5 and report["views_per_clip"] == 2
    for order in evaluate.ORDERS:
        mine, theirs = report[order], clip_report[order]
        assert mine["confusion_matrix"] == theirs["confusion_matrix"]
        assert mine["top1"] == theirs["top1"] and mine["top5"] == theirs["top5"]
        for key in ("cosine_mean", "cosine_min", "top1_agreement"):
            assert mine["vs_float"][key] == pytest.approx(theirs["vs_float"][key], abs=1e-6)
    assert report["forward"]["vs_float"]["cosine_mean"] > 0.98  # float reference fed clips

    # Alone in a folder, the .tflite still says how many frames it holds: its metadata.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(stacked_stem + ".tflite", alone / "model.tflite")
    code, alone_report = run_eval(str(alone / "model.tflite"))
    assert code == 0 and alone_report["input_layout"] == "frame_stacked"
    assert alone_report["forward"]["top1"] == report["forward"]["top1"]
    # Without metadata and sidecar (a file from before both), a stacked .tflite cannot say it.
    bare = os.path.join(str(tmp_path), "bare.tflite")
    with open(stacked_stem + ".tflite", "rb") as f:
        stripped = embed_metadata(f.read(), None)
    with open(bare, "wb") as f:
        f.write(stripped)
    with pytest.raises(WorkdirError, match="records no input_layout"):
        run_eval(bare)


def test_unfoldable_first_op_keeps_a_reshape_and_the_values(tmp_path, helpers):
    """A model whose first op needs the clip (here a CONV_3D): the wrapper's reshape stays as op
    0, a 5-D tensor remains, and the logits are the clip layout's."""
    path = helpers.save_serving(helpers.build_classifier("conv3d"), str(tmp_path / "sm"))
    model = load_serving_model(path)
    clip = TFLiteModel(convert.convert_saved_model(model, "float32"))
    content = convert.convert_saved_model(model, "float32", input_layout="frame_stacked")
    stacked = TFLiteModel(content, clip_shape=helpers.CLIP_SHAPE)
    frames, height, width, _ = helpers.CLIP_SHAPE
    assert stacked.input_shape == (1, frames * height, width, 3)
    audit = audit_model(content)
    assert [op["name"] for op in audit["ops"]][:2] == ["RESHAPE", "CONV_3D"]
    assert audit["ops"][0]["outputs"][0]["shape"] == [1, *helpers.CLIP_SHAPE]
    assert convert.activations_over_3_dims(audit)[0].startswith("RESHAPE (op 0)")
    clips = np.concatenate(helpers.random_clips(3, seed=4))
    np.testing.assert_allclose(stacked(clips), clip(clips), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked(clips), model(clips), rtol=1e-5, atol=1e-5)


def test_frame_stacked_qat_export_matches_tensors(qat_workdir, fake_clip_sources, tmp_path):
    """The QAT path's per-layer report matches tensors against a float .tflite of the same
    layout; both layouts of the frame-stacked toy give the same report."""
    reports = {}
    for layout in ("clip", "frame_stacked"):
        output = str(tmp_path / f"{layout}.tflite")
        args = (f"--workdir={qat_workdir}", "--int8", "--num_test_clips=4", f"--output={output}")
        assert run_kvid_convert(*args, f"--input_layout={layout}") == 0
        reports[layout] = read_json(str(tmp_path / f"{layout}.report.json"))
    clip, stacked = reports["clip"]["layer_errors"], reports["frame_stacked"]["layer_errors"]
    assert stacked["method"] == "tensor_match" and stacked["num_rounding_points"] == 4
    assert stacked["without_fake_quant"] == []
    assert [layer["op"] for layer in stacked["layers"]] == [
        layer["op"] for layer in clip["layers"] if layer["op"] != "RESHAPE"
    ]
    fidelity = reports["frame_stacked"]["fidelity"]["qat"]
    assert fidelity["cosine_mean"] == pytest.approx(
        reports["clip"]["fidelity"]["qat"]["cosine_mean"], abs=1e-6
    )
    assert reports["frame_stacked"]["input"]["input_layout"] == "frame_stacked"


def test_unknown_input_layout_is_one_line_naming_the_flag(float_workdir):
    process = subprocess.run(
        [sys.executable, "-m", "kvid_tflite.convert", f"--workdir={float_workdir}", "--int8",
         "--input_layout=foo"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert process.returncode != 0
    lines = [line for line in process.stderr.splitlines() if "input_layout" in line]
    assert lines == [
        "kvid-convert: error: flag --input_layout=foo: value should be one of <clip|frame_stacked>"
    ], process.stderr[-2000:]
    with pytest.raises(ValueError, match="unknown input_layout 'foo'"):
        convert.serving_function(load_serving_model(f"{float_workdir}/export/float"), "foo")


def test_layout_needs_a_matching_clip_shape_and_a_complete_sidecar(posmlp_exports, tmp_path):
    _, _, stacked_stem = posmlp_exports
    with pytest.raises(ValueError, match=r"neither the clip \[4, 16, 8, 3\] nor its frame-stacked"):
        TFLiteModel(stacked_stem + ".tflite", clip_shape=(4, 16, 8, 3))
    side = read_json(stacked_stem + ".json")
    model = str(tmp_path / "m.tflite")  # a file converted before the metadata: the sidecar counts
    with open(stacked_stem + ".tflite", "rb") as f:
        stripped = embed_metadata(f.read(), None)
    with open(model, "wb") as f:
        f.write(stripped)
    del side["input"]["num_frames"]
    (tmp_path / "m.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match="input_layout 'frame_stacked' without num_frames"):
        read_input_layout(model)
    del side["input"]["input_layout"]  # a sidecar from before layouts: a clip-layout model
    (tmp_path / "m.json").write_text(json.dumps(side))
    assert read_input_layout(model) == ("clip", None)
