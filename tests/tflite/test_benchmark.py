"""kvid-benchmark: latency percentiles, XNNPACK coverage by op and layer, refused BATCH_MATMULs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kvid.backend import keras
from kvid_tflite import benchmark
from tests.tflite.tflite_helpers import converter_attention


@pytest.fixture(scope="module")
def attention_tflite() -> bytes:
    return converter_attention()[2]


def test_report_times_counts_and_names_the_refused_batch_matmul(attention_tflite, tmp_path):
    report = benchmark.benchmark({"attention": attention_tflite}, threads=[1, 2], runs=5, warmup=1)
    (row,) = report["models"]
    assert row["size_bytes"] == len(attention_tflite)
    # 8x16x16 (queries) + 8x16x16 (keys) + 8x8x16 (scores) + 64x4 (head)
    assert row["gmacs"] == pytest.approx((2048 + 2048 + 1024 + 256) / 1e9)
    for threads in ("1", "2"):
        timing = row["latency"][threads]
        assert timing["runs"] == 5 and 0 < timing["min_ms"] <= timing["median_ms"]
        assert timing["median_ms"] <= timing["p90_ms"]
    xnnpack = row["xnnpack"]
    assert xnnpack["fallback_by_name"].get("BATCH_MATMUL") == 1
    assert sum(xnnpack["fallback_by_layer"].values()) == xnnpack["fallback_ops"]
    (refusal,) = row["batch_matmul_refusals"]
    assert "right-hand operand zero point -128" in refusal["reason"]
    paths = benchmark.write_report(report, str(tmp_path), "bench")
    assert [os.path.basename(p) for p in paths] == ["bench.md", "bench.json", "bench.png"]
    assert json.loads(open(paths[1]).read())["models"][0]["name"] == "attention"
    assert open(paths[2], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(paths[0]).read()
    assert "| attention |" in text and "right-hand operand zero point -128" in text


def test_command_writes_results_for_a_tflite_file(attention_tflite, tmp_path):
    model = tmp_path / "attention.tflite"
    model.write_bytes(attention_tflite)
    script = os.path.join(os.path.dirname(sys.executable), "kvid-benchmark")
    result = subprocess.run(
        [script, "--threads=1", "--runs=3", f"--output_dir={tmp_path / 'out'}", "--name=b",
         str(model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| attention |" in result.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["b.json", "b.md", "b.png"]


def test_unknown_model_names_itself():
    with pytest.raises(ValueError, match="no_such_preset: neither a .tflite file nor a preset"):
        benchmark.load_model("no_such_preset")
    with pytest.raises(ValueError, match="missing.tflite: no such .tflite file"):
        benchmark.load_model("missing.tflite")


def _clip_model(frames: int, height: int, width: int, num_classes: int = 3) -> keras.Model:
    inputs = keras.Input((frames, height, width, 3), batch_size=1)
    x = keras.layers.Reshape((frames * height, width, 3))(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def test_movinet_rows_come_at_each_clip_input_or_say_why_not(attention_tflite, monkeypatch):
    clip_tflite = benchmark.random_weights_tflite(_clip_model(4, 16, 16), calibration_clips=2)
    assert benchmark.clip_input(clip_tflite) == (4, 16, 16)
    # No model takes a clip: nothing to compare with.
    assert benchmark.movinet_rows({"attention": attention_tflite}) == (
        {},
        "no model takes a (1, T, H, W, 3) clip",
    )
    built = []

    def fake_movinet(frames, height, width, num_classes=400):
        built.append((frames, height, width, num_classes))
        return _clip_model(frames, height, width, num_classes)

    monkeypatch.setattr(benchmark, "movinet_a0_model", fake_movinet)
    rows, reason = benchmark.movinet_rows(
        {"a": clip_tflite, "b": clip_tflite, "attention": attention_tflite}, num_classes=5
    )
    assert reason is None and built == [(4, 16, 16, 5)]  # one row per distinct clip input
    (name,) = rows
    assert name == "movinet_a0_relu@4x16x16"
    assert benchmark.clip_input(rows[name]) == (4, 16, 16)

    def missing(*args, **kwargs):
        raise ImportError("No module named 'official'")

    monkeypatch.setattr(benchmark, "movinet_a0_model", missing)
    rows, reason = benchmark.movinet_rows({"a": clip_tflite})
    assert rows == {} and "official.projects.movinet is not importable" in reason


def test_smooth_clips_have_distinct_patches_and_are_reproducible():
    """Calibration clips for random weights must be drawn like the clips compared on: a smooth
    field, not a periodic tile whose patches are all alike (that left LayerNorm variance ranges
    too narrow for smooth clips)."""
    first, second = benchmark.smooth_clips((2, 32, 32, 3), 2, seed=3)
    assert first.shape == (1, 2, 32, 32, 3) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    patches = first[0, 0].reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1)
    assert len(np.unique(patches.round(5), axis=0)) == 16
    assert np.abs(np.diff(first[0, 0], axis=0)).mean() < 0.1  # low frequency
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(benchmark.smooth_clips((2, 32, 32, 3), 1, seed=3)[0], first)


def test_random_weights_tflite_calibrates_on_the_given_clips():
    from kvid_tflite.litert import TFLiteModel

    model = _clip_model(4, 16, 16)
    default = TFLiteModel(benchmark.random_weights_tflite(model, calibration_clips=2))
    dim = [0.25 * clip for clip in benchmark.smooth_clips((4, 16, 16, 3), 2)]
    given = TFLiteModel(benchmark.random_weights_tflite(model, clips=dim))
    default_scale, given_scale = default.input_quantization[0], given.input_quantization[0]
    assert given_scale == pytest.approx(0.25 * default_scale, rel=0.1)
