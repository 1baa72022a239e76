"""Shared helpers of the benchmark scripts: clips, int8 conversion, timing, machine facts, output.

Copied on purpose from tests/kvid/quantization/test_quantization.py (`convert_int8`, `cosine`):
benchmarks never import tests. Keep the two in step. `smooth_clips` is kvid-benchmark's.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvid.backend import keras, tf

# Timing, XNNPACK coverage and machine facts are kvid-benchmark's; the scripts use them from here.
from kvid_tflite import benchmark
from kvid_tflite.benchmark import (  # noqa: F401
    _version,
    cpu_model,
    load_average,
    time_invokes,
    xnnpack_fallback,
)
from kvid_tflite.benchmark import machine_info as benchmark_machine_info
from kvid_tflite.convert import convert_keras_model
from kvid_tflite.litert import TFLiteModel

# The attainable-rate probe: large 1x1 convolutions, where XNNPACK's int8 GEMM is at its best.
# (height, width, in_channels, out_channels); the fastest of them sets the attainable rate.
RATE_PROBES = ((56, 56, 512, 512), (28, 28, 1024, 1024))


def smooth_clips(shape: Sequence[int], count: int, seed: int = 0) -> list[np.ndarray]:
    """Low-frequency random clips in [0, 1] of `shape` (T, H, W, 3), each with a batch axis of 1
    (`kvid_tflite.benchmark.smooth_clips`: a 4x4 random image per frame, bilinearly resized)."""
    return benchmark.smooth_clips(shape, count, seed)


def smooth_inputs(shape: Sequence[int], count: int, seed: int = 0) -> list[np.ndarray]:
    """`smooth_clips` for a video shape (T, H, W, 3), or single frames for an image (H, W, 3)."""
    if len(shape) == 3:
        return [clip[:, 0] for clip in smooth_clips((1, *shape), count, seed)]
    return smooth_clips(shape, count, seed)


def convert_int8(model: keras.Model, calibration: Sequence[np.ndarray]) -> bytes:
    """Full-integer post-training quantization at batch 1: int8 ops, int8 input and output."""
    return convert_keras_model(model, "int8", lambda: calibration)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0.0 when either vector is all zero (e.g. an int8 output rounded away)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else 0.0


def relative_l2(estimate: np.ndarray, reference: np.ndarray) -> float:
    """||estimate - reference|| / ||reference||."""
    reference = np.ravel(reference)
    return float(np.linalg.norm(np.ravel(estimate) - reference) / np.linalg.norm(reference))


def latency_summary(tflite_bytes: bytes, threads: int, runs: int) -> dict[str, float]:
    """Median, min and max latency (ms) of an int8 model with LiteRT's default XNNPACK delegate."""
    times = time_invokes(TFLiteModel(tflite_bytes, num_threads=threads), runs)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": runs,
    }


def pointwise_conv_model(height: int, width: int, channels: int, filters: int) -> keras.Model:
    inputs = keras.Input((height, width, channels), batch_size=1)
    outputs = keras.layers.Conv2D(filters, 1, use_bias=True)(inputs)
    return keras.Model(inputs, outputs, name=f"conv1x1_{height}x{width}_{channels}to{filters}")


def attainable_rate(threads: Sequence[int], runs: int) -> dict[str, Any]:
    """Attainable int8 rate (GMAC/s) per thread count: the fastest of the `RATE_PROBES` convs.

    Each probe is a full-int8 TFLite Conv2D 1x1 (calibrated on standard-normal inputs), timed by
    median latency like the models.
    """
    rng = np.random.default_rng(0)
    probes = []
    for height, width, channels, filters in RATE_PROBES:
        model = pointwise_conv_model(height, width, channels, filters)
        calibration = [
            rng.standard_normal((1, height, width, channels), dtype=np.float32) for _ in range(4)
        ]
        tflite_bytes = convert_int8(model, calibration)
        macs = height * width * channels * filters
        row = {"probe": model.name, "macs": macs}
        for count in threads:
            latency = latency_summary(tflite_bytes, count, runs)
            row[f"{count}t"] = {**latency, "gmacs_per_s": macs / latency["median_ms"] / 1e6}
        probes.append(row)
    best = {f"{count}t": max(p[f"{count}t"]["gmacs_per_s"] for p in probes) for count in threads}
    return {"gmacs_per_s": best, "probes": probes, "load_average": load_average()}


def cpu_idle_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs' time spent idle over the next `seconds` (from /proc/stat)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle_start, total_start = read()
    time.sleep(seconds)
    idle_end, total_end = read()
    return (idle_end - idle_start) / max(total_end - total_start, 1)


def wait_for_idle(timeout_s: float, threshold: float = 0.9) -> dict[str, float]:
    """Waits up to `timeout_s` for a second in which the CPUs are >= `threshold` idle.

    On a machine shared with other jobs, latency is only meaningful in such a window, and the
    2-thread numbers need both cores. Returns the idle fraction seen last and the seconds waited;
    with `timeout_s` 0 it only samples once.
    """
    start = time.perf_counter()
    while True:
        idle = cpu_idle_fraction()
        waited = time.perf_counter() - start
        if idle >= threshold or waited >= timeout_s:
            return {"idle_fraction": round(idle, 3), "waited_s": round(waited, 1)}
        time.sleep(4.0)


def machine_info() -> dict[str, Any]:
    """CPU, cores, date, library versions and load: the context every table needs."""
    return {
        **benchmark_machine_info(),
        "tensorflow": tf.__version__,
        "tf_keras": _version("tf_keras"),
    }


def timing_caption(report: dict[str, Any], runs: int, warmup: int) -> str:
    """The machine, versions, date, load and timing protocol of a `kvid_tflite.benchmark` report."""
    machine = report["machine"]
    return (
        f"{machine['cpu']}, {machine['cores']} cores; LiteRT {machine['ai_edge_litert']}, "
        f"TensorFlow {machine['tensorflow']}; {machine['date']}; load average "
        f"{report['load_average_before']} before the timing, {report['load_average_after']} "
        f"after; {runs} runs after {warmup} warm-up invokes, the models timed in turn in one "
        "process."
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes atomically (a partial run leaves the previous complete file or the new one)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(temporary, path)


def write_report(
    name: str,
    title: str,
    caption: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    payload: dict[str, Any],
) -> str:
    """Prints a titled Markdown table and writes it to `name`.md, `payload` to `name`.json."""
    text = "\n".join([f"# {title}", "", caption, "", markdown_table(headers, rows), ""])
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
    write_text(name + ".md", text)
    write_json(name + ".json", payload)
    return text


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
