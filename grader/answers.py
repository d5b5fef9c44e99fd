"""Inline-question answers: found in the notebook's markdown, counted in words, handed to staff.

The contract: a question is a markdown cell containing "Inline Question" with its points as `[Npt]`
and its limit as `limit your answer to <N words`; the answer follows an `Answer:` label in the same
cell or in the next markdown cells, up to the next question or code cell. Real notebooks bend
every part of that, so the rules below are lenient and every guess is written into `Answer.note`:
staff read the notes, so nothing is dropped or assumed silently.

Answer cells tagged in the handout (nbgrader-style): scripts/make_handout.py puts
`{"grader": {"answer": "Q1"}}` (the key is the config's `assignment.answer_cell_key`) in the
metadata of each question's cell, where its `Answer:` label is. A tagged cell opens that question
whatever its text (no "Inline Question" heading or a reworded statement still count), and is
assigned by its tag, not by the question's `match`. In it, the answer still starts at a label;
without one, the text after the "limit your answer" line (or, without that line, the whole cell
minus the handout's text) is the answer. Students copy cells into fresh notebooks and lose
metadata, so a notebook without tags (or one question's cell without its tag) is read by the
text rules below. A tag naming no config question is ignored and said in a note, on the answer
the cell's text went to (or on the first answer when it went to none).

How a notebook is read:
- Text cells (markdown, and raw cells, which students sometimes type answers into by mistake)
  form one stream, cut at every line that starts an Inline Question (a question may share a cell
  with the previous answer). A code cell with code in it ends an answer; an empty code cell does
  not (students leave them around).
- A question's *region* is its piece of text plus the text after it, up to the next question or
  code cell. The answer starts at the first `Answer` label in the region: at the start of a line,
  bold or not, with `:`/`-` or alone on its line (`**Answer:**`, `**Answer: text`, `__Answer__:`,
  `*Answer*:`, `Answer -`, `answer:`, `### Answer`), or bold in mid-line (`... words) **Answer:**`).
  A label with nothing after it but another label is skipped (the handout's empty label followed
  by the student's own). Later labels inside the answer are the student's text and stay.
- No label in the region: the grader looks past code cells, up to the next question, for one (the
  student put a plot between question and answer). Still none: the text after the question's
  statement (which ends at its "limit your answer" line) is taken as the answer, with a note.
- What follows the answer in the same region may be the handout's own text (the next part's
  heading and instructions). With the handout as `template`, a paragraph is left out when it is
  the handout's text: equal to a handout paragraph, contained in the handout, containing a whole
  handout paragraph, or nearly equal to one (an older copy of the same handout). Without a
  template, a heuristic: the answer is cut at the first later paragraph that reads like
  instructions (a `#`/`##` heading or one naming a Part, "Let's ...", "Now we can start ...",
  "Try a few ...", "You can modify ..."). The paragraph on the label's own line is always the
  student's. Each cut is named in the note.
  Exact copies of the handout go silently; near copies and heuristic cuts are named in the note.
- Config questions are identified by their `match` regex, searched in the question's statement
  (a question pasted twice: the copy with an answer). Questions whose regex matches nothing take
  the unmatched Inline Questions between their matched neighbours, in order, but only when there
  is exactly one for each; the note says so. `[Npt]` and the word limit stated in the notebook
  are compared with the config's, which win; a disagreement is noted.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from nbformat import NotebookNode

from .config import AssignmentConfig, Question
from .errors import ConfigError
from .records import Answer

# The contract's question heading; decoration may come first ("**Inline Question 2:**", "### ...").
QUESTION_START = re.compile(r"^(?:[ \t>#*_-]|<[^>\n]*>)*inline[ \t]+question", re.I | re.M)
POINTS = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*(?:pts?|points?)\s*\]", re.I)
LIMIT = re.compile(
    r"limit\s+your\s+answers?\s+to\s*(?:<|&lt;|less\s+than|fewer\s+than|under|at\s+most|max(?:imum)?)?\s*"
    r"(\d+)\s*words",
    re.I,
)

_OPEN = r"\*{1,3}|_{1,3}|<(?:b|strong|em|i|u)>"
_CLOSE = r"\*{1,3}|_{1,3}|</(?:b|strong|em|i|u)>"
# An answer label at the start of a line; valid only with ":"/"-" after it or alone on its line.
_LINE_LABEL = re.compile(
    rf"""^[ \t]*(?:>[ \t]*)*(?:\#{{1,6}}[ \t]+|[-+][ \t]+)?   # a line, maybe a quote, heading, bullet
    (?P<open>{_OPEN})?[ \t]*
    (?:your[ \t]+)?ans(?:wer)?(?![^\W_])               # Answer, Your answer, Ans; not Answers
    [ \t]*(?P<close1>{_CLOSE})?
    [ \t]*(?P<punct>:|[-–—](?=[ \t]|$))?
    [ \t]*(?P<close2>{_CLOSE})?[ \t]*""",
    re.I | re.M | re.X,
)
# In mid-line, with a colon: bold, or after the end of a sentence ("... <150 words) Answer: ...").
_INLINE_LABEL = re.compile(
    r"(?:(?P<open>\*\*|__|<(?:b|strong)>)|(?<=[.?!)\]])[ \t]+)[ \t]*(?:your[ \t]+)?answer"
    r"(?P<close1>\*\*|__|</(?:b|strong)>)?[ \t]*:[ \t]*(?P<close2>\*\*|__|</(?:b|strong)>)?[ \t]*",
    re.I,
)

# Handout text that follows an answer, recognised without the handout (see the module docstring).
_INSTRUCTION = re.compile(
    r"""^(?:
      \#{1,2}[ \t]                                                        # a section heading
    | \#{1,6}[ \t].*\bpart[ \t]+\d                                        # "### Part 3: ..."
    | let[’']?s\b | let[ \t]+us\b
    | now,?[ \t]+(?:we|you|let[’']?s)[ \t]+(?:can[ \t]+|will[ \t]+|should[ \t]+|need[ \t]+to[ \t]+|are[ \t]+going[ \t]+to[ \t]+)?
        (?:start|repeat|train|implement|run|try|move|turn|tune|visuali[sz]e|plot|define|write|decode|encode)\b
    | next,?[ \t]+(?:we|you)\b
    | in[ \t]+this[ \t]+(?:part|section|exercise|task)\b
    | you[ \t]+(?:can|should|need[ \t]+to|will|may)[ \t]+(?:now[ \t]+)?
        (?:modify|run|rerun|re-run|implement|copy|train|repeat|start|use|try)\b
    | (?:please[ \t]+)?(?:try|repeat|run|re-?run|train|implement|plot|fill[ \t]+in|complete|execute
        |describe|choose|pick|encode|decode|modify|copy)\b                # imperatives students rarely open with
    | first,?[ \t]+(?:train|describe|implement|run)\b
    )""",
    re.I | re.X,
)
_HEADING = re.compile(r"^#{1,6}[ \t]")
# The handout's placeholder where the answer goes, and paragraphs with no word in them ("**", "---").
_PLACEHOLDER = re.compile(
    r"^[\W_]*(?:(?:(?:type|write|put|enter)\s+)?your\s+answer(?:\s+(?:here|below))?|todo|tbd)?[\W_]*$", re.I
)
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
_MIN_FUZZY = 30        # characters; shorter paragraphs must equal a handout paragraph exactly
_FUZZY_RATIO = 0.9     # difflib ratio above which a paragraph is an edited copy of the handout's


# ---------------------------------------------------------------------------------------------
# The notebook as a stream of text pieces and code breaks


@dataclass(frozen=True)
class _Text:
    cell: int
    text: str
    opens_question: bool
    tag: str | None = None      # the config question its cell is tagged as the answer cell of


@dataclass(frozen=True)
class _Break:
    """A code cell with code in it: it ends an answer."""

    cell: int


def _source(cell: NotebookNode) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(source)
    return source.replace("\r\n", "\n").replace("\r", "\n")


def answer_tag(cell: NotebookNode, key: str) -> object:
    """What the cell's metadata names as the question it answers (None: no tag)."""
    metadata = cell.get("metadata")
    entry = metadata.get(key) if isinstance(metadata, dict) else None
    return entry.get("answer") if isinstance(entry, dict) else None


def _stream(nb: NotebookNode, tags: dict[int, str] | None = None) -> list[_Text | _Break]:
    """The text pieces and code breaks; `tags` (cell index -> question id) marks answer cells: the
    first question in such a cell, or the whole cell when it has none, opens that question."""
    tags = tags or {}
    items: list[_Text | _Break] = []
    for index, cell in enumerate(nb.cells):
        text = _source(cell)
        if cell.cell_type == "code":
            if text.strip():
                items.append(_Break(index))
            continue
        tag = tags.get(index)
        starts = [m.start() for m in QUESTION_START.finditer(text)]
        if tag is not None and not starts:
            starts = [0]
        if not starts or starts[0] > 0:
            items.append(_Text(index, text[: starts[0] if starts else len(text)], False))
        for n, (begin, end) in enumerate(zip(starts, starts[1:] + [len(text)])):
            items.append(_Text(index, text[begin:end], True, tag if n == 0 else None))
    return items


# ---------------------------------------------------------------------------------------------
# Paragraphs and answer labels


@dataclass
class _Para:
    text: str
    cell: int
    own_line: bool = False    # on the label's own line: always the student's


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, rstripped, keeping fenced code (blank lines and all) whole."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence and not line.strip():
            if current:
                blocks.append("\n".join(current).rstrip())
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current).rstrip())
    return [b for b in blocks if b.strip()]


@dataclass(frozen=True)
class _Label:
    start: int
    end: int
    unclosed: str | None     # an emphasis opened by the label and not closed in it ("**")


def _closer(opener: str) -> str:
    return opener.replace("<", "</") if opener.startswith("<") else opener


def _labels(text: str) -> list[_Label]:
    labels = []
    for m in _LINE_LABEL.finditer(text):
        rest_of_line = text[m.end():].split("\n", 1)[0]
        if m["punct"] is None and rest_of_line.strip():
            continue   # "Answer the question ..." or "Answers vary": prose, not a label
        labels.append(_label(m))
    for m in _INLINE_LABEL.finditer(text):
        if not any(label.start <= m.start() < label.end for label in labels):
            labels.append(_label(m))
    return sorted(labels, key=lambda label: label.start)


def _label(m: re.Match) -> _Label:
    opener = m["open"]
    unclosed = opener if opener and not (m["close1"] or m["close2"]) else None
    return _Label(m.start(), m.end(), unclosed)


def _close_dangling_emphasis(paragraph: str, opener: str) -> str:
    """`**Answer: text.**`: the label opened the bold, the student closed it at the end."""
    closer = _closer(opener)
    body = paragraph.rstrip()
    if not body.endswith(closer):
        return paragraph
    if opener.startswith("<"):
        dangling = body.lower().count(closer) > body.lower().count(opener)
    else:
        dangling = body.count(closer) % 2 == 1
    return body[: -len(closer)].rstrip() if dangling else paragraph


# ---------------------------------------------------------------------------------------------
# The handout as a template, and the heuristic without it


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


class _Handout:
    """The handout's text paragraphs, to tell its words from the student's."""

    def __init__(self, nb: NotebookNode):
        paragraphs: set[str] = set()
        for item in _stream(nb):
            if isinstance(item, _Break):
                continue
            for para in _paragraphs(item.text):
                paragraphs.add(_normalise(para))
                # A label and its placeholder ("**Answer:** *your answer here*"): both halves.
                for label in _labels(para)[:1]:
                    paragraphs.add(_normalise(para[: label.start]))
                    paragraphs.add(_normalise(para[label.end:]))
        paragraphs.discard("")
        self.paragraphs = paragraphs
        self.long = [p for p in paragraphs if len(p) >= _MIN_FUZZY]
        self.text = "\n".join(sorted(paragraphs))

    def match(self, paragraph: str, exact_only: bool = False) -> str | None:
        """"exact" (a handout paragraph, or inside one), "similar" (contains one or is an edited
        copy of one), or None (the student's)."""
        text = _normalise(paragraph)
        if not text or text in self.paragraphs:
            return "exact"
        if exact_only or len(text) < _MIN_FUZZY:
            return None
        if text in self.text:
            return "exact"
        if any(h in text for h in self.long):
            return "similar"
        for h in self.long:
            matcher = difflib.SequenceMatcher(None, text, h, autojunk=False)
            if matcher.real_quick_ratio() >= _FUZZY_RATIO and matcher.quick_ratio() >= _FUZZY_RATIO:
                if matcher.ratio() >= _FUZZY_RATIO:
                    return "similar"
        return None


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def _left_out(paras: list[_Para], why: str) -> str:
    count = f"{len(paras)} paragraphs" if len(paras) > 1 else "a paragraph"
    return f"left out {count} {why}, from “{_preview(paras[0].text)}”"


def _student_paragraphs(paras: list[_Para], handout: _Handout | None) -> tuple[list[_Para], list[str]]:
    """The paragraphs that are the student's, and notes on what was left out.

    Exact copies of the handout are left out silently (they are plainly not the student's);
    near copies and heuristic cuts are named in a note, because they could be wrong.
    """
    paras = [p for p in paras if not _PLACEHOLDER.match(p.text.strip())]
    if handout is not None:
        # The label's own line is the student's unless it is the handout's placeholder verbatim.
        kinds = [handout.match(p.text, exact_only=p.own_line) for p in paras]
        similar = [p for p, kind in zip(paras, kinds) if kind == "similar"]
        notes = [_left_out(similar, "as near copies of the handout's text")] if similar else []
        return [p for p, kind in zip(paras, kinds) if kind is None], notes
    for i, para in enumerate(paras):
        if not para.own_line and _INSTRUCTION.match(para.text.lstrip(" \t*_")):
            cut = i
            # A heading right before the instructions ("### β = 10") belongs to them.
            while cut > 0 and not paras[cut - 1].own_line and _HEADING.match(paras[cut - 1].text.lstrip()):
                cut -= 1
            return paras[:cut], [_left_out(paras[cut:], "as the handout's instructions (a guess: no handout given)")]
    return paras, []


# ---------------------------------------------------------------------------------------------
# One Inline Question of the notebook, read


@dataclass
class _Reading:
    cell: int
    statement: str                   # the question's text, before its answer
    text: str = ""
    label: bool = False              # an answer label was found
    notes: list[str] = field(default_factory=list)
    tag: str | None = None           # the config question its cell is tagged for
    cells: set[int] = field(default_factory=set)   # the cells it read (question to next question)

    @property
    def answered(self) -> bool:
        return bool(self.text)

    @property
    def stated_points(self) -> float | None:
        found = POINTS.findall(self.statement)
        return sum(float(p) for p in found) if found else None

    @property
    def stated_limit(self) -> int | None:
        found = LIMIT.search(self.statement)
        return int(found[1]) if found else None


@dataclass
class _Found:
    statement: str               # the text before the answer
    paras: list[_Para]           # the student's paragraphs
    notes: list[str]             # what was left out, and why


def _is_blank(text: str) -> bool:
    return all(_PLACEHOLDER.match(p.strip()) for p in _paragraphs(text))


def _answer_after(pieces: list[_Text], handout: _Handout | None) -> _Found | None:
    """The answer after the first useful label in `pieces`, or None without a label."""
    found = [(k, label) for k, piece in enumerate(pieces) for label in _labels(piece.text)]
    if not found:
        return None

    def up_to_next_label(n: int) -> str:
        k, label = found[n]
        k_next, next_label = found[n + 1]
        if k_next == k:
            return pieces[k].text[label.end: next_label.start]
        middle = [p.text for p in pieces[k + 1: k_next]]
        return "\n\n".join([pieces[k].text[label.end:], *middle, pieces[k_next].text[: next_label.start]])

    n = 0
    while n + 1 < len(found) and _is_blank(up_to_next_label(n)):
        n += 1          # the handout's empty label, then the student's own: the later one counts
    k, label = found[n]
    piece = pieces[k]
    statement = "\n\n".join([p.text for p in pieces[:k]] + [piece.text[: label.start]])
    remainder = piece.text[label.end:]
    paras = [_Para(t, piece.cell) for t in _paragraphs(remainder)]
    if paras and not re.match(r"[ \t]*\n[ \t]*\n", remainder):
        paras[0].own_line = True
        if label.unclosed:
            paras[0].text = _close_dangling_emphasis(paras[0].text, label.unclosed)
    for later in pieces[k + 1:]:
        paras += [_Para(t, later.cell) for t in _paragraphs(later.text)]
    kept, notes = _student_paragraphs(paras, handout)
    return _Found(statement, kept, notes)


def _answer_without_label(pieces: list[_Text], handout: _Handout | None, tagged: bool = False) -> _Found:
    """No label: the statement ends at its "limit your answer" paragraph; what follows is the answer.
    Without that line the first piece is the statement, unless it is a tagged answer cell, whose
    text is the answer (less the handout's paragraphs)."""
    paras = [_Para(t, piece.cell) for piece in pieces for t in _paragraphs(piece.text)]
    with_limit = [i for i, p in enumerate(paras) if LIMIT.search(p.text)]
    end = with_limit[-1] + 1 if with_limit else 0 if tagged else len(_paragraphs(pieces[0].text))
    kept, notes = _student_paragraphs(paras[end:], handout)
    if kept:
        notes.insert(0, "no “Answer:” label after the question; the text that follows it is taken as the answer")
    return _Found("\n\n".join(p.text for p in paras[:end]), kept, notes)


def _answer_past_code(region: list[_Text], beyond: list[_Text | _Break], handout: _Handout | None) -> _Found | None:
    """A label after a code cell (a plot between question and answer), before the next question."""
    for i, item in enumerate(beyond):
        if isinstance(item, _Text) and _labels(item.text):
            pieces = [item]
            for later in beyond[i + 1:]:
                if isinstance(later, _Break):
                    break
                pieces.append(later)
            found = _answer_after(pieces, handout)
            assert found is not None, "pieces[0] has a label"
            found.statement = "\n\n".join(p.text for p in region)
            found.notes.insert(0, f"the answer is after a code cell, in cell {item.cell}")
            return found
    return None


def _read_question(items: list[_Text | _Break], start: int, handout: _Handout | None) -> _Reading:
    question = items[start]
    assert isinstance(question, _Text), "a question starts at a text"
    region: list[_Text] = [question]           # the question and the text after it
    beyond: list[_Text | _Break] = []          # past a code cell, up to the next question
    for item in items[start + 1:]:
        if isinstance(item, _Text) and item.opens_question:
            break
        if beyond or isinstance(item, _Break):
            beyond.append(item)
        else:
            region.append(item)
    tag = question.tag
    found = _answer_after(region, handout)
    labelled = found is not None
    if found is None and tag is not None:   # the tagged cell's own text before a label past code
        in_cell = _answer_without_label(region, handout, tagged=True)
        found = in_cell if in_cell.paras else None
    if found is None:
        found = _answer_past_code(region, beyond, handout)
        labelled = found is not None
    if found is None:
        found = _answer_without_label(region, handout)
    text = "\n\n".join(p.text for p in found.paras).strip()
    cells = {p.cell for p in region} | {b.cell for b in beyond if isinstance(b, _Text)}
    return _Reading(items[start].cell, found.statement, text, labelled, found.notes, tag, cells)


def _read_notebook(nb: NotebookNode, handout: _Handout | None, tags: dict[int, str] | None = None) -> list[_Reading]:
    items = _stream(nb, tags)
    starts = [i for i, item in enumerate(items) if isinstance(item, _Text) and item.opens_question]
    return [_read_question(items, start, handout) for start in starts]


# ---------------------------------------------------------------------------------------------
# Config questions -> notebook questions


def _assign(questions: list[Question], readings: list[_Reading]) -> list[tuple[_Reading | None, list[str]]]:
    """For each config question, its notebook question (or None) and notes on how it was found.
    Cells tagged for a question come first, then untagged ones its pattern matches."""
    tagged = [[j for j, r in enumerate(readings) if r.tag == q.id] for q in questions]
    by_tag = {j for js in tagged for j in js}
    matches = [js + [j for j, r in enumerate(readings) if j not in by_tag and re.search(q.match, r.statement)]
               for q, js in zip(questions, tagged)]
    claimed = {j for js in matches for j in js}          # never handed out by position
    chosen: list[int | None] = [None] * len(questions)
    notes: list[list[str]] = [[] for _ in questions]
    used: set[int] = set()
    for i, js in enumerate(matches):
        free = [j for j in js if j not in used]
        if not free:
            continue
        # A question pasted twice: the copy with an answer wins.
        pick = next((j for j in free if readings[j].answered), free[0])
        chosen[i] = pick
        used.add(pick)
        if readings[pick].tag == questions[i].id and not re.search(questions[i].match, readings[pick].statement):
            notes[i].append(f"identified by its cell's tag (cell {readings[pick].cell}): its text does not match "
                            f"the config's pattern /{questions[i].match}/")
        if len(free) > 1:
            cells = ", ".join(str(readings[j].cell) for j in free)
            notes[i].append(f"the question appears {len(free)} times (cells {cells}); "
                            f"the one in cell {readings[pick].cell} is used")

    # By position: a run of unmatched config questions takes the unmatched Inline Questions between
    # its matched neighbours, only when there is exactly one for each (else the pairing is a guess).
    i = 0
    while i < len(questions):
        if chosen[i] is not None:
            i += 1
            continue
        run_end = i
        while run_end < len(questions) and chosen[run_end] is None:
            run_end += 1
        low = max((c for c in chosen[:i] if c is not None), default=-1)
        high = min((c for c in chosen[run_end:] if c is not None), default=len(readings))
        spare = [j for j in range(low + 1, high) if j not in claimed and j not in used]
        if len(spare) == run_end - i:
            for k, j in zip(range(i, run_end), spare):
                chosen[k] = j
                used.add(j)
                notes[k].append(
                    f"identified by its position (Inline Question {j + 1} of {len(readings)}, cell "
                    f"{readings[j].cell}): its text does not match the config's pattern /{questions[k].match}/"
                )
        i = run_end
    unmatched = [r for j, r in enumerate(readings) if j not in used]
    result: list[tuple[_Reading | None, list[str]]] = []
    for q, reading_index, found_notes in zip(questions, chosen, notes):
        if reading_index is None:
            note = f"question not found in the notebook: no Inline Question matches /{q.match}/"
            if unmatched:
                cells = ", ".join(str(r.cell) for r in unmatched)
                note += f" (Inline Questions matched to no config question: cells {cells})"
            result.append((None, [note]))
        else:
            result.append((readings[reading_index], found_notes))
    return result


# ---------------------------------------------------------------------------------------------
# Public API


def extract_answers(
    nb: NotebookNode, config: AssignmentConfig, template: NotebookNode | None = None
) -> list[Answer]:
    """One Answer per config question, in config order; `found=False` says why in `note`.

    `template` is the handout the student started from; with it, the handout's own text is told
    from the student's exactly, without it by a heuristic (see the module docstring).
    """
    handout = _Handout(template) if template is not None else None
    tags, odd_tags = _answer_tags(nb, config)
    readings = _read_notebook(nb, handout, tags)
    assigned = _assign(config.questions, readings)
    for note, cell, question_id in odd_tags:   # said on the answer the cell went to, never dropped
        holders = [i for i, (reading, _) in enumerate(assigned)
                   if (question_id is not None and config.questions[i].id == question_id)
                   or (question_id is None and reading is not None and cell in reading.cells)]
        if not holders:
            note += "; it is part of no answer"
        for i in holders or [0]:
            assigned[i][1].append(note)
    answers = []
    for question, (reading, notes) in zip(config.questions, assigned):
        answers.append(_answer(question, reading, notes))
    return answers


def _answer_tags(nb: NotebookNode, config: AssignmentConfig) -> tuple[dict[int, str], list[tuple[str, int, str | None]]]:
    """The text cells tagged for a config question (cell index -> question id), and the tags that
    cannot be followed: (note, cell, the question the note belongs to, None: wherever the cell went)."""
    key, ids = config.assignment.answer_cell_key, {q.id for q in config.questions}
    tags: dict[int, str] = {}
    odd: list[tuple[str, int, str | None]] = []
    for index, cell in enumerate(nb.cells):
        tag = answer_tag(cell, key)
        if tag is None:
            continue
        if not isinstance(tag, str) or tag not in ids:
            note = (f"cell {index} is tagged as the answer cell of {tag!r}, which is no question of the config; "
                    "the tag was ignored and the cell read by its text")
            odd.append((note, index, None))
        elif cell.get("cell_type") == "code":
            note = f"cell {index} is tagged as this answer's cell but is a code cell; code is not read as an answer"
            odd.append((note, index, tag))
        else:
            tags[index] = tag
    return tags, odd


def _answer(question: Question, reading: _Reading | None, notes: list[str]) -> Answer:
    answer = functools.partial(Answer, id=question.id, limit=question.limit, max_points=question.points)
    if reading is None:
        return answer(found=False, note="; ".join(notes))
    notes = notes + _disagreements(question, reading)
    if not reading.answered:
        why = "answer is empty" if reading.label else "question found but no answer after it"
        return answer(found=False, note="; ".join([why] + notes + reading.notes))
    words = count_words(reading.text)
    return answer(
        found=True, text=reading.text, words=words, over_limit=words > question.limit,
        note="; ".join(notes + reading.notes),
    )


def _disagreements(question: Question, reading: _Reading) -> list[str]:
    notes = []
    points, limit = reading.stated_points, reading.stated_limit
    if points is not None and points != question.points:
        notes.append(f"the notebook says [{points:g}pt] but the config gives {question.points:g} points; the config's are used")
    if limit is not None and limit != question.limit:
        notes.append(f"the notebook says <{limit} words but the config's limit is {question.limit}; the config's is used")
    return notes


def find_best_beta_in_markdown(nb: NotebookNode, pattern: str) -> float | None:
    """The last number the pattern captures in a markdown cell ("Best-tune beta = 6.77"), or None.

    The last, because students revise: an earlier "best beta = 1" is usually superseded. The
    pattern's first group is the number (the whole match if it has no group).
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"contract.best_beta_pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    value = None
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for m in regex.finditer(_source(cell)):
            try:
                value = float(m[1] if regex.groups else m[0])
            except (TypeError, ValueError):
                continue
    return value


_MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+?\$|\\\(.+?\\\)|\\\[.+?\\\]", re.S)
_HTML_TAG = re.compile(r"<[^>]*>")
_WORDLIKE = re.compile(r"[^\W_]")


def count_words(text: str) -> int:
    """Words as a reader counts them in the rendered answer.

    Markdown is parsed (markdown-it) so list bullets, emphasis stars, link targets and images are
    not words; a maths span ($\\beta=0$) is one word; a token counts if it has a letter or digit.
    """
    text = _MATH.sub("M", text.replace("\r\n", "\n"))
    words: list[str] = []
    for token in _MARKDOWN.parse(text):
        if token.type == "inline":
            words += "".join(_inline_text(child) for child in token.children or []).split()
        elif token.type in ("fence", "code_block"):
            words += token.content.split()
        elif token.type == "html_block":
            words += _HTML_TAG.sub(" ", token.content).split()
    return sum(1 for word in words if _WORDLIKE.search(word))


def _inline_text(token) -> str:
    if token.type in ("text", "code_inline"):
        return token.content
    if token.type in ("softbreak", "hardbreak", "html_inline"):
        return " "
    return ""     # emphasis and link markers, images
