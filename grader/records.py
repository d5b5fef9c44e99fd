"""Plain typed records the pipeline stages hand each other (and write as result.json).

execute -> ExecutionResult; probe -> ProbeData (ModelOutputs per role, in grader/probe.py); measure ->
StudentMeasurement (Metrics, what could not be measured, the samples' captions); score ->
CheckResult list; answers -> Answer list; grade -> SubmissionResult; report reads that and
writes the class's ClassSummary (summary.json).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # SampleCaptions.of takes the classifier's tensor; the report must not import torch
    import torch

Status = Literal["graded", "error", "timeout", "crashed", "invalid"]
CellStatus = Literal["ok", "error", "timeout", "crashed", "not_run"]


class CellRun(BaseModel):
    index: int                      # position in the submitted notebook (injected cells excluded)
    status: CellStatus
    seconds: float = 0.0
    error: str | None = None        # "NameError: name 'x' is not defined"
    traceback: str | None = None    # plain text, ANSI colour codes removed
    source_head: str = ""           # first line of the cell, to name it in reports
    hint: str | None = None         # what to change when the grader's environment caused the error (hints.py)


class ExecutionResult(BaseModel):
    status: Status
    cells: list[CellRun] = []
    errors: list[str] = []          # human-readable, one per problem
    seconds: float = 0.0
    executed_notebook: str | None = None   # path of executed.ipynb
    probe_file: str | None = None          # npz written by the probe, None if it never ran
    probe_error: str | None = None         # why the probe could not hand over something
    sandbox_warnings: list[str] = []       # protections the host could not give
    device: str = ""                       # the kernel's device: "cpu" or "cuda:<UUID> (<name>)"


# Why a check has the points it has, as data for the report (which never reads the message):
#   measured        scored from the measured figures
#   missing         zero: a part of the notebook it needs could not be measured (CheckResult.missing)
#   not_assessable  neither awarded nor withheld: the reference has not learned at these parameters
#   gated           zero although measured: a precondition the check states failed (no noise
#                   added, a decoder that learned nothing, memorised samples)
CheckReason = Literal["measured", "missing", "not_assessable", "gated"]


class CheckResult(BaseModel):
    id: str
    title: str
    points: float
    max_points: float
    message: str                    # what was measured and what was expected
    reason: CheckReason
    missing: list[str] = []         # the parts that could not be measured (a model's role, "best_beta")
    assessable: bool = True         # False: reference not learned at these parameters
    band: str = ""                  # e.g. "full credit <= 0.044; zero at >= 0.067"


# How grader.score worded an unmeasured part before checks carried their reason: read only to
# convert a result.json written then (SubmissionResult._checks_from_older_records).
_OLDER_MISSING_WORDING = re.compile(r"could not be measured|not found|missing|not defined", re.IGNORECASE)


def _older_check_reason(check: dict) -> CheckReason:
    if not check.get("assessable", True):
        return "not_assessable"
    if check.get("points") == 0 and _OLDER_MISSING_WORDING.search(check.get("message", "")):
        return "missing"
    return "measured"


class Answer(BaseModel):
    id: str
    found: bool
    text: str = ""
    words: int = 0
    limit: int
    max_points: float
    over_limit: bool = False
    note: str = ""                  # e.g. "question not found in the notebook"


class ModelFigures(BaseModel):
    """Numbers measured for one model (student's or reference's); None where not measurable."""

    mse: float | None = None                 # per pixel, on the fixed test images
    kl: float | None = None                  # nats per image
    elbo: float | None = None                # -(rec + kl) per image, sum-of-squares likelihood
    sample_confidence: float | None = None   # classifier's mean max-probability on prior samples
    sample_coverage: float | None = None     # classes present among confident samples / 10
    sample_fid: float | None = None          # Fréchet distance on classifier features vs test
    interp_accept: float | None = None       # share of intermediate images accepted
    interp_smoothness: float | None = None   # largest step / path length (lower is smoother)
    interp_endpoints: float | None = None    # share of paths whose ends decode to their own labels
    sample_memorised: float | None = None    # share of prior samples that are copies of MNIST images


class KLUnitFigures(BaseModel):
    """The student's kl_divergence against the closed form on fixed rows."""

    rows: int
    max_rel_error: float | None
    student_mean: float | None
    analytic_mean: float | None


