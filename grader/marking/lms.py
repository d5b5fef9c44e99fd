"""Grades out of the grader and into an LMS: `grader export OUT --format canvas|moodle|csv`.

    grader export OUT                                    # OUT/grades-csv.csv, no roster needed
    grader export OUT --format canvas --roster roster.csv      # OUT/grades-canvas.csv
    grader export OUT --format moodle --roster roster.csv -o moodle.csv

Every grade is `final_grades`' total: the automatic points plus staff's points of the written
answers, an unmarked question counting 0. While marking is unfinished the export still works,
warns how many submissions have unmarked questions (and which), and the csv format says so per row.
Each export also writes a companion `<output stem>-notes.txt` beside it: the warnings, the
submissions missing from the roster and the roster's students without a submission.

The roster: a CSV file (UTF-8, `,` or `;`, a header row; column names in any case) with one row per
student. `submission` is required: the notebook's file name (`alice_hw3.ipynb`) or its stem
(`alice_hw3`), as it was in the folder given to `grader grade`. The other columns, by format:

- `csv` uses every id column the roster fills (optional); needs nothing: a roster is optional.
- `canvas` uses `name` → Student, `canvas_id` → ID, `sis_id` → SIS User ID, `sis_login` → SIS Login ID,
  `section` → Section; needs one of `canvas_id`, `sis_id`, `sis_login` (Canvas matches students by
  those), filled in every row.
- `moodle` uses `idnumber` → "ID number", `email` → "Email address", `name` → "Full name"; needs one of
  `idnumber`, `email`, filled in every row.

Formats:

- `csv`: submission, (with a roster: its id columns, e.g. student_id, name, email), grader status,
  auto points, one column per question (empty while unmarked), written points, total, max, marking (`complete`, `unmarked: Q2 Q4`,
  `stale: Q3` where an answer changed after it was marked, `no submission`). Every submission,
  and with a roster also its students who have no submission.
- `canvas`: Canvas's gradebook import CSV: `Student,ID,SIS User ID,SIS Login ID,Section,<assignment>`
  (Canvas wants those five columns first, in that order), a `Points Possible` row under the header,
  then one row per rostered student with a submission. The assignment column is the config's
  `[assignment] name`; a column whose name matches no Canvas assignment creates one on import (with
  the Points Possible). To fill an existing assignment instead, rename the column to its header in a
  Canvas gradebook export (`Name (12345)`).
- `moodle`: for Moodle's "Import grades from CSV": identifier columns, then one grade column named
  after the assignment. In Moodle's import map "ID number" → useridnumber or "Email address" →
  useremail, and the grade column to the grade item (whose maximum must be at least the max points).

Students without a submission are left out of the Canvas and Moodle files, so their LMS grade stays
as it is: Moodle imports an empty grade as "no grade" (it would erase one entered by hand) and aborts
the whole import on a row whose student it cannot find. They are listed in the log and the notes.
Submissions missing from the roster cannot be in an LMS file (nothing identifies the student) and
are listed too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..config import AssignmentConfig
from ..errors import GraderError
from ..records import FinalGrade
from .csvfile import read_utf8, records_by_header
from .final import final_grades, load_results
from .sheet import format_number, guard_cell
from .store import MarkStore

FORMATS = ("csv", "canvas", "moodle")
ROSTER_COLUMNS = ("submission", "student_id", "name", "email", "idnumber", "sis_id", "sis_login", "canvas_id", "section")
# Per format: the roster columns of which at least one must be there (and filled in every row).
IDENTIFIERS = {"csv": (), "canvas": ("canvas_id", "sis_id", "sis_login"), "moodle": ("idnumber", "email")}
CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_FROM_ROSTER = ["name", "canvas_id", "sis_id", "sis_login", "section"]
MOODLE_COLUMNS = {"idnumber": "ID number", "email": "Email address", "name": "Full name"}


class ExportError(GraderError):
    """The grades cannot be exported: unknown format, a missing or bad roster, no results."""


@dataclass(frozen=True)
class Student:
    """One roster row: the submission it maps to and the student's ids (empty where not given)."""

    row: int                 # its row in the roster file, as a spreadsheet numbers it
    submission: str          # the notebook's stem
    ids: dict[str, str]


@dataclass(frozen=True)
class Matching:
    """Roster and submissions side by side."""

    pairs: list[tuple[Student, FinalGrade]]     # roster order
    unrostered: list[FinalGrade]                 # submissions missing from the roster
    absent: list[Student]                        # roster students without a submission


# --- the roster ---------------------------------------------------------------------------------


