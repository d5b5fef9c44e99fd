"""Unit checks of the student's functions (KL divergence, reparameterization), in a fresh process.

The functions are taken from the notebook's source, not from the kernel: its top-level imports,
definitions and constant assignments, in cell order (a later definition wins, as in the kernel).
They run in a new Python process inside a sandbox of its own, which the student's cells never
touched, on inputs written into its own scratch directory: it runs beside the kernel (grade.py),
whose sandbox sees neither that directory nor the process. What the process returns is a pair of
arrays; the comparison with the closed forms happens in the grader (measure.py).
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from nbformat import NotebookNode

from . import atomic
from .config import AssignmentConfig
from .exporting import read_npz_bounded
from .sandbox import Sandbox, scratch_dir

INPUTS_FILE = "unit_inputs.npz"
SPEC_FILE = "unit_spec.json"
OUTPUT_FILE = "unit_out.npz"
ERRORS_FILE = "unit_errors.json"
MAX_OUTPUT_BYTES = 16 << 20
# Calls a constant assignment may make and still be kept (e.g. `device = torch.device("cpu")`).
ALLOWED_CALLS = {"torch.device", "float", "int", "str", "tuple", "list", "dict"}


@dataclass
class UnitInputs:
    kl_mu: np.ndarray             # [n_kl, latent size]
    kl_log_sigma: np.ndarray
    reparam_mu: np.ndarray        # [n_reparam, latent size], every row the same
    reparam_log_sigma: np.ndarray


def make_unit_inputs(config: AssignmentConfig, params: dict) -> UnitInputs:
    spec = config.probe
    nz = config.latent_size(params)
    rng = np.random.default_rng(spec.seed + 1)
    reparam_mu = rng.normal(0.0, 1.0, size=nz).astype(np.float32)
    reparam_log_sigma = rng.uniform(-1.5, 0.5, size=nz).astype(np.float32)
    return UnitInputs(
        kl_mu=rng.normal(0.0, 1.5, size=(spec.n_kl, nz)).astype(np.float32),
        kl_log_sigma=rng.uniform(-2.0, 1.0, size=(spec.n_kl, nz)).astype(np.float32),
        reparam_mu=np.tile(reparam_mu, (spec.n_reparam, 1)),
        reparam_log_sigma=np.tile(reparam_log_sigma, (spec.n_reparam, 1)),
    )


@dataclass
class UnitResult:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)   # "kl_unit", "reparam_unit"
    errors: dict[str, str] = field(default_factory=dict)          # contract function -> why

    SAVED_ARRAYS: ClassVar[str] = "unit.npz"
    SAVED_ERRORS: ClassVar[str] = "unit.json"

    def save(self, out: Path) -> None:
        """Kept beside the execution record (grader-written files), so re-scoring needs no rerun."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict might name allow_pickle
        atomic.write_bytes(out / self.SAVED_ARRAYS, buffer.getvalue())
        atomic.write_text(out / self.SAVED_ERRORS, json.dumps(self.errors))

    @classmethod
    def load(cls, out: Path, config: AssignmentConfig) -> "UnitResult":
        """What save wrote, its errors keyed by check part (kl_divergence, reparameterize) rather
        than by the notebook's function names."""
        contract = config.contract
        parts = {contract.kl_divergence: "kl_divergence", contract.reparameterize: "reparameterize"}
        try:
            errors = json.loads((out / cls.SAVED_ERRORS).read_text())
            arrays = read_npz_bounded(out / cls.SAVED_ARRAYS, MAX_OUTPUT_BYTES)
        except (OSError, ValueError) as exc:
            why = f"the unit checks' results could not be read ({exc})"
            return cls(errors={part: why for part in parts.values()})
        return cls(arrays=arrays, errors={parts.get(k, k): v for k, v in errors.items()})


# --- the source -----------------------------------------------------------------------------------


def _cell_python(source: str) -> str:
    """A cell's code as plain Python (IPython magics and shell escapes turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _is_constant_assignment(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
        return False
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    if not all(isinstance(t, ast.Name) for t in targets):   # `numpy.savez = ...` is a patch, not a constant
        return False
    calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
    return all(_dotted(c.func) in ALLOWED_CALLS for c in calls)


KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _bound_names(node: ast.stmt) -> set[str] | None:
    """The names a kept statement binds; None for `from x import *` (anything)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        if any(alias.name == "*" for alias in node.names):
            return None
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()   # kept statements are the definitions above and constant assignments


