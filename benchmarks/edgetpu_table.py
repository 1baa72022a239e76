"""CPU and Edge TPU presets side by side: int8 latency at 1 and 2 threads, predicted Edge TPU share.

For each preset (default: each family's small CPU preset and every `*_edgetpu` preset), at its
own input, with random weights and post-training quantization on smooth random clips (speed, not
accuracy): the int8 `.tflite` in its deploy layout (`frame_stacked` for the Edge TPU presets, the
clip otherwise), then `kvid-benchmark` on all of them in one process (LiteRT, default XNNPACK
delegate), and the Edge TPU rule check (`kvid_tflite.edgetpu`, a prediction from Coral's published
rules, not the compiler) of the same file: share of ops and of MACs before the predicted cut.

Usage (from the repository root):
  python benchmarks/edgetpu_table.py                    # ~8 min on the shared 2-core machine
  python benchmarks/edgetpu_table.py --presets vmf_tiny,vmf_tiny_edgetpu --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import common

import kvid.models
from kvid_tflite.convert import convert_keras_model
from kvid_tflite.edgetpu import check_edgetpu, summarize

CPU_PRESETS = ("vmf_tiny", "dualformer_cpu", "xvit_tiny", "posmlp_video_tiny")


def default_presets() -> list[str]:
    edgetpu = [name for name in kvid.models.list_presets() if name.endswith("_edgetpu")]
    return [*CPU_PRESETS, *edgetpu]


def export(name: str, folder: str, num_classes: int) -> tuple[str, dict]:
    """Writes the preset's int8 `.tflite` (deploy layout) and returns it with its rule check."""
    model = kvid.models.create(name, num_classes=num_classes)
    layout = "frame_stacked" if name.endswith("_edgetpu") else "clip"
    calibration = common.smooth_inputs(model.input_shape[1:], 8)
    content = convert_keras_model(model, "int8", lambda: calibration, layout)
    path = os.path.join(folder, f"{name}.tflite")
    with open(path, "wb") as f:
        f.write(content)
    check = summarize(check_edgetpu(content, [layer.name for layer in model.layers]))
    return path, {
        "layout": layout,
        "input": list(model.input_shape[1:]),
        "params": int(model.count_params()),
        **check,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(default_presets()))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--num_classes", type=int, default=14)
    parser.add_argument("--output_dir", default="benchmarks/results")
    parser.add_argument("--name", default="edgetpu_table")
    args = parser.parse_args(argv)
    names = [n for n in args.presets.split(",") if n]
    with tempfile.TemporaryDirectory() as folder:
        exports = {name: export(name, folder, args.num_classes) for name in names}
        bench = f"{args.name}_latency"
        command = [
            "kvid-benchmark", *(path for path, _ in exports.values()), "--threads=1,2",
            f"--runs={args.runs}", f"--output_dir={folder}", f"--name={bench}",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        with open(os.path.join(folder, bench + ".json"), encoding="utf-8") as f:
            timing = json.load(f)
    rows, results = [], {}
    for name, (path, check) in exports.items():
        model = next(m for m in timing["models"] if m["name"] in (name, f"{name}.tflite", path))
        latency = {str(t): model["latency"][str(t)]["median_ms"] for t in (1, 2)}
        results[name] = {**check, "latency_ms": latency, "gmacs": model["gmacs"]}
        frames = "x".join(str(d) for d in check["input"][:3])
        rows.append([
            name, check["layout"], frames, f"{model['gmacs']:.3f}",
            f"{latency['1']:.1f}", f"{latency['2']:.1f}",
            f"{check['ops_before_cut']}/{check['num_ops']} ({100 * check['op_share']:.0f}%)",
            f"{100 * check['mac_share']:.0f}%", check["first_blocker"] or "none",
        ])  # fmt: skip
    headers = [
        "preset", "layout", "T x H x W", "GMACs", "1 thread (ms)", "2 threads (ms)",
        "Edge TPU ops", "Edge TPU MACs", "predicted cut",
    ]  # fmt: skip
    machine = {
        **timing["machine"],
        "load_average_before": timing["load_average_before"],
        "load_average_after": timing["load_average_after"],
    }
    table = common.markdown_table(headers, rows)
    text = f"{table}\n\nMachine: {json.dumps(machine)}\n"
    print(text)
    common.write_text(os.path.join(args.output_dir, args.name + ".md"), text)
    common.write_json(
        os.path.join(args.output_dir, args.name + ".json"),
        {"machine": machine, "runs": args.runs, "presets": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
