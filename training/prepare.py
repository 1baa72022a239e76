"""Users' videos -> TFRecord shards of `tf.train.SequenceExample` with one JPEG per frame.

This is the Model Garden / DMVR format (`official/vision/dataloaders/video_input.py`) that
`pipeline.py` reads: context `clip/label/index`, `clip/label/text`, `clip/id`, `clip/num_frames`,
and the feature list `image/encoded`. The embedded synthetic dataset goes through exactly this code.

The videos of a split come from one of:
  --csv=F                       a CSV with a header `path,label` (optionally `id`, and `start,end`
                                in seconds to cut each video, the Kinetics layout); relative paths
                                resolve against the CSV's folder
  --folder=DIR                  one sub-folder per class (sorted names = class order)
  --ssv2_json=F --video_dir=D   Something-Something v2: labels.json beside F gives the classes

Every input ends either in a shard or in `<split>-failures.json` with the reason. Running the
same command again keeps the shards that are finished and redoes the others. Examples:

    kvid-prepare --csv=/data/clips/train.csv --out_dir=/data/kvid --split=train
    kvid-prepare --folder=/data/by_class --out_dir=/data/kvid --split=train --fps=10

Preparing several splits into one `out_dir` keeps one `dataset.json` describing all of them, and
`label_map.json` (the class order, as in a workdir) beside the shards: preparing into an
`out_dir` whose label map orders the classes differently is an error. `python -m
kvid_training.beam_prepare` runs the same work as an Apache Beam pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

import kvid.cli
from kvid.data.dataset import (
    DATASET_INFO,
    LABEL_MAP,
    check_label_map,
    encode_clip,
    read_dataset_info,
    shard_path,
    shard_pattern,
    stored_classes,
    write_dataset_info,
    write_label_map,
)
from kvid.data.video import DecodeError, decode_frames, encode_jpeg
from kvid_training.inputs import Inputs, read_folder, read_manifest, read_ssv2
from kvid_training.worker_pool import WorkerPool, default_num_workers

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


# A SequenceExample must stay under protobuf's 2 GB; a clip this large means the video needed
# --max_seconds, --fps or --frame_size.
_MAX_CLIP_BYTES = 1 << 30


def _load_clip(job: tuple) -> tuple[list[bytes] | None, list[int] | None, str | None]:
    """Worker: decodes and JPEG-encodes one video; returns (jpegs, [height, width], reason).

    Frames are encoded as they are decoded, so only the JPEGs of a clip are ever held.
    """
    path, start, end, options = job
    frame_size, max_frames, fps, max_seconds, quality = options
    jpegs, size, total = [], None, 0
    try:
        frames = decode_frames(
            path, frame_size, max_frames, fps=fps, start=start, end=end, max_seconds=max_seconds
        )
        for frame in frames:
            jpegs.extend(encode_jpeg([frame], quality))
            size = size or list(frame.shape[:2])
            total += len(jpegs[-1])
            if total > _MAX_CLIP_BYTES:
                frames.close()
                return (
                    None,
                    None,
                    (
                        f"clip larger than {_MAX_CLIP_BYTES >> 20} MB after {len(jpegs)} frames; "
                        "limit it with --max_seconds, --fps or --frame_size"
                    ),
                )
    except DecodeError as error:
        return None, None, str(error)
    return jpegs, size, None


def shard_inputs(rows: Sequence[dict], num_shards: int, shuffle_seed: int | None) -> list[list]:
    """The rows of each shard: shuffled with `shuffle_seed` (None = input order), then dealt
    round-robin. Shard i of one machine's run holds exactly what shard i of a one-machine run
    holds, which is what lets `--shard_index` split a job across machines.
    """
    order = range(len(rows))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))
    ordered = [rows[i] for i in order]
    return [ordered[i::num_shards] for i in range(num_shards)]


def _fingerprint(rows: Sequence[dict], classes: Sequence[str], settings: dict) -> str:
    """What a finished shard depends on: the input list and every setting.

    Inputs count by id, label and span, not by path, so machines that mount the videos at
    different places write shards of the same job (and one can merge them without the videos).
    """
    listing = [[row["id"], row["label_index"], row["start"], row["end"]] for row in rows]
    text = json.dumps([listing, list(classes), settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _gfile():
    """`tf.io.gfile`: the shard files may be local or on any filesystem TensorFlow writes
    (gs://...), which a Beam run on remote workers needs."""
    import tensorflow as tf

    return tf.io.gfile


def count_records(path: str) -> int | None:
    """Records in a TFRecord file, read from its framing alone; None if the file is cut short."""
    count, size = 0, _gfile().stat(path).length
    with _gfile().GFile(path, "rb") as f:
        offset = 0
        while offset < size:
            header = f.read(12)  # uint64 length, uint32 CRC of the length
            if len(header) < 12:
                return None
            length = struct.unpack("<Q", header[:8])[0]
            offset += 12 + length + 4  # data, uint32 CRC of the data
            if offset > size:
                return None
            f.seek(offset)
            count += 1
    return count


def _state_path(shard: str) -> str:
    return shard + ".json"


def _finished_state(shard: str, fingerprint: str) -> dict | None:
    """The state of a shard written by a run of the same job, None unless the shard is whole."""
    import tensorflow as tf

    gfile = tf.io.gfile
    try:
        with gfile.GFile(_state_path(shard)) as f:
            state = json.load(f)
        if state.get("fingerprint") != fingerprint or gfile.stat(shard).length != state["bytes"]:
            return None
        return state if count_records(shard) == state["num_clips"] else None
    except (tf.errors.OpError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_json(path: str, value: Any) -> None:
    with _gfile().GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(value, indent=1))
    _gfile().rename(path + ".tmp", path, overwrite=True)


def _remove(path: str) -> None:
    import tensorflow as tf

    with contextlib.suppress(tf.errors.NotFoundError):
        tf.io.gfile.remove(path)


def failures_path(out_dir: str, split: str, shard_index: int | None, num_shards: int) -> str:
    """`{split}-failures.json`; one machine's share of a split has its own file."""
    if shard_index is None:
        return os.path.join(out_dir, f"{split}-failures.json")
    return os.path.join(out_dir, f"{split}-{shard_index:05d}-of-{num_shards:05d}-failures.json")


def _remove_stale_shards(out_dir: str, split: str, keep: Sequence[str]) -> None:
    """Removes the split's shards of another shard count (a glob would still match them)."""
    for stale in sorted(set(_gfile().glob(shard_pattern(out_dir, split))) - set(keep)):
        for path in (stale, _state_path(stale)):
            _remove(path)


def _totals(states: Sequence[dict], classes: Sequence[str]) -> dict:
    label_counts = dict.fromkeys(classes, 0)
    for state in states:
        for label, count in state["label_counts"].items():
            label_counts[label] += count
    lengths = [s["min_frames"] for s in states if s["num_clips"]]
    sizes = {tuple(size) for s in states for size in s["frame_sizes"]}
    return dict(
        num_inputs=sum(s["num_inputs"] for s in states),
        num_clips=sum(s["num_clips"] for s in states),
        failures=sorted(
            (f for s in states for f in s["failures"]),
            key=lambda f: (f["line"] is None, f["line"] or 0, f["path"]),
        ),
        label_counts=label_counts,
        min_frames=min(lengths, default=0),
        max_frames=max((s["max_frames"] for s in states if s["num_clips"]), default=0),
        frame_size=list(next(iter(sizes))) if len(sizes) == 1 else None,
    )


class Clip(NamedTuple):
    """What one input became: its SequenceExample, or the failure record saying why not."""

    row: dict
    example: bytes | None  # the serialized SequenceExample; None when the input failed
    failure: dict | None  # {path, line, reason}; None when the input became a clip
    num_frames: int
    frame_size: list[int] | None  # [height, width] of its frames


def prepare_clips(rows: Iterable[dict], options: tuple, pool: WorkerPool) -> Iterator[Clip]:
    """Each input row's `Clip`, in row order: the one per-video function of kvid-prepare, run
    by the local command and by the Beam pipeline alike.

    The video is decoded and JPEG-encoded in `pool`'s worker processes (`_load_clip`, under the
    pool's timeout: a file that hangs or crashes its decoder fails alone); the JPEGs become a
    SequenceExample here. `options` is `(frame_size, max_frames, fps, max_seconds, quality)`.
    """
    rows, listed = itertools.tee(rows)
    jobs = ((row["path"], row["start"], row["end"], options) for row in listed)
    for row, (value, failure) in zip(rows, pool.imap(jobs)):
        jpegs, size, reason = value if failure is None else (None, None, failure)
        if reason is not None:
            logging.warning("Skipping %s: %s", row["path"], reason)
            failed = dict(path=row["path"], line=row["line"], reason=reason)
            yield Clip(row, None, failed, 0, None)
            continue
        example = encode_clip(jpegs, row["label_index"], row["label"], row["id"])
        yield Clip(row, example, None, len(jpegs), size)


def new_shard_state(fingerprint: str, num_inputs: int, classes: Sequence[str]) -> dict:
    """The state file of a shard before any clip: what `write_shard` fills in."""
    return dict(
        fingerprint=fingerprint,
        num_inputs=num_inputs,
        num_clips=0,
        failures=[],
        label_counts=dict.fromkeys(classes, 0),
        min_frames=0,
        max_frames=0,
        frame_sizes=[],
    )


def write_shard(path: str, clips: Iterable[Clip], state: dict) -> dict:
    """Writes the clips of one shard, in order, and then its state file; returns the state.

    The shard is written under a temporary name and renamed when complete; the state file is
    written last, so a shard counts as finished only once both are on disk.
    """
    lengths = []
    with _writer(path + ".partial") as writer:
        for clip in clips:
            if clip.failure is not None:
                state["failures"].append(clip.failure)
                continue
            writer.write(clip.example)
            lengths.append(clip.num_frames)
            state["label_counts"][clip.row["label"]] += 1
            if clip.frame_size not in state["frame_sizes"]:
                state["frame_sizes"].append(clip.frame_size)
    if len(lengths) + len(state["failures"]) != state["num_inputs"]:
        _remove(path + ".partial")
        raise RuntimeError(f"{path}: {state['num_inputs']} inputs expected, got another count.")
    _remove(_state_path(path))
    _gfile().rename(path + ".partial", path, overwrite=True)
    state.update(
        num_clips=len(lengths),
        min_frames=min(lengths, default=0),
        max_frames=max(lengths, default=0),
        bytes=_gfile().stat(path).length,
    )
    _write_json(_state_path(path), state)
    return state


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """What a run of one split does: its inputs dealt to shards, the shards still to write."""

    inputs: Inputs
    out_dir: str
    split: str
    num_shards: int
    shard_index: int | None
    options: tuple  # (frame_size, max_frames, fps, max_seconds, jpeg_quality)
    fingerprint: str
    per_shard: list[list[dict]]  # the rows of each shard, in the order they are written
    paths: list[str]  # every shard's path
    mine: list[int]  # the shards this run is responsible for
    states: dict[int, dict | None]  # state of each finished shard, None for the others
    todo: list[int]  # shards of `mine` not yet finished

    @property
    def classes(self) -> list[str]:
        return self.inputs.classes


def plan_split(
    source: str | Inputs,
    out_dir: str,
    split: str,
    classes: Sequence[str] | None = None,
    num_shards: int | None = None,
    frame_size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    jpeg_quality: int = 90,
    shuffle_seed: int | None = 0,
    fps: float | None = None,
    max_seconds: float | None = None,
    shard_index: int | None = None,
) -> SplitPlan:
    """Reads the inputs, deals them to shards and finds the shards already finished (see
    `prepare_split` for the arguments); removes the leftovers of a run killed while writing."""
    inputs = source if isinstance(source, Inputs) else read_manifest(source, classes)
    rows, classes = inputs.rows, inputs.classes
    if not rows:
        raise ValueError(f"{inputs.source}: lists no video.")
    if shard_index is None:
        if num_shards is None:
            num_shards = min(64, math.ceil(len(rows) / _CLIPS_PER_SHARD))
        num_shards = max(1, min(num_shards, len(rows)))
    elif num_shards is None or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index={shard_index} needs --num_shards greater than it.")
    if isinstance(frame_size, Sequence):
        frame_size = (int(frame_size[0]), int(frame_size[1]))
    options = (frame_size, max_frames, fps, max_seconds, jpeg_quality)
    settings = dict(options=options, num_shards=num_shards, shuffle_seed=shuffle_seed)
    fingerprint = _fingerprint(rows, classes, settings)
    paths = [shard_path(out_dir, split, i, num_shards) for i in range(num_shards)]
    mine = list(range(num_shards)) if shard_index is None else [shard_index]
    states = {i: _finished_state(paths[i], fingerprint) for i in range(num_shards)}
    todo = [i for i in mine if states[i] is None]
    _gfile().makedirs(out_dir)
    for i in todo:
        _remove(paths[i] + ".partial")
    if len(todo) < len(mine):
        logging.info(
            "%s: %d of %d shards already finished.", split, len(mine) - len(todo), len(mine)
        )
    return SplitPlan(
        inputs=inputs,
        out_dir=out_dir,
        split=split,
        num_shards=num_shards,
        shard_index=shard_index,
        options=options,
        fingerprint=fingerprint,
        per_shard=shard_inputs(rows, num_shards, shuffle_seed),
        paths=paths,
        mine=mine,
        states=states,
        todo=todo,
    )


def finish_split(plan: SplitPlan, start_time: float) -> dict:
    """Writes the failures lists once the shards of `plan.mine` are written (their states in
    `plan.states`) and returns `prepare_split`'s summary."""
    _remove_stale_shards(plan.out_dir, plan.split, plan.paths)
    states, mine, num_shards = plan.states, plan.mine, plan.num_shards
    own = _totals([states[i] for i in mine], plan.classes)
    own_failures = failures_path(plan.out_dir, plan.split, plan.shard_index, num_shards)
    _write_json(own_failures, own["failures"])  # also when empty: no stale list lingers
    complete = all(state is not None for state in states.values())
    totals = _totals(list(states.values()), plan.classes) if complete else None
    if totals is not None:
        split_failures = failures_path(plan.out_dir, plan.split, None, num_shards)
        if plan.shard_index is not None:
            _write_json(split_failures, totals["failures"])
        if totals["num_clips"] == 0:
            raise ValueError(
                f"{plan.inputs.source}: none of the {totals['num_inputs']} videos could be read; "
                f"see {split_failures}."
            )
    seconds = time.time() - start_time
    summary = dict(
        split=plan.split,
        source=plan.inputs.source,
        classes=plan.classes,
        shards=[plan.paths[i] for i in mine],
        num_shards=num_shards,
        shard_index=plan.shard_index,
        failures_path=own_failures,
        seconds=seconds,
        num_decoded=sum(len(plan.per_shard[i]) for i in plan.todo),
        totals=totals,
        **own,
    )
    assert (
        summary["num_clips"] + len(summary["failures"])
        == summary["num_inputs"]
        == sum(len(plan.per_shard[i]) for i in mine)
    )
    logging.info(
        "Prepared split %r: %d clips, %d failed, %d inputs (%.1f s).",
        plan.split,
        summary["num_clips"],
        len(summary["failures"]),
        summary["num_inputs"],
        seconds,
    )
    return summary


def prepare_split(
    source: str | Inputs,
    out_dir: str,
    split: str,
    classes: Sequence[str] | None = None,
    num_shards: int | None = None,
    frame_size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    jpeg_quality: int = 90,
    shuffle_seed: int | None = 0,
    num_workers: int | None = None,
    fps: float | None = None,
    max_seconds: float | None = None,
    decode_timeout: float | None = 600.0,
    shard_index: int | None = None,
) -> dict:
    """Decodes the videos of one split and writes its TFRecord shards, resuming a killed run.

    Args:
      source: a CSV manifest path (`inputs.read_manifest`), or `Inputs` read by another reader.
      out_dir: folder of the shards `{split}-{i:05d}-of-{n:05d}.tfrecord`.
      split: split name, e.g. "train".
      classes: ordered class names for a CSV (index = label); None = its sorted labels.
      num_shards: None = one shard per ~200 clips (at most 64).
      frame_size: None keeps the decoded size; (height, width) resizes; an int sets the short side.
      max_frames, fps, max_seconds: what to keep of each video (`video.decode_frames`).
      jpeg_quality: JPEG quality of the stored frames.
      shuffle_seed: clips are dealt to shards in an order shuffled with this seed (None = input
        order): a class-sorted list would otherwise defeat the training pipeline's finite
        shuffle buffer.
      num_workers: decode processes; None = number of CPUs.
      decode_timeout: seconds one video may take (None = no limit); its worker is then killed.
      shard_index: write only shard `shard_index` of `num_shards` (one machine's share).

    Returns:
      A summary of this run's share: `split`, `classes`, `num_inputs`, `num_clips`, `failures`
      (one `{path, line, reason}` per input that is in no shard; num_clips + len(failures) ==
      num_inputs), `failures_path`, `shards`, `label_counts`, `min_frames`, `max_frames`,
      `frame_size` ([H, W] if all clips agree), `seconds`, and `totals` (the same figures for
      the whole split, once all its shards are finished; else None).
    """
    start_time = time.time()
    plan = plan_split(
        source,
        out_dir,
        split,
        classes,
        num_shards,
        frame_size,
        max_frames,
        jpeg_quality,
        shuffle_seed,
        fps,
        max_seconds,
        shard_index,
    )
    rows = [row for i in plan.todo for row in plan.per_shard[i]]
    workers = num_workers or default_num_workers(len(rows))
    with WorkerPool(_load_clip, workers, decode_timeout) as pool:
        clips = prepare_clips(rows, plan.options, pool)
        for number, i in enumerate(plan.todo):
            state = new_shard_state(plan.fingerprint, len(plan.per_shard[i]), plan.classes)
            clips_of_shard = itertools.islice(clips, len(plan.per_shard[i]))
            plan.states[i] = write_shard(plan.paths[i], clips_of_shard, state)
            if number == 0:  # the first new shard replaces a previous shard count's
                _remove_stale_shards(out_dir, split, plan.paths)
            logging.info(
                "%s: shard %d of %d written (%d clips, %d failed).",
                split,
                i + 1,
                plan.num_shards,
                state["num_clips"],
                len(state["failures"]),
            )
    return finish_split(plan, start_time)


@contextlib.contextmanager
def _writer(path: str) -> Iterator[Any]:
    """A TFRecord writer of `path` that leaves no file behind when the block fails."""
    import tensorflow as tf

    writer = tf.io.TFRecordWriter(path)
    try:
        yield writer
    except BaseException:
        writer.close()
        _remove(path)
        raise
    writer.close()


def merge_summaries(summaries: Sequence[dict], previous: dict | None = None) -> dict:
    """`counts`, `num_frames` and `frame_size` for `write_dataset_info` from split summaries.

    Each summary's `totals` (the whole split) is used. `previous` (an existing dataset.json)
    keeps the figures of splits not prepared again.
    """
    counts = dict(previous["splits"]) if previous else {}
    lengths = [previous["num_frames"]] if previous else []
    sizes = [previous["frame_size"]] if previous else []
    for summary in summaries:
        totals = summary["totals"]
        counts[summary["split"]] = totals["num_clips"]
        lengths.append(totals["min_frames"])
        sizes.append(totals["frame_size"])
    same_size = all(size == sizes[0] for size in sizes)
    return dict(counts=counts, num_frames=min(lengths), frame_size=sizes[0] if same_size else None)


def _parse_pairs(text: str) -> list[list[str]]:
    return [item.split(":") for item in text.split(",") if item]


def parse_max_failures(text: str | None) -> float | None:
    """`--max_failures`: an int is a count of inputs, a number with a point a fraction of them."""
    if text is None or text == "":
        return None
    try:
        value = float(text) if "." in text else int(text)
    except ValueError:
        value = -1
    if value < 0 or ("." in text and value > 1):
        raise ValueError(
            f"--max_failures={text}: expected a count (e.g. 10) or a fraction of the inputs "
            "(e.g. 0.05)."
        )
    return value


def failures_exceeded(max_failures: float | None, num_failures: int, num_inputs: int) -> bool:
    if max_failures is None:
        return False
    if isinstance(max_failures, float):
        return num_failures > max_failures * num_inputs
    return num_failures > max_failures


def define_flags(flag_values) -> list[str]:
    """Defines kvid-prepare's flags on `flag_values` (never at import: the trainer imports this
    module and must not inherit these flags) and returns their names."""
    from absl import flags

    before = set(flag_values)
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "csv", None, "Manifest CSV with a path,label[,id][,start,end] header.", **fv
    )
    flags.DEFINE_string("folder", None, "Folder with one sub-folder of videos per class.", **fv)
    flags.DEFINE_string(
        "ssv2_json", None, "Something-Something v2 annotations (labels.json beside it).", **fv
    )
    flags.DEFINE_string("video_dir", None, "Folder of the <id>.webm videos of --ssv2_json.", **fv)
    flags.DEFINE_string("out_dir", None, "Output folder of shards and dataset.json.", **fv)
    flags.DEFINE_string("split", None, "Split name, e.g. train, val, test.", **fv)
    flags.DEFINE_list(
        "classes",
        None,
        "Ordered class names; default: out_dir's label map, else the input's.",
        **fv,
    )
    flags.DEFINE_integer(
        "num_shards", None, "Number of shards; default one per ~200 clips (at most 64).", **fv
    )
    flags.DEFINE_integer(
        "shard_index",
        None,
        "Write only this shard of --num_shards (one machine's share of the inputs).",
        **fv,
    )
    flags.DEFINE_list("frame_size", None, "Resize frames: 'height,width', or 'short_side'.", **fv)
    flags.DEFINE_float(
        "fps", None, "Resample every video to this frame rate; default: as is.", **fv
    )
    flags.DEFINE_float(
        "max_seconds", None, "Keep at most this many seconds of a video (after start).", **fv
    )
    flags.DEFINE_integer("max_frames", None, "Keep at most this many frames of a video.", **fv)
    flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of stored frames.", **fv)
    flags.DEFINE_float(
        "decode_timeout", 600.0, "Seconds one video may take to decode; then it fails.", **fv
    )
    flags.DEFINE_string(
        "max_failures",
        None,
        "Exit non-zero when more inputs fail: a count (10) or a fraction (0.05); default: any.",
        **fv,
    )
    flags.DEFINE_string("order_pairs", "", "Time-reversed class pairs: 'a:b,c:d'.", **fv)
    flags.DEFINE_string("flip_pairs", "", "Class pairs a horizontal flip swaps: 'a:b,c:d'.", **fv)
    flags.DEFINE_list("flip_breaks", [], "Classes that must never be flipped.", **fv)
    flags.DEFINE_integer("num_workers", None, "Decode processes; default: number of CPUs.", **fv)
    for name in ("out_dir", "split"):
        flags.mark_flag_as_required(name, flag_values=flag_values)
    return sorted(set(flag_values) - before)


