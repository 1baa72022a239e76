"""int8 on the CPU with every BATCH_MATMUL of two activations in XNNPACK: before and after.

For each mobile preset at its own input, with random weights, three int8 models:

- `before`: post-training quantization as the converter gives it (kvid before right-hand operands
  were made symmetric): every BATCH_MATMUL whose right-hand operand has a non-zero zero point runs
  in LiteRT's builtin reference kernel;
- `ptq`: the same `.tflite` after `symmetric_batch_matmul_operands` (what `kvid-convert --int8`
  and `convert_keras_model` now write for a float model);
- `qat`: the QAT model (`kvid.quantization.quantize_model`, ranges set by `calibrate` on the
  calibration clips) through the converter alone: the symmetric fake quants give zero point 0.

Then `kvid-benchmark`'s report of all of them in one process (latency timed interleaved at each
thread count, GMAC/s, XNNPACK partitions, ops outside XNNPACK, refused BATCH_MATMULs) and the
int8-vs-float logit cosine of each on held-out smooth random clips (`qat` against the float model
it was made from; docs/design.md section 7 asks for >= 0.99).

`--candidates` adds, per preset, the `ptq` model rebuilt with one island op replaced (each on its
own, the same weights; the cosine is against the unchanged float model, so it includes the
replacement's approximation): `gelu_sigmoid` computes every GELU as `x * sigmoid(1.702 x)`
(LOGISTIC and MUL, which XNNPACK takes in int8, for int8 GELU, which it does not),
`maximum_relu` every `maximum(a, b)` as `b + relu(a - b)` (dynamic ReLU's MAXIMUM). They are
measured, not adopted: a preset that used one would need retraining.

Usage (from the repository root):
  python benchmarks/cpu_int8.py                    # ~20 min on the shared 2-core machine
  python benchmarks/cpu_int8.py --presets xvit_xs --runs 5 --name /tmp/x
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import common
import numpy as np

import kvid.models
import kvid.quantization
from kvid.backend import keras
from kvid_tflite import benchmark
from kvid_tflite.convert import convert_keras_model, symmetric_batch_matmul_operands
from kvid_tflite.litert import TFLiteModel

PRESETS = ("vmf_xs", "dualformer_mobile_s", "xvit_xs", "posmlp_video_xs")
VARIANTS = ("before", "ptq", "qat")
CANDIDATES = ("gelu_sigmoid", "maximum_relu")


@contextlib.contextmanager
def candidate(name: str):
    """Traces TensorFlow's `gelu` or `maximum` as the candidate form while active."""
    import tensorflow as tf

    if name == "gelu_sigmoid":
        attribute = "gelu"

        def replacement(x, approximate=False, name=None):
            del approximate, name
            return x * tf.sigmoid(1.702 * x)

        modules = (tf.nn, tf.compat.v2.nn)  # Keras' "gelu" activation calls the compat one
    elif name == "maximum_relu":
        attribute = "maximum"

        def replacement(x, y, name=None):
            del name
            return y + tf.nn.relu(x - y)

        modules = (tf, tf.math, tf.compat.v2, tf.compat.v2.math)
    else:
        raise ValueError(f"--candidates: unknown candidate {name!r}; expected {CANDIDATES}")
    originals = [(module, getattr(module, attribute)) for module in modules]
    try:
        for module, _ in originals:
            setattr(module, attribute, replacement)
        yield
    finally:
        for module, original in originals:
            setattr(module, attribute, original)


