"""A pool of grader worker processes, each running one job at a time, that survives a worker's death.

Why not concurrent.futures.ProcessPoolExecutor: when one of its workers dies (kill -9, the OOM
killer) the whole pool breaks, every pending future fails, and it cannot say which job the dead
worker held. Here every worker is a process of its own with its own pipe, so the main process
always knows which job each worker holds: a dead worker costs exactly its job (reported as
`WorkerDied`), a fresh worker takes its slot, and the other workers go on undisturbed.

Workers are started with the "spawn" method (torch's thread pools and fork don't mix) and keep
their state between jobs, so a job function may cache what it loads (the grading context) in its
module. A pool is reused by later batches of the same process while its settings match.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1
# What a worker's environment must agree on to be reused: the grader's own settings.
_ENV_PREFIXES = ("GRADER_",)


@dataclass(frozen=True)
class WorkerDied:
    """A job whose worker process ended before it answered."""

    pid: int
    exitcode: int | None

    def describe(self) -> str:
        if self.exitcode is not None and self.exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-self.exitcode).name}"
            except ValueError:
                how = f"killed by signal {-self.exitcode}"
        else:
            how = f"exit code {self.exitcode}"
        return f"the grader's worker process (pid {self.pid}) died while running it ({how})"


@dataclass(frozen=True)
class JobRaised:
    """A job function that raised: the exception's type, text and the worker's traceback."""

    type_name: str
    message: str
    traceback: str
    grader_error: bool   # a GraderError: bad input the user can fix, said as one line


def _serve(conn: Connection, threads: int, warm: str | None) -> None:
    """A worker's life: take (function, argument), send back ("ok", value) or ("raised", JobRaised)."""
    if sys.platform.startswith("linux"):  # die with the grader: no orphan keeps a slot's kernel
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)  # before anything imports torch or numpy
    if warm:
        importlib.import_module(warm)    # the job code's imports overlap the main process's work
    from .errors import GraderError

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            _leave()
        function, argument = task
        try:
            reply = ("ok", function(argument))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the scheduler
            reply = ("raised", JobRaised(type(exc).__name__, str(exc), traceback.format_exc(),
                                         isinstance(exc, GraderError)))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def _leave() -> None:
    """End the worker without the interpreter's teardown, which frees everything a grading worker
    holds one object at a time (torch, the reference, MNIST: 1.4 s measured, paid at the end of
    every run). Nothing is lost: every job's files were written before its reply was sent, and the
    exit handlers (the sandbox's temporary files) still run. A forked multiprocessing child ends
    the same way; a spawned one would run the full teardown."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()   # no public equivalent; os._exit alone would skip them
    os._exit(0)


class _Worker:
    def __init__(self, index: int, threads: int, warm: str | None) -> None:
        self.index = index     # its place in the pool, kept by the worker that replaces it
        self.conn, child = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=_serve, args=(child, threads, warm), name="grader-worker")
        self.process.start()
        assert self.process.pid is not None, "a started process has a pid"
        self.pid: int = self.process.pid
        child.close()
        self.job: Any = None   # the key of the job it holds, None while idle

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerPool:
    """`size` worker processes at `threads` CPU threads each; `warm` is a module they import at start."""

    def __init__(self, size: int, threads: int = 1, warm: str | None = None) -> None:
        self.size, self.threads, self.warm = size, threads, warm
        self.environment = _environment()
        self.closed = False
        self._workers = [_Worker(i, threads, warm) for i in range(size)]

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def grow(self, size: int) -> None:
        """At least `size` workers (the ones there keep what they loaded)."""
        self._workers += [_Worker(i, self.threads, self.warm) for i in range(len(self._workers), size)]
        self.size = len(self._workers)

    def run(self, function: Callable[[Any], Any], jobs: Iterable[tuple[Any, Any]],
            assign: Callable[[Any, int], Any] | None = None, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        """function(argument) for every (key, argument), at most `limit` (default: all the
        workers) at once; yields (key, value | JobRaised | WorkerDied) as each finishes. A job is
        handed to a worker only when that worker is idle, so at any time each worker holds at
        most one job; assign (argument, worker index) -> argument fits a job to the worker it
        goes to (its slot)."""
        if self.closed:
            raise RuntimeError("this worker pool is closed")
        queue = list(jobs)[::-1]
        try:
            while queue or any(w.job is not None for w in self._workers):
                for worker in self._workers[:limit]:
                    if worker.job is None and queue:
                        key, argument = queue.pop()
                        if assign is not None:
                            argument = assign(argument, worker.index)
                        worker.conn.send((function, argument))
                        worker.job = key
                busy = [w for w in self._workers if w.job is not None]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    if worker.conn in ready or worker.process.sentinel in ready:
                        yield from self._collect(worker)
        except BaseException:
            self.close()   # a job left running in a worker must not outlive the batch
            raise

    def _collect(self, worker: _Worker) -> Iterator[tuple[Any, Any]]:
        key = worker.job
        try:
            if worker.conn.poll():
                _, value = worker.conn.recv()
                worker.job = None
                yield key, value
                return
        except (EOFError, OSError):
            worker.process.join(10)   # its end of the pipe closed: it is exiting
        if worker.process.is_alive():
            return  # a spurious wake-up
        worker.process.join()
        died = WorkerDied(worker.pid, worker.process.exitcode)
        worker.conn.close()
        self._workers[self._workers.index(worker)] = _Worker(worker.index, self.threads, self.warm)
        yield key, died

    def close(self) -> None:
        self.closed = True
        for worker in self._workers:
            if worker.job is not None:   # busy: it would not read the request to stop
                worker.process.kill()
            worker.stop()
        self._workers = []


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


_shared: WorkerPool | None = None


def shared_pool(size: int, threads: int, warm: str | None = None) -> WorkerPool:
    """This process's pool of at least `size` workers (run it with limit=size), reused by later
    batches while threads and the grader's environment variables are the same (tests grade many
    small batches in one process: the workers keep what they loaded); closed at exit."""
    global _shared
    wanted = (threads, warm, _environment())
    if _shared is not None and (_shared.closed or (_shared.threads, _shared.warm, _shared.environment) != wanted):
        _shared.close()
        _shared = None
    if _shared is None:
        _shared = WorkerPool(size, threads, warm)
    _shared.grow(size)
    return _shared


def close_shared_pool() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


atexit.register(close_shared_pool)
