"""TFLiteModel: quantization arithmetic, parity with Keras, batching, introspection."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from kvid_tflite.convert import convert_saved_model
from kvid_tflite.litert import TFLiteModel, dequantize, quantize, read_operator_codes
from kvid_tflite.saved_model import load_serving_model

# float32 TFLite vs TF on the same graph: only summation order differs.
FLOAT_RTOL, FLOAT_ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def float_tflite(float_workdir) -> bytes:
    return convert_saved_model(
        load_serving_model(os.path.join(float_workdir, "export", "float")), "float32"
    )


@pytest.fixture(scope="module")
def int8_tflite(float_workdir, helpers) -> bytes:
    model = load_serving_model(os.path.join(float_workdir, "export", "float"))
    return convert_saved_model(model, "int8", lambda: iter(helpers.random_clips(16, seed=3)))


def test_quantize_is_affine_round_and_clip():
    values = np.array([0.0, 0.6, 1.0, 2.0, -1.0], np.float32)
    quantized = quantize(values, scale=1 / 255, zero_point=-128, dtype=np.int8)
    # 0.6 * 255 = 153 -> 153 - 128 = 25; 2.0 and -1.0 saturate at the int8 limits.
    np.testing.assert_array_equal(quantized, [-128, 25, 127, 127, -128])
    assert quantized.dtype == np.int8
    np.testing.assert_allclose(dequantize(quantized[:3], 1 / 255, -128), [0, 0.6, 1], atol=1e-6)


def test_float_tflite_matches_keras(float_model, float_tflite, helpers):
    model = TFLiteModel(float_tflite)
    video = np.concatenate(helpers.random_clips(3, seed=4))
    expected = float_model(video, training=False).numpy()
    np.testing.assert_allclose(model(video), expected, rtol=FLOAT_RTOL, atol=FLOAT_ATOL)


def test_batch_one_model_runs_clip_by_clip(int8_tflite, helpers):
    model = TFLiteModel(int8_tflite, num_threads=1)
    assert model.input_shape == (1, *helpers.CLIP_SHAPE)
    video = np.concatenate(helpers.random_clips(3, seed=5))
    batched = model(video)
    assert batched.shape == (3, helpers.NUM_CLASSES) and batched.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(batched[i : i + 1], model(video[i : i + 1]))


def test_int8_wrapper_quantizes_input_and_dequantizes_output(int8_tflite, helpers):
    model = TFLiteModel(int8_tflite)
    assert model.input_dtype == np.int8 and model.output_dtype == np.int8
    scale, zero_point = model.input_quantization
    assert scale == pytest.approx(1 / 255, rel=1e-3) and zero_point == -128
    clip = helpers.random_clips(1, seed=6)[0]
    raw = model.invoke_raw(model.quantize_input(clip))
    assert raw.dtype == np.int8
    out_scale, out_zero_point = model.output_quantization
    np.testing.assert_allclose(model(clip), (raw.astype(np.float32) - out_zero_point) * out_scale)
    with pytest.raises(TypeError):
        model.invoke_raw(clip)  # float into an int8 input


def test_latency_and_introspection(int8_tflite):
    model = TFLiteModel(int8_tflite, num_threads=2)
    latency = model.latency(runs=3, warmup=1)
    assert math.isfinite(latency) and latency > 0
    assert model.signature_list() == {
        "serving_default": {"inputs": ["video"], "outputs": ["logits"]}
    }
    names = [code["name"] for code in read_operator_codes(int8_tflite)]
    assert names == [op["op_name"] for op in model.ops_details()]
    assert all(code["version"] >= 1 for code in read_operator_codes(int8_tflite))
