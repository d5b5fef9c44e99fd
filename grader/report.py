"""PDF feedback: one report per submission and a class summary, from the result records alone.

A report is HTML from a Jinja2 template (templates/), printed to PDF by WeasyPrint. Everything is
rebuilt from SubmissionResult and the PNGs next to result.json, and staff's marks from the marking
database (OUT/marks.sqlite) where there is one, so `rerender` can remake every PDF after a template
change or a mark without running a notebook again. gradebook.csv is written here too (one writer
for `grader grade` and `grader report`).

Safety: the student's text is the only untrusted input. It is rendered as escaped text or as
whitelisted HTML (grader.mathtext), and WeasyPrint gets a URL fetcher that serves `data:` URLs
only, so no markup can make the renderer read a grader-side file (`<link rel="attachment"
href="file:///...">` would otherwise embed that file in the PDF).

Reproducibility: figures are embedded as data: URIs, dates come from the record (graded_at),
never from the clock, and WeasyPrint writes no creation date: the same record gives the same bytes.
Marks are shown without their times (who marked, not when), so the same marks give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import statistics
from datetime import datetime
from pathlib import Path
from typing import Iterable

import jinja2
from markupsafe import Markup
from pydantic import BaseModel, ValidationError
from weasyprint import HTML, URLFetcher

from . import __version__, atomic, versioning
from .config import AssignmentConfig, load_config
from .errors import GraderError
from .figures import score_histogram_png
from .mathtext import markdown_to_html
from .paths import TEMPLATES_DIR
from .records import (
    AppliedCount,
    CellRun,
    CheckResult,
    CheckSummary,
    ClassSummary,
    FigureKind,
    FigureRef,
    FinalGrade,
    KLUnitFigures,
    MarkingSummary,
    ModelFigures,
    QuestionMarks,
    QuestionSummary,
    ReparamUnitFigures,
    RubricItem,
    ScoreSpread,
    Spread,
    StaleMark,
    SubmissionResult,
    SubmissionRow,
    WrittenPoints,
)
from .text import format_decimal, format_quantity, strip_ansi

REPORT_TEMPLATE = "report.html.j2"
SUMMARY_TEMPLATE = "summary.html.j2"
STYLESHEET = "report.css"
REPORT_PDF = "report.pdf"
REPORT_STAMP = ".report-digest"   # what the PDF was drawn from (report_stamp)
GRADEBOOK_CSV = "gradebook.csv"   # = grade.GRADEBOOK_CSV (grade imports torch; this module must not)
RESULT_JSON = "result.json"
SUMMARY_PDF = "summary.pdf"
SUMMARY_JSON = "summary.json"
SUMMARY_HISTOGRAM = "summary_scores.png"

# Caps: a notebook that prints megabytes must not make the PDF huge or the renderer crawl.
MAX_ANSWER_CHARS = 12_000
MAX_TRACEBACK_CHARS = 6_000
MAX_ERRORS = 20
MAX_ERROR_CHARS = 1_500
MAX_CELLS = 300
MAX_SOURCE_HEAD_CHARS = 100
MAX_FIGURE_BYTES = 8_000_000

FAILED_CELL = {"error", "timeout", "crashed"}

STATUS_TEXT = {
    "graded": "Your notebook ran to the end and was graded.",
    "error": "Your notebook stopped with an error, so the parts after it could not be measured.",
    "timeout": "Your notebook ran out of time, so the parts after that point could not be measured.",
    "crashed": "The notebook's kernel died (often: out of memory), so the parts after that point "
               "could not be measured.",
    "invalid": "The submission could not be run: it is not a notebook the grader can read.",
}
STATUS_LABEL = {"graded": "graded", "error": "stopped with an error", "timeout": "timed out",
                "crashed": "kernel crashed", "invalid": "not gradable"}

# ModelFigures fields: label and which way is better.
QUANTITIES = [
    ("mse", "Reconstruction error (MSE per pixel)", "lower is better"),
    ("kl", "KL divergence (nats per image)", ""),
    ("elbo", "ELBO per image", "higher is better"),
    ("sample_confidence", "Classifier confidence on samples", "higher is better"),
    ("sample_coverage", "Digit classes among confident samples", "higher is better"),
    ("sample_fid", "Fréchet distance of samples to test digits", "lower is better"),
    ("interp_accept", "Interpolation images recognised as digits", "higher is better"),
    ("interp_smoothness", "Interpolation: largest step / path length", "lower is smoother"),
    ("interp_endpoints", "Interpolation paths whose ends show their own digits", "higher is better"),
    ("sample_memorised", "Samples that are copies of MNIST images", "should be 0"),
]
FIGURE_KINDS: dict[FigureKind, str] = {   # what each kind of figure shows
    "reconstructions": "Test digits (top row), then your model's reconstructions and the reference's.",
    "samples": "Decoded from z ~ N(0, I); each captioned with the digit the classifier sees and its "
               "confidence.",
    "interpolation": "Decoded points on straight lines between two test digits in latent space, your "
                     "model's paths above the reference's.",
    "training_curves": "As recorded in your {histories}.",   # the contract's history variables
}


class ReportError(GraderError):
    """A result.json could not be read, or a report could not be written."""


class DataOnlyFetcher(URLFetcher):
    """WeasyPrint URL fetcher that serves `data:` URLs and refuses everything else.

    Refused URLs are kept in `refused`; WeasyPrint logs a warning and leaves the resource out.
    """

    def __init__(self) -> None:
        super().__init__(allowed_protocols=["data"])
        self.refused: list[str] = []

    def fetch(self, url, headers=None):
        scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
        if scheme != "data":
            self.refused.append(url)
            raise ValueError(f"the report renderer fetches data: URLs only, not {url[:80]!r}")
        return super().fetch(url, headers)


# --- formatting helpers (also Jinja2 filters) -------------------------------------------------


def fmt_number(value: float | int | None, digits: int = 4) -> str:
    """A measured number in the PDF and the marking page (the `num` filter)."""
    return format_quantity(value, digits)


def fmt_points(value: float) -> str:
    """Points in the PDF: two decimals at most (17.5, 8.33)."""
    return format_decimal(value, 2)


def fmt_seconds(value: float) -> str:
    if value >= 90:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def fmt_date(value: str) -> str:
    """graded_at for people: '2026-11-25 14:16 UTC'; anything unparsable as it is."""
    if not value:
        return "unknown"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    zone = moment.tzname() or ""
    return f"{moment:%Y-%m-%d %H:%M} {zone}".strip()


def fmt_value(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def cap_text(text: str, limit: int, keep: str = "head") -> tuple[str, int]:
    """text cut to about limit characters; keep="tail" keeps the end (where a traceback says why).

    Returns (text, number of characters left out).
    """
    if len(text) <= limit:
        return text, 0
    dropped = len(text) - limit
    if keep == "tail":
        return text[-limit:], dropped
    return text[:limit], dropped


# --- the report's sections ---------------------------------------------------------------------


def _size_parameters(config: AssignmentConfig) -> set[str]:
    """Parameters that set how much training a run does: the ones the presets shrink."""
    return {name for preset in config.parameters.presets.values() for name in preset}


def _is_reduced(value: object, default: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if default is None:
        return True  # a nullable size parameter: None means "all of it" (a training subset)
    return isinstance(default, (int, float)) and value < default


def parameter_rows(result: SubmissionResult, config: AssignmentConfig) -> list[dict]:
    """One row per parameter the run used: its value, the assignment's default, what changed."""
    defaults = config.parameters.defaults()
    size = _size_parameters(config)
    rows = []
    for name, value in result.parameters.items():
        known = name in defaults
        default = defaults.get(name)
        rows.append({
            "name": name,
            "value": fmt_value(value),
            "default": fmt_value(default) if known else "(not in the assignment)",
            "changed": not known or value != default,
            "overridden": name in result.overrides,
            "reduced": known and name in size and _is_reduced(value, default),
        })
    return rows


