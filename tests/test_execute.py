"""EXECUTE stage: real kernels, sandboxed, on tiny notebooks built here (no training)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import grader
from grader import execute as execute_module
from grader import sandbox as sandbox_module
from grader.config import load_config
from grader.execute import EXECUTED_NOTEBOOK, execute_notebook
from grader.inject import INJECTED_TAG
from grader.paths import default_data_dir
from grader.sandbox import sandbox_capabilities

CONFIG = load_config()
MNIST_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
               "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
HAS_BWRAP = sandbox_module._bwrap()[0] is not None
HAS_UID = sandbox_module._can_switch_uid()
HAS_CGROUP = not any("cgroup" in w for w in sandbox_capabilities())
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap is not usable here: no isolation to test")


def config_with(**limits):
    return CONFIG.model_copy(update={"limits": CONFIG.limits.model_copy(update=limits)})


def parameters_cell(source="EPOCHS = 10\nDATA_DIR = './data'"):
    return new_code_cell(source, metadata={"tags": ["parameters"]})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A stand-in MNIST root (raw files of a few bytes): what matters here is where it appears."""
    root = tmp_path_factory.mktemp("mnist-root")
    root.chmod(0o755)   # read by the sandbox's own uid, as the real cache is
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_FILES:
        (root / "MNIST" / "raw" / name).write_bytes(b"\x00" * 16)
    return root


def run(tmp_path, cells, data_dir, *, config=CONFIG, name="submission.ipynb", **kwargs):
    nb = new_notebook(cells=cells)
    path = tmp_path / name
    nbformat.write(nb, path)
    scratch = tmp_path / f"scratch-{uuid.uuid4().hex[:6]}"
    scratch.mkdir()
    result = execute_notebook(path, scratch, {"EPOCHS": 1}, config=config, data_dir=data_dir, **kwargs)
    return result, scratch


def executed_cells(result):
    return nbformat.read(result.executed_notebook, as_version=4).cells


