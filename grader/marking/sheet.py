"""Marking sheets: one question's answers and marks as CSV, for staff who mark in a spreadsheet.

    grader marks export OUT --question Q2 -o q2.csv     # without -o: to standard output
    # ... mark in Excel / LibreOffice / Google Sheets: an `x` under an item applies it ...
    grader marks import OUT q2.csv [--marker NAME]

The sheet's columns, one row per submission; for each, what export writes and what import does with it:

- `submission`, `question`: the answer's submission and question id. Import: must name a known answer.
- `answer`, `words`, `limit`, `flags`: the student's text, its word count and limit; `missing`, `empty`,
  `over_limit`, `stale` (the answer changed since it was marked). Import: not read (an edited answer is
  counted in the report, never stored).
- `[ID] ±P text`, one per rubric item: `x` where the item is applied. Import: `x` (any case) applies the
  item, empty removes it; the item is found by the `[ID]` alone, so a changed text or points do not matter.
- `adjustment`: the free points on top of the items (empty while unmarked). Import: a number within ±the
  question's points; `1,5` is read as 1.5.
- `comment`: staff's comment. Import: stored as written.
- `points`, `max_points`: the answer's points, derived. Import: not read: points always come from the items
  and the adjustment (rows whose `points` were edited are counted in the report).
- `marked_by`, `marked_at`, `version`: who marked it last, when, and the mark's version. Import: `version`
  guards against overwriting: a row that changes a mark which someone else changed since the export is
  refused (export again).

Import rules. Every row is validated before anything is written; any bad row (unknown submission or
question, an adjustment out of range or not a number, a cell under an item that is neither `x` nor
empty, a column naming an item the question does not have, a header without the required columns, a
file that is not UTF-8 CSV) refuses the whole sheet with one error naming the file and every bad row
by its row number as a spreadsheet shows it (the header is row 1). Otherwise all rows are applied in
one database transaction. Each row sets its answer's mark to exactly what it says: those items, that
adjustment and comment. A row with no item, no adjustment and no comment means "unmarked": an
unmarked answer stays so, a marked one is cleared. Rows that say what the database already holds are
left alone (their marker and time stay). Rows may be deleted from the sheet: their answers are not
touched.

Spreadsheet quirks handled: the file is written with a UTF-8 byte-order mark (without it Excel reads
UTF-8 as the local code page) and read with or without one; `,` or `;` as the delimiter (Excel's
choice in some locales) is detected from the header. Against formula injection (an answer such as
`=HYPERLINK(...)` run as a formula when the sheet is opened), a text cell starting with `=`, `+`,
`-`, `@`, a tab or a carriage return is written with a leading apostrophe, which import strips again.
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import atomic
from ..config import AssignmentConfig, Question
from ..records import Mark, RubricItem
from ..text import format_decimal
from .csvfile import read_utf8, records_by_header
from .final import load_results
from .store import MarkChange, MarkingError, MarkStore

# Columns in the order the sheet has them; rubric item columns go between FLAGS and ADJUSTMENT.
SUBMISSION, QUESTION, ANSWER, WORDS, LIMIT, FLAGS = "submission", "question", "answer", "words", "limit", "flags"
ADJUSTMENT, COMMENT, POINTS, MAX_POINTS = "adjustment", "comment", "points", "max_points"
MARKED_BY, MARKED_AT, VERSION = "marked_by", "marked_at", "version"
HEAD_COLUMNS = [SUBMISSION, QUESTION, ANSWER, WORDS, LIMIT, FLAGS]
TAIL_COLUMNS = [ADJUSTMENT, COMMENT, POINTS, MAX_POINTS, MARKED_BY, MARKED_AT, VERSION]
REQUIRED_COLUMNS = [SUBMISSION, QUESTION, ADJUSTMENT, COMMENT]
KNOWN_COLUMNS = set(HEAD_COLUMNS + TAIL_COLUMNS)
ITEM_HEADER = re.compile(r"^\s*\[(\d+)\]")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MAX_LISTED_PROBLEMS = 20


class SheetError(MarkingError):
    """A marking sheet that cannot be imported; names the file and every bad row."""


# --- cells --------------------------------------------------------------------------------------


def guard_cell(text: str) -> str:
    """A text cell as written to the sheet: one a spreadsheet would run as a formula gets a
    leading apostrophe; NUL (which no spreadsheet keeps) becomes U+FFFD."""
    text = text.replace("\0", "\ufffd")
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unguard_cell(text: str) -> str:
    """The inverse of guard_cell: the apostrophe it added comes off; any other one stays."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def format_number(value: float) -> str:
    """Points as a spreadsheet shows them: 1, 0.5, -1.25; six decimals, so that what is read
    back is the number that was written."""
    return format_decimal(value, 6)


