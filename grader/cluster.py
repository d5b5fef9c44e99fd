"""Grading jobs on a dask.distributed cluster: `grader grade ... --scheduler tcp://HOST:8786`.

The same job function as a local run (grade.grade_job) runs on the cluster's workers. Workers
share no file system with the submitting machine: each job carries the notebook's bytes (and the
files of an earlier run of it, so that still-valid work is reused), grades into a temporary
folder of the worker's and returns that folder's files, which the submitting machine writes into
OUT. A worker lost mid-job is dask's to handle: the scheduler runs the job again on another
worker (`allowed-failures`), and a job that raised is retried `RETRIES` times.

Every worker host needs the grader installed (the same version and config) and bubblewrap; data
and reference models are provisioned there through the same cached, file-locked functions as on
one machine, in the worker's own cache.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

from .errors import GraderError
from .pool import JobRaised

RETRIES = 2
CONNECT_TIMEOUT_S = 30


class ClusterError(GraderError):
    """The scheduler cannot be reached, or its workers run another grader."""


def grader_identity() -> dict[str, str]:
    """What must agree between the submitting machine and every worker for identical results:
    the grader's version and the digests of the code each cached stage depends on."""
    from . import __version__, versioning

    return {"version": __version__, "execution": versioning.execution_digest(),
            "result": versioning.result_digest(), "report": versioning.report_digest()}


def _worker_identity() -> dict[str, str]:
    return {**grader_identity(), "host": socket.gethostname()}


class ClusterRunner:
    """Runs jobs on the cluster behind a dask scheduler."""

    remote = True   # jobs carry their notebook and bring their files back

    def __init__(self, address: str, retries: int = RETRIES) -> None:
        from distributed import Client

        try:
            self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"{address}: cannot reach the dask scheduler ({exc})") from None
        self.address, self.retries = address, retries
        self._check_workers()

    def _check_workers(self) -> None:
        ours = grader_identity()
        for worker, theirs in self.client.run(_worker_identity).items():
            differs = [k for k in ours if theirs.get(k) != ours[k]]
            if differs:
                raise ClusterError(
                    f"{self.address}: worker {worker} ({theirs.get('host')}) runs another grader "
                    f"(differs in {', '.join(differs)}: version {theirs.get('version')} there, {ours['version']} here); "
                    "install the same grader on every worker")

    def run(self, function, jobs: list[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """function(argument) on the cluster for every (key, argument); yields (key, value |
        JobRaised) as each finishes (a job dask gave up on, e.g. KilledWorker, is a JobRaised)."""
        from distributed import as_completed

        batch = uuid.uuid4().hex[:8]
        futures = {self.client.submit(function, argument, pure=False, retries=self.retries,
                                      key=f"grade-{batch}-{key}"): key for key, argument in jobs}
        for future in as_completed(futures):
            key = futures[future]
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001 - the job's failure is that submission's result
                value = JobRaised(type(exc).__name__, str(exc), "", isinstance(exc, GraderError))
            future.release()
            yield key, value

    def close(self) -> None:
        self.client.close()