def read_roster(path: Path, fmt: str) -> list[Student]:
    text = read_utf8(path, "roster", ExportError)
    if not text.strip():
        raise ExportError(f"{path}: the roster is empty")
    records = records_by_header(text, "submission") or list(csv.reader(io.StringIO(text, newline="")))
    header = [h.strip().lower() for h in records[0]]
    if "submission" not in header:
        raise ExportError(f"{path}: the roster has no `submission` column (row 1 reads {', '.join(records[0])}); "
                          f"it maps each notebook's file name or stem to its student")
    need = IDENTIFIERS[fmt]
    if need and not any(column in header for column in need):
        raise ExportError(f"{path}: the {fmt} format needs a roster column {' or '.join(need)} "
                          f"(the roster has: {', '.join(h for h in header if h)})")
    students: list[Student] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: (record[i].strip() if i < len(record) else "") for i, name in enumerate(header) if name}
        submission = Path(cells["submission"]).name.removesuffix(".ipynb")
        if not submission:
            problems.append(f"row {number}: no submission")
            continue
        if submission in seen:
            problems.append(f"row {number}: submission {submission!r} is also in row {seen[submission]}")
            continue
        if need and not any(cells.get(column) for column in need):
            problems.append(f"row {number}: {submission}: no {' or '.join(need)}")
        seen[submission] = number
        students.append(Student(row=number, submission=submission,
                                ids={c: cells.get(c, "") for c in ROSTER_COLUMNS if c != "submission"}))
    if fmt == "moodle" and not problems and not moodle_key(students):
        for column in need:
            rows = [str(s.row) for s in students if not s.ids.get(column)]
            problems.append(f"{column} is empty in row(s) {', '.join(rows[:20])}")
        problems.insert(0, "Moodle identifies every student by ONE column, and none is filled in every row:")
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        shown = "\n".join(f"  {p}" for p in problems[:20]) + more
        raise ExportError(f"{path}: the roster cannot be used ({len(problems)} problem(s)):\n{shown}")
    return students


def moodle_key(students: list[Student]) -> str | None:
    """The identifier column Moodle's import should map from: the first filled in every row."""
    return next((c for c in IDENTIFIERS["moodle"] if all(s.ids.get(c) for s in students)), None)


def match_roster(students: list[Student], grades: list[FinalGrade]) -> Matching:
    by_submission = {g.submission: g for g in grades}
    rostered = {s.submission for s in students}
    return Matching(
        pairs=[(s, by_submission[s.submission]) for s in students if s.submission in by_submission],
        unrostered=[g for g in grades if g.submission not in rostered],
        absent=[s for s in students if s.submission not in by_submission],
    )


# --- the formats --------------------------------------------------------------------------------


def roster_columns(students: list[Student]) -> list[str]:
    """The roster's id columns that hold anything, in ROSTER_COLUMNS' order."""
    return [c for c in ROSTER_COLUMNS if c != "submission" and any(s.ids.get(c) for s in students)]


def csv_rows(config: AssignmentConfig, grades: list[FinalGrade], matching: Matching | None,
             id_columns: list[str]) -> list[list[str]]:
    questions = [q.id for q in config.questions]
    header = ["submission", *id_columns, "grader_status", "auto_points", *questions,
              "written_points", "total", "max_points", "marking"]
    if matching:
        ordered = ([(s, g) for s, g in matching.pairs] + [(None, g) for g in matching.unrostered])
        ordered.sort(key=lambda pair: pair[1].submission)
    else:
        ordered = [(None, g) for g in grades]
    rows = [header]
    for student, grade in ordered:
        ids = [guard_cell(student.ids.get(c, "")) if student else "" for c in id_columns]
        marks = [format_number(mark.points) if (mark := grade.written.get(q)) else "" for q in questions]
        rows.append([guard_cell(grade.submission), *ids, grade.status, format_number(grade.auto_points), *marks,
                     format_number(grade.written_points), format_number(grade.total),
                     format_number(grade.total_max), grade.marking_status])
    for student in (matching.absent if matching else []):
        ids = [guard_cell(student.ids.get(c, "")) for c in id_columns]
        rows.append([guard_cell(student.submission), *ids, "", "", *[""] * len(questions), "", "", "", "no submission"])
    return rows


def canvas_rows(config: AssignmentConfig, grades: list[FinalGrade], matching: Matching) -> list[list[str]]:
    total_max = format_number(config.max_auto_points + config.max_answer_points)
    rows = [CANVAS_COLUMNS + [config.assignment.name], ["Points Possible", "", "", "", "", total_max]]
    for student, grade in matching.pairs:
        rows.append([student.ids.get(c, "") for c in CANVAS_FROM_ROSTER] + [format_number(grade.total)])
    return rows


def moodle_rows(config: AssignmentConfig, grades: list[FinalGrade], matching: Matching,
                id_columns: list[str]) -> list[list[str]]:
    columns = [c for c in MOODLE_COLUMNS if c in id_columns]
    rows = [[MOODLE_COLUMNS[c] for c in columns] + [config.assignment.name]]
    for student, grade in matching.pairs:
        rows.append([student.ids.get(c, "") for c in columns] + [format_number(grade.total)])
    return rows