def _used_names(node: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _needed(nodes: list[ast.stmt], roots: set[str]) -> list[bool]:
    """Which statements the roots need: those binding a needed name, where a name is needed when
    a root or a needed statement uses it. Importing only what the checked functions use saves
    seconds a notebook: torchvision and pyplot alone cost ~2.5 s of a fresh process's start."""
    needed, keep = set(roots), [False] * len(nodes)
    bound = [_bound_names(node) for node in nodes]
    changed = True
    while changed:
        changed = False
        for i, node in enumerate(nodes):
            names = bound[i]
            if not keep[i] and (names is None or names & needed):
                keep[i], changed = True, True
                needed |= _used_names(node)
    return keep


def definitions(nb: NotebookNode, roots: list[str] | None = None) -> list[dict]:
    """The notebook's top-level imports, definitions and constant assignments, in order, each as
    {"cell": index, "source": code}; with roots (function names), only what they need, directly
    or through other kept definitions. Cells that do not parse are skipped (they failed in the
    kernel too)."""
    found: list[tuple[int, ast.stmt]] = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code" or not isinstance(cell.get("source"), str):
            continue
        try:
            tree = ast.parse(_cell_python(cell.source))
        except (SyntaxError, ValueError):
            continue
        found += [(index, node) for node in tree.body if isinstance(node, KEPT) or _is_constant_assignment(node)]
    keep = _needed([node for _, node in found], set(roots)) if roots is not None else [True] * len(found)
    return [{"cell": index, "source": ast.unparse(node)} for (index, node), kept in zip(found, keep) if kept]


# --- the fresh process ----------------------------------------------------------------------------

# Run as `python -I -c CHECKER spec.json` in the sandbox. Every definition is executed on its own
# (one that fails costs only what needs it), then each function is called on the grader's inputs.
#
# The student's definitions run arbitrary code here (a class body, a decorator): whatever they
# patch, the only way to hand back a right answer is to compute it, since the process holds
# nothing but the inputs. The writers are bound first all the same, so honest patches do no harm.
CHECKER = r'''
import json, sys
spec = json.load(open(sys.argv[1]))
import numpy as np, torch
torch.set_num_threads(1)
savez, dump, write_to = np.savez, json.dump, open
errors, arrays, notes = {}, {}, []
namespace = {"__name__": "__main__"}
namespace.update(spec["params"])
for item in spec["definitions"]:
    try:
        exec(compile(item["source"], "<cell %d>" % item["cell"], "exec"), namespace)
    except BaseException as exc:
        notes.append("cell %d: %s: %s" % (item["cell"], type(exc).__name__, exc))
inputs = dict(np.load(spec["inputs"], allow_pickle=False))
def call(key, name, *args, seed=None):
    fn = namespace.get(name)
    if not callable(fn):
        errors[name] = "no function %r is defined at the top level of the notebook" % name
        if notes:
            errors[name] += " (definitions that failed: " + "; ".join(notes)[:300] + ")"
        return
    try:
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            out = fn(*[torch.from_numpy(inputs[a]) for a in args])
        if not isinstance(out, torch.Tensor):
            raise TypeError("it returned a %s, not a tensor" % type(out).__name__)
        arrays[key] = out.detach().to("cpu", torch.float32).numpy()
    except BaseException as exc:
        errors[name] = ("%s: %s" % (type(exc).__name__, exc))[:500]
call("kl_unit", spec["kl_divergence"], "kl_mu", "kl_log_sigma")
call("reparam_unit", spec["reparameterize"], "reparam_mu", "reparam_log_sigma", seed=spec["seed"])
savez(spec["output"], **arrays)
dump(errors, write_to(spec["errors"], "w"))
'''


def _write_inputs(directory: Path, inputs: UnitInputs) -> Path:
    path = directory / INPUTS_FILE
    np.savez(path, **inputs.__dict__)
    path.chmod(0o644)
    return path


def _read_result(directory: Path, returncode: int | None, timed_out: bool, names: list[str]) -> UnitResult:
    result = UnitResult()
    try:
        errors_path = directory / ERRORS_FILE
        if errors_path.is_symlink() or errors_path.stat().st_size > 100_000:
            raise ValueError(f"{ERRORS_FILE} is not a small regular file")
        result.errors = {str(k): str(v)[:1000] for k, v in dict(json.loads(errors_path.read_text())).items()}
        arrays = read_npz_bounded(directory / OUTPUT_FILE, MAX_OUTPUT_BYTES)
        result.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k in ("kl_unit", "reparam_unit")}
    except Exception as exc:
        why = ("it ran longer than its time limit" if timed_out else
               f"it ended without a result (exit code {returncode}; {type(exc).__name__}: {exc})")
        result.errors = {name: f"the unit checker could not run your function: {why}" for name in names}
    return result


def run_unit_checks(nb: NotebookNode, config: AssignmentConfig, params: dict, inputs: UnitInputs,
                    data_dir: Path) -> UnitResult:
    """The student's KL and reparameterization outputs on `inputs`, from a fresh sandboxed process."""
    contract = config.contract
    names = [contract.kl_divergence, contract.reparameterize]
    with scratch_dir("unit", config.limits) as scratch:   # size-capped, removed whatever is left
        with Sandbox(scratch, data_dir, config.limits, threads=1) as sandbox:
            spec = {
                "params": {k: v for k, v in params.items() if k != config.parameters.data_dir},
                "definitions": definitions(nb, names),
                "inputs": str(_write_inputs(sandbox.scratch_dir, inputs)),
                "kl_divergence": contract.kl_divergence,
                "reparameterize": contract.reparameterize,
                "seed": config.probe.seed,
                "output": str(sandbox.scratch_dir / OUTPUT_FILE),
                "errors": str(sandbox.scratch_dir / ERRORS_FILE),
            }
            spec_path = sandbox.scratch_dir / SPEC_FILE
            spec_path.write_text(json.dumps(spec))
            spec_path.chmod(0o644)
            command = sandbox.wrap([sys.executable, "-I", "-c", CHECKER, str(spec_path)])
            timed_out, returncode = False, None
            try:
                done = subprocess.run(command, env=sandbox.environment(), cwd=sandbox.scratch_dir,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=config.probe.unit_timeout_s)
                returncode = done.returncode
            except subprocess.TimeoutExpired:
                timed_out = True
            return _read_result(sandbox.scratch_dir, returncode, timed_out, names)
