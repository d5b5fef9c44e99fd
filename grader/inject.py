"""Parameter injection, papermill-style: a cell inserted right after the `parameters` cell.

Papermill's conventions: the cell tagged `parameters` holds the defaults; the injected cell, tagged
`injected-parameters`, follows it, so its values win; an injected cell left over from an earlier
run is replaced, never stacked.

Unlike papermill, a notebook without the tag is not simply given its parameters before the first
cell (where the notebook's own assignments would silently win): the first code cell that assigns
at least half of the parameters at its top level is treated as the parameters cell, and the
report says so (`placement_warning`).
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field

import nbformat
from nbformat import NotebookNode

INJECTED_TAG = "injected-parameters"
TAG_HOWTO = ("in JupyterLab or Notebook 7: select the cell, open the property inspector (the gear icon "
             "in the right sidebar) and add the tag under Cell Tags; in classic Jupyter: "
             "View > Cell Toolbar > Tags")
# Cell magics whose body is Python that runs in the user namespace.
_PYTHON_CELL_MAGICS = {"time", "capture", "prun", "timeit", "debug"}


class ParametersCellMissing(ValueError):
    """The notebook has no code cell tagged with the parameters tag."""


def _tags(cell: NotebookNode) -> list:
    metadata = cell.get("metadata", {})
    tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
    return tags if isinstance(tags, list) else []


def find_parameters_cell(nb: NotebookNode, tag: str = "parameters") -> int:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and tag in _tags(cell):
            return index
    raise ParametersCellMissing(f"no code cell is tagged {tag!r}")


def _python_source(source: str) -> str | None:
    """The cell as plain Python (IPython's own transformation of magics and `!` lines), or None
    when it is not Python (a %%bash cell, a syntax error)."""
    from IPython.core.inputtransformer2 import TransformerManager

    lines = source.lstrip().splitlines()
    if lines and lines[0].startswith("%%"):
        magic = lines[0][2:].split(maxsplit=1)[0] if lines[0][2:].strip() else ""
        if magic not in _PYTHON_CELL_MAGICS:
            return None
        source = "\n".join(lines[1:])
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # IPython's transformers raise on some malformed input
        return None


def _target_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _target_names(element)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []  # x.attr = ..., x[i] = ...: not a name of the namespace


def _statements_assigning(body: list[ast.stmt]):
    """The names of each assignment that runs at the cell's top level, also inside a
    top-level if/try/with (not inside functions, classes or loops)."""
    for node in body:
        if isinstance(node, ast.Assign):
            yield [name for target in node.targets for name in _target_names(target)]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            yield _target_names(node.target)
        elif isinstance(node, ast.If):
            yield from _statements_assigning(node.body)
            yield from _statements_assigning(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            yield from _statements_assigning(node.body)
        elif isinstance(node, (ast.Try, ast.TryStar)):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _statements_assigning(block)


def assigned_names(source: str) -> set[str]:
    """The names a code cell assigns at its top level; empty when it cannot be parsed."""
    python = _python_source(source if isinstance(source, str) else "")
    if python is None:
        return set()
    try:
        tree = ast.parse(python)
    except (SyntaxError, ValueError):  # ValueError: a null byte in the source
        return set()
    return {name for names in _statements_assigning(tree.body) for name in names}


@dataclass
class Placement:
    """Where the grader's parameters go in a notebook, and why."""

    position: int                    # index the injected cell is inserted at
    tagged: int | None = None        # the cell tagged `parameters`
    guessed: int | None = None       # without a tag: the cell treated as the parameters cell
    sets: list[str] = field(default_factory=list)   # parameter names the guessed cell assigns
    later: dict[str, int] = field(default_factory=dict)  # no cell found: name -> cell assigning it


def locate_parameters(nb: NotebookNode, names, tag: str = "parameters") -> Placement:
    """The tagged cell, else the first code cell assigning at least half of `names`, else the top.

    Cell indices count every cell of nb (markdown included), as the report's cell numbers do.
    """
    try:
        index = find_parameters_cell(nb, tag)
        return Placement(position=index + 1, tagged=index)
    except ParametersCellMissing:
        pass
    names = list(dict.fromkeys(names))
    later: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assigned = assigned_names(cell.get("source", ""))
        sets = [n for n in names if n in assigned]
        if names and 2 * len(sets) >= len(names):
            return Placement(position=index + 1, guessed=index, sets=sets)
        for name in sets:
            later.setdefault(name, index)
    return Placement(position=0, later=later)


def placement_warning(placement: Placement, notebook_name: str, tag: str = "parameters") -> str | None:
    """The report's words for a notebook without a tagged parameters cell; None when tagged."""
    if placement.tagged is not None:
        return None
    if placement.guessed is not None:
        shown = ", ".join(placement.sets[:6]) + (", ..." if len(placement.sets) > 6 else "")
        return (f"{notebook_name}: no cell is tagged {tag!r}; the grader treated cell {placement.guessed} "
                f"(which sets {shown}) as the parameters cell and set its values after it. "
                f"Tag that cell {tag!r} so that the grader need not guess ({TAG_HOWTO}).")
    message = (f"{notebook_name}: no cell is tagged {tag!r}, and no cell sets most of the parameters, "
               "so the grader set its values in a cell before the first one.")
    if placement.later:
        where = ", ".join(f"{name} (cell {index})" for name, index in sorted(placement.later.items(), key=lambda x: x[1]))
        message += (f" The notebook's own later assignments of {where} win over the grader's values, "
                    "so the run may be slower than the grader intended, or run out of time.")
    return message + (f" Put the parameters in one cell and tag it {tag!r} ({TAG_HOWTO}).")


def injected_source(parameters: dict) -> str:
    lines = ["# Parameters set by the grader"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


def without_injected(nb: NotebookNode) -> NotebookNode:
    """A copy of nb without injected-parameters cells left over from an earlier run (papermill)."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in _tags(c)]
    return nb


def inject_parameters(nb: NotebookNode, parameters: dict, tag: str = "parameters") -> NotebookNode:
    """A copy of nb with the parameters cell followed by one that assigns `parameters`.

    Without a tagged cell the assignments follow the cell that sets most of the parameters
    (`locate_parameters`), or go first when there is none, so the notebook still runs; callers
    record why with `placement_warning`.
    """
    nb = without_injected(nb)
    cell = nbformat.v4.new_code_cell(injected_source(parameters), metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(locate_parameters(nb, parameters, tag).position, cell)
    return nb


def is_injected(cell: NotebookNode) -> bool:
    return INJECTED_TAG in _tags(cell)