# --- the export ---------------------------------------------------------------------------------


def default_output(out_dir: Path, fmt: str) -> Path:
    return Path(out_dir) / f"grades-{fmt}.csv"


def notes_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}-notes.txt")


def unmarked_warning(grades: list[FinalGrade]) -> str | None:
    unfinished = [g for g in grades if g.unmarked]
    if not unfinished:
        return None
    questions = list(unfinished[0].written)     # the config's order
    counts = {q: sum(q in g.unmarked for g in unfinished) for q in questions}
    per_question = ", ".join(f"{q}: {n}" for q, n in counts.items() if n)
    return (f"warning: marking unfinished: {len(unfinished)} of {len(grades)} submission(s) have unmarked "
            f"questions, counted as 0 ({per_question})")


def notes_lines(fmt: str, grades: list[FinalGrade], matching: Matching | None, problems: list[str]) -> list[str]:
    lines = []
    if warning := unmarked_warning(grades):
        lines.append(warning)
    stale = [g for g in grades if g.stale]
    if stale:
        lines.append(f"warning: {len(stale)} submission(s) have marks on answers changed since they were marked: "
                     + ", ".join(f"{g.submission} ({' '.join(g.stale)})" for g in stale))
    not_graded = [g for g in grades if g.status != "graded"]
    if not_graded:
        lines.append(f"note: {len(not_graded)} submission(s) did not grade cleanly; their automatic points are "
                     f"what the grader could measure: " + ", ".join(f"{g.submission} ({g.status})" for g in not_graded))
    lines += [f"warning: left out (unreadable result): {p}" for p in problems]
    if matching is not None:
        left_out = " (not in this file)" if fmt != "csv" else ""
        lines.append(f"submissions missing from the roster{left_out}: "
                     + (", ".join(g.submission for g in matching.unrostered) or "none"))
        lines.append("roster students without a submission"
                     + (" (not in this file; their LMS grade is left as it is)" if fmt != "csv" else "") + ": "
                     + (", ".join(f"{describe(s)} (roster row {s.row})" for s in matching.absent) or "none"))
    return lines


def describe(student: Student) -> str:
    who = student.ids.get("name") or next((v for k, v in student.ids.items() if v and k != "section"), "")
    return f"{student.submission} [{who}]" if who else student.submission


def export_grades(
    out_dir: Path, config: AssignmentConfig, fmt: str, roster: Path | None = None, output: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the grades in one LMS format (atomically) and its notes beside it; returns the path."""
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt != "csv" and roster is None:
        raise ExportError(f"the {fmt} format needs --roster: a CSV mapping each submission to its student "
                          f"(columns: submission and {' or '.join(IDENTIFIERS[fmt])})")
    out_dir = Path(out_dir)
    students = read_roster(Path(roster), fmt) if roster is not None else None
    results, problems = load_results(out_dir)
    if not results:
        raise ExportError(f"{out_dir}: no readable result.json in it; is it a folder written by `grader grade`?")
    grades = final_grades(MarkStore(out_dir, config), results)
    matching = match_roster(students, grades) if students is not None else None
    id_columns = roster_columns(students) if students is not None else []
    if fmt == "csv":
        rows = csv_rows(config, grades, matching, id_columns)
    else:
        assert matching is not None, "the canvas and moodle formats have a roster (checked above)"
        if fmt == "canvas":
            rows = canvas_rows(config, grades, matching)
        else:
            rows = moodle_rows(config, grades, matching, id_columns)
    output = Path(output) if output is not None else default_output(out_dir, fmt)
    atomic.write_text(output, to_csv(rows))
    notes = notes_lines(fmt, grades, matching, problems)
    if fmt == "moodle":
        assert students is not None, "the moodle format has a roster (checked above)"
        key = moodle_key(students)
        assert key is not None, "read_roster refuses a Moodle roster with no identifier filled in every row"
        max_points = format_number(config.max_auto_points + config.max_answer_points)
        notes.insert(0, f"in Moodle's import, map from {MOODLE_COLUMNS[key]!r} to "
                        f"{'useridnumber' if key == 'idnumber' else 'useremail'}, and {config.assignment.name!r} "
                        f"to the grade item (maximum at least {max_points})")
    atomic.write_text(notes_path(output), "\n".join([f"grader export --format {fmt}: {len(rows) - 1 - (fmt == 'canvas')} "
                                                      f"row(s) in {output.name}"] + notes) + "\n")
    for line in notes:
        log(line)
    log(f"wrote {len(rows) - 1 - (fmt == 'canvas')} grade(s) to {output} (notes: {notes_path(output).name})")
    return output


def to_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()
