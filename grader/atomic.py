"""Atomic writes: a reader never sees a half-written file, a crash never leaves one behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # results are read by people and tools other than the grader
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


class CopyRefused(ValueError):
    """A file left in a sandbox's scratch directory that the grader will not take out."""


def copy_bounded(source: Path, target: Path, max_bytes: int) -> None:
    """A copy of an untrusted file: only a regular file (not a link, a directory or a device) of
    at most max_bytes by its logical size, so a sparse 1 GiB file is refused before a byte is read,
    and never more than max_bytes are read even if it grows meanwhile."""
    import stat

    info = os.lstat(source)
    if not stat.S_ISREG(info.st_mode):
        raise CopyRefused(f"{source.name} is not a regular file")
    if info.st_size > max_bytes:
        raise CopyRefused(f"{source.name} is {info.st_size} bytes, more than the {max_bytes} allowed")
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CopyRefused(f"{source.name} grew past the {max_bytes} bytes allowed")
    write_bytes(target, data)
