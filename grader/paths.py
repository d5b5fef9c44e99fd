"""Where things live: the repository's shipped files and the per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT / "reference"
TEMPLATES_DIR = REPO_ROOT / "templates"
DEFAULT_CONFIG = REFERENCE_DIR / "assignment.toml"


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
