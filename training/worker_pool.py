"""Worker processes that may crash or hang: each job gets a deadline, a dead worker is replaced.

`multiprocessing.Pool` loses the job of a worker that dies (its `imap` then waits forever) and
has no per-job timeout. Decoding users' videos needs both: an FFmpeg decoder can crash on a
malformed file or block on something that is not a file. `WorkerPool.imap` runs every job in a
spawned worker process and yields `(result, None)` or `(None, reason)` per job, in job order;
a job that fails this way costs only itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Results are yielded in job order: a slow job holds back at most this many finished ones per
# worker (so memory stays bounded).
_AHEAD_PER_WORKER = 4


def _exit_with_parent() -> None:
    """Ends this worker when its parent dies, even while a job blocks (a killed run leaves no
    decoder behind waiting on a file)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _serve(connection: multiprocessing.connection.Connection, function: Callable) -> None:
    """Worker loop: receive (index, job), send (index, ok, value) until the pipe closes."""
    _exit_with_parent()
    connection.send(("ready", None, None))
    while True:
        try:
            index, job = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            reply = (index, True, function(job))
        except Exception as error:  # noqa: BLE001 -- any failure is this job's result, not fatal
            reply = (index, False, f"{type(error).__name__}: {error}")
        try:
            connection.send(reply)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, context, function: Callable):
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, function), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.index: int | None = None  # the job it is running
        self.deadline = 0.0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.connection.close()


def describe_exit(exitcode: int | None) -> str:
    """The reason recorded for a worker that died: its signal or exit code."""
    if exitcode is not None and exitcode < 0:
        return f"decoder process died (signal {-exitcode})"
    return f"decoder process died (exit code {exitcode})"


class WorkerPool:
    """Spawned worker processes running `function(job)`, each job under `timeout` seconds.

    Use as a context manager; `imap` may be called several times. `function` must be a
    module-level function (it is pickled into spawned processes, which import its module).
    """

    def __init__(self, function: Callable[[Any], Any], num_workers: int, timeout: float | None):
        self.function = function
        self.num_workers = max(1, int(num_workers))
        self.timeout = timeout
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        self.workers[self.workers.index(worker)] = _Worker(self.context, self.function)

    def imap(self, jobs: Iterable[Any]) -> Iterator[tuple[Any, str | None]]:
        """Yields `(function(job), None)` or `(None, reason)` for each job, in job order."""
        jobs = iter(jobs)
        while len(self.workers) < self.num_workers:
            self.workers.append(_Worker(self.context, self.function))
        done: dict[int, tuple[Any, str | None]] = {}
        next_job, next_out, exhausted = 0, 0, False
        max_ahead = _AHEAD_PER_WORKER * self.num_workers
        while True:
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            for worker in self.workers:
                if exhausted or next_job - next_out >= max_ahead:
                    break
                if worker.ready and worker.index is None:
                    try:
                        job = next(jobs)
                    except StopIteration:
                        exhausted = True
                        break
                    worker.connection.send((next_job, job))
                    worker.index = next_job
                    worker.deadline = time.monotonic() + (self.timeout or float("inf"))
                    next_job += 1
            busy = [worker for worker in self.workers if worker.index is not None]
            if exhausted and not busy and next_out == next_job:
                return
            waiting = {}
            for worker in self.workers:
                waiting[worker.connection] = worker
                waiting[worker.process.sentinel] = worker
            now = time.monotonic()
            wait_for = min((worker.deadline - now for worker in busy), default=None)
            ready = multiprocessing.connection.wait(
                list(waiting), None if wait_for is None else max(0.0, min(wait_for, 3600.0))
            )
            handled = set()
            for handle in ready:
                worker = waiting[handle]
                if id(worker) in handled:
                    continue
                handled.add(id(worker))
                self._receive(worker, done)
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.index is not None and now >= worker.deadline:
                    done[worker.index] = (None, f"timeout after {self.timeout:g}s")
                    self._replace(worker)

    def _receive(self, worker: _Worker, done: dict) -> None:
        try:
            if worker.connection.poll():
                index, ok, value = worker.connection.recv()
                if index == "ready":
                    worker.ready = True
                else:
                    done[index] = (value, None) if ok else (None, value)
                    worker.index = None
                return
        except (EOFError, OSError):
            pass
        if worker.process.is_alive():
            return
        # The worker died: its job (if any) is recorded, a new worker takes its place.
        worker.process.join()
        if not worker.ready:
            raise RuntimeError(
                f"a worker process could not start ({describe_exit(worker.process.exitcode)})"
            )
        if worker.index is not None:
            done[worker.index] = (None, describe_exit(worker.process.exitcode))
        self._replace(worker)


def default_num_workers(num_jobs: int) -> int:
    """One worker per CPU, at most one per job, at least one."""
    return max(1, min(os.cpu_count() or 1, num_jobs))