def convert(
    name: str, num_classes: int, num_calibration: int, num_test: int, candidates: list[str]
) -> dict:
    """The preset's int8 models, their cosines to the float model and conversion times."""
    keras.utils.set_random_seed(0)  # the same random weights in every run
    model = kvid.models.create(name, num_classes=num_classes)
    shape = model.input_shape[1:]
    calibration = common.smooth_clips(shape, num_calibration, seed=0)
    test_clips = common.smooth_clips(shape, num_test, seed=1)
    start = time.perf_counter()
    before = convert_keras_model(model, "int8", lambda: calibration)
    ptq_seconds = time.perf_counter() - start
    ptq, requantized = symmetric_batch_matmul_operands(before)
    start = time.perf_counter()
    qat_model = kvid.quantization.calibrate(kvid.quantization.quantize_model(model), calibration)
    qat = convert_keras_model(qat_model, "int8", lambda: calibration)
    qat_seconds = time.perf_counter() - start
    reference = [model(clip, training=False).numpy() for clip in test_clips]
    contents = {"before": before, "ptq": ptq, "qat": qat}
    for candidate_name in candidates:
        with candidate(candidate_name):  # the same weights, traced with the candidate form
            contents[f"ptq {candidate_name}"] = convert_keras_model(
                model, "int8", lambda: calibration, symmetric_rhs=True
            )
    cosines = {}
    for variant, content in contents.items():
        runner = TFLiteModel(content)
        cosines[variant] = min(
            common.cosine(runner(clip), ref) for clip, ref in zip(test_clips, reference)
        )
    return {
        "input": list(shape),
        "contents": contents,
        "min_cosine": cosines,
        "requantized_operands": len(requantized),
        "conversion_seconds": {"ptq": ptq_seconds, "qat": qat_seconds},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--threads", default="1")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num_classes", type=int, default=400)
    parser.add_argument("--num_calibration_clips", type=int, default=4)
    parser.add_argument("--num_test_clips", type=int, default=4)
    parser.add_argument("--name", default="benchmarks/results/cpu_int8")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    args = parser.parse_args(argv)
    names = [n for n in args.presets.split(",") if n]
    candidates = [c for c in args.candidates.split(",") if c]
    for name in candidates:
        with candidate(name):  # checks the names before anything is converted
            pass
    threads = [int(t) for t in args.threads.split(",")]
    converted = {}
    for name in names:
        converted[name] = convert(
            name, args.num_classes, args.num_calibration_clips, args.num_test_clips, candidates
        )
        print(f"{name}: converted, min cosine {converted[name]['min_cosine']}", flush=True)
    variants = [*VARIANTS, *(f"ptq {c}" for c in candidates)]
    models = {
        f"{name} {variant}": entry["contents"][variant]
        for name, entry in converted.items()
        for variant in variants
    }
    report = benchmark.benchmark(models, threads, args.runs, args.warmup)
    rows = []
    summary = {}
    for name, entry in converted.items():
        summary[name] = {k: v for k, v in entry.items() if k != "contents"}
        for variant in variants:
            row = next(r for r in report["models"] if r["name"] == f"{name} {variant}")
            row["min_cosine"] = entry["min_cosine"][variant]
            timing = row["latency"][str(threads[0])]
            xnn = row["xnnpack"]
            matmuls = benchmark.batch_matmuls(entry["contents"][variant])
            activation_matmuls = [m for m in matmuls if not m["constant"]]
            rows.append([
                name, "x".join(str(d) for d in entry["input"][:3]), variant,
                f"{timing['median_ms']:.1f}", f"{timing['min_ms']:.1f}",
                f"{timing['gmacs_per_s']:.1f}",
                f"{len(row['batch_matmul_refusals'])} of {len(activation_matmuls)}",
                f"{xnn['fallback_ops']} of {xnn['ops']}", str(xnn["partitions"]),
                f"{row['min_cosine']:.4f}",
            ])  # fmt: skip
    headers = [
        "preset", "T x H x W", "int8", f"{threads[0]}t median ms", "min ms", "GMAC/s",
        "BATCH_MATMUL refused", "ops outside XNNPACK", "partitions", "min cosine vs float",
    ]  # fmt: skip
    caption = (
        common.timing_caption(report, args.runs, args.warmup)
        + " Shared with other jobs. Random weights; compare rows within this run only."
    )
    text = "\n".join(
        [
            "# int8 on the CPU: BATCH_MATMULs in XNNPACK (benchmarks/cpu_int8.py)",
            "",
            caption,
            "",
            common.markdown_table(headers, rows),
            "",
            benchmark.markdown(report).split("\n", 1)[1],
        ]
    )
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.name)), exist_ok=True)
    common.write_text(args.name + ".md", text)
    report["presets"] = summary
    common.write_json(args.name + ".json", report)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
