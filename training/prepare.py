"""Videos + CSV manifest -> TFRecord shards of `tf.train.SequenceExample` with one JPEG per frame.

This is the Model Garden / DMVR format (`official/vision/dataloaders/video_input.py`) that
`pipeline.py` reads: context `clip/label/index`, `clip/label/text`, `clip/id`, `clip/num_frames`,
and the feature list `image/encoded`. The embedded synthetic dataset goes through exactly this code.

A manifest is a CSV with a header `path,label` (and optionally `id`); relative paths resolve
against the CSV's folder. Example:

    kvid-prepare --csv=/data/clips/train.csv --out_dir=/data/kvid --split=train

Preparing several splits into one `out_dir` keeps one `dataset.json` describing all of them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging

from kvid.data.dataset import (
    DATASET_INFO,
    encode_clip,
    read_dataset_info,
    write_dataset_info,
    write_shards,
)
from kvid.data.video import decode_frames, encode_jpeg

# TensorFlow is never imported here: the decode workers are spawned processes that import this
# module, and loading TensorFlow there would cost seconds per worker.
_CLIPS_PER_SHARD = 200


def process_pool(
    num_workers: int | None, num_jobs: int, min_jobs_per_worker: int = 32
) -> contextlib.AbstractContextManager[multiprocessing.pool.Pool | None]:
    """A pool of spawned worker processes, or None when the jobs are too few to be worth one.

    Spawn, not fork: callers usually have TensorFlow loaded with its thread pools running, and
    forking a multi-threaded process can deadlock the child. A spawned worker re-imports the
    caller's main module (for training/train.py that is TensorFlow, ~2.5 s of CPU per worker), so
    callers with several batches of jobs share one pool. As with any spawn pool, a script that
    uses one must guard its entry point with `if __name__ == "__main__":`.
    """
    num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    num_workers = min(num_workers, num_jobs // min_jobs_per_worker)
    if num_workers <= 1:
        return contextlib.nullcontext(None)
    return multiprocessing.get_context("spawn").Pool(num_workers)


def map_in_processes(
    function: Callable[[Any], Any],
    jobs: Sequence[Any],
    num_workers: int | None = None,
    pool: multiprocessing.pool.Pool | None = None,
) -> Iterator[Any]:
    """Ordered `map(function, jobs)` in worker processes (`pool`, else a pool of its own).

    Results come back in job order, so the output does not depend on the number of workers.
    """
    if pool is not None:
        yield from pool.imap(function, jobs, chunksize=8)
        return
    with process_pool(num_workers, len(jobs)) as own_pool:
        yield from (
            map(function, jobs) if own_pool is None else own_pool.imap(function, jobs, chunksize=8)
        )


def read_manifest(
    csv_path: str, classes: Sequence[str] | None = None
) -> tuple[list[dict], list[str]]:
    """Reads a `path,label[,id]` CSV; returns (rows, classes).

    Each row has `line`, `path` (resolved against the CSV's folder), `label_index`, `label` and
    `id` (the `id` column, else the path as written). Without `classes`, the sorted set of labels
    in the CSV is used; with it, an unknown label is an error naming the file and line.
    """
    base = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"path", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"{csv_path}: the header must name the columns path,label (optionally id); "
                    f"missing {sorted(missing)}, found {reader.fieldnames}."
                )
            records = [(reader.line_num, record) for record in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{csv_path}: not a UTF-8 CSV manifest ({error}).") from None
    except IsADirectoryError:
        raise ValueError(f"{csv_path}: a directory, not a CSV manifest.") from None
    if classes is None:
        classes = sorted({record["label"] for _, record in records})
    classes = list(classes)
    index = {name: i for i, name in enumerate(classes)}
    rows = []
    for line, record in records:
        path, label = (record["path"] or "").strip(), (record["label"] or "").strip()
        if not path:
            raise ValueError(f"{csv_path}, line {line}: empty path.")
        if not label:
            raise ValueError(f"{csv_path}, line {line}: empty label (every video needs a class).")
        if label not in index:
            raise ValueError(
                f"{csv_path}, line {line}: unknown label {label!r}; known classes: {classes}."
            )
        clip_id = (record.get("id") or "").strip() or path
        rows.append(
            dict(
                line=line,
                path=os.path.join(base, path),
                label_index=index[label],
                label=label,
                id=clip_id,
            )
        )
    return rows, classes


def _load_clip(job: tuple) -> tuple[list[bytes] | None, list[int] | None, str | None]:
    """Worker: decodes and JPEG-encodes one video; returns (jpegs, [height, width], error)."""
    path, frame_size, max_frames, quality = job
    try:
        frames = list(decode_frames(path, frame_size, max_frames))
        return encode_jpeg(frames, quality), list(frames[0].shape[:2]), None
    except Exception as error:  # noqa: BLE001 -- any failure is reported per clip, not fatal
        return None, None, f"{type(error).__name__}: {error}"


def prepare_split(
    csv_path: str,
    out_dir: str,
    split: str,
    classes: Sequence[str] | None = None,
    num_shards: int | None = None,
    frame_size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    jpeg_quality: int = 90,
    shuffle_seed: int | None = 0,
    num_workers: int | None = None,
    pool: multiprocessing.pool.Pool | None = None,
) -> dict:
    """Decodes every video of a CSV manifest and writes the split's TFRecord shards.

    Args:
      csv_path: manifest with a `path,label[,id]` header.
      out_dir: folder of the shards `{split}-{i:05d}-of-{n:05d}.tfrecord`.
      split: split name, e.g. "train".
      classes: ordered class names (index = label); None = sorted labels found in the CSV.
      num_shards: None = one shard per ~200 clips.
      frame_size: None keeps the decoded size; (height, width) resizes; an int sets the short side.
      max_frames: keep only the first `max_frames` frames of each video.
      jpeg_quality: JPEG quality of the stored frames.
      shuffle_seed: clips are written in an order shuffled with this seed (None = CSV order):
        a class-sorted CSV would otherwise defeat the training pipeline's finite shuffle buffer.
      num_workers: decode processes; None = number of CPUs.
      pool: an open `process_pool` to use instead (shared across splits); overrides num_workers.

    Returns:
      A summary: `split`, `num_clips`, `shards`, `errors` (one `{line, path, error}` per video that
      could not be read; they are logged, listed in `{split}-errors.json` and skipped),
      `label_counts`, `min_frames`, `max_frames`, `frame_size` ([H, W] if all clips agree).
    """
    start_time = time.time()
    rows, classes = read_manifest(csv_path, classes)
    if not rows:
        raise ValueError(f"{csv_path}: the manifest lists no video.")
    if shuffle_seed is not None:
        rows = [rows[i] for i in np.random.default_rng(shuffle_seed).permutation(len(rows))]
    if num_shards is None:
        num_shards = min(64, math.ceil(len(rows) / _CLIPS_PER_SHARD))
    num_shards = max(1, min(num_shards, len(rows)))
    if isinstance(frame_size, Sequence):
        frame_size = (int(frame_size[0]), int(frame_size[1]))

    jobs = [(row["path"], frame_size, max_frames, jpeg_quality) for row in rows]
    errors: list[dict] = []
    lengths: list[int] = []
    sizes: set[tuple[int, int]] = set()
    label_counts = dict.fromkeys(classes, 0)

    def examples() -> Iterator[bytes]:
        for row, (jpegs, size, error) in zip(
            rows, map_in_processes(_load_clip, jobs, num_workers, pool)
        ):
            if error is not None:
                logging.error(
                    "Skipping %s (%s, line %d): %s", row["path"], csv_path, row["line"], error
                )
                errors.append(dict(line=row["line"], path=row["path"], error=error))
                continue
            lengths.append(len(jpegs))
            sizes.add(tuple(size))
            label_counts[row["label"]] += 1
            yield encode_clip(jpegs, row["label_index"], row["label"], row["id"])

    shards = write_shards(examples(), out_dir, split, num_shards)
    # Written even when empty, so a stale list from an earlier run never lingers.
    with open(os.path.join(out_dir, f"{split}-errors.json"), "w", encoding="utf-8") as f:
        json.dump(errors, f, indent=1)
    errors_path = os.path.join(out_dir, f"{split}-errors.json")
    if not lengths:
        raise ValueError(
            f"{csv_path}: none of the {len(rows)} videos could be read; see {errors_path}."
        )
    if errors:
        logging.warning(
            "%s: %d of %d videos could not be read and were skipped; see %s.",
            csv_path,
            len(errors),
            len(rows),
            errors_path,
        )
    summary = dict(
        split=split,
        csv=os.path.abspath(csv_path),
        classes=classes,
        num_clips=len(lengths),
        shards=shards,
        errors=errors,
        label_counts=label_counts,
        min_frames=min(lengths, default=0),
        max_frames=max(lengths, default=0),
        frame_size=list(next(iter(sizes))) if len(sizes) == 1 else None,
    )
    logging.info(
        "Prepared split %r: %d clips in %d shards (%.1f s).",
        split,
        len(lengths),
        num_shards,
        time.time() - start_time,
    )
    return summary


def merge_summaries(summaries: Sequence[dict], previous: dict | None = None) -> dict:
    """`counts`, `num_frames` and `frame_size` for `write_dataset_info` from split summaries.

    `previous` (an existing dataset.json) keeps the figures of splits not prepared again.
    """
    counts = dict(previous["splits"]) if previous else {}
    lengths = [previous["num_frames"]] if previous else []
    sizes = [previous["frame_size"]] if previous else []
    for summary in summaries:
        counts[summary["split"]] = summary["num_clips"]
        lengths.append(summary["min_frames"])
        sizes.append(summary["frame_size"])
    same_size = all(size == sizes[0] for size in sizes)
    return dict(counts=counts, num_frames=min(lengths), frame_size=sizes[0] if same_size else None)


def _parse_pairs(text: str) -> list[list[str]]:
    return [item.split(":") for item in text.split(",") if item]


def define_flags(flag_values) -> list[str]:
    """Defines kvid-prepare's flags on `flag_values` (never at import: the trainer imports this
    module and must not inherit these flags) and returns their names."""
    from absl import flags

    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("csv", None, "Manifest CSV with a path,label[,id] header.", **fv)
    flags.DEFINE_string("out_dir", None, "Output folder of shards and dataset.json.", **fv)
    flags.DEFINE_string("split", None, "Split name, e.g. train, val, test.", **fv)
    flags.DEFINE_list(
        "classes", None, "Ordered class names; default: dataset.json, else CSV labels.", **fv
    )
    flags.DEFINE_integer("num_shards", None, "Number of shards; default one per ~200 clips.", **fv)
    flags.DEFINE_list("frame_size", None, "Resize frames: 'height,width', or 'short_side'.", **fv)
    flags.DEFINE_integer(
        "max_frames", None, "Keep only the first max_frames frames of a video.", **fv
    )
    flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of stored frames.", **fv)
    flags.DEFINE_string("order_pairs", "", "Time-reversed class pairs: 'a:b,c:d'.", **fv)
    flags.DEFINE_string("flip_pairs", "", "Class pairs a horizontal flip swaps: 'a:b,c:d'.", **fv)
    flags.DEFINE_list("flip_breaks", [], "Classes that must never be flipped.", **fv)
    flags.DEFINE_integer("num_workers", None, "Decode processes; default: number of CPUs.", **fv)
    for name in ("csv", "out_dir", "split"):
        flags.mark_flag_as_required(name, flag_values=flag_values)
    return sorted(set(flag_values) - before)


def prepare_from_flags(f) -> str:
    """The command, on parsed flags; returns its summary line."""
    previous = None
    if os.path.exists(os.path.join(f.out_dir, DATASET_INFO)):
        previous = read_dataset_info(f.out_dir)
    classes = f.classes or (previous["classes"] if previous else None)
    if previous and list(classes) != previous["classes"]:
        raise ValueError(
            f"--classes {classes} differ from the classes of {f.out_dir}/{DATASET_INFO}: "
            f"{previous['classes']}. Use another --out_dir or the same classes."
        )
    frame_size = None
    if f.frame_size:
        try:
            values = [int(v) for v in f.frame_size]
        except ValueError:
            raise ValueError(f"--frame_size={','.join(f.frame_size)}: expected integers") from None
        frame_size = values[0] if len(values) == 1 else (values[0], values[1])
    summary = prepare_split(
        f.csv,
        f.out_dir,
        f.split,
        classes,
        num_shards=f.num_shards,
        frame_size=frame_size,
        max_frames=f.max_frames,
        jpeg_quality=f.jpeg_quality,
        num_workers=f.num_workers,
    )
    keep = previous or {}
    write_dataset_info(
        f.out_dir,
        summary["classes"],
        _parse_pairs(f.order_pairs) or keep.get("order_pairs", []),
        _parse_pairs(f.flip_pairs) or keep.get("flip_pairs", []),
        flip_breaks=f.flip_breaks or keep.get("flip_breaks", []),
        **merge_summaries([summary], previous),
    )
    return (
        f"{f.split}: {summary['num_clips']} clips in {len(summary['shards'])} shards, "
        f"{len(summary['errors'])} unreadable videos skipped -> {f.out_dir}"
    )


def run() -> None:
    """`kvid-prepare` entry point: one split of a CSV manifest into `out_dir`."""
    from absl import flags

    import kvid.cli

    def main(argv: list[str]) -> None:
        print(prepare_from_flags(flags.FLAGS))

    kvid.cli.run_tool("kvid-prepare", __doc__, define_flags, main)
