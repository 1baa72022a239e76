"""kvid-classify: classify video files with a `.tflite` written by kvid-convert.

    kvid-classify --model=runs/vmf_tiny/export/model_int8.tflite clip.mp4 other.webm
    kvid-classify --model=model_int8.tflite --num_clips=4 --num_crops=3 long.mp4
    kvid-classify --model=model_int8.tflite --window_stride=8 --json camera_recording.mp4

The `.tflite` alone is enough: its labels, input layout, clip shape and frame stride are read from
the kvid metadata inside it (files converted before that existed fall back to the sidecar JSON).
Videos are decoded with PyAV and sampled exactly as evaluation samples them (kvid.data.sampling):
by default the middle clip, centre crop; `--num_clips` / `--num_crops` average the softmax scores
of more views; `--window_stride` slides one clip over the whole video and prints one line per
window with its time span, the scores averaged over the last `--smooth` windows. Needs numpy,
PyAV and LiteRT, not TensorFlow.

`--device=edgetpu` runs the model with the Edge TPU delegate (`libedgetpu.so.1`), after loading
it once in a separate process: a libedgetpu built for another TFLite version can crash the process
that loads it, and that must not be this one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags
from av.error import FFmpegError

import kvid.cli
from kvid.data import sampling
from kvid.data.video import decode_frames, video_frame_rate
from kvid_tflite.litert import (
    EDGETPU_LIBRARY,
    TFLiteModel,
    probe_delegate,
    read_description,
    read_input_layout,
)

TOOL = "kvid-classify"
DEVICES = ("cpu", "edgetpu")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Defines kvid-classify's flags and returns their names."""
    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "The .tflite written by kvid-convert.", **fv)
    flags.DEFINE_integer("top_k", 5, "Labels to print per video or window.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "num_clips", 1, "Uniformly spaced clips per video (1: the middle one).", lower_bound=1, **fv
    )
    flags.DEFINE_enum("num_crops", "1", ["1", "3"], "Crops per clip: 1 (centre) or 3.", **fv)
    flags.DEFINE_integer(
        "window_stride",
        None,
        "Slide one clip over the video, a window every this many frames (one line per window).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "smooth",
        3,
        "Sliding windows: average the scores of the last N windows.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "frame_stride", None, "Frames between sampled frames (default: the model's).", **fv
    )
    flags.DEFINE_bool("json", False, "Print one JSON document instead of text.", **fv)
    flags.DEFINE_integer("num_threads", None, "Interpreter threads (default: LiteRT's).", **fv)
    flags.DEFINE_enum("device", "cpu", list(DEVICES), "Run on the CPU or the Edge TPU.", **fv)
    return sorted(set(flag_values) - before)


class Classifier:
    """A kvid `.tflite` with what it records about its input: labels and clip sampling.

    Args:
      path: the `.tflite` file.
      num_threads: interpreter threads.
      delegates: LiteRT delegates (e.g. the Edge TPU's), None for the CPU.

    Raises:
      ValueError: the file is not a usable kvid `.tflite` (named in the message).
    """

    def __init__(self, path: str, num_threads: int | None = None, delegates=None) -> None:
        description = read_description(path)
        if not description or not description.get("labels"):
            raise ValueError(
                f"{path} records no labels (no kvid metadata, no sidecar JSON): convert it with "
                "kvid-convert"
            )
        _, clip_shape = read_input_layout(path)
        self.path = path
        self.model = TFLiteModel(
            path, num_threads=num_threads, clip_shape=clip_shape, delegates=delegates
        )
        self.labels = [str(label) for label in description["labels"]]
        model_input = description.get("input") or {}
        self.frame_stride = int(model_input.get("frame_stride") or 1)
        stored = (model_input.get("sampling") or {}).get("stored_frame_size")
        self.stored_frame_size = None if stored is None else (int(stored[0]), int(stored[1]))
        self.num_frames, height, width, _ = self.model.clip_shape
        self.image_size = (height, width)
        if len(self.labels) != self.model.output_shape[-1]:
            raise ValueError(
                f"{path}: {len(self.labels)} labels for {self.model.output_shape[-1]} outputs"
            )

    def frames(self, video: str) -> tuple[np.ndarray, float | None]:
        """The video's frames at the evaluation resize size (float32, [0, 1]) and its frame rate.

        Each frame is resized as it is decoded, so a long or large video never holds its
        full-size frames in memory.
        """
        resized, size = [], None
        try:
            for frame in decode_frames(video, self.stored_frame_size, None):
                if size is None:
                    size = sampling.eval_resize_size(frame.shape[:2], self.image_size)
                resized.append(sampling.resize_frames(frame[None], size)[0])
            rate = video_frame_rate(video)
        except (OSError, ValueError, FFmpegError) as error:  # FFmpegError: PyAV's own errors
            raise ValueError(f"{video}: cannot decode: {error}") from None
        return np.stack(resized), rate

    def scores(self, views: np.ndarray) -> tuple[np.ndarray, float]:
        """Softmax scores of each view (V, classes) and the milliseconds per view."""
        start = time.perf_counter()
        logits = self.model(views.astype(np.float32))
        milliseconds = 1000 * (time.perf_counter() - start) / len(views)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True), milliseconds

    def top(self, scores: np.ndarray, k: int) -> list[dict[str, Any]]:
        order = np.argsort(-scores, kind="stable")[:k]
        return [{"label": self.labels[i], "score": float(scores[i])} for i in order]

    def classify(
        self,
        video: str,
        top_k: int = 5,
        num_clips: int = 1,
        num_crops: int = 1,
        frame_stride: int | None = None,
    ) -> dict[str, Any]:
        """Scores averaged over `num_clips` x `num_crops` evaluation views of the video."""
        stride = frame_stride or self.frame_stride
        frames, rate = self.frames(video)
        starts = sampling.clip_starts(len(frames), self.num_frames, stride, num_clips)
        indices = sampling.clip_indices(starts, self.num_frames, stride, len(frames))
        views = sampling.views_from_resized(frames, indices, self.image_size, num_crops)
        scores, milliseconds = self.scores(views)
        mean = scores.mean(axis=0)
        return {
            "video": video,
            "frames": len(frames),
            "fps": rate,
            "views": len(views),
            "ms_per_clip": milliseconds,
            "scores": mean.tolist(),
            "top": self.top(mean, top_k),
        }

    def windows(
        self,
        video: str,
        window_stride: int,
        top_k: int = 5,
        smooth: int = 1,
        frame_stride: int | None = None,
    ) -> dict[str, Any]:
        """One centre-crop clip every `window_stride` frames, scores averaged over the last
        `smooth` windows."""
        stride = frame_stride or self.frame_stride
        frames, rate = self.frames(video)
        span = sampling.clip_span(self.num_frames, stride)
        results, history = [], []
        for start in sampling.window_starts(len(frames), self.num_frames, stride, window_stride):
            indices = sampling.clip_indices([start], self.num_frames, stride, len(frames))
            views = sampling.views_from_resized(frames, indices, self.image_size, 1)
            scores, milliseconds = self.scores(views)
            history = (history + [scores[0]])[-smooth:]
            end = min(start + span, len(frames))
            results.append(
                {
                    "start_frame": start,
                    "end_frame": end,
                    "start_s": None if not rate else start / rate,
                    "end_s": None if not rate else end / rate,
                    "ms_per_clip": milliseconds,
                    "top": self.top(np.mean(history, axis=0), top_k),
                }
            )
        return {"video": video, "frames": len(frames), "fps": rate, "windows": results}


