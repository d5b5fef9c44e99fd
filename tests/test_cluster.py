"""Grading on a dask.distributed cluster (a LocalCluster of two worker processes on loopback):
the same results as a local run, the files back in OUT, and a worker lost mid-job costs nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.grade import GradeOptions, grade_submissions
from grader.paths import REPO_ROOT

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


def small_notebook(*sources: str) -> nbformat.NotebookNode:
    params = new_code_cell("NZ = 16\nEPOCHS = 10\nDATA_DIR = './data'", metadata={"tags": ["parameters"]})
    return new_notebook(cells=[params, *(new_code_cell(s) for s in sources), new_markdown_cell(
        "Inline Question: Describe your observations, why do you think they occur? [2pt] "
        "(please limit your answer to <150 words)\n\n**Answer:** the decoder maps $z$ far from the data.")])


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as local:
        yield local


def grade(folder: Path, out: Path, **options) -> dict:
    grade_submissions(folder, GradeOptions(out_dir=out, preset="smoke", **options), log=lambda _: None,
                      print_table=False)
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/result.json")}


def numbers(result: dict) -> dict:
    return {k: result[k] for k in ("status", "score", "max_score", "checks", "metrics", "answers", "best_beta",
                                   "errors")}


def test_a_cluster_grades_like_a_local_run(cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(REPO_ROOT / "submissions" / "correct.ipynb", folder)
    nbformat.write(small_notebook("x = 1", "1 / 0"), folder / "raises.ipynb")
    remote = grade(folder, tmp_path / "remote", scheduler=cluster.scheduler_address)
    local = grade(folder, tmp_path / "local", workers=2)
    assert sorted(remote) == ["correct", "raises"]
    for name in local:
        assert numbers(remote[name]) == numbers(local[name]), name
        names = sorted(p.name for p in (tmp_path / "local" / name).iterdir())
        assert sorted(p.name for p in (tmp_path / "remote" / name).iterdir()) == names, name
    assert remote["correct"]["status"] == "graded" and remote["correct"]["metrics"]["student"]["ae"]["mse"] is not None
    assert (tmp_path / "remote" / "correct" / "report.pdf").stat().st_size > 1000
    assert (tmp_path / "remote" / "gradebook.csv").read_text() == (tmp_path / "local" / "gradebook.csv").read_text()


def test_a_worker_lost_mid_job_means_the_job_runs_again_elsewhere(cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(small_notebook("import time\ntime.sleep(8)", "x = 1"), folder / "slow.ipynb")
    client = distributed.Client(cluster.scheduler_address)
    pids = client.run(os.getpid)
    killed = []

    def kill_the_worker_holding_it() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for worker, tasks in client.processing().items():
                if tasks and worker in pids:
                    time.sleep(3)   # mid-way through the job
                    os.kill(pids[worker], signal.SIGKILL)
                    killed.append(worker)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_worker_holding_it)
    killer.start()
    results = grade(folder, tmp_path / "out", scheduler=cluster.scheduler_address)
    killer.join()
    client.close()
    assert killed, "no worker ever held the job"
    assert results["slow"]["status"] == "graded", results["slow"]["errors"]
    assert [c["status"] for c in results["slow"]["cells"]] == ["ok", "ok", "ok"]
