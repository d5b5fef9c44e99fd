"""The worker pool: results by job, a raising job reported, a worker's death costs its job only."""

from __future__ import annotations

import os
import signal
import time

from grader.pool import JobRaised, WorkerDied, WorkerPool


def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def job(kind: str) -> str:
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise":
        raise ValueError("no such thing")
    if kind == "slow":
        time.sleep(1.0)
    return f"{kind} done by {os.getpid()}"


def test_every_job_gets_its_result_and_workers_are_reused():
    pool = WorkerPool(2)
    try:
        results = dict(pool.run(square, [(i, i) for i in range(6)]))
        assert {k: v[0] for k, v in results.items()} == {i: i * i for i in range(6)}
        assert {v[1] for v in results.values()} <= set(pool.pids)   # two processes did all six
        again = dict(pool.run(square, [("x", 3)]))
        assert again["x"][0] == 9 and again["x"][1] in pool.pids
    finally:
        pool.close()


def test_a_dead_worker_costs_its_job_only_and_a_raising_job_says_why():
    pool = WorkerPool(2)
    try:
        before = set(pool.pids)
        results = dict(pool.run(job, [(k, k) for k in ("slow", "die", "raise", "ok", "slow2")]))
        died = results["die"]
        assert isinstance(died, WorkerDied) and died.exitcode == -signal.SIGKILL and died.pid in before
        assert "died while running it (killed by SIGKILL)" in died.describe()
        raised = results["raise"]
        assert isinstance(raised, JobRaised) and (raised.type_name, raised.message) == ("ValueError", "no such thing")
        assert "Traceback" in raised.traceback and not raised.grader_error
        assert results["slow"].startswith("slow done") and results["ok"].startswith("ok done")
        assert results["slow2"].startswith("slow2 done")
        assert len(pool.pids) == 2 and died.pid not in pool.pids   # a fresh worker took the slot
        assert dict(pool.run(job, [("after", "after")]))["after"].startswith("after done")
    finally:
        pool.close()


def test_slots_are_given_by_worker_index():
    pool = WorkerPool(2)
    try:
        seen = dict(pool.run(square, [(i, 1) for i in range(4)], assign=lambda arg, index: arg + 10 * index))
        assert {v[0] for v in seen.values()} <= {1, 121}   # 1 + 10*0 or 1 + 10*1, squared
    finally:
        pool.close()


def test_a_limit_caps_the_jobs_at_once():
    pool = WorkerPool(2)
    try:
        seen = dict(pool.run(square, [(i, i) for i in range(3)], limit=1))
        assert len({pid for _, pid in seen.values()}) == 1
    finally:
        pool.close()
