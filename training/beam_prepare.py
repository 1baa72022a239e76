"""kvid-prepare as an Apache Beam pipeline: the same inputs, per-video work and files, on any runner.

    python -m kvid_training.beam_prepare --folder=videos --out_dir=data/mine --split=train
    python -m kvid_training.beam_prepare --csv=train.csv --out_dir=gs://BUCKET/kvid \\
        --split=train --runner=DataflowRunner --project=PROJECT --region=REGION \\
        --temp_location=gs://BUCKET/tmp --setup_file=./setup.py

kvid-prepare's flags (`kvid-prepare --help`) mean what they mean there; every other flag, and
everything after `--`, is a Beam pipeline option (`--runner=DirectRunner` by default,
DataflowRunner, FlinkRunner, SparkRunner, ...). Dataflow's own `--num_workers` goes after `--`:
before it, `--num_workers` is kvid-prepare's (decode processes per DoFn instance; default
one per CPU on the DirectRunner, 1 elsewhere).

The launching machine reads the input list, deals the inputs to shards and skips the shards a
previous run finished, exactly as kvid-prepare does; the pipeline decodes each video with the
same function as kvid-prepare (`prepare.prepare_clips`: a worker process under
`--decode_timeout`, so a file that hangs or crashes its decoder fails alone) and writes each
shard with the same writer and state file; the launcher then writes `<split>-failures.json`,
`dataset.json` and `label_map.json`. The shards hold the same clips in the same places as a local
run's, and either run resumes the other's.

`--out_dir` must be writable by the workers and the launcher: a local folder for the
DirectRunner, gs://... (or a shared mount) on a cluster. Videos may be local paths the workers
can read, or URLs of a filesystem Beam reads (gs://... in a CSV): those are copied to the
worker before decoding, and one that cannot be fetched fails with "cannot fetch: ...".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

from absl import flags

import kvid.cli
from kvid_training import prepare
from kvid_training.inputs import Inputs
from kvid_training.worker_pool import WorkerPool

TOOL = "kvid_training.beam_prepare"

# Beam warns at import about optional Google Cloud clients that a local run does not need.
_root_level = logging.getLogger().level
logging.getLogger().setLevel(logging.ERROR)
try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineState
except ImportError as _error:  # the optional extra is not installed
    sys.exit(f"{TOOL}: error: {_error}; install the beam extra: pip install 'kvid[beam]'")
finally:
    logging.getLogger().setLevel(_root_level)
# --help and its spellings, handled by kvid.cli.
_HELP_ARGS = ("--help", "-h", "-help", "--helpfull", "-helpfull", "-?")


@contextlib.contextmanager
def _local_copies(rows: Sequence[dict]) -> Iterator[tuple[list[dict], dict[int, str]]]:
    """The rows with each remote video (a path with a scheme, gs://...) copied to a local file,
    and {row number: reason} for those that could not be fetched. The copies are deleted after.
    """
    if not any("://" in row["path"] for row in rows):
        yield list(rows), {}
        return
    from apache_beam.io.filesystems import FileSystems

    folder = tempfile.mkdtemp(prefix="kvid-videos-")
    try:
        local, failed = [], {}
        for number, row in enumerate(rows):
            if "://" in row["path"]:
                target = os.path.join(folder, f"{number}{os.path.splitext(row['path'])[1]}")
                try:
                    with FileSystems.open(row["path"]) as source, open(target, "wb") as copy:
                        shutil.copyfileobj(source, copy, 1 << 20)
                    row = dict(row, path=target)
                except Exception as error:  # noqa: BLE001 -- the video's failure, not the run's
                    failed[number] = f"cannot fetch: {' '.join(str(error).split())}"
            local.append(row)
        yield local, failed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class PrepareClips(beam.DoFn):
    """Batches of (shard, position, row) -> (shard, (position, Clip)) through `prepare_clips`.

    Each DoFn instance keeps one `WorkerPool` of decode processes for its lifetime (spawning a
    process per video would cost more than decoding a short one), and the pool replaces a
    process whose video hung past the timeout or crashed it.
    """

    def __init__(self, options: tuple, num_workers: int, decode_timeout: float | None):
        self.options = options
        self.num_workers = num_workers
        self.decode_timeout = decode_timeout
        self.pool: WorkerPool | None = None

    def setup(self) -> None:
        self.pool = WorkerPool(prepare._load_clip, self.num_workers, self.decode_timeout)

    def process(self, batch):  # no type hints: Beam would check them against GroupByKey's
        rows = [row for _, _, row in batch]
        with _local_copies(rows) as (local, failed):
            fetched = [row for number, row in enumerate(local) if number not in failed]
            clips = prepare.prepare_clips(fetched, self.options, self.pool)
            for number, (shard, position, row) in enumerate(batch):
                if number in failed:
                    logging.warning("Skipping %s: %s", row["path"], failed[number])
                    failure = dict(path=row["path"], line=row["line"], reason=failed[number])
                    clip = prepare.Clip(row, None, failure, 0, None)
                else:
                    clip = next(clips)._replace(row=row)
                if clip.failure is not None:  # named by its input, not by a local copy
                    clip = clip._replace(failure=dict(clip.failure, path=row["path"]))
                yield shard, (position, clip)

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.close()


class WriteShard(beam.DoFn):
    """(shard, [(position, Clip)]) -> the shard file and its state file; yields the state."""

    def __init__(self, paths: list[str], num_inputs: dict[int, int], fingerprint: str, classes):
        self.paths = paths
        self.num_inputs = num_inputs
        self.fingerprint = fingerprint
        self.classes = list(classes)

    def process(self, element):
        shard, clips = element
        ordered = [clip for _, clip in sorted(clips, key=lambda item: item[0])]
        state = prepare.new_shard_state(self.fingerprint, self.num_inputs[shard], self.classes)
        yield prepare.write_shard(self.paths[shard], ordered, state)


def build_pipeline(
    pipeline: beam.Pipeline,
    plan: prepare.SplitPlan,
    num_workers: int,
    decode_timeout: float | None,
) -> beam.PCollection:
    """Adds the steps that write the shards `plan.todo` to `pipeline`; returns their states."""
    elements = [
        (shard, position, row)
        for shard in plan.todo
        for position, row in enumerate(plan.per_shard[shard])
    ]
    num_inputs = {shard: len(plan.per_shard[shard]) for shard in plan.todo}
    return (
        pipeline
        | "Inputs" >> beam.Create(elements)
        | "Spread" >> beam.Reshuffle()
        # Enough videos per call to keep every decode process of a DoFn busy (BatchElements'
        # adaptive size would start at one video per call).
        | "Batch"
        >> beam.BatchElements(min_batch_size=8 * num_workers, max_batch_size=8 * num_workers)
        | "Decode" >> beam.ParDo(PrepareClips(plan.options, num_workers, decode_timeout))
        | "ByShard" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(WriteShard(plan.paths, num_inputs, plan.fingerprint, plan.classes))
    )


def _is_direct(options: PipelineOptions) -> bool:
    runner = options.get_all_options().get("runner") or "DirectRunner"
    return runner in ("DirectRunner", "BundleBasedDirectRunner", "PrismRunner")


def check_pipeline_args(args: Sequence[str]) -> PipelineOptions:
    """Beam pipeline options from `args`; an option Beam does not know is an error naming it
    (Beam itself only logs and drops it)."""
    from apache_beam.options import pipeline_options

    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(args))
    unknown = [arg for arg in unknown if arg.startswith("-")]
    if unknown:
        raise ValueError(
            f"{' '.join(unknown)}: neither a kvid-prepare flag (see --help) nor a Beam "
            "pipeline option."
        )
    return PipelineOptions(list(args))


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
    pipeline_args: Sequence[str] = (),
) -> dict:
    """`prepare.prepare_split` with the videos decoded and the shards written by a Beam pipeline.

    The arguments and the returned summary are `prepare.prepare_split`'s; `pipeline_args` are
    Beam pipeline options (`--runner=...`). `num_workers` is the number of decode processes of
    each DoFn instance (default: one per CPU on the DirectRunner, 1 on other runners, whose
    workers run DoFn instances in parallel already).
    """
    start_time = time.time()
    options = check_pipeline_args(pipeline_args)
    plan = prepare.plan_split(
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
    if plan.todo:
        if num_workers is None:
            num_workers = (os.cpu_count() or 1) if _is_direct(options) else 1
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, plan, num_workers, decode_timeout)
        result = pipeline.run()
        state = result.wait_until_finish()
        if state != PipelineState.DONE:
            raise RuntimeError(f"the Beam pipeline of {split} ended in state {state}.")
    for shard in plan.todo:
        plan.states[shard] = prepare._finished_state(plan.paths[shard], plan.fingerprint)
        if plan.states[shard] is None:
            raise RuntimeError(f"{plan.paths[shard]}: the pipeline finished without writing it.")
    return prepare.finish_split(plan, start_time)


def split_args(argv: Sequence[str], own_flags: set[str]) -> tuple[list[str], list[str]]:
    """(kvid-prepare's command line, Beam's pipeline arguments) from one command line.

    A flag that kvid-prepare defines (or absl's --flagfile, --verbosity, --help) is kvid's, with
    its value when that is the next argument; any other flag, and everything after `--`, is
    Beam's.
    """
    own, beam_args = [argv[0]], []
    args = list(argv[1:])
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if arg == "--":
            beam_args += args[position:]
            break
        name = arg.lstrip("-").partition("=")[0]
        is_own = arg in _HELP_ARGS or (
            arg.startswith("-") and (name in own_flags or name.removeprefix("no") in own_flags)
        )
        target = own if is_own or not arg.startswith("-") else beam_args
        target.append(arg)
        takes_value = arg.startswith("-") and "=" not in arg and arg not in _HELP_ARGS
        next_is_value = position < len(args) and not args[position].startswith("-")
        if takes_value and next_is_value:
            target.append(args[position])
            position += 1
    return own, beam_args


def run(argv: Sequence[str] | None = None) -> None:
    """`python -m kvid_training.beam_prepare`: kvid-prepare's command as a Beam pipeline."""
    argv = list(sys.argv if argv is None else argv)
    names = prepare.define_flags(flags.FLAGS)
    own, beam_args = split_args(argv, set(flags.FLAGS))

    def main(_: list[str]) -> None:
        check_pipeline_args(beam_args)  # before anything is read or written
        prepare_beam = functools.partial(prepare_split, pipeline_args=beam_args)
        print(prepare.prepare_from_flags(flags.FLAGS, prepare_beam))

    kvid.cli.run_tool(TOOL, __doc__, lambda _: names, main, argv=own)


if __name__ == "__main__":
    # The pipeline's DoFns are pickled by reference to this module, so run its imported copy.
    from kvid_training.beam_prepare import run as run_imported

    run_imported()
