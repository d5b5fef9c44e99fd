"""EXECUTE's handling of what a kernel sends, on a scripted fake kernel: no process, no sandbox.

As nbclient's own suite does (tests/test_client.py: prepare_cell_mocks), the kernel client's
shell and iopub channels are replaced; here by a small fake kernel that plays, for each cell
source, a script of messages (outputs, an error, a hang, a death) through asyncio queues, so
timing-dependent paths (a cell budget, an interrupt, a dead kernel) run for real in
milliseconds. Everything above the channels is the grader's real code: SandboxClient (nbclient's
NotebookClient underneath) and the cell loop that turns replies into CellRun records, statuses
and the errors the report shows. tests/test_execute.py covers the same behaviours with real
sandboxed kernels; this tier checks the grader's side of them in well under a second each.

The one place that knows execute.py's private entry points is `FakeRun`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader import execute as execute_module
from grader.execute import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, SandboxClient
from grader.inject import INJECTED_TAG
from grader.records import CellRun

ANSI_RED = "\x1b[0;31m"


# --- the fake kernel ---------------------------------------------------------------------------


@dataclass
class Script:
    """What the fake kernel does when asked to run one cell's source."""

    outputs: list[tuple[str, dict]] = field(default_factory=list)   # (msg_type, content) on iopub
    error: tuple[str, str, list[str]] | None = None                  # ename, evalue, traceback
    seconds: float = 0.0            # busy this long before the outputs and the reply
    hang: str | None = None         # "until_interrupt" (then KeyboardInterrupt) or "forever"
    dies: bool = False              # exits mid-cell: no reply ever, is_alive() turns False


def stream(text: str, name: str = "stdout") -> tuple[str, dict]:
    return "stream", {"name": name, "text": text}


def display(data: dict, display_id: str | None = None) -> tuple[str, dict]:
    return "display_data", {"data": data, "metadata": {}, "transient": {"display_id": display_id} if display_id else {}}


def update(data: dict, display_id: str) -> tuple[str, dict]:
    return "update_display_data", {"data": data, "metadata": {}, "transient": {"display_id": display_id}}


class FakeChannel:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    async def get_msg(self, timeout: float | None = None) -> dict:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:   # asyncio.TimeoutError is TimeoutError since Python 3.11
            raise Empty from None   # what jupyter_client's channels raise


class FakeKernel:
    """The kernel client (execute, channels, is_alive) and the manager's calls the grader makes
    (interrupt_kernel, shutdown_kernel, provisioner.poll) in one object."""

    def __init__(self, scripts: dict[str, Script], exit_code: int | None = -9) -> None:
        self.scripts, self.exit_code = scripts, exit_code
        self.shell_channel, self.iopub_channel = FakeChannel(), FakeChannel()
        self.alive = True
        self.executed: list[str] = []
        self.interrupts = 0
        self.shutdowns = 0
        self._interrupted: asyncio.Event | None = None
        self.provisioner = SimpleNamespace(poll=self._poll)

    # kernel client
    def execute(self, code: str, store_history: bool = True, stop_on_error: bool = True) -> str:
        msg_id = uuid.uuid4().hex
        self.executed.append(code)
        self._interrupted = asyncio.Event()
        asyncio.get_running_loop().create_task(self._play(msg_id, self.scripts.get(code, Script()), self._interrupted))
        return msg_id

    async def is_alive(self) -> bool:
        return self.alive

    # kernel manager
    async def interrupt_kernel(self) -> None:
        self.interrupts += 1
        if self._interrupted is not None:
            self._interrupted.set()

    async def shutdown_kernel(self, now: bool = False) -> None:
        self.shutdowns += 1
        self.alive = False

    async def _poll(self) -> int | None:
        return None if self.alive else self.exit_code

    async def _play(self, msg_id: str, script: Script, interrupted: asyncio.Event) -> None:
        self._iopub(msg_id, "status", {"execution_state": "busy"})
        await asyncio.sleep(script.seconds)
        for msg_type, content in script.outputs:
            self._iopub(msg_id, msg_type, content)
        error = script.error
        if script.dies:
            self.alive = False
            return
        if script.hang == "forever":
            return
        if script.hang == "until_interrupt":
            await interrupted.wait()
            error = ("KeyboardInterrupt", "", [f"{ANSI_RED}KeyboardInterrupt\x1b[0m: "])
        if error:
            ename, evalue, traceback = error
            self._iopub(msg_id, "error", {"ename": ename, "evalue": evalue, "traceback": traceback})
        self._iopub(msg_id, "status", {"execution_state": "idle"})
        reply = {"status": "error", "ename": error[0], "evalue": error[1], "traceback": error[2]} if error \
            else {"status": "ok"}
        self.shell_channel.queue.put_nowait(_message(msg_id, "execute_reply", {**reply, "execution_count": 1}))

    def _iopub(self, msg_id: str, msg_type: str, content: dict) -> None:
        self.iopub_channel.queue.put_nowait(_message(msg_id, msg_type, content))