class ReparamUnitFigures(BaseModel):
    """Statistics of the student's reparameterize draws of one fixed (mu, sigma)."""

    mean_error: float | None                 # |mean - mu| / sigma, averaged
    std_error: float | None                  # |std / sigma - 1|, averaged
    no_noise: bool                           # every draw equal to mu
    draws: int


class Metrics(BaseModel):
    student: dict[str, ModelFigures] = {}     # [[models]] role -> figures
    reference: dict[str, ModelFigures] = {}
    mean_image_mse: float | None = None       # the floor: predicting the mean training image
    kl_unit: KLUnitFigures | None = None
    reparam_unit: ReparamUnitFigures | None = None
    reference_good_betas: list[float] = []
    reference_best_beta: float | None = None
    # The reference's tuned VAE at its own best β (reference_best_beta): the anchor for "a fixed-β
    # VAE behaves as that β should", whatever β the student chose (reference[tuned role] is the
    # reference at the student's β). None in results written before it was measured.
    reference_best: ModelFigures | None = None


# --- The measure stage's output (grader/measure.py): what scoring and the figures read ----------


@dataclass
class SampleCaptions:
    """The classifier's verdict on each of a model's prior samples, from the classification the
    sample checks used: the figures caption the samples they show with it."""

    labels: np.ndarray        # [N] int64, the most probable digit
    confidences: np.ndarray   # [N] float32, its probability

    @classmethod
    def of(cls, probs: torch.Tensor) -> SampleCaptions:
        confidence, label = probs.max(dim=1)
        return cls(labels=label.numpy(), confidences=confidence.numpy())


@dataclass
class Measurement:
    """What scoring needs: the metrics plus why a part could not be measured."""

    metrics: Metrics
    missing: dict[str, str] = field(default_factory=dict)   # part -> reason (probe errors, ...)
    best_beta: float | None = None
    assessable: bool = True
    assessable_reason: str = ""


@dataclass
class StudentMeasurement(Measurement):
    """What scoring needs, plus what the figures reuse: the student's samples' captions."""

    captions: dict[str, SampleCaptions] = field(default_factory=dict)


FigureKind = Literal["reconstructions", "samples", "interpolation", "training_curves"]
FigureSide = Literal["student", "reference"]


class FigureRef(BaseModel):
    """One PNG a report shows, written next to result.json (grader.result_figures)."""

    kind: FigureKind
    role: str | None = None         # the model shown; None: every model (the training curves)
    side: FigureSide | None = None  # one side of a student/reference pair drawn as two figures;
                                    # None: one figure (both sides in it, or the student's records)
    file: str                       # PNG file name in the folder of result.json

    @property
    def name(self) -> str:
        """How the config's evidence lists name it: kind, role, side joined ("samples_ae_student")."""
        return "_".join(part for part in (self.kind, self.role, self.side) if part)

    @classmethod
    def from_name(cls, name: str, file: str) -> FigureRef:
        """The record of a figure known by its name only (result.json before FigureRef)."""
        kind = next((k for k in FIGURE_KINDS if name == k or name.startswith(k + "_")), None)
        if kind is None:
            raise ValueError(f"figure {name!r} is of no known kind ({', '.join(FIGURE_KINDS)})")
        rest = name[len(kind) + 1:]
        side = next((s for s in FIGURE_SIDES if rest == s or rest.endswith("_" + s)), None)
        role = rest[: -len(side)].rstrip("_") if side else rest
        return cls(kind=kind, role=role or None, side=side, file=file)


FIGURE_KINDS: tuple[FigureKind, ...] = get_args(FigureKind)
FIGURE_SIDES: tuple[FigureSide, ...] = get_args(FigureSide)