def _check_points_class(check: CheckResult) -> str:
    if not check.assessable:
        return "na"
    if check.points >= check.max_points - 1e-9:
        return "full"
    return "partial" if check.points > 0 else "zero"


def check_row(check: CheckResult) -> dict:
    return {"id": check.id, "title": check.title, "points": fmt_points(check.points),
            "max": fmt_points(check.max_points), "message": check.message, "band": check.band,
            "assessable": check.assessable, "kind": _check_points_class(check)}


def _role_checks(config: AssignmentConfig) -> dict[str, list[str]]:
    """Model role -> ids of the checks that measure it (from each check's model/models field)."""
    roles: dict[str, list[str]] = {}
    for check in config.checks:
        for role in [getattr(check, "model", None), *getattr(check, "models", [])]:
            if role:
                roles.setdefault(role, []).append(check.id)
    return roles


def metric_sections(result: SubmissionResult, config: AssignmentConfig) -> list[dict]:
    """Per model: student vs reference for every measured quantity, and the checks it feeds."""
    metrics = result.metrics
    contract = config.model_names()
    roles = list(contract) + sorted((set(metrics.student) | set(metrics.reference)) - set(contract))
    checks = {c.id: c for c in result.checks}
    role_checks = _role_checks(config)
    sections = []
    for role in roles:
        student = metrics.student.get(role) or ModelFigures()
        reference = metrics.reference.get(role) or ModelFigures()
        rows = _quantity_rows(student, reference)
        related = [checks[i] for i in role_checks.get(role, []) if i in checks]
        if not rows and not related:
            continue
        sections.append({
            "role": role,
            "label": config.labels().get(role, role),
            "variable": contract.get(role, role),
            "measured": role in metrics.student,
            "anchor": False,
            "rows": rows,
            "checks": [check_row(c) for c in related],
        })
    tuned = config.tuned_model
    if metrics.reference_best is not None and tuned is not None:
        best_beta = fmt_number(metrics.reference_best_beta)
        sections.append({
            "role": tuned.role, "label": f"{tuned.label}: the reference at its own best β = {best_beta}",
            "variable": "", "measured": True, "anchor": True,
            "rows": _quantity_rows(ModelFigures(), metrics.reference_best), "checks": [],
        })
    return sections


