"""The sandbox one student's kernel runs in.

Layers, each optional so that the grader still runs (with a warning) on a host that lacks it:

- bubblewrap: new pid, network, ipc and uts namespaces; a file system made of read-only binds of
  the system and Python directories, the MNIST files read-only, a private /tmp, and one writable
  directory, the submission's scratch directory. The kernel sees no other submission, no grader
  output, no repository, and has no network (only its own loopback).
- an unprivileged uid of its own (setpriv), taken from a pool and locked while in use, so that the
  per-uid process limit counts this kernel alone and no two kernels can signal or read each other.
- limits: RLIMIT_DATA, RLIMIT_FSIZE per process and RLIMIT_NPROC (prlimit); a memory, a pids and
  a cpu cgroup for the whole tree where the host lets us create them. RLIMIT_AS is not used:
  PyTorch reserves far more address space than it touches and fails under it.
- disk: the scratch directory (from make_scratch_dir) and the runtime directory are tmpfs mounts of
  a fixed size, and so are the private /tmp and /dev/shm (bwrap --size): a notebook cannot fill
  the host's disk. tmpfs pages are memory, charged to the kernel's memory cgroup.
- no user namespaces inside (a seccomp filter bwrap loads): a kernel cannot become "root" of a
  namespace of its own and reach kernel code that only such a root can.

Every directory and mount the grader makes is named for its owner (pid and start time), so that
the next run can remove what a killed grader left behind (reap_stale_dirs); remove_tree removes
one whatever is inside it.

The kernel is an ordinary ipykernel reached over ZeroMQ ipc sockets (TCP cannot cross the new
network namespace) in a private runtime directory bound into the sandbox at the same path.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import pwd
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import zmq
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec

from .config import Limits
from .devices import DEV_DIR, DevicesError, Slot, device_binds, device_warnings, host_driver_library_dirs
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
# including processes that call setsid, is charged and capped from its first instruction). $1, if
# not empty, is the seccomp filter, opened on fd 3 for bwrap's --seccomp 3.
_LAUNCH = ('f=$1; shift; while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; '
           'if [ -n "$f" ]; then exec 3<"$f" || exit 125; fi; exec "$@"')
SECCOMP_FD = "3"


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
    return bool(path and option in subprocess.run([path, "--help"], capture_output=True, text=True).stdout)


def _can_switch_uid() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


# --- no user namespaces inside: a seccomp filter, loaded by bwrap (--seccomp FD) -----------------
#
# A kernel that makes a user namespace becomes "root" in it and reaches kernel code only such a
# root can (the source of many local privilege escalations). bwrap's --disable-userns would need
# bwrap itself in a user namespace, run as the kernel's uid, which then cannot reach a Python that
# only root can (/root/.pyenv): a filter keeps the launch order and works with any bwrap.

_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_CLONE_NEWUSER = 0x10000000
# machine -> (audit arch, unshare, clone, clone3, lowest number of another ABI on the same arch)
_SYSCALLS = {"x86_64": (0xC000003E, 272, 56, 435, 0x40000000),   # x32 numbers have bit 30 set
             "aarch64": (0xC00000B7, 97, 220, 435, None)}


def _userns_filter(machine: str) -> bytes | None:
    """The BPF program (struct sock_filter[]): unshare/clone with CLONE_NEWUSER fail with EPERM;
    clone3 (whose flags a filter cannot read) with ENOSYS, so that libc falls back to clone; the
    syscalls of another ABI (int 0x80, x32) with ENOSYS. None on an unknown machine."""
    if machine not in _SYSCALLS:
        return None
    arch, unshare, clone, clone3, other_abi = _SYSCALLS[machine]
    prog = [  # (code, jump if true, jump if false, k); jumps count the instructions skipped
        (_BPF_LD_ABS, 0, 0, 4),                  # 0 arch
        (_BPF_JEQ, 0, 10, arch),                 # 1 another arch -> 12 ENOSYS
        (_BPF_LD_ABS, 0, 0, 0),                  # 2 syscall number
        (_BPF_JGE, 8, 0, other_abi or 0xFFFFFFFF),  # 3 another ABI -> 12 ENOSYS
        (_BPF_JEQ, 3, 0, unshare),               # 4 -> 8
        (_BPF_JEQ, 2, 0, clone),                 # 5 -> 8
        (_BPF_JEQ, 5, 0, clone3),                # 6 -> 12 ENOSYS
        (_BPF_RET, 0, 0, _RET_ALLOW),            # 7
        (_BPF_LD_ABS, 0, 0, 16),                 # 8 the low half of the first argument: the flags
        (_BPF_JSET, 1, 0, _CLONE_NEWUSER),       # 9 -> 11 EPERM
        (_BPF_RET, 0, 0, _RET_ALLOW),            # 10
        (_BPF_RET, 0, 0, _RET_ERRNO | errno.EPERM),   # 11
        (_BPF_RET, 0, 0, _RET_ERRNO | errno.ENOSYS),  # 12
    ]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


@functools.cache
def _userns_filter_file() -> str | None:
    """This grader's filter as a file, for the launcher shell to open as bwrap's --seccomp fd."""
    program = _userns_filter(os.uname().machine)
    if program is None or not _bwrap_has("--seccomp"):
        return None
    fd, path = tempfile.mkstemp(prefix=f"{owner_tag()}-seccomp-")  # 0600; reaped once we are gone
    with os.fdopen(fd, "wb") as f:
        f.write(program)
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def _userns_warning() -> str | None:
    if _bwrap()[0] is None or _userns_filter_file() is not None:
        return None  # without bwrap its own warning says more
    return (f"no user-namespace filter for this machine ({os.uname().machine}) or bubblewrap (--seccomp): "
            "the notebook could create user namespaces of its own inside the sandbox")


@functools.cache
def _can_mount() -> bool:
    """Whether this grader may mount a tmpfs (root, and not a container that forbids it)."""
    if os.geteuid() != 0:
        return False
    probe = _private_dir("probe")
    try:
        _mount_tmpfs(probe, 1, 16)
        _unmount(str(probe))
        return True
    except OSError:
        return False
    finally:
        probe.rmdir()


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
        warnings.append("prlimit (util-linux) is missing: no per-process memory, file-size or process limit")
    if not _can_mount():
        warnings.append(_DISK_WARNING.format(files="limits.file_mb"))
    probe = _CgroupSet.create(1 << 30, 64, cpus=1)
    if probe is None:
        warnings.append(
            "no writable memory and pids cgroups: memory is capped per process only, "
            "not for the kernel and its children together"
        )
    else:
        if not probe.cpu_limited:
            warnings.append(_CPU_WARNING.format(cpus="limits.threads"))
        probe.remove()
    userns = _userns_warning()
    if userns:
        warnings.append(userns)
    return warnings


_DISK_WARNING = ("no size-capped tmpfs for the scratch directory (the grader is not root, or the "
                 "directory was not made by make_scratch_dir): the notebook's files were capped "
                 "one by one ({files}), not in total")
_CPU_WARNING = "no cpu cgroup: the kernel and its processes could use every CPU of the host, not {cpus}"


# --- cgroups -----------------------------------------------------------------------------------


def _cgroup_mounts() -> dict[str, Path]:
    """controller ('memory', 'pids', 'cpu', or 'unified' for v2) -> mount point."""
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
            for controller in ("memory", "pids", "cpu"):
                if controller in tail[2].split(","):
                    mounts.setdefault(controller, Path(fields[4]))
    return mounts


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path in a v1 hierarchy ('memory', 'pids', 'cpu') or v2 ('')."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path
    return None


CPU_PERIOD_US = 100_000


class _CgroupSet:
    """Fresh child cgroups (v1: one memory + one pids + one cpu; v2: one with all) for one sandbox.
    The cpu limit is optional (cpu_limited says whether it was set): a fork bomb on shared cores
    then gets `cpus` CPUs' worth of time, not the whole machine."""

    def __init__(self, dirs: list[Path], oom_events: Path, cpu_limited: bool = False):
        self.dirs = dirs
        self.oom_events = oom_events
        self.cpu_limited = cpu_limited

    @classmethod
    def create(cls, memory_bytes: int, processes: int, cpus: int | None = None) -> "_CgroupSet | None":
        name = f"grader-{secrets.token_hex(6)}"
        mounts = _cgroup_mounts()
        made: list[Path] = []
        try:
            if "memory" in mounts and "pids" in mounts:
                memory, pids = (_fresh_cgroup(mounts[c], c, name, made) for c in ("memory", "pids"))
                (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                try:  # forbid swap too where swap accounting exists
                    (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                except OSError:
                    pass
                (pids / "pids.max").write_text(str(processes))
                cpu_limited = bool(cpus and "cpu" in mounts and _cpu_cgroup_v1(mounts["cpu"], name, cpus, made))
                return cls(made, memory / "memory.oom_control", cpu_limited)
            if "unified" in mounts:
                parent = mounts["unified"] / (_own_cgroup("") or "/").lstrip("/")
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
                unified = _fresh_cgroup(mounts["unified"], "", name, made)
                (unified / "memory.max").write_text(str(memory_bytes))
                (unified / "memory.swap.max").write_text("0")
                (unified / "pids.max").write_text(str(processes))
                return cls(made, unified / "memory.events", bool(cpus and _cpu_max_v2(parent, unified, cpus)))
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


def _fresh_cgroup(mount: Path, controller: str, name: str, made: list[Path]) -> Path:
    directory = mount / (_own_cgroup(controller) or "/").lstrip("/") / name
    _remove_stale_siblings(directory)
    directory.mkdir()
    made.append(directory)
    return directory


def _cpu_cgroup_v1(mount: Path, name: str, cpus: int, made: list[Path]) -> bool:
    try:
        cpu = _fresh_cgroup(mount, "cpu", name, made)
    except OSError:
        return False
    try:
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(cpus * CPU_PERIOD_US))
        return True
    except OSError:
        made.remove(cpu)
        _rmdir_quietly(cpu)
        return False


def _cpu_max_v2(parent: Path, unified: Path, cpus: int) -> bool:
    try:
        (parent / "cgroup.subtree_control").write_text("+cpu")
        (unified / "cpu.max").write_text(f"{cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")
        return True
    except OSError:
        return False


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


def uid_lock_dir() -> Path:
    """Where the uid locks live: one place for the whole machine, as the uids are. Never under
    TMPDIR: two graders with different TMPDIRs would each take uid UID_BASE, and the first to
    finish would kill the other's kernel (_kill_uid_processes), which then reads as a crash."""
    run_lock = Path("/run/lock")
    base = run_lock if run_lock.is_dir() and os.access(run_lock, os.W_OK | os.X_OK) else Path("/tmp")
    return base / "grader-sandbox-uids"


def _claim_uid() -> tuple[int, IO[str]]:
    """A sandbox uid no other live sandbox on this machine holds, and the open lock file that holds it."""
    lock_dir = uid_lock_dir()
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


# --- private directories: named for their owner, size-capped, removable whatever is inside ------

# Names and tmpfs sources: grader-<pid>.<start time>.<pid namespace>-...; the owner is alive while a
# process of that pid has that start time in that namespace (a reused pid has another start time).
_OWNED = re.compile(r"^grader-(\d+)\.(\d+)\.(\d+)(?:-|$)")
RUNTIME_MB = 1            # the runtime dir holds a connection file and five sockets
GRADER_HEADROOM_MB = 256  # added to a full scratch tmpfs after the sandbox, for the executed notebook
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 2, 4, 32
_MNT_DETACH, _UMOUNT_NOFOLLOW = 2, 8
_libc = ctypes.CDLL(None, use_errno=True)


def _start_time(pid: int) -> str | None:
    try:  # field 22 of /proc/PID/stat; the command name before it may hold spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "0"


def owner_tag() -> str:
    """This grader process's mark on the directories and mounts it makes."""
    pid = os.getpid()
    return f"grader-{pid}.{_start_time(pid)}.{_pid_namespace()}"


def _owner_dead(name: str) -> bool:
    """Whether name carries the tag of a grader that no longer runs (only judged in our pid namespace)."""
    match = _OWNED.match(name)
    if match is None or match[3] != _pid_namespace():
        return False
    return _start_time(int(match[1])) != match[2]


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, file-system type, source) of this mount namespace, in mount order."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    unescape = functools.partial(re.sub, r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)))
    mounts = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2:
            mounts.append((unescape(fields[4]), tail[0], unescape(tail[1])))
    return mounts


