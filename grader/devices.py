"""The GPUs students' kernels may use, and the worker slots that share them out.

Discovery asks `nvidia-smi` (and the driver's /proc/driver/nvidia), never torch: the grader may
run where torch has no CUDA, and a kernel's GPU is chosen before any kernel exists. Every parser
takes text, so that recorded outputs of real hosts test it (tests/fixtures/nvidia_smi).

A slot is where one kernel runs at a time: "cpu", a whole GPU, or a MIG slice. The rules:

- one slot per GPU by default; `--kernels-per-gpu K` gives each GPU K slots, each kernel capped
  to (MEMORY_SHARE / K) of the GPU's memory (torch.cuda.set_per_process_memory_fraction, set by a
  hidden cell before the student's first). That cap is a guard-rail against a runaway kernel
  taking all the memory its neighbours need, not a boundary: the student's code could raise it.
  The boundaries are the GPU itself and MIG.
- a GPU in MIG mode is never a device of its own: each of its MIG slices is, as CUDA sees it
  (memory, compute and faults isolated in hardware), and gets K slots like a GPU.
- no CUDA MPS: MPS runs every client in one server context, so one kernel's fault (an illegal
  address, an assert in a CUDA kernel) is delivered to every client of that server and all of
  them die; untrusted kernels must each fail alone. Without MPS, kernels on one GPU time-slice
  (each in its own context) and a fault stays in the context that caused it.
- on a host with GPUs, the workers are capped at the GPU slots: every notebook then runs on the
  same kind of device, so none is slower (and closer to its time limit) or numerically different
  for having landed on the CPU. `--kernels-per-gpu 0` runs every kernel on the CPU instead (a
  GPU host grading as a CPU-only one would). Without GPUs every slot is "cpu".
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from threading import Condition

from pydantic import BaseModel, ConfigDict

from .errors import GraderError

# What the slots of a GPU may take together; the rest is for the kernels' CUDA contexts (a few
# hundred MB each, outside the caching allocator the fraction caps), the grader's own process and
# fragmentation.
MEMORY_SHARE = 0.9
# A slot with less than this is refused: a kernel could not train the assignment's models in it.
MIN_SLOT_MB = 2048
QUERY_FIELDS = "index,uuid,name,memory.total,mig.mode.current,pci.bus_id"
PROC_DIR = Path("/proc/driver/nvidia")
DEV_DIR = Path("/dev")
# Device nodes every CUDA process needs (nvidiactl, uvm) or may open (uvm-tools, modeset).
SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")

Runner = Callable[[list[str]], tuple[int, str]]   # nvidia-smi's arguments -> (exit code, stdout)


class DevicesError(GraderError):
    """The GPUs cannot be shared out as asked (too many kernels per GPU, a device node missing)."""


class GpuDevice(BaseModel):
    """One device CUDA can use: a whole GPU, or one MIG slice of a GPU."""

    model_config = ConfigDict(frozen=True)

    index: int                   # nvidia-smi's index of the (parent) GPU
    uuid: str                    # GPU-... or MIG-...: what CUDA_VISIBLE_DEVICES names
    name: str                    # "NVIDIA H200", or the slice's profile "MIG 1g.18gb"
    memory_mb: int
    minor: int                   # /dev/nvidia<minor>: the (parent) GPU's device node
    mig_device: int | None = None  # the slice's number on its GPU ("Device N" in nvidia-smi -L)
    cap_minors: tuple[int, ...] = ()  # a slice's /dev/nvidia-caps/nvidia-cap<N> (its GI and CI)


class GpuInventory(BaseModel):
    devices: list[GpuDevice] = []
    notes: list[str] = []        # why a GPU (or every GPU) was left out


class Slot(BaseModel):
    """Where one kernel runs: index among the run's slots, and its device."""

    model_config = ConfigDict(frozen=True)

    index: int
    device: str = "cpu"          # "cpu", or the GPU's / MIG slice's UUID
    gpu: GpuDevice | None = None
    memory_fraction: float | None = None   # of the device's memory, for this kernel's allocator

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def cuda_visible_devices(self) -> str:
        """The kernel's CUDA_VISIBLE_DEVICES: its device's UUID, or "" (no GPU at all)."""
        return self.gpu.uuid if self.gpu else ""

    @property
    def label(self) -> str:
        """What the report says a notebook ran on: "cpu" or "cuda:GPU-... (NVIDIA H200)"."""
        return f"cuda:{self.gpu.uuid} ({self.gpu.name})" if self.gpu else "cpu"


# --- parsing nvidia-smi and the driver's /proc files ------------------------------------------

_GPU_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[0-9a-zA-Z/-]+)\)\s*$")
_MIG_ROW = re.compile(r"^\|\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\|\s+\d+MiB\s*/\s*(\d+)MiB")


