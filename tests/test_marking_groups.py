"""Answer groups: near-copies together, different answers apart, missing ones on their own,
deterministic numbering, stored and reused until an answer changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.config import load_config
from grader.marking import groups as grouping
from grader.marking.final import load_results
from grader.marking.groups import answer_groups
from grader.marking.store import MarkStore
from grader.records import Answer, SubmissionResult

CONFIG = load_config()
QUESTION = CONFIG.questions[0].id

SAMPLES_NOT_DIGITS = ("The reconstructions look almost identical to the inputs, but the samples decoded from "
                      "z ~ N(0, I) are mostly not digits, just blurry blobs and strokes. Nothing forces the "
                      "AE's codes to follow the prior, so random codes land where the decoder never learned.")
OVERFITTING = ("When I increased the number of epochs the images became more similar and hard to recognize. "
               "I guess it is due to overfitting and the limitation of the prior distribution.")
INTERPOLATION = ("My answer is about something else entirely: interpolating between a one and a nine shows "
                 "overlapping strokes in the middle steps.")

# submission -> its answer to QUESTION (None: not found)
ANSWERS = {
    "s01": SAMPLES_NOT_DIGITS,
    "s02": SAMPLES_NOT_DIGITS.replace("almost identical", "nearly identical").replace("blobs", "blobz"),
    "s03": "I think " + SAMPLES_NOT_DIGITS.replace("just blurry blobs and strokes. ", ""),
    "s04": OVERFITTING,
    "s05": OVERFITTING.replace("I guess", "Probably").replace("recognize", "recognise"),
    "s06": INTERPOLATION,
    "s07": None,
    "s08": "   ",
    "s09": None,
}


def write_result(out: Path, submission: str, text: str | None) -> None:
    answers = []
    for q in CONFIG.questions:
        body = text if q.id == QUESTION else f"{submission} on {q.id}"
        found = body is not None
        answers.append(Answer(id=q.id, found=found, text=body or "", words=len((body or "").split()),
                              limit=q.limit, max_points=q.points))
    result = SubmissionResult(submission=submission, status="graded", score=5.0,
                              max_score=CONFIG.max_auto_points, answers=answers)
    (out / submission).mkdir(parents=True, exist_ok=True)
    (out / submission / "result.json").write_text(result.model_dump_json())


def synced(out: Path) -> MarkStore:
    store = MarkStore(out, CONFIG, marker="tester")
    results, problems = load_results(out)
    assert not problems
    store.sync_answers(results)
    return store


@pytest.fixture()
def store(tmp_path) -> MarkStore:
    out = tmp_path / "out"
    for submission, text in ANSWERS.items():
        write_result(out, submission, text)
    return synced(out)


def by_member(groups) -> dict[str, grouping.AnswerGroup]:
    return {s: g for g in groups for s in g.submissions}


def test_near_copies_group_together_and_different_answers_do_not(store):
    groups = by_member(answer_groups(store, QUESTION))
    assert groups["s01"] is groups["s02"] is groups["s03"]
    assert groups["s04"] is groups["s05"]
    assert groups["s01"] is not groups["s04"]
    assert groups["s06"].submissions == ["s06"] and groups["s06"].size == 1   # a singleton is a group too


def test_missing_and_empty_answers_form_their_own_group(store):
    groups = answer_groups(store, QUESTION)
    missing = [g for g in groups if g.missing]
    assert len(missing) == 1 and missing[0].submissions == ["s07", "s08", "s09"]
    everyone = sorted(s for g in groups for s in g.submissions)
    assert everyone == sorted(ANSWERS)          # every answer in exactly one group


def test_groups_are_numbered_by_size_then_first_submission(store):
    groups = answer_groups(store, QUESTION)
    assert [g.id for g in groups] == list(range(1, len(groups) + 1))
    assert [(g.size, g.submissions[0]) for g in groups] == [
        (3, "s01"), (3, "s07"), (2, "s04"), (1, "s06")]
    for g in groups:
        assert g.submissions == sorted(g.submissions) and g.representative in g.submissions
        assert g.size == len(g.submissions)


def test_the_same_answers_give_the_same_groups(store, tmp_path):
    first = answer_groups(store, QUESTION)
    # a second OUT written in another order, grouped from scratch
    other = tmp_path / "other"
    for submission, text in reversed(list(ANSWERS.items())):
        write_result(other, submission, text)
    again = answer_groups(synced(other), QUESTION)
    assert [g.model_dump() for g in again] == [g.model_dump() for g in first]


@pytest.fixture()
def computations(monkeypatch) -> list[str]:
    """The questions compute_groups was called for (the real function still runs)."""
    calls: list[str] = []
    real = grouping.compute_groups

    def counting(question_id, answers, settings):
        calls.append(question_id)
        return real(question_id, answers, settings)

    monkeypatch.setattr(grouping, "compute_groups", counting)
    return calls


def test_unchanged_answers_are_read_back_not_recomputed(store, computations):
    first = answer_groups(store, QUESTION)
    again = answer_groups(MarkStore(store.out_dir, CONFIG), QUESTION)   # another process's store
    assert computations == [QUESTION]
    assert [g.model_dump() for g in again] == [g.model_dump() for g in first]   # representatives too


def test_a_changed_answer_recomputes_the_groups(store, computations):
    before = by_member(answer_groups(store, QUESTION))
    assert before["s06"].size == 1
    write_result(store.out_dir, "s06", OVERFITTING.replace("epochs", "training epochs"))
    synced(store.out_dir)
    after = by_member(answer_groups(store, QUESTION))
    assert computations == [QUESTION, QUESTION]
    assert after["s06"] is after["s04"] and after["s04"].size == 3


def test_a_changed_setting_recomputes_the_groups(store, computations):
    answer_groups(store, QUESTION)
    strict = CONFIG.model_copy(update={"marking": CONFIG.marking.model_copy(update={"group_distance": 0.01})})
    groups = answer_groups(MarkStore(store.out_dir, strict), QUESTION)
    assert computations == [QUESTION, QUESTION]
    assert by_member(groups)["s01"].size == 1   # at distance 0.01 only identical texts join


def test_a_question_with_one_written_answer(tmp_path):
    out = tmp_path / "out"
    write_result(out, "only", SAMPLES_NOT_DIGITS)
    write_result(out, "none", None)
    groups = answer_groups(synced(out), QUESTION)
    assert [(g.submissions, g.missing) for g in groups] == [(["none"], True), (["only"], False)]


def test_an_older_groups_cache_without_representatives_is_recomputed(store, computations):
    import sqlite3

    first = answer_groups(store, QUESTION)
    db = sqlite3.connect(store.path)
    db.executescript("DROP TABLE answer_groups; CREATE TABLE answer_groups (question TEXT NOT NULL, "
                     "submission TEXT NOT NULL, grp INTEGER NOT NULL, answers_digest TEXT NOT NULL, "
                     "PRIMARY KEY (question, submission)); INSERT INTO answer_groups VALUES ('Q1', 's01', 2, 'x');")
    db.close()
    reopened = MarkStore(store.out_dir, CONFIG)          # the old cache table goes, marks stay
    again = answer_groups(reopened, QUESTION)
    assert computations == [QUESTION, QUESTION]
    assert [g.model_dump() for g in again] == [g.model_dump() for g in first]