def _our_tmpfs(path: Path) -> bool:
    return any(point == str(path) and kind == "tmpfs" and _OWNED.match(source)
               for point, kind, source in _mounts())


def _mount_tmpfs(path: Path, size_mb: int, inodes: int, *, remount: bool = False) -> None:
    """A tmpfs of size_mb on path (root only; OSError where mounting is not allowed)."""
    flags = _MS_NOSUID | _MS_NODEV | (_MS_REMOUNT if remount else 0)
    options = f"size={size_mb}m,nr_inodes={inodes}" + ("" if remount else ",mode=0700")
    if _libc.mount(owner_tag().encode(), os.fsencode(path), b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def _unmount(path: str) -> None:
    # Detached: whatever still has it open keeps it until it lets go; the contents go with it.
    _libc.umount2(os.fsencode(path), _MNT_DETACH | _UMOUNT_NOFOLLOW)


def _inodes(size_mb: int) -> int:
    return max(size_mb * 32, 1024)  # files, not only bytes: each inode is kernel memory


def _private_dir(kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{owner_tag()}-{kind}-"))


def make_scratch_dir(stem: str, limits: Limits) -> Path:
    """A fresh scratch directory for one notebook (for execute_notebook), in the temp directory,
    named for this grader; where the grader may mount (root), a tmpfs of limits.disk_mb, the
    notebook's disk cap. Remove it with remove_tree, after taking what the grader keeps."""
    reap_stale_dirs()
    path = _private_dir(re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:40] or "notebook")
    try:
        _mount_tmpfs(path, limits.disk_mb, _inodes(limits.disk_mb))
    except OSError:
        pass  # the Sandbox finds the directory uncapped and says so in its warnings
    return path


@contextlib.contextmanager
def scratch_dir(stem: str, limits: Limits):
    """make_scratch_dir as a context: the directory is removed (remove_tree) on leaving."""
    path = make_scratch_dir(stem, limits)
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path | str) -> None:
    """Remove path and everything under it, whatever the tree (1500 levels deep, longer than
    PATH_MAX, mode 000): our tmpfs mounts on or under it are detached first, their contents with
    them; then rm -rf, which never follows a link and stays on this file system. Never raises."""
    path = Path(os.path.realpath(Path(path).parent)) / Path(path).name
    inside = [point for point, kind, source in _mounts() if kind == "tmpfs" and _OWNED.match(source)
              and (point == str(path) or point.startswith(f"{path}/"))]
    for point in reversed(inside):  # the innermost first
        _unmount(point)
    quiet = subprocess.DEVNULL
    for _ in range(2):
        if not os.path.lexists(path):
            return
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], stdout=quiet, stderr=quiet)
        if os.path.lexists(path):  # not root: a notebook run as the grader's user may lock dirs (000)
            subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], stdout=quiet, stderr=quiet)


