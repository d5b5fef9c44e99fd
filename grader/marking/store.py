"""The marking database: staff's rubric and marks of the written answers, in OUT/marks.sqlite.

Why SQLite in WAL mode: every mark is one committed transaction the moment it is made (a killed
app loses nothing that was acknowledged), several markers' processes can write one file at once
(writers queue on SQLite's lock, `busy_timeout` makes them wait rather than fail), and readers
never block writers. Every change is also appended to `events` (who, when, what), so a mark can
be traced and nothing is overwritten without a record.

What is derived, not stored: a mark's points. They are computed from the rubric items applied
and the free adjustment each time they are read, so changing an item's points re-scores every
answer it is applied to. Concurrent edits: applying or removing an item commutes (it is a row
in `applied`), so two markers' items never overwrite each other; a comment or adjustment is
written only against the version the marker last saw (`MarkConflict` otherwise), so one marker
cannot silently replace another's text.

The answers are copied in from the result records (`sync_answers`, run by `grader grade`,
`grader mark` and `grader report`). A regrade never deletes a mark: a mark whose answer's text
changed since is flagged `stale` until a marker looks at it again.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..config import AssignmentConfig, Question
from ..errors import GraderError
from ..records import Answer, Mark, RubricItem, SubmissionResult

DB_NAME = "marks.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    submission TEXT NOT NULL, question TEXT NOT NULL,
    folder TEXT NOT NULL,                 -- the submission's folder in OUT
    found INTEGER NOT NULL, text TEXT NOT NULL, words INTEGER NOT NULL, word_limit INTEGER NOT NULL,
    over_limit INTEGER NOT NULL, note TEXT NOT NULL, digest TEXT NOT NULL, synced_at TEXT NOT NULL,
    PRIMARY KEY (submission, question));
CREATE TABLE IF NOT EXISTS rubric_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, question TEXT NOT NULL, position INTEGER NOT NULL,
    text TEXT NOT NULL, points REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS marks (
    submission TEXT NOT NULL, question TEXT NOT NULL,
    adjustment REAL NOT NULL DEFAULT 0, comment TEXT NOT NULL DEFAULT '',
    answer_digest TEXT NOT NULL,          -- the answer's digest when it was last marked
    marker TEXT NOT NULL, marked_at TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (submission, question));
CREATE TABLE IF NOT EXISTS applied (
    submission TEXT NOT NULL, question TEXT NOT NULL, item INTEGER NOT NULL REFERENCES rubric_items(id),
    marker TEXT NOT NULL, applied_at TEXT NOT NULL,
    PRIMARY KEY (submission, question, item));
CREATE TABLE IF NOT EXISTS answer_groups (     -- a cache (grader.marking.groups), recomputable
    question TEXT NOT NULL, submission TEXT NOT NULL, grp INTEGER NOT NULL, answers_digest TEXT NOT NULL,
    representative INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (question, submission));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, marker TEXT NOT NULL,
    action TEXT NOT NULL, question TEXT, submission TEXT, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS answers_by_question ON answers (question);
CREATE INDEX IF NOT EXISTS applied_by_item ON applied (item);
"""


class MarkingError(GraderError):
    """A marking request that cannot be applied: unknown question, submission or rubric item."""


class MarkConflict(MarkingError):
    """Another marker changed this mark since the version the request was based on."""

    def __init__(self, current: Mark) -> None:
        super().__init__(
            f"{current.submission} {current.question}: changed by {current.marker or 'someone'} at "
            f"{current.marked_at} (version {current.version}); reload to see their change"
        )
        self.current = current


@dataclass(frozen=True)
class MarkChange:
    """One answer's whole mark as a batch sets it (`apply_marks`): exactly these items, this
    adjustment and comment; clear=True makes the answer unmarked. base_version is the mark's
    version the change was made against (0: unmarked then; None: not checked)."""

    submission: str
    items: tuple[int, ...] = ()
    adjustment: float = 0.0
    comment: str = ""
    clear: bool = False
    base_version: int | None = None