def _message(parent_id: str, msg_type: str, content: dict) -> dict:
    return {"msg_type": msg_type, "header": {"msg_type": msg_type, "msg_id": uuid.uuid4().hex},
            "parent_header": {"msg_id": parent_id}, "content": content, "metadata": {}, "buffers": []}


# --- running a notebook on it ------------------------------------------------------------------


@dataclass
class FakeRun:
    cells: list[CellRun]
    errors: list[str]
    status: str
    notebook: nbformat.NotebookNode
    kernel: FakeKernel
    client: SandboxClient
    probe_error: str | None = None


def run_fake(tmp_path: Path, cells: list, scripts: dict[str, Script], *, cell_timeout: float = 5.0,
             notebook_timeout: float = 60.0, output_bytes: int = 10_000, probe: str | None = None,
             oom: bool = False) -> FakeRun:
    nb = new_notebook(cells=cells)
    kernel = FakeKernel(scripts)
    sandbox = SimpleNamespace(data_path=tmp_path / "data", scratch_dir=tmp_path, slot=None,
                              limits=SimpleNamespace(memory_mb=4096), oom_killed=lambda: oom)
    run = execute_module._Run()

    async def go() -> SandboxClient:
        client = SandboxClient(nb, km=kernel, sandbox=sandbox, output_bytes=output_bytes)
        client.kc = kernel
        alive = await execute_module._run_cells(client, nb, run, cell_timeout, notebook_timeout)
        if probe is not None and alive:
            await execute_module._run_probe(client, nb, run, probe, cell_timeout)
        return client

    client = asyncio.run(go())
    return FakeRun(run.cells, run.errors, execute_module._overall_status(run.cells), nb, kernel, client,
                   run.probe_error)


def texts(cell) -> list[str]:
    return [o.get("text") or o.get("data", {}).get("text/plain", "") for o in cell.outputs]


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_are_kept_and_stream_pieces_join_as_a_front_end_shows_them(tmp_path):
    scripts = {"talk()": Script(outputs=[stream("a"), stream("b\n"), stream("warn\n", "stderr"), stream("c\n"),
                                         display({"text/plain": "<figure>"})])}
    result = run_fake(tmp_path, [new_code_cell("talk()"), new_code_cell("x = 1")], scripts)
    assert result.status == "graded"
    assert [(c.index, c.status, c.source_head) for c in result.cells] == [(0, "ok", "talk()"), (1, "ok", "x = 1")]
    outputs = result.notebook.cells[0].outputs
    assert [(o.output_type, o.get("name")) for o in outputs] == [
        ("stream", "stdout"), ("stream", "stderr"), ("stream", "stdout"), ("display_data", None)]
    assert texts(result.notebook.cells[0]) == ["ab\n", "warn\n", "c\n", "<figure>"]
    assert result.errors == []
    assert result.kernel.executed == ["talk()", "x = 1"]


