"""Writes reference/handout.ipynb from reference/solution.ipynb.

The solution marks what students write, nbgrader-style:

- code between `### BEGIN SOLUTION` and `### END SOLUTION` becomes `# YOUR CODE HERE` and
  `raise NotImplementedError()`, at the marker's indentation;
- in the markdown cells of the config's questions, everything after the `Answer:` label is
  removed, so the handout ends each question with an empty `**Answer:**`;
- each of those cells is tagged as its question's answer cell, nbgrader-style: its metadata gets
  `{"grader": {"answer": "<question id>"}}` (the key is the config's assignment.answer_cell_key),
  which grader/answers.py follows before any text rule; every question is tagged exactly once;
- the number in a "Best-tune beta = 1.0" line (the config's best_beta_pattern) becomes `?`,
  so that the grader does not read the handout's line as a student's choice.

Outputs and execution counts are cleared. Usage: python scripts/make_handout.py [--check]
(--check exits 1 when the committed handout is not what the solution gives).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from grader import atomic
from grader.config import AssignmentConfig, Question, load_config

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
TODO_LINES = ["# YOUR CODE HERE", "raise NotImplementedError()"]
# The answer label, bold or not: "**Answer:**", "**Answer:", "Answer:".
ANSWER_LABEL = re.compile(r"(\**Answer:\**)")


def _replace_solution_blocks(source: str, keep_solution: bool) -> str:
    """Source with the marked blocks either kept (markers dropped) or replaced by the TODO lines."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside = True
            if not keep_solution:
                indent = line[: len(line) - len(line.lstrip())]
                out += [indent + todo for todo in TODO_LINES]
            continue
        if stripped == END:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
            continue
        if keep_solution or not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "\n".join(out)


def _question_of(source: str, config: AssignmentConfig) -> Question | None:
    """The config question whose cell this is; a cell two patterns match is a config error."""
    hits = [q for q in config.questions if re.search(q.match, source)]
    if len(hits) > 1:
        raise ValueError(f"one solution cell matches questions {', '.join(q.id for q in hits)}: "
                         f"{source.strip()[:60]!r}")
    return hits[0] if hits else None


def _check_tags(nb: NotebookNode, config: AssignmentConfig) -> None:
    key = config.assignment.answer_cell_key
    tagged = [cell.metadata[key]["answer"] for cell in nb.cells if key in cell.metadata]
    for question in config.questions:
        if tagged.count(question.id) != 1:
            raise ValueError(f"question {question.id}: {tagged.count(question.id)} solution cells match "
                             f"/{question.match}/, expected exactly one")


def _blank_answer(source: str) -> str:
    parts = ANSWER_LABEL.split(source, maxsplit=1)
    if len(parts) < 3:
        return source
    return parts[0] + "**Answer:**"


def _blank_best_beta(source: str, config: AssignmentConfig) -> str:
    def blank(match: re.Match) -> str:
        start, end = match.span(1)
        return match.group(0)[: start - match.start()] + "?" + match.group(0)[end - match.start() :]

    return re.sub(config.contract.best_beta_pattern, blank, source)


def _clear_outputs(cell: NotebookNode) -> None:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    cell.metadata.pop("execution", None)


def solution_code(solution: NotebookNode) -> NotebookNode:
    """A copy of the solution with the markers dropped and the solution code kept."""
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = _replace_solution_blocks(cell.source, keep_solution=True)
    return nb


def make_handout(solution: NotebookNode, config: AssignmentConfig) -> NotebookNode:
    """The handout: solution blocks replaced by TODOs, answers and the chosen beta blanked, answer
    cells tagged, no outputs."""
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        _clear_outputs(cell)
        if cell.cell_type == "code":
            cell.source = _replace_solution_blocks(cell.source, keep_solution=False)
        elif cell.cell_type == "markdown":
            question = _question_of(cell.source, config)
            if question is not None:
                cell.source = _blank_answer(cell.source)
                cell.metadata[config.assignment.answer_cell_key] = {"answer": question.id}
            cell.source = _blank_best_beta(cell.source, config)
    _check_tags(nb, config)
    return nb


def write_notebook(nb: NotebookNode, path: Path) -> None:
    """Validate, then write atomically, world-readable like the other shipped files; the text is
    what nbformat.write gives (a final newline)."""
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    atomic.write_text(path, text if text.endswith("\n") else text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="assignment config (default: the shipped one)")
    parser.add_argument("--check", action="store_true", help="only check that the handout is up to date")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    solution_path = config.path(config.assignment.solution)
    handout_path = config.path(config.assignment.handout)
    handout = make_handout(nbformat.read(solution_path, as_version=4), config)
    if args.check:
        current = nbformat.read(handout_path, as_version=4) if handout_path.exists() else None
        if current != handout:
            print(f"{handout_path} is out of date: run python scripts/make_handout.py", file=sys.stderr)
            return 1
        return 0
    write_notebook(handout, handout_path)
    print(f"wrote {handout_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
