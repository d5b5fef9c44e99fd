"""Runs `grader grade` on a corpus under a watching parent, and reads back what it wrote.

The grader is started by a small reaper process (this file run as a script) that

- is a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so that any process the grader or a
  notebook leaves behind is re-parented to it instead of init: after the grader exits, whatever is
  still its child is a stray, recorded (pid, uid, command line) and then killed — they all
  descend from the grader it started;
- polls the grader's peak RSS (VmHWM), the largest RSS among its descendants, the disk used under the
  scratch root by the scratch directories created during the run (`du`), and the file system's
  used bytes;
- writes all that as JSON.

Used by tests/hostile/test_hostile.py and bench/bench_hostile.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GRADER = REPO_ROOT / ".venv" / "bin" / "grader"
PR_SET_CHILD_SUBREAPER = 36
SCRATCH_PREFIX = "grader-"
NOT_SCRATCH = {"grader-sandbox-uids"}


@dataclass
class RunReport:
    returncode: int
    wall_s: float
    grader_peak_rss: int            # bytes, the grader process itself (VmHWM)
    largest_process_rss: int        # bytes, the largest RSS of any descendant (a kernel, a helper; polled)
    peak_scratch_bytes: int         # du of scratch directories created during the run (polled)
    peak_fs_used_delta: int         # bytes, the scratch root's file system, above its level at start
    strays: list[dict] = field(default_factory=list)         # processes left after the grader exited
    new_scratch_entries: list[str] = field(default_factory=list)  # scratch-root entries left after the run
    timed_out: bool = False
    grader_pid: int = 0
    stdout: str = ""
    stderr: str = ""


def grader_command(corpus: Path, out: Path, *, preset: str = "quick", workers: int = 2,
                   cell_timeout: float = 60, timeout: float = 300) -> list[str]:
    return [str(GRADER), "grade", str(corpus), "--out", str(out), "--preset", preset,
            "--workers", str(workers), "--cell-timeout", str(cell_timeout), "--timeout", str(timeout)]


def run_grader(command: list[str], workdir: Path, *, env: dict | None = None, limit_s: float = 2400,
               scratch_root: Path | None = None) -> RunReport:
    """Run command under the reaper; its stdout/stderr and the report land in workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "run.json"
    scratch_root = scratch_root or Path(tempfile.gettempdir())
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(report), str(scratch_root), str(limit_s), "--", *command],
            stdout=out, stderr=err, env=env, cwd=str(REPO_ROOT), check=False,
        )
    data = json.loads(report.read_text())
    data["stdout"] = (workdir / "stdout.txt").read_text(errors="replace")
    data["stderr"] = (workdir / "stderr.txt").read_text(errors="replace")
    return RunReport(**data)


def left_by_this_run(report: RunReport, stems: set[str]) -> list[str]:
    """Scratch-root entries this run's grader made and left: named with its pid
    (grader-PID.START.NS-...) or, in older layouts, grader-STEM-..."""
    mine = []
    for entry in report.new_scratch_entries:
        name = Path(entry).name
        if name.startswith(f"grader-{report.grader_pid}.") or any(name.startswith(f"grader-{s}-") for s in stems):
            mine.append(entry)
    return mine


