"""Throughput of kvid's tf.data input pipeline on the CPU: clips/s in total and per core.

Reads the embedded default dataset (generated into --data_dir when missing) at `vmf.flags`'
settings (8 frames x 64 x 64, stride 2, random resized crop and flip, batch 16) and times the
train and eval pipelines with tf.data's private thread pool limited to 1, 2, ... threads, so the
per-core rate tells how many cores feed an accelerator at a given step rate. Writes
benchmarks/results/input_pipeline.{json,md}.

  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --threads 1,2 --batches 40 --data_dir data/default
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import machine_info

from kvid.backend import tf
from kvid.data import pipeline
from kvid_training import synthetic

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def clips_per_second(dataset: tf.data.Dataset, batches: int, warmup: int = 3) -> float:
    """Clips per second over `batches` batches, after `warmup` untimed ones."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    clips = 0
    start = time.perf_counter()
    for _ in range(batches):
        video, _ = next(iterator)
        clips += int(video.shape[0])
    return clips / (time.perf_counter() - start)


def with_threads(dataset: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data/default")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread pool sizes")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--output", default=os.path.join(RESULTS, "input_pipeline.json"))
    args = parser.parse_args(argv)
    synthetic.ensure_default_dataset(args.data_dir)
    base = dict(
        data_dir=args.data_dir,
        num_frames=8,
        image_size=(64, 64),
        batch_size=16,
        frame_stride=2,
        min_crop_area=0.35,
    )
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for mode in ("train", "eval"):
            if mode == "train":
                config = pipeline.InputConfig(**base, flip=True)
                dataset = pipeline.train_dataset(config, split="train")
            else:
                config = pipeline.InputConfig(**base)
                dataset = pipeline.eval_dataset(config, split="val").repeat()
            rate = clips_per_second(with_threads(dataset, threads), args.batches)
            rows.append(
                {
                    "pipeline": mode,
                    "threads": threads,
                    "clips_per_s": round(rate, 1),
                    "clips_per_s_per_thread": round(rate / threads, 1),
                }
            )
            print(rows[-1], flush=True)
    result = {
        "machine": machine_info(),
        "settings": {**base, "data_dir": args.data_dir, "batches": args.batches},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    lines = [
        "| pipeline | threads | clips/s | clips/s per thread |",
        "|---|---|---|---|",
        *(
            f"| {r['pipeline']} | {r['threads']} | {r['clips_per_s']} | "
            f"{r['clips_per_s_per_thread']} |"
            for r in rows
        ),
    ]
    machine = result["machine"]
    header = (
        f"Input pipeline throughput, {machine['cpu']} ({machine['cores']} cores), "
        f"{machine['date']}, load average {machine['load_average_1_5_15min']}.\n\n"
    )
    with open(args.output[: -len(".json")] + ".md", "w", encoding="utf-8") as file:
        file.write(header + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