def _quantity_rows(student: ModelFigures, reference: ModelFigures) -> list[dict]:
    return [
        {"label": label, "hint": hint, "student": fmt_number(getattr(student, field)),
         "reference": fmt_number(getattr(reference, field))}
        for field, label, hint in QUANTITIES
        if getattr(student, field) is not None or getattr(reference, field) is not None
    ]


def unit_rows(figures: KLUnitFigures | ReparamUnitFigures | None) -> list[dict]:
    """One row per figure of a unit check's record (KLUnitFigures, ReparamUnitFigures), or none."""
    if figures is None:
        return []
    return [{"name": name.replace("_", " "), "value": fmt_value(value) if isinstance(value, bool) else fmt_number(value)}
            for name, value in figures.model_dump().items()]


SIDES = {"student": "your model", "reference": "reference"}


def figure_caption(figure: FigureRef, config: AssignmentConfig) -> str:
    """samples of a model, student's side -> 'Samples — <its label>, your model. <what it shows>'."""
    qualifiers = [config.labels().get(figure.role, figure.role)] if figure.role else []
    if figure.side:
        qualifiers.append(SIDES[figure.side])
    title = figure.kind.replace("_", " ").capitalize()
    if qualifiers:
        title += " — " + ", ".join(qualifiers)
    shows = FIGURE_KINDS[figure.kind].format(histories=" and ".join(config.contract.histories.values()))
    return f"{title}. {shows}".strip()


def png_data_uri(path: Path) -> str | None:
    """The PNG at path as a data: URI, or None if it is missing, too big or not a PNG."""
    try:
        if path.stat().st_size > MAX_FIGURE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_items(result: SubmissionResult, out_dir: Path, config: AssignmentConfig) -> list[dict]:
    """Figures named in the record that exist next to it; a missing one is left out."""
    items = []
    for figure in result.figures:
        if Path(figure.file).name != figure.file:  # only files in out_dir itself, no paths
            continue
        uri = png_data_uri(out_dir / figure.file)
        if uri:
            items.append({"name": figure.name, "caption": figure_caption(figure, config), "uri": uri})
    return items


def answer_items(result: SubmissionResult, config: AssignmentConfig) -> list[dict]:
    parts = {q.id: q.part for q in config.questions}
    questions = {q.id: q.text for q in config.questions}
    items = []
    for answer in result.answers:
        text, dropped = cap_text(answer.text, MAX_ANSWER_CHARS)
        items.append({
            "id": answer.id,
            "part": parts.get(answer.id, ""),
            "question": questions.get(answer.id, ""),
            "found": answer.found,
            "html": markdown_to_html(text) if answer.found and text.strip() else Markup(""),
            "dropped": dropped,
            "words": answer.words,
            "limit": answer.limit,
            "over_limit": answer.over_limit,
            "over_by": max(answer.words - answer.limit, 0),
            "max_points": fmt_points(answer.max_points),
            "note": answer.note,
        })
    return items