def read_inputs(f, classes: Sequence[str] | None) -> Inputs:
    """The split's videos from exactly one of --csv, --folder, --ssv2_json (with --video_dir)."""
    from absl import app

    given = [name for name in ("csv", "folder", "ssv2_json") if getattr(f, name)]
    if len(given) != 1:
        raise app.UsageError(
            "give exactly one of --csv, --folder or --ssv2_json (with --video_dir)"
            + (f"; got {', '.join('--' + name for name in given)}" if given else "")
        )
    if bool(f.video_dir) != bool(f.ssv2_json):
        raise app.UsageError("--video_dir and --ssv2_json go together")
    if f.csv:
        return read_manifest(f.csv, classes)
    if f.folder:
        return read_folder(f.folder, classes)
    if not os.path.isdir(f.video_dir):
        raise ValueError(f"--video_dir={f.video_dir}: not a folder.")
    return read_ssv2(f.ssv2_json, f.video_dir, classes)


def _read_previous_info(out_dir: str) -> dict | None:
    """The `dataset.json` already in `out_dir` (local or gs://...), None when there is none."""
    path = os.path.join(out_dir, DATASET_INFO)
    if not _gfile().exists(path):
        return None
    if "://" not in out_dir:
        return read_dataset_info(out_dir)
    with tempfile.TemporaryDirectory() as local:
        _gfile().copy(path, os.path.join(local, DATASET_INFO))
        return read_dataset_info(local)