def item_header(item: RubricItem) -> str:
    return f"[{item.id}] {format_number(item.points) if item.points < 0 else '+' + format_number(item.points)} {item.text}"


def normalise_text(text: str) -> str:
    """What counts as the same text after a spreadsheet: line endings and trailing spaces aside."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def answer_flags(answer, mark: Mark | None) -> str:
    flags = []
    if not answer["found"]:
        flags.append("missing")
    elif not answer["text"].strip():
        flags.append("empty")
    if answer["over_limit"]:
        flags.append("over_limit")
    if mark is not None and mark.stale:
        flags.append("stale")
    return " ".join(flags)


# --- export -------------------------------------------------------------------------------------


def synced_store(out_dir: Path, config: AssignmentConfig, marker: str | None, log: Callable[[str], None]) -> MarkStore:
    """The OUT folder's marking database with the answers of its current results copied in."""
    results, problems = load_results(Path(out_dir))
    for problem in problems:
        log(f"warning: left out (unreadable result): {problem}")
    if not results:
        raise MarkingError(f"{out_dir}: no readable result.json in it; is it a folder written by `grader grade`?")
    store = MarkStore(Path(out_dir), config, marker=marker)
    store.sync_answers(results)
    return store


def sheet_rows(store: MarkStore, question: Question) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of one question's marking sheet, by submission."""
    rubric = store.rubric(question.id)
    marks = store.question_marks(question.id)
    header = HEAD_COLUMNS + [item_header(i) for i in rubric] + TAIL_COLUMNS
    rows = []
    for answer in store.answers(question.id):
        mark = marks.get(answer["submission"])
        applied = set(mark.items) if mark else set()
        rows.append(
            [guard_cell(answer["submission"]), question.id, guard_cell(answer["text"]), str(answer["words"]),
             str(answer["word_limit"]), answer_flags(answer, mark)]
            + ["x" if item.id in applied else "" for item in rubric]
            + ([format_number(mark.adjustment), guard_cell(mark.comment), format_number(mark.points),
                format_number(question.points), guard_cell(mark.marker), mark.marked_at, str(mark.version)]
               if mark else ["", "", "", format_number(question.points), "", "", ""]))
    return header, rows