LIBRARY_FRAME = re.compile(r"^File .*(site-packages|dist-packages|/lib/python3\.\d+/)")


def student_frames(traceback: str) -> str:
    """The traceback without the frames inside installed libraries (torch's module plumbing
    fills pages and tells a student nothing); the frames of their own cells stay."""
    frames = traceback.split("\n\n")
    kept = [f for f in frames if not LIBRARY_FRAME.match(f.lstrip())]
    dropped = len(frames) - len(kept)
    if dropped:
        kept.insert(min(1, len(kept)), f"({dropped} frame(s) inside libraries left out)")
    return "\n\n".join(kept)


def hint_html(hint: str | None):
    """A cell's hint (grader/hints.py) as HTML: escaped, with `code` spans set as code."""
    if not hint:
        return ""
    from markupsafe import Markup, escape

    text = str(escape(strip_ansi(hint)))
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", text))


def _cell_item(cell: CellRun, with_traceback: bool = True) -> dict:
    text = student_frames(strip_ansi(cell.traceback or "")) if with_traceback else ""
    traceback, dropped = cap_text(text, MAX_TRACEBACK_CHARS, keep="tail")
    head, _ = cap_text(cell.source_head.strip(), MAX_SOURCE_HEAD_CHARS)
    return {
        "index": cell.index,
        "status": cell.status,
        "seconds": fmt_seconds(cell.seconds),
        "source_head": head,
        "error": strip_ansi(cell.error or ""),
        "hint": hint_html(cell.hint),
        "traceback": traceback,
        "traceback_dropped": dropped,
    }


def failure_section(result: SubmissionResult) -> dict | None:
    """What went wrong, where, and which checks it cost; None for a graded run."""
    if result.status == "graded":
        return None
    errors = [cap_text(strip_ansi(e), MAX_ERROR_CHARS)[0] for e in result.errors[:MAX_ERRORS]]
    return {
        "status": result.status,
        "headline": STATUS_TEXT[result.status],
        "errors": errors,
        "errors_left_out": max(len(result.errors) - MAX_ERRORS, 0),
        # The first failure's traceback explains it; later cells usually fail because of it.
        "cells": [_cell_item(c, with_traceback=i == 0)
                  for i, c in enumerate(c for c in result.cells if c.status in FAILED_CELL)],
        "lost_checks": [c for c in result.checks if c.reason == "missing"],
    }


def staff_notes(result: SubmissionResult) -> list[str]:
    """Sandbox warnings, and problems of a run that was still graded (a failed run shows them above)."""
    notes = [f"Sandbox: {w}" for w in result.sandbox_warnings]
    if result.status == "graded":
        notes += [cap_text(strip_ansi(e), MAX_ERROR_CHARS)[0] for e in result.errors[:MAX_ERRORS]]
    return notes


def cell_rows(result: SubmissionResult) -> list[dict]:
    return [_cell_item(c) for c in result.cells[:MAX_CELLS]]


# --- staff's marks ---------------------------------------------------------------------------
#
# Where the marking database (OUT/marks.sqlite, grader.marking.store) has marks, a report shows
# them: per question the points, the rubric items applied, the adjustment, the comment and who
# marked; and the total. A report is "final" only when every question is marked and no mark is
# stale (its answer changed after it was marked: a regrade of a new notebook). A stale mark is
# still shown to the student, with a note that staff will look at it again and that the total
# is not final; staff see the stale marks listed in the summary (summary.pdf / summary.json) and
# under "Notes for the course staff" in the report. A submission without any mark gets the
# report it got before marking existed (written answers pending), byte for byte.


class AppliedItem(BaseModel):
    text: str
    points: float


class QuestionMarking(BaseModel):
    """One question's mark as the report shows it."""

    question: str
    marked: bool
    points: float = 0.0
    max_points: float = 0.0                 # of a marked question (an unmarked one's is in its Answer)
    items: list[AppliedItem] = []
    adjustment: float = 0.0
    comment: str = ""
    marker: str = ""
    stale: bool = False


class ReportMarking(BaseModel):
    """Staff's marks of one submission, with the rubric texts: what its report says of them.
    Its JSON is part of the report's stamp, so a changed mark redraws the PDF."""

    questions: dict[str, QuestionMarking]
    auto_points: float
    auto_max: float
    written_points: float
    written_max: float
    total: float
    total_max: float
    unmarked: list[str] = []
    unmarked_max: float = 0.0               # the points of the questions still to be marked
    stale: list[str] = []

    @property
    def final(self) -> bool:
        return not self.unmarked and not self.stale


