"""kvid-benchmark: int8 latency of `.tflite` models on the CPU, and what XNNPACK leaves out.

    kvid-benchmark runs/vmf_tiny/export/model_int8.tflite
    kvid-benchmark vmf_xs xvit_xs --threads=1,2 --runs=100 --name=mobile_presets

A model is a `.tflite` file or a preset name; a preset is built with random weights (at its own
input unless `--num_frames` / `--image_size` say otherwise) and converted to int8 by post-training
quantization on smooth random clips, which measures speed, not accuracy. For each model, in one
process and with the models timed in turn at each thread count:

- latency with LiteRT's default XNNPACK delegate: median and 90th percentile over `--runs`
  invokes after `--warmup` untimed ones, at each of `--threads`;
- size, matrix-op GMACs (docs/design.md section 6, from the tensor shapes) and the rate they give;
- XNNPACK partitions, and the ops left to LiteRT's builtin kernels by op type and by the kvid layer
  they come from (read from the output tensor names the converter keeps);
- every BATCH_MATMUL XNNPACK refuses, with the reason: XNNPACK takes an int8 BATCH_MATMUL of two
  activations only when the right-hand operand's zero point is 0 (LiteRT's
  `tflite/delegates/xnnpack/xnnpack_delegate.cc`); the builtin kernel that runs it instead is the
  reference one.

With `--movinet` (the default), MoViNet-A0 joins the run at the clip input of every model that
takes clips: Model Garden's deployable base form ((2+1)D convs, non-causal, stream-free) with
ReLU and sigmoid gating, random weights, converted and timed exactly as the presets, interleaved
with them. It needs `official.projects.movinet` (tf-models-official, in a side environment:
benchmarks/README.md); without it the report says why the rows are missing.

Writes `NAME.md`, `NAME.json` and `NAME.png` (latency at the first thread count vs GMACs) to
`--output_dir`. Times depend on the machine and its load: the JSON records the CPU, the load
average before and after, and the library versions; compare models within one run.
"""

from __future__ import annotations

import collections
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

import kvid.cli
from kvid_tflite import edgetpu
from kvid_tflite.litert import TFLiteModel

TOOL = "kvid-benchmark"


# ------------------------------------------------------------------------------------------------
# Machine facts
# ------------------------------------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, date, library versions and load: the context every timing needs (the
    benchmark scripts add TensorFlow's own)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "ai_edge_litert": _version("ai-edge-litert"),
        "tensorflow": _version("tensorflow"),
        "load_average_1_5_15min": load_average(),
    }


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def time_invokes(runner: TFLiteModel, runs: int, warmup: int = 3, seed: int = 0) -> list[float]:
    """Wall time in ms of `runs` invokes on one random input (after `warmup` untimed ones)."""
    return runner.invoke_times(runs, warmup, seed)


