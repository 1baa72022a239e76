"""XViT ablation on the embedded default dataset: the temporal shift x the clip head.

Trains the CPU preset (`xvit_tiny`, training/flags/xvit.flags) four times, with the temporal
shift on or off (off: `shift_div=0` in the attention and `stem_shift_div=0` in the conv stem, a
per-frame model whose frames meet only in the head) and
the temporal attention head or mean pooling of the per-frame features, then evaluates each
float model on the test split with kvid-eval: overall top-1 and the accuracy on each order pair
(classes that differ only in the order of the same frames; mean pooling without the shift cannot
tell them apart). Everything else is the flagfile's.

Usage (from the repository root; with --epochs 20 about 4x a 20-epoch xvit.flags float run):
  python benchmarks/xvit_ablation.py --epochs 20
  python benchmarks/xvit_ablation.py --epochs 6 --reuse    # rerun only the missing evaluations
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import kvid

_BASE = {"summary_tokens": False}  # the flagfile turns them on; the ablation is without them
CONFIGS = {  # name -> preset overrides (the head is always named: the flagfile sets one too)
    "shift+temporal_attention": {**_BASE, "head": "temporal_attention"},
    "shift+mean": {**_BASE, "head": "mean"},
    "no_shift+temporal_attention": {
        **_BASE,
        "shift_div": 0,
        "stem_shift_div": 0,
        "head": "temporal_attention",
    },
    "no_shift+mean": {**_BASE, "shift_div": 0, "stem_shift_div": 0, "head": "mean"},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flagfile", default="training/flags/xvit.flags")
    parser.add_argument("--data_dir", default="data/default")
    parser.add_argument("--workdir_root", default="runs/xvit_ablation")
    parser.add_argument("--epochs", type=float, default=None, help="default: the flagfile's")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    parser.add_argument("--reuse", action="store_true", help="skip trainings already exported")
    parser.add_argument("--output", default="benchmarks/results/xvit_ablation.json")
    return parser.parse_args(argv)


def _overrides(config: dict) -> list[str]:
    return [f"--model_overrides={key}={value!r}" for key, value in config.items()]


def train(name: str, args: argparse.Namespace) -> tuple[str, float | None]:
    workdir = os.path.join(args.workdir_root, name.replace("+", "_"))
    exported = os.path.isdir(os.path.join(workdir, "export", "float"))
    if args.reuse and exported:
        return workdir, None
    command = [
        sys.executable, "training/train.py", f"--flagfile={args.flagfile}",
        f"--workdir={workdir}", f"--data_dir={args.data_dir}", "--qat_epochs=0", "--verbose=2",
        *_overrides(CONFIGS[name]),
    ]  # fmt: skip
    if args.epochs is not None:
        command.append(f"--epochs={args.epochs:g}")
    start = time.time()
    subprocess.run(command, check=True)
    return workdir, time.time() - start


def evaluate(workdir: str) -> dict:
    output = os.path.join(workdir, "eval")
    command = [
        "kvid-eval", f"--model={workdir}/export/float", f"--workdir={workdir}",
        "--reference=none", "--qat_reference=none", f"--output_dir={output}",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    with open(os.path.join(output, "eval_float.json")) as f:
        return json.load(f)


def row(name: str, report: dict, seconds: float | None, epochs) -> dict:
    forward = report["forward"]
    pairs = {"/".join(p["classes"]): p["accuracy"] for p in forward["order_pairs"]}
    return {
        "config": name,
        "overrides": CONFIGS[name],
        "epochs": epochs,
        "top1": forward["top1"],
        "order_pairs": pairs,
        "order_pair_mean": sum(pairs.values()) / len(pairs),
        "reversed_top1": report["reversed"]["top1"],
        "train_seconds": seconds,
    }


def markdown(rows: list[dict], meta: dict) -> str:
    pairs = list(rows[0]["order_pairs"])
    short = [p.split("/")[0] for p in pairs]
    lines = [
        "# XViT ablation: temporal shift x clip head (xvit_tiny, default dataset, float, test split)",
        "",
        f"{meta['machine']}, {meta['date']}; {meta['epochs']} epochs each, otherwise "
        f"{meta['flagfile']}. Order pairs are named by their first class.",
        "",
        "| config | top-1 | order pairs (mean) | " + " | ".join(short) + " | reversed top-1 |",
        "|---" * (4 + len(short)) + "|",
    ]
    for r in rows:
        cells = " | ".join(f"{100 * r['order_pairs'][p]:.0f}" for p in pairs)
        lines.append(
            f"| {r['config']} | {100 * r['top1']:.1f} | {100 * r['order_pair_mean']:.1f} | "
            f"{cells} | {100 * r['reversed_top1']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rows = []
    for name in args.configs.split(","):
        workdir, seconds = train(name, args)
        rows.append(row(name, evaluate(workdir), seconds, args.epochs or "flagfile"))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "machine": "2-core AMD EPYC (shared with other jobs)",
        "date": time.strftime("%Y-%m-%d"),
        "epochs": args.epochs or "flagfile",
        "flagfile": args.flagfile,
        "shift_div_when_on": kvid.models.get_preset("xvit_tiny")["shift_div"],
    }
    with open(args.output, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.output.replace(".json", ".md"), "w") as f:
        f.write(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
