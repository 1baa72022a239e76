"""The Edge TPU compiler's output read from published logs, and `kvid-convert --edgetpu` with the
compiler absent and with a stand-in `edgetpu_compiler` on PATH that prints a published log.

The fixtures are real compiler output from public threads (fixtures/edgetpu_compiler/README.md
names each source); the expectations below are read off those texts.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap

import numpy as np
import pytest
from absl import app

from kvid_tflite import edgetpu_compiler
from kvid_tflite.audit import audit_model
from kvid_tflite.edgetpu_compiler import parse_compiler_log
from kvid_tflite.litert import TFLiteModel
from tests.helpers import read_json, run_kvid_convert

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "edgetpu_compiler")
UNSPECIFIED = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
SUBGRAPH = "More than one subgraph is not supported"
DATA_TYPE = "Operation is working on an unsupported data type"


def _log(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def test_complete_table_adds_up_to_the_compilers_counts():
    log = parse_compiler_log(_log("coral_edgetpu_342.log"))
    assert (log["ops_on_edgetpu"], log["ops_on_cpu"]) == (2, 153)
    assert (log["mapped_ops"], log["not_mapped_ops"]) == (2, 153)
    assert [row["op"] for row in log["operators"]][:3] == ["TRANSPOSE", "FULLY_CONNECTED", "PAD"]
    assert log["by_op"]["TRANSPOSE"] == {
        "mapped": 0,
        "not_mapped": 70,
        "reasons": {"Operation not supported": 70},
    }
    assert log["by_op"]["PAD"]["mapped"] == 1 and log["by_op"]["PAD"]["not_mapped"] == 17
    assert log["by_op"]["QUANTIZE"]["reasons"] == {UNSPECIFIED: 1}
    assert log["reasons"][SUBGRAPH] == 1 + 17 + 10 + 2 + 35 + 17


def test_reasons_per_op_type_and_an_op_both_mapped_and_not():
    log = parse_compiler_log(_log("coral_edgetpu_490.log"))
    assert log["total_ops"] == 267 and (log["ops_on_edgetpu"], log["ops_on_cpu"]) == (261, 6)
    assert log["by_op"]["DEQUANTIZE"]["reasons"] == {DATA_TYPE: 2}
    assert log["by_op"]["LOGISTIC"]["reasons"] == {UNSPECIFIED: 1}
    assert log["by_op"]["CONCATENATION"] == {
        "mapped": 1,
        "not_mapped": 1,
        "reasons": {SUBGRAPH: 1},
    }
    assert log["by_op"]["DEPTHWISE_CONV_2D"] == {"mapped": 80, "not_mapped": 0, "reasons": {}}
    exp = parse_compiler_log(_log("pinto_openvino2tensorflow_21.log"))["by_op"]["EXP"]
    assert exp == {"mapped": 0, "not_mapped": 6, "reasons": {DATA_TYPE: 6}}


def test_stdout_summary_without_a_table():
    log = parse_compiler_log(_log("coral_edgetpu_433.log"))
    assert log["compiler_version"] == "16.0.384591198" and log["compiled"]
    assert log["input_model"] == "inference_proxy_mobilenet_quantized_v2.tflite"
    assert log["output_model"] == "inference_proxy_mobilenet_quantized_v2_edgetpu.tflite"
    assert log["on_chip_memory_used"] == "80.00KiB" and log["num_subgraphs"] == 1
    assert (log["total_ops"], log["ops_on_edgetpu"], log["ops_on_cpu"]) == (191, 1, 190)
    assert log["operators"] == [] and log["failure"] is None


def test_a_fully_mapped_compilation_counts_every_op_on_the_edgetpu():
    log = parse_compiler_log(_log("yolov7_1672.log"))
    assert log["compiled"] and log["total_ops"] == 246
    assert (log["ops_on_edgetpu"], log["ops_on_cpu"]) == (246, 0)  # no "not all operations" line
    assert log["operators"] and all(row["mapped"] for row in log["operators"])
    assert log["by_op"]["LOGISTIC"]["mapped"] == 64


def test_log_file_header():
    log = parse_compiler_log(_log("ultralytics_hub_1136.log"))
    assert log["input_model"].endswith("yolov8s-face-lindevs_full_integer_quant.tflite")
    assert log["output_model"].endswith("_full_integer_quant_edgetpu.tflite")
    assert log["by_op"]["MUL"] == {"mapped": 15, "not_mapped": 272, "reasons": {SUBGRAPH: 272}}
    assert log["by_op"]["STRIDED_SLICE"]["reasons"] == {UNSPECIFIED: 2, SUBGRAPH: 16}


@pytest.mark.parametrize(
    "name, failure, error",
    [
        (
            "coral_edgetpu_845.log",
            "Invalid model: model_full_integer_quant.tflite",
            "Didn't find op for builtin opcode 'TRANSPOSE_CONV' version '4'",
        ),
        (
            "coral_edgetpu_512.log",
            "Compilation failed: Compilation failed due to large activation tensors in model.",
            "Restored original execution plan",
        ),
    ],
)
def test_refused_models(name, failure, error):
    log = parse_compiler_log(_log(name))
    assert not log["compiled"] and log["failure"] == failure
    assert any(error in line for line in log["errors"])
    assert log["operators"] == []


# ------------------------------------------------------------------------------------------------
# The report beside a model: compiler absent, or a stand-in on PATH
# ------------------------------------------------------------------------------------------------
def _fake_compiler(folder, log_name: str, exit_code: int = 0) -> str:
    """An `edgetpu_compiler` that prints a published log and, on success, writes the compiled
    model (a copy) and the operation log where the real one does (`-o OUT_DIR`)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "edgetpu_compiler")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            textwrap.dedent(
                f"""\
                #!{sys.executable}
                import os, shutil, sys
                args = sys.argv[1:]
                out_dir, model = args[args.index("-o") + 1], args[-1]
                text = open({os.path.join(FIXTURES, log_name)!r}).read()
                print(text)
                if {exit_code} == 0:
                    stem = os.path.splitext(os.path.basename(model))[0]
                    shutil.copy(model, os.path.join(out_dir, stem + "_edgetpu.tflite"))
                    open(os.path.join(out_dir, stem + "_edgetpu.log"), "w").write(text)
                sys.exit({exit_code})
                """
            )
        )
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert edgetpu_compiler.find_compiler() is None