def export_sheet(
    out_dir: Path, config: AssignmentConfig, question_id: str, output: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """Write one question's marking sheet (to standard output when output is None, else
    atomically to that file, with a UTF-8 byte-order mark for Excel). Returns the CSV text."""
    log = log or (lambda message: print(message, file=sys.stderr))
    store = synced_store(out_dir, config, None, log)
    question = store.question(question_id)
    header, rows = sheet_rows(store, question)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic.write_bytes(Path(output), text.encode("utf-8-sig"))
        log(f"wrote {question.id}'s marking sheet ({len(rows)} answers) to {output}")
    return text


# --- import: reading ----------------------------------------------------------------------------


@dataclass
class SheetRow:
    """One data row as read: its spreadsheet row number and cells by column name."""

    number: int
    cells: dict[str, str]
    items: dict[int, str] = field(default_factory=dict)   # item id -> its cell
    overflow: bool = False                                  # cells beyond the header's columns


@dataclass
class Sheet:
    path: Path
    header: list[str]
    item_columns: dict[int, str]      # item id -> its header
    ignored_columns: list[str]
    rows: list[SheetRow]


def read_records(path: Path) -> list[list[str]]:
    """The sheet's CSV records, with the delimiter its header is written with."""
    text = read_utf8(path, "marking sheet", SheetError)
    if not text.strip():
        raise SheetError(f"{path}: empty file, not a marking sheet")
    records = records_by_header(text, SUBMISSION)
    if records is None:
        first = text.splitlines()[0][:120]
        raise SheetError(f"{path}: row 1: the header lacks the required columns {', '.join(REQUIRED_COLUMNS)} "
                         f"(it reads {first!r}); is this a sheet written by `grader marks export`?")
    return records


def parse_sheet(path: Path) -> Sheet:
    """The sheet's header and rows; header problems raise at once (no row can be read without it)."""
    records = read_records(path)
    raw_header = [unguard_cell(h.strip()) for h in records[0]]
    names = [h.lower() if h.lower() in KNOWN_COLUMNS else h for h in raw_header]
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        problems.append(f"row 1: the header lacks the required column(s) {', '.join(missing)}")
    item_columns: dict[int, str] = {}
    ignored = []
    for index, name in enumerate(names):
        match = ITEM_HEADER.match(name)
        if match:
            item_id = int(match.group(1))
            if item_id in item_columns:
                problems.append(f"row 1: column {column_letter(index)}: rubric item [{item_id}] has two columns")
            item_columns[item_id] = name
        elif name not in KNOWN_COLUMNS:
            ignored.append(name or f"(column {column_letter(index)}, no header)")
        elif names.count(name) > 1 and names.index(name) != index:
            problems.append(f"row 1: column {column_letter(index)}: a second {name!r} column")
    if problems:
        raise sheet_error(path, problems)
    rows = []
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue    # spreadsheets keep empty rows at the end; they say nothing
        cells = {name: (record[i] if i < len(record) else "") for i, name in enumerate(names)}
        rows.append(SheetRow(number=number, cells=cells,
                             items={item: cells[header] for item, header in item_columns.items()},
                             overflow=any(c.strip() for c in record[len(names):])))
    return Sheet(path=Path(path), header=names, item_columns=item_columns, ignored_columns=ignored, rows=rows)


def column_letter(index: int) -> str:
    """A 0-based column index as a spreadsheet names it: A, B, ..., Z, AA, ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def sheet_error(path: Path, problems: list[str]) -> SheetError:
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    lines = "\n".join(f"  {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
    return SheetError(f"{path}: {len(problems)} problem(s), nothing was imported:\n{lines}")


# --- import: validating -------------------------------------------------------------------------


@dataclass
class RowPlan:
    """What one valid row asks for, and what the database holds for that answer now."""

    number: int
    change: MarkChange
    current: Mark | None
    answer_edited: bool
    points_edited: bool

    @property
    def unmarked(self) -> bool:
        return self.change.clear

    @property
    def unchanged(self) -> bool:
        if self.current is None:
            return self.change.clear
        if self.change.clear:
            return False
        return (set(self.change.items) == set(self.current.items)
                and math.isclose(self.change.adjustment, self.current.adjustment, abs_tol=1e-9)
                and normalise_text(self.change.comment) == normalise_text(self.current.comment))


def parse_number(text: str) -> float | None:
    text = text.strip().replace("\u2212", "-")   # a typographic minus pasted from a document
    if re.fullmatch(r"[+-]?\d+,\d+", text):
        text = text.replace(",", ".")           # a decimal comma (the `;`-delimited locales)
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class RowValidator:
    """Checks rows against the database's answers and rubric, collecting every problem."""

    def __init__(self, store: MarkStore, sheet: Sheet) -> None:
        self.store = store
        self.sheet = sheet
        self.problems: list[str] = []
        self.question: Question | None = None
        self.answers: dict[str, dict] = {}
        self.marks: dict[str, Mark] = {}
        self.seen: dict[str, int] = {}

    @property
    def sheet_question(self) -> Question:
        """The question bind_question found; every check after it runs on a row that bound it."""
        assert self.question is not None, "no row has named the sheet's question yet"
        return self.question

    def problem(self, row: SheetRow, text: str) -> None:
        self.problems.append(f"row {row.number}: {text}")

    def validate(self) -> list[RowPlan]:
        plans = []
        for row in self.sheet.rows:
            plan = self.validate_row(row)
            if plan is not None:
                plans.append(plan)
        if self.question is not None:
            self.check_item_columns()
        return plans

    def bind_question(self, row: SheetRow) -> bool:
        """The sheet's question, from its first row that names one; every row must name the same."""
        question_id = row.cells[QUESTION].strip()
        if self.question is not None:
            if question_id != self.question.id:
                self.problem(row, f"question {question_id!r}, but this sheet is {self.question.id}'s "
                                  f"(one question per sheet)")
                return False
            return True
        if question_id not in self.store.questions:
            self.problem(row, f"unknown question {question_id!r} (known: {', '.join(self.store.questions)})")
            return False
        self.question = self.store.question(question_id)
        self.answers = {a["submission"]: dict(a) for a in self.store.answers(question_id)}
        self.marks = self.store.question_marks(question_id)
        return True

    def check_item_columns(self) -> None:
        rubric = {item.id: item for item in self.store.rubric(self.sheet_question.id)}
        for item_id, header in self.sheet.item_columns.items():
            if item_id not in rubric:
                self.problems.insert(0, f"row 1: column {header!r}: {self.sheet_question.id}'s rubric has no item "
                                        f"[{item_id}] (deleted since the export, or from another question's sheet?)")

    def validate_row(self, row: SheetRow) -> RowPlan | None:
        errors_before = len(self.problems)
        if row.overflow:
            self.problem(row, "more cells than the header has columns")
        if not self.bind_question(row):
            return None
        submission = unguard_cell(row.cells[SUBMISSION].strip())
        if submission not in self.answers:
            self.problem(row, f"unknown submission {submission!r} for {self.sheet_question.id}")
            return None
        if submission in self.seen:
            self.problem(row, f"submission {submission!r} is also in row {self.seen[submission]}")
            return None
        self.seen[submission] = row.number
        items = self.row_items(row)
        adjustment = self.row_adjustment(row)
        base_version = self.row_version(row)
        if len(self.problems) > errors_before:
            return None
        comment = unguard_cell(row.cells[COMMENT]).replace("\r\n", "\n")
        clear = not items and row.cells[ADJUSTMENT].strip() == "" and not comment.strip()
        points = row.cells.get(POINTS, "").strip() if POINTS in self.sheet.header else ""
        if clear and points:
            self.problem(row, f"points {points} but no item, adjustment or comment; points are derived from "
                              f"those: to give points put them in adjustment, to leave it unmarked empty points too")
            return None
        change = MarkChange(submission=submission, items=tuple(sorted(items)), adjustment=adjustment or 0.0,
                            comment="" if clear else comment, clear=clear, base_version=base_version)
        current = self.marks.get(submission)
        plan = RowPlan(number=row.number, change=change, current=current,
                       answer_edited=self.answer_edited(row, submission),
                       points_edited=self.points_edited(row, change))
        self.check_conflict(row, plan)
        return plan

    def row_items(self, row: SheetRow) -> list[int]:
        items = []
        for item_id, cell in row.items.items():
            value = cell.strip().lower()
            if value == "x":
                items.append(item_id)
            elif value:
                self.problem(row, f"column {self.sheet.item_columns[item_id]!r}: {cell.strip()!r}; "
                                  f"mark an item with x or leave it empty")
        return items

    def row_adjustment(self, row: SheetRow) -> float | None:
        text = row.cells[ADJUSTMENT].strip()
        if not text:
            return None
        value = parse_number(text)
        limit = self.sheet_question.points
        if value is None:
            self.problem(row, f"adjustment {text!r} is not a number")
        elif abs(value) > limit:
            self.problem(row, f"adjustment {text} is out of range (within ±{format_number(limit)} for {self.sheet_question.id})")
        return value

    def row_version(self, row: SheetRow) -> int | None:
        if VERSION not in self.sheet.header:
            return None
        text = row.cells[VERSION].strip()
        if not text:
            return 0
        value = parse_number(text)
        if value is None or value < 0 or value != int(value):
            self.problem(row, f"version {text!r} is not the mark's version as exported (a whole number)")
            return None
        return int(value)

    def answer_edited(self, row: SheetRow, submission: str) -> bool:
        if ANSWER not in self.sheet.header:
            return False
        return normalise_text(unguard_cell(row.cells[ANSWER])) != normalise_text(self.answers[submission]["text"])

    def points_edited(self, row: SheetRow, change: MarkChange) -> bool:
        """Whether the row's `points` cell says something other than its items and adjustment give."""
        text = row.cells.get(POINTS, "").strip() if POINTS in self.sheet.header else ""
        if not text:
            return False
        value = parse_number(text)
        if change.clear or value is None:
            return True
        return not math.isclose(value, derived_points(self.store, self.sheet_question, change), abs_tol=1e-6)

    def check_conflict(self, row: SheetRow, plan: RowPlan) -> None:
        base = plan.change.base_version
        version = plan.current.version if plan.current else 0
        if base is None or base == version or plan.unchanged:
            return
        who = f"{plan.current.marker} at {plan.current.marked_at}" if plan.current else "someone (cleared)"
        self.problem(row, f"{plan.change.submission}'s mark was changed by {who} after this sheet was exported "
                          f"(version {version}, the sheet has {base}); export the sheet again and redo this row")


def derived_points(store: MarkStore, question: Question, change: MarkChange) -> float:
    points = {item.id: item.points for item in store.rubric(question.id)}
    base = question.points if question.scoring == "negative" else 0.0
    raw = base + sum(points.get(i, 0.0) for i in change.items) + change.adjustment
    return min(max(raw, 0.0), question.points)


# --- import: applying ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportReport:
    """What an import did; str() is the summary the CLI prints."""

    path: str
    question: str
    rows: int               # data rows read
    applied: int            # marks set or changed
    cleared: int            # marks removed (the row said nothing)
    unchanged: int          # rows that said what the database already held
    left_unmarked: int      # empty rows on unmarked answers
    answers_edited: int     # rows whose answer text differs from the stored one (ignored)
    points_edited: int      # rows whose points cell differs from the derived points (ignored)
    ignored_columns: tuple[str, ...] = ()
    version_checked: bool = True

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.question}, {self.rows} row(s): {self.applied} applied, {self.cleared} cleared, "
                 f"{self.unchanged} unchanged, {self.left_unmarked} left unmarked"]
        if self.answers_edited:
            lines.append(f"  {self.answers_edited} row(s) have an answer text that differs from the student's; "
                         f"ignored (answers are never changed by an import)")
        if self.points_edited:
            lines.append(f"  {self.points_edited} row(s) have a points cell that differs from their items and "
                         f"adjustment; ignored (points are derived: change the items or the adjustment)")
        if self.ignored_columns:
            lines.append(f"  ignored column(s): {', '.join(self.ignored_columns)}")
        if not self.version_checked:
            lines.append("  no version column: rows were applied without checking for other markers' changes")
        return "\n".join(lines)


