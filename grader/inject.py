"""Parameter injection, papermill-style: a cell inserted right after the `parameters` cell."""

from __future__ import annotations

import copy

import nbformat
from nbformat import NotebookNode

INJECTED_TAG = "injected-parameters"


class ParametersCellMissing(ValueError):
    """The notebook has no code cell tagged with the parameters tag."""


def find_parameters_cell(nb: NotebookNode, tag: str = "parameters") -> int:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and tag in cell.get("metadata", {}).get("tags", []):
            return index
    raise ParametersCellMissing(f"no code cell is tagged {tag!r}")


def injected_source(parameters: dict) -> str:
    lines = ["# Parameters set by the grader"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


def inject_parameters(nb: NotebookNode, parameters: dict, tag: str = "parameters") -> NotebookNode:
    """A copy of nb with the parameters cell followed by one that assigns `parameters`.

    Without a tagged cell the assignments go first, so the notebook still runs; callers record
    that the contract's parameters cell was missing.
    """
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    cell = nbformat.v4.new_code_cell(injected_source(parameters), metadata={"tags": [INJECTED_TAG]})
    try:
        position = find_parameters_cell(nb, tag) + 1
    except ParametersCellMissing:
        position = 0
    nb.cells.insert(position, cell)
    return nb


def is_injected(cell: NotebookNode) -> bool:
    return INJECTED_TAG in cell.get("metadata", {}).get("tags", [])
