"""What of the student's own work a marker sees beside an answer in `grader mark`.

`question_evidence` gathers, for one submission and one question, what `[questions.evidence]` of
the config names: the grader's figures (result.figures), measured numbers (student beside
reference) and the notebook's code cells whose source matches a pattern, with the outputs the
student saved in the submitted notebook (OUT/<folder>/submitted.ipynb) beside the outputs of the
grader's re-run (OUT/<folder>/executed.ipynb).

Notebook outputs are untrusted: only plain text (streams, text/plain, an error's name and value,
ANSI codes removed, length capped) and PNG images (base64 checked, PNG signature checked, size
capped, as data: URIs) come out of here; HTML, SVG, JavaScript and every other type never do.

Parsed notebooks are cached by (path, mtime, size) in a small LRU, so that stepping through the
answers of one question reads each notebook once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..config import AssignmentConfig, Question
from ..execute import EXECUTED_NOTEBOOK, SUBMISSION_COPY
from ..inject import INJECTED_TAG
from ..records import ModelFigures, SubmissionResult
from ..report import (
    QUANTITIES,
    figure_caption,
    fmt_number,
    png_data_uri,
    strip_ansi,
)

MAX_TEXT_CHARS = 4_000            # one text item as shown (head and tail kept: a log's end says most)
MAX_COMPARED_CHARS = 200_000      # the text of one cell that the comparison reads
MAX_IMAGE_BYTES = 4 << 20         # one PNG output, decoded
MAX_ITEMS_PER_CELL = 30           # outputs shown per cell; the rest are counted in a note
MAX_CELLS_PER_PATTERN = 3         # cells shown per pattern (the first matches)
MAX_SOURCE_CHARS = 3_000
# Two numbers of a text output agree when they differ by at most this share of the larger (a
# re-run trains again: its losses differ a little from the saved ones, which is not an edit).
NUMBER_RTOL = 0.05
NUMBER_ATOL = 1e-6
CACHE_SIZE = 16

NOT_KEPT = "the submitted notebook was not kept by this grader version: only the re-run's outputs are shown"
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|\b(?:nan|[-+]?inf)\b", re.IGNORECASE)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class OutputItem(Frozen):
    """One output of a cell, safe to display: plain text, an error or a PNG."""

    kind: Literal["text", "error", "image", "omitted"]
    text: str = ""      # text: the output; error: "Name: value"; omitted: what was left out and why
    uri: str = ""       # image: data:image/png;base64,...


class FigureEvidence(Frozen):
    name: str
    caption: str
    uri: str


class MetricEvidence(Frozen):
    key: str                        # "<role>.<figure>", as in the config
    role: str
    field: str
    label: str                      # "KL divergence (nats per image) — VAE, β = 0"
    hint: str                       # "lower is better", or ""
    student: str                    # formatted ("—" when not measured)
    reference: str
    student_value: float | None = None
    reference_value: float | None = None


class CellEvidence(Frozen):
    pattern: str                    # the config's regex that matched
    index: int                      # position in the submitted notebook (injected cells excluded), as CellRun.index
    source: str                     # the cell's source (capped)
    saved: list[OutputItem] | None  # as the student saved them; None when the submitted notebook was not kept
    saved_execution_count: int | None = None
    rerun: list[OutputItem] | None  # as the grader's re-run produced them; None without an executed notebook
    rerun_status: str | None = None  # the re-run's CellRun.status (ok, error, timeout, crashed, not_run)
    differs: bool = False
    reasons: list[str] = []         # why differs is true, in words


class QuestionEvidence(Frozen):
    folder: str
    question: str
    figures: list[FigureEvidence] = []
    missing_figures: list[str] = []  # named in the config, but the result has no such figure (or its file is unusable)
    metrics: list[MetricEvidence] = []
    cells: list[CellEvidence] = []
    unmatched_cells: list[str] = []  # patterns that matched no code cell
    saved_kept: bool = False         # OUT/<folder>/submitted.ipynb was there and readable
    out_of_order: bool = False       # the saved notebook's execution counts do not increase
    notes: list[str] = []            # notebook-level remarks, in words


def question_evidence(
    out_dir: Path, folder: str, result: SubmissionResult, question: Question, config: AssignmentConfig
) -> QuestionEvidence:
    """The evidence of `question` for the submission graded into OUT/<folder>."""
    submission_dir = Path(out_dir) / folder
    figures, missing = _figures(submission_dir, result, question, config)
    saved, saved_problem = _load(submission_dir / SUBMISSION_COPY)
    rerun, rerun_problem = _load(submission_dir / EXECUTED_NOTEBOOK)
    notes = []
    if saved_problem:
        notes.append(saved_problem)
    if rerun_problem:
        notes.append(rerun_problem.replace("the notebook", "the grader's re-run"))
    disorder = _execution_disorder(saved) if saved else None
    if disorder:
        notes.append(disorder)
    cells, unmatched = _cells(question.evidence.cells, saved, rerun, result)
    return QuestionEvidence(
        folder=folder, question=question.id, figures=figures, missing_figures=missing,
        metrics=_metrics(result, question, config), cells=cells, unmatched_cells=unmatched,
        saved_kept=saved is not None, out_of_order=disorder is not None, notes=notes,
    )


# --- figures and metrics -----------------------------------------------------------------------


def _figures(submission_dir: Path, result: SubmissionResult, question: Question,
             config: AssignmentConfig) -> tuple[list[FigureEvidence], list[str]]:
    found, missing = [], []
    for name in question.evidence.figures:
        figure = result.figure(name)
        # only a plain PNG file next to result.json: a name with a path in it is not followed
        uri = png_data_uri(submission_dir / figure.file) if figure and Path(figure.file).name == figure.file else None
        if figure and uri:
            found.append(FigureEvidence(name=name, caption=figure_caption(figure, config), uri=uri))
        else:
            missing.append(name)
    return found, missing


def _metrics(result: SubmissionResult, question: Question, config: AssignmentConfig) -> list[MetricEvidence]:
    labels = {name: (label, hint) for name, label, hint in QUANTITIES}
    models = config.labels()
    rows = []
    for key in question.evidence.metrics:
        role, _, name = key.partition(".")
        label, hint = labels.get(name, (name.replace("_", " "), ""))
        student = getattr(result.metrics.student.get(role) or ModelFigures(), name, None)
        reference = getattr(result.metrics.reference.get(role) or ModelFigures(), name, None)
        rows.append(MetricEvidence(
            key=key, role=role, field=name, label=f"{label} — {models.get(role, role)}", hint=hint,
            student=fmt_number(student), reference=fmt_number(reference),
            student_value=student, reference_value=reference,
        ))
    return rows


# --- notebooks ---------------------------------------------------------------------------------


class ParsedCell(Frozen):
    """A code cell of a notebook, its outputs already made safe."""

    index: int                      # position among the notebook's cells, injected ones excluded
    source: str                     # whole: patterns are matched on it
    execution_count: int | None
    items: tuple[OutputItem, ...]
    error_names: tuple[str, ...]    # ename of each error output
    compared_lines: tuple[str, ...]  # stdout, text/plain and error text, normalised (see _normalise)
    image_digests: tuple[str, ...]  # sha256 of each PNG output's base64 text


class ParsedNotebook(Frozen):
    cells: tuple[ParsedCell, ...]


def _load(path: Path) -> tuple[ParsedNotebook | None, str | None]:
    """The parsed notebook at path (cached while its mtime and size stay), or why there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.name == SUBMISSION_COPY:
            return None, NOT_KEPT
        return None, "the notebook was not kept (the submission could not be run)"
    except OSError as exc:
        return None, f"{path.name} could not be read ({exc.strerror})"
    return _parse_cached(str(path), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse_cached(path: str, mtime_ns: int, size: int) -> tuple[ParsedNotebook | None, str | None]:
    name = Path(path).name
    try:
        raw = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return None, f"{name} could not be read as a notebook ({type(exc).__name__})"
    cells = raw.get("cells") if isinstance(raw, dict) else None
    if not isinstance(cells, list):
        return None, f"{name} could not be read as a notebook (it has no list of cells)"
    parsed, index = [], -1
    for cell in cells:
        if not isinstance(cell, dict) or _is_injected(cell):
            continue
        index += 1
        if cell.get("cell_type") == "code":
            parsed.append(_parse_cell(cell, index))
    return ParsedNotebook(cells=tuple(parsed)), None


def _is_injected(cell: dict) -> bool:
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, dict) else None
    return isinstance(tags, list) and INJECTED_TAG in tags


