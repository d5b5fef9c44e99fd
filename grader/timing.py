"""Timeouts that follow the work: `grader grade --timeout-factor F`.

Each notebook's limit is F × the run time of the assignment's own solution notebook at the same
parameters on the same host, measured through the same execute path as a submission (sandboxed
kernel, injected parameters, probe, the config's threads). The measurement is made once and kept
in the cache, keyed by the parameters, the host (name, CPU count, threads per kernel, the CPU
model), the solution's bytes and the versions of the grader, Python and torch: a faster host, a
new solution or larger parameters measure again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path

from . import __version__, atomic, paths, versioning
from .config import AssignmentConfig, load_config
from .errors import GraderError

TIMING_DIR = "timing"


class TimingError(GraderError):
    """The solution notebook could not be timed (it is missing, or did not run cleanly)."""


@dataclasses.dataclass(frozen=True)
class SolutionTiming:
    seconds: float
    status: str
    problem: str | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def host_identity(config: AssignmentConfig, where: str | None = None) -> dict:
    """What makes a run time comparable: this host (or, for a cluster, the scheduler's address)."""
    return {"host": where or socket.gethostname(), "cpus": len(os.sched_getaffinity(0)), "cpu": _cpu_model(),
            "threads": config.limits.threads}


def timing_key(config: AssignmentConfig, params: dict, where: str | None = None) -> str:
    solution = config.path(config.assignment.solution)
    try:
        solution_digest = hashlib.sha256(solution.read_bytes()).hexdigest()
    except OSError as exc:
        raise TimingError(f"{solution}: cannot read the solution notebook to time it ({exc.strerror})") from None
    parts = {"params": params, "where": host_identity(config, where), "solution": solution_digest,
             "grader": __version__, "execution": versioning.execution_digest(),
             "python": sys.version.split()[0], "torch": metadata.version("torch")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def time_solution(options) -> SolutionTiming:
    """The job that measures: run the solution like a submission, in a worker process."""
    from . import sandbox
    from .execute import execute_notebook
    from .exporting import export_code
    from .grade import worker_context

    ctx = worker_context(options)
    solution = ctx.config.path(ctx.config.assignment.solution)
    scratch = sandbox.make_scratch_dir("solution", ctx.config.limits)
    try:
        result = execute_notebook(solution, scratch, dict(ctx.params), config=ctx.config, data_dir=ctx.data_dir,
                                  probe_code=export_code(ctx.config), cell_timeout=options.cell_timeout,
                                  threads=ctx.config.limits.threads)
    finally:
        sandbox.remove_tree(scratch)
    problem = None if result.status == "graded" else "; ".join(result.errors) or result.status
    return SolutionTiming(seconds=result.seconds, status=result.status, problem=problem)


def solution_seconds(options, runner, log) -> float:
    """The solution's run time at the run's parameters on this host: from the cache, or measured
    now in one of the run's workers (once, even with several graders starting at once)."""
    config = load_config(options.config_path)
    params = config.resolve_parameters(options.overrides, options.preset)
    key = timing_key(config, params, getattr(runner, "address", None))
    root = paths.cache_dir() / TIMING_DIR
    record = root / f"{key}.json"

    def read(_locked: bool) -> float | None:
        try:
            return float(json.loads(record.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None   # not measured yet (or a damaged record): measure

    def measure() -> float:
        log(f"timing the solution notebook at {params} for --timeout-factor (once per parameters and host)")
        (_, timing), = list(runner.run(time_solution, [("solution", options)]))
        if not isinstance(timing, SolutionTiming):
            raise TimingError(f"the solution notebook could not be timed: {_describe(timing)}")
        if timing.problem is not None:
            raise TimingError(f"{config.path(config.assignment.solution)}: the solution did not run cleanly at "
                              f"{params} ({timing.problem}), so it cannot set the time limits")
        atomic.write_text(record, json.dumps({"seconds": timing.seconds, "params": params}, indent=1))
        log(f"the solution ran in {timing.seconds:.1f} s")
        return timing.seconds

    return paths.compute_once(root / f"{key}.lock", read, measure)


def _describe(value) -> str:
    describe = getattr(value, "describe", None)
    if describe is not None:
        return describe()
    return f"{getattr(value, 'type_name', type(value).__name__)}: {getattr(value, 'message', value)}"


def check_timeout_factor(options) -> None:
    """Refuse what cannot work before anything starts: both limits, or a factor below 1 (it would
    time out the solution itself)."""
    factor = options.timeout_factor
    if options.notebook_timeout is not None:
        raise GraderError("give --timeout (seconds per notebook) or --timeout-factor, not both")
    if factor is None or not factor >= 1:
        raise GraderError(f"--timeout-factor must be at least 1 (the solution's own time), not {factor}")


def apply_timeout_factor(options, runner, log):
    """options with notebook_timeout = factor × the solution's run time."""
    check_timeout_factor(options)
    factor = options.timeout_factor
    seconds = solution_seconds(options, runner, log)
    limit = round(factor * seconds, 1)
    log(f"time limit per notebook: {factor:g} x {seconds:.1f} s (the solution's run) = {limit:.0f} s")
    return dataclasses.replace(options, notebook_timeout=limit)