def test_a_stream_past_the_cap_is_cut_with_a_marker_and_said_once(tmp_path):
    # "q": a letter the marker does not contain
    scripts = {"flood()": Script(outputs=[stream("q" * 600)] * 5 + [display({"text/plain": "late"})]),
               "after()": Script(outputs=[stream("after\n")])}
    result = run_fake(tmp_path, [new_code_cell("flood()"), new_code_cell("after()")], scripts, output_bytes=1000)
    assert [c.status for c in result.cells] == ["ok", "ok"]
    (kept,) = texts(result.notebook.cells[0])
    assert kept.startswith("q" * 1000) and "output truncated by the grader" in kept and "1000 bytes" in kept
    assert kept.count("q") == 1000                               # nothing after the cap, the display neither
    assert texts(result.notebook.cells[1]) == ["after\n"]       # the cap is per cell
    assert result.errors == [("cell 0 ('flood()'): its output passed the grader's output cap of 1000 bytes "
                              "and was truncated")]


def test_a_display_past_the_cap_becomes_a_marker_on_stderr(tmp_path):
    scripts = {"show()": Script(outputs=[display({"text/plain": "q" * 5000})])}
    result = run_fake(tmp_path, [new_code_cell("show()")], scripts, output_bytes=1000)
    (out,) = result.notebook.cells[0].outputs
    assert out.output_type == "stream" and out.name == "stderr" and "output truncated" in out.text
    assert "q" not in out.text


def test_clear_output_gives_the_cell_its_budget_back(tmp_path):
    progress = [stream("x" * 800), ("clear_output", {"wait": False}), stream("y" * 800)]
    result = run_fake(tmp_path, [new_code_cell("progress()")], {"progress()": Script(outputs=progress)},
                      output_bytes=1000)
    assert texts(result.notebook.cells[0]) == ["y" * 800]
    assert result.errors == []


def test_display_updates_are_charged_to_the_cell_that_shows_them(tmp_path):
    shown = [display({"text/plain": "v0"}, "bar"), update({"text/plain": "v1"}, "bar")]
    flood = [update({"text/plain": "z" * 5000}, "bar")]
    result = run_fake(tmp_path, [new_code_cell("bar()"), new_code_cell("flood()")],
                      {"bar()": Script(outputs=shown), "flood()": Script(outputs=flood)}, output_bytes=1000)
    (out,) = result.notebook.cells[0].outputs
    assert "output truncated" in out.data["text/plain"]          # the update that did not fit marks it
    small = run_fake(tmp_path, [new_code_cell("bar()")], {"bar()": Script(outputs=shown)}, output_bytes=1000)
    assert texts(small.notebook.cells[0]) == ["v1"]              # an update that fits is applied in place


def test_a_malformed_message_is_dropped_and_counted_not_raised(tmp_path):
    scripts = {"forge()": Script(outputs=[("display_data", {"no": "data"}), stream("still\n")])}
    result = run_fake(tmp_path, [new_code_cell("forge()"), new_code_cell("x = 1")], scripts)
    assert [c.status for c in result.cells] == ["ok", "ok"]
    assert result.client.dropped_messages == 1
    assert texts(result.notebook.cells[0]) == ["still\n"]


@pytest.mark.xfail(strict=True, reason="known gap: a truncation is said only for the cell that just ran; "
                   "a later cell's display update that overflows an earlier cell is marked in the notebook only")
def test_a_later_cells_update_that_overflows_an_earlier_cell_is_said(tmp_path):
    shown = [display({"text/plain": "v0"}, "bar")]
    flood = [update({"text/plain": "z" * 5000}, "bar")]
    result = run_fake(tmp_path, [new_code_cell("bar()"), new_code_cell("flood()")],
                      {"bar()": Script(outputs=shown), "flood()": Script(outputs=flood)}, output_bytes=1000)
    assert any("was truncated" in e for e in result.errors)