class ListedGpu(BaseModel):
    index: int
    name: str
    uuid: str
    migs: list[tuple[int, str, str]] = []   # (device number, profile, MIG UUID)


def parse_gpu_list(text: str) -> list[ListedGpu]:
    """`nvidia-smi -L`: the GPUs and, indented under each, its MIG slices."""
    gpus: list[ListedGpu] = []
    for line in text.splitlines():
        if match := _GPU_LINE.match(line):
            gpus.append(ListedGpu(index=int(match[1]), name=match[2].strip(), uuid=match[3]))
        elif (match := _MIG_LINE.match(line)) and gpus:
            gpus[-1].migs.append((int(match[2]), f"MIG {match[1]}", match[3]))
    return gpus


class QueriedGpu(BaseModel):
    index: int
    uuid: str
    name: str
    memory_mb: int
    mig_enabled: bool
    bus_id: str                  # as /proc/driver/nvidia/gpus names it: 0000:17:00.0


def _proc_bus_id(bus_id: str) -> str:
    """nvidia-smi's 00000000:17:00.0 as the driver's /proc directory name, 0000:17:00.0."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    return f"{domain[-4:]}:{rest}" if rest else bus_id.lower()


def parse_gpu_query(text: str) -> list[QueriedGpu]:
    """`nvidia-smi --query-gpu=QUERY_FIELDS --format=csv,noheader,nounits`."""
    gpus = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if len(row) != len(QUERY_FIELDS.split(",")):
            continue
        index, uuid, name, memory, mig, bus = (cell.strip() for cell in row)
        try:
            gpus.append(QueriedGpu(index=int(index), uuid=uuid, name=name, memory_mb=int(float(memory)),
                                   mig_enabled=mig == "Enabled", bus_id=_proc_bus_id(bus)))
        except ValueError:  # "[N/A]" memory, a line that is not a GPU
            continue
    return gpus


def parse_mig_table(text: str) -> dict[tuple[int, int], tuple[int, int, int]]:
    """The "MIG devices" table of plain `nvidia-smi`: (GPU, MIG device) -> (GI, CI, memory MiB)."""
    return {(int(m[1]), int(m[4])): (int(m[2]), int(m[3]), int(m[5]))
            for m in map(_MIG_ROW.match, text.splitlines()) if m}


def parse_proc_fields(text: str) -> dict[str, str]:
    """A driver /proc file ("Device Minor: \t 0", "DeviceFileMinor: 12") as name -> value."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def gpu_minors(proc_dir: Path = PROC_DIR) -> dict[str, int]:
    """GPU UUID -> its /dev/nvidia<minor>, from /proc/driver/nvidia/gpus/*/information. The minor
    is the driver's probe order, which need not be nvidia-smi's (PCI) index."""
    minors = {}
    for info in sorted((proc_dir / "gpus").glob("*/information")):
        try:
            fields = parse_proc_fields(info.read_text())
            minors[fields["GPU UUID"]] = int(fields["Device Minor"])
        except (OSError, KeyError, ValueError):
            continue
    return minors


def _cap_minor(access_file: Path) -> int | None:
    try:
        return int(parse_proc_fields(access_file.read_text())["DeviceFileMinor"])
    except (OSError, KeyError, ValueError):
        return None


def mig_cap_minors(proc_dir: Path, minor: int, gi: int, ci: int) -> tuple[int, ...]:
    """The /dev/nvidia-caps minors that open one slice: its GPU instance's and compute instance's."""
    gi_dir = proc_dir / "capabilities" / f"gpu{minor}" / "mig" / f"gi{gi}"
    found = (_cap_minor(gi_dir / "access"), _cap_minor(gi_dir / f"ci{ci}" / "access"))
    return found if None not in found else ()   # type: ignore[return-value]


# --- discovery -------------------------------------------------------------------------------


