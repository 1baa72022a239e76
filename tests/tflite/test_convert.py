"""kvid-convert on fake workdirs (clips from random arrays instead of the input pipeline)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import app

from kvid.data.workdir import WorkdirError
from kvid_tflite.audit import audit_model
from kvid_tflite.litert import TFLiteModel
from tests.helpers import read_json, run_kvid_convert

SIGNATURE = {"serving_default": {"inputs": ["video"], "outputs": ["logits"]}}


def _check_int8_tflite(path: str) -> TFLiteModel:
    model = TFLiteModel(path)
    assert model.input_dtype == np.int8 and model.output_dtype == np.int8
    assert model.input_shape[0] == 1 and model.output_shape[0] == 1  # static batch 1
    assert model.signature_list() == SIGNATURE
    assert audit_model(path)["float_ops"] == []
    return model


def test_ptq_int8_from_workdir(float_workdir, fake_clip_sources, helpers, capsys):
    assert run_kvid_convert(f"--workdir={float_workdir}", "--int8", "--num_test_clips=12") == 0
    export = os.path.join(float_workdir, "export")
    model = _check_int8_tflite(os.path.join(export, "model_int8.tflite"))
    assert model.input_shape == (1, *helpers.CLIP_SHAPE)
    assert fake_clip_sources["data_dir"] == os.path.join(float_workdir, "data")

    sidecar = read_json(os.path.join(export, "model_int8.json"))
    assert sidecar["labels"] == helpers.LABELS
    assert sidecar["mode"] == "int8" and sidecar["source"] == "ptq"
    assert sidecar["input"]["shape"] == [1, *helpers.CLIP_SHAPE]
    assert sidecar["input"]["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert sidecar["input"]["zero_point"] == -128
    assert sidecar["normalization"]["mean"] == [0.5, 0.5, 0.5]

    report = read_json(os.path.join(export, "model_int8.report.json"))
    assert report["source"] == "ptq" and report["audit"]["passed"] is True
    assert report["size_bytes"] == os.path.getsize(os.path.join(export, "model_int8.tflite"))
    layers = report["layer_errors"]
    assert layers["method"] == "quantization_debugger" and layers["passed"]
    assert [layer["op"] for layer in layers["layers"]] == [
        "RESHAPE", "CONV_2D", "MEAN", "FULLY_CONNECTED", "FULLY_CONNECTED"
    ]  # fmt: skip
    # The first layer is the input quantization of uniform [0, 1) pixels: rounding error of
    # uniformly spread values is 1/sqrt(12) = 0.289 steps.
    assert layers["layers"][0]["rmse_steps"] == pytest.approx(12**-0.5, abs=0.01)
    fidelity = report["fidelity"]["float"]
    assert fidelity["num_clips"] == 12 and fidelity["cosine_mean"] > 0.99
    assert set(report["latency_ms"]) == {"1", "2"}
    assert "int8 audit PASSED" in capsys.readouterr().out


def test_qat_export_is_preferred_and_ptq_forced_beside_it(qat_workdir, fake_clip_sources):
    export = os.path.join(qat_workdir, "export")
    assert run_kvid_convert(f"--workdir={qat_workdir}", "--int8", "--num_test_clips=8") == 0
    _check_int8_tflite(os.path.join(export, "model_int8.tflite"))
    report = read_json(os.path.join(export, "model_int8.report.json"))
    assert report["source"] == "qat" and report["saved_model"].endswith("export/qat")
    # The debugger cannot instrument a QAT model: tensors are matched against its float twin.
    layers = report["layer_errors"]
    assert layers["method"] == "tensor_match" and layers["num_layers"] >= 4
    assert {"CONV_2D", "FULLY_CONNECTED"} <= {layer["op"] for layer in layers["layers"]}
    # tfmot put a FakeQuant after every op where this model's int8 graph rounds.
    assert layers["num_rounding_points"] == 4 and layers["without_fake_quant"] == []
    assert set(report["fidelity"]) == {"float", "qat"}
    # Loose bound: the toy's QAT ranges are still near tfmot's initial [-6, 6] (a few zero-LR
    # steps barely move the moving averages), so its int8 model is coarser than a trained one.
    assert report["fidelity"]["qat"]["cosine_mean"] > 0.98
    assert report["fidelity"]["qat"]["top1_agreement"] == 1.0

    assert (
        run_kvid_convert(f"--workdir={qat_workdir}", "--int8", "--ptq", "--num_test_clips=4") == 0
    )
    ptq = read_json(os.path.join(export, "model_int8_ptq.report.json"))
    assert ptq["source"] == "ptq" and ptq["saved_model"].endswith("export/float")
    assert os.path.exists(os.path.join(export, "model_int8.tflite"))  # QAT result kept


def test_float16_and_dynamic_range(float_workdir, fake_clip_sources, tmp_path):
    for mode in ("float16", "dynamic_range"):
        output = str(tmp_path / f"{mode}.tflite")
        assert (
            run_kvid_convert(f"--workdir={float_workdir}", f"--{mode}", f"--output={output}") == 0
        )
        model = TFLiteModel(output)
        assert model.input_dtype == np.float32 and model.output_dtype == np.float32
        assert model.signature_list() == SIGNATURE
        report = read_json(str(tmp_path / f"{mode}.report.json"))
        assert report["mode"] == mode and report["source"] == "float"
        assert report["audit"]["passed"] is None and report["layer_errors"] is None
        assert report["fidelity"]["float"]["cosine_min"] > 0.999
        constants = [
            t["dtype"] for op in audit_model(output)["ops"] for t in op["inputs"] if t["constant"]
        ]
        # float16 stores weights in float16; dynamic range stores the 16x64 kernel in int8.
        assert ("float16" if mode == "float16" else "int8") in constants


def test_int8_with_float_op_fails_naming_it(conv3d_workdir):
    """Through the console-script entry point, in a fresh process: exit 1, one FAILURE line."""
    program = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from kvid_tflite import convert

        def clip_sources(data_dir, clip_shape, frame_stride, num_calibration, num_test):
            rng = np.random.default_rng(0)
            clips = [rng.random((1, *clip_shape), dtype=np.float32) for _ in range(8)]
            return (lambda: iter(clips)), clips[:4]

        convert.load_clip_sources = clip_sources  # no dataset: random calibration clips
        sys.argv = ["kvid-convert", "--workdir={conv3d_workdir}", "--int8"]
        convert.run()
        """
    )
    process = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert process.returncode == 1, process.stderr[-2000:]
    errors = [line for line in process.stderr.splitlines() if "FAILURE" in line]
    assert len(errors) == 1 and "float op CONV_3D" in errors[0], process.stderr[-2000:]
    assert "int8 audit FAILED" in process.stdout
    # The files are still written so that the audit can be read.
    report = read_json(os.path.join(conv3d_workdir, "export", "model_int8.report.json"))
    assert report["audit"]["passed"] is False and report["audit"]["num_float_ops"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of --int8, --float16, --dynamic_range (got none)"),
        (["--int8", "--float16"], "(got --int8, --float16)"),
        (["--float16", "--ptq"], "--ptq only applies to --int8"),
    ],
)
def test_usage_errors(float_workdir, args, message):
    with pytest.raises(app.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_kvid_convert(f"--workdir={float_workdir}", *args)


def test_missing_export_names_the_workdir(tmp_path, helpers):
    workdir = helpers.write_workdir(str(tmp_path))  # model.json, no export/float
    with pytest.raises(WorkdirError, match=f"workdir {workdir}: no float SavedModel"):
        run_kvid_convert(f"--workdir={workdir}", "--int8")