class ClassMarking(BaseModel):
    """Every submission's final grade and the rubric items they refer to: one consistent read of
    the marking database, shared by the reports, the gradebook and the summary."""

    finals: dict[str, FinalGrade]           # by submission
    items: dict[int, RubricItem] = {}       # every rubric item (not deleted), by id

    def of(self, submission: str) -> ReportMarking | None:
        final = self.finals.get(submission)
        return report_marking(final, self.items) if final is not None else None


def report_marking(final: FinalGrade, items: dict[int, RubricItem]) -> ReportMarking | None:
    """The marks of final as its report shows them; None while none of its answers is marked."""
    if all(mark is None for mark in final.written.values()):
        return None
    questions = {}
    for question, mark in final.written.items():
        if mark is None:
            questions[question] = QuestionMarking(question=question, marked=False)
            continue
        questions[question] = QuestionMarking(
            question=question, marked=True, points=mark.points, max_points=mark.max_points,
            items=[AppliedItem(text=items[i].text, points=items[i].points) for i in mark.items if i in items],
            adjustment=mark.adjustment, comment=mark.comment, marker=mark.marker, stale=mark.stale)
    return ReportMarking(
        questions=questions, auto_points=final.auto_points, auto_max=final.auto_max,
        written_points=round(float(final.written_points), 6), written_max=final.written_max,
        total=round(final.total, 6), total_max=final.total_max, unmarked=final.unmarked, stale=final.stale,
        unmarked_max=round(final.written_max - sum(q.max_points for q in questions.values() if q.marked), 6))


def class_marking(store, results: list[tuple[str, SubmissionResult]]) -> ClassMarking:
    """Sync the results' answers into the store (a changed answer's mark turns stale), then read
    every final grade and the rubric."""
    from .marking.final import final_grades

    finals = final_grades(store, results)
    return ClassMarking(finals={f.submission: f for f in finals}, items=store.rubric_items())


def submission_marking(store, folder: str, result: SubmissionResult) -> ReportMarking | None:
    """One submission's marking, its answers synced first: what `grader grade` draws its PDF
    with, as each notebook is graded."""
    from .marking.final import final_grade

    store.sync_answers([(folder, result)])
    marks = {}
    for question in store.config.questions:
        mark = store.mark(result.submission, question.id)
        if mark is not None:
            marks[question.id] = {result.submission: mark}
    return report_marking(final_grade(result, marks, store.config), store.rubric_items())


def _signed(value: float) -> str:
    return ("+" if value > 0 else "−" if value < 0 else "±") + fmt_points(abs(value))


def marking_items(result: SubmissionResult, marking: ReportMarking | None) -> dict[str, dict]:
    """Per question id, what the answer's section says of its mark (empty without marking)."""
    if marking is None:
        return {}
    items = {}
    for question, mark in marking.questions.items():
        items[question] = {
            "marked": mark.marked, "points": fmt_points(mark.points), "max": fmt_points(mark.max_points),
            "applied": [{"text": i.text, "points": _signed(i.points)} for i in mark.items],
            "adjustment": _signed(mark.adjustment) if mark.adjustment else "",
            "comment": mark.comment.strip(), "marker": mark.marker, "stale": mark.stale,
        }
    return items


def marking_staff_notes(marking: ReportMarking | None) -> list[str]:
    if marking is None:
        return []
    return [f"Marking: the answer to {q} changed after {marking.questions[q].marker or 'staff'} marked it; "
            f"look at it again (the mark still counts)" for q in marking.stale]


def report_stamp(marking: ReportMarking | None) -> str:
    """What a PDF was drawn from besides its result.json: the rendering code and the marks."""
    if marking is None:
        return versioning.report_digest()
    marks = hashlib.sha256(marking.model_dump_json().encode()).hexdigest()
    return f"{versioning.report_digest()}+marks:{marks}"


def report_is_current(out_dir: Path, marking: ReportMarking | None) -> bool:
    """A PDF is current when it is newer than its result.json and was drawn by this rendering
    code from these marks."""
    pdf, stamp = Path(out_dir) / REPORT_PDF, Path(out_dir) / REPORT_STAMP
    try:
        if pdf.stat().st_mtime < (Path(out_dir) / RESULT_JSON).stat().st_mtime:
            return False
        return stamp.read_text() == report_stamp(marking)
    except OSError:
        return False


