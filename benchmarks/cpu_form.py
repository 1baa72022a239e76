"""The CPU forms of the mobile presets: each choice's latency on its own, against MoViNet-A0.

For each family's mobile preset, int8 (post-training quantization as `kvid-convert` writes it)
with random weights, timed in this process with MoViNet-A0 (ReLU, Model Garden's (2+1)D base
form) at the same inputs:

- `vmf_xs` (the previous mobile preset) and `vmf_xs_cpu`, then `vmf_xs_cpu` with one CPU-form
  choice reverted at a time (ImageNet input normalization, dynamic ReLU, GELU FFN, hard-swish
  head, a bridge in every block) and with batch-normed tokens (tried, not kept): what each choice
  saves on its own;
- `dualformer_mobile_s` (CPU form) with one choice reverted at a time (input normalization,
  GELU MLP, the full PEG) and with batch norm for LayerNorm (tried, not kept);
- `xvit_xs` and `posmlp_video_xs` as they are (raw input) and with their former normalization,
  `xvit_xs` with GELU MLPs for its ReLU ones, and `posmlp_video_xs` with GELU for its ReLU6.

Each row also gives the int8-vs-float logits cosine (mean and worst over 4 test clips) with the
batch-norm moving statistics set from the 16 calibration clips, as training leaves them (with the
initial statistics a raw-input model's logits hardly depend on the clip), and the int8 model
calibrated on those same clips.

Needs `official.projects.movinet` (the side environment of benchmarks/README.md) for the MoViNet
rows; without it the kvid rows are still timed.

Usage (from the repository root):
  /tmp/tfmvenv/bin/python benchmarks/cpu_form.py                   # ~15 min on 2 cores
  python benchmarks/cpu_form.py --only vmf_xs_cpu --only "xvit_xs, GELU MLP" --runs 5 --name /tmp/x
"""

from __future__ import annotations

import argparse
import sys
import time

import common
import numpy as np

import kvid.models
from kvid.backend import keras
from kvid.models.mobile_former.presets import PRESETS as MF_PRESETS
from kvid.models.mobile_former.presets import Block
from kvid_tflite import benchmark

IMAGENET = dict(input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225))
KINETICS = dict(input_mean=(0.45, 0.45, 0.45), input_std=(0.225, 0.225, 0.225))
HALF = dict(input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))
ALL_BRIDGES = tuple(Block(*b)._replace(bridge=True) for b in MF_PRESETS["vmf_xs_cpu"]["blocks"])

# (row name, preset, overrides): the preset as it is, then one choice reverted per row.
VARIANTS = (
    ("vmf_xs", "vmf_xs", {}),
    ("vmf_xs_cpu", "vmf_xs_cpu", {}),
    ("vmf_xs_cpu, ImageNet normalization", "vmf_xs_cpu", IMAGENET),
    ("vmf_xs_cpu, dynamic ReLU", "vmf_xs_cpu", dict(dyrelu=(True, True))),
    ("vmf_xs_cpu, batch-normed tokens", "vmf_xs_cpu", dict(token_norm="batch")),
    ("vmf_xs_cpu, GELU FFN", "vmf_xs_cpu", dict(ffn_activation="gelu")),
    ("vmf_xs_cpu, hard-swish head", "vmf_xs_cpu", dict(head_activation="hard_swish")),
    ("vmf_xs_cpu, a bridge in every block", "vmf_xs_cpu", dict(blocks=ALL_BRIDGES)),
    ("dualformer_mobile_s", "dualformer_mobile_s", {}),
    ("dualformer_mobile_s, ImageNet normalization", "dualformer_mobile_s", IMAGENET),
    ("dualformer_mobile_s, batch norm", "dualformer_mobile_s", dict(norm="batch")),
    ("dualformer_mobile_s, GELU MLP", "dualformer_mobile_s", dict(mlp_activation="gelu")),
    ("dualformer_mobile_s, full PEG", "dualformer_mobile_s", dict(peg_form="full")),
    ("xvit_xs", "xvit_xs", {}),
    ("xvit_xs, (0.5, 0.5) normalization", "xvit_xs", HALF),
    ("xvit_xs, GELU MLP", "xvit_xs", dict(mlp_activation="gelu")),
    ("posmlp_video_xs", "posmlp_video_xs", {}),
    ("posmlp_video_xs, Kinetics normalization", "posmlp_video_xs", KINETICS),
    ("posmlp_video_xs, GELU", "posmlp_video_xs", dict(activation="gelu")),
)


def with_batch_statistics(
    model: keras.Model, clips: list[np.ndarray], steps: int = 30, batch_size: int = 4
) -> None:
    """Batch-norm moving statistics from `clips` (training-mode passes over batches of
    `batch_size` clips in turn; weights unchanged)."""
    batches = [
        np.concatenate(clips[start : start + batch_size])
        for start in range(0, len(clips), batch_size)
    ]
    for step in range(steps):
        model(batches[step % len(batches)], training=True)


