"""The sandbox one student's kernel runs in.

Layers, each optional so that the grader still runs (with a warning) on a host that lacks it:

- bubblewrap: new pid, network, ipc and uts namespaces; a file system made of read-only binds of
  the system and Python directories, the MNIST files read-only, a private /tmp, and one writable
  directory, the submission's scratch directory. The kernel sees no other submission, no grader
  output, no repository, and has no network (only its own loopback).
- an unprivileged uid of its own (setpriv), taken from a pool and locked while in use, so that the
  per-uid process limit counts this kernel alone and no two kernels can signal or read each other.
- limits: RLIMIT_DATA per process and RLIMIT_NPROC (prlimit); a memory and a pids cgroup for the
  whole tree where the host lets us create one. RLIMIT_AS is not used: PyTorch reserves far more
  address space than it touches and fails under it.

The kernel is an ordinary ipykernel reached over ZeroMQ ipc sockets (TCP cannot cross the new
network namespace) in a private runtime directory bound into the sandbox at the same path.
"""

from __future__ import annotations

import fcntl
import functools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec

from .config import Limits
from .errors import GraderError

# Dedicated sandbox uids: above the usual human and system ranges (and below the ranges container
# runtimes hand out); uids that exist in the user database are skipped.
UID_BASE = 200_000
UID_POOL = 256

# System directories the kernel needs, read-only. /etc is not bound whole (it holds host secrets).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/fonts", "/etc/mime.types", "/etc/alternatives",
)

# Moves the shell into the sandbox's cgroups, then becomes the command (so that the whole tree,
# including processes that call setsid, is charged and capped from its first instruction).
_CGROUP_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


class SandboxError(GraderError):
    """The sandbox could not be set up (a problem of the host, not of the submission)."""


@functools.cache
def _bwrap() -> tuple[str | None, str]:
    """(path of a working bwrap, or None; why not)."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap (bwrap) is not installed"
    probe = [path, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--unshare-ipc", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bubblewrap cannot run ({exc})"
    if done.returncode != 0:
        return None, f"bubblewrap cannot create namespaces here ({done.stderr.strip()})"
    usage = subprocess.run([path, "--help"], capture_output=True, text=True).stdout
    if "--perms" not in usage or "--clearenv" not in usage:
        return None, "bubblewrap is older than 0.5 (no --perms/--clearenv)"
    return path, ""


@functools.cache
def _bwrap_has(option: str) -> bool:
    path, _ = _bwrap()
    return bool(path) and option in subprocess.run([path, "--help"], capture_output=True, text=True).stdout


def _can_switch_uid() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def sandbox_capabilities() -> list[str]:
    """One sentence per protection this host cannot give a kernel (empty: it gives them all)."""
    warnings = []
    bwrap, why = _bwrap()
    if bwrap is None:
        warnings.append(f"{why}: notebooks run without network or file-system isolation")
    if not _can_switch_uid():
        warnings.append(
            "the grader is not root (or setpriv is missing): notebooks run as the grader's own user, "
            "without a per-kernel process limit"
        )
    if shutil.which("prlimit") is None:
        warnings.append("prlimit (util-linux) is missing: no per-process memory or process limit")
    probe = _CgroupSet.create(1 << 30, 64)
    if probe is None:
        warnings.append(
            "no writable memory and pids cgroups: memory is capped per process only, "
            "not for the kernel and its children together"
        )
    else:
        probe.remove()
    return warnings


# --- cgroups -----------------------------------------------------------------------------------


def _cgroup_mounts() -> dict[str, Path]:
    """controller ('memory', 'pids', or 'unified' for v2) -> mount point."""
    mounts: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.setdefault("unified", Path(fields[4]))
        elif tail[0] == "cgroup":
            for controller in ("memory", "pids"):
                if controller in tail[2].split(","):
                    mounts.setdefault(controller, Path(fields[4]))
    return mounts


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path in a v1 hierarchy ('memory', 'pids') or v2 ('')."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path
    return None


class _CgroupSet:
    """Fresh child cgroups (v1: one memory + one pids; v2: one with both) for one sandbox."""

    def __init__(self, dirs: list[Path], oom_events: Path):
        self.dirs = dirs
        self.oom_events = oom_events

    @classmethod
    def create(cls, memory_bytes: int, processes: int) -> "_CgroupSet | None":
        name = f"grader-{secrets.token_hex(6)}"
        mounts = _cgroup_mounts()
        made: list[Path] = []
        try:
            if "memory" in mounts and "pids" in mounts:
                memory = mounts["memory"] / (_own_cgroup("memory") or "/").lstrip("/") / name
                pids = mounts["pids"] / (_own_cgroup("pids") or "/").lstrip("/") / name
                for directory in (memory, pids):
                    _remove_stale_siblings(directory)
                    directory.mkdir()
                    made.append(directory)
                (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                try:  # forbid swap too where swap accounting exists
                    (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                except OSError:
                    pass
                (pids / "pids.max").write_text(str(processes))
                return cls([memory, pids], memory / "memory.oom_control")
            if "unified" in mounts:
                parent = mounts["unified"] / (_own_cgroup("") or "/").lstrip("/")
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
                unified = parent / name
                _remove_stale_siblings(unified)
                unified.mkdir()
                made.append(unified)
                (unified / "memory.max").write_text(str(memory_bytes))
                (unified / "memory.swap.max").write_text("0")
                (unified / "pids.max").write_text(str(processes))
                return cls([unified], unified / "memory.events")
        except OSError:
            pass
        for directory in made:
            _rmdir_quietly(directory)
        return None

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_kills(self) -> int:
        try:
            for line in self.oom_events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Kill whatever is left inside (double-forked daemons included), then delete."""
        for directory in self.dirs:
            for pid in _read_pids(directory / "cgroup.procs"):
                _kill(pid)
        for directory in self.dirs:
            _rmdir_quietly(directory)