class EpochLosses(BaseModel):
    """One epoch of a training history, as the handout asks for it: {"epoch", "rec", "kl"}."""

    epoch: float
    rec: float | None = None        # reconstruction loss; None where the entry had no number
    kl: float | None = None


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _epochs(history: object) -> object:
    """A kernel's history (anything JSON) as EpochLosses, read as leniently as the training curves
    draw it: an entry that is not a mapping is left out, a missing or odd epoch is the entry's
    position, a loss that is not a finite number is None; what is not a list has no entries."""
    if not isinstance(history, (list, tuple)):
        return []
    entries = []
    for position, entry in enumerate(history):
        if isinstance(entry, EpochLosses):
            entries.append(entry)
        elif isinstance(entry, dict):
            epoch = entry.get("epoch", position)
            entries.append(EpochLosses(epoch=float(epoch) if isinstance(epoch, (int, float)) else float(position),
                                       rec=_number(entry.get("rec")), kl=_number(entry.get("kl"))))
    return entries


class TrainingHistories(BaseModel):
    """The training histories the notebook kept, by model kind: what the training curves draw."""

    ae: list[EpochLosses] | None = None          # None: the notebook kept no autoencoder history
    vae: dict[str, list[EpochLosses]] = {}       # by β, as the notebook keyed them

    @field_validator("ae", mode="before")
    @classmethod
    def _ae_epochs(cls, history: object) -> object:
        return None if history is None else _epochs(history)

    @field_validator("vae", mode="before")
    @classmethod
    def _vae_epochs(cls, histories: object) -> object:
        if not isinstance(histories, dict):
            return {}
        return {str(beta): _epochs(history) for beta, history in histories.items()}


class SubmissionResult(BaseModel):
    submission: str
    status: Status
    score: float = 0.0
    max_score: float = 0.0
    answer_points_pending: float = 0.0        # given by staff, not zero
    overrides: dict[str, int | float | str | None] = {}
    parameters: dict[str, int | float | str | None] = {}
    checks: list[CheckResult] = []
    metrics: Metrics = Field(default_factory=Metrics)
    answers: list[Answer] = []
    best_beta: float | None = None
    best_beta_source: str | None = None       # "kernel" or "markdown"
    cells: list[CellRun] = []
    errors: list[str] = []
    sandbox_warnings: list[str] = []
    figures: list[FigureRef] = []             # the PNGs next to result.json, in the order drawn
    histories: TrainingHistories = Field(default_factory=TrainingHistories)
    grader_version: str = ""
    device: str = ""
    graded_at: str = ""
    seconds: float = 0.0
    cache_key: str = ""

    def figure(self, name: str) -> FigureRef | None:
        """The figure of that name (FigureRef.name, as the config's evidence lists say), if drawn."""
        return next((f for f in self.figures if f.name == name), None)

    @field_validator("figures", mode="before")
    @classmethod
    def _figures_from_older_records(cls, figures: object) -> object:
        """A result.json written before FigureRef held {name: file name}; its names say the rest."""
        if isinstance(figures, dict):
            return [FigureRef.from_name(str(name), file) for name, file in figures.items()]
        return figures

    @field_validator("checks", mode="before")
    @classmethod
    def _checks_from_older_records(cls, checks: object) -> object:
        """A result.json written before checks carried their reason gets it from the wording
        of that time, so `grader report` still names the checks a failure cost."""
        if not isinstance(checks, list):
            return checks
        return [{**c, "reason": _older_check_reason(c)} if isinstance(c, dict) and "reason" not in c else c
                for c in checks]


# --- Marking of the written answers (grader/marking) -------------------------------------------


class RubricItem(BaseModel):
    """One rubric item of a question, as the marking database holds it."""

    id: int
    question: str
    position: int                   # 1-based order on the page; keys 1-9 apply the first nine
    text: str
    points: float                   # added (positive) or deducted (negative)