def _ours(entry: Path) -> bool:
    try:
        uid = entry.lstat().st_uid
    except OSError:
        return False
    return uid == os.geteuid() or UID_BASE <= uid < UID_BASE + UID_POOL


def reap_stale_dirs() -> list[str]:
    """Unmount the tmpfs mounts and remove the scratch and runtime directories (the kernel's key
    among them) of graders that died without cleaning up (kill -9). Returns what went. Cheap: call
    it at the start of a run; make_scratch_dir and every Sandbox call it."""
    gone = []
    for point, kind, source in reversed(_mounts()):
        if kind == "tmpfs" and _owner_dead(source):
            _unmount(point)
            gone.append(point)
    for entry in Path(tempfile.gettempdir()).glob("grader-*"):
        if _owner_dead(entry.name) and _ours(entry):
            remove_tree(entry)
            gone.append(str(entry))
    return gone


# --- the sandbox -------------------------------------------------------------------------------


@functools.cache
def _driver_dirs() -> list[str]:
    """The NVIDIA driver's library directories that the system and Python binds leave out
    (libcuda is usually in /usr/lib*, bound already)."""
    return host_driver_library_dirs([*SYSTEM_DIRS, *_python_dirs()])


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

    slot: the worker slot the kernel runs on (grader/devices.py). A GPU slot's kernel gets that
    device's nodes alone (dev_dir: where the host's are) and CUDA_VISIBLE_DEVICES naming it; a CPU
    slot's (and no slot's) kernel gets no GPU node and an empty CUDA_VISIBLE_DEVICES.
    """

    def __init__(self, scratch_dir: Path, data_dir: Path, limits: Limits, *, threads: int | None = None,
                 slot: Slot | None = None, dev_dir: Path = DEV_DIR):
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
        self._scratch_capped = False
        self._seccomp = _userns_filter_file() if self.bwrap else None
        self.slot = slot
        try:
            self.device_binds = device_binds(slot, Path(dev_dir)) if slot is not None else []
        except DevicesError as exc:
            raise SandboxError(str(exc)) from exc
        self.driver_dirs = _driver_dirs() if self.device_binds else []
        if slot is not None and slot.is_gpu:
            self.warnings += device_warnings(slot, Path(dev_dir))
            if self.bwrap is None:
                self.warnings.append("without bubblewrap the kernel could open every GPU of the host "
                                     "(only CUDA_VISIBLE_DEVICES pointed it at its own)")

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
        reap_stale_dirs()
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
        self._prepare_runtime_dir()
        self._prepare_cgroups()
        self._scratch_capped = _our_tmpfs(self.scratch_dir)
        if not self._scratch_capped:
            self.warnings.append(_DISK_WARNING.format(files=f"{limits.file_mb} MB each"))
        userns = _userns_warning()
        if userns:
            self.warnings.append(userns)
        if shutil.which("prlimit") is None:
            self.warnings.append("prlimit is missing: no per-process memory, file-size or process limit was set")

    def _prepare_runtime_dir(self) -> None:
        """Connection file and ipc sockets: a short path (sockets allow ~107 bytes), private to the
        kernel's uid (root, the grader, connects regardless), a tiny tmpfs where we may mount."""
        self.runtime_dir = _private_dir("kernel")
        try:
            _mount_tmpfs(self.runtime_dir, RUNTIME_MB, 64)
        except OSError:
            pass  # the scratch directory's warning says the same: no tmpfs could be mounted
        if self.uid is not None:
            os.chown(self.runtime_dir, self.uid, self.uid)

    def _prepare_cgroups(self) -> None:
        limits = self.limits
        if self.uid is not None:
            self._cgroups = _CgroupSet.create(limits.memory_mb << 20, limits.processes, cpus=limits.threads)
        if self._cgroups is None:
            self.warnings.append(
                "no memory/pids cgroup could be created: memory is capped per process "
                f"({limits.memory_mb} MB each), not for the kernel and its children together"
            )
        if self._cgroups is None or not self._cgroups.cpu_limited:
            self.warnings.append(_CPU_WARNING.format(cpus=f"its {limits.threads} CPU(s)"))

    def close(self) -> None:
        """Stop every process of the sandbox and remove what it made. The scratch directory stays
        (with its contents) for the caller; a full scratch tmpfs gets room for the grader's files."""
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
        if self.uid is not None:
            _kill_uid_processes(self.uid)
        if self.runtime_dir is not None:
            remove_tree(self.runtime_dir)
            self.runtime_dir = None
        if self._scratch_capped:  # nothing of the notebook runs any more: it cannot take this room
            disk = self.limits.disk_mb + GRADER_HEADROOM_MB
            with contextlib.suppress(OSError):
                _mount_tmpfs(self.scratch_dir, disk, _inodes(self.limits.disk_mb) + 1024, remount=True)
            self._scratch_capped = False
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
            # The slot's GPU by UUID (indices change with what is visible), or none at all.
            "CUDA_VISIBLE_DEVICES": self.slot.cuda_visible_devices if self.slot is not None else "",
        }

    def wrap(self, argv: list[str]) -> list[str]:
        """argv wrapped in: launcher (cgroup join, filter fd) -> bwrap -> limits -> unprivileged uid -> argv."""
        cmd = list(argv)
        if self.uid is not None:
            cmd = [shutil.which("setpriv") or "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                   "--inh-caps=-all", "--", *cmd]
        prlimit = shutil.which("prlimit")
        if prlimit:
            limits = [f"--data={self.limits.memory_mb << 20}", "--core=0", f"--fsize={self.limits.file_mb << 20}"]
            if self.uid is not None:  # RLIMIT_NPROC counts per uid: only meaningful on our own
                limits.append(f"--nproc={self.limits.processes}")
            cmd = [prlimit, *limits, "--", *cmd]
        if self.bwrap:
            cmd = [self.bwrap, *self._bwrap_args(), "--", *cmd]
        procs = self._cgroups.procs_files if self._cgroups is not None else []
        if procs or self._seccomp:
            cmd = ["/bin/sh", "-c", _LAUNCH, "grader-launch", self._seccomp or "", *procs, "--", *cmd]
        return cmd

    def _bwrap_args(self) -> list[str]:
        args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if self._seccomp:
            args += ["--seccomp", SECCOMP_FD]
        # bwrap creates missing parents of a mount point 0700 (root's): open them to the kernel's uid
        present = {"/", "/tmp", "/dev", "/dev/shm", "/proc"}

        def mount(option: str, source: str, dest: str) -> None:
            missing = []
            for parent in Path(dest).parents:
                if str(parent) in present:
                    break
                missing.append(str(parent))
            for directory in reversed(missing):
                args.extend(["--perms", "0755", "--dir", directory])
                present.add(directory)
            args.extend([option, source, dest])
            present.add(dest)

        args += ["--proc", "/proc", "--dev", "/dev"]
        for source, dest in self.device_binds:  # the slot's GPU nodes: nothing on a CPU slot
            mount("--dev-bind", source, dest)
        tmp_size = ["--size", str(self.limits.disk_mb << 20)] if _bwrap_has("--size") else []
        args += ["--perms", "1777", *tmp_size, "--tmpfs", "/tmp", "--perms", "1777", *tmp_size, "--tmpfs", "/dev/shm"]
        for path in SYSTEM_DIRS + ETC_FILES:
            if os.path.islink(path):  # merged-/usr systems: /bin -> usr/bin
                mount("--symlink", os.readlink(path), path)
            elif os.path.exists(path):
                mount("--ro-bind", path, path)
        for path in [*_python_dirs(), *self.driver_dirs]:
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

    def client(self, **kwargs):
        """The client, its context set so that every socket it opens (they connect later, when
        its channels start) drops a peer sending a message over limits.message_mb: ZeroMQ
        reconnects, the message is lost, and the grader never decodes gigabytes of it."""
        client = super().client(**kwargs)
        client.context.setsockopt(zmq.MAXMSGSIZE, self.sandbox.limits.message_mb << 20)
        return client

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