def stdout_of(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


# --- statuses ----------------------------------------------------------------------------------


def test_graded_with_parameters_injected_after_the_tagged_cell(tmp_path, data_dir):
    cells = [new_markdown_cell("# Title"), parameters_cell(), new_code_cell("print(EPOCHS, DATA_DIR)")]
    result, scratch = run(tmp_path, cells, data_dir)
    assert result.status == "graded", result
    assert [(c.index, c.status) for c in result.cells] == [(1, "ok"), (2, "ok")]
    assert result.cells[1].source_head == "print(EPOCHS, DATA_DIR)"
    executed = executed_cells(result)
    assert INJECTED_TAG in executed[2].metadata.tags          # right after the parameters cell
    assert "EPOCHS = 1" in executed[2].source
    assert stdout_of(executed[3]).split() == ["1", str((scratch / "data").resolve())]
    assert Path(result.executed_notebook) == scratch / EXECUTED_NOTEBOOK


def test_missing_parameters_cell_is_reported_and_the_notebook_still_runs(tmp_path, data_dir):
    result, _ = run(tmp_path, [new_code_cell("print(EPOCHS)")], data_dir)
    assert result.status == "graded"
    assert any("tagged 'parameters'" in e and "submission.ipynb" in e for e in result.errors)
    assert stdout_of(executed_cells(result)[1]).strip() == "1"


def test_a_raising_cell_does_not_stop_later_cells(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("x = 1 / 0"), new_code_cell("print('still here')")]
    result, _ = run(tmp_path, cells, data_dir)
    assert result.status == "error"
    assert [c.status for c in result.cells] == ["ok", "error", "ok"]
    failed = result.cells[1]
    assert failed.error == "ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in failed.traceback and "\x1b[" not in failed.traceback
    assert stdout_of(executed_cells(result)[3]) == "still here\n"


def test_a_cell_past_its_timeout_is_interrupted_and_the_next_one_runs(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("import time\ntime.sleep(60)"), new_code_cell("print('next')")]
    result, _ = run(tmp_path, cells, data_dir, cell_timeout=2)
    assert result.status == "timeout"
    assert [c.status for c in result.cells] == ["ok", "timeout", "ok"]
    assert 2 <= result.cells[1].seconds < 10
    assert "KeyboardInterrupt" in result.cells[1].traceback
    assert any("longer than 2 s" in e for e in result.errors)


def test_the_notebook_budget_running_out_leaves_the_rest_not_run_and_the_probe_still_runs(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("import time\ntime.sleep(1)"),
             new_code_cell("time.sleep(60)"), new_code_cell("print('never')")]
    probe = "import numpy as np\nnp.savez('probe.npz', epochs=EPOCHS)"
    result, _ = run(tmp_path, cells, data_dir, cell_timeout=30, notebook_timeout=3, probe_code=probe)
    assert result.status == "timeout"
    assert [c.status for c in result.cells] == ["ok", "ok", "timeout", "not_run"]
    assert result.seconds < 20
    assert executed_cells(result)[4].outputs == []
    assert result.probe_file and int(np.load(result.probe_file)["epochs"]) == 1


def test_a_kernel_that_ignores_the_interrupt_is_stopped(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(execute_module, "INTERRUPT_GRACE_S", 1.0)
    stubborn = ("import time\nwhile True:\n    try:\n        time.sleep(100)\n"
                "    except KeyboardInterrupt:\n        pass")
    cells = [parameters_cell(), new_code_cell(stubborn), new_code_cell("print('never')")]
    result, _ = run(tmp_path, cells, data_dir, cell_timeout=2, probe_code="pass")
    assert result.status == "timeout"
    assert [c.status for c in result.cells] == ["ok", "timeout", "not_run"]
    assert "ignored the interrupt" in result.cells[1].error
    assert result.probe_file is None and "died" in result.probe_error


@pytest.mark.parametrize("death", [
    "import os\nos._exit(1)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "import ctypes\nctypes.string_at(0)",
])
def test_a_dying_kernel_is_crashed_and_the_rest_not_run(tmp_path, data_dir, death):
    cells = [parameters_cell(), new_code_cell(death), new_code_cell("print('never')")]
    result, _ = run(tmp_path, cells, data_dir, probe_code="pass")
    assert result.status == "crashed"
    assert [c.status for c in result.cells] == ["ok", "crashed", "not_run"]
    assert result.cells[1].error.startswith("KernelDied: ")
    assert any("cell 1" in e and "not run" in e for e in result.errors)
    assert result.probe_file is None and "died" in result.probe_error


def test_garbage_is_invalid_and_named(tmp_path, data_dir):
    path = tmp_path / "garbage.ipynb"
    path.write_bytes(b"\x89PNG\x00\xff not a notebook")
    result = execute_notebook(path, tmp_path / "s", {}, config=CONFIG, data_dir=data_dir)
    assert result.status == "invalid" and result.cells == []
    assert str(path) in result.errors[0] and "not a Jupyter notebook" in result.errors[0]


def test_json_that_is_not_a_notebook_is_invalid(tmp_path, data_dir):
    path = tmp_path / "data.ipynb"
    path.write_text(json.dumps({"answers": [1, 2, 3]}))
    result = execute_notebook(path, tmp_path / "s", {}, config=CONFIG, data_dir=data_dir)
    assert result.status == "invalid"
    assert str(path) in result.errors[0]
    missing = execute_notebook(tmp_path / "absent.ipynb", tmp_path / "t", {}, config=CONFIG, data_dir=data_dir)
    assert missing.status == "invalid" and "absent.ipynb" in missing.errors[0]


def test_the_submission_file_is_never_modified(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("print('hello')")]
    cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output\n")]
    path = tmp_path / "submission.ipynb"
    nbformat.write(new_notebook(cells=cells), path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = execute_notebook(path, scratch, {"EPOCHS": 1}, config=CONFIG, data_dir=data_dir)
    assert result.status == "graded"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert stdout_of(executed_cells(result)[2]) == "hello\n"


# --- probe -------------------------------------------------------------------------------------


def test_the_probe_runs_after_an_erroring_cell_and_is_not_saved(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("x = 41 + 1"), new_code_cell("raise ValueError('broken')")]
    probe = "import numpy as np\nnp.savez('probe.npz', x=x)"
    result, scratch = run(tmp_path, cells, data_dir, probe_code=probe)
    assert result.status == "error" and result.probe_error is None
    assert result.probe_file == str(scratch / "probe.npz")
    assert int(np.load(result.probe_file)["x"]) == 42
    assert all("probe.npz" not in c.source for c in executed_cells(result))


def test_a_failing_probe_is_reported_and_a_planted_probe_file_is_not_taken(tmp_path, data_dir):
    plant = "import numpy as np\nnp.savez('probe.npz', x=999)"
    result, scratch = run(tmp_path, [parameters_cell(), new_code_cell(plant)], data_dir,
                          probe_code="raise RuntimeError('probe broke')")
    assert result.status == "graded"
    assert result.probe_file is None
    assert result.probe_error.startswith("RuntimeError: probe broke")
    assert not (scratch / "probe.npz").exists()


# --- output cap --------------------------------------------------------------------------------


def test_fifty_megabytes_of_output_are_truncated(tmp_path, data_dir):
    flood = "import sys\nfor _ in range(50):\n    sys.stdout.write('y' * 1_000_000)\n    sys.stdout.flush()"
    cells = [parameters_cell(), new_code_cell(flood), new_code_cell("print('after')")]
    config = config_with(output_bytes=100_000)
    result, scratch = run(tmp_path, cells, data_dir, config=config)
    assert result.status == "graded"
    text = stdout_of(executed_cells(result)[2])
    assert 100_000 <= len(text) < 101_000 and "output truncated by the grader" in text
    assert (scratch / EXECUTED_NOTEBOOK).stat().st_size < 200_000
    assert stdout_of(executed_cells(result)[3]) == "after\n"


# --- sandbox -----------------------------------------------------------------------------------

ESCAPES = """
import json, os, socket, sys
R = dict()
def attempt(name, action):
    try:
        action()
        R[name] = "ok"
    except BaseException as exc:
        R[name] = type(exc).__name__
def tcp(host, port):
    socket.create_connection((host, port), timeout=2).close()
def abstract_unix(name):
    s = socket.socket(socket.AF_UNIX)
    s.connect("\\0" + name)
def write(path):
    with open(path, "w") as f:
        f.write("x")
attempt("tcp_host_loopback", lambda: tcp("127.0.0.1", {port}))
attempt("tcp_internet", lambda: tcp("1.1.1.1", 53))
attempt("abstract_unix", lambda: abstract_unix({abstract!r}))
R["interfaces"] = sorted(name for _, name in socket.if_nameindex())
attempt("read_secret", lambda: open({secret!r}).read())
attempt("read_repo", lambda: open({repo_file!r}).read())
attempt("read_submission", lambda: open({submission!r}).read())
attempt("read_host_tmp", lambda: open({host_tmp!r}).read())
attempt("read_data", lambda: open(os.path.join(DATA_DIR, "MNIST", "raw", "t10k-labels-idx1-ubyte"), "rb").read())
R["data_files"] = sorted(os.listdir(os.path.join(DATA_DIR, "MNIST", "raw")))
R["work_main"] = sorted(os.listdir({repo_root!r}))
attempt("write_outside", lambda: write({outside!r}))
attempt("write_usr", lambda: write("/usr/grader-escape"))
attempt("write_python", lambda: write(os.path.join(sys.prefix, "grader-escape")))
attempt("write_data", lambda: write(os.path.join(DATA_DIR, "MNIST", "raw", "grader-escape")))
attempt("write_scratch", lambda: write("inside.txt"))
attempt("write_tmp", lambda: write({tmp_marker!r}))
R["uid"] = os.getuid()
R["env"] = dict(os.environ)
R["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
R["cwd"] = os.getcwd()
json.dump(R, open("escapes.json", "w"))
"""


@pytest.fixture(scope="module")
def escapes(tmp_path_factory, data_dir):
    """One sandboxed run that tries every way out; each test below checks one of them."""
    tmp = tmp_path_factory.mktemp("escapes")
    listener = socket.create_server(("127.0.0.1", 0))          # reachable from the host's loopback
    abstract = f"grader-test-{uuid.uuid4().hex}"
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind("\0" + abstract)
    unix_listener.listen()
    secret = tmp / "secret.txt"
    secret.write_text("the answer key")
    outside = tmp / "outside" / "planted.txt"
    outside.parent.mkdir()
    tmp_marker = f"/tmp/grader-escape-{uuid.uuid4().hex}"
    host_tmp = Path(tempfile.mkstemp(prefix="grader-kernel-other-")[1])   # like another kernel's files
    host_tmp.chmod(0o644)
    submission = tmp / "submission.ipynb"
    source = ESCAPES.format(port=listener.getsockname()[1], abstract=abstract, secret=str(secret),
                            repo_file=grader.__file__, submission=str(submission), outside=str(outside),
                            repo_root=str(Path(grader.__file__).parent.parent), tmp_marker=tmp_marker,
                            host_tmp=str(host_tmp))
    nbformat.write(new_notebook(cells=[parameters_cell(), new_code_cell(source)]), submission)
    scratch = tmp / "scratch"
    scratch.mkdir()
    os.environ["GRADER_TEST_SECRET"] = "hunter2"
    try:
        result = execute_notebook(submission, scratch, {}, config=CONFIG, data_dir=data_dir)
    finally:
        del os.environ["GRADER_TEST_SECRET"]
        listener.close()
        unix_listener.close()
        host_tmp.unlink()
    assert result.status == "graded", result
    report = json.loads((scratch / "escapes.json").read_text())
    return report | {"_outside": outside, "_tmp_marker": tmp_marker, "_scratch": scratch, "_result": result}


@needs_bwrap
def test_network_is_cut_off(escapes):
    assert escapes["tcp_host_loopback"] != "ok"   # the host listens there: only a new netns refuses
    assert escapes["abstract_unix"] != "ok"       # abstract sockets are per network namespace
    assert escapes["tcp_internet"] != "ok"
    assert escapes["interfaces"] == ["lo"]


@needs_bwrap
def test_files_outside_the_scratch_dir_are_invisible(escapes):
    assert escapes["read_secret"] == "FileNotFoundError"
    assert escapes["read_repo"] == "FileNotFoundError"          # /work/main/grader/__init__.py
    assert escapes["read_submission"] == "FileNotFoundError"    # the original, not the copy
    assert escapes["read_host_tmp"] == "FileNotFoundError"      # e.g. other kernels' runtime dirs
    assert escapes["work_main"] == [".venv"]                    # of the repository, only the venv


@needs_bwrap
def test_nothing_outside_the_scratch_dir_is_writable(escapes):
    assert escapes["write_outside"] != "ok" and not escapes["_outside"].exists()
    for target in ("write_usr", "write_python", "write_data"):
        assert escapes[target] in {"OSError", "PermissionError"}, target   # EROFS / EACCES
    assert escapes["write_scratch"] == "ok" and (escapes["_scratch"] / "inside.txt").exists()
    assert escapes["write_tmp"] == "ok" and not Path(escapes["_tmp_marker"]).exists()   # private /tmp


def test_mnist_is_visible_read_only_at_data_dir(escapes):
    assert escapes["read_data"] == "ok"
    assert escapes["data_files"] == MNIST_FILES


@needs_bwrap
def test_the_kernel_sees_only_its_own_processes(escapes):
    assert len(escapes["pids"]) < 10 and max(escapes["pids"]) < 100


@pytest.mark.skipif(not HAS_UID, reason="not root: the kernel cannot be given a uid of its own")
def test_the_kernel_runs_as_an_unprivileged_uid(escapes):
    assert escapes["uid"] >= sandbox_module.UID_BASE


def test_the_kernel_environment_is_minimal_and_deterministic(escapes):
    env = escapes["env"]
    assert "GRADER_TEST_SECRET" not in env
    assert env["PYTHONHASHSEED"] == "0" and env["MPLBACKEND"] == "Agg"
    assert env["HOME"] == escapes["cwd"] == str(escapes["_scratch"].resolve())


def test_sandbox_warnings_only_where_a_protection_is_missing(escapes):
    warnings = escapes["_result"].sandbox_warnings
    assert (warnings == []) == (HAS_BWRAP and HAS_UID and HAS_CGROUP), warnings


@needs_bwrap
def test_the_fallback_without_bubblewrap_runs_and_says_so(data_dir, monkeypatch):
    monkeypatch.setattr(sandbox_module, "_bwrap", lambda: (None, "bubblewrap (bwrap) is not installed"))
    # Without bwrap the kernel's uid must walk the real path to its scratch dir (pytest's is 0700).
    base = Path(tempfile.mkdtemp(prefix="grader-test-fallback-"))
    try:
        base.chmod(0o711)
        read = "print(open(DATA_DIR + '/MNIST/raw/t10k-labels-idx1-ubyte', 'rb').read(2))"
        result, _ = run(base, [parameters_cell(), new_code_cell(read)], data_dir)
    finally:
        shutil.rmtree(base)
    assert result.status == "graded", result.cells
    assert any("bubblewrap" in w and "without network or file-system isolation" in w for w in result.sandbox_warnings)


@pytest.mark.skipif(not HAS_UID, reason="not root: no per-process limits to test")
def test_an_allocation_over_the_memory_cap_fails(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("block = bytearray(1 << 30)"), new_code_cell("print('alive')")]
    result, _ = run(tmp_path, cells, data_dir, config=config_with(memory_mb=400))
    assert [c.status for c in result.cells] == ["ok", "error", "ok"]
    assert result.cells[1].error.startswith("MemoryError")


@pytest.mark.skipif(not HAS_CGROUP, reason="no memory cgroup on this host: only per-process caps")
def test_processes_together_over_the_memory_cap_are_killed(tmp_path, data_dir):
    hog = ("import subprocess, sys\n"
           "hog = 'b = bytearray(250 << 20)\\nimport time\\ntime.sleep(3)'\n"
           "procs = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(2)]\n"
           "print([p.wait() for p in procs])")
    result, _ = run(tmp_path, [parameters_cell(), new_code_cell(hog)], data_dir, config=config_with(memory_mb=400))
    if result.status == "crashed":   # the OOM killer may pick the kernel itself
        assert "out-of-memory" in result.cells[1].error
    else:
        assert "-9" in stdout_of(executed_cells(result)[2])


@pytest.mark.skipif(not (HAS_UID or HAS_CGROUP), reason="no process limit on this host")
def test_the_process_cap_stops_a_fork_loop_and_nothing_survives_the_run(tmp_path, data_dir):
    marker = f"{uuid.uuid4().int % 10**6}.25"
    loop = ("import subprocess\nn = 0\ntry:\n    for n in range(500):\n"
            "        subprocess.Popen(['sleep', '600'])\nexcept OSError as exc:\n"
            "    print('stopped at', n, type(exc).__name__)")
    daemon = f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)"
    cells = [parameters_cell(), new_code_cell(daemon), new_code_cell(loop)]
    result, _ = run(tmp_path, cells, data_dir, config=config_with(processes=40))
    words = stdout_of(executed_cells(result)[3]).split()
    assert words[:2] == ["stopped", "at"] and int(words[2]) < 40, words
    alive = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode():
                alive.append(proc.name)
        except OSError:
            pass
    assert alive == []   # the setsid'd sleeper died with the sandbox


@pytest.mark.slow
@pytest.mark.skipif(not (default_data_dir() / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(),
                    reason="the real MNIST files are not provisioned")
def test_torchvision_finds_mnist_at_data_dir_and_downloads_nothing(tmp_path):
    load = ("import torchvision\nds = torchvision.datasets.MNIST(DATA_DIR, train=False, download=True)\n"
            "print(len(ds))")
    result, _ = run(tmp_path, [parameters_cell(), new_code_cell(load)], default_data_dir())
    assert result.status == "graded", result.cells
    assert stdout_of(executed_cells(result)[2]).strip().endswith("10000")
