"""Atomic writes: a reader never sees a half-written file, a crash never leaves one behind.

The only place in the grader that writes a temporary file beside its target and renames it over
the target: a file (`replacing`, `write_bytes`, `write_text`) or a folder of files
(`write_directory`). The data is fsynced before the rename, so after a crash the name holds the
old content or the whole new one, never an empty or partial file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

# Results, data files and the handout are read by people, tools and the sandboxed kernel (another
# uid), not only by the grader: never mkstemp's private 0600.
READABLE = 0o644


class Discard(Exception):
    """Raised inside a `replacing` block: the new data is dropped and the target stays as it was."""


@contextlib.contextmanager
def replacing(path: Path, mode: int = READABLE) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside `path` that takes path's place when the block
    ends. An exception leaves `path` as it was and no temporary file behind; `Discard` is then
    swallowed, any other exception goes on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Discard:
        Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes, mode: int = READABLE) -> None:
    with replacing(path, mode) as handle:
        handle.write(data)


def write_text(path: Path, text: str, mode: int = READABLE) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def write_directory(path: Path, files: Mapping[str, bytes]) -> None:
    """A folder `path` holding `files` (name -> bytes) that readers see whole or not at all:
    written into a temporary folder beside it, then renamed. `path` must not exist yet (a folder
    cannot be renamed over a non-empty one); the caller removes an old one first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name[:16]}-", suffix=".tmp"))
    try:
        for name, data in files.items():
            write_bytes(tmp / name, data)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