def _span(window: dict[str, Any]) -> str:
    if window["start_s"] is None:
        return f"frames {window['start_frame']}-{window['end_frame']}"
    return f"{window['start_s']:7.2f}-{window['end_s']:7.2f} s"


def format_text(result: dict[str, Any], classifier: Classifier) -> str:
    """The human-readable lines of one video's result."""
    shape = "x".join(str(d) for d in (classifier.num_frames, *classifier.image_size))
    rate = f" at {result['fps']:.2f} fps" if result.get("fps") else ""
    if "windows" in result:
        lines = [f"{result['video']}: {result['frames']} frames{rate}; windows of {shape}"]
        for window in result["windows"]:
            best = window["top"][0]
            others = ", ".join(f"{t['label']} {t['score']:.3f}" for t in window["top"][1:])
            lines.append(
                f"  {_span(window)}  {best['label']} {best['score']:.3f}"
                + (f"  ({others})" if others else "")
            )
        return "\n".join(lines)
    lines = [
        f"{result['video']}: {result['frames']} frames{rate}; {result['views']} view(s) of "
        f"{shape}; {result['ms_per_clip']:.1f} ms per clip"
    ]
    for rank, entry in enumerate(result["top"], 1):
        lines.append(f"  {rank}. {entry['label']}  {entry['score']:.3f}")
    return "\n".join(lines)


def edgetpu_delegates() -> list:
    """The Edge TPU delegate, once a separate process has loaded it without harm."""
    problem = probe_delegate(EDGETPU_LIBRARY)
    if problem:
        raise ValueError(f"--device=edgetpu: {problem}")
    from ai_edge_litert.interpreter import load_delegate

    return [load_delegate(EDGETPU_LIBRARY)]


def classify_from_flags(values: flags.FlagValues, videos: Sequence[str]) -> int:
    """The command, on parsed flags and the video paths; returns the exit code."""
    if not values.model:
        raise ValueError("--model is required (a .tflite written by kvid-convert)")
    if not videos:
        raise ValueError("name at least one video file after the flags")
    delegates = edgetpu_delegates() if values.device == "edgetpu" else None
    classifier = Classifier(values.model, values.num_threads, delegates)
    results, failed = [], 0
    for video in videos:
        try:
            if values.window_stride:
                result = classifier.windows(
                    video, values.window_stride, values.top_k, values.smooth, values.frame_stride
                )
            else:
                result = classifier.classify(
                    video,
                    values.top_k,
                    values.num_clips,
                    int(values.num_crops),
                    values.frame_stride,
                )
        except ValueError as error:  # one bad video costs only that video
            kvid.cli.report_error(TOOL, error)
            failed += 1
            continue
        result.pop("scores", None)
        results.append(result)
        if not values.json:
            print(format_text(result, classifier), flush=True)
    if values.json:
        print(json.dumps({"model": values.model, "device": values.device, "videos": results}))
    return 2 if failed else 0


def run() -> None:
    """Console-script entry point (`kvid-classify`)."""
    kvid.cli.run_tool(
        TOOL,
        __doc__,
        define_flags,
        lambda argv: classify_from_flags(flags.FLAGS, argv[1:]),
        positional=True,
    )


if __name__ == "__main__":
    run()
