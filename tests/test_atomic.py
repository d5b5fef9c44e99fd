"""grader.atomic: the one place that writes a file (or a folder of files) by temp file and rename."""

from __future__ import annotations

import os

import pytest

from grader import atomic


def test_write_bytes_replaces_the_file_readable_by_others(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic.write_bytes(target, b"old")
    atomic.write_text(target, "nouveau ✓")
    assert target.read_text(encoding="utf-8") == "nouveau ✓"
    assert target.stat().st_mode & 0o777 == atomic.READABLE
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_a_block_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(target) as handle:
            handle.write(b"half")
            raise RuntimeError("the source broke off")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_discard_drops_the_new_data_quietly(tmp_path):
    target = tmp_path / "data.bin"
    with atomic.replacing(target) as handle:
        handle.write(b"wrong checksum")
        raise atomic.Discard
    assert list(tmp_path.iterdir()) == []


def test_the_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    seen = []
    real_fsync = os.fsync

    def fsync(fd):   # what the file holds when it is synced: all of it, under the temporary name
        seen.append((os.fstat(fd).st_size, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_bytes(target, b"x" * 1000)
    assert seen == [(1000, False)]


def test_write_directory_appears_whole(tmp_path):
    entry = tmp_path / "cache" / "entry"
    atomic.write_directory(entry, {"weights.pt": b"\x00\x01", "meta.json": b"{}"})
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == {"weights.pt": b"\x00\x01", "meta.json": b"{}"}
    assert [p.name for p in entry.parent.iterdir()] == ["entry"]


def test_write_directory_never_mixes_into_an_existing_folder(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "meta.json").write_bytes(b"old")
    with pytest.raises(OSError):
        atomic.write_directory(entry, {"meta.json": b"new", "weights.pt": b"w"})
    assert [p.name for p in entry.iterdir()] == ["meta.json"] and (entry / "meta.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
