"""kvid-prepare throughput: videos/s of the local worker processes and of the Beam DirectRunner.

Writes a folder of 50 good videos (H.264 mp4, VP9 webm, MJPEG avi, HEVC mkv, MPEG-4 mov; 5
classes; 2-4 s at 15 fps; 128x96 to 480x270) and 10 broken files (truncated, empty, random
bytes, text or an image under a video name, audio only, a directory, a damaged header), then
prepares it `--repeats` times with each runner into a fresh folder (`--frame_size=72 --fps=15`)
and reports the median videos/s of the prepare step itself (TensorFlow and Beam already
imported; the local run includes starting its worker processes, the Beam run building and
running the pipeline). Writes benchmarks/results/prepare_throughput.{json,md}.

  python benchmarks/prepare_throughput.py
  python benchmarks/prepare_throughput.py --repeats 1 --num_workers 2 --videos /tmp/videos
"""

from __future__ import annotations

import argparse
import fractions
import functools
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np

# Imported in main() only: the decode workers are spawned processes that import this script,
# and TensorFlow (common), Beam or LiteRT there would cost seconds per worker.

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (extension, codec, pixel format): the containers and codecs phones and cameras produce.
FORMATS = (
    (".mp4", "libx264", "yuv420p"),
    (".webm", "libvpx-vp9", "yuv420p"),
    (".avi", "mjpeg", "yuvj420p"),
    (".mkv", "libx265", "yuv420p"),
    (".mov", "mpeg4", "yuv420p"),
)
SIZES = ((96, 128), (120, 160), (180, 320), (270, 480))
CLASSES = ("drift", "pulse", "sweep", "flash", "rise")
RATE = 15