def _remove_stale_siblings(directory: Path, min_age_s: float = 300) -> None:
    """Delete sandbox cgroups a killed grader left behind. rmdir fails on any cgroup that still
    has a process, and a live sandbox joins its cgroup within a second of creating it."""
    for stale in directory.parent.glob("grader-*"):
        try:
            if time.time() - stale.stat().st_mtime > min_age_s:
                stale.rmdir()
        except OSError:
            pass


def _read_pids(procs: Path) -> list[int]:
    try:
        return [int(p) for p in procs.read_text().split()]
    except (OSError, ValueError):
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _rmdir_quietly(directory: Path) -> None:
    for _ in range(50):  # a cgroup can be removed only once its killed members are reaped
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


# --- uids --------------------------------------------------------------------------------------


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _claim_uid() -> tuple[int, IO[str]]:
    """A sandbox uid no other live sandbox holds, and the open lock file that holds it."""
    lock_dir = Path(tempfile.gettempdir()) / "grader-sandbox-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    for uid in range(UID_BASE, UID_BASE + UID_POOL):
        if _uid_exists(uid):
            continue
        lock = open(lock_dir / str(uid), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, lock
        except BlockingIOError:
            lock.close()
    raise SandboxError(f"all {UID_POOL} sandbox uids from {UID_BASE} are in use")


def _kill_uid_processes(uid: int) -> None:
    """SIGKILL every process whose real uid is the sandbox's (it is dedicated and locked to us)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    _kill(int(entry.name))
            except OSError:
                pass


# --- the sandbox -------------------------------------------------------------------------------


def _python_dirs() -> list[str]:
    """The Python installation(s) the kernel runs from (a venv and the interpreter it points to)."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    candidates.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    dirs = sorted(os.path.realpath(c) for c in candidates) + sorted(candidates)
    kept: list[str] = []
    for d in dirs:
        if d not in kept and not any(d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


def _check_readable_by_others(data_dir: Path) -> None:
    """The kernel's uid reads the data as 'others': every directory must be o+rx."""
    for directory in [data_dir, *(Path(d) / s for d, subs, _ in os.walk(data_dir) for s in subs)]:
        if directory.stat().st_mode & 0o005 != 0o005:
            raise SandboxError(
                f"{directory}: not readable by the sandbox's unprivileged user; "
                f"make the data world-readable (chmod -R a+rX {data_dir})"
            )


def _check_traversable(scratch_dir: Path) -> None:
    for parent in scratch_dir.parents:
        if parent.stat().st_mode & 0o001 == 0:
            raise SandboxError(
                f"{parent}: the sandbox's unprivileged user cannot pass through it to the scratch "
                f"directory {scratch_dir} (without bubblewrap); use a scratch directory whose parents "
                "are world-searchable (o+x), or install bubblewrap"
            )


class Sandbox:
    """Everything one kernel's confinement needs; use as a context manager around the kernel's life.

    The data directory appears read-only at `data_path` (scratch/data); the kernel works in the
    scratch directory, which is its HOME and the only place it can write (besides a private /tmp).
    """

    def __init__(self, scratch_dir: Path, data_dir: Path, limits: Limits, *, threads: int | None = None):
        self.scratch_dir = Path(scratch_dir).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.data_path = self.scratch_dir / "data"
        self.limits = limits
        self.threads = threads or len(os.sched_getaffinity(0))
        self.bwrap, why_not = _bwrap()
        self.uid: int | None = None
        self.warnings: list[str] = []
        if self.bwrap is None:
            self.warnings.append(f"{why_not}: the notebook ran without network or file-system isolation")
        self.runtime_dir: Path | None = None
        self._uid_lock: IO[str] | None = None
        self._cgroups: _CgroupSet | None = None

    # lifecycle

    def __enter__(self) -> "Sandbox":
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepare(self) -> None:
        limits = self.limits
        if _can_switch_uid():
            self.uid, self._uid_lock = _claim_uid()
            os.chown(self.scratch_dir, self.uid, self.uid)
            self.scratch_dir.chmod(0o700)
        else:
            self.warnings.append(
                "the grader is not root: the notebook ran as the grader's own user, "
                "without a process limit of its own"
            )
        if self.uid is not None:
            _check_readable_by_others(self.data_dir)
            if self.bwrap is None:  # no bind at the same path: the real parents must let it through
                _check_traversable(self.scratch_dir)
        if self.bwrap:  # the mount point of the read-only data bind; root-owned, so it stays
            self.data_path.mkdir(mode=0o755)
        else:  # a private copy: the kernel can neither reach nor change the grader's cache
            shutil.copytree(self.data_dir, self.data_path)
        # Connection file and ipc sockets: a short path (sockets allow ~107 bytes), private to
        # the kernel's uid; root (the grader) connects regardless of the mode.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="grader-kernel-"))
        if self.uid is not None:
            os.chown(self.runtime_dir, self.uid, self.uid)
        self._cgroups = _CgroupSet.create(limits.memory_mb << 20, limits.processes) if self.uid is not None else None
        if self._cgroups is None:
            self.warnings.append(
                "no memory/pids cgroup could be created: memory is capped per process "
                f"({limits.memory_mb} MB each), not for the kernel and its children together"
            )
        if shutil.which("prlimit") is None:
            self.warnings.append("prlimit is missing: no per-process memory or process limit was set")

    def close(self) -> None:
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
        if self.uid is not None:
            _kill_uid_processes(self.uid)
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
        if self._uid_lock is not None:
            self._uid_lock.close()
            self._uid_lock = None

    # what the kernel launch needs

    def environment(self) -> dict[str, str]:
        """The kernel's whole environment: nothing of the grader's (no secrets, no tokens)."""
        threads = str(self.threads)
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.scratch_dir),
            "USER": "student",   # getpass.getuser() needs one of these without a passwd entry
            "LOGNAME": "student",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "MPLBACKEND": "Agg",
            "PYTHONHASHSEED": "0",
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
        }

    def wrap(self, argv: list[str]) -> list[str]:
        """argv wrapped in: cgroup join -> bwrap -> limits -> unprivileged uid -> argv."""
        cmd = list(argv)
        if self.uid is not None:
            cmd = [shutil.which("setpriv") or "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                   "--inh-caps=-all", "--", *cmd]
        prlimit = shutil.which("prlimit")
        if prlimit:
            limits = [f"--data={self.limits.memory_mb << 20}", "--core=0"]
            if self.uid is not None:  # RLIMIT_NPROC counts per uid: only meaningful on our own
                limits.append(f"--nproc={self.limits.processes}")
            cmd = [prlimit, *limits, "--", *cmd]
        if self.bwrap:
            cmd = [self.bwrap, *self._bwrap_args(), "--", *cmd]
        if self._cgroups is not None:
            cmd = ["/bin/sh", "-c", _CGROUP_JOIN, "grader-cgroup-join", *self._cgroups.procs_files, "--", *cmd]
        return cmd

    def _bwrap_args(self) -> list[str]:
        args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        # bwrap creates missing parents of a mount point 0700 (root's): open them to the kernel's uid
        present = {"/", "/tmp", "/dev", "/dev/shm", "/proc"}

        def mount(option: str, source: str, dest: str) -> None:
            missing = []
            for parent in Path(dest).parents:
                if str(parent) in present:
                    break
                missing.append(str(parent))
            for parent in reversed(missing):
                args.extend(["--perms", "0755", "--dir", parent])
                present.add(parent)
            args.extend([option, source, dest])
            present.add(dest)

        args += ["--proc", "/proc", "--dev", "/dev"]
        tmp_size = ["--size", str(self.limits.memory_mb << 20)] if _bwrap_has("--size") else []
        args += ["--perms", "1777", *tmp_size, "--tmpfs", "/tmp", "--perms", "1777", *tmp_size, "--tmpfs", "/dev/shm"]
        for path in SYSTEM_DIRS + ETC_FILES:
            if os.path.islink(path):  # merged-/usr systems: /bin -> usr/bin
                mount("--symlink", os.readlink(path), path)
            elif os.path.exists(path):
                mount("--ro-bind", path, path)
        for path in _python_dirs():
            mount("--ro-bind", path, path)
        mount("--bind", str(self.scratch_dir), str(self.scratch_dir))
        mount("--ro-bind", str(self.data_dir), str(self.data_path))
        mount("--bind", str(self.runtime_dir), str(self.runtime_dir))
        args += ["--chdir", str(self.scratch_dir), "--clearenv"]
        for name, value in self.environment().items():
            args += ["--setenv", name, value]
        return args

    # after the fact

    def oom_killed(self) -> bool:
        """Whether the memory cgroup's OOM killer struck (only known where there is a cgroup)."""
        return self._cgroups is not None and self._cgroups.oom_kills() > 0


class SandboxedKernelManager(AsyncKernelManager):
    """A Python kernel launched inside `sandbox`, reached over ipc sockets in its runtime dir.

    Asynchronous because nbclient's cell timeouts never fire with a synchronous manager; interrupts
    go as messages because a SIGINT to the launcher (bwrap) would kill the whole sandbox.
    """

    def __init__(self, sandbox: Sandbox, **kwargs):
        assert sandbox.runtime_dir is not None, "enter the Sandbox before starting its kernel"
        super().__init__(kernel_name="python3", transport="ipc", **kwargs)
        self.sandbox = sandbox
        self.connection_file = str(sandbox.runtime_dir / "kernel.json")
        self.ip = str(sandbox.runtime_dir / "ipc")

    @property
    def kernel_spec(self) -> KernelSpec:
        # Our own spec, not whatever "python3" kernelspec the host has installed.
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (sandboxed)",
                language="python",
                interrupt_mode="message",
                metadata={},
            )
        return self._kernel_spec

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return self.sandbox.wrap(super().format_kernel_cmd(extra_arguments))

    def write_connection_file(self, **kwargs) -> None:
        super().write_connection_file(**kwargs)
        if self.sandbox.uid is not None:  # written 0600 by root: the kernel's uid must read it
            os.chown(self.connection_file, self.sandbox.uid, self.sandbox.uid)
