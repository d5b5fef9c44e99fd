"""--timeout-factor: each notebook's limit is F x the solution's own measured run time."""

from __future__ import annotations

import json
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from typer.testing import CliRunner

from grader import paths
from grader.cli import app
from grader.config import load_config
from grader.grade import GradeOptions, grade_submissions
from grader.timing import TIMING_DIR, timing_key

CONFIG = load_config()


def test_the_key_follows_parameters_and_host():
    smoke = CONFIG.resolve_parameters(preset="smoke")
    quick = CONFIG.resolve_parameters(preset="quick")
    assert timing_key(CONFIG, smoke) == timing_key(CONFIG, dict(smoke))
    assert timing_key(CONFIG, smoke) != timing_key(CONFIG, quick)
    assert timing_key(CONFIG, smoke) != timing_key(CONFIG, smoke, where="tcp://cluster:8786")


@pytest.mark.parametrize("extra, said", [
    (["--timeout", "10", "--timeout-factor", "2"], "give --timeout (seconds per notebook) or --timeout-factor, not both"),
    (["--timeout-factor", "0.5"], "--timeout-factor must be at least 1"),
])
def test_bad_factors_are_refused_before_anything_runs(tmp_path, extra, said):
    result = CliRunner().invoke(app, ["grade", "submissions", "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2 and said in result.output
    assert not list((tmp_path / "out").glob("*/"))


@pytest.mark.slow
def test_a_notebook_slower_than_factor_times_the_solution_times_out(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    params = new_code_cell("NZ = 16\nEPOCHS = 1\nDATA_DIR = './data'", metadata={"tags": ["parameters"]})
    nbformat.write(new_notebook(cells=[params, new_code_cell("import time\ntime.sleep(600)"),
                                       new_code_cell("after = 1")]), folder / "sleeps.ipynb")
    said: list[str] = []
    options = GradeOptions(out_dir=tmp_path / "out", preset="smoke", timeout_factor=1.0, pdf=False)
    result = grade_submissions(folder, options, log=said.append, print_table=False)[0]
    assert result.status == "timeout"
    limit = next(m for m in said if m.startswith("time limit per notebook"))
    seconds = float(re.search(r"x ([0-9.]+) s", limit)[1])
    key = timing_key(CONFIG, CONFIG.resolve_parameters(preset="smoke"))
    record = json.loads((paths.cache_dir() / TIMING_DIR / f"{key}.json").read_text())
    assert abs(record["seconds"] - seconds) < 0.1 and 1 < seconds < 600
    assert result.seconds < seconds + 30      # stopped at the limit, not after the 600 s sleep
    again: list[str] = []   # measured once: the second run takes it from the cache
    quick = tmp_path / "in2"   # a notebook that ends at once: only the log matters here, not another timeout
    quick.mkdir()
    nbformat.write(new_notebook(cells=[params, new_code_cell("after = 1")]), quick / "quick.ipynb")
    grade_submissions(quick, GradeOptions(out_dir=tmp_path / "out2", preset="smoke", timeout_factor=1.0, pdf=False),
                      log=again.append, print_table=False)
    assert not any(m.startswith("timing the solution") for m in again)
    assert any(m.startswith("time limit per notebook") for m in again)

