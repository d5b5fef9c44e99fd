"""Digests of the grader's own code, so that caches notice a new grader.

Each cached stage is keyed on the sources that can change its output: a run (execution.json) on
what confines and drives the kernel and what it hands back; a result (result.json) on everything
that measures and scores; a PDF on the templates and the code that renders them. Editing any of
them redoes exactly the stages that depend on it, and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR.parent / "templates"

# What can change a kernel's run and what the grader takes out of it: the modules that drive and
# confine the kernel, the code sent into it (kernel_export.py goes in as text, so no import finds
# it), and every grader module they import (tests/test_versioning.py checks that closure).
EXECUTION_SOURCES = ("sandbox.py", "execute.py", "inject.py", "probe.py", "exporting.py", "kernel_export.py", "unitcheck.py",
                     "config.py", "hints.py", "records.py", "devices.py", "text.py", "atomic.py", "errors.py",
                     "paths.py")
# What can change the measured numbers, the points and the figures: every module of the package
# (measuring touches models, metrics, the classifier, the reference, scoring, answers, figures)
# but those that only render the PDF or parse the command line.
RESULT_SOURCES = ("*.py", "metrics/*.py")
NOT_IN_RESULT = ("report.py", "mathtext.py", "cli.py")
REPORT_SOURCES = ("report.py", "mathtext.py")


def _files(root: Path, patterns: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(p for p in found if str(p.relative_to(root)) not in exclude)


def digest_of(root: Path, patterns: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 over the relative names and bytes of the files under root matching patterns."""
    h = hashlib.sha256()
    for path in _files(root, patterns, exclude):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def execution_digest(root: Path = PACKAGE_DIR) -> str:
    return digest_of(root, EXECUTION_SOURCES)


@functools.cache
def result_digest(root: Path = PACKAGE_DIR) -> str:
    return digest_of(root, RESULT_SOURCES, NOT_IN_RESULT)


@functools.cache
def report_digest(root: Path = PACKAGE_DIR, templates: Path = TEMPLATES_DIR) -> str:
    return hashlib.sha256((digest_of(root, REPORT_SOURCES) + digest_of(templates, ("**/*",))).encode()).hexdigest()