# --- errors ------------------------------------------------------------------------------------


def test_a_raising_cell_is_recorded_and_the_next_cell_still_runs(tmp_path):
    traceback = [f"{ANSI_RED}ZeroDivisionError\x1b[0m Traceback", "----> 1 1/0", "ZeroDivisionError: division by zero"]
    scripts = {"1/0": Script(error=("ZeroDivisionError", "division by zero", traceback)),
               "print('next')": Script(outputs=[stream("next\n")])}
    result = run_fake(tmp_path, [new_code_cell("1/0"), new_code_cell("print('next')")], scripts)
    assert result.status == "error"
    failed, after = result.cells
    assert failed.status == "error" and failed.error == "ZeroDivisionError: division by zero"
    assert failed.traceback == "ZeroDivisionError Traceback\n----> 1 1/0\nZeroDivisionError: division by zero"
    assert failed.hint is None
    assert after.status == "ok" and texts(result.notebook.cells[1]) == ["next\n"]
    assert result.notebook.cells[0].outputs[0].output_type == "error"   # kept in executed.ipynb


def test_an_error_from_the_environment_gets_its_hint(tmp_path):
    scripts = {"model.cuda()": Script(error=("RuntimeError", "Found no NVIDIA driver on your system", []))}
    result = run_fake(tmp_path, [new_code_cell("model.cuda()")], scripts)
    (cell,) = result.cells
    assert cell.status == "error" and cell.hint and "cell 0" in cell.hint and "torch.device" in cell.hint


def test_a_huge_exception_is_shortened_in_the_record_and_the_notebook(tmp_path):
    scripts = {"boom()": Script(error=("ValueError", "v" * 100_000, ["t" * 100_000]))}
    result = run_fake(tmp_path, [new_code_cell("boom()")], scripts, output_bytes=1000)
    (cell,) = result.cells
    assert cell.error.startswith("ValueError: vvv") and "[...]" in cell.error
    assert len(cell.error) <= MAX_ERROR_CHARS + 10
    assert len(cell.traceback) <= MAX_TRACEBACK_CHARS + 10
    (out,) = result.notebook.cells[0].outputs
    assert out.output_type == "error" and len(out.evalue) <= MAX_ERROR_CHARS + 10


# --- time budgets and dead kernels -------------------------------------------------------------


def test_a_cell_past_its_budget_is_interrupted_and_the_next_one_runs(tmp_path):
    scripts = {"train()": Script(outputs=[stream("epoch 1\n")], hang="until_interrupt"),
               "print('next')": Script(outputs=[stream("next\n")])}
    result = run_fake(tmp_path, [new_code_cell("train()"), new_code_cell("print('next')")], scripts,
                      cell_timeout=0.2)
    assert result.status == "timeout"
    slow, after = result.cells
    assert slow.status == "timeout" and 0.2 <= slow.seconds < 2
    assert slow.error == "Timeout: the cell ran longer than 0 s and was interrupted"
    assert "KeyboardInterrupt" in slow.traceback and "\x1b[" not in slow.traceback
    assert texts(result.notebook.cells[0])[0] == "epoch 1\n"     # what it printed before stays
    assert after.status == "ok" and result.kernel.interrupts == 1 and result.kernel.shutdowns == 0
    assert result.errors == ["cell 0 ('train()'): the cell ran longer than 0 s and was interrupted"]