def _frames(seed: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A moving bright square over a grey ramp: content the codecs have to code."""
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[:] = np.linspace(30, 200, width, dtype=np.uint8)[None, None, :, None]
    side = max(8, height // 4)
    y, x = rng.integers(0, height - side), rng.integers(0, width - side)
    dy, dx = rng.integers(-3, 4, size=2)
    for t in range(num_frames):
        top = int(np.clip(y + dy * t, 0, height - side))
        left = int(np.clip(x + dx * t, 0, width - side))
        frames[t, top : top + side, left : left + side] = (255, 220, 40)
    return frames


def write_video(path: str, frames: np.ndarray, codec: str, pix_fmt: str) -> None:
    """Writes frames (T, H, W, 3) at RATE frames per second with PyAV."""
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=none"}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def write_audio_only(path: str) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            frame.time_base = fractions.Fraction(1, 16000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_corpus(folder: str) -> tuple[int, int]:
    """50 good videos in 5 class folders and 10 broken files; returns (good, broken)."""
    for name in CLASSES:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    good = 0
    for number in range(50):
        extension, codec, pix_fmt = FORMATS[number % len(FORMATS)]
        height, width = SIZES[number % len(SIZES)]
        seconds = 2 + number % 3
        path = os.path.join(folder, CLASSES[number // 10], f"video_{number:02d}{extension}")
        write_video(path, _frames(number, seconds * RATE, height, width), codec, pix_fmt)
        good += 1
    broken = os.path.join(folder, CLASSES[0])
    with open(os.path.join(folder, CLASSES[1], "video_10.mp4"), "rb") as f:
        mp4 = f.read()
    with open(os.path.join(folder, CLASSES[1], "video_13.mkv"), "rb") as f:
        mkv = f.read()
    with open(os.path.join(folder, CLASSES[1], "video_11.webm"), "rb") as f:
        webm = f.read()
    files = {
        "truncated.mp4": mp4[: len(mp4) // 2],
        "truncated.mkv": mkv[: len(mkv) // 2],
        "truncated.webm": webm[: len(webm) // 3],
        "zero.mp4": b"",
        "random.mov": np.random.default_rng(0).bytes(5000),
        "notes.mp4": b"not a video\n" * 100,
        "damaged_header.mp4": b"\x00" * 64 + mp4[64:],
    }
    for name, data in files.items():
        with open(os.path.join(broken, name), "wb") as f:
            f.write(data)
    from PIL import Image

    Image.fromarray(_frames(1, 1, 64, 64)[0]).save(os.path.join(broken, "photo.mp4"), "PNG")
    write_audio_only(os.path.join(broken, "audio.m4a"))
    os.makedirs(os.path.join(broken, "a_folder"))
    return good, len(files) + 3


def time_run(run, folder: str, out_dir: str) -> dict:
    from kvid_training import inputs

    source = inputs.read_folder(folder)
    start = time.perf_counter()
    summary = run(source, out_dir, "train", frame_size=72, fps=15.0)
    seconds = time.perf_counter() - start
    return dict(
        seconds=round(seconds, 2),
        videos_per_s=round(summary["num_inputs"] / seconds, 2),
        clips=summary["num_clips"],
        failures=len(summary["failures"]),
        inputs=summary["num_inputs"],
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=None, help="corpus folder (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_workers", type=int, default=None, help="decode processes")
    parser.add_argument("--output", default=os.path.join(RESULTS, "prepare_throughput.json"))
    args = parser.parse_args(argv)
    from common import load_average, machine_info, markdown_table, write_json, write_text

    from kvid_training import beam_prepare, prepare

    load_before = load_average()
    work = tempfile.mkdtemp(prefix="kvid-prepare-bench-")
    folder = args.videos or os.path.join(work, "videos")
    start = time.perf_counter()
    good, broken = write_corpus(folder) if not os.path.isdir(folder) else (None, None)
    print(f"corpus: {folder} ({time.perf_counter() - start:.1f} s to write)", flush=True)
    workers = args.num_workers or os.cpu_count() or 1
    runners = {
        "local worker processes": functools.partial(prepare.prepare_split, num_workers=workers),
        "Beam DirectRunner": functools.partial(
            beam_prepare.prepare_split,
            num_workers=workers,
            pipeline_args=["--runner=DirectRunner"],
        ),
    }
    rows = []
    for name, run in runners.items():
        runs = [
            time_run(run, folder, os.path.join(work, f"{len(rows)}-{repeat}"))
            for repeat in range(args.repeats)
        ]
        rates = [r["videos_per_s"] for r in runs]
        rows.append(
            dict(
                runner=name,
                decode_processes=workers,
                videos_per_s_median=round(statistics.median(rates), 2),
                videos_per_s=rates,
                seconds=[r["seconds"] for r in runs],
                clips=runs[0]["clips"],
                failures=runs[0]["failures"],
                inputs=runs[0]["inputs"],
            )
        )
        print(rows[-1], flush=True)
    result = dict(
        machine=dict(machine_info(), load_average_before=load_before),
        settings=dict(
            corpus="50 good videos (5 containers/codecs, 2-4 s at 15 fps, 128x96 to 480x270) "
            "and 10 broken files",
            good=good,
            broken=broken,
            frame_size=72,
            fps=15.0,
            repeats=args.repeats,
        ),
        rows=rows,
    )
    write_json(args.output, result)
    table = markdown_table(
        ["runner", "decode processes", "inputs", "clips", "failed", "videos/s (median)", "runs"],
        [
            [
                r["runner"],
                r["decode_processes"],
                r["inputs"],
                r["clips"],
                r["failures"],
                r["videos_per_s_median"],
                ", ".join(str(v) for v in r["videos_per_s"]),
            ]
            for r in rows
        ],
    )
    machine = result["machine"]
    header = (
        f"kvid-prepare throughput, {machine['cpu']} ({machine['cores']} cores, shared), "
        f"{machine['date']}, load average {machine['load_average_before']} before and "
        f"{machine['load_average_1_5_15min']} after; "
        f"{result['settings']['corpus']}, --frame_size=72 --fps=15.\n\n"
    )
    write_text(args.output[: -len(".json")] + ".md", header + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