def run_nvidia_smi(args: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of nvidia-smi; 127 when it is not installed."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return 127, ""
    try:
        done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, done.stdout or done.stderr


def discover_gpus(run: Runner = run_nvidia_smi, proc_dir: Path = PROC_DIR,
                  dev_dir: Path = DEV_DIR) -> GpuInventory:
    """The devices kernels may use on this host: whole GPUs, and the slices of GPUs in MIG mode."""
    code, text = run(["--query-gpu=" + QUERY_FIELDS, "--format=csv,noheader,nounits"])
    if code == 127:
        return GpuInventory()
    if code != 0:
        first = text.strip().splitlines()[0] if text.strip() else f"exit code {code}"
        return GpuInventory(notes=[f"nvidia-smi found no usable GPU ({first})"])
    queried = parse_gpu_query(text)
    listed = {g.index: g for g in parse_gpu_list(run(["-L"])[1])}
    migs = parse_mig_table(run([])[1]) if any(g.mig_enabled for g in queried) else {}
    minors = gpu_minors(proc_dir)
    nodes = sorted(int(p.name[6:]) for p in dev_dir.glob("nvidia[0-9]*") if p.name[6:].isdigit())
    inventory = GpuInventory()
    for position, gpu in enumerate(queried):
        # Without the driver's /proc files (some containers), the nodes in probe order are the
        # best guess; with as many nodes as GPUs it is the usual one-to-one mapping.
        minor = minors.get(gpu.uuid, nodes[position] if len(nodes) == len(queried) else gpu.index)
        if not gpu.mig_enabled:
            inventory.devices.append(GpuDevice(index=gpu.index, uuid=gpu.uuid, name=gpu.name,
                                               memory_mb=gpu.memory_mb, minor=minor))
            continue
        slices = listed.get(gpu.index, ListedGpu(index=gpu.index, name=gpu.name, uuid=gpu.uuid)).migs
        if not slices:
            inventory.notes.append(f"GPU {gpu.index} ({gpu.name}) is in MIG mode without MIG devices: not used")
        for number, profile, uuid in slices:
            gi, ci, memory = migs.get((gpu.index, number), (None, None, 0))
            caps = mig_cap_minors(proc_dir, minor, gi, ci) if gi is not None and ci is not None else ()
            inventory.devices.append(GpuDevice(index=gpu.index, uuid=uuid, name=profile,
                                               memory_mb=memory or gpu.memory_mb // len(slices),
                                               minor=minor, mig_device=number, cap_minors=caps))
    return inventory


# --- slots -----------------------------------------------------------------------------------


def memory_fraction(kernels_per_gpu: int) -> float:
    return round(MEMORY_SHARE / kernels_per_gpu, 4)


def plan_slots(workers: int, kernels_per_gpu: int = 1, gpus: Iterable[GpuDevice] | None = None) -> list[Slot]:
    """The run's slots: `workers` CPU slots on a host without GPUs (or with kernels_per_gpu 0);
    else kernels_per_gpu slots per device, at most `workers` of them, spread over the devices
    first (two workers on two GPUs get one GPU each). gpus: None asks nvidia-smi."""
    if workers < 1:
        raise DevicesError(f"--workers must be at least 1, not {workers}")
    if kernels_per_gpu < 0:
        raise DevicesError(f"--kernels-per-gpu must be 0 (no GPU for the kernels) or more, not {kernels_per_gpu}")
    devices = list(discover_gpus().devices if gpus is None else gpus) if kernels_per_gpu else []
    if not devices:
        return [Slot(index=i) for i in range(workers)]
    fraction = memory_fraction(kernels_per_gpu)
    for gpu in devices:
        share = gpu.memory_mb * fraction
        if share < MIN_SLOT_MB:
            fits = max(int(gpu.memory_mb * MEMORY_SHARE // MIN_SLOT_MB), 1)
            raise DevicesError(
                f"--kernels-per-gpu {kernels_per_gpu}: {gpu.name} {gpu.uuid} has {gpu.memory_mb} MiB, which leaves "
                f"each kernel {share:.0f} MiB (less than {MIN_SLOT_MB}); at most {fits} kernel(s) fit on it")
    order = [gpu for _ in range(kernels_per_gpu) for gpu in devices][:workers]
    return [Slot(index=i, device=gpu.uuid, gpu=gpu, memory_fraction=fraction) for i, gpu in enumerate(order)]


def describe_slots(slots: list[Slot], workers: int) -> str:
    """One line for the log: where the kernels run, and why there are fewer workers than asked."""
    if not any(s.is_gpu for s in slots):
        return f"kernels run on the CPU ({len(slots)} worker(s))"
    devices = sorted({s.device for s in slots})
    line = (f"kernels run on {len(devices)} GPU device(s), {len(slots)} slot(s), each kernel's memory capped "
            f"at {slots[0].memory_fraction:.0%} of its device")
    if workers > len(slots):
        line += (f"; --workers {workers} asked for more: {len(slots)} run at once, every notebook on a GPU "
                 "(--kernels-per-gpu K gives each GPU K slots)")
    return line


def slot_for(worker_index: int, slots: list[Slot]) -> Slot:
    """The slot of a worker with a fixed index (worker i of len(slots)): each its own device share."""
    if not slots:
        raise DevicesError("no slots were planned")
    return slots[worker_index % len(slots)]


class SlotPool:
    """The free slots, for a scheduler that hands each job a slot and takes it back when the job
    ends: one kernel per slot at any time, whichever worker runs the job. Thread-safe."""

    def __init__(self, slots: list[Slot]):
        if not slots:
            raise DevicesError("no slots were planned")
        self._free = list(slots)
        self._changed = Condition()

    def take(self) -> Slot:
        """The free slot with the lowest index, waiting for one when all are taken."""
        with self._changed:
            self._changed.wait_for(lambda: self._free)
            slot = min(self._free, key=lambda s: s.index)
            self._free.remove(slot)
            return slot

    def give_back(self, slot: Slot) -> None:
        with self._changed:
            self._free.append(slot)
            self._changed.notify()


def host_lock_dir() -> Path:
    """Where the processes of one user on one host agree on their slots (a local directory:
    file locks on a network file system are not to be trusted)."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"grader-slots-{os.getuid()}"


@contextlib.contextmanager
def leased_slot(kernels_per_gpu: int = 1, gpus: Iterable[GpuDevice] | None = None,
                lock_dir: Path | None = None, poll_s: float = 0.5) -> Iterator[Slot | None]:
    """A slot of this host's GPUs for one job, held until the job ends, for workers that no
    planner numbered (a cluster's: several dask workers, or threads of one, on one host). Each
    slot is an exclusive lock on a file (flock: released by the kernel even when the worker is
    killed); a job takes the first free one and waits while all are taken, so a slot never runs
    two kernels. None on a host without GPUs (or with kernels_per_gpu 0): the kernel gets the CPU."""
    devices = list(discover_gpus().devices if gpus is None else gpus) if kernels_per_gpu else []
    if not devices:
        yield None
        return
    slots = plan_slots(len(devices) * kernels_per_gpu, kernels_per_gpu, devices)
    directory = lock_dir or host_lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in slots:
            handle = open(directory / f"slot-{slot.device}-{slot.index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield slot
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)


# --- what a kernel on a slot needs -----------------------------------------------------------


def device_binds(slot: Slot, dev_dir: Path = DEV_DIR) -> list[tuple[str, str]]:
    """(host path, path in the sandbox) of the device nodes a kernel on `slot` gets: its GPU's
    /dev/nvidia<minor> alone (no other GPU's node exists in the sandbox, so no CUDA_VISIBLE_DEVICES
    the student sets reaches another GPU), the shared control nodes the host has, and a slice's
    two /dev/nvidia-caps nodes. Nothing for a CPU slot. dev_dir: where the host's nodes are."""
    gpu = slot.gpu
    if gpu is None:
        return []
    own = dev_dir / f"nvidia{gpu.minor}"
    if not own.exists():
        raise DevicesError(f"{own}: the device node of {gpu.name} {gpu.uuid} does not exist on this host")
    binds = [(str(own), f"/dev/nvidia{gpu.minor}")]
    binds += [(str(dev_dir / name), f"/dev/{name}") for name in SHARED_NODES if (dev_dir / name).exists()]
    for cap in gpu.cap_minors:
        node = dev_dir / "nvidia-caps" / f"nvidia-cap{cap}"
        if node.exists():
            binds.append((str(node), f"/dev/nvidia-caps/nvidia-cap{cap}"))
    return binds


def device_warnings(slot: Slot, dev_dir: Path = DEV_DIR) -> list[str]:
    gpu = slot.gpu
    if gpu is None or gpu.mig_device is None:
        return []
    nodes = [dev_dir / "nvidia-caps" / f"nvidia-cap{c}" for c in gpu.cap_minors]
    if gpu.cap_minors and all(n.exists() for n in nodes):
        return []
    return [f"the access nodes of MIG slice {gpu.uuid} were not found (/dev/nvidia-caps): the kernel may fail "
            "to open it"]


def driver_library_dirs(ldconfig_text: str, bound: Iterable[str]) -> list[str]:
    """Directories of libcuda / libnvidia-ml (from `ldconfig -p`) outside the directories the
    sandbox already binds: a driver installed under /opt or /run/nvidia/driver, say."""
    roots = [b.rstrip("/") + "/" for b in bound]
    found = []
    for line in ldconfig_text.splitlines():
        name, arrow, path = line.strip().partition(" => ")
        if arrow and name.startswith(("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so")):
            directory = os.path.dirname(os.path.realpath(path.strip()))
            if not any((directory + "/").startswith(r) for r in roots) and directory not in found:
                found.append(directory)
    return found


def host_driver_library_dirs(bound: Iterable[str]) -> list[str]:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        text = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return driver_library_dirs(text, bound)


def setup_code(slot: Slot | None) -> str | None:
    """The hidden cell run before the student's first on a GPU slot: cap this kernel's share of
    the device's memory (when torch sees CUDA at all). None on a CPU slot: nothing to set."""
    if slot is None or slot.gpu is None or slot.memory_fraction is None:
        return None
    return ("def __grader_setup():\n"
            "    import torch\n"
            "    if torch.cuda.is_available():\n"
            f"        torch.cuda.set_per_process_memory_fraction({slot.memory_fraction!r}, 0)\n"
            "__grader_setup()\n"
            "del __grader_setup\n")
