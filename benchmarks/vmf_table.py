"""Video Mobile-Former presets on this machine: cost, int8 size and latency, int8 fidelity.

One row per preset (docs/design.md section 6): params, MACs per clip, input T x H x W, int8
`.tflite` size, LiteRT (default XNNPACK delegate) latency at 1 and 2 threads, the share of the attainable
int8 rate it reaches, int8-vs-float logits cosine and the zero-float-op audit. The attainable rate
is measured in the same run on large int8 1x1 convolutions. A MoViNet-A0 (2+1)D reference row is
added when `official.projects.movinet` (tf-models-official) is importable.

Weights are random (untrained): the int8 model is post-training quantized (PTQ) on smooth random
clips, so the cosine measures the converter and the int8 kernels, not a trained model's ranges.

Usage (from the repository root):
  python benchmarks/vmf_table.py                       # all vmf_* presets
  python benchmarks/vmf_table.py --presets vmf_tiny,vmf_xs --runs 50
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import common
import numpy as np

import kvid
from kvid.backend import keras
from kvid_tflite import benchmark
from kvid_tflite.audit import audit_model, int8_problems
from kvid_tflite.litert import TFLiteModel

_SIZE_ORDER = ("tiny", "xs", "s", "m", "l", "xl")
THREADS = (1, 2)
# MoViNet-A0 (2+1)D rows: (name suffix, frames, size, activation, gating activation). Model
# Garden's defaults (swish, sigmoid gating) at vmf_xs's input and at the reference point of
# docs/design.md section 2 (8x172x172); then hard-swish / hard-sigmoid, whose int8 HARD_SWISH XNNPACK does not take.
MOVINET_ROWS = (
    ("", 8, 160, "simple_swish", "sigmoid"),
    ("", 8, 172, "simple_swish", "sigmoid"),
    ("_hswish", 8, 160, "hard_swish", "hard_sigmoid"),
)


def video_presets() -> list[str]:
    """The vmf_* presets, smallest first."""
    names = [n for n in kvid.models.list_presets("mobile_former") if n.startswith("vmf_")]
    rank = {size: i for i, size in enumerate(_SIZE_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n.removeprefix("vmf_"), len(rank)), n))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets", default=",".join(video_presets()), help="comma-separated preset names"
    )
    parser.add_argument("--output", default="benchmarks/results/vmf_table.json")
    parser.add_argument("--runs", type=int, default=20, help="timed invokes per latency")
    parser.add_argument("--rate_runs", type=int, default=50, help="timed invokes per rate probe")
    parser.add_argument("--num_classes", type=int, default=400)
    parser.add_argument("--calibration_clips", type=int, default=8)
    parser.add_argument("--eval_clips", type=int, default=8)
    parser.add_argument("--no_movinet", action="store_true", help="skip the MoViNet-A0 rows")
    parser.add_argument(
        "--wait_idle_s",
        type=float,
        default=0.0,
        help="before each timing, wait up to this long for the CPUs to be >= 90%% idle "
        "(a machine shared with other jobs); the idle fraction seen is recorded either way",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rate_runs < 1:
        parser.error("--runs and --rate_runs must be positive")
    return args


def movinet_builders(num_classes: int) -> tuple[dict[str, Callable[[], keras.Model]], str | None]:
    """Builders of the MoViNet-A0 (2+1)D rows, or ({}, the reason they are skipped)."""
    try:
        import official.projects.movinet.modeling  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure means "no MoViNet row"
        return {}, f"official.projects.movinet is not importable ({type(error).__name__}: {error})"

    def build(frames: int, size: int, activation: str, gating: str) -> keras.Model:
        # the deployable form kvid-benchmark compares with (kvid_tflite.benchmark)
        return benchmark.movinet_a0_model(frames, size, size, num_classes, activation, gating)

    builders = {
        f"movinet_a0{suffix}@{t}x{s}x{s}": (lambda t=t, s=s, a=a, g=g: build(t, s, a, g))
        for suffix, t, s, a, g in MOVINET_ROWS
    }
    return builders, None


def measure(
    name: str, build: Callable[[], keras.Model], args: argparse.Namespace, rate: dict[str, float]
) -> dict[str, Any]:
    """One table row; a failing step records its error and the row keeps what it measured."""
    row: dict[str, Any] = {"preset": name}
    step = "build"
    started = time.perf_counter()
    try:
        keras.utils.set_random_seed(0)  # the same random weights in every run
        model = build()
        shape = tuple(int(d) for d in model.input_shape[1:])
        row["input"] = "x".join(str(d) for d in shape[:-1])  # T x H x W (H x W: image)
        step = "profile"
        report = kvid.profile.profile(model)
        row.update(params=report.params, macs=report.macs)
        row["macs_by_op_type"] = report.macs_by_op_type

        step = "convert"
        calibration = common.smooth_inputs(shape, args.calibration_clips, seed=1)
        start = time.perf_counter()
        tflite_bytes = common.convert_int8(model, calibration)
        row["convert_s"] = time.perf_counter() - start
        row["int8_bytes"] = len(tflite_bytes)
        row["calibration"] = f"PTQ, {args.calibration_clips} smooth random clips (seed 1)"

        step = "audit"
        audit = audit_model(tflite_bytes)
        row["float_ops"] = len(audit["float_ops"])
        row["int8_problems"] = int8_problems(audit)
        row["num_ops"] = audit["num_ops"]
        row["xnnpack"] = common.xnnpack_fallback(tflite_bytes)

        step = "cosine"
        runner = TFLiteModel(tflite_bytes, num_threads=2)
        clips = common.smooth_inputs(shape, args.eval_clips, seed=2)
        cosines = [
            common.cosine(runner(clip), model(clip, training=False).numpy()) for clip in clips
        ]
        row["cosine"] = {"mean": float(np.mean(cosines)), "min": float(np.min(cosines))}
        row["cosines"] = cosines
        del runner, model
        gc.collect()

        step = "latency"
        row["idle_before_latency"] = common.wait_for_idle(args.wait_idle_s)
        row["load_average_before_latency"] = common.load_average()
        row["latency"] = {}
        for threads in THREADS:
            latency = common.latency_summary(tflite_bytes, threads, args.runs)
            key = f"{threads}t"
            seconds = latency["median_ms"] / 1000.0
            latency["gmacs_per_s"] = row["macs"] / seconds / 1e9
            latency["share_of_attainable"] = latency["gmacs_per_s"] / rate[key]
            row["latency"][key] = latency
    except Exception as error:  # noqa: BLE001 - one failing preset must not stop the table
        row["error"] = f"{step}: {type(error).__name__}: {error}"
        row["traceback"] = traceback.format_exc(limit=8)
        print(f"[{name}] FAILED at {step}: {type(error).__name__}: {error}", flush=True)
    finally:
        keras.backend.clear_session()
        gc.collect()
    row["wall_s"] = time.perf_counter() - started
    return row


def _fmt(row: dict[str, Any], path: tuple[str, ...], spec: str) -> str:
    value: Any = row
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return "-"
        value = value[key]
    return format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "preset", "params", "GMACs", "input", "int8 MB", "1t ms", "2t ms",
        "share 1t", "share 2t", "cos mean", "cos min", "float ops",
    ]  # fmt: skip
    body = []
    for row in rows:
        params = f"{row['params'] / 1e6:.2f}M" if "params" in row else "-"
        gmacs = f"{row['macs'] / 1e9:.3f}" if "macs" in row else "-"
        size = f"{row['int8_bytes'] / 2**20:.2f}" if "int8_bytes" in row else "-"
        float_ops = str(row.get("float_ops", "-"))
        if row.get("int8_problems"):
            float_ops += " (" + "; ".join(row["int8_problems"])[:80] + ")"
        if "error" in row:
            float_ops += f" ERROR {row['error'][:60]}"
        body.append([
            row["preset"], params, gmacs, row.get("input", "-"), size,
            _fmt(row, ("latency", "1t", "median_ms"), ".1f"),
            _fmt(row, ("latency", "2t", "median_ms"), ".1f"),
            _fmt(row, ("latency", "1t", "share_of_attainable"), ".1%"),
            _fmt(row, ("latency", "2t", "share_of_attainable"), ".1%"),
            _fmt(row, ("cosine", "mean"), ".4f"), _fmt(row, ("cosine", "min"), ".4f"),
            float_ops,
        ])  # fmt: skip
    return common.markdown_table(headers, body)


def format_details(rows: list[dict[str, Any]]) -> str:
    headers = [
        "preset", "convert s", "ops", "XNNPACK partitions", "ops outside XNNPACK",
        "1t min ms", "2t min ms", "CPU idle before timing",
    ]  # fmt: skip
    body = []
    for row in rows:
        xnnpack = row.get("xnnpack", {})
        outside = ", ".join(f"{k} {v}" for k, v in xnnpack.get("fallback_by_name", {}).items())
        idle = row.get("idle_before_latency")
        body.append([
            row["preset"], _fmt(row, ("convert_s",), ".0f"), row.get("num_ops", "-"),
            xnnpack.get("partitions", "-"),
            f"{xnnpack.get('fallback_ops', '-')}: {outside}" if xnnpack else "-",
            _fmt(row, ("latency", "1t", "min_ms"), ".1f"),
            _fmt(row, ("latency", "2t", "min_ms"), ".1f"),
            f"{idle['idle_fraction']:.0%}" if idle else "-",
        ])  # fmt: skip
    return common.markdown_table(headers, body)


def report_text(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    rate = payload["attainable_rate"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; {machine['date']}; "
        f"TF {machine['tensorflow']}, LiteRT {machine['ai_edge_litert']}; load average "
        f"(1/5/15 min) at start {machine['load_average_1_5_15min']}, at end "
        f"{payload.get('load_average_at_end', '-')}.",
        "Attainable int8 rate (fastest full-int8 Conv2D 1x1 probe, median latency): "
        + ", ".join(f"{k} {v:.0f} GMAC/s" for k, v in rate["gmacs_per_s"].items())
        + " (start: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rate["start"]["gmacs_per_s"].items())
        + (
            "; end: " + ", ".join(f"{k} {v:.0f}" for k, v in rate["end"]["gmacs_per_s"].items())
            if "end" in rate
            else ""
        )
        + ").",
        f"int8: {payload['calibration']}; latency = median of {payload['runs']} invokes, "
        "LiteRT default XNNPACK delegate; cosine = int8 vs float logits on "
        f"{payload['eval_clips']} smooth random clips (seed 2); random (untrained) weights, "
        f"{payload['num_classes']} classes.",
        "",
        format_table(payload["rows"]),
        "",
        format_details(payload["rows"]),
    ]
    for note in payload.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    known = set(kvid.models.list_presets())
    unknown = [p for p in presets if p not in known]
    if unknown:
        print(f"unknown presets {unknown}; valid: {sorted(known)}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    payload: dict[str, Any] = {
        "machine": common.machine_info(),
        "runs": args.runs,
        "num_classes": args.num_classes,
        "calibration": f"PTQ calibrated on {args.calibration_clips} smooth random clips (seed 1)",
        "eval_clips": args.eval_clips,
        "macs_convention": "docs/design.md section 6: matrix ops only, batch 1, kvid.profile",
        "notes": [],
    }
    print(f"machine: {payload['machine']}", flush=True)
    idle = common.wait_for_idle(args.wait_idle_s)
    rate = {"start": {**common.attainable_rate(THREADS, args.rate_runs), "idle_before": idle}}
    rate["gmacs_per_s"] = dict(rate["start"]["gmacs_per_s"])
    payload["attainable_rate"] = rate
    print(f"attainable int8 rate (GMAC/s): {rate['gmacs_per_s']}", flush=True)

    builders: dict[str, Callable[[], keras.Model]] = {
        name: (lambda name=name: kvid.models.create(name, num_classes=args.num_classes))
        for name in presets
    }
    if args.no_movinet:
        payload["notes"].append("MoViNet-A0 row skipped: --no_movinet.")
    else:
        movinet_rows, reason = movinet_builders(args.num_classes)
        if reason:
            note = f"MoViNet-A0 row skipped: {reason}"
            payload["notes"].append(note)
            print(note, flush=True)
        builders.update(movinet_rows)

    payload["rows"] = []
    for name, build in builders.items():
        print(f"[{name}] measuring (load average {common.load_average()})", flush=True)
        row = measure(name, build, args, rate["gmacs_per_s"])
        payload["rows"].append(row)
        print(format_table([row]).splitlines()[-1], flush=True)
        common.write_json(args.output, payload)

    idle = common.wait_for_idle(args.wait_idle_s)
    rate["end"] = {**common.attainable_rate(THREADS, args.rate_runs), "idle_before": idle}
    for key, value in rate["end"]["gmacs_per_s"].items():
        if value > rate["gmacs_per_s"][key]:
            payload["notes"].append(
                f"The end-of-run rate probe was faster at {key} ({value:.0f} vs "
                f"{rate['gmacs_per_s'][key]:.0f} GMAC/s): shares use the start-of-run rate."
            )
    payload["load_average_at_end"] = common.load_average()
    payload["wall_s"] = time.perf_counter() - started
    common.write_json(args.output, payload)

    text = report_text(payload)
    print("\n" + text)
    common.write_text(args.output.removesuffix(".json") + ".md", text)
    failed = [row["preset"] for row in payload["rows"] if "error" in row]
    if failed:
        print(f"FAILED rows (errors recorded in {args.output}): {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
