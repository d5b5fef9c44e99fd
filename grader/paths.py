"""Where things live: the repository's shipped files and the per-user cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT / "reference"
TEMPLATES_DIR = REPO_ROOT / "templates"
DEFAULT_CONFIG = REFERENCE_DIR / "assignment.toml"

T = TypeVar("T")


def cache_dir() -> Path:
    """Per-user cache (MNIST, reference models); GRADER_CACHE overrides it."""
    override = os.environ.get("GRADER_CACHE")
    path = Path(override) if override else Path(platformdirs.user_cache_dir("grader"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_data_dir() -> Path:
    """MNIST root in torchvision's layout (ROOT/MNIST/raw); GRADER_DATA_DIR overrides it."""
    override = os.environ.get("GRADER_DATA_DIR")
    return Path(override) if override else cache_dir() / "data"


def compute_once(lock: Path, read: Callable[[bool], T | None], make: Callable[[], T]) -> T:
    """A cache entry shared by processes: read(False) if it is there; else, under the file lock,
    read(True) again (another worker may have made it while this one waited) or make() it, so
    concurrent workers compute a key once. read returns None for a missing or damaged entry;
    make writes the entry (atomically) and returns the value."""
    import filelock

    found = read(False)
    if found is not None:
        return found
    lock.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock):
        found = read(True)
        return found if found is not None else make()