def _joined(value) -> str:
    """nbformat's multiline strings: a string, or a list of strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(v for v in value if isinstance(v, str))
    return ""


def _parse_cell(cell: dict, index: int) -> ParsedCell:
    count = cell.get("execution_count")
    raw_outputs = cell.get("outputs")
    outputs = raw_outputs if isinstance(raw_outputs, list) else []
    items, errors, compared, digests = [], [], [], []
    for output in _merged_streams([o for o in outputs if isinstance(o, dict)]):
        item, compared_text, digest = _output_item(output)
        if item is None:
            continue
        items.append(item)
        if item.kind == "error":
            errors.append(item.text.partition(":")[0])
        if compared_text:
            compared.append(compared_text[:MAX_COMPARED_CHARS])
        if digest:
            digests.append(digest)
    if len(items) > MAX_ITEMS_PER_CELL:
        left = len(items) - MAX_ITEMS_PER_CELL
        items = items[:MAX_ITEMS_PER_CELL] + [OutputItem(kind="omitted", text=f"{left} more output(s) not shown")]
    return ParsedCell(
        index=index, source=_joined(cell.get("source")),
        execution_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        items=tuple(items), error_names=tuple(errors),
        compared_lines=tuple(_normalise("\n".join(compared))), image_digests=tuple(digests),
    )


def _merged_streams(outputs: list[dict]) -> list[dict]:
    """Consecutive outputs of one stream joined, as a notebook shows them."""
    merged: list[dict] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            merged[-1] = {**previous, "text": _joined(previous.get("text")) + _joined(output.get("text"))}
        else:
            merged.append(output)
    return merged


def _output_item(output: dict) -> tuple[OutputItem | None, str, str]:
    """(the displayable item, its text for the comparison, the image's digest) of one output.

    stderr is shown but not compared: it holds progress bars and warnings, whose rates and
    timings differ in every run."""
    kind = output.get("output_type")
    if kind == "stream":
        text = _terminal_text(_joined(output.get("text")))
        if not text.strip():
            return None, "", ""
        return OutputItem(kind="text", text=_cap(text, MAX_TEXT_CHARS)), (text if output.get("name") != "stderr" else ""), ""
    if kind == "error":
        ename, evalue = str(output.get("ename", ""))[:200], strip_ansi(str(output.get("evalue", "")))
        text = _cap(f"{ename}: {evalue}", MAX_TEXT_CHARS)
        return OutputItem(kind="error", text=text), text, ""
    if kind in ("display_data", "execute_result", "update_display_data"):
        raw_data = output.get("data")
        data = raw_data if isinstance(raw_data, dict) else {}
        if "image/png" in data:
            return _png_item(data["image/png"])
        if "text/plain" in data:
            text = strip_ansi(_joined(data["text/plain"]))
            return OutputItem(kind="text", text=_cap(text, MAX_TEXT_CHARS)), text, ""
        types = ", ".join(sorted(str(t) for t in data)[:5]) or "no data"
        return OutputItem(kind="omitted", text=f"an output of type {types} is not shown (only text and PNG images are)"), "", ""
    return None, "", ""


def _png_item(value) -> tuple[OutputItem, str, str]:
    encoded = re.sub(r"\s+", "", _joined(value))
    if len(encoded) * 3 // 4 > MAX_IMAGE_BYTES:
        return OutputItem(kind="omitted", text=f"an image of about {len(encoded) * 3 // 4 >> 20} MB is not shown "
                                                f"(over {MAX_IMAGE_BYTES >> 20} MB)"), "", ""
    try:
        head = base64.b64decode(encoded[:12], validate=True)
    except ValueError:
        head = b""
    if not (_BASE64.fullmatch(encoded) and head.startswith(_PNG_SIGNATURE)):
        return OutputItem(kind="omitted", text="an image/png output that is not a PNG is not shown"), "", ""
    digest = hashlib.sha256(encoded.encode("ascii")).hexdigest()
    return OutputItem(kind="image", uri="data:image/png;base64," + encoded), "", digest


def _terminal_text(text: str) -> str:
    """Text as a terminal shows it: ANSI codes removed, a line rewritten after \\r shows its last
    version (progress bars)."""
    lines = strip_ansi(text).replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head, tail = limit // 3, limit - limit // 3
    return f"{text[:head]}\n[… {len(text) - limit} characters not shown …]\n{text[-tail:]}"


def _normalise(text: str) -> list[str]:
    """Lines with whitespace collapsed and blank lines dropped, for the comparison."""
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


# --- cells: saved beside re-run ----------------------------------------------------------------


def _cells(patterns: list[str], saved: ParsedNotebook | None, rerun: ParsedNotebook | None,
           result: SubmissionResult) -> tuple[list[CellEvidence], list[str]]:
    """Per pattern, its first matching code cells. Cells are found by their source in each
    notebook (the executed one has the grader's injected cell, so positions differ) and paired in
    the order they match."""
    statuses = {c.index: c.status for c in result.cells}
    shown: set[int] = set()
    found, unmatched = [], []
    for pattern in patterns:
        regex = re.compile(pattern)
        saved_cells = _matching(saved, regex)
        rerun_cells = _matching(rerun, regex)
        if not saved_cells and not rerun_cells:
            unmatched.append(pattern)
            continue
        for position in range(min(MAX_CELLS_PER_PATTERN, max(len(saved_cells), len(rerun_cells)))):
            mine = saved_cells[position] if position < len(saved_cells) else None
            theirs = rerun_cells[position] if position < len(rerun_cells) else None
            cell = mine or theirs
            if cell is None:  # not reached: position is below the longer list's length
                continue
            if cell.index in shown:   # two patterns of one question on the same cell: shown once
                continue
            shown.add(cell.index)
            found.append(_cell_evidence(pattern, cell, mine, theirs, saved, rerun, statuses.get(cell.index)))
    return found, unmatched


def _matching(notebook: ParsedNotebook | None, regex: re.Pattern) -> list[ParsedCell]:
    return [c for c in notebook.cells if regex.search(c.source)] if notebook else []


def _cell_evidence(pattern: str, cell: ParsedCell, mine: ParsedCell | None, theirs: ParsedCell | None,
                   saved: ParsedNotebook | None, rerun: ParsedNotebook | None, status: str | None) -> CellEvidence:
    """cell: the one shown, mine where the saved notebook has it, else theirs."""
    reasons = _differences(mine, theirs, saved, status) if saved is not None and rerun is not None else []
    return CellEvidence(
        pattern=pattern, index=cell.index, source=_cap(cell.source, MAX_SOURCE_CHARS),
        saved=list(mine.items) if mine else ([] if saved is not None else None),
        saved_execution_count=mine.execution_count if mine else None,
        rerun=list(theirs.items) if theirs else ([] if rerun is not None else None),
        rerun_status=status, differs=bool(reasons), reasons=reasons,
    )


def _differences(mine: ParsedCell | None, theirs: ParsedCell | None, saved: ParsedNotebook,
                 status: str | None) -> list[str]:
    """Why the saved outputs of a cell are not what the re-run produced; [] when they agree.

    The rule, in order:
    - a cell only one notebook has, or outputs only one side has: "no outputs" on that side
      (a cleared or never-run cell, or a re-run that stopped before it);
    - errors: one side raised what the other did not (by the error's name);
    - images: a different number of PNGs; and a saved PNG byte-identical to one saved in another
      cell (an output copied in place of a real one). PNG bytes are not compared with the
      re-run's: a retrained model never draws the same pixels;
    - text (stdout, text/plain, errors; stderr is not compared): after collapsing whitespace,
      the lines must agree in number and in their words, and each number must be within
      NUMBER_RTOL (relative) of its counterpart; the first line that does not is quoted.
    """
    if mine is None:
        return ["the saved notebook has no such cell"]
    if theirs is None:
        return ["the grader's re-run has no such cell"]
    if not mine.items and not theirs.items:
        return []
    if not mine.items:
        return ["the saved notebook has no outputs for this cell"]
    if not theirs.items:
        ran = f" (it was {status})" if status and status != "ok" else ""
        return [f"the grader's re-run has no outputs for this cell{ran}"]
    reasons = []
    if set(mine.error_names) != set(theirs.error_names):
        reasons.append(f"errors differ: saved {_names(mine.error_names)}, re-run {_names(theirs.error_names)}")
    if len(mine.image_digests) != len(theirs.image_digests):
        reasons.append(f"{len(mine.image_digests)} image(s) saved, {len(theirs.image_digests)} in the re-run")
    copied = _copied_image(mine, saved)
    if copied is not None:
        reasons.append(f"a saved image is byte-identical to one saved in cell {copied}")
    text = _text_difference(mine.compared_lines, theirs.compared_lines)
    if text:
        reasons.append(text)
    return reasons


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(sorted(set(names))) or "none"


def _copied_image(cell: ParsedCell, notebook: ParsedNotebook) -> int | None:
    digests = set(cell.image_digests)
    for other in notebook.cells:
        if other.index != cell.index and digests.intersection(other.image_digests):
            return other.index
    return None


def _text_difference(saved: tuple[str, ...], rerun: tuple[str, ...]) -> str | None:
    if len(saved) != len(rerun):
        first = next((i for i, (a, b) in enumerate(zip(saved, rerun)) if not _lines_agree(a, b)), min(len(saved), len(rerun)))
        return (f"text differs: {len(saved)} line(s) saved, {len(rerun)} in the re-run"
                + _quote(saved, rerun, first))
    for i, (a, b) in enumerate(zip(saved, rerun)):
        if not _lines_agree(a, b):
            return "text differs" + _quote(saved, rerun, i)
    return None


def _quote(saved: tuple[str, ...], rerun: tuple[str, ...], i: int) -> str:
    def line(lines):
        return repr(_cap(lines[i], 80)) if i < len(lines) else "nothing"

    return f" (line {i + 1}: saved {line(saved)}, re-run {line(rerun)})"


def _lines_agree(a: str, b: str) -> bool:
    if a == b:
        return True
    if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
        return False
    return all(_numbers_agree(x, y) for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)))


def _numbers_agree(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=NUMBER_RTOL, abs_tol=NUMBER_ATOL)


def _execution_disorder(notebook: ParsedNotebook) -> str | None:
    """A saved notebook whose execution counts do not increase down the page was run out of
    order: what its outputs show may not follow from the code above them."""
    previous: tuple[int, int] | None = None   # (index, execution count) of the last cell that ran
    for cell in notebook.cells:
        count = cell.execution_count
        if count is None:
            continue
        if previous is not None and count <= previous[1]:
            return (f"the saved notebook was run out of order (cell {cell.index} has execution count "
                    f"{count}, after cell {previous[0]}'s {previous[1]}): "
                    "its saved outputs may be stale")
        previous = (cell.index, count)
    return None
