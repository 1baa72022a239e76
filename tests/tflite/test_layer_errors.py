"""Per-layer error metrics: closed-form values, budget logic, and both measuring methods."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from kvid_tflite import layer_errors
from kvid_tflite.convert import convert_saved_model, make_converter
from kvid_tflite.saved_model import load_serving_model


def test_metrics_closed_form():
    quantized = np.array([0, 1, 2, 3], np.int8)
    reference = np.array([0.05, 0.1, 0.2, 0.3])  # only the first element is off, by half a step
    metrics = layer_errors.tensor_error_metrics(reference, quantized, scale=0.1, zero_point=0)
    rmse = math.sqrt(0.05**2 / 4)
    assert metrics["rmse_steps"] == pytest.approx(rmse / 0.1)  # 0.25 steps
    assert metrics["relative_rmse"] == pytest.approx(rmse / math.sqrt(np.mean(reference**2)))
    assert metrics["max_abs_steps"] == pytest.approx(0.5)
    assert metrics["clipped_fraction"] == 0.0


def test_metrics_see_saturation_and_exact_zero():
    # int8 with scale 0.1, zero point 0 represents [-12.8, 12.7]; 20.0 and -13.0 saturate.
    quantized = np.array([127, -128, 5, 5], np.int8)
    reference = np.array([20.0, -13.0, 0.5, 0.5])
    metrics = layer_errors.tensor_error_metrics(reference, quantized, 0.1, 0)
    assert metrics["clipped_fraction"] == 0.5
    assert metrics["max_abs_steps"] == pytest.approx(73.0)
    zero = layer_errors.tensor_error_metrics(np.zeros(3), np.zeros(3, np.int8), 0.1, 0)
    assert zero["rmse_steps"] == 0.0 and zero["relative_rmse"] == 0.0


def _layer(name, rmse_steps, relative_rmse):
    return {
        "tensor": name,
        "op": "CONV_2D",
        "scale": 0.1,
        "rmse_steps": rmse_steps,
        "relative_rmse": relative_rmse,
        "max_abs_steps": 1.0,
        "clipped_fraction": 0.0,
    }


def test_budget_flags_each_limit_and_nan():
    layers = [
        _layer("ok", 0.3, 0.01),
        _layer("noisy", 1.5, 0.01),
        _layer("coarse", 0.2, 0.5),  # small error in steps, but the signal is a few steps
        _layer("unmeasured", math.nan, 0.01),
    ]
    over = layer_errors.check_budget(layers, max_rmse_steps=1.0, max_relative_rmse=0.1)
    assert [layer["tensor"] for layer in over] == ["noisy", "coarse", "unmeasured"]
    assert over[0]["reasons"] == ["rmse 1.50 steps > 1.0"]
    assert over[1]["reasons"] == ["relative rmse 0.500 > 0.1"]
    report = layer_errors.layer_error_report(layers, "test", "ref", num_clips=2, top=2)
    assert not report["passed"]
    assert [layer["tensor"] for layer in report["top_offenders"]] == ["unmeasured", "coarse"]
    assert layer_errors.layer_error_report(layers[:1], "test", "ref", 2)["passed"]
    # Nothing measured is not a pass.
    assert not layer_errors.layer_error_report([], "test", "ref", 2)["passed"]


def test_debugger_and_tensor_match_agree_on_layer_local_input_error(float_workdir, helpers):
    """The input RESHAPE's error is pure input rounding for both methods: 1/sqrt(12) steps."""
    model = load_serving_model(os.path.join(float_workdir, "export", "float"))
    calibration = helpers.random_clips(16, seed=7)
    clips = helpers.random_clips(4, seed=8)
    debugger = layer_errors.debugger_layer_errors(
        make_converter(model, "int8", lambda: iter(calibration), float_io=True), clips
    )
    matched = layer_errors.tensor_match_layer_errors(
        convert_saved_model(model, "int8", lambda: iter(calibration)),
        convert_saved_model(model, "float32"),
        clips,
    )
    for layers in (debugger, matched):
        assert layers[0]["op"] == "RESHAPE"
        assert layers[0]["rmse_steps"] == pytest.approx(12**-0.5, abs=0.01)
    # Same quantized tensors, same order (the final logits tensor included).
    assert [layer["op"] for layer in matched] == [layer["op"] for layer in debugger]
    # Debugger records carry the deployed model's tensor names (the logits output aside).
    assert [layer["tensor"] for layer in matched][:-1] == [layer["tensor"] for layer in debugger][
        :-1
    ]
    # Layer-local errors of a clean PTQ model are within budget; end-to-end errors (tensor
    # matching on a PTQ model) accumulate downstream, so they are never smaller at the logits.
    assert layer_errors.check_budget(debugger) == []
    assert matched[-1]["rmse_steps"] > debugger[-1]["rmse_steps"]


def test_debugger_errors_are_read_without_the_xnnpack_delegate(tmp_path, helpers):
    """Regression: QuantizationDebugger.run() reads int8 BATCH_MATMUL outputs that XNNPACK never
    wrote back (19-30 steps RMS on this model); run without the delegate they are plain rounding."""
    path = helpers.save_serving(helpers.build_classifier("attention"), str(tmp_path / "sm"))
    model = load_serving_model(path)
    calibration = helpers.random_clips(16, seed=1)
    converter = make_converter(model, "int8", lambda: iter(calibration), float_io=True)
    layers = layer_errors.debugger_layer_errors(converter, helpers.random_clips(4, seed=2))
    matmuls = [layer for layer in layers if layer["op"] == "BATCH_MATMUL"]
    assert len(matmuls) == 2
    for layer in matmuls:
        assert layer["rmse_steps"] == pytest.approx(12**-0.5, abs=0.05)
    # The only layer over budget is the int8 SOFTMAX over 128 keys, by the relative limit: its
    # fixed 1/256 output scale leaves each probability (about 1/128) a couple of steps
    # (docs/design.md section 7), while its error in steps stays at rounding level.
    (over,) = layer_errors.check_budget(layers)
    assert over["op"] == "SOFTMAX" and over["reasons"][0].startswith("relative rmse")