class Mark(BaseModel):
    """Staff's mark of one answer. `points` is derived from the rubric as it is now, so changing
    an item's points re-scores every answer it is applied to."""

    submission: str
    question: str
    items: list[int] = []           # ids of the rubric items applied
    adjustment: float = 0.0         # free points on top of the items
    comment: str = ""
    points: float = 0.0             # within 0..max_points
    max_points: float = 0.0
    marker: str = ""                # who changed it last
    marked_at: str = ""             # when (ISO 8601, UTC)
    version: int = 0                # bumped on every change; a stale version is refused
    stale: bool = False             # the answer's text changed since it was marked


class FinalGrade(BaseModel):
    """A submission's automatic points and staff marks together: what the final PDF, the
    gradebook and the LMS export say."""

    submission: str
    status: str
    auto_points: float
    auto_max: float
    written: dict[str, Mark | None] = {}   # question id -> its mark, None while unmarked
    written_max: float = 0.0
    unmarked: list[str] = []               # question ids without a mark
    stale: list[str] = []                  # question ids whose answer changed since marking

    @property
    def written_points(self) -> float:
        return sum(m.points for m in self.written.values() if m is not None)

    @property
    def total(self) -> float:
        return self.auto_points + self.written_points

    @property
    def total_max(self) -> float:
        return self.auto_max + self.written_max

    @property
    def complete(self) -> bool:
        return not self.unmarked

    @property
    def marking_status(self) -> str:
        """complete, or what is still open: "unmarked: Q2, Q4; stale: Q3"."""
        parts = []
        if self.unmarked:
            parts.append("unmarked: " + ", ".join(self.unmarked))
        if self.stale:
            parts.append("stale: " + ", ".join(self.stale))
        return "; ".join(parts) or "complete"


# --- The class summary (grader/report.py writes it as summary.json) -----------------------------


class Spread(BaseModel):
    """Mean, standard deviation (of the class, not of a sample) and range; None without values."""

    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None


class ScoreSpread(BaseModel):
    mean: float | None = None
    median: float | None = None
    min: float | None = None
    max: float | None = None


class CheckSummary(BaseModel):
    id: str
    title: str
    max_points: float
    mean_points: float | None       # over the submissions where it was assessable
    lost_points: int                # submissions with less than full marks on it
    not_assessable: int
    not_scored: int                 # submissions whose record lacks the check


class QuestionSummary(BaseModel):
    id: str
    part: str
    found: int
    missing: int
    over_limit: int


class SubmissionRow(BaseModel):
    submission: str
    status: Status
    score: float
    max_score: float
    answer_points_pending: float
    answers_found: int
    first_error: str                # the first 200 characters of the first error, or ""


class AppliedCount(BaseModel):
    """A rubric item and how many answers it was applied to."""

    text: str
    points: float
    count: int


class QuestionMarks(BaseModel):
    id: str
    max_points: float
    marked: int
    unmarked: int
    stale: int
    points: Spread                  # of the marked answers' staff points
    top_items: list[AppliedCount] = []


class StaleMark(BaseModel):
    submission: str
    question: str


class WrittenPoints(BaseModel):
    submission: str
    written: float
    total: float
    total_max: float
    unmarked: list[str] = []
    stale: list[str] = []


class MarkingSummary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    complete: int                   # submissions with every question marked
    questions: list[QuestionMarks] = []
    stale: list[StaleMark] = []
    rows: list[WrittenPoints] = Field(default=[], alias="list")   # per submission


class ClassSummary(BaseModel):
    """summary.json: statuses, score spread, per-check and per-question counts, staff's marks."""

    model_config = ConfigDict(populate_by_name=True)

    assignment: str
    submissions: int
    statuses: dict[str, int]        # every status, in the order the report names them
    max_score: float
    answer_points_pending: float
    score: ScoreSpread
    checks: list[CheckSummary] = []
    questions: list[QuestionSummary] = []
    reduced_parameters: list[str] = []   # submissions run with less training than the defaults
    marking: MarkingSummary | None = None   # None while OUT has no marking database
    rows: list[SubmissionRow] = Field(default=[], alias="list")

    def to_json(self) -> str:
        """summary.json's text (keys as the report has always written them: "list" for rows)."""
        return json.dumps(self.model_dump(by_alias=True), indent=2, ensure_ascii=False) + "\n"