def import_sheet(
    out_dir: Path, config: AssignmentConfig, path: Path, marker: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ImportReport:
    """Validate every row of a marking sheet, then apply them all in one transaction (or none)."""
    log = log or (lambda message: print(message, file=sys.stderr))
    path = Path(path)
    sheet = parse_sheet(path)
    store = synced_store(out_dir, config, marker, log)
    validator = RowValidator(store, sheet)
    plans = validator.validate()
    if validator.problems:
        raise sheet_error(path, validator.problems)
    if validator.question is None:
        raise SheetError(f"{path}: no rows to import")
    changes = [p.change for p in plans if not p.unchanged]
    store.apply_marks(validator.question.id, changes, source=f"sheet {path.name}")
    return ImportReport(
        path=str(path), question=validator.question.id, rows=len(plans),
        applied=sum(1 for p in plans if not p.unchanged and not p.change.clear),
        cleared=sum(1 for p in plans if not p.unchanged and p.change.clear),
        unchanged=sum(1 for p in plans if p.unchanged and p.current is not None),
        left_unmarked=sum(1 for p in plans if p.unchanged and p.current is None),
        answers_edited=sum(p.answer_edited for p in plans),
        points_edited=sum(p.points_edited for p in plans),
        ignored_columns=tuple(sheet.ignored_columns), version_checked=VERSION in sheet.header)
