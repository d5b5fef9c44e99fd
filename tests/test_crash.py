"""Crash safety: a grader killed with SIGKILL mid-batch leaves nothing running, and the same
command again finishes the batch with the gradebook of an uninterrupted run, cleaning up after
the killed one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

pytestmark = pytest.mark.slow
GRADER = Path(sys.executable).with_name("grader")


def slow_notebook(seconds: float, value: int) -> nbformat.NotebookNode:
    params = new_code_cell("NZ = 16\nEPOCHS = 1\nDATA_DIR = './data'", metadata={"tags": ["parameters"]})
    return new_notebook(cells=[
        params, new_code_cell(f"import time\ntime.sleep({seconds})\nbest_beta = {value}.0"),
        new_markdown_cell("Inline Question: Describe your observations, why do you think they occur? [2pt] "
                          "(please limit your answer to <150 words)\n\n**Answer:** blurry."),
    ])


def grade_command(folder: Path, out: Path) -> list[str]:
    return [str(GRADER), "grade", str(folder), "--out", str(out), "--preset", "smoke", "--workers", "1"]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (the grader's worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_kill_9_mid_batch_then_the_same_command_gives_the_uninterrupted_gradebook(tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    for i in range(3):
        nbformat.write(slow_notebook(3, i), folder / f"student{i}.ipynb")
    # The uninterrupted run goes alongside the one to be killed (the notebooks mostly sleep: ~30 s
    # saved). Its processes have other pids, so the checks below, keyed on the killed run's pids,
    # never see them; its temp dir is its own, so it never reaps what the killed run leaves (that
    # is the rerun's job, checked below).
    whole = tmp_path / "whole"
    whole_tmp = Path(tempfile.mkdtemp(prefix="crash-test-whole-"))
    whole_tmp.chmod(0o755)   # like /tmp: the sandbox's uid passes through it
    whole_log = tmp_path / "whole-stderr.txt"
    with open(whole_log, "wb") as log:   # a file, not a pipe: nothing reads it until the end
        uninterrupted = subprocess.Popen(grade_command(folder, whole), stdout=subprocess.DEVNULL, stderr=log,
                                         env={**os.environ, "TMPDIR": str(whole_tmp)})

    out = tmp_path / "killed"
    grader = subprocess.Popen(grade_command(folder, out), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob("*/execution.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(out.glob("*/execution.json")), "the batch never got going"
    time.sleep(1.0)  # mid-way through the next notebook
    tags = [f"grader-{pid}." for pid in [grader.pid, *children(grader.pid)]]   # the workers make the dirs
    os.killpg(grader.pid, signal.SIGKILL)
    grader.wait()
    left = [p for tag in tags for p in Path(tempfile.gettempdir()).glob(f"{tag}*")]
    assert left, "a killed run leaves its scratch and runtime directories (what the next run must remove)"
    time.sleep(2.0)
    for tag in tags:
        assert processes_mentioning(tag) == []             # no kernel, sandbox or bwrap survives
    assert not (out / "gradebook.csv").exists()

    assert uninterrupted.wait(timeout=600) == 0, whole_log.read_text()
    shutil.rmtree(whole_tmp, ignore_errors=True)
    subprocess.run(grade_command(folder, out), check=True, capture_output=True, timeout=600)
    assert (out / "gradebook.csv").read_text() == (whole / "gradebook.csv").read_text()
    rows = (out / "gradebook.csv").read_text().splitlines()[1:]
    assert len(rows) == len(set(rows)) == 3
    for result in out.glob("*/result.json"):
        json.loads(result.read_text())                     # no half-written file
    assert not list(out.rglob(".*.tmp"))                   # no temporary file of the atomic writes
    assert [p for p in left if p.exists()] == []           # the killed run's scratch and keys are gone


def test_a_worker_killed_mid_job_costs_that_notebook_only(tmp_path):
    """kill -9 of the worker process grading one notebook: that notebook is `crashed` with the
    reason, a fresh worker takes the slot, the others are graded and the batch writes its gradebook."""
    folder = tmp_path / "submissions"
    folder.mkdir()
    nbformat.write(slow_notebook(0, 1), folder / "before.ipynb")
    nbformat.write(slow_notebook(60, 2), folder / "victim.ipynb")
    nbformat.write(slow_notebook(0, 3), folder / "after.ipynb")
    out = tmp_path / "out"
    grader = subprocess.Popen(grade_command(folder, out), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    scratch = []
    while not scratch and time.monotonic() < deadline:   # the victim's scratch dir names its worker
        scratch = list(Path(tempfile.gettempdir()).glob("grader-*-victim-*"))
        time.sleep(0.2)
    assert scratch, "the victim never started"
    worker = int(scratch[0].name.split("-")[1].split(".")[0])
    assert worker in children(grader.pid)
    time.sleep(1.0)
    os.kill(worker, signal.SIGKILL)
    _, stderr = grader.communicate(timeout=600)
    assert grader.returncode == 0, stderr
    statuses = {r.split(",")[0]: r.split(",")[1] for r in (out / "gradebook.csv").read_text().splitlines()[1:]}
    assert statuses == {"after": "graded", "before": "graded", "victim": "crashed"}
    victim = json.loads((out / "victim" / "result.json").read_text())
    assert any(f"worker process (pid {worker}) died while running it (killed by SIGKILL)" in e
               for e in victim["errors"]), victim["errors"]
    assert victim["cache_key"] == ""                       # not cached: the next run grades it again
    assert (out / "victim" / "report.pdf").is_file()
    time.sleep(1.0)
    assert processes_mentioning(f"grader-{worker}.") == []   # the dead worker's kernel went with it
