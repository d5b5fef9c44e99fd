"""LMS exports: csv, Canvas and Moodle files parsed back and checked against the final grades;
roster mismatches listed; unfinished marking warned about; bad rosters named; the CLI command."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grader.cli import app
from grader.config import load_config
from grader.marking.final import load_results
from grader.marking.lms import ExportError, export_grades
from grader.marking.store import MarkStore
from grader.records import Answer, SubmissionResult

CONFIG = load_config()
QUESTIONS = [q.id for q in CONFIG.questions]
TOTAL_MAX = CONFIG.max_auto_points + CONFIG.max_answer_points
AUTO = {"alice": 18.0, "bob": 12.5, "carol": 7.0, "=cmd": 3.0}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    for name, score in AUTO.items():
        answers = [Answer(id=q.id, found=True, text=f"{name} on {q.id}", words=3, limit=q.limit, max_points=q.points)
                   for q in CONFIG.questions]
        status = "error" if name == "carol" else "graded"
        result = SubmissionResult(submission=name, status=status, score=score,
                                  max_score=CONFIG.max_auto_points, answers=answers)
        (out / name).mkdir(parents=True)
        (out / name / "result.json").write_text(result.model_dump_json())
    return out


def store_of(out: Path) -> MarkStore:
    store = MarkStore(out, CONFIG, marker="ta")
    store.sync_answers(load_results(out)[0])
    return store


def mark_all(out: Path, submission: str, adjustment: float = 1.0) -> float:
    """Mark every question of one submission with `adjustment` points; returns the written total."""
    store = store_of(out)
    for question in QUESTIONS:
        store.set_mark(submission, question, adjustment=adjustment)
    return adjustment * len(QUESTIONS)


def roster(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "roster.csv"
    path.write_bytes(text.encode(encoding))
    return path


ROSTER = """submission,name,email,idnumber,sis_id,sis_login,canvas_id,section
alice.ipynb,"Lovelace, Ada",ada@example.org,1001,S1001,ada,501,A
bob,Bob Builder,bob@example.org,1002,S1002,bob,502,B
zoe,Zoe Absent,zoe@example.org,1009,S1009,zoe,509,B
"""


def parse(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def quiet(lines: list[str]):
    return lines.append


# --- csv ----------------------------------------------------------------------------------------


def test_csv_totals_are_auto_plus_written_and_unmarked_is_warned(out, tmp_path):
    written = mark_all(out, "alice", 1.0)
    store_of(out).set_mark("bob", QUESTIONS[0], adjustment=0.5)
    log: list[str] = []
    path = export_grades(out, CONFIG, "csv", log=log.append)
    assert path == out / "grades-csv.csv"
    rows = parse(path)
    assert rows[0] == ["submission", "grader_status", "auto_points", *QUESTIONS, "written_points", "total",
                       "max_points", "marking"]
    by = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert sorted(by) == sorted(f"'{s}" if s.startswith("=") else s for s in AUTO)   # guarded against formulas
    alice, bob = by["alice"], by["bob"]
    assert float(alice["total"]) == AUTO["alice"] + written and alice["marking"] == "complete"
    assert [alice[q] for q in QUESTIONS] == ["1"] * len(QUESTIONS) and float(alice["max_points"]) == TOTAL_MAX
    assert bob[QUESTIONS[0]] == "0.5" and bob[QUESTIONS[1]] == "" and float(bob["total"]) == 13.0
    assert bob["marking"] == "unmarked: " + ", ".join(QUESTIONS[1:])
    assert by["carol"]["grader_status"] == "error"
    warning = next(line for line in log if "marking unfinished" in line)
    assert "3 of 4 submission(s)" in warning and f"{QUESTIONS[0]}: 2" in warning and f"{QUESTIONS[1]}: 3" in warning
    notes = (out / "grades-csv-notes.txt").read_text()
    assert warning in notes and "carol (error)" in notes


def test_complete_marking_has_no_warning(out):
    for name in AUTO:
        mark_all(out, name, 0.0)
    log: list[str] = []
    rows = parse(export_grades(out, CONFIG, "csv", log=log.append))
    assert {r[-1] for r in rows[1:]} == {"complete"}
    assert not any("unfinished" in line for line in log)


def test_csv_with_roster_lists_both_mismatches(out, tmp_path):
    log: list[str] = []
    rows = parse(export_grades(out, CONFIG, "csv", roster=roster(tmp_path, ROSTER), log=log.append))
    header = rows[0]
    assert header[:9] == ["submission", "name", "email", "idnumber", "sis_id", "sis_login", "canvas_id",
                          "section", "grader_status"]     # the roster's columns (it has no student_id)
    by = {r[0]: dict(zip(header, r)) for r in rows[1:]}
    assert by["alice"]["name"] == "Lovelace, Ada" and by["carol"]["name"] == ""
    assert by["zoe"]["marking"] == "no submission" and by["zoe"]["total"] == ""
    assert "submissions missing from the roster: =cmd, carol" in log
    assert any(line.startswith("roster students without a submission: zoe [Zoe Absent] (roster row 4)") for line in log)


# --- Canvas -------------------------------------------------------------------------------------


def test_canvas_file_is_canvas_gradebook_import_csv(out, tmp_path):
    written = mark_all(out, "bob", 0.5)
    log: list[str] = []
    path = export_grades(out, CONFIG, "canvas", roster=roster(tmp_path, ROSTER), log=log.append)
    assert path == out / "grades-canvas.csv"
    rows = parse(path)
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", CONFIG.assignment.name]
    assert rows[1][0] == "Points Possible" and float(rows[1][5]) == TOTAL_MAX
    assert rows[2:] == [["Lovelace, Ada", "501", "S1001", "ada", "A", "18"],
                        ["Bob Builder", "502", "S1002", "bob", "B", f"{AUTO['bob'] + written:g}"]]
    notes = (out / "grades-canvas-notes.txt").read_text()
    assert "submissions missing from the roster (not in this file): =cmd, carol" in notes
    assert "roster students without a submission (not in this file; their LMS grade is left as it is): zoe" in notes
    assert any("marking unfinished" in line for line in log)


def test_canvas_needs_a_roster_with_a_canvas_identifier(out, tmp_path):
    with pytest.raises(ExportError, match="the canvas format needs --roster"):
        export_grades(out, CONFIG, "canvas", log=quiet([]))
    bad = roster(tmp_path, "submission,name,email\nalice,Ada,ada@example.org\n")
    with pytest.raises(ExportError) as caught:
        export_grades(out, CONFIG, "canvas", roster=bad, log=quiet([]))
    assert str(bad) in str(caught.value) and "canvas_id or sis_id or sis_login" in str(caught.value)
    assert not (out / "grades-canvas.csv").exists()


# --- Moodle -------------------------------------------------------------------------------------


def test_moodle_file_maps_by_one_identifier_and_leaves_absent_students_out(out, tmp_path):
    text = "Submission;Name;Email\nalice;Ada;ada@example.org\nbob;Bob;bob@example.org\nzoe;Zoe;zoe@example.org\n"
    log: list[str] = []
    path = export_grades(out, CONFIG, "moodle", roster=roster(tmp_path, text, "utf-8-sig"),
                         output=tmp_path / "to-moodle.csv", log=log.append)
    rows = parse(path)
    assert rows == [["Email address", "Full name", CONFIG.assignment.name],
                    ["ada@example.org", "Ada", "18"], ["bob@example.org", "Bob", "12.5"]]
    notes = (tmp_path / "to-moodle-notes.txt").read_text()
    assert "map from 'Email address' to useremail" in notes and "zoe [Zoe]" in notes


def test_moodle_roster_needs_one_column_filled_in_every_row(out, tmp_path):
    text = "submission,idnumber,email\nalice,1001,\nbob,,bob@example.org\n"
    with pytest.raises(ExportError) as caught:
        export_grades(out, CONFIG, "moodle", roster=roster(tmp_path, text), log=quiet([]))
    message = str(caught.value)
    assert "by ONE column" in message and "idnumber is empty in row(s) 3" in message and "email is empty in row(s) 2" in message


# --- bad rosters and options --------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("name,email\nAda,ada@example.org\n", "has no `submission` column"),
    ("submission,sis_id\nalice,S1\nalice.ipynb,S2\n", "row 3: submission 'alice' is also in row 2"),
    ("submission,sis_id\nalice,S1\nbob,\n", "row 3: bob: no canvas_id or sis_id or sis_login"),
    ("submission,sis_id\n,S1\n", "row 2: no submission"),
])
def test_bad_rosters_are_named(out, tmp_path, text, expected):
    path = roster(tmp_path, text)
    with pytest.raises(ExportError) as caught:
        export_grades(out, CONFIG, "canvas", roster=path, log=quiet([]))
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_roster_not_utf8_and_unknown_format(out, tmp_path):
    path = roster(tmp_path, "submission,name\nalice,Zoë\n", "latin-1")
    with pytest.raises(ExportError, match="not UTF-8"):
        export_grades(out, CONFIG, "csv", roster=path, log=quiet([]))
    with pytest.raises(ExportError, match="unknown export format 'blackboard'"):
        export_grades(out, CONFIG, "blackboard", log=quiet([]))


def test_export_is_atomic_and_deterministic(out, tmp_path):
    mark_all(out, "alice")
    path = tmp_path / "grades.csv"
    export_grades(out, CONFIG, "canvas", roster=roster(tmp_path, ROSTER), output=path, log=quiet([]))
    first = path.read_bytes()
    export_grades(out, CONFIG, "canvas", roster=roster(tmp_path, ROSTER), output=path, log=quiet([]))
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_export(out, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(out), "--format", "canvas", "--roster", str(roster(tmp_path, ROSTER))])
    assert result.exit_code == 0, result.output
    assert "wrote 2 grade(s)" in result.output and "zoe" in result.output
    assert parse(out / "grades-canvas.csv")[0][0] == "Student"
    result = runner.invoke(app, ["export", str(out), "--format", "moodle"])
    assert result.exit_code == 2 and "the moodle format needs --roster" in result.output