def latency(tflite_bytes: bytes, threads: int, runs: int, warmup: int = 5) -> dict[str, float]:
    """Median, 90th percentile and minimum latency (ms) with LiteRT's default XNNPACK delegate."""
    times = time_invokes(TFLiteModel(tflite_bytes, num_threads=threads), runs, warmup)
    return {
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": min(times),
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------------
# What XNNPACK leaves out
# ------------------------------------------------------------------------------------------------
def xnnpack_fallback(tflite_bytes: bytes) -> dict[str, Any]:
    """Which ops the default XNNPACK delegate leaves to LiteRT's builtin kernels.

    After delegation the graph holds one DELEGATE node per XNNPACK partition, and the original
    nodes. An original node runs outside XNNPACK exactly when something still running needs one
    of its outputs that no DELEGATE node produces: walk back from the model outputs and the
    DELEGATE nodes' inputs. Many partitions means many hand-offs between the two runtimes.
    """
    runner = TFLiteModel(tflite_bytes, num_threads=1)
    # pylint: disable-next=protected-access
    nodes = runner.interpreter._get_ops_details()
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    available = {int(i) for d in delegates for i in d["outputs"]}
    producer = {int(o): n for n in originals for o in n["outputs"]}
    model_inputs, model_outputs = runner.model_io_indices()
    available.update(int(i) for i in model_inputs)
    needed = [int(i) for d in delegates for i in d["inputs"]] + [int(i) for i in model_outputs]
    fallback: dict[int, dict[str, Any]] = {}
    while needed:
        tensor = needed.pop()
        node = producer.get(tensor)
        if tensor in available or node is None or node["index"] in fallback:
            continue  # produced by XNNPACK, a model input, a constant, or already visited
        fallback[node["index"]] = node
        needed.extend(int(i) for i in node["inputs"] if i >= 0)
    counts = collections.Counter(n["op_name"] for n in fallback.values())
    ops, _, _ = edgetpu._read_model(tflite_bytes)  # pylint: disable=protected-access
    by_layer: collections.Counter = collections.Counter()
    for index in fallback:
        if index < len(ops):
            layer, _ = edgetpu._layer_of(ops[index], None)  # pylint: disable=protected-access
            by_layer[f"{layer or '?'} {ops[index].name}"] += 1
    return {
        "partitions": len(delegates),
        "ops": len(originals),
        "fallback_ops": len(fallback),
        "fallback_by_name": dict(counts.most_common()),
        "fallback_by_layer": dict(by_layer.most_common()),
        "fallback_op_indices": sorted(fallback),
    }


def batch_matmul_refusals(tflite_bytes: bytes, fallback_op_indices: Sequence[int]) -> list[dict]:
    """Every BATCH_MATMUL left outside XNNPACK, with the reason where kvid knows it."""
    ops, _, _ = edgetpu._read_model(tflite_bytes)  # pylint: disable=protected-access
    outside = set(fallback_op_indices)
    refusals = []
    for op in ops:
        if op.name != "BATCH_MATMUL" or op.index not in outside:
            continue
        rhs = op.inputs[1]
        if rhs.dtype == "int8" and not rhs.constant and rhs.zero_point not in (None, 0):
            reason = (
                f"right-hand operand zero point {rhs.zero_point}: XNNPACK takes an int8 "
                "BATCH_MATMUL of two activations only with zero point 0"
            )
        else:
            reason = "not known to kvid (read xnnpack_delegate.cc for this op's operands)"
        layer, _ = edgetpu._layer_of(op, None)  # pylint: disable=protected-access
        refusals.append(
            {"op": op.index, "layer": layer, "rhs": rhs.name, "rhs_shape": list(rhs.shape),
             "reason": reason}
        )  # fmt: skip
    return refusals


def batch_matmuls(tflite_bytes: bytes) -> list[dict[str, Any]]:
    """Every BATCH_MATMUL: its kvid layer and its right-hand operand (name, dtype, zero point,
    whether a constant)."""
    ops, _, _ = edgetpu._read_model(tflite_bytes)  # pylint: disable=protected-access
    found = []
    for op in ops:
        if op.name != "BATCH_MATMUL":
            continue
        rhs = op.inputs[1]
        layer, _ = edgetpu._layer_of(op, None)  # pylint: disable=protected-access
        found.append(
            {"op": op.index, "layer": layer, "rhs": rhs.name, "dtype": rhs.dtype,
             "zero_point": rhs.zero_point, "constant": rhs.constant}
        )  # fmt: skip
    return found


def asymmetric_batch_matmuls(tflite_bytes: bytes) -> list[dict[str, Any]]:
    """The int8 BATCH_MATMULs whose right-hand operand is an activation with a non-zero zero
    point: XNNPACK refuses each (see `batch_matmul_refusals`)."""
    return [
        m
        for m in batch_matmuls(tflite_bytes)
        if m["dtype"] == "int8" and not m["constant"] and m["zero_point"] not in (None, 0)
    ]


def gmacs(tflite_bytes: bytes) -> float:
    """Matrix-op multiply-accumulates per invoke, in billions (docs/design.md section 6)."""
    ops, _, _ = edgetpu._read_model(tflite_bytes)  # pylint: disable=protected-access
    return sum(edgetpu._macs(op) for op in ops) / 1e9  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def smooth_clips(shape: Sequence[int], count: int, seed: int = 0) -> list[np.ndarray]:
    """Low-frequency random clips in [0, 1] of `shape` (T, H, W, C), each with a batch axis of 1:
    a 4x4 random field per frame, bilinearly resized to H x W (feature maps computed from them
    have structure, unlike white noise, and every patch of a clip differs)."""
    import tensorflow as tf

    frames, height, width, channels = shape
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        coarse = rng.random((frames, 4, 4, channels)).astype(np.float32)
        clip = tf.image.resize(coarse, (height, width)).numpy()
        clips.append(clip[None].clip(0, 1).astype(np.float32))
    return clips


def random_weights_tflite(
    model: Any, calibration_clips: int = 4, clips: Sequence[np.ndarray] | None = None
) -> bytes:
    """A Keras model converted to int8 by post-training quantization, with every BATCH_MATMUL's
    right-hand operand at zero point 0 as `kvid-convert` writes it.

    Calibrates on `clips` when given (e.g. the clips a caller set batch-norm statistics from),
    else on `calibration_clips` `smooth_clips`. Draw calibration clips like the clips the model
    is then compared on: ranges calibrated on a periodically tiled field, whose patches are all
    alike, left the LayerNorm variances of XViT too narrow for smooth clips (cosine 0.82).
    """
    from kvid_tflite.convert import convert_keras_model

    if clips is None:
        clips = smooth_clips(model.input_shape[1:], calibration_clips)
    clips = [np.asarray(clip, np.float32) for clip in clips]
    return convert_keras_model(model, "int8", lambda: clips, symmetric_rhs=True)


def preset_tflite(
    name: str,
    num_classes: int = 400,
    calibration_clips: int = 4,
    overrides: dict[str, Any] | None = None,
) -> bytes:
    """A preset with random weights, converted by `random_weights_tflite`."""
    import kvid.models

    model = kvid.models.create(name, num_classes=num_classes, **(overrides or {}))
    return random_weights_tflite(model, calibration_clips)


def movinet_a0_model(
    frames: int,
    height: int,
    width: int,
    num_classes: int = 400,
    activation: str = "relu",
    gating_activation: str = "sigmoid",
) -> Any:
    """MoViNet-A0 in Model Garden's deployable base form (non-causal, stream-free, (2+1)D convs
    as Conv2D on reshaped views, 3D squeeze-excitation), one flat `(1, T, H, W, 3)` input.

    Raises ImportError when `official.projects.movinet` (tf-models-official) is not importable.
    """
    import tf_keras as keras
    from official.projects.movinet.modeling import movinet, movinet_model

    shape = (1, frames, height, width, 3)
    spec = keras.layers.InputSpec(shape=shape)
    backbone = movinet.Movinet(
        model_id="a0",
        causal=False,
        conv_type="2plus1d",
        se_type="3d",
        input_specs=spec,
        activation=activation,
        gating_activation=gating_activation,
        use_sync_bn=False,
        use_external_states=False,
    )
    classifier = movinet_model.MovinetClassifier(
        backbone,
        num_classes=num_classes,
        output_states=False,
        input_specs=dict(image=spec),
        activation=activation,
    )
    inputs = keras.Input(shape[1:], batch_size=1, name="image")
    return keras.Model(inputs, classifier(inputs), name=f"movinet_a0_{frames}x{height}x{width}")


def clip_input(tflite_bytes: bytes) -> tuple[int, int, int] | None:
    """`(T, H, W)` of a model whose input is one `(1, T, H, W, 3)` clip, else None."""
    details = TFLiteModel(tflite_bytes, num_threads=1).input_details
    shape = [int(d) for d in details["shape"]]
    if len(shape) == 5 and shape[0] == 1 and shape[-1] == 3:
        return shape[1], shape[2], shape[3]
    return None


def movinet_rows(
    models: dict[str, bytes], num_classes: int = 400
) -> tuple[dict[str, bytes], str | None]:
    """MoViNet-A0 (ReLU) at the clip input of each model, or ({}, why there are none)."""
    inputs = sorted({shape for shape in map(clip_input, models.values()) if shape})
    if not inputs:
        return {}, "no model takes a (1, T, H, W, 3) clip"
    rows = {}
    for frames, height, width in inputs:
        try:
            model = movinet_a0_model(frames, height, width, num_classes)
        except ImportError as error:
            return {}, f"official.projects.movinet is not importable ({error})"
        rows[f"movinet_a0_relu@{frames}x{height}x{width}"] = random_weights_tflite(model)
    return rows, None


def load_model(source: str, **preset_options: Any) -> bytes:
    """`.tflite` bytes of a file path, or of a preset name converted by `preset_tflite`."""
    if source.endswith(".tflite") or os.path.sep in source or os.path.exists(source):
        if not os.path.isfile(source):
            raise ValueError(f"{source}: no such .tflite file")
        with open(source, "rb") as f:
            content = f.read()
        if len(content) < 8 or content[4:8] != b"TFL3":
            raise ValueError(f"{source}: not a TFLite flatbuffer (no TFL3 identifier)")
        return content
    import kvid.models

    if source not in kvid.models.list_presets():
        raise ValueError(
            f"{source}: neither a .tflite file nor a preset (kvid.models.list_presets())"
        )
    return preset_tflite(source, **preset_options)


def benchmark(
    models: dict[str, bytes], threads: Sequence[int], runs: int, warmup: int = 5
) -> dict[str, Any]:
    """The report of several models, timed in turn at each thread count in this process."""
    load_before = load_average()
    rows = {}
    for name, content in models.items():
        fallback = xnnpack_fallback(content)
        rows[name] = {
            "name": name,
            "size_bytes": len(content),
            "gmacs": gmacs(content),
            "xnnpack": fallback,
            "batch_matmul_refusals": batch_matmul_refusals(
                content, fallback["fallback_op_indices"]
            ),
            "latency": {},
        }
    for count in threads:
        for name, content in models.items():  # interleaved: load changes hit every model alike
            timing = latency(content, count, runs, warmup)
            timing["gmacs_per_s"] = rows[name]["gmacs"] / (timing["median_ms"] / 1000.0)
            rows[name]["latency"][str(count)] = timing
    return {
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "threads": list(threads),
        "runs": runs,
        "warmup": warmup,
        "models": list(rows.values()),
    }


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    threads = report["threads"]
    head = ["model", "MB", "GMACs"] + [f"{t}t median / p90 ms" for t in threads]
    head += [f"GMAC/s {threads[0]}t", "partitions", "ops outside XNNPACK", "BATCH_MATMUL refused"]
    lines = [
        f"# kvid-benchmark ({machine['date']})",
        "",
        f"{machine['cpu']}, {machine['cores']} cores; LiteRT {machine['ai_edge_litert']}; "
        f"load average {report['load_average_before']} before, {report['load_average_after']} "
        f"after; {report['runs']} runs after {report['warmup']} warm-up invokes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in report["models"]:
        timings = [row["latency"][str(t)] for t in threads]
        xnn = row["xnnpack"]
        cells = [row["name"], f"{row['size_bytes'] / 1e6:.2f}", f"{row['gmacs']:.3f}"]
        cells += [f"{t['median_ms']:.2f} / {t['p90_ms']:.2f}" for t in timings]
        cells += [f"{timings[0]['gmacs_per_s']:.1f}", str(xnn["partitions"])]
        cells += [
            f"{xnn['fallback_ops']} of {xnn['ops']}: "
            + ", ".join(f"{k} {v}" for k, v in xnn["fallback_by_name"].items()),
            str(len(row["batch_matmul_refusals"])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for row in report["models"]:
        by_layer = row["xnnpack"]["fallback_by_layer"]
        if by_layer:
            lines += ["", f"## {row['name']}: ops outside XNNPACK by layer", ""]
            lines += [f"- {layer_op}: {count}" for layer_op, count in by_layer.items()]
        for refusal in row["batch_matmul_refusals"][:20]:
            lines.append(
                f"- BATCH_MATMUL op {refusal['op']} ({refusal['layer']}): {refusal['reason']}"
            )
    if report.get("notes"):
        lines += [""] + report["notes"]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str) -> None:
    """Latency at the first thread count vs GMACs, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = str(report["threads"][0])
    figure, axes = plt.subplots(figsize=(6, 4))
    for row in report["models"]:
        x, y = row["gmacs"], row["latency"][first]["median_ms"]
        axes.scatter([x], [y])
        axes.annotate(row["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("GMACs per clip (matrix ops)")
    axes.set_ylabel(f"int8 latency, {first} thread(s), median ms")
    axes.set_title(f"kvid-benchmark, {report['machine']['cpu']}", fontsize=9)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict[str, Any], output_dir: str, name: str) -> list[str]:
    """Writes NAME.md, NAME.json and NAME.png; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, name)
    paths = [stem + ".md", stem + ".json", stem + ".png"]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(markdown(report))
    with open(paths[1] + ".tmp", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    os.replace(paths[1] + ".tmp", paths[1])
    plot(report, paths[2])
    return paths


# ------------------------------------------------------------------------------------------------
# Command
# ------------------------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Defines kvid-benchmark's flags and returns their names."""
    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_list("threads", ["1", "2", "4"], "Interpreter thread counts to time.", **fv)
    flags.DEFINE_integer(
        "runs", 50, "Timed invokes per model and thread count.", lower_bound=1, **fv
    )
    flags.DEFINE_integer("warmup", 5, "Untimed invokes before timing.", lower_bound=0, **fv)
    flags.DEFINE_string("output_dir", "benchmarks/results", "Where NAME.md/.json/.png go.", **fv)
    flags.DEFINE_string("name", "benchmark", "File name (stem) of the results.", **fv)
    flags.DEFINE_integer("num_classes", 400, "Classes of presets built here.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "num_frames", None, "Frames of presets built here (default: theirs).", **fv
    )
    flags.DEFINE_integer("image_size", None, "Frame size of presets built here.", **fv)
    flags.DEFINE_bool(
        "movinet",
        True,
        "Add MoViNet-A0 (ReLU) rows at each model's clip input (needs tf-models-official).",
        **fv,
    )
    return sorted(set(flag_values) - before)


def benchmark_from_flags(values: flags.FlagValues, sources: Sequence[str]) -> int:
    """The command, on parsed flags and the model arguments; returns the exit code."""
    if not sources:
        raise ValueError("name at least one .tflite file or preset after the flags")
    try:
        threads = [int(t) for t in values.threads]
    except ValueError:
        raise ValueError(f"--threads={','.join(values.threads)}: expected integers") from None
    if not threads or min(threads) < 1:
        raise ValueError(f"--threads={','.join(values.threads)}: expected counts >= 1")
    overrides = {
        key: value
        for key, value in (("num_frames", values.num_frames), ("image_size", values.image_size))
        if value is not None
    }
    models = {}
    for source in sources:
        name = (
            os.path.splitext(os.path.basename(source))[0] if source.endswith(".tflite") else source
        )
        if name in models:
            name = source
        models[name] = load_model(source, num_classes=values.num_classes, overrides=overrides)
    notes = []
    if values.movinet:
        rows, reason = movinet_rows(models, values.num_classes)
        models.update(rows)
        if reason:
            notes.append(f"MoViNet-A0 rows skipped: {reason}.")
    report = benchmark(models, threads, values.runs, values.warmup)
    report["notes"] = notes
    paths = write_report(report, values.output_dir, values.name)
    print(markdown(report))
    print("wrote " + ", ".join(paths))
    return 0


def run() -> None:
    """Console-script entry point (`kvid-benchmark`)."""
    kvid.cli.run_tool(
        TOOL,
        __doc__,
        define_flags,
        lambda argv: benchmark_from_flags(flags.FLAGS, argv[1:]),
        positional=True,
    )


if __name__ == "__main__":
    run()
