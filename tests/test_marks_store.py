"""The marking database: derived points, conflicts, regrades, two markers at once, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grader.config import load_config
from grader.marking.final import final_grades, load_results
from grader.marking.store import MarkConflict, MarkingError, MarkStore
from grader.records import Answer, SubmissionResult

CONFIG = load_config()
QUESTIONS = [q.id for q in CONFIG.questions]


def write_result(out: Path, submission: str, texts: dict[str, str] | None = None, score: float = 10.0) -> None:
    texts = texts if texts is not None else {q: f"{submission} answers {q} with several words" for q in QUESTIONS}
    answers = [
        Answer(id=q.id, found=q.id in texts, text=texts.get(q.id, ""), words=len(texts.get(q.id, "").split()),
               limit=q.limit, max_points=q.points)
        for q in CONFIG.questions
    ]
    result = SubmissionResult(submission=submission, status="graded", score=score,
                              max_score=CONFIG.max_auto_points, answers=answers)
    (out / submission).mkdir(parents=True, exist_ok=True)
    (out / submission / "result.json").write_text(result.model_dump_json())


def make_out(tmp_path: Path, count: int = 3) -> Path:
    out = tmp_path / "out"
    for i in range(count):
        write_result(out, f"student{i:03d}")
    return out


def synced_store(out: Path, marker: str = "alice") -> MarkStore:
    store = MarkStore(out, CONFIG, marker=marker)
    results, problems = load_results(out)
    assert not problems
    store.sync_answers(results)
    return store


def table_dump(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


def test_rubric_is_seeded_from_the_config_once(tmp_path):
    out = make_out(tmp_path)
    store = synced_store(out)
    q2 = CONFIG.questions[1]
    assert [i.text for i in store.rubric(q2.id)] == [r.text for r in q2.rubric]
    store.delete_item(store.rubric(q2.id)[0].id)
    MarkStore(out, CONFIG)   # reopening must not seed the deleted item back
    assert len(store.rubric(q2.id)) == len(q2.rubric) - 1


def test_points_follow_the_rubric_and_stay_in_range(tmp_path):
    store = synced_store(make_out(tmp_path))
    question = CONFIG.questions[4]                      # 4 points, four +1 items
    items = store.rubric(question.id)
    store.apply_item(items[0].id, ["student000", "student001"])
    store.apply_item(items[1].id, ["student000"])
    assert store.mark("student000", question.id).points == 2
    store.update_item(items[0].id, points=question.points)   # re-scores every answer it is on
    assert store.mark("student001", question.id).points == question.points
    assert store.mark("student000", question.id).points == question.points   # clamped at the maximum
    store.set_mark("student001", question.id, adjustment=-question.points)
    assert store.mark("student001", question.id).points == 0                 # clamped at zero
    store.apply_item(items[0].id, ["student000"], applied=False)
    assert store.mark("student000", question.id).items == [items[1].id]
    assert store.mark("student002", question.id) is None                     # never touched: unmarked


def test_negative_scoring_starts_at_full_points(tmp_path):
    from grader.config import AssignmentConfig

    raw = CONFIG.model_dump()
    raw["questions"][0] |= {"scoring": "negative", "rubric": [{"text": "no explanation", "points": -1}]}
    config = AssignmentConfig.model_validate(raw)
    out = make_out(tmp_path)
    store = MarkStore(out, config)
    store.sync_answers(load_results(out)[0])
    question = config.questions[0]
    store.set_mark("student000", question.id)
    assert store.mark("student000", question.id).points == question.points
    store.apply_item(store.rubric(question.id)[0].id, ["student000"])
    assert store.mark("student000", question.id).points == question.points - 1


def test_bad_requests_are_refused_and_change_nothing(tmp_path):
    store = synced_store(make_out(tmp_path))
    before = table_dump(store.path)
    q = CONFIG.questions[0]
    with pytest.raises(MarkingError, match="unknown question"):
        store.set_mark("student000", "Q99", comment="x")
    with pytest.raises(MarkingError, match="unknown submission"):
        store.apply_item(store.rubric(q.id)[0].id, ["student000", "nobody"])
    with pytest.raises(MarkingError, match="within"):
        store.add_item(q.id, "too many", q.points + 1)
    with pytest.raises(MarkingError, match="within"):
        store.set_mark("student000", q.id, adjustment=float("nan"))
    with pytest.raises(MarkingError, match="unknown rubric item"):
        store.apply_item(10_000, ["student000"])
    assert table_dump(store.path) == before


def test_a_stale_version_is_refused_not_overwritten(tmp_path):
    out = make_out(tmp_path)
    alice, bob = synced_store(out, "alice"), MarkStore(out, CONFIG, marker="bob")
    q = CONFIG.questions[0].id
    seen = alice.set_mark("student000", q, comment="first look")
    bob.set_mark("student000", q, comment="bob's comment", base_version=seen.version)
    with pytest.raises(MarkConflict, match="bob") as conflict:
        alice.set_mark("student000", q, comment="alice overwrites", base_version=seen.version)
    assert conflict.value.current.comment == "bob's comment"
    assert alice.mark("student000", q).comment == "bob's comment"
    actions = [(e["marker"], e["action"]) for e in alice.events()]
    assert ("bob", "mark_set") in actions and ("alice", "mark_set") in actions


def test_a_regrade_keeps_marks_and_flags_changed_answers(tmp_path):
    out = make_out(tmp_path)
    store = synced_store(out)
    q = CONFIG.questions[0].id
    store.apply_item(store.rubric(q)[0].id, ["student000", "student001"])
    store.set_mark("student000", q, comment="good")
    # The regrade: student000 changed their answer, student001 did not.
    write_result(out, "student000", {q: "a completely different answer now"})
    report = store.sync_answers(load_results(out)[0])
    assert report.changed >= 1 and report.stale_marks == 1
    changed, same = store.mark("student000", q), store.mark("student001", q)
    assert changed.stale and changed.comment == "good" and changed.items   # kept, flagged
    assert not same.stale
    store.set_mark("student000", q)            # a marker looks again: no longer stale
    assert not store.mark("student000", q).stale


def test_final_grades_join_automatic_and_written_points(tmp_path):
    out = make_out(tmp_path)
    store = synced_store(out)
    first = CONFIG.questions[0]
    store.apply_item(store.rubric(first.id)[0].id, ["student000"])
    grades = {g.submission: g for g in final_grades(store, load_results(out)[0])}
    mine = grades["student000"]
    assert mine.written_points == first.rubric[0].points
    assert mine.total == 10.0 + first.rubric[0].points
    assert mine.unmarked == QUESTIONS[1:] and not mine.complete
    assert grades["student001"].unmarked == QUESTIONS


def test_not_a_database_is_a_clear_error(tmp_path):
    out = make_out(tmp_path)
    (out / "marks.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MarkingError, match="marks.sqlite"):
        MarkStore(out, CONFIG)


# --- two markers at once, and a killed marker -------------------------------------------------

MARKER_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from grader.config import load_config
    from grader.marking.store import MarkStore

    out, name, count, which = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config = load_config()
    store = MarkStore(out, config, marker=name)
    questions = [q.id for q in config.questions]
    submissions = store.submissions()
    print("ready", flush=True)
    while not (out / "go").exists():    # both markers start writing at the same moment
        pass
    for i in range(count):
        submission, question = submissions[i % len(submissions)], questions[(i // len(submissions)) % len(questions)]
        items = store.rubric(question)
        store.apply_item(items[which % len(items)].id, [submission])
        store.set_mark(submission, question, comment=f"{name} {i}")
        print(f"{submission} {question} {i}", flush=True)   # acknowledged: committed before this line
""")


