"""`grader grade` end to end on real kernels (smoke parameters: plumbing, not quality).

One folder holds a real sample submission and small notebooks that raise, kill their kernel, or
are not notebooks at all; every one gets a row, the batch completes, reruns reuse finished work,
and 1 and 2 workers give the same numbers.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.config import load_config
from grader.grade import GradeOptions, grade_submissions, self_check
from grader.paths import REPO_ROOT

pytestmark = pytest.mark.slow
CONFIG = load_config()
SAMPLE = REPO_ROOT / "submissions" / "correct.ipynb"


def tiny_notebook(*sources: str) -> nbformat.NotebookNode:
    params = new_code_cell("NZ = 16\nEPOCHS = 10\nDATA_DIR = './data'", metadata={"tags": ["parameters"]})
    cells = [new_markdown_cell("# A tiny notebook"), params] + [new_code_cell(s) for s in sources]
    cells.append(new_markdown_cell(
        "Inline Question: Describe your observations, why do you think they occur? [2pt] "
        "(please limit your answer to <150 words)\n\n**Answer:** the decoder maps $z$ far from the data."
    ))
    return new_notebook(cells=cells)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("submissions")
    shutil.copy(SAMPLE, root / "correct.ipynb")
    nbformat.write(tiny_notebook("x = 1", "1 / 0", "y = EPOCHS * 2\nprint(y)"), root / "raises.ipynb")
    nbformat.write(tiny_notebook("import os\nos._exit(3)", "z = 2"), root / "dies.ipynb")
    (root / "garbage.ipynb").write_text("{ this is not json")
    return root


def grade(folder: Path, out: Path, **options) -> dict:
    options.setdefault("preset", "smoke")
    grade_submissions(folder, GradeOptions(out_dir=out, **options), log=lambda _: None)
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/result.json")}


@pytest.fixture(scope="module")
def graded(folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out2")
    return out, grade(folder, out, workers=2)


def test_every_submission_gets_a_row_and_its_status(graded, folder):
    out, results = graded
    assert {k: r["status"] for k, r in results.items()} == {
        "correct": "graded", "raises": "error", "dies": "crashed", "garbage": "invalid",
    }
    with open(out / "gradebook.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:4] == ["submission", "status", "score", "max_score"]
    checks, questions = [c.id for c in CONFIG.checks], [q.id for q in CONFIG.questions]
    assert rows[0][4:] == [*checks, *questions, "written", "total", "total_max", "marking"]
    assert {r[-1] for r in rows[1:]} == {"unmarked: " + ", ".join(questions)}
    assert (out / "marks.sqlite").is_file()   # the answers are in the marking database
    assert sorted(r[0] for r in rows[1:]) == ["correct", "dies", "garbage", "raises"]
    for name in results:
        assert (out / name / "report.pdf").stat().st_size > 1000
        # the notebook as handed in, kept for `grader mark` (saved outputs beside the re-run's)
        assert (out / name / "submitted.ipynb").read_bytes() == (folder / f"{name}.ipynb").read_bytes(), name
    assert (out / "summary.pdf").exists() and (out / "summary.json").exists()


def test_result_json_has_the_documented_fields(graded):
    _, results = graded
    result = results["correct"]
    for key in ("submission", "status", "score", "max_score", "overrides", "checks", "metrics",
                "answers", "best_beta", "cells", "errors"):
        assert key in result, key
    assert set(result["checks"][0]) >= {"id", "points", "max_points", "message"}
    assert set(result["answers"][0]) >= {"id", "found", "text", "words", "limit", "max_points"}
    assert result["overrides"] == {"EPOCHS": 1, "TRAIN_SUBSET": 2048}
    assert result["best_beta"] == 1.0 and result["best_beta_source"] == "kernel"
    assert all(a["found"] for a in result["answers"])
    # the student's models were measured next to the reference's
    assert result["metrics"]["student"]["vae_tuned"]["mse"] is not None
    assert result["metrics"]["reference"]["ae"]["mse"] is not None


def test_smoke_parameters_make_quality_checks_not_assessable(graded):
    _, results = graded
    checks = {c["id"]: c for c in results["correct"]["checks"]}
    assert not checks["ae_reconstruction"]["assessable"]
    assert "Not assessable" in checks["ae_reconstruction"]["message"]
    assert checks["kl_divergence"]["points"] == checks["kl_divergence"]["max_points"]


def test_parameters_are_injected_after_the_parameters_cell(graded):
    out, results = graded
    executed = nbformat.read(out / "raises" / "executed.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    injected = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
    assert "parameters" in tags[injected - 1]
    assert "EPOCHS = 1" in executed.cells[injected].source
    # the cell after the failing one still ran, with the injected EPOCHS
    last = [c for c in executed.cells if c.cell_type == "code"][-1]
    assert any("2" == o.get("text", "").strip() for o in last.outputs)
    cells = results["raises"]["cells"]
    assert [c["status"] for c in cells] == ["ok", "ok", "error", "ok"]
    assert "ZeroDivisionError" in cells[2]["error"]


def test_failures_are_explained(graded):
    _, results = graded
    assert any("garbage.ipynb" in e for e in results["garbage"]["errors"])
    assert results["dies"]["cells"][-1]["status"] == "not_run"
    assert results["dies"]["score"] == 0
    assert not any(a["found"] for a in results["garbage"]["answers"])


def test_one_and_two_workers_give_identical_results(graded, folder, tmp_path):
    _, two = graded
    one = grade(folder, tmp_path / "out1", workers=1)

    def numbers(result):
        return {k: result[k] for k in ("status", "score", "max_score", "checks", "metrics", "answers", "best_beta")}

    for name in two:
        assert numbers(one[name]) == numbers(two[name]), name


def test_rerun_reuses_and_a_rubric_change_rescores_without_executing(folder, tmp_path):
    out = tmp_path / "out"
    subset = tmp_path / "subset"
    subset.mkdir()
    shutil.copy(folder / "raises.ipynb", subset)
    first = grade(subset, out)
    execution = out / "raises" / "execution.json"
    stamp = execution.stat().st_mtime_ns
    again = grade(subset, out)
    assert again == first and execution.stat().st_mtime_ns == stamp
    rubric = tmp_path / "assignment.toml"
    text = CONFIG.path("assignment.toml").read_text().replace(
        'title = "KL divergence function"\npoints = 2', 'title = "KL divergence function"\npoints = 5'
    )
    rubric.write_text(text)
    for name in ("classifier.pt", "handout.ipynb", "solution.ipynb"):
        (tmp_path / name).symlink_to(CONFIG.path(name))
    rescored = grade(subset, out, config_path=rubric)
    assert execution.stat().st_mtime_ns == stamp
    kl = next(c for c in rescored["raises"]["checks"] if c["id"] == "kl_divergence")
    assert kl["max_points"] == 5


def test_timeout_status(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    nbformat.write(tiny_notebook("import time\ntime.sleep(60)", "after = 1"), folder / "sleeps.ipynb")
    results = grade(folder, tmp_path / "out", cell_timeout=3)
    assert results["sleeps"]["status"] == "timeout"
    by_index = {c["index"]: c["status"] for c in results["sleeps"]["cells"]}
    assert by_index[2] == "timeout" and by_index[3] == "ok"  # the cell after still ran


def test_check_agrees_with_grade(graded, tmp_path):
    _, results = graded
    checked = self_check(SAMPLE, GradeOptions(out_dir=tmp_path / "check", preset="smoke"), log=lambda _: None)
    graded_checks = {c["id"]: (c["points"], c["assessable"]) for c in results["correct"]["checks"]}
    assert {c.id: (c.points, c.assessable) for c in checked.checks} == graded_checks
    assert (tmp_path / "check" / "correct" / "report.pdf").exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    from grader.errors import GraderError

    with pytest.raises(GraderError, match="no such file or folder"):
        grade_submissions(tmp_path / "nope", GradeOptions(out_dir=tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraderError, match="no .ipynb files"):
        grade_submissions(tmp_path / "empty", GradeOptions(out_dir=tmp_path / "out"))


def test_a_grader_failure_on_one_notebook_never_stops_the_batch(tmp_path):
    from grader.errors import GraderError

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("first", "second"):
        nbformat.write(tiny_notebook("x = 1"), folder / f"{name}.ipynb")
    out = tmp_path / "out"
    (out / "first" / "report.pdf").mkdir(parents=True)   # the grader cannot write this notebook's PDF
    results = grade(folder, out)
    assert results["second"]["status"] == "graded"
    assert not any("grader failed" in e for e in results["second"]["errors"])
    assert any("the grader failed while evaluating it" in e and "report.pdf: cannot write the PDF" in e
               for e in results["first"]["errors"]), results["first"]["errors"]
    assert results["first"]["cache_key"] == ""             # not cached: a rerun tries again
    out2 = tmp_path / "out2"
    for name in ("first", "second"):
        (out2 / name / "report.pdf").mkdir(parents=True)
    with pytest.raises(GraderError, match="could not grade any notebook"):
        grade(folder, out2)


def test_a_regrade_keeps_the_marks_shows_them_and_flags_a_changed_answer(tmp_path):
    from test_report import pdf_text

    from grader.marking.store import MarkStore

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    notebook = tiny_notebook("x = 1")
    nbformat.write(notebook, folder / "tiny.ipynb")
    grade(folder, out)
    store = MarkStore(out, CONFIG, marker="mia")
    q1_item = store.rubric("Q1")[0]
    store.apply_item(q1_item.id, ["tiny"])
    store.set_mark("tiny", "Q2", comment="No answer found; asked the student.")
    grade(folder, out)                                      # nothing changed: the PDF gains the marks
    text = pdf_text(out / "tiny" / "report.pdf")
    assert q1_item.text in text and "No answer found; asked the student." in text
    notebook.cells[-1].source = notebook.cells[-1].source.replace("far from the data", "somewhere else")
    nbformat.write(notebook, folder / "tiny.ipynb")
    grade(folder, out)                                      # a new notebook: Q1's answer changed
    q1, q2 = store.mark("tiny", "Q1"), store.mark("tiny", "Q2")
    assert q1 is not None and q1.stale and q1.items == [q1_item.id]   # kept, flagged
    assert q2 is not None and not q2.stale
    with open(out / "gradebook.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["Q1"] == str(q1.points) and row["marking"] == "unmarked: Q3, Q4, Q5; stale: Q1"
    assert "Your answer to Q1 changed after it was marked" in pdf_text(out / "tiny" / "report.pdf")