def write_report(
    result: SubmissionResult, out_dir: Path, config: AssignmentConfig, marking: ReportMarking | None = None
) -> Path:
    """render_report, then the stamp that says what it was drawn from."""
    pdf = render_report(result, out_dir, config, marking)
    atomic.write_text(Path(out_dir) / REPORT_STAMP, report_stamp(marking))
    return pdf


# --- HTML and PDF --------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_number, pts=fmt_points, seconds=fmt_seconds, date=fmt_date)
    return env


def _stylesheet() -> Markup:
    return Markup((TEMPLATES_DIR / STYLESHEET).read_text(encoding="utf-8"))


def build_report_html(
    result: SubmissionResult, out_dir: Path | None = None, config: AssignmentConfig | None = None,
    marking: ReportMarking | None = None,
) -> str:
    """The report as one self-contained HTML string (figures from out_dir as data: URIs), with
    staff's marks when there are any."""
    config = config or load_config()
    parameters = parameter_rows(result, config)
    context = {
        "css": _stylesheet(),
        "assignment": config.assignment.name,
        "r": result,
        "status_label": STATUS_LABEL[result.status],
        "status_text": STATUS_TEXT[result.status],
        "parameters": parameters,
        "reduced": [p for p in parameters if p["reduced"]],
        "checks": [check_row(c) for c in result.checks],
        "answer_points_total": fmt_points(config.max_answer_points),
        "auto_points_total": fmt_points(config.max_auto_points),
        "metric_sections": metric_sections(result, config),
        "mean_image_mse": result.metrics.mean_image_mse,
        "kl_unit": unit_rows(result.metrics.kl_unit),
        "reparam_unit": unit_rows(result.metrics.reparam_unit),
        "figures": figure_items(result, Path(out_dir), config) if out_dir else [],
        "answers": answer_items(result, config),
        "failure": failure_section(result),
        "cells": cell_rows(result),
        "staff_notes": staff_notes(result) + marking_staff_notes(marking),
        "marking": marking,
        "marks": marking_items(result, marking),
        "cells_left_out": max(len(result.cells) - MAX_CELLS, 0),
    }
    return _environment().get_template(REPORT_TEMPLATE).render(context)


def html_to_pdf(html: str, path: Path) -> Path:
    """Print HTML to a PDF file atomically; only data: URLs are ever fetched."""
    # hinting=True keeps the fonts' hinting tables when WeasyPrint subsets them: stripping them is
    # about 0.13 s of a report's ~0.85 s on one CPU; the PDF is ~12% (30 KB) bigger, its glyphs the same.
    pdf = HTML(string=html, base_url=None, url_fetcher=DataOnlyFetcher()).write_pdf(hinting=True)
    try:
        atomic.write_bytes(Path(path), pdf)
        return Path(path)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the PDF ({exc.strerror})") from exc


def render_report(
    result: SubmissionResult, out_dir: Path, config: AssignmentConfig | None = None,
    marking: ReportMarking | None = None,
) -> Path:
    """Write out_dir/report.pdf for one submission; figures are read from out_dir."""
    out_dir = Path(out_dir)
    return html_to_pdf(build_report_html(result, out_dir, config, marking), out_dir / REPORT_PDF)


# --- the class summary -------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(statistics.fmean(values), 3) if values else None


TOP_ITEMS = 5   # rubric items listed per question in the summary


def _spread(values: list[float]) -> Spread:
    if not values:
        return Spread()
    return Spread(mean=round(statistics.fmean(values), 3), std=round(statistics.pstdev(values), 3),
                  min=min(values), max=max(values))


