"""EXECUTE: run one untrusted notebook for real, in a sandboxed kernel, cell by cell.

nbclient drives a real ipykernel (grader/sandbox.py confines it). On top of nbclient:

- every cell runs even when an earlier one raised (a later cell may still define what earns points);
- a per-cell and a whole-notebook time budget: a cell past its budget is interrupted and marked
  "timeout", and the notebook goes on; once the notebook's budget is spent the remaining cells are
  "not_run"; a kernel that ignores the interrupt is killed;
- a dead kernel (out of memory, os._exit, segfault) ends the run: "crashed", the rest "not_run";
- the output kept per cell is capped (a notebook printing gigabytes cannot fill the report);
- the grader's probe runs in the same kernel after the student's cells, even when they failed.

The submission file itself is only read; the kernel works on a copy in the scratch directory.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen
from time import monotonic

import nbformat
from jupyter_client.provisioning import LocalProvisioner
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, DeadKernelError
from nbformat import NotebookNode

from . import atomic
from .config import AssignmentConfig
from .devices import Slot, setup_code
from .errors import GraderError
from .exporting import VALUES_FILE, WEIGHTS_FILE
from .hints import hint_for
from .inject import (
    inject_parameters,
    is_injected,
    locate_parameters,
    placement_warning,
    without_injected,
)
from .records import CellRun, CellStatus, ExecutionResult, Status
from .sandbox import Sandbox, SandboxedKernelManager, SandboxError, remove_tree
from .text import strip_ansi

SUBMISSION_COPY = "submitted.ipynb"
EXECUTED_NOTEBOOK = "executed.ipynb"
PROBE_FILE, PROBE_VALUES = WEIGHTS_FILE, VALUES_FILE   # what the kernel's export writes
# How long an interrupted cell may take to stop before its kernel is killed.
INTERRUPT_GRACE_S = 10.0
KERNEL_STARTUP_S = 60
# How long the outputs of a finished cell may trail its reply (a big output may still be in flight).
IOPUB_TIMEOUT_S = 30
TRUNCATED = "\n[... output truncated by the grader: this cell's output passed {limit} bytes ...]\n"
MAX_ERROR_CHARS = 2_000        # CellRun.error ("Name: value")
MAX_TRACEBACK_CHARS = 20_000   # CellRun.traceback
MAX_NOTEBOOK_BYTES = 100 * 2**20  # a submission larger than this is invalid, not read


class NotebookInvalid(GraderError):
    """The submission is not a readable Jupyter notebook."""


def read_submission(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of the submitted file at path, read without following a symbolic link.

    A submission is untrusted and the grader may run as root: a link (to /etc/shadow, to another
    student's notebook) is refused before any byte of its target is read, and so is anything that
    is not a regular file (a directory, a FIFO that would block, a device) or is over the size cap.
    NotebookInvalid names the file and says what to hand in instead.
    """
    path = Path(path)
    max_bytes = MAX_NOTEBOOK_BYTES if max_bytes is None else max_bytes
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise NotebookInvalid(f"{path.name}: cannot read the notebook ({exc.strerror})") from exc
    _check_submission_file(path, info, max_bytes)
    try:  # O_NOFOLLOW: a link swapped in since lstat still fails; O_NONBLOCK: a FIFO cannot hang us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotebookInvalid(f"{path.name} is a symbolic link; submit the notebook file itself") from exc
        raise NotebookInvalid(f"{path.name}: cannot read the notebook ({exc.strerror})") from exc
    try:
        _check_submission_file(path, os.fstat(fd), max_bytes)
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise NotebookInvalid(_too_large(path, max_bytes))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _too_large(path: Path, max_bytes: int) -> str:
    return (f"{path.name} is too large to be a notebook the grader runs (over {max_bytes / 2**20:g} MB); "
            "clear the outputs (Kernel > Restart & Clear Output), save, and submit it again")


def _check_submission_file(path: Path, info: os.stat_result, max_bytes: int) -> None:
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        raise NotebookInvalid(f"{path.name} is a symbolic link; submit the notebook file itself")
    if stat.S_ISDIR(mode):
        raise NotebookInvalid(f"{path.name} is a directory, not a notebook; submit the .ipynb file itself")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise NotebookInvalid(f"{path.name} is {kind}, not a notebook; submit the .ipynb file itself")
    if info.st_size > max_bytes:
        raise NotebookInvalid(_too_large(path, max_bytes))