def run_marker(out: Path, name: str, count: int, item: int = 0) -> subprocess.Popen:
    """A marker's process: applies its rubric item (by position) and sets a comment, count times."""
    return subprocess.Popen([sys.executable, "-c", MARKER_SCRIPT, str(out), name, str(count), str(item)],
                            stdout=subprocess.PIPE, text=True)


def test_two_markers_at_once_lose_no_mark(tmp_path):
    out = make_out(tmp_path, count=8)
    synced_store(out)
    markers = {name: run_marker(out, name, 40, item) for item, name in enumerate(("alice", "bob"))}
    assert all(proc.stdout.readline() == "ready\n" for proc in markers.values())
    (out / "go").touch()
    outputs = {name: proc.communicate(timeout=120)[0] for name, proc in markers.items()}
    assert all(proc.returncode == 0 for proc in markers.values())
    store = MarkStore(out, CONFIG)
    events = store.events(limit=10_000)
    for name, text in outputs.items():
        done = text.split("\n")[:-1]
        assert len(done) == 40
        sets = [e for e in events if e["marker"] == name and e["action"] == "mark_set"]
        applies = [e for e in events if e["marker"] == name and e["action"] == "item_applied"]
        assert len(sets) == 40 and len(applies) == 40
    # every answer either marker touched is marked, with both markers' items where both applied one
    marks = store.all_marks()
    touched = {tuple(line.split()[:2]) for text in outputs.values() for line in text.split("\n")[:-1]}
    assert all(marks[q].get(s) is not None for s, q in touched)
    assert any(len(marks[q][s].items) == 2 for s, q in touched)   # alice's and bob's items together


def test_kill_9_mid_marking_keeps_every_acknowledged_mark(tmp_path):
    out = make_out(tmp_path, count=20)
    synced_store(out)
    proc = run_marker(out, "carol", 10_000)
    assert proc.stdout.readline() == "ready\n"
    (out / "go").touch()
    acknowledged = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 30 and time.monotonic() < deadline:
        acknowledged.append(proc.stdout.readline().split())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acknowledged) >= 30
    store = MarkStore(out, CONFIG)          # "the restart"
    marks = store.all_marks()
    last: dict[tuple[str, str], str] = {}
    for submission, question, i in acknowledged:
        last[(submission, question)] = i
    for (submission, question), i in last.items():
        mark = marks[question].get(submission)
        assert mark is not None, (submission, question)
        assert int(mark.comment.split()[1]) >= int(i)   # that write, or a later one that also committed
    assert store.path.exists() and sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
