"""Op audit: float ops are found and named; clean int8 and float16 weights are not flagged."""

from __future__ import annotations

import os

import pytest

from kvid_tflite import audit
from kvid_tflite.convert import convert_saved_model
from kvid_tflite.saved_model import load_serving_model


def _convert(workdir: str, mode: str, helpers) -> bytes:
    model = load_serving_model(os.path.join(workdir, "export", "float"))
    return convert_saved_model(model, mode, lambda: iter(helpers.random_clips(8, seed=0)))


@pytest.fixture(scope="module")
def conv3d_int8(conv3d_workdir, helpers) -> bytes:
    return _convert(conv3d_workdir, "int8", helpers)


def test_conv3d_stays_float_inside_int8_and_is_named_first(conv3d_int8, tmp_path):
    result = audit.audit_model(conv3d_int8)
    by_index = {op["index"]: op for op in result["ops"]}
    flagged = [by_index[i]["name"] for i in result["float_ops"]]
    # The converter leaves CONV_3D in float32, wrapped in DEQUANTIZE / QUANTIZE (docs/design.md
    # section 2).
    assert flagged == ["DEQUANTIZE", "CONV_3D", "QUANTIZE"]
    assert result["counts"]["CONV_3D:float32"] == 1
    conv3d = next(op for op in result["ops"] if op["name"] == "CONV_3D")
    assert conv3d["version"] >= 1
    assert [t["dtype"] for t in conv3d["inputs"]] == ["float32", "float32"]
    problems = audit.int8_problems(result)
    assert problems[0].startswith("float op CONV_3D")  # the compute op, not its wrappers
    with pytest.raises(
        audit.AuditError, match=r"FAILED \(3 float op\(s\) of 5\): float op CONV_3D"
    ):
        audit.check_int8(result)

    path = tmp_path / "conv3d.tflite"
    path.write_bytes(conv3d_int8)
    assert audit.main([str(path), "--int8"]) == 1


def test_clean_int8_model_passes(float_workdir, tmp_path, helpers):
    model = _convert(float_workdir, "int8", helpers)
    result = audit.audit_model(model)
    assert result["float_ops"] == []
    assert audit.int8_problems(result) == []
    audit.check_int8(result)  # does not raise
    assert {t["dtype"] for t in result["inputs"] + result["outputs"]} == {"int8"}
    assert set(result["counts"]) == {
        "RESHAPE:int8",
        "CONV_2D:int8",
        "MEAN:int8",
        "FULLY_CONNECTED:int8",
    }
    path = tmp_path / "clean.tflite"
    path.write_bytes(model)
    assert audit.main([str(path), "--int8"]) == 0


def test_float16_weight_dequantize_is_not_a_float_op(float_workdir, helpers):
    result = audit.audit_model(_convert(float_workdir, "float16", helpers))
    dequantize = [op for op in result["ops"] if op["name"] == "DEQUANTIZE"]
    assert dequantize and all(op["inputs"][0]["dtype"] == "float16" for op in dequantize)
    assert all(op["inputs"][0]["constant"] for op in dequantize)
    assert not any(op["float"] for op in dequantize)
    # ... but the float32 compute ops are, and the int8 contract names the float input first.
    names = {op["name"] for op in result["ops"] if op["float"]}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= names
    assert audit.int8_problems(result)[0].startswith(
        "model input 'serving_default_video:0' is float32"
    )