def convert(
    preset: str, overrides: dict, num_classes: int, calibration_clips: int, num_clips: int
) -> dict:
    keras.utils.set_random_seed(0)  # the same random weights in every run
    model = kvid.models.create(preset, num_classes=num_classes, **overrides)
    shape = model.input_shape[1:]
    calibration = common.smooth_clips(shape, calibration_clips, seed=0)
    test_clips = common.smooth_clips(shape, num_clips, seed=1)
    with_batch_statistics(model, calibration)
    start = time.perf_counter()
    content = benchmark.random_weights_tflite(model, clips=calibration)
    seconds = time.perf_counter() - start
    runner = benchmark.TFLiteModel(content)
    cosines = [
        common.cosine(runner(clip), model(clip, training=False).numpy()) for clip in test_clips
    ]
    return {
        "input": list(shape),
        "content": content,
        "cosine_mean": float(np.mean(cosines)),
        "cosine_min": float(np.min(cosines)),
        "conversion_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", default=[], help="A row name; repeat for more (default: all)."
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num_classes", type=int, default=400)
    parser.add_argument("--calibration_clips", type=int, default=16)
    parser.add_argument("--num_clips", type=int, default=4, help="Clips the cosine is taken over.")
    parser.add_argument("--name", default="benchmarks/results/cpu_form")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - {v[0] for v in VARIANTS})
    if unknown:
        parser.error(f"--only: unknown rows {unknown}")
    converted = {}
    for name, preset, overrides in VARIANTS:
        if args.only and name not in args.only:
            continue
        converted[name] = convert(
            preset, overrides, args.num_classes, args.calibration_clips, args.num_clips
        )
        print(f"{name}: converted, cosine {converted[name]['cosine_mean']:.4f}", flush=True)
    models = {name: entry["content"] for name, entry in converted.items()}
    movinet, why = benchmark.movinet_rows(models, args.num_classes)
    attainable = common.attainable_rate([1], args.runs)
    rate = attainable["gmacs_per_s"]["1t"]
    report = benchmark.benchmark({**models, **movinet}, [1], args.runs, args.warmup)
    report["attainable_rate"] = attainable
    rows_by_name = {row["name"]: row for row in report["models"]}
    reference = {}
    for name in movinet:
        frames, height, _ = benchmark.clip_input(movinet[name])
        reference[(frames, height)] = rows_by_name[name]["latency"]["1"]
    rows = []
    for name, entry in converted.items():
        row = rows_by_name[name]
        timing, xnn = row["latency"]["1"], row["xnnpack"]
        mv = reference.get((entry["input"][0], entry["input"][1]))
        ratio = f"{timing['median_ms'] / mv['median_ms']:.2f}x" if mv else "-"
        vs_rate = f"{timing['gmacs_per_s'] / mv['gmacs_per_s']:.2f}x" if mv else "-"
        row.update({k: entry[k] for k in ("cosine_mean", "cosine_min", "input")})
        rows.append([
            name, "x".join(str(d) for d in entry["input"][:3]), f"{row['gmacs']:.3f}",
            f"{timing['median_ms']:.2f}", f"{timing['gmacs_per_s']:.1f}",
            f"{timing['gmacs_per_s'] / rate:.0%}", ratio, vs_rate,
            f"{xnn['fallback_ops']} of {xnn['ops']}", str(xnn["partitions"]),
            f"{entry['cosine_mean']:.4f} ({entry['cosine_min']:.4f})",
        ])  # fmt: skip
    for name in movinet:
        row = rows_by_name[name]
        timing = row["latency"]["1"]
        rows.append([
            name, "x".join(str(d) for d in benchmark.clip_input(movinet[name])),
            f"{row['gmacs']:.3f}", f"{timing['median_ms']:.2f}", f"{timing['gmacs_per_s']:.1f}",
            f"{timing['gmacs_per_s'] / rate:.0%}", "1.00x", "1.00x", f"{row['xnnpack']['fallback_ops']} of {row['xnnpack']['ops']}",
            str(row["xnnpack"]["partitions"]), "",
        ])  # fmt: skip
    headers = [
        "model", "T x H x W", "GMACs", "1t median ms", "GMAC/s", "share of attainable",
        "latency vs MoViNet-A0",
        "GMAC/s vs MoViNet-A0", "ops outside XNNPACK", "partitions", "int8 cosine mean (min)",
    ]  # fmt: skip
    caption = (
        common.timing_caption(report, args.runs, args.warmup)
        + " 1 thread. Random weights, PTQ as kvid-convert writes it; compare rows within this run "
        f"only. Attainable int8 rate: {rate:.1f} GMAC/s (the faster full-int8 Conv2D 1x1 probe "
        "of benchmarks/common.py, timed before the models)."
        + ("" if movinet else f" No MoViNet rows: {why}")
    )
    common.write_report(
        args.name,
        "The CPU forms of the mobile presets (benchmarks/cpu_form.py)",
        caption,
        headers,
        rows,
        report,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
