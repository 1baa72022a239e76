"""int8-vs-float logits cosine of every mobile, CPU and Edge TPU preset (random weights).

Each preset at its own input, random weights (seed 0), the batch-norm moving statistics set from
the calibration clips (training-mode passes, as training leaves them), post-training int8 as
`kvid-convert` writes it (calibrated on those same clips), then the logits of the int8 model and
the float Keras model compared on other clips of the same kind. Nothing is timed. The papers'
reference presets are left out: their int8 fidelity is the subject of the per-family tables.

Usage (from the repository root):
  python benchmarks/preset_fidelity.py                     # ~30 min on 2 cores
  python benchmarks/preset_fidelity.py --only xvit_s,xvit_m --name /tmp/x
"""

from __future__ import annotations

import argparse
import sys
import time

import common
from cpu_form import convert

from kvid_tflite import benchmark

PRESETS = (
    "vmf_xs_cpu", "vmf_tiny_cpu", "vmf_xs", "vmf_tiny", "vmf_s", "vmf_m", "vmf_l", "vmf_xl",
    "vmf_tiny_edgetpu",
    "dualformer_mobile_s", "dualformer_mobile_m", "dualformer_cpu",
    "xvit_xs", "xvit_s", "xvit_m", "xvit_tiny",
    "posmlp_video_xs", "posmlp_video_s", "posmlp_video_tiny", "posmlp_video_xs_edgetpu",
    "posmlp_video_tiny_edgetpu",
)  # fmt: skip
THRESHOLD = 0.99


def measure(preset: str, num_classes: int, calibration_clips: int, num_clips: int) -> dict:
    start = time.perf_counter()
    entry = convert(preset, {}, num_classes, calibration_clips, num_clips)
    return {
        "preset": preset,
        "input": entry["input"],
        "cosine_mean": entry["cosine_mean"],
        "cosine_min": entry["cosine_min"],
        "asymmetric_batch_matmuls": len(benchmark.asymmetric_batch_matmuls(entry["content"])),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="Comma-separated presets (default: all).")
    parser.add_argument("--num_classes", type=int, default=400)
    parser.add_argument("--calibration_clips", type=int, default=16)
    parser.add_argument("--num_clips", type=int, default=4, help="Clips the cosine is taken over.")
    parser.add_argument("--name", default="benchmarks/results/preset_fidelity")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(PRESETS))
    if unknown:
        parser.error(f"--only: unknown presets {unknown} (choose from {', '.join(PRESETS)})")
    rows, records = [], []
    for preset in PRESETS:
        if only and preset not in only:
            continue
        record = measure(preset, args.num_classes, args.calibration_clips, args.num_clips)
        records.append(record)
        print(f"{preset}: cosine {record['cosine_mean']:.4f}", flush=True)
        rows.append([
            preset, "x".join(str(d) for d in record["input"][:3]),
            f"{record['cosine_mean']:.4f}", f"{record['cosine_min']:.4f}",
            "yes" if record["cosine_mean"] >= THRESHOLD else "**no**",
            str(record["asymmetric_batch_matmuls"]),
        ])  # fmt: skip
    machine = common.machine_info()
    headers = [
        "preset", "T x H x W", "cosine mean", "cosine min", f"mean >= {THRESHOLD}",
        "BATCH_MATMULs with a non-zero RHS zero point",
    ]  # fmt: skip
    caption = (
        f"{machine['cpu']}, TensorFlow {machine['tensorflow']}; {machine['date']}. Random "
        f"weights (seed 0), {args.num_classes} classes, batch-norm statistics and PTQ "
        f"calibration from {args.calibration_clips} smooth clips, cosine over "
        f"{args.num_clips} other smooth clips. Nothing timed."
    )
    common.write_report(
        args.name,
        "int8 fidelity of the mobile, CPU and Edge TPU presets (benchmarks/preset_fidelity.py)",
        caption,
        headers,
        rows,
        {"machine": machine, "presets": records},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