def marking_summary(results: list[SubmissionResult], config: AssignmentConfig, marking: ClassMarking) -> MarkingSummary:
    """summary.json's "marking": per question how many answers are marked, the spread of their
    staff points (population standard deviation), the rubric items applied most, the stale marks;
    per submission its written points and total."""
    finals = [marking.finals[r.submission] for r in results if r.submission in marking.finals]
    questions = []
    for question in config.questions:
        marks = [mark for f in finals if (mark := f.written.get(question.id)) is not None]
        counts: dict[int, int] = {}
        for mark in marks:
            for item in mark.items:
                counts[item] = counts.get(item, 0) + 1
        top = sorted((i for i in counts if i in marking.items), key=lambda i: (-counts[i], marking.items[i].position, i))
        questions.append(QuestionMarks(
            id=question.id, max_points=question.points, marked=len(marks),
            unmarked=len(finals) - len(marks), stale=sum(1 for m in marks if m.stale),
            points=_spread([m.points for m in marks]),
            top_items=[AppliedCount(text=marking.items[i].text, points=marking.items[i].points, count=counts[i])
                       for i in top[:TOP_ITEMS]],
        ))
    return MarkingSummary(
        complete=sum(1 for f in finals if f.complete),
        questions=questions,
        stale=[StaleMark(submission=f.submission, question=q) for f in finals for q in f.stale],
        rows=[WrittenPoints(submission=f.submission, written=round(float(f.written_points), 6),
                            total=round(f.total, 6), total_max=f.total_max, unmarked=f.unmarked, stale=f.stale)
              for f in finals],
    )


def build_summary(
    results: list[SubmissionResult], config: AssignmentConfig, marking: ClassMarking | None = None
) -> ClassSummary:
    """The numbers of summary.json: statuses, score spread, per-check and per-question counts,
    and, once staff mark (a marking database in OUT), the marks' statistics under "marking"."""
    results = sorted(results, key=lambda r: r.submission)
    statuses = {status: 0 for status in STATUS_TEXT}
    for result in results:
        statuses[result.status] += 1
    scores = [r.score for r in results]

    check_ids = [c.id for c in config.checks]
    check_ids += sorted({c.id for r in results for c in r.checks} - set(check_ids))
    titles = {c.id: c.title for c in config.checks}
    checks = []
    for check_id in check_ids:
        found = [c for r in results for c in r.checks if c.id == check_id]
        assessed = [c for c in found if c.assessable]
        checks.append(CheckSummary(
            id=check_id,
            title=titles.get(check_id) or (found[0].title if found else check_id),
            max_points=found[0].max_points if found else next(c.points for c in config.checks if c.id == check_id),
            mean_points=_mean(c.points for c in assessed),
            lost_points=sum(1 for c in assessed if c.points < c.max_points - 1e-9),
            not_assessable=len(found) - len(assessed),
            not_scored=len(results) - len(found),
        ))

    questions = []
    for question in config.questions:
        answers = [a for r in results for a in r.answers if a.id == question.id]
        answered = [a for a in answers if a.found]
        questions.append(QuestionSummary(
            id=question.id,
            part=question.part,
            found=len(answered),
            missing=len(results) - len(answered),
            over_limit=sum(1 for a in answered if a.over_limit),
        ))

    size = _size_parameters(config)
    defaults = config.parameters.defaults()
    reduced = [r.submission for r in results
               if any(n in size and _is_reduced(v, defaults.get(n)) for n, v in r.parameters.items())]
    return ClassSummary(
        assignment=config.assignment.name,
        submissions=len(results),
        statuses=statuses,
        max_score=config.max_auto_points,
        answer_points_pending=config.max_answer_points,
        score=ScoreSpread(
            mean=_mean(scores),
            median=round(statistics.median(scores), 3) if scores else None,
            min=min(scores) if scores else None,
            max=max(scores) if scores else None,
        ),
        checks=checks,
        questions=questions,
        reduced_parameters=reduced,
        marking=marking_summary(results, config, marking) if marking is not None else None,
        rows=[
            SubmissionRow(submission=r.submission, status=r.status, score=r.score, max_score=r.max_score,
                          answer_points_pending=r.answer_points_pending,
                          answers_found=sum(1 for a in r.answers if a.found),
                          first_error=r.errors[0][:200] if r.errors else "")
            for r in results
        ],
    )


def build_summary_html(summary: ClassSummary, histogram: Path | None, graded_at: str) -> str:
    context = {
        "css": _stylesheet(),
        "s": summary,
        "histogram": png_data_uri(histogram) if histogram else None,
        "graded_at": graded_at,
        "grader_version": __version__,
        "status_label": STATUS_LABEL,
        "written_by": {row.submission: row for row in summary.marking.rows} if summary.marking else {},
    }
    return _environment().get_template(SUMMARY_TEMPLATE).render(context)


