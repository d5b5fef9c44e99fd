"""The reference's measurement at one β, kept on disk next to the other per-user caches.

Measuring the reference (classifying its samples and interpolations, Fréchet statistics: ~5 s on
one CPU thread per β) is the same for every run with the same reference models, parameters,
config and grader code; each worker of each run would otherwise repeat it before its first
student could be scored. The entry is keyed by all of those, written atomically under a file
lock (concurrent workers measure a key once), and read without pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from . import atomic, paths, versioning
from .measure import ReferenceMeasurement
from .records import ModelFigures, SampleCaptions

FORMAT = 2   # 2: the best-β anchor is its own entry, not a role among the figures


def measurement_key(*parts: object) -> str:
    """The entry's name: a digest of what the measurement depends on (the caller names it) and
    of the grader's measuring code."""
    text = json.dumps([FORMAT, versioning.result_digest(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _write(path: Path, measured: ReferenceMeasurement) -> None:
    arrays: dict[str, np.ndarray] = {
        "figures": np.array(json.dumps({role: f.model_dump() for role, f in measured.figures.items()})),
        "best": np.array(json.dumps(None if measured.best is None else measured.best.model_dump())),
    }
    for role, captions in measured.captions.items():
        arrays[f"labels/{role}"] = captions.labels
        arrays[f"confidences/{role}"] = captions.confidences
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict might name allow_pickle; these are array names
    atomic.write_bytes(path, buffer.getvalue())


def _read(path: Path) -> ReferenceMeasurement | None:
    """The entry, or None when it is missing or damaged (then measured again)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            figures = {role: ModelFigures.model_validate(f) for role, f in json.loads(str(saved["figures"])).items()}
            best = json.loads(str(saved["best"]))
            roles = [name.split("/", 1)[1] for name in saved.files if name.startswith("labels/")]
            captions = {role: SampleCaptions(labels=saved[f"labels/{role}"], confidences=saved[f"confidences/{role}"])
                        for role in roles}
    except (OSError, KeyError, ValueError, EOFError):
        return None
    return ReferenceMeasurement(figures, captions, None if best is None else ModelFigures.model_validate(best))


def cached_measurement(key: str, make: Callable[[], ReferenceMeasurement],
                       root: Path | None = None) -> ReferenceMeasurement:
    """The measurement under `key`: read from the cache, else made once (under the lock) and kept."""
    root = root if root is not None else paths.cache_dir() / "reference-measured"
    path = root / f"{key}.npz"

    def make_and_keep() -> ReferenceMeasurement:
        measured = make()
        _write(path, measured)
        return measured

    return paths.compute_once(root / f"{key}.lock", lambda _locked: _read(path), make_and_keep)
