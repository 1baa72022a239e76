"""Throughput of kvid's tf.data input pipeline on the CPU, and the share of a training step spent
waiting for it.

Reads the embedded default dataset (generated into --data_dir when missing) at `vmf.flags`'
settings (8 frames x 64 x 64, stride 2, random resized crop and flip, batch 16) and times the
train and eval pipelines with tf.data's private thread pool limited to 1, 2, ... threads and at
tf.data's default (its shared pool, one thread per core), so the per-core rate tells how many
cores feed an accelerator at a given step rate.

Then it trains `vmf_tiny` as train.py does (AdamW, label-smoothed cross-entropy, the same
pipeline) for --steps steps after a warm-up, two ways: fed by the pipeline, timing the wait in
`next(iterator)` against the whole step, and on one batch cached in memory. The input-wait share
is the waited time over the step time; the slowdown share, 1 - cached step / pipeline step,
also counts the CPU the pipeline's threads take from the step while it prefetches. Writes
benchmarks/results/input_pipeline.{json,md}.

  python benchmarks/input_pipeline.py
  python benchmarks/input_pipeline.py --threads 1,2 --batches 40 --steps 40 --data_dir data/default
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import machine_info

import kvid
from kvid.backend import keras, tf
from kvid.data import dataset as dataset_lib
from kvid.data import pipeline
from kvid_training import optimization, synthetic

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


def time_training_steps(
    config: pipeline.InputConfig, num_classes: int, steps: int, warmup: int, rounds: int = 3
) -> dict[str, float]:
    """Seconds per `vmf_tiny` training step fed by the pipeline (with the part spent waiting in
    `next`) and on one cached batch; `steps` of each mode, in `rounds` alternating rounds, each
    after `warmup` untimed steps."""
    keras.utils.set_random_seed(0)
    model = kvid.models.create(
        "vmf_tiny", num_classes=num_classes, num_frames=config.num_frames,
        image_size=config.image_size[0],
    )  # fmt: skip
    optimizer = optimization.create_optimizer(
        model, learning_rate=2e-3, total_steps=10_000, warmup_steps=100, weight_decay=0.05,
        grad_clip_norm=1.0,
    )  # fmt: skip
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=["accuracy"],
    )
    step = tf.function(lambda video, label: model.train_step((video, label)))
    data = pipeline.train_dataset(config, split="train").map(
        lambda video, label: (video, tf.one_hot(label, num_classes))
    )
    # Rounds alternate the two modes, so a change of the machine's load hits both alike. Each
    # round starts a fresh iterator (its warm-up fills the shuffle buffer, untimed) and deletes
    # it before the cached steps, so no prefetching thread runs while those are timed.
    waited = total = cached_total = 0.0
    for round_steps in [steps // rounds] * rounds:
        iterator = iter(data)
        for _ in range(warmup):
            float(step(*next(iterator))["loss"])
        for _ in range(round_steps):
            start = time.perf_counter()
            batch = next(iterator)
            fetched = time.perf_counter()
            float(step(*batch)["loss"])  # reading the value waits for the step to finish
            waited += fetched - start
            total += time.perf_counter() - start
        del iterator
        start = time.perf_counter()
        for _ in range(round_steps):
            float(step(*batch)["loss"])
        cached_total += time.perf_counter() - start
    steps = rounds * (steps // rounds)
    cached_step = cached_total / steps
    step_s = total / steps
    return {
        "step_s": round(step_s, 4),
        "wait_s": round(waited / steps, 4),
        "cached_step_s": round(cached_step, 4),
        "wait_share": round(waited / total, 4),
        "slowdown_share": round(1.0 - cached_step / step_s, 4),
        "clips_per_s": round(config.batch_size / step_s, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data/default")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread pool sizes")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per mode")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the modes")
    parser.add_argument("--warmup_steps", type=int, default=5)
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
    # 0: tf.data's default, its shared pool of one thread per core.
    for threads in [int(t) for t in args.threads.split(",")] + [0]:
        for mode in ("train", "eval"):
            if mode == "train":
                config = pipeline.InputConfig(**base, flip=True)
                dataset = pipeline.train_dataset(config, split="train")
            else:
                config = pipeline.InputConfig(**base)
                dataset = pipeline.eval_dataset(config, split="val").repeat()
            if threads:
                dataset = with_threads(dataset, threads)
            rate = clips_per_second(dataset, args.batches)
            used = threads or os.cpu_count()
            rows.append(
                {
                    "pipeline": mode,
                    "threads": threads or f"default ({used})",
                    "clips_per_s": round(rate, 1),
                    "clips_per_s_per_thread": round(rate / used, 1),
                }
            )
            print(rows[-1], flush=True)
    num_classes = len(dataset_lib.read_dataset_info(args.data_dir)["classes"])
    training = time_training_steps(
        pipeline.InputConfig(**base, flip=True),
        num_classes,
        args.steps,
        args.warmup_steps,
        args.rounds,
    )
    print(training, flush=True)
    result = {
        "machine": machine_info(),
        "settings": {**base, "data_dir": args.data_dir, "batches": args.batches},
        "rows": rows,
        "training": {
            "model": "vmf_tiny",
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "rounds": args.rounds,
            "pipeline_threads": f"default ({os.cpu_count()})",
            **training,
        },
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
    t = result["training"]
    lines += [
        "",
        f"Training `vmf_tiny` on the train pipeline (tf.data's default threads): {t['steps']} "
        f"steps of each mode in {t['rounds']} alternating rounds, each after "
        f"{t['warmup_steps']} untimed steps:",
        "",
        "| step (pipeline) | waiting in next() | step (cached batch) | input-wait share | "
        "slowdown share | clips/s |",
        "|---|---|---|---|---|---|",
        f"| {1000 * t['step_s']:.0f} ms | {1000 * t['wait_s']:.1f} ms | "
        f"{1000 * t['cached_step_s']:.0f} ms | {100 * t['wait_share']:.1f}% | "
        f"{100 * t['slowdown_share']:.1f}% | {t['clips_per_s']} |",
    ]
    with open(args.output[: -len(".json")] + ".md", "w", encoding="utf-8") as file:
        file.write(header + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
