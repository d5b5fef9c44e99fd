"""What the kernel's export is asked to do: the code sent to the kernel and the files it writes.

Kept apart from grader/probe.py (which reads the export back and runs models, with torch) so
that executing a notebook never imports torch: a worker starts its first kernel while the
torch-using parts of the grader still load in a thread (grade.prepare).
"""

from __future__ import annotations

import json
import zipfile
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.lib import format as npy_format

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


class ExportTooLarge(ValueError):
    pass


def read_npz_bounded(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an npz, refusing before any decompression anything whose declared sizes or
    array headers pass max_bytes in all (a few MB of compressed zeros can hold gigabytes)."""
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"{path.name} is not a regular file")
    if path.stat().st_size > max_bytes:
        raise ExportTooLarge(f"{path.name} is larger than {max_bytes} bytes")
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if sum(info.file_size for info in infos) > max_bytes:
            raise ExportTooLarge(f"{path.name} unpacks to more than {max_bytes} bytes")
        for info in infos:
            with archive.open(info) as member:
                version = npy_format.read_magic(member)
                read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                shape, fortran, dtype = read_header(member)
                if dtype.hasobject:
                    raise ValueError(f"{info.filename}: object arrays are not accepted")
                count = int(np.prod(shape, dtype=np.int64))
                if count * dtype.itemsize > info.file_size:
                    raise ExportTooLarge(f"{info.filename}: its header claims more data than it holds")
                data = np.frombuffer(member.read(count * dtype.itemsize), dtype=dtype, count=count)
                order: Literal["C", "F"] = "F" if fortran else "C"
                arrays[info.filename.removesuffix(".npy")] = data.reshape(shape, order=order).copy()  # writable
    return arrays
