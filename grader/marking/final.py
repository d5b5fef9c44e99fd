"""Final grades: each submission's automatic points joined with staff's marks of its answers.

Every output that states a grade (the final PDFs, gradebook.csv, the summary, the LMS exports)
takes it from `final_grades`, so they can never disagree; until every question of a submission is
marked its FinalGrade says which are not, and nothing calls its total final.
"""

from __future__ import annotations

from pathlib import Path

from ..config import AssignmentConfig
from ..records import FinalGrade, Mark, SubmissionResult
from .store import MarkStore

RESULT_JSON = "result.json"   # = report.RESULT_JSON (report imports WeasyPrint; the marking store must not)


def load_results(out_dir: Path) -> tuple[list[tuple[str, SubmissionResult]], list[str]]:
    """(folder, result) for every OUT/<folder>/result.json that can be read, and the problems of
    those that cannot (named by file), so a caller can say what it left out."""
    from ..report import ReportError, load_result

    results, problems = [], []
    for path in sorted(Path(out_dir).glob(f"*/{RESULT_JSON}")):
        try:
            results.append((path.parent.name, load_result(path)))
        except ReportError as exc:
            problems.append(str(exc))
    return results, problems


def final_grade(result: SubmissionResult, marks: dict[str, dict[str, Mark]], config: AssignmentConfig) -> FinalGrade:
    written = {q.id: marks.get(q.id, {}).get(result.submission) for q in config.questions}
    return FinalGrade(
        submission=result.submission, status=result.status,
        auto_points=result.score, auto_max=result.max_score or config.max_auto_points,
        written=written, written_max=config.max_answer_points,
        unmarked=[q for q, mark in written.items() if mark is None],
        stale=[q for q, mark in written.items() if mark is not None and mark.stale],
    )


def final_grades(
    store: MarkStore, results: list[tuple[str, SubmissionResult]], sync: bool = True
) -> list[FinalGrade]:
    """One FinalGrade per result, by submission; with sync, the results' answers are copied into
    the database first (so a changed answer shows as stale)."""
    if sync:
        store.sync_answers(results)
    marks = store.all_marks()
    return [final_grade(r, marks, store.config) for _, r in sorted(results, key=lambda fr: fr[1].submission)]