def mounts_left_by(report: RunReport) -> list[str]:
    """Mount points still tagged with this run's grader (its tmpfs sources are named grader-PID.…)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    tag = f"grader-{report.grader_pid}."
    left = []
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts, tail = fields.split(), tail.split()
        if len(parts) >= 5 and len(tail) >= 2 and (tail[1].startswith(tag) or tag in parts[4]):
            left.append(parts[4])
    return left


# --- reading what the grader wrote ------------------------------------------------------------


def collect_results(out: Path) -> dict[str, tuple[Path, dict]]:
    """submission (as result.json names it) -> (its folder, the parsed result)."""
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(list(out.glob("*/result.json")) + list(out.glob("*/*/result.json"))):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found[str(result.get("submission"))] = (path.parent, result)
    return found


def messages(result: dict) -> list[str]:
    """Every message result.json shows a student: errors, cell errors and hints, check messages,
    answer notes, and any other top-level list of strings (hints, warnings)."""
    texts: list[str] = []
    for value in result.values():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            texts += value
    for cell in result.get("cells", []):
        if isinstance(cell, dict):
            texts += [str(cell.get(k) or "") for k in ("error", "hint", "note")]
    texts += [c.get("message") or "" for c in result.get("checks", []) if isinstance(c, dict)]
    for answer in result.get("answers", []):
        if isinstance(answer, dict) and answer.get("note"):
            texts.append(answer["note"])
    return [t for t in texts if t]


def pdf_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    done = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, timeout=120)
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def matches(pattern: str, text: str) -> bool:
    """The pattern in text with whitespace collapsed, or (for PDF line breaks inside words)
    the pattern without its spaces in the text without any whitespace."""
    collapsed = " ".join(text.split())
    if re.search(pattern, collapsed):
        return True
    squeezed = "".join(text.split())
    return re.search(pattern.replace(" ", ""), squeezed) is not None


# --- the reaper (this file as a script) -------------------------------------------------------


def _proc_children(ppid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == ppid:
            children.append(int(entry))
    return children


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return "?"


def _descendants(pid: int) -> list[int]:
    table: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()
                table.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        kids = table.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _describe(pid: int) -> dict:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        uid = Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        cmdline, uid = "?", -1
    return {"pid": pid, "uid": uid, "state": _state(pid), "cmdline": cmdline[:300]}


def _new_scratch(root: Path, before: set[str]) -> list[Path]:
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [root / n for n in names if n.startswith(SCRATCH_PREFIX) and n not in before and n not in NOT_SCRATCH]


def _du(paths: list[Path]) -> int:
    if not paths:
        return 0
    done = subprocess.run(["du", "-s", "-x", "-B1", "-c", *map(str, paths)], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    try:
        return int(lines[-1].split()[0]) if lines else 0
    except ValueError:
        return 0


def _fs_used(root: Path) -> int:
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _reap_main(argv: list[str]) -> int:
    report_path, scratch_root, limit_s = Path(argv[0]), Path(argv[1]), float(argv[2])
    command = argv[argv.index("--") + 1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = set(os.listdir(scratch_root))
    fs_base = _fs_used(scratch_root)
    peaks = {"grader": 0, "tree": 0, "scratch": 0, "fs": 0}
    started = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    done = threading.Event()

    def watch() -> None:
        last_du = 0.0
        while not done.is_set():
            peaks["grader"] = max(peaks["grader"], _status_kb(proc.pid, "VmHWM"))
            # the largest, not the sum: forked children share their pages
            peaks["tree"] = max([peaks["tree"], *(_status_kb(p, "VmRSS") for p in _descendants(proc.pid))])
            peaks["fs"] = max(peaks["fs"], _fs_used(scratch_root) - fs_base)
            if time.monotonic() - last_du > 1.0:
                peaks["scratch"] = max(peaks["scratch"], _du(_new_scratch(scratch_root, before)))
                last_du = time.monotonic()
            for child in _proc_children(os.getpid()):  # adopted orphans that died: reap them
                if child != proc.pid and _state(child) == "Z":
                    try:
                        os.waitpid(child, os.WNOHANG)
                    except ChildProcessError:
                        pass
            done.wait(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    timed_out = False
    try:
        rc = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    wall = time.monotonic() - started
    done.set()
    watcher.join()
    time.sleep(2.0)  # let dying sandboxes finish dying
    strays = []
    for pid in _descendants(os.getpid()):
        info = _describe(pid)
        if info["state"] != "Z" and "harness.py" not in info["cmdline"]:
            strays.append(info)
    for info in strays:  # every one descends from the grader this process started
        try:
            os.kill(info["pid"], signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.1)
                if not _proc_children(os.getpid()):
                    break
        except ChildProcessError:
            break
    report = {
        "returncode": rc, "wall_s": round(wall, 1), "grader_peak_rss": peaks["grader"],
        "largest_process_rss": peaks["tree"], "peak_scratch_bytes": peaks["scratch"],
        "peak_fs_used_delta": max(peaks["fs"], 0), "strays": strays, "timed_out": timed_out, "grader_pid": proc.pid,
        "new_scratch_entries": [str(p) for p in _new_scratch(scratch_root, before)],
    }
    report_path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_reap_main(sys.argv[1:]))