@pytest.fixture(scope="module")
def stacked_workdir(tmp_path_factory, helpers):
    """A PTQ workdir (the helpers' conv2d classifier) and random clips for kvid-convert."""
    return helpers.write_workdir(
        str(tmp_path_factory.mktemp("edgetpu_workdir")), helpers.build_classifier("conv2d")
    )


@pytest.fixture
def clip_sources(monkeypatch, helpers):
    from kvid_tflite import convert

    def load_clip_sources(data_dir, clip_shape, frame_stride, num_calibration, num_test):
        calibration = helpers.random_clips(4, seed=1)
        return (lambda: iter(calibration)), helpers.random_clips(4, seed=2)

    monkeypatch.setattr(convert, "load_clip_sources", load_clip_sources)


def _convert_edgetpu(workdir: str) -> tuple[int, str]:
    code = run_kvid_convert(f"--workdir={workdir}", "--int8", "--edgetpu", "--num_debug_clips=2")
    return code, os.path.join(workdir, "export", "model_int8_edgetpu")


def test_convert_edgetpu_without_the_compiler_says_it_did_not_compile(
    stacked_workdir, clip_sources, no_compiler, helpers, capsys
):
    code, stem = _convert_edgetpu(stacked_workdir)
    assert code == 0
    frames, height, width, _ = helpers.CLIP_SHAPE
    model = TFLiteModel(stem + ".tflite")
    assert model.input_shape == (1, frames * height, width, 3)  # frame-stacked, batch 1
    assert model.input_dtype == np.int8 and model.output_dtype == np.int8
    assert not os.path.exists(stem + "_edgetpu.tflite")

    report = read_json(stem + ".edgetpu.json")
    assert report["compiler"] == {
        "available": False,
        "compiled": False,
        "message": report["compiler"]["message"],
    }
    assert "not on PATH: the model was not compiled" in report["compiler"]["message"]
    assert "coral-edgetpu-stable" in report["compiler"]["message"]
    rules = report["rule_check"]
    ops = [op["name"] for op in audit_model(stem + ".tflite")["ops"]]
    assert rules["num_ops"] == len(ops)
    assert {op: sum(e.values()) for op, e in rules["by_op"].items()} == {
        op: ops.count(op) for op in ops
    }
    with open(stem + ".edgetpu.md", encoding="utf-8") as f:
        markdown = f.read()
    assert "not on PATH" in markdown and f"| {ops[0]} |" in markdown
    out = capsys.readouterr().out
    assert "edgetpu_compiler is not on PATH" in out and "Edge TPU rule check" in out


def test_convert_edgetpu_reports_the_compilers_table(
    stacked_workdir, clip_sources, monkeypatch, tmp_path
):
    _fake_compiler(tmp_path / "bin", "coral_edgetpu_490.log")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    code, stem = _convert_edgetpu(stacked_workdir)
    assert code == 0
    report = read_json(stem + ".edgetpu.json")
    compiler = report["compiler"]
    assert compiler["available"] and compiler["compiled"]
    assert compiler["compiled_model"] == stem + "_edgetpu.tflite"
    assert compiler["command"][1:4] == ["-s", "-o", os.path.dirname(stem + ".tflite")]
    assert compiler["by_op"]["LOGISTIC"]["reasons"] == {UNSPECIFIED: 1}
    assert (compiler["ops_on_edgetpu"], compiler["ops_on_cpu"]) == (261, 6)
    with open(stem + ".edgetpu.md", encoding="utf-8") as f:
        markdown = f.read()
    assert f"| DEQUANTIZE | 0 | 0 | 0 | 2 ({DATA_TYPE}) |" in markdown


def test_convert_edgetpu_fails_when_the_compiler_refuses(
    stacked_workdir, clip_sources, monkeypatch, tmp_path, capsys
):
    _fake_compiler(tmp_path / "bin", "coral_edgetpu_845.log", exit_code=1)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    code, stem = _convert_edgetpu(stacked_workdir)
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "FAILURE" in line]
    assert len(errors) == 1 and "Invalid model" in errors[0]
    compiler = read_json(stem + ".edgetpu.json")["compiler"]
    assert compiler["returncode"] == 1 and compiler["compiled_model"] is None
    assert not compiler["compiled"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--float16", "--edgetpu"], "--edgetpu needs --int8"),
        (["--int8", "--edgetpu", "--input_layout=clip"], "--edgetpu takes --input_layout"),
    ],
)
def test_edgetpu_usage_errors(stacked_workdir, args, message):
    with pytest.raises(app.UsageError, match=message):
        run_kvid_convert(f"--workdir={stacked_workdir}", *args)