def test_a_kernel_that_ignores_the_interrupt_is_stopped_and_the_rest_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(execute_module, "INTERRUPT_GRACE_S", 0.2)
    stale = new_code_cell("print('never')", execution_count=7,
                          outputs=[nbformat.v4.new_output("stream", name="stdout", text="stale\n")])
    result = run_fake(tmp_path, [new_code_cell("stubborn()"), stale],
                      {"stubborn()": Script(hang="forever")}, cell_timeout=0.2, probe="export()")
    assert result.status == "timeout"
    assert [c.status for c in result.cells] == ["timeout", "not_run"]
    assert result.cells[0].error.endswith("ignored the interrupt; the kernel was stopped")
    assert result.kernel.interrupts == 1 and result.kernel.shutdowns == 1
    assert result.kernel.executed == ["stubborn()"]                # neither the next cell nor the probe
    assert result.notebook.cells[1].outputs == [] and result.notebook.cells[1].execution_count is None


@pytest.mark.parametrize(("oom", "said"), [
    (False, "KernelDied: the kernel was killed by SIGKILL (perhaps out of memory)"),
    (True, "KernelDied: killed by the out-of-memory killer: the kernel and its processes used more than 4096 MB"),
])
def test_a_dying_kernel_is_crashed_and_the_rest_not_run(tmp_path, oom, said):
    cells = [new_code_cell("x = 1"), new_code_cell("die()"), new_code_cell("print('never')")]
    result = run_fake(tmp_path, cells, {"die()": Script(dies=True)}, cell_timeout=0.2, oom=oom)
    assert result.status == "crashed"
    assert [c.status for c in result.cells] == ["ok", "crashed", "not_run"]
    assert result.cells[1].error == said
    assert result.errors == [f"cell 1 ('die()'): {said.removeprefix('KernelDied: ')}; the cells after it were not run"]
    assert result.kernel.executed == ["x = 1", "die()"]


def test_the_notebook_budget_running_out_leaves_the_rest_not_run(tmp_path):
    cells = [new_code_cell("a()"), new_code_cell("b()"), new_code_cell("c()")]
    scripts = {"a()": Script(seconds=0.15), "b()": Script(hang="until_interrupt")}
    result = run_fake(tmp_path, cells, scripts, cell_timeout=5, notebook_timeout=0.3)
    assert [c.status for c in result.cells] == ["ok", "timeout", "not_run"]
    assert result.cells[1].seconds < 1                            # the notebook's remainder, not 5 s
    assert result.errors[-1] == ("the notebook's time budget of 0 s ran out; "
                                 "the cells after the interrupted one were not run")
    assert result.kernel.executed == ["a()", "b()"]


# --- what is and is not a student's cell -------------------------------------------------------


def test_indices_count_the_submitted_cells_and_skip_the_injected_one(tmp_path):
    injected = new_code_cell("EPOCHS = 1", metadata={"tags": [INJECTED_TAG]})
    cells = [new_markdown_cell("# intro"), new_code_cell("EPOCHS = 30"), injected, new_code_cell("train()")]
    scripts = {"EPOCHS = 1": Script(error=("SyntaxError", "bad", []))}
    result = run_fake(tmp_path, cells, scripts)
    assert [(c.index, c.source_head) for c in result.cells] == [(1, "EPOCHS = 30"), (2, "train()")]
    assert result.status == "graded"                              # the grader's own cell is not the student's
    assert result.errors == ["the grader's parameters cell failed: SyntaxError: bad"]


def test_a_failing_probe_is_said_and_not_the_students_cell(tmp_path):
    scripts = {}
    result = run_fake(tmp_path, [new_code_cell("x = 1")], scripts, probe="export()")
    assert result.probe_error is None and len(result.notebook.cells) == 1   # the probe cell is taken out again
    probe_source = result.kernel.executed[-1]
    assert probe_source.endswith("export()") and str(tmp_path) in probe_source   # run from the scratch dir
    failing = {probe_source: Script(error=("RuntimeError", "probe broke", ["Traceback", "RuntimeError: probe broke"]))}
    result = run_fake(tmp_path, [new_code_cell("x = 1")], failing, probe="export()")
    assert [c.status for c in result.cells] == ["ok"] and result.status == "graded"
    assert result.probe_error.startswith("RuntimeError: probe broke\nTraceback")
