"""What the kernel's export is asked to do: the code sent to the kernel and the files it writes.

Kept apart from grader/probe.py (which reads the export back and runs models, with torch) so
that executing a notebook never imports torch: a worker starts its first kernel while the
torch-using parts of the grader still load in a thread (grade.prepare).
"""

from __future__ import annotations

import json
from importlib import resources

from .config import AssignmentConfig

WEIGHTS_FILE = "weights.npz"
VALUES_FILE = "probe.json"
KERNEL_EXPORT_MODULE = "kernel_export.py"   # the export's source, sent to the kernel as text


def history_key(kind: str) -> str:
    """Where the export keeps the training record of a kind of model among its plain values."""
    return f"history.{kind}"


def export_spec(config: AssignmentConfig) -> dict:
    contract = config.contract
    models = config.model_names()
    return {
        "models": models,
        "best_beta": contract.best_beta,
        "histories": {history_key(kind): var for kind, var in contract.histories.items()},
        "max_history": config.probe.max_history_epochs,
        # float32 weights; the bound keeps a hostile export from filling memory or disk
        "max_elements": config.probe.max_export_mb * (1 << 20) // 4 // max(len(models), 1),
        "weights_file": WEIGHTS_FILE,
        "values_file": VALUES_FILE,
    }


def export_code(config: AssignmentConfig) -> str:
    """Source sent to the kernel: the text of kernel_export.py, then one call of its run_export on
    the kernel's globals, which then lose the name again."""
    spec = json.dumps(export_spec(config))
    return (
        export_source()
        + f"\nrun_export(globals(), __import__('json').loads({spec!r}))\ndel run_export\n"
    )


def export_source() -> str:
    """kernel_export.py as text, read as a package resource (an installed grader has it too)."""
    return resources.files(__package__).joinpath(KERNEL_EXPORT_MODULE).read_text(encoding="utf-8")