def _write_info(out_dir: str, *args, **kwargs) -> None:
    """`write_dataset_info` into `out_dir`; a remote one (gs://...) gets a copy written here."""
    if "://" not in out_dir:
        write_dataset_info(out_dir, *args, **kwargs)
        return
    with tempfile.TemporaryDirectory() as local:
        write_dataset_info(local, *args, **kwargs)
        for name in (LABEL_MAP, DATASET_INFO):  # dataset.json last: it marks a complete dataset
            _gfile().copy(os.path.join(local, name), os.path.join(out_dir, name), overwrite=True)


def prepare_from_flags(f, prepare: Callable[..., dict] | None = None) -> str:
    """The command, on parsed flags; returns its summary line (raises when too many failed).

    `prepare` runs the split (default `prepare_split`, the local worker processes; the Beam
    pipeline passes its own with the same arguments and summary).
    """
    prepare = prepare or prepare_split
    max_failures = parse_max_failures(f.max_failures)
    previous = _read_previous_info(f.out_dir)
    stored = stored_classes(f.out_dir)
    classes = f.classes or (stored[0] if stored else None)
    try:
        inputs = read_inputs(f, classes)
    except ValueError as error:
        if f.classes or not stored:
            raise
        raise ValueError(f"{error} (the classes of {stored[1]})") from None
    # The shards' label indices must mean the same classes as those already in out_dir.
    check_label_map(f.out_dir, inputs.classes, inputs.source)
    if previous and list(inputs.classes) != previous["classes"]:
        raise ValueError(
            f"the classes of {inputs.source} {inputs.classes} differ from those of "
            f"{f.out_dir}/{DATASET_INFO}: {previous['classes']}; use another --out_dir, or "
            "--classes in that order."
        )
    write_label_map(f.out_dir, inputs.classes)
    frame_size = None
    if f.frame_size:
        try:
            values = [int(v) for v in f.frame_size]
        except ValueError:
            raise ValueError(f"--frame_size={','.join(f.frame_size)}: expected integers") from None
        frame_size = values[0] if len(values) == 1 else (values[0], values[1])
    for name in ("fps", "max_seconds", "decode_timeout", "max_frames", "num_shards"):
        value = getattr(f, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name}={value}: must be positive.")
    summary = prepare(
        inputs,
        f.out_dir,
        f.split,
        num_shards=f.num_shards,
        frame_size=frame_size,
        max_frames=f.max_frames,
        jpeg_quality=f.jpeg_quality,
        num_workers=f.num_workers,
        fps=f.fps,
        max_seconds=f.max_seconds,
        decode_timeout=f.decode_timeout,
        shard_index=f.shard_index,
    )
    failed, num_inputs = len(summary["failures"]), summary["num_inputs"]
    exceeded = failures_exceeded(max_failures, failed, num_inputs)
    part = "" if f.shard_index is None else f" (shard {f.shard_index} of {summary['num_shards']})"
    line = (
        f"{f.split}{part}: {summary['num_clips']} clips written, {failed} failed, "
        f"{num_inputs} inputs -> {f.out_dir}"
    )
    if summary["num_decoded"] < num_inputs:
        line += f" ({num_inputs - summary['num_decoded']} kept from finished shards)"
    if summary["num_decoded"]:
        rate = summary["num_decoded"] / max(summary["seconds"], 1e-9)
        line += f" ({rate:.1f} videos/s)"
    if failed:
        line += f"; failures: {summary['failures_path']}"
    if exceeded:
        print(line)
        raise kvid.cli.ToolError(
            f"{failed} of {num_inputs} inputs failed, more than --max_failures={f.max_failures}; "
            f"see {summary['failures_path']}"
        )
    if summary["totals"] is None:
        return line + "; dataset.json follows once every shard is written"
    keep = previous or {}
    _write_info(
        f.out_dir,
        summary["classes"],
        _parse_pairs(f.order_pairs) or keep.get("order_pairs", []),
        _parse_pairs(f.flip_pairs) or keep.get("flip_pairs", []),
        flip_breaks=f.flip_breaks or keep.get("flip_breaks", []),
        **merge_summaries([summary], previous),
    )
    return line


def run() -> None:
    """`kvid-prepare` entry point: one split of a CSV, a folder or SSv2 into `out_dir`."""
    from absl import flags

    def main(argv: list[str]) -> None:
        print(prepare_from_flags(flags.FLAGS))

    kvid.cli.run_tool("kvid-prepare", __doc__, define_flags, main)