def render_summary(
    results: list[SubmissionResult], out_dir: Path, config: AssignmentConfig | None = None,
    marking: ClassMarking | None = None,
) -> tuple[Path, Path]:
    """Write out_dir/summary.pdf and out_dir/summary.json for the whole class."""
    config = config or load_config()
    out_dir = Path(out_dir)
    summary = build_summary(results, config, marking)
    histogram = None
    if results:
        histogram = score_histogram_png(out_dir / SUMMARY_HISTOGRAM, [r.score for r in results],
                                        config.max_auto_points)
    # The latest grading time, not the clock: rerendering gives the same bytes.
    graded_at = max((r.graded_at for r in results if r.graded_at), default="")
    pdf = html_to_pdf(build_summary_html(summary, histogram, graded_at), out_dir / SUMMARY_PDF)
    atomic.write_text(out_dir / SUMMARY_JSON, summary.to_json())
    return pdf, out_dir / SUMMARY_JSON


def load_result(path: Path) -> SubmissionResult:
    try:
        return SubmissionResult.model_validate_json(Path(path).read_bytes())
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the result ({exc.strerror})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ReportError(f"{path}: not a valid result record: {where}: {first['msg']}") from exc


def write_gradebook(
    path: Path, results: list[SubmissionResult], config: AssignmentConfig, marking: ClassMarking | None = None
) -> Path:
    """OUT/gradebook.csv, written by `grader grade` and `grader report` alike: per submission its
    status, automatic points and points per check, then staff's points per question (empty while
    unmarked), the written points, the total (automatic + written) of total_max, and the marking
    state ("complete", or "unmarked: Q2, Q4", with "; stale: Q3" for marks whose answer changed)."""
    from .marking.final import final_grade

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    check_ids = [c.id for c in config.checks]
    question_ids = [q.id for q in config.questions]
    writer.writerow(["submission", "status", "score", "max_score", *check_ids,
                     *question_ids, "written", "total", "total_max", "marking"])
    for r in sorted(results, key=lambda r: r.submission):
        points = {c.id: (c.points if c.assessable else "n/a") for c in r.checks}
        final = (marking.finals.get(r.submission) if marking else None) or final_grade(r, {}, config)
        written = {q: ("" if m is None else m.points) for q, m in final.written.items()}
        writer.writerow([r.submission, r.status, r.score, r.max_score, *(points.get(i, "") for i in check_ids),
                         *(written.get(q, "") for q in question_ids), round(float(final.written_points), 6),
                         round(final.total, 6), final.total_max, final.marking_status])
    atomic.write_text(path, buffer.getvalue())
    return Path(path)


def existing_marking(out_dir: Path, config: AssignmentConfig, results: list[tuple[str, SubmissionResult]]) -> ClassMarking | None:
    """OUT's marks with the results' answers synced in; None when OUT has no marking database
    (graded before marking existed: its reports stay as they were)."""
    from .marking.store import DB_NAME, MarkStore

    if not (Path(out_dir) / DB_NAME).exists():
        return None
    return class_marking(MarkStore(out_dir, config), results)


def rerender(out_dir: Path, config: AssignmentConfig | None = None) -> list[Path]:
    """Rebuild OUT/<id>/report.pdf from each OUT/<id>/result.json and staff's marks (the marking
    database, synced first), then the class summary and gradebook.csv.

    A result.json that cannot be read is skipped and named in the ReportError raised at the
    end, after every readable one has been rendered.
    """
    from .marking.final import load_results

    config = config or load_config()
    out_dir = Path(out_dir)
    loaded, problems = load_results(out_dir)
    if not loaded and not problems:
        raise ReportError(f"{out_dir}: no */{RESULT_JSON} to render")
    marking = existing_marking(out_dir, config, loaded)
    written = []
    for folder, result in loaded:
        written.append(write_report(result, out_dir / folder, config,
                                    marking.of(result.submission) if marking else None))
    results = [result for _, result in loaded]
    written.extend(render_summary(results, out_dir, config, marking))
    write_gradebook(out_dir / GRADEBOOK_CSV, results, config, marking)
    if problems:
        raise ReportError("some results could not be rendered:\n  " + "\n  ".join(problems))
    return written


__all__ = [
    "ClassMarking", "DataOnlyFetcher", "ReportError", "ReportMarking", "build_report_html", "build_summary",
    "class_marking", "html_to_pdf", "render_report", "render_summary", "rerender", "submission_marking",
    "write_gradebook", "write_report",
]