def read_notebook(path: Path) -> NotebookNode:
    """The notebook at path as nbformat v4; NotebookInvalid names the file and the problem (for
    a schema violation, the cell and the field in words). Never follows a symbolic link."""
    path = Path(path)
    raw = read_submission(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook (it is not UTF-8 text: byte {exc.start} "
                              "cannot be decoded)") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook (it is not valid JSON: {exc})") from exc
    _check_shape(path, data)
    _validate(path, data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat's own (already passed) validation warns
            nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises JSON, schema and conversion errors alike
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook ({reason})") from exc
    if not isinstance(nb.get("cells"), list) or not all(isinstance(c, dict) and "cell_type" in c for c in nb.cells):
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook (it has no list of cells)")
    if data.get("nbformat") != 4:
        _validate(path, nb)  # what an older format was converted to
    return nb


def _check_shape(path: Path, data) -> None:
    """What nbformat's own validation would trip over rather than report."""
    if not isinstance(data, dict):
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook (it has no list of cells)")
    version = data.get("nbformat")
    if type(version) is not int or not 1 <= version <= 4:
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook (its format version is {_short_repr(version)}; "
                              "the grader reads format 4, which Jupyter writes, and converts the older 1 to 3)")
    if version == 4:
        cells = data.get("cells")
        if not isinstance(cells, list):
            raise NotebookInvalid(f"{path.name}: not a Jupyter notebook (it has no list of cells)")
        for index, cell in enumerate(cells):
            if not isinstance(cell, dict):
                raise NotebookInvalid(f"{path.name}: not a valid Jupyter notebook: cell {index} is not a cell "
                                      f"but {_short_repr(cell)}")


def _validate(path: Path, nb: dict) -> None:
    """nbformat's schema check, as NotebookInvalid in words (nbformat.read only logs it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MissingIDFieldWarning: nbformat adds the ids itself
            # relax_add_props: an extra key (an 'id' in a 4.4 notebook, an editor's own field)
            # harms nothing and Jupyter opens such notebooks; a value of the wrong type does harm.
            nbformat.validate(nb, relax_add_props=True)  # may add missing cell ids: harmless here
    except nbformat.ValidationError as exc:
        raise NotebookInvalid(f"{path.name}: not a valid Jupyter notebook: {schema_problem(nb, exc)}") from exc
    except Exception as exc:  # an unknown nbformat version, a schema nbformat cannot load
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NotebookInvalid(f"{path.name}: not a Jupyter notebook ({reason})") from exc


_FIELD_SHOULD_BE = {
    "source": "text (a string, or a list of strings)",
    "metadata": "a mapping of names to values ({...})",
    "tags": "a list of strings",
    "outputs": "a list of outputs",
    "attachments": "a mapping of names to attachments",
    "cells": "a list of cells",
    "cell_type": "one of 'code', 'markdown', 'raw'",
    "execution_count": "a whole number or null",
}


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def schema_problem(nb: dict, exc: Exception) -> str:
    """Which cell (or top-level field) breaks the notebook format, and how, in words."""
    where = list(getattr(exc, "absolute_path", None) or getattr(exc, "path", None) or [])
    message = getattr(exc, "message", None) or str(exc).splitlines()[0]
    instance = getattr(exc, "instance", None)
    validator = getattr(exc, "validator", None)
    subject = "the notebook"
    fields = where
    if len(where) >= 2 and where[0] == "cells" and isinstance(where[1], int):
        index, fields = where[1], where[2:]
        cells = nb.get("cells") if isinstance(nb, dict) else None
        cell = cells[index] if isinstance(cells, list) and index < len(cells) else None
        subject = f"cell {index}"
        if isinstance(cell, dict):
            kind = cell.get("cell_type")
            head = _raw_source_head(cell.get("source"))
            subject += f" (a {kind} cell" if isinstance(kind, str) else " (a cell"
            subject += f" starting {head!r})" if head else ")"
    field_name = next((f for f in reversed(fields) if isinstance(f, str)), None)
    path_text = "".join(f"[{f}]" if isinstance(f, int) else f".{f}" for f in fields).lstrip(".")
    if validator == "required":
        missing = re.match(r"'([^']+)' is a required property", message)
        if not missing:
            return f"{subject}: {_trim(message)}"
        return (f"{subject}: its {path_text!r} lacks the field {missing.group(1)!r}" if path_text
                else f"{subject} lacks the field {missing.group(1)!r}")
    if field_name is None and subject != "the notebook":
        kind = instance.get("cell_type") if isinstance(instance, dict) else None
        if kind not in ("code", "markdown", "raw"):
            return f"{subject}: its 'cell_type' must be one of 'code', 'markdown', 'raw', not {_short_repr(kind)}"
        return f"{subject} is not a valid {kind} cell ({_trim(message)})"
    if field_name is None:
        return _trim(message)
    should = _FIELD_SHOULD_BE.get(field_name)
    if should and validator in ("type", "oneOf", "anyOf", "enum"):
        return f"{subject}: its {path_text!r} must be {should}, not {_short_repr(instance)}"
    return f"{subject}: its {path_text!r} is wrong: {_trim(message)}"


def _trim(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw_source_head(source) -> str:
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        source = "".join(source)
    if not isinstance(source, str):
        return ""
    return next((line.strip()[:60] for line in source.splitlines() if line.strip()), "")


# --- the nbclient client -----------------------------------------------------------------------


def _content_size(msg: dict) -> int:
    content = msg["content"]
    if msg["msg_type"] == "stream":
        return len(content.get("text", "").encode("utf-8", "replace"))
    return len(json.dumps(content.get("data", {}))) + len(json.dumps(content.get("metadata", {})))


def _comm_size(msg: dict) -> int:
    """What storing a comm message's widget state costs: its data, and its buffers as base64."""
    data = msg["content"].get("data", {})
    return len(json.dumps(data, default=str)) + sum(len(b) for b in msg.get("buffers") or []) * 4 // 3


class SandboxClient(NotebookClient):
    """nbclient's client with the last execute_reply kept for the cell's record (the public
    on_cell_executed hook) and caps on everything a kernel sends that the grader keeps:

    - outputs: output_bytes per cell, display updates included (nbclient rewrites every output
      shown under a display id in place, outside output());
    - widget state: output_bytes for the whole notebook, as the executed notebook's metadata;
    - a message the kernel forged or mangled (a widget without _model_module, a status without a
      state) is dropped and counted, never an exception that stops the grader.
    """

    def __init__(self, nb: NotebookNode, km: SandboxedKernelManager, *, sandbox: Sandbox, output_bytes: int):
        super().__init__(
            nb,
            km=km,
            allow_errors=True,          # stop_on_error=False: a raising cell does not abort the queue
            record_timing=True,
            # Not coalesce_streams: its \r regex is quadratic in a line's length, and one long
            # printed line would hang the grader after the cell ended. output() merges instead.
            coalesce_streams=False,
            shutdown_kernel="immediate",
            startup_timeout=KERNEL_STARTUP_S,
            iopub_timeout=IOPUB_TIMEOUT_S,          # a big output may still be in flight after the reply
            timeout=None,   # each cell's budget is kept by _execute_within (an interrupt, then a grace)
        )
        self.sandbox = sandbox
        self.sandboxed_km = km   # nbclient's km, typed: nbclient types it optional, for a client that makes its own
        self.stderr_tail: _StderrTail | None = None
        self.output_bytes = output_bytes
        self.last_reply: dict | None = None
        self.dropped_messages = 0
        self.widget_state_capped = False   # some widget state passed the cap and was not kept
        self._kept: dict[int, int] = {}
        self._sizes: dict[int, dict[int, int]] = {}  # cell -> output index -> size, for display outputs
        self.truncated_cells: set[int] = set()    # cells whose output passed the cap
        self._widget_bytes = 0
        self.on_cell_executed = self._keep_reply

    def _keep_reply(self, cell: NotebookNode, cell_index: int, execute_reply: dict) -> None:
        self.last_reply = execute_reply

    def process_message(self, msg, cell, cell_index):
        try:
            return super().process_message(msg, cell, cell_index)
        except CellControlSignal:  # the cell's end: nbclient's own control flow
            raise
        except Exception as exc:  # the kernel is the student's: any message can be malformed
            self.dropped_messages += 1
            self.log.warning("dropped a malformed %s message: %r", msg.get("msg_type"), exc)
            return None

    def output(self, outs, msg, display_id, cell_index):
        if self.clear_before_next_output:  # nbclient empties outs before appending this one
            self._kept[cell_index] = 0
            self._sizes.pop(cell_index, None)
        if msg["msg_type"] == "error":  # always kept, shortened if huge (a 50 MB exception message)
            content = msg["content"]
            traceback = "\n".join(content.get("traceback", []))
            if len(traceback) + len(content.get("evalue", "")) > self.output_bytes:
                msg = {**msg, "content": {**content, "evalue": _shorten(content.get("evalue", ""), MAX_ERROR_CHARS),
                                          "traceback": [_shorten(traceback, MAX_TRACEBACK_CHARS)]}}
            return super().output(outs, msg, display_id, cell_index)
        kept, size = self._kept.get(cell_index, 0), _content_size(msg)
        if kept + size <= self.output_bytes:
            self._kept[cell_index] = kept + size
            out = self._append(outs, msg, display_id, cell_index)
            if display_id and out is not None:  # where nbclient will rewrite it on an update
                index = self._display_id_map[display_id][cell_index][-1]
                self._sizes.setdefault(cell_index, {})[index] = size
            return out
        if cell_index in self.truncated_cells:
            return None
        self.truncated_cells.add(cell_index)
        self._kept[cell_index] = self.output_bytes
        marker = TRUNCATED.format(limit=self.output_bytes)
        if msg["msg_type"] == "stream":
            room = max(self.output_bytes - kept, 0)
            head = msg["content"]["text"].encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
            msg = {**msg, "content": {**msg["content"], "text": head + marker}}
            return self._append(outs, msg, None, cell_index)
        out = nbformat.v4.new_output("stream", name="stderr", text=marker)
        outs.append(out)
        return out

    def _append(self, outs, msg, display_id, cell_index):
        """Like nbclient's output(), but text on a stream continues that stream's last output,
        as a notebook front end shows it (no thousands of one-line outputs)."""
        last = outs[-1] if outs else None
        hooked = self.output_hook_stack[msg["parent_header"].get("msg_id")]
        if (msg["msg_type"] == "stream" and last is not None and last.output_type == "stream"
                and last.name == msg["content"]["name"] and not self.clear_before_next_output and not hooked):
            last.text += msg["content"]["text"]
            return last
        return super().output(outs, msg, display_id, cell_index)

    def clear_output(self, outs, msg, cell_index):
        super().clear_output(outs, msg, cell_index)
        if not outs:
            self._kept[cell_index] = 0
            self._sizes.pop(cell_index, None)

    def _update_display_id(self, display_id, msg):
        """nbclient's in-place rewrite of every output shown under display_id, each cell's share
        charged to that cell's budget; a share that does not fit leaves the outputs as they were
        and marks the first.

        The one private nbclient hook the grader overrides (with its _display_id_map): no public
        one sees a display update, hence nbclient's upper bound in pyproject.toml."""
        if display_id not in self._display_id_map:
            return
        header = msg["header"]
        msg = {**msg, "msg_type": "display_data", "header": {**header, "msg_type": "display_data"}}
        out, size = nbformat.v4.output_from_msg(msg), _content_size(msg)
        for cell_index, indices in self._display_id_map[display_id].items():
            outputs, sizes = self.nb.cells[cell_index].outputs, self._sizes.setdefault(cell_index, {})
            indices = [i for i in indices if i < len(outputs)]
            room = self.output_bytes - self._kept.get(cell_index, 0) + sum(sizes.get(i, 0) for i in indices)
            if size * len(indices) > room:
                if indices and cell_index not in self.truncated_cells:
                    self.truncated_cells.add(cell_index)
                    outputs[indices[0]]["data"] = {"text/plain": TRUNCATED.format(limit=self.output_bytes)}
                continue
            for i in indices:
                outputs[i]["data"], outputs[i]["metadata"], sizes[i] = out["data"], out["metadata"], size
            self._kept[cell_index] = self.output_bytes - room + size * len(indices)

    def handle_comm_msg(self, outs, msg, cell_index):
        """Widget state is kept (nbclient stores it as the notebook's metadata) up to output_bytes
        for the whole notebook; past that, further state is not stored."""
        size = _comm_size(msg)
        self.store_widget_state = self._widget_bytes + size <= self.output_bytes
        if self.store_widget_state:
            self._widget_bytes += size
        else:
            self.widget_state_capped = True
        super().handle_comm_msg(outs, msg, cell_index)

    def on_comm_open_jupyter_widget(self, msg):
        """nbclient's front-end mimic for output widgets; a widget message without the fields it
        expects (no state, no _model_module) is no widget the grader needs: ignored."""
        try:
            return super().on_comm_open_jupyter_widget(msg)
        except (KeyError, TypeError, AttributeError):
            return None

    def set_widgets_metadata(self) -> None:
        """nbclient's widget metadata, left out when it passes the cap (an output widget's
        outputs are added to its state outside handle_comm_msg)."""
        super().set_widgets_metadata()
        widgets = self.nb.metadata.get("widgets")
        if widgets is not None and len(json.dumps(widgets, default=str)) > self.output_bytes:
            del self.nb.metadata["widgets"]
            self.widget_state_capped = True


# --- running cells -----------------------------------------------------------------------------


def _source_head(cell: NotebookNode) -> str:
    for line in cell.source.splitlines():
        if line.strip():
            return line.strip()[:80]
    return ""


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]


class _StderrTail:
    """The last bytes the kernel process wrote to its stderr, for a crash's message. A daemon
    thread drains the pipe (an undrained pipe would block the kernel; a file could fill the disk)."""

    def __init__(self, pipe, limit: int = 2000):
        self._data, self._limit = bytearray(), limit
        threading.Thread(target=self._drain, args=(pipe,), daemon=True).start()

    def _drain(self, pipe) -> None:
        with pipe:
            for chunk in iter(lambda: pipe.read1(65536), b""):
                self._data += chunk
                del self._data[: -self._limit]

    def text(self) -> str:
        return strip_ansi(bytes(self._data).decode("utf-8", "replace")).strip()


async def _death_reason(client: SandboxClient) -> str:
    if client.sandbox.oom_killed():
        return (f"killed by the out-of-memory killer: the kernel and its processes used more than "
                f"{client.sandbox.limits.memory_mb} MB")
    try:
        provisioner = client.sandboxed_km.provisioner
        code = await provisioner.poll() if provisioner else None
    except Exception:
        code = None
    if code is None:
        reason = "the kernel died"
    else:  # bwrap reports a signalled child as 128 + signal
        sig = -code if code < 0 else code - 128 if code > 128 else 0
        names = {9: "SIGKILL (perhaps out of memory)", 11: "SIGSEGV (segmentation fault)", 6: "SIGABRT"}
        reason = f"the kernel was killed by {names.get(sig, f'signal {sig}')}" if sig else f"the kernel exited with code {code}"
    await asyncio.sleep(0.1)  # let the drain thread read the dying kernel's last words
    tail = client.stderr_tail.text() if client.stderr_tail else ""
    return f"{reason}; its last error output:\n{tail}" if tail else reason


@dataclass
class _CellOutcome:
    status: CellStatus
    seconds: float
    error: str | None = None
    traceback: str | None = None
    kernel_alive: bool = True


def _replied(cell: NotebookNode) -> bool:
    """Whether the kernel's execute_reply to cell has come: nbclient records its time (record_timing)
    as it arrives, before waiting for the cell's last outputs, which may trail it."""
    return "shell.execute_reply" in cell.metadata.get("execution", {})


async def _finishes(execution: asyncio.Future, cell: NotebookNode, seconds: float) -> bool:
    """Whether the cell's execution ends, or its reply comes, within seconds."""
    await asyncio.wait({execution}, timeout=seconds)
    return execution.done() or _replied(cell)


async def _execute_within(client: SandboxClient, cell: NotebookNode, index: int, budget: float, *,
                          store_history: bool) -> str:
    """Run cell through nbclient within budget seconds: past it the kernel is interrupted, and a
    kernel still running INTERRUPT_GRACE_S later is stopped. How the cell ended: "finished",
    "interrupted" or "stopped"; DeadKernelError when the kernel died by itself.

    The budget is kept here with the kernel manager's public interrupt_kernel and shutdown_kernel:
    nbclient's interrupt_on_timeout waits a whole budget again after each interrupt and never
    gives up on a kernel that ignores it, and its error_on_timeout ends the cell without the
    kernel's reply (the KeyboardInterrupt traceback the report shows)."""
    execution = asyncio.ensure_future(client.async_execute_cell(cell, index, store_history=store_history))
    if await _finishes(execution, cell, budget):
        await execution
        return "finished"
    await client.sandboxed_km.interrupt_kernel()
    if await _finishes(execution, cell, INTERRUPT_GRACE_S):
        await execution  # DeadKernelError if it died meanwhile
        return "interrupted"
    await client.sandboxed_km.shutdown_kernel(now=True)
    try:
        await execution
    except DeadKernelError:  # nbclient notices the stopped kernel within its 1 s liveness poll
        pass
    return "stopped"


async def _run_cell(client: SandboxClient, cell: NotebookNode, index: int, budget: float, *,
                    store_history: bool = True) -> _CellOutcome:
    client.last_reply = None
    started = monotonic()
    try:
        ending = await _execute_within(client, cell, index, max(budget, 0.01), store_history=store_history)
    except DeadKernelError:
        reason = await _death_reason(client)
        return _CellOutcome("crashed", monotonic() - started, f"KernelDied: {reason}", kernel_alive=False)
    if ending == "stopped":
        return _CellOutcome("timeout", monotonic() - started,
                            f"Timeout: the cell ran longer than {budget:.0f} s and ignored the interrupt; "
                            "the kernel was stopped", kernel_alive=False)
    seconds = monotonic() - started
    content: dict = client.last_reply.get("content", {}) if client.last_reply else {}
    traceback = strip_ansi("\n".join(content.get("traceback", []))) or None
    traceback = traceback and _shorten(traceback, MAX_TRACEBACK_CHARS)
    if ending == "interrupted":
        return _CellOutcome("timeout", seconds,
                            f"Timeout: the cell ran longer than {budget:.0f} s and was interrupted", traceback)
    if content.get("status") == "error":
        name, value = content.get("ename", "Error"), content.get("evalue", "")
        error = _shorten(strip_ansi(f"{name}: {value}" if value else name), MAX_ERROR_CHARS)
        return _CellOutcome("error", seconds, error, traceback)
    return _CellOutcome("ok", seconds)


@dataclass
class _Run:
    cells: list[CellRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    probe_error: str | None = None
    probe_ran: bool = False
    data_parameter: str | None = None   # the notebook parameter of the data folder, as hints name it


async def _run_notebook(nb: NotebookNode, sandbox: Sandbox, *, probe_code: str | None,
                        cell_timeout: float, notebook_timeout: float, output_bytes: int,
                        setup: str | None = None, data_parameter: str | None = None) -> _Run:
    run = _Run(data_parameter=data_parameter)
    client = SandboxClient(nb, SandboxedKernelManager(sandbox), sandbox=sandbox, output_bytes=output_bytes)
    launcher = None
    try:
        await client.async_start_new_kernel(env=sandbox.environment(), cwd=str(sandbox.scratch_dir),
                                            stdout=DEVNULL, stderr=PIPE)
        launcher = _launcher(client)
        client.stderr_tail = _StderrTail(launcher.stderr)
        # Connects and waits for the kernel's first reply, here rather than inside
        # async_setup_kernel: a client that fails to start stops its kernel itself, and
        # async_setup_kernel registers an atexit cleanup that it leaves behind when a start fails.
        await client.async_start_new_kernel_client()
    except Exception as exc:
        await asyncio.sleep(0.1)
        tail = client.stderr_tail.text() if client.stderr_tail else ""
        await _reap(launcher)
        raise SandboxError(f"the sandboxed kernel did not start ({exc}); its error output:\n{tail}") from exc
    try:
        # On leaving, kills the kernel and stops the channels (nbclient leaves a kernel manager it
        # was given running otherwise); then the launcher is waited for.
        async with client.async_setup_kernel(cleanup_kc=True):
            _restore_default_signals()
            alive = await _run_setup(client, nb, run, setup, cell_timeout) if setup else True
            alive = await _run_cells(client, nb, run, cell_timeout, notebook_timeout, alive=alive)
            if probe_code is not None and not alive:
                run.probe_error = "the probe did not run: the kernel had died or been stopped"
            elif probe_code is not None:
                await _run_probe(client, nb, run, probe_code, cell_timeout)
    finally:
        await _reap(launcher)
    client.set_widgets_metadata()
    if client.dropped_messages:
        run.errors.append(f"the grader ignored {client.dropped_messages} malformed message(s) from the kernel")
    if client.widget_state_capped:
        run.errors.append(f"widget state passed the grader's output cap of {client.output_bytes} bytes "
                          "and was left out of the executed notebook")
    return run


def _launcher(client: SandboxClient) -> Popen:
    """The started kernel's launcher process (bwrap), which jupyter_client's default provisioner keeps."""
    provisioner = client.sandboxed_km.provisioner
    assert isinstance(provisioner, LocalProvisioner) and provisioner.process is not None
    return provisioner.process


async def _reap(launcher, grace_s: float = 5.0) -> None:
    """Make sure the kernel's launcher (bwrap) is dead and waited for: unwaited, each notebook
    would leave a zombie bwrap until the grader exits."""
    if launcher is None:
        return
    deadline = monotonic() + grace_s
    while launcher.poll() is None and monotonic() < deadline:
        await asyncio.sleep(0.02)
    if launcher.poll() is None:
        launcher.kill()
        await asyncio.to_thread(launcher.wait)


def _restore_default_signals() -> None:
    """nbclient turns SIGINT/SIGTERM into "shut the kernel down": the run would then go on and
    record a crash. Ctrl-C must stop the grader (the finally clauses still stop the sandbox)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.remove_signal_handler(sig)
        except (RuntimeError, ValueError):
            pass


def _gpu_share_mb(slot: Slot | None) -> int | None:
    if slot is None or slot.gpu is None or slot.memory_fraction is None:
        return None
    return int(slot.gpu.memory_mb * slot.memory_fraction)


async def _run_setup(client: SandboxClient, nb: NotebookNode, run: _Run, code: str, cell_timeout: float) -> bool:
    """The grader's hidden setup (devices.setup_code: the GPU memory cap) before the student's
    first cell: outside the history, the notebook's cells and its time budget, so the report and
    executed.ipynb never show it. Whether the kernel is still usable afterwards."""
    cell = nbformat.v4.new_code_cell(code)
    nb.cells.append(cell)
    try:
        outcome = await _run_cell(client, cell, len(nb.cells) - 1, cell_timeout, store_history=False)
    finally:
        nb.cells.pop()
    if outcome.status != "ok":
        run.errors.append(f"the grader's device setup failed before the first cell: {outcome.error}")
    return outcome.kernel_alive


async def _run_cells(client: SandboxClient, nb: NotebookNode, run: _Run, cell_timeout: float,
                     notebook_timeout: float, *, alive: bool = True) -> bool:
    """Run the notebook's cells into run; whether the kernel is still usable afterwards."""
    deadline = monotonic() + notebook_timeout
    submitted_index = -1
    for index, cell in enumerate(nb.cells):
        injected = is_injected(cell)
        submitted_index += 0 if injected else 1
        if cell.cell_type != "code":
            continue
        if not alive or monotonic() >= deadline:
            cell.outputs, cell.execution_count = [], None  # not the submission's stale outputs
            if not injected:
                run.cells.append(CellRun(index=submitted_index, status="not_run", source_head=_source_head(cell)))
            continue
        outcome = await _run_cell(client, cell, index, min(cell_timeout, deadline - monotonic()))
        alive = outcome.kernel_alive
        if injected:
            if outcome.status != "ok":
                run.errors.append(f"the grader's parameters cell failed: {outcome.error}")
            continue
        hint = hint_for(submitted_index, outcome.error, outcome.traceback, data_dir=str(client.sandbox.data_path),
                        data_parameter=run.data_parameter,
                        memory_mb=client.sandbox.limits.memory_mb, gpu_memory_mb=_gpu_share_mb(client.sandbox.slot),
                        source=cell.source) if outcome.status == "error" else None
        run.cells.append(CellRun(index=submitted_index, status=outcome.status, seconds=round(outcome.seconds, 3),
                                 error=outcome.error, traceback=outcome.traceback, source_head=_source_head(cell),
                                 hint=hint))
        where = f"cell {submitted_index} ({_source_head(cell)!r})"
        if outcome.status == "crashed":
            run.errors.append(f"{where}: {(outcome.error or '').removeprefix('KernelDied: ')}; the cells after it were not run")
        elif outcome.status == "timeout":
            run.errors.append(f"{where}: {(outcome.error or '').removeprefix('Timeout: ')}")
        if index in client.truncated_cells:  # the student should know why the report shows less
            run.errors.append(f"{where}: its output passed the grader's output cap of {client.output_bytes} "
                              "bytes and was truncated")
    if alive and monotonic() >= deadline and any(c.status == "not_run" for c in run.cells):
        run.errors.append(f"the notebook's time budget of {notebook_timeout:.0f} s ran out; "
                          "the cells after the interrupted one were not run")
    return alive


async def _run_probe(client: SandboxClient, nb: NotebookNode, run: _Run, probe_code: str, cell_timeout: float) -> None:
    scratch = client.sandbox.scratch_dir
    for name in (PROBE_FILE, PROBE_VALUES):  # a file the notebook left there is not the export's
        planted = scratch / name
        if planted.is_symlink() or planted.exists():
            _remove(planted)
    # The notebook may have changed directory: the probe writes relative to the scratch dir.
    cell = nbformat.v4.new_code_cell(f"__import__('os').chdir({str(scratch)!r})\n{probe_code}")
    nb.cells.append(cell)
    try:
        outcome = await _run_cell(client, cell, len(nb.cells) - 1, cell_timeout, store_history=False)
    finally:
        nb.cells.pop()
    run.probe_ran = True
    if outcome.status == "crashed":
        run.probe_error = f"the kernel died while the probe ran: {(outcome.error or '').removeprefix('KernelDied: ')}"
        run.errors.append(run.probe_error)
    elif outcome.status == "timeout":
        run.probe_error = f"the probe ran longer than its {cell_timeout:.0f} s limit"
    elif outcome.status == "error":
        run.probe_error = _shorten(f"{outcome.error}\n{outcome.traceback or ''}".strip(), MAX_TRACEBACK_CHARS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)  # any depth: a planted 1500-level tree too
    else:
        path.unlink(missing_ok=True)


def _overall_status(cells: list[CellRun]) -> Status:
    statuses = {c.status for c in cells}
    for status in ("crashed", "timeout", "error"):
        if status in statuses:
            return status
    return "graded"


def write_notebook_atomic(nb: NotebookNode, path: Path) -> None:
    """Write nb to path atomically; a directory the student planted under that name goes first."""
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    atomic.write_text(path, nbformat.writes(nb))


# --- the stage ---------------------------------------------------------------------------------


def execute_notebook(
    notebook_path: Path,
    scratch_dir: Path,
    parameters: dict,
    *,
    config: AssignmentConfig,
    data_dir: Path,
    probe_code: str | None = None,
    cell_timeout: float | None = None,
    notebook_timeout: float | None = None,
    threads: int | None = None,
    slot: Slot | None = None,
) -> ExecutionResult:
    """Run the notebook at notebook_path in a sandboxed kernel working in scratch_dir (a fresh,
    empty directory), with `parameters` injected after its parameters cell and the config's data
    folder parameter pointing at a read-only view of data_dir. Writes scratch_dir/executed.ipynb;
    never modifies the submission.

    threads: OMP/MKL threads for the kernel (default: the CPUs this process may use).
    slot: the worker slot (grader/devices.py) whose device the kernel gets; None: the CPU.
    Raises SandboxError when the host cannot start a kernel at all (not the submission's fault).
    """
    started = monotonic()
    notebook_path, scratch_dir = Path(notebook_path), Path(scratch_dir)
    limits = config.limits
    cell_timeout = cell_timeout or limits.cell_timeout_s
    notebook_timeout = notebook_timeout or limits.notebook_timeout_s
    try:
        nb = read_notebook(notebook_path)
    except NotebookInvalid as exc:
        return ExecutionResult(status="invalid", errors=[str(exc)], seconds=round(monotonic() - started, 3))
    errors = []
    tag = config.parameters.tag
    names = [*parameters, config.parameters.data_dir]
    warning = placement_warning(locate_parameters(without_injected(nb), names, tag), notebook_path.name, tag)
    if warning:  # the same placement inject_parameters uses below
        errors.append(warning)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    try:  # the bytes just validated, never a link's target
        atomic.write_bytes(scratch_dir / SUBMISSION_COPY, read_submission(notebook_path))
    except NotebookInvalid as exc:  # the file changed since it was read
        return ExecutionResult(status="invalid", errors=[str(exc)], seconds=round(monotonic() - started, 3))

    with Sandbox(scratch_dir, data_dir, limits, threads=threads, slot=slot) as sandbox:
        run_nb = inject_parameters(nb, {**parameters, config.parameters.data_dir: str(sandbox.data_path)}, tag)
        run = asyncio.run(_run_notebook(run_nb, sandbox, probe_code=probe_code, cell_timeout=cell_timeout,
                                        notebook_timeout=notebook_timeout, output_bytes=limits.output_bytes,
                                        setup=setup_code(slot), data_parameter=config.parameters.data_dir))
        warnings = list(sandbox.warnings)
    # Every process of the sandbox is gone now: nothing can swap files under what we read or write.
    executed = scratch_dir / EXECUTED_NOTEBOOK
    write_notebook_atomic(run_nb, executed)
    probe = scratch_dir / PROBE_FILE
    probe_file, probe_error = None, run.probe_error
    if run.probe_ran and probe.is_symlink():
        probe_error = probe_error or f"{PROBE_FILE} is a symbolic link, not the probe's file: ignored"
    elif run.probe_ran and probe.is_file():
        probe_file = str(probe)
    elif run.probe_ran and probe_error is None:
        probe_error = f"the probe finished without writing {PROBE_FILE}"
    return ExecutionResult(
        status=_overall_status(run.cells),
        cells=run.cells,
        errors=errors + run.errors,
        seconds=round(monotonic() - started, 3),
        executed_notebook=str(executed),
        probe_file=probe_file,
        probe_error=probe_error,
        sandbox_warnings=warnings,
        device=slot.label if slot is not None else "cpu",
    )
