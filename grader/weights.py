"""A student's models rebuilt from their weights, in the grader's copy of the handout's architecture.

The kernel hands back `state_dict` tensors only (probe.run_export). Here they are loaded into a
fresh instance of the class the config names for the model's kind; the student's own classes,
methods and objects never run in the grader. Weights that do not fit the prescribed architecture
make the model unmeasurable, with a message that says which tensor does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import AssignmentConfig
from .probe import KernelExport


class WeightsMismatch(ValueError):
    """The weights handed back do not fit the architecture the handout prescribes."""


@dataclass
class RebuiltModels:
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)    # role -> why it could not be rebuilt
    notes: dict[str, str] = field(default_factory=dict)     # role -> how it was matched


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in list(shapes.items())[:8])


def match_state(expected: dict[str, torch.Tensor], given: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], str]:
    """The given arrays as a state dict for `expected`: by name when the names and shapes agree,
    else by position when the shapes agree in order (layers named differently, or a parameter-free
    layer such as Dropout added, shift the names, not the weights). WeightsMismatch otherwise."""
    want = {name: tuple(t.shape) for name, t in expected.items()}
    have = {name: tuple(a.shape) for name, a in given.items()}
    if want == have:
        pairs, note = [(name, name) for name in want], ""
    elif list(want.values()) == list(have.values()):
        pairs = list(zip(want, have))
        note = "its layers are named differently from the handout's; matched by position"
    else:
        missing = [n for n in want if n not in have]
        if missing and len(want) != len(have):
            detail = f"expected {len(want)} tensors, got {len(have)}"
        else:
            first = next((i for i, (a, b) in enumerate(zip(want.values(), have.values())) if a != b), len(want))
            names = list(want)
            detail = (f"tensor {first + 1} ({names[min(first, len(names) - 1)]}) should have shape "
                      f"{list(list(want.values())[min(first, len(want) - 1)])}")
            got = list(have.items())
            if first < len(got):
                detail += f", got {got[first][0]} {list(got[first][1])}"
        raise WeightsMismatch(
            f"its weights do not fit the handout's architecture ({detail}); expected {_describe(want)}"
            + (" ..." if len(want) > 8 else "")
        )
    state = {}
    for target, source in pairs:
        array = np.asarray(given[source], dtype=np.float32)
        if not np.isfinite(array).all():
            raise WeightsMismatch(f"its weights contain NaN or infinite values ({source}): training diverged")
        state[target] = torch.from_numpy(array.copy())
    return state, note


def rebuild_model(config: AssignmentConfig, role: str, nz: int, given: dict[str, np.ndarray]) -> tuple[torch.nn.Module, str]:
    model = config.model_class(config.model(role).kind)(nz)
    state, note = match_state(model.state_dict(), given)
    model.load_state_dict(state, strict=True)
    return model.eval(), note


def rebuild_models(config: AssignmentConfig, params: dict, export: KernelExport) -> RebuiltModels:
    """Every model of the contract the export holds weights for; errors name what went wrong."""
    nz = config.latent_size(params)
    rebuilt = RebuiltModels()
    for role, var in config.model_names().items():
        if role in export.errors:
            rebuilt.errors[role] = export.errors[role]
            continue
        if role not in export.weights:
            rebuilt.errors[role] = export.errors.get("probe", f"{var}: no weights were handed back")
            continue
        try:
            rebuilt.models[role], note = rebuild_model(config, role, nz, export.weights[role])
        except WeightsMismatch as exc:  # the report prefixes the role; name the variable where it differs
            rebuilt.errors[role] = str(exc) if var == role else f"({var}) {exc}"
            continue
        if note:
            rebuilt.notes[role] = f"{var}: {note}"
    return rebuilt
