"""Int8 error of the Mobile->Former bridge, "full" vs "factorized", as the key count grows.

docs/design.md section 7 (the int8 softmax trap): TFLite's int8 SOFTMAX output has a fixed scale of
1/256, so a softmax over N keys loses every probability below about 1/512. The full (reference)
bridge lets the tokens attend over all N = T x H x W positions of the clip; the factorized one
pools each frame to at most `max_keys_per_frame` keys, attends within each frame, then across
frames. This script measures both, on random weights, post-training quantized:

1. Layer level, for each N: a tiny functional model, video (T, H, W, 3) -> 1x1 conv + ReLU to
   `--channels` features -> `GlobalTokens(6, 64)` + `Mobile2Former` -> tokens (6, 64). Reported:
   relative L2 error and cosine of the int8 vs float token outputs; and the same for the token
   *update*, `out(clip) - out(zero clip)`: a zero clip gives zero features, hence zero attended
   values, so the update is the part of the output that the attention decides (the residual
   tokens pass through a LayerNorm either way and dilute the error of the output itself). An
   int8 attention that rounds every probability to zero has update error 1.0.
2. Model level: vmf_tiny (8x64x64) with `bridge_formulation` full vs factorized, int8 vs float
   logits cosine.

Usage (from the repository root):
  python benchmarks/bridge_int8_error.py
  python benchmarks/bridge_int8_error.py --frames 1,8 --sizes 8,32
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import common
import numpy as np

import kvid
from kvid.backend import keras
from kvid.models.mobile_former.bridge import Mobile2Former
from kvid.models.mobile_former.layers import GlobalTokens
from kvid_tflite.audit import audit_model
from kvid_tflite.litert import TFLiteModel

FORMULATIONS = ("full", "factorized")
NUM_TOKENS, TOKEN_DIM = 6, 64


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="1,4,8", help="comma-separated T values")
    parser.add_argument("--sizes", default="8,16,32", help="comma-separated H = W values")
    parser.add_argument("--channels", type=int, default=32, help="feature channels (keys)")
    parser.add_argument("--max_keys_per_frame", type=int, default=64)
    parser.add_argument("--calibration_clips", type=int, default=8)
    parser.add_argument("--eval_clips", type=int, default=8)
    parser.add_argument("--model_preset", default="vmf_tiny", help="'' skips the model level")
    parser.add_argument("--output", default="benchmarks/results/bridge_int8_error.json")
    return parser.parse_args(argv)


def bridge_model(
    frames: int, size: int, channels: int, formulation: str, max_keys_per_frame: int
) -> keras.Model:
    """Video -> 1x1 conv + ReLU features; learned tokens read them through a Mobile2Former."""
    inputs = keras.Input((frames, size, size, 3), batch_size=1, name="video")
    features = kvid.layers.FrameConv(
        channels, 1, use_bias=True, batch_norm=False, activation="relu", name="features"
    )(inputs)
    tokens = GlobalTokens(NUM_TOKENS, TOKEN_DIM, name="tokens")(inputs)
    outputs = Mobile2Former(
        num_heads=2,
        dynamic_gate=True,
        formulation=formulation,
        max_keys_per_frame=max_keys_per_frame,
        name="m2f",
    )([features, tokens])
    return keras.Model(inputs, outputs, name=f"bridge_{formulation}_{frames}x{size}x{size}")


def _summary(values: list[float], worst: str) -> dict[str, float]:
    pick = max if worst == "max" else min
    return {"mean": float(np.mean(values)), "worst": float(pick(values))}


def measure_bridge(
    frames: int, size: int, formulation: str, args: argparse.Namespace
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "frames": frames,
        "size": size,
        "keys": frames * size * size,
        "formulation": formulation,
    }
    try:
        keras.utils.set_random_seed(0)  # the same weights for both formulations
        model = bridge_model(frames, size, args.channels, formulation, args.max_keys_per_frame)
        shape = model.input_shape[1:]
        layer = model.get_layer("m2f")
        row["pool"] = int(layer.pool)
        row["softmax_support"] = (
            frames * size * size
            if formulation == "full"
            else {"within_frame": (size // layer.pool) ** 2, "across_frames": frames}
        )
        calibration = common.smooth_clips(shape, args.calibration_clips, seed=1)
        tflite_bytes = common.convert_int8(model, calibration)
        row["float_ops"] = len(audit_model(tflite_bytes)["float_ops"])
        runner = TFLiteModel(tflite_bytes, num_threads=1)
        zero = np.zeros((1, *shape), np.float32)
        float_zero, int8_zero = model(zero, training=False).numpy(), runner(zero)
        out_err, out_cos, upd_err, upd_cos, share = [], [], [], [], []
        for clip in common.smooth_clips(shape, args.eval_clips, seed=2):
            reference, estimate = model(clip, training=False).numpy(), runner(clip)
            out_err.append(common.relative_l2(estimate, reference))
            out_cos.append(common.cosine(estimate, reference))
            update, update_int8 = reference - float_zero, estimate - int8_zero
            upd_err.append(common.relative_l2(update_int8, update))
            upd_cos.append(common.cosine(update_int8, update))
            share.append(float(np.linalg.norm(update) / np.linalg.norm(reference)))
        row.update(
            output_rel_l2=_summary(out_err, "max"),
            output_cosine=_summary(out_cos, "min"),
            update_rel_l2=_summary(upd_err, "max"),
            update_cosine=_summary(upd_cos, "min"),
            update_share_of_output=float(np.mean(share)),
        )
    except Exception as error:  # noqa: BLE001 - one failing point must not stop the sweep
        row["error"] = f"{type(error).__name__}: {error}"
        print(f"[{row['formulation']} {frames}x{size}x{size}] FAILED: {row['error']}", flush=True)
    finally:
        keras.backend.clear_session()
        gc.collect()
    return row


def measure_model(preset: str, formulation: str, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"preset": preset, "bridge_formulation": formulation}
    try:
        keras.utils.set_random_seed(0)
        model = kvid.models.create(preset, num_classes=10, bridge_formulation=formulation)
        shape = model.input_shape[1:]
        row["input"] = "x".join(str(d) for d in shape[:3])
        tflite_bytes = common.convert_int8(
            model, common.smooth_clips(shape, args.calibration_clips, seed=1)
        )
        row["float_ops"] = len(audit_model(tflite_bytes)["float_ops"])
        runner = TFLiteModel(tflite_bytes, num_threads=1)
        cosines, errors = [], []
        for clip in common.smooth_clips(shape, args.eval_clips, seed=2):
            reference, estimate = model(clip, training=False).numpy(), runner(clip)
            cosines.append(common.cosine(estimate, reference))
            errors.append(common.relative_l2(estimate, reference))
        row.update(logits_cosine=_summary(cosines, "min"), logits_rel_l2=_summary(errors, "max"))
    except Exception as error:  # noqa: BLE001
        row["error"] = f"{type(error).__name__}: {error}"
        print(f"[{preset} {formulation}] FAILED: {row['error']}", flush=True)
    finally:
        keras.backend.clear_session()
        gc.collect()
    return row


def _cell(row: dict[str, Any], key: str, stat: str, spec: str) -> str:
    return format(row[key][stat], spec) if key in row else "ERROR"


def _support(row: dict[str, Any]) -> str:
    support = row.get("softmax_support", "-")
    if isinstance(support, dict):
        return f"{support['within_frame']} then {support['across_frames']}"
    return str(support)


def format_bridge_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "keys N (TxHxW)", "formulation", "softmax over", "out rel-L2 mean / max",
        "out cos mean / min", "update rel-L2 mean / max", "update cos mean / min",
        "update share", "float ops",
    ]  # fmt: skip
    body = []
    for row in rows:
        body.append([
            f"{row['keys']} ({row['frames']}x{row['size']}x{row['size']})",
            row["formulation"], _support(row),
            f"{_cell(row, 'output_rel_l2', 'mean', '.3f')} / "
            f"{_cell(row, 'output_rel_l2', 'worst', '.3f')}",
            f"{_cell(row, 'output_cosine', 'mean', '.4f')} / "
            f"{_cell(row, 'output_cosine', 'worst', '.4f')}",
            f"{_cell(row, 'update_rel_l2', 'mean', '.3f')} / "
            f"{_cell(row, 'update_rel_l2', 'worst', '.3f')}",
            f"{_cell(row, 'update_cosine', 'mean', '.4f')} / "
            f"{_cell(row, 'update_cosine', 'worst', '.4f')}",
            format(row["update_share_of_output"], ".2f") if "update_share_of_output" in row
            else "-",
            row.get("float_ops", row.get("error", "-")),
        ])  # fmt: skip
    return common.markdown_table(headers, body)


def format_model_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "preset", "input", "bridge", "logits cos mean / min", "logits rel-L2 mean / max",
        "float ops",
    ]  # fmt: skip
    body = [
        [
            row["preset"], row.get("input", "-"), row["bridge_formulation"],
            f"{_cell(row, 'logits_cosine', 'mean', '.4f')} / "
            f"{_cell(row, 'logits_cosine', 'worst', '.4f')}",
            f"{_cell(row, 'logits_rel_l2', 'mean', '.3f')} / "
            f"{_cell(row, 'logits_rel_l2', 'worst', '.3f')}",
            row.get("float_ops", row.get("error", "-")),
        ]
        for row in rows
    ]  # fmt: skip
    return common.markdown_table(headers, body)


def report_text(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; {machine['date']}; "
        f"TF {machine['tensorflow']}, LiteRT {machine['ai_edge_litert']}; load average "
        f"(1/5/15 min) at start {machine['load_average_1_5_15min']}.",
        f"Layer: video -> 1x1 conv + ReLU ({payload['channels']} channels) -> GlobalTokens"
        f"({NUM_TOKENS}, {TOKEN_DIM}) + Mobile2Former(num_heads=2, dynamic_gate=True, "
        f"max_keys_per_frame={payload['max_keys_per_frame']}); random weights (seed 0, the same "
        f"for both formulations); PTQ on {payload['calibration_clips']} smooth random clips, "
        f"errors over {payload['eval_clips']} others. update = out(clip) - out(zero clip).",
        "",
        format_bridge_table(payload["bridge"]),
    ]
    if payload["model"]:
        lines += [
            "",
            "Model level (random weights, 10 classes, same PTQ and clips):",
            "",
            format_model_table(payload["model"]),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    frames_list = [int(v) for v in args.frames.split(",")]
    sizes = [int(v) for v in args.sizes.split(",")]
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "machine": common.machine_info(),
        "channels": args.channels,
        "max_keys_per_frame": args.max_keys_per_frame,
        "calibration_clips": args.calibration_clips,
        "eval_clips": args.eval_clips,
        "bridge": [],
        "model": [],
    }
    points = sorted(((t, s) for t in frames_list for s in sizes), key=lambda p: p[0] * p[1] ** 2)
    for frames, size in points:
        for formulation in FORMULATIONS:
            row = measure_bridge(frames, size, formulation, args)
            payload["bridge"].append(row)
            print(format_bridge_table([row]).splitlines()[-1], flush=True)
            common.write_json(args.output, payload)
    if args.model_preset:
        for formulation in FORMULATIONS:
            row = measure_model(args.model_preset, formulation, args)
            payload["model"].append(row)
            print(format_model_table([row]).splitlines()[-1], flush=True)
    payload["load_average_at_end"] = common.load_average()
    payload["wall_s"] = time.perf_counter() - started
    common.write_json(args.output, payload)
    text = report_text(payload)
    print("\n" + text)
    common.write_text(args.output.removesuffix(".json") + ".md", text)
    failed = [r for r in payload["bridge"] + payload["model"] if "error" in r]
    if failed:
        print(f"FAILED: {len(failed)} measurement(s), errors recorded in {args.output}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