@dataclass(frozen=True)
class SyncReport:
    added: int          # answers new to the database
    changed: int        # answers whose text changed since the last sync
    stale_marks: int    # marks on answers that changed after they were marked


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_marker() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def answer_digest(answer: Answer) -> str:
    """What identifies an answer's content: a mark made on one digest is stale on another."""
    return hashlib.sha256(f"{int(answer.found)}\0{answer.text}".encode("utf-8", "surrogatepass")).hexdigest()


class MarkStore:
    """The marking database of one OUT folder. Cheap to create: it opens a connection per
    operation, so one store can serve a web app's threads, and several processes can share the file."""

    def __init__(self, out_dir: Path, config: AssignmentConfig, marker: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / DB_NAME
        self.config = config
        self.marker = marker or default_marker()
        self.questions: dict[str, Question] = {q.id: q for q in config.questions}
        self._create()

    # --- connections ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise MarkingError(f"{self.path}: cannot open the marking database ({exc})") from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA synchronous = FULL")   # a mark acknowledged is on disk
        except sqlite3.DatabaseError as exc:
            db.close()
            raise MarkingError(f"{self.path}: not a marking database ({exc})") from exc
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, taken with the write lock at its start (BEGIN IMMEDIATE), so a
        read-then-write inside it cannot race another marker's write."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _create(self) -> None:
        if not self.out_dir.is_dir():
            raise MarkingError(f"{self.out_dir}: not a folder written by `grader grade`")
        db = self._connect()
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise MarkingError(f"{self.path}: SQLite would not use WAL mode here (got {mode})")
            columns = {r[1] for r in db.execute("PRAGMA table_info(answer_groups)")}
            if columns and "representative" not in columns:   # an older cache of groups: recomputed
                db.execute("DROP TABLE answer_groups")
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise MarkingError(f"{self.path}: not a marking database ({exc})") from exc
        finally:
            db.close()
        if version != SCHEMA_VERSION:
            raise MarkingError(f"{self.path}: marking database schema {version}, this grader reads {SCHEMA_VERSION}")
        self.seed_rubric()

    def _log(self, db: sqlite3.Connection, action: str, question: str | None, submission: str | None, **detail) -> None:
        db.execute("INSERT INTO events (at, marker, action, question, submission, detail) VALUES (?, ?, ?, ?, ?, ?)",
                   (now_iso(), self.marker, action, question, submission, json.dumps(detail, sort_keys=True)))

    # --- questions and answers ------------------------------------------------------------------

    def question(self, question_id: str) -> Question:
        try:
            return self.questions[question_id]
        except KeyError:
            known = ", ".join(self.questions)
            raise MarkingError(f"unknown question {question_id!r} (known: {known})") from None

    def sync_answers(self, results: Iterable[tuple[str, SubmissionResult]]) -> SyncReport:
        """Copy every (folder, result)'s answers in; a question the result lacks is stored as not
        found, so every submission has a row for every question and nothing goes unmarked unseen."""
        added = changed = 0
        stamp = now_iso()
        with self._write() as db:
            for folder, result in results:
                answers = {a.id: a for a in result.answers}
                for question in self.config.questions:
                    answer = answers.get(question.id) or Answer(
                        id=question.id, found=False, limit=question.limit, max_points=question.points,
                        note="the grader recorded no answer for this question")
                    digest = answer_digest(answer)
                    row = db.execute("SELECT digest FROM answers WHERE submission = ? AND question = ?",
                                     (result.submission, question.id)).fetchone()
                    if row is not None and row["digest"] == digest:
                        continue
                    db.execute(
                        "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (result.submission, question.id, folder, int(answer.found), answer.text, answer.words,
                         answer.limit, int(answer.over_limit), answer.note, digest, stamp))
                    if row is None:
                        added += 1
                    else:
                        changed += 1
                        self._log(db, "answer_changed", question.id, result.submission, digest=digest)
            stale = db.execute("SELECT COUNT(*) FROM marks m JOIN answers a USING (submission, question) "
                               "WHERE m.answer_digest != a.digest").fetchone()[0]
        return SyncReport(added=added, changed=changed, stale_marks=stale)

    def submissions(self) -> list[str]:
        with self._read() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT submission FROM answers ORDER BY submission")]

    def answers(self, question_id: str) -> list[sqlite3.Row]:
        """The stored answers of one question, by submission: rows with the `answers` columns."""
        self.question(question_id)
        with self._read() as db:
            return db.execute("SELECT * FROM answers WHERE question = ? ORDER BY submission", (question_id,)).fetchall()

    def answer(self, submission: str, question_id: str) -> sqlite3.Row:
        self.question(question_id)
        with self._read() as db:
            row = db.execute("SELECT * FROM answers WHERE submission = ? AND question = ?",
                             (submission, question_id)).fetchone()
        if row is None:
            raise MarkingError(f"unknown submission {submission!r} for {question_id}")
        return row

    # --- the rubric -----------------------------------------------------------------------------

    def seed_rubric(self) -> None:
        """A question with no rubric items (ever) gets the config's starting ones."""
        with self._write() as db:
            for question in self.config.questions:
                if db.execute("SELECT 1 FROM rubric_items WHERE question = ?", (question.id,)).fetchone():
                    continue
                for position, spec in enumerate(question.rubric, start=1):
                    db.execute("INSERT INTO rubric_items (question, position, text, points) VALUES (?, ?, ?, ?)",
                               (question.id, position, spec.text, spec.points))
                if question.rubric:
                    self._log(db, "rubric_seeded", question.id, None, items=len(question.rubric))

    def rubric(self, question_id: str) -> list[RubricItem]:
        self.question(question_id)
        with self._read() as db:
            return self._rubric(db, question_id)

    @staticmethod
    def _rubric(db: sqlite3.Connection, question_id: str) -> list[RubricItem]:
        rows = db.execute("SELECT id, question, position, text, points FROM rubric_items "
                          "WHERE question = ? AND deleted = 0 ORDER BY position, id", (question_id,))
        return [RubricItem(**dict(r)) for r in rows]

    def _check_points(self, question: Question, points: float) -> None:
        if not abs(points) <= question.points:   # also refuses NaN
            raise MarkingError(f"{question.id}: a rubric item's points must be within ±{question.points:g}, not {points:g}")

    def add_item(self, question_id: str, text: str, points: float) -> RubricItem:
        question = self.question(question_id)
        text = text.strip()
        if not text:
            raise MarkingError(f"{question_id}: a rubric item needs a text")
        self._check_points(question, points)
        with self._write() as db:
            position = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM rubric_items "
                                  "WHERE question = ? AND deleted = 0", (question_id,)).fetchone()[0]
            cursor = db.execute("INSERT INTO rubric_items (question, position, text, points) VALUES (?, ?, ?, ?)",
                                (question_id, position, text, points))
            item_id = cursor.lastrowid
            assert item_id is not None, "an INSERT sets the new row's id"
            self._log(db, "item_added", question_id, None, item=item_id, text=text, points=points)
            return RubricItem(id=item_id, question=question_id, position=position, text=text, points=points)

    def _item(self, db: sqlite3.Connection, item_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM rubric_items WHERE id = ? AND deleted = 0", (item_id,)).fetchone()
        if row is None:
            raise MarkingError(f"unknown rubric item {item_id}")
        return row

    def update_item(self, item_id: int, text: str | None = None, points: float | None = None) -> RubricItem:
        """Change an item's text or points; every answer it is applied to is re-scored with it."""
        with self._write() as db:
            row = self._item(db, item_id)
            question = self.question(row["question"])
            new_text = row["text"] if text is None else text.strip()
            new_points = row["points"] if points is None else float(points)
            if not new_text:
                raise MarkingError(f"{question.id}: a rubric item needs a text")
            self._check_points(question, new_points)
            db.execute("UPDATE rubric_items SET text = ?, points = ? WHERE id = ?", (new_text, new_points, item_id))
            self._log(db, "item_changed", question.id, None, item=item_id, text=new_text, points=new_points,
                      was={"text": row["text"], "points": row["points"]})
            return RubricItem(id=item_id, question=question.id, position=row["position"], text=new_text, points=new_points)

    def delete_item(self, item_id: int) -> int:
        """Remove an item from the rubric and from every answer it was applied to (logged with
        the answers it left, so it can be traced). Returns how many answers it left."""
        with self._write() as db:
            row = self._item(db, item_id)
            left = [r[0] for r in db.execute("SELECT submission FROM applied WHERE item = ?", (item_id,))]
            db.execute("DELETE FROM applied WHERE item = ?", (item_id,))
            db.execute("UPDATE rubric_items SET deleted = 1 WHERE id = ?", (item_id,))
            self._touch(db, row["question"], left)
            self._log(db, "item_deleted", row["question"], None, item=item_id, text=row["text"], answers=left)
            return len(left)

    # --- marks ----------------------------------------------------------------------------------

    def _require_answers(self, db: sqlite3.Connection, question_id: str, submissions: list[str]) -> None:
        known = {r[0] for r in db.execute("SELECT submission FROM answers WHERE question = ?", (question_id,))}
        unknown = [s for s in submissions if s not in known]
        if unknown:
            raise MarkingError(f"{question_id}: unknown submission(s) {', '.join(map(repr, unknown[:5]))}")

    def _touch(self, db: sqlite3.Connection, question_id: str, submissions: Iterable[str]) -> None:
        """Record that these answers were marked now, by this marker, against their current text."""
        stamp = now_iso()
        for submission in submissions:
            digest = db.execute("SELECT digest FROM answers WHERE submission = ? AND question = ?",
                                (submission, question_id)).fetchone()[0]
            db.execute(
                "INSERT INTO marks (submission, question, answer_digest, marker, marked_at, version) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (submission, question) DO UPDATE SET "
                "answer_digest = excluded.answer_digest, marker = excluded.marker, "
                "marked_at = excluded.marked_at, version = marks.version + 1",
                (submission, question_id, digest, self.marker, stamp))

    def apply_item(self, item_id: int, submissions: list[str], applied: bool = True) -> list[Mark]:
        """Apply (or remove) one rubric item on one or many answers — a whole answer group at once —
        in one transaction. Each of those answers counts as marked from then on."""
        with self._write() as db:
            question_id = self._item(db, item_id)["question"]
            self._require_answers(db, question_id, submissions)
            stamp = now_iso()
            for submission in submissions:
                if applied:
                    db.execute("INSERT OR IGNORE INTO applied VALUES (?, ?, ?, ?, ?)",
                               (submission, question_id, item_id, self.marker, stamp))
                else:
                    db.execute("DELETE FROM applied WHERE submission = ? AND question = ? AND item = ?",
                               (submission, question_id, item_id))
            self._touch(db, question_id, submissions)
            self._log(db, "item_applied" if applied else "item_removed", question_id, None,
                      item=item_id, submissions=submissions)
            return [self._mark(db, s, question_id) for s in submissions]

    def set_mark(
        self, submission: str, question_id: str, *, adjustment: float | None = None,
        comment: str | None = None, base_version: int | None = None,
    ) -> Mark:
        """Set an answer's free adjustment and/or comment; with neither, confirm it as marked
        (e.g. a missing answer given its points from the rubric alone). With base_version, the
        write happens only if nobody changed the mark since that version (MarkConflict otherwise)."""
        question = self.question(question_id)
        if adjustment is not None and not abs(adjustment) <= question.points:
            raise MarkingError(f"{question_id}: an adjustment must be within ±{question.points:g}, not {adjustment:g}")
        with self._write() as db:
            self._require_answers(db, question_id, [submission])
            current = self._mark(db, submission, question_id)
            if base_version is not None and current.version != base_version:
                raise MarkConflict(current)
            self._touch(db, question_id, [submission])
            if adjustment is not None:
                db.execute("UPDATE marks SET adjustment = ? WHERE submission = ? AND question = ?",
                           (adjustment, submission, question_id))
            if comment is not None:
                db.execute("UPDATE marks SET comment = ? WHERE submission = ? AND question = ?",
                           (comment, submission, question_id))
            self._log(db, "mark_set", question_id, submission, adjustment=adjustment, comment=comment)
            return self._mark(db, submission, question_id)

    def clear_mark(self, submission: str, question_id: str) -> None:
        """Back to unmarked: the items, adjustment and comment go (the events keep them)."""
        self.question(question_id)
        with self._write() as db:
            before = self._mark(db, submission, question_id)
            db.execute("DELETE FROM applied WHERE submission = ? AND question = ?", (submission, question_id))
            db.execute("DELETE FROM marks WHERE submission = ? AND question = ?", (submission, question_id))
            self._log(db, "mark_cleared", question_id, submission, was=before.model_dump())

    def apply_marks(self, question_id: str, changes: list[MarkChange], source: str = "batch") -> None:
        """Set many answers' marks of one question in ONE transaction (a spreadsheet import): all
        of them or, on any refusal (unknown submission or item, adjustment out of range, a mark
        changed since its base_version), none. Each change is logged with its source."""
        question = self.question(question_id)
        for change in changes:
            if not abs(change.adjustment) <= question.points:
                raise MarkingError(f"{question_id} {change.submission}: an adjustment must be within "
                                   f"±{question.points:g}, not {change.adjustment:g}")
        with self._write() as db:
            self._require_answers(db, question_id, [c.submission for c in changes])
            rubric = {item.id for item in self._rubric(db, question_id)}
            current = self._marks(db, question_id)
            for change in changes:
                before = current.get(change.submission)
                if change.base_version is not None and (before.version if before else 0) != change.base_version:
                    raise MarkConflict(before or Mark(submission=change.submission, question=question_id,
                                                      max_points=question.points))
                unknown = sorted(set(change.items) - rubric)
                if unknown:
                    raise MarkingError(f"{question_id}: unknown rubric item(s) {', '.join(map(str, unknown))}")
                self._replace_mark(db, question_id, change, before)
                self._log(db, "mark_cleared" if change.clear else "mark_replaced", question_id, change.submission,
                          source=source, items=list(change.items), adjustment=change.adjustment,
                          comment=change.comment, was=before.model_dump() if before else None)

    def _replace_mark(self, db: sqlite3.Connection, question_id: str, change: MarkChange, before: Mark | None) -> None:
        key = (change.submission, question_id)
        if change.clear:
            db.execute("DELETE FROM applied WHERE submission = ? AND question = ?", key)
            db.execute("DELETE FROM marks WHERE submission = ? AND question = ?", key)
            return
        keep = set(change.items)
        for item in set(before.items if before else ()) - keep:
            db.execute("DELETE FROM applied WHERE submission = ? AND question = ? AND item = ?", (*key, item))
        stamp = now_iso()
        for item in sorted(keep):
            db.execute("INSERT OR IGNORE INTO applied VALUES (?, ?, ?, ?, ?)", (*key, item, self.marker, stamp))
        self._touch(db, question_id, [change.submission])
        db.execute("UPDATE marks SET adjustment = ?, comment = ? WHERE submission = ? AND question = ?",
                   (change.adjustment, change.comment, *key))

    def _mark(self, db: sqlite3.Connection, submission: str, question_id: str) -> Mark:
        return self._marks(db, question_id, submission).get(submission) or Mark(
            submission=submission, question=question_id, max_points=self.question(question_id).points)

    def _marks(self, db: sqlite3.Connection, question_id: str, submission: str | None = None) -> dict[str, Mark]:
        question = self.question(question_id)
        points = {item.id: item.points for item in self._rubric(db, question_id)}
        where, args = "m.question = ?", [question_id]
        if submission is not None:
            where, args = where + " AND m.submission = ?", args + [submission]
        applied: dict[str, list[int]] = {}
        for row in db.execute(f"SELECT m.submission, p.item FROM marks m JOIN applied p USING (submission, question) "
                              f"WHERE {where} ORDER BY p.item", args):
            if row["item"] in points:
                applied.setdefault(row["submission"], []).append(row["item"])
        base = question.points if question.scoring == "negative" else 0.0
        marks = {}
        for row in db.execute(f"SELECT m.*, a.digest FROM marks m LEFT JOIN answers a USING (submission, question) "
                              f"WHERE {where}", args):
            items = applied.get(row["submission"], [])
            raw = base + sum(points[i] for i in items) + row["adjustment"]
            marks[row["submission"]] = Mark(
                submission=row["submission"], question=question_id, items=items, adjustment=row["adjustment"],
                comment=row["comment"], points=round(min(max(raw, 0.0), question.points), 6),
                max_points=question.points, marker=row["marker"], marked_at=row["marked_at"],
                version=row["version"], stale=row["digest"] is not None and row["digest"] != row["answer_digest"])
        return marks

    def mark(self, submission: str, question_id: str) -> Mark | None:
        """The answer's mark, or None while it is unmarked."""
        self.question(question_id)
        with self._read() as db:
            return self._marks(db, question_id, submission).get(submission)

    def question_marks(self, question_id: str) -> dict[str, Mark]:
        """Submission -> mark for every marked answer of one question."""
        with self._read() as db:
            return self._marks(db, question_id)

    def rubric_items(self) -> dict[int, RubricItem]:
        """Every rubric item of the config's questions, by id, in one read."""
        with self._read() as db:
            return {item.id: item for q in self.config.questions for item in self._rubric(db, q.id)}

    def all_marks(self) -> dict[str, dict[str, Mark]]:
        """Question id -> submission -> mark, in one read (one consistent snapshot)."""
        with self._read() as db:
            db.execute("BEGIN")
            return {q.id: self._marks(db, q.id) for q in self.config.questions}

    def item_counts(self, question_id: str) -> dict[int, int]:
        """Rubric item id -> how many answers it is applied to."""
        with self._read() as db:
            return {r[0]: r[1] for r in db.execute(
                "SELECT p.item, COUNT(*) FROM applied p JOIN rubric_items i ON i.id = p.item "
                "WHERE p.question = ? AND i.deleted = 0 GROUP BY p.item", (question_id,))}

    # --- answer groups (computed by grader.marking.groups, stored so a page opens fast) -------

    def stored_groups(self, question_id: str, answers_digest: str) -> dict[str, tuple[int, bool]] | None:
        """Submission -> (group id, is the group's representative), if stored for these answers."""
        with self._read() as db:
            rows = db.execute("SELECT submission, grp, representative, answers_digest FROM answer_groups "
                              "WHERE question = ?", (question_id,)).fetchall()
        if not rows or any(r["answers_digest"] != answers_digest for r in rows):
            return None
        return {r["submission"]: (r["grp"], bool(r["representative"])) for r in rows}

    def store_groups(self, question_id: str, answers_digest: str, groups: dict[str, tuple[int, bool]]) -> None:
        with self._write() as db:
            db.execute("DELETE FROM answer_groups WHERE question = ?", (question_id,))
            db.executemany("INSERT INTO answer_groups (question, submission, grp, representative, answers_digest) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(question_id, s, g, int(rep), answers_digest) for s, (g, rep) in groups.items()])

    def events(self, limit: int = 1000) -> list[sqlite3.Row]:
        with self._read() as db:
            return db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
