"""Final outputs once staff mark: the PDF shows each question's mark and the total, says what is
still unmarked, flags a mark whose answer changed; gradebook.csv and the summary carry the marks."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from test_report import CONFIG, failed_result, graded_result, invalid_result, pdf_text

from grader.marking.final import load_results
from grader.marking.store import DB_NAME, MarkStore
from grader.report import (
    REPORT_PDF,
    class_marking,
    report_is_current,
    rerender,
    submission_marking,
)

QUESTIONS = [q.id for q in CONFIG.questions]
COMMENT = "Good start.\nBut <b>explain</b> why & how — in one line."


def write(out: Path, result) -> None:
    folder = out / result.submission
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(result.model_dump_json(indent=1))


def make_out(tmp_path: Path) -> Path:
    """alice (graded, with figures), bob_error and carol_invalid, as `grader grade` leaves them."""
    out = tmp_path / "OUT"
    (out / "alice").mkdir(parents=True)
    for result in (graded_result(out / "alice"), failed_result("error"), invalid_result()):
        write(out, result)
    return out


def synced_store(out: Path, marker: str = "mia") -> MarkStore:
    store = MarkStore(out, CONFIG, marker=marker)
    store.sync_answers(load_results(out)[0])
    return store


def item(store: MarkStore, question: str, position: int):
    return next(i for i in store.rubric(question) if i.position == position)


def mark_alice_partly(store: MarkStore) -> None:
    """Q1: item 1 (+1) and -0.5 with a comment; Q4 confirmed with nothing (0). Q2, Q3, Q5 open."""
    store.apply_item(item(store, "Q1", 1).id, ["alice"])
    store.set_mark("alice", "Q1", adjustment=-0.5, comment=COMMENT)
    store.set_mark("alice", "Q4")


def mark_alice_fully(store: MarkStore) -> None:
    for question in QUESTIONS:
        store.apply_item(item(store, question, 1).id, ["alice"])


def section(text: str, question: str) -> str:
    """The PDF text of one answer's section: from its heading to the next question's."""
    start = text.index(f"{question} · part")
    later = [text.find(f"{q} · part", start + 1) for q in QUESTIONS if q != question]
    ends = [i for i in later if i > start]
    return text[start:min(ends)] if ends else text[start:]


@pytest.fixture()
def out(tmp_path) -> Path:
    return make_out(tmp_path)


def test_a_marked_report_shows_items_comment_points_and_the_total(out):
    store = synced_store(out)
    mark_alice_partly(store)
    rerender(out, CONFIG)
    text = pdf_text(out / "alice" / REPORT_PDF)
    q1 = section(text, "Q1")
    assert "Staff's mark: 0.5 of 2 points" in q1 and "marked by mia" in q1
    assert "+1 Samples are mostly not digits (blurry, mixed strokes)" in q1
    assert "Adjustment: −0.5" in q1
    assert "Good start. But <b>explain</b> why & how — in one line." in q1   # escaped, not markup
    assert "pending" not in q1.lower()
    assert "Staff's mark: 0 of 3 points" in section(text, "Q4")
    result = load_results(out)[0][0][1]
    assert f"{result.score + 0.5:g} of 33 points in all" in text
    assert f"Automatic checks: {result.score:g} of 18 points" in text and "0.5 of 15 points so far" in text
    assert "PENDING" not in text   # the all-pending wording belongs to unmarked reports


def test_unfinished_marking_names_the_open_questions_and_a_complete_one_is_final(out):
    store = synced_store(out)
    mark_alice_partly(store)
    rerender(out, CONFIG)
    text = pdf_text(out / "alice" / REPORT_PDF)
    assert "not final yet" in text and "Still to be marked: Q2, Q3, Q5 (up to 10 more points)" in text
    assert "Not marked yet." in section(text, "Q2") and "pending" in section(text, "Q2")
    assert "this total is final" not in text
    mark_alice_fully(store)
    rerender(out, CONFIG)
    text = pdf_text(out / "alice" / REPORT_PDF)
    assert "Every answer is marked: this total is final." in text
    assert "not final" not in text and "Still to be marked" not in text


def test_gradebook_has_the_check_columns_first_then_questions_total_and_marking(out):
    store = synced_store(out)
    mark_alice_partly(store)
    store.set_mark("bob_error", "Q2", adjustment=2)
    rerender(out, CONFIG)
    with open(out / "gradebook.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
        handle.seek(0)
        header = next(csv.reader(handle))
    checks = [c.id for c in CONFIG.checks]
    assert header == ["submission", "status", "score", "max_score", *checks, *QUESTIONS,
                      "written", "total", "total_max", "marking"]
    by = {r["submission"]: r for r in rows}
    assert [r["submission"] for r in rows] == ["alice", "bob_error", "carol_invalid"]
    alice = by["alice"]
    assert (alice["Q1"], alice["Q2"], alice["Q4"]) == ("0.5", "", "0.0")
    assert float(alice["written"]) == 0.5 and float(alice["total"]) == pytest.approx(float(alice["score"]) + 0.5)
    assert alice["total_max"] == "33.0" and alice["marking"] == "unmarked: Q2, Q3, Q5"
    assert by["bob_error"]["Q2"] == "2.0" and by["bob_error"]["marking"] == "unmarked: Q1, Q3, Q4, Q5"
    assert by["carol_invalid"]["marking"] == "unmarked: " + ", ".join(QUESTIONS)
    mark_alice_fully(store)
    rerender(out, CONFIG)
    with open(out / "gradebook.csv", newline="") as handle:
        assert {r["submission"]: r["marking"] for r in csv.DictReader(handle)}["alice"] == "complete"


def test_summary_has_per_question_marking_statistics(out):
    store = synced_store(out)
    first, second, third = (item(store, "Q2", p) for p in (1, 2, 3))
    store.apply_item(first.id, ["alice", "bob_error", "carol_invalid"])   # 1 point each
    store.apply_item(second.id, ["alice", "bob_error"])                    # alice and bob: 2
    store.apply_item(third.id, ["alice"])                                  # alice: 3
    rerender(out, CONFIG)
    summary = json.loads((out / "summary.json").read_text())
    q2 = next(q for q in summary["marking"]["questions"] if q["id"] == "Q2")
    assert (q2["marked"], q2["unmarked"], q2["stale"]) == (3, 0, 0)
    assert q2["points"] == {"mean": 2.0, "std": pytest.approx(0.816, abs=1e-3), "min": 1.0, "max": 3.0}
    assert [(i["text"], i["count"]) for i in q2["top_items"]] == [(first.text, 3), (second.text, 2), (third.text, 1)]
    q1 = next(q for q in summary["marking"]["questions"] if q["id"] == "Q1")
    assert q1["marked"] == 0 and q1["points"]["mean"] is None and q1["top_items"] == []
    assert summary["marking"]["complete"] == 0
    text = pdf_text(out / "summary.pdf")
    assert "Marking" in text and "Q2: rubric items applied most" in text and first.text in text


def test_a_mark_on_a_changed_answer_shows_as_stale_after_the_resync(out):
    store = synced_store(out)
    mark_alice_fully(store)
    rerender(out, CONFIG)
    assert "stale" not in (out / "gradebook.csv").read_text()
    result = graded_result(out / "alice")
    result.answers[0].text = "A different answer, written after the marking."   # a regrade of a new notebook
    write(out, result)
    rerender(out, CONFIG)                       # syncs the answers, so Q1's mark turns stale
    text = pdf_text(out / "alice" / REPORT_PDF)
    assert "Your answer to Q1 changed after it was marked" in text and "not final" in text
    assert "changed since marked" in section(text, "Q1")
    assert "Staff's mark: 1 of 2 points" in section(text, "Q1")   # still shown, still counted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["marking"]["stale"] == [{"submission": "alice", "question": "Q1"}]
    assert next(q for q in summary["marking"]["questions"] if q["id"] == "Q1")["stale"] == 1
    assert "alice Q1" in pdf_text(out / "summary.pdf")
    with open(out / "gradebook.csv", newline="") as handle:
        assert {r["submission"]: r["marking"] for r in csv.DictReader(handle)}["alice"] == "stale: Q1"


def test_without_a_marking_database_reports_are_as_before(out):
    rerender(out, CONFIG)
    assert not (out / DB_NAME).exists()          # `grader report` does not start a database
    text = pdf_text(out / "alice" / REPORT_PDF)
    assert "PENDING" in text and "Staff's mark" not in text
    with open(out / "gradebook.csv", newline="") as handle:
        assert [r["marking"] for r in csv.DictReader(handle)] == ["unmarked: " + ", ".join(QUESTIONS)] * 3


def test_an_empty_database_gives_the_unmarked_bytes(out, tmp_path):
    rerender(out, CONFIG)
    before = (out / "alice" / REPORT_PDF).read_bytes()
    synced_store(out)
    rerender(out, CONFIG)
    assert (out / "alice" / REPORT_PDF).read_bytes() == before


def test_the_same_marks_give_the_same_bytes(out):
    store = synced_store(out)
    mark_alice_partly(store)
    rerender(out, CONFIG)
    first = hashlib.sha256((out / "alice" / REPORT_PDF).read_bytes()).hexdigest()
    summary = (out / "summary.pdf").read_bytes()
    MarkStore(out, CONFIG, marker="mia").set_mark("alice", "Q4")   # touched again later: same marks
    rerender(out, CONFIG)
    assert hashlib.sha256((out / "alice" / REPORT_PDF).read_bytes()).hexdigest() == first
    assert (out / "summary.pdf").read_bytes() == summary


def test_grading_draws_a_pdf_again_only_when_its_marks_change(out):
    """What `grader grade` does per notebook: sync its answers, then redraw unless current."""
    store = MarkStore(out, CONFIG, marker="mia")
    results = dict(load_results(out)[0])
    assert submission_marking(store, "alice", results["alice"]) is None    # nothing marked yet
    assert store.answer("alice", "Q1")["text"] == results["alice"].answers[0].text   # synced
    rerender(out, CONFIG)
    marking = class_marking(store, list(results.items())).of("alice")
    assert report_is_current(out / "alice", marking)
    store.apply_item(item(store, "Q1", 2).id, ["alice"])
    marking = submission_marking(store, "alice", results["alice"])
    assert marking is not None and marking.questions["Q1"].points == 1
    assert not report_is_current(out / "alice", marking)
