"""EXECUTE stage: real kernels, sandboxed, on tiny notebooks built here (no training).

Under CI=true the isolation tests fail, not skip, where the host lacks what they test (bubblewrap,
the uid switch, cgroups, tmpfs mounts): CI exists to prove the sandbox (see `requires`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
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
from grader.execute import EXECUTED_NOTEBOOK, PROBE_FILE, execute_notebook
from grader.inject import INJECTED_TAG
from grader.paths import default_data_dir
from grader.sandbox import sandbox_capabilities

CONFIG = load_config()
MNIST_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
               "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
CAPABILITIES = sandbox_capabilities()
HAS_BWRAP = sandbox_module._bwrap()[0] is not None
HAS_UID = sandbox_module._can_switch_uid()
HAS_CGROUP = not any("memory and pids cgroups" in w for w in CAPABILITIES)
HAS_CPU_CGROUP = HAS_CGROUP and not any("cpu cgroup" in w for w in CAPABILITIES)
HAS_MOUNT = sandbox_module._can_mount()
HAS_USERNS_FILTER = HAS_BWRAP and sandbox_module._userns_filter_file() is not None
ON_CI = os.environ.get("CI") == "true"


def requires(available: bool, reason: str):
    """skipif(not available), except under CI=true, where a missing protection fails the test."""
    if available:
        return lambda test: test
    if not ON_CI:
        return pytest.mark.skipif(True, reason=reason)

    def fail_instead(test):
        @functools.wraps(test)
        def failing(*args, **kwargs):
            pytest.fail(f"CI must prove the sandbox, but {reason}")
        return failing
    return fail_instead


needs_bwrap = requires(HAS_BWRAP, "bubblewrap is not usable here: no isolation to test")
needs_uid = requires(HAS_UID, "not root: the kernel cannot be given a uid of its own")
needs_cgroup = requires(HAS_CGROUP, "no memory and pids cgroups on this host: only per-process caps")
needs_mount = requires(HAS_MOUNT, "the grader cannot mount a tmpfs here (not root?): no disk cap in total")
_SCRATCH_DIRS: list[Path] = []


def config_with(**limits):
    return CONFIG.model_copy(update={"limits": CONFIG.limits.model_copy(update=limits)})


def new_scratch(config=CONFIG) -> Path:
    """A scratch dir as grade makes one (a capped tmpfs where possible), removed after the test."""
    path = sandbox_module.make_scratch_dir("test", config.limits)
    _SCRATCH_DIRS.append(path)
    return path


@pytest.fixture(autouse=True)
def _remove_scratch_dirs():
    yield
    while _SCRATCH_DIRS:
        sandbox_module.remove_tree(_SCRATCH_DIRS.pop())


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
    scratch = new_scratch(config)
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
    probe = f"import numpy as np\nnp.savez({PROBE_FILE!r}, epochs=EPOCHS)"
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
    assert path.name in result.errors[0] and "not a Jupyter notebook" in result.errors[0]


def test_json_that_is_not_a_notebook_is_invalid(tmp_path, data_dir):
    path = tmp_path / "data.ipynb"
    path.write_text(json.dumps({"answers": [1, 2, 3]}))
    result = execute_notebook(path, tmp_path / "s", {}, config=CONFIG, data_dir=data_dir)
    assert result.status == "invalid"
    assert path.name in result.errors[0]
    missing = execute_notebook(tmp_path / "absent.ipynb", tmp_path / "t", {}, config=CONFIG, data_dir=data_dir)
    assert missing.status == "invalid" and "absent.ipynb" in missing.errors[0]


def test_the_submission_file_is_never_modified(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("print('hello')")]
    cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output\n")]
    path = tmp_path / "submission.ipynb"
    nbformat.write(new_notebook(cells=cells), path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = execute_notebook(path, new_scratch(), {"EPOCHS": 1}, config=CONFIG, data_dir=data_dir)
    assert result.status == "graded"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert stdout_of(executed_cells(result)[2]) == "hello\n"


# --- probe -------------------------------------------------------------------------------------


def test_the_probe_runs_after_an_erroring_cell_and_is_not_saved(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("x = 41 + 1"), new_code_cell("raise ValueError('broken')")]
    probe = f"import numpy as np\nnp.savez({PROBE_FILE!r}, x=x)"
    result, scratch = run(tmp_path, cells, data_dir, probe_code=probe)
    assert result.status == "error" and result.probe_error is None
    assert result.probe_file == str(scratch / PROBE_FILE)
    assert int(np.load(result.probe_file)["x"]) == 42
    assert all(PROBE_FILE not in c.source for c in executed_cells(result))


def test_a_failing_probe_is_reported_and_a_planted_probe_file_is_not_taken(tmp_path, data_dir):
    plant = f"import numpy as np\nnp.savez({PROBE_FILE!r}, x=999)"
    result, scratch = run(tmp_path, [parameters_cell(), new_code_cell(plant)], data_dir,
                          probe_code="raise RuntimeError('probe broke')")
    assert result.status == "graded"
    assert result.probe_file is None
    assert result.probe_error.startswith("RuntimeError: probe broke")
    assert not (scratch / PROBE_FILE).exists()


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


def test_a_message_larger_than_the_cap_never_reaches_the_grader(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(execute_module, "IOPUB_TIMEOUT_S", 3)   # the lost messages are waited for
    # one 40 MB display message: ZeroMQ drops it undecoded, with the connection (the outputs sent
    # while it comes back are lost: the price of never holding such a message)
    huge = "from IPython.display import display\ndisplay({'text/plain': 'z' * 40_000_000}, raw=True)"
    cells = [parameters_cell(), new_code_cell(huge), new_code_cell("print('after')")]
    result, scratch = run(tmp_path, cells, data_dir, config=config_with(message_mb=8, output_bytes=100_000_000))
    assert result.status == "graded", result.errors
    assert [c.status for c in result.cells] == ["ok", "ok", "ok"]   # the notebook went on
    outputs = executed_cells(result)[2].outputs
    assert not any("zzzz" in json.dumps(o) for o in outputs)
    assert (scratch / EXECUTED_NOTEBOOK).stat().st_size < 1_000_000


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
    scratch = sandbox_module.make_scratch_dir("escapes", CONFIG.limits)
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
    yield report | {"_outside": outside, "_tmp_marker": tmp_marker, "_scratch": scratch, "_result": result}
    sandbox_module.remove_tree(scratch)


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


@needs_uid
def test_the_kernel_runs_as_an_unprivileged_uid(escapes):
    assert escapes["uid"] >= sandbox_module.UID_BASE


def test_graders_with_different_tmpdirs_never_share_a_sandbox_uid(tmp_path, monkeypatch):
    """A uid is the machine's, so its lock must be too: with the locks under TMPDIR, two graders
    (another TMPDIR each) both took UID_BASE, and the first to finish killed the other's kernel."""
    claimed = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / name))
        claimed.append(sandbox_module._claim_uid())
    try:
        assert claimed[0][0] != claimed[1][0]
        assert not str(sandbox_module.uid_lock_dir()).startswith(str(tmp_path))
    finally:
        for _, lock in claimed:
            lock.close()


def test_the_kernel_environment_is_minimal_and_deterministic(escapes):
    env = escapes["env"]
    assert "GRADER_TEST_SECRET" not in env
    assert env["PYTHONHASHSEED"] == "0" and env["MPLBACKEND"] == "Agg"
    assert env["HOME"] == escapes["cwd"] == str(escapes["_scratch"].resolve())


def test_sandbox_warnings_only_where_a_protection_is_missing(escapes):
    warnings = escapes["_result"].sandbox_warnings
    complete = HAS_BWRAP and HAS_UID and HAS_CPU_CGROUP and HAS_MOUNT and HAS_USERNS_FILTER
    assert (warnings == []) == complete, warnings


@needs_bwrap
def test_the_fallback_without_bubblewrap_runs_and_says_so(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(sandbox_module, "_bwrap", lambda: (None, "bubblewrap (bwrap) is not installed"))
    # Without bwrap the kernel's uid walks the real path to its scratch dir: make_scratch_dir's,
    # in the temp dir, lets it through (pytest's tmp_path would not: 0700).
    read = "print(open(DATA_DIR + '/MNIST/raw/t10k-labels-idx1-ubyte', 'rb').read(2))"
    result, _ = run(tmp_path, [parameters_cell(), new_code_cell(read)], data_dir)
    assert result.status == "graded", result.cells
    assert any("bubblewrap" in w and "without network or file-system isolation" in w for w in result.sandbox_warnings)


@requires(HAS_UID, "not root: no per-process limits to test")
def test_an_allocation_over_the_memory_cap_fails(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell("block = bytearray(1 << 30)"), new_code_cell("print('alive')")]
    result, _ = run(tmp_path, cells, data_dir, config=config_with(memory_mb=400))
    assert [c.status for c in result.cells] == ["ok", "error", "ok"]
    assert result.cells[1].error.startswith("MemoryError")


@needs_cgroup
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


@requires(HAS_UID or HAS_CGROUP, "no process limit on this host")
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


# --- disk --------------------------------------------------------------------------------------

DISK_FILL = """
import errno, os
R = dict()
def attempt(name, action):
    try:
        action()
        R[name] = "ok"
    except OSError as exc:
        R[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def write(path, mb):
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"x" * (1 << 20))
def fallocate(path, mb):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, mb << 20)
    finally:
        os.close(fd)
def fill(directory, how):
    try:
        for n in range(3):   # 3 x 30 MB files: each under the file cap, together over the disk cap
            how(os.path.join(directory, f"fill-{n}"), 30)
    finally:
        for n in range(3):
            if os.path.exists(os.path.join(directory, f"fill-{n}")):
                os.remove(os.path.join(directory, f"fill-{n}"))
attempt("one_big_file", lambda: write("big.bin", 40))
attempt("scratch", lambda: fill(".", write))
attempt("scratch_fallocate", lambda: fill(".", fallocate))
attempt("tmp", lambda: fill("/tmp", write))
attempt("dev_shm", lambda: fill("/dev/shm", fallocate))
print(R)
"""


BRIM = """
import errno, os
def until_full(make):
    try:
        for n in range(10**6):
            make(n)
    except OSError as exc:
        print(errno.errorcode[exc.errno])
until_full(lambda n: open(f"bytes-{n}", "wb").write(b"x" * (10 << 20)))
until_full(lambda n: open(f"inode-{n}", "wb").close())
"""


def _cell_dict(cell):
    return eval(stdout_of(cell))  # the cell printed a dict of short strings


@needs_mount
@needs_bwrap
def test_writing_past_the_disk_cap_fails_in_that_cell_and_the_notebook_goes_on(tmp_path, data_dir):
    config = config_with(disk_mb=64, file_mb=32)
    cells = [parameters_cell(), new_code_cell(DISK_FILL), new_code_cell("print('alive')"), new_code_cell(BRIM)]
    result, scratch = run(tmp_path, cells, data_dir, config=config)
    assert [c.status for c in result.cells] == ["ok", "ok", "ok", "ok"], result.cells
    outcome = _cell_dict(executed_cells(result)[2])
    assert outcome == {"one_big_file": "EFBIG", "scratch": "ENOSPC", "scratch_fallocate": "ENOSPC",
                       "tmp": "ENOSPC", "dev_shm": "ENOSPC"}
    assert stdout_of(executed_cells(result)[3]) == "alive\n"
    assert stdout_of(executed_cells(result)[4]).split() == ["ENOSPC", "ENOSPC"]
    # A scratch dir left full (of bytes, of inodes) still takes the grader's executed notebook.
    assert Path(result.executed_notebook).stat().st_size > 0
    # The host's disk got nothing: the scratch dir is a tmpfs, and it holds at most its cap (and
    # the grader's executed notebook).
    assert sandbox_module._our_tmpfs(scratch)
    held = sum(f.stat().st_blocks * 512 for f in scratch.rglob("*") if f.is_file())
    assert held <= (64 << 20) + Path(result.executed_notebook).stat().st_blocks * 512


def test_without_a_tmpfs_files_are_capped_one_by_one_and_it_says_so(tmp_path, data_dir, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(path))
    monkeypatch.setattr(sandbox_module, "_mount_tmpfs", refuse)
    write = "try:\n    open('big.bin', 'wb').write(b'x' * (40 << 20))\nexcept OSError as exc:\n    print(exc.errno)"
    result, scratch = run(tmp_path, [parameters_cell(), new_code_cell(write)], data_dir,
                          config=config_with(file_mb=32))
    assert stdout_of(executed_cells(result)[2]).strip() == "27"   # EFBIG
    assert (scratch / "big.bin").stat().st_size <= 32 << 20
    assert any("no size-capped tmpfs" in w for w in result.sandbox_warnings), result.sandbox_warnings


# --- cleanup -----------------------------------------------------------------------------------


def _deep_tree(root: Path, depth: int, name: str = "ddd") -> None:
    """depth nested directories, built through directory fds: the whole path passes PATH_MAX."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("bottom.txt", os.O_CREAT | os.O_WRONLY, dir_fd=fd), "w") as f:
        f.write("deep")
    os.close(fd)


def test_remove_tree_removes_any_tree_and_follows_no_link(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    # Not under tmp_path: were it left behind, pytest's own cleanup would die on it. A dir named
    # for this process is removed by a later run's reap_stale_dirs.
    root = sandbox_module._private_dir("deep-test") / "tree"
    _deep_tree(root, 1500)                        # rmtree: RecursionError, even with ignore_errors
    (root / "link").symlink_to(outside)
    (root / "dir-link").symlink_to(tmp_path)
    locked = root / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0)
    sandbox_module.remove_tree(root)
    assert not root.exists() and outside.read_text() == "keep me"
    sandbox_module.remove_tree(root)              # an absent path is no error
    sandbox_module.remove_tree(root.parent)


def test_a_notebook_deep_tree_goes_with_its_scratch_dir(tmp_path, data_dir):
    build = ("import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"
             "open('bottom.txt', 'w').write('x')")
    result, scratch = run(tmp_path, [parameters_cell(), new_code_cell(build)], data_dir)
    assert result.cells[1].status == "ok", result.cells
    sandbox_module.remove_tree(scratch)
    assert not scratch.exists()
    assert not any(point == str(scratch) for point, _, _ in sandbox_module._mounts())


DEAD_GRADER = """
import os, sys
from grader import sandbox
from grader.config import load_config
limits = load_config().limits
print(sandbox.make_scratch_dir("dead", limits))
print(sandbox._private_dir("kernel"))
sys.stdout.flush()
os.kill(os.getpid(), 9)
"""


def test_the_dirs_and_mounts_of_a_killed_grader_are_reaped_at_the_next_start():
    done = subprocess.run([sys.executable, "-c", DEAD_GRADER], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = [Path(line) for line in done.stdout.split()]
    assert len(left) == 2 and all(p.is_dir() for p in left)
    mounted = {point for point, _, _ in sandbox_module._mounts()}
    assert (str(left[0]) in mounted) == HAS_MOUNT
    alive = new_scratch()                         # this (live) grader's own must stay
    gone = sandbox_module.reap_stale_dirs()
    assert not any(p.exists() for p in left), gone
    assert not {str(p) for p in left} & {point for point, _, _ in sandbox_module._mounts()}
    assert alive.is_dir()


# --- processes and CPU -------------------------------------------------------------------------


def _zombie_children() -> list[str]:
    zombies = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text() if proc.name.isdigit() else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(stat[:60])
    return zombies


def test_no_zombie_launcher_is_left_after_a_notebook(tmp_path, data_dir):
    result, _ = run(tmp_path, [parameters_cell(), new_code_cell("print(1)")], data_dir)
    assert result.status == "graded"
    assert _zombie_children() == []


CPU_BURN = """
import os, subprocess, sys, time
spin = "import time\\nend = time.time() + 2\\nwhile time.time() < end:\\n    pass"
start, before = time.time(), os.times()
procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(4)]
for p in procs:
    p.wait()
after = os.times()
used = after.children_user + after.children_system - before.children_user - before.children_system
print(round(used / (time.time() - start), 3))
"""


@requires(HAS_CPU_CGROUP, "no cpu cgroup on this host: the kernel may use every CPU")
def test_busy_processes_get_at_most_the_kernels_cpu_share(tmp_path, data_dir, monkeypatch):
    quotas = []   # on a host busy with other work the quota does not bind: it must still be set
    remove = sandbox_module._CgroupSet.remove

    def read_quota_then_remove(self):
        for directory in self.dirs:
            for name in ("cpu.cfs_quota_us", "cpu.max"):
                if (directory / name).exists():
                    quotas.append((directory / name).read_text().split()[0])
        remove(self)
    monkeypatch.setattr(sandbox_module._CgroupSet, "remove", read_quota_then_remove)
    result, _ = run(tmp_path, [parameters_cell(), new_code_cell(CPU_BURN)], data_dir, config=config_with(threads=1))
    assert result.cells[1].status == "ok", result.cells
    cpus_per_second = float(stdout_of(executed_cells(result)[2]))
    assert cpus_per_second <= 1.2   # 4 busy processes, 1 CPU of quota (about 2 on 2 idle cores unlimited)
    assert quotas == [str(sandbox_module.CPU_PERIOD_US)]


USERNS = """
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
R = dict()
R["unshare_call"] = libc.unshare(0x10000000) == 0 or os.strerror(ctypes.get_errno())
done = subprocess.run(["unshare", "-Ur", "true"], capture_output=True)
R["unshare_command"] = done.returncode
R["fork_still_works"] = subprocess.run(["true"]).returncode
print(R)
"""


@needs_bwrap
@requires(HAS_USERNS_FILTER, "no user-namespace filter for this machine or bwrap")
def test_the_kernel_cannot_create_user_namespaces(tmp_path, data_dir):
    result, _ = run(tmp_path, [parameters_cell(), new_code_cell(USERNS)], data_dir)
    outcome = _cell_dict(executed_cells(result)[2])
    assert outcome["unshare_call"] == os.strerror(1)   # EPERM
    assert outcome["unshare_command"] != 0
    assert outcome["fork_still_works"] == 0


# --- what the kernel sends that bypassed the output cap ----------------------------------------

DISPLAY_FLOOD = """
from IPython.display import display, update_display
for _ in range(50):
    display({"text/plain": "tiny"}, raw=True, display_id="flood")
big = "u" * 200_000
for _ in range(20):
    update_display({"text/plain": big}, raw=True, display_id="flood")
display({"text/plain": "before"}, raw=True, display_id="small")
update_display({"text/plain": "after"}, raw=True, display_id="small")
"""


def test_display_updates_count_against_the_output_cap(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell(DISPLAY_FLOOD), new_code_cell("print('next')")]
    result, scratch = run(tmp_path, cells, data_dir, config=config_with(output_bytes=100_000))
    assert [c.status for c in result.cells] == ["ok", "ok", "ok"], result.cells
    assert (scratch / EXECUTED_NOTEBOOK).stat().st_size < 300_000   # uncapped: 50 x 200 kB
    texts = [o.data["text/plain"] for o in executed_cells(result)[2].outputs]
    assert "output truncated by the grader" in texts[0] and texts[1:50] == ["tiny"] * 49
    assert texts[50] == "after"                                    # an update that fits is applied
    assert stdout_of(executed_cells(result)[3]) == "next\n"
    assert [e for e in result.errors if "was truncated" in e] == [
        f"cell 1 ({DISPLAY_FLOOD.strip().splitlines()[0][:80]!r}): its output passed the grader's output cap "
        "of 100000 bytes and was truncated"]


WIDGETS = """
from comm import create_comm
state = {"_model_name": "DOMWidgetModel", "_model_module": "@jupyter-widgets/base",
         "_model_module_version": "2.0.0"}
create_comm(target_name="jupyter.widget", data={"state": {**state, "value": "small"}, "buffer_paths": []})
big = "w" * 1_000_000
for _ in range(30):
    create_comm(target_name="jupyter.widget", data={"state": {**state, "value": big}, "buffer_paths": []})
create_comm(target_name="jupyter.widget", data={"state": {"_model_name": "NoModule"}})   # no _model_module
create_comm(target_name="jupyter.widget", data={})                                        # no state at all
kernel = get_ipython().kernel
kernel.session.send(kernel.iopub_socket, "display_data", {"no": "data"}, parent=kernel.get_parent())
"""


def test_widget_state_is_capped_and_malformed_comms_are_ignored(tmp_path, data_dir):
    cells = [parameters_cell(), new_code_cell(WIDGETS), new_code_cell("print('next')")]
    result, scratch = run(tmp_path, cells, data_dir, config=config_with(output_bytes=100_000))
    assert [c.status for c in result.cells] == ["ok", "ok", "ok"], (result.cells, result.errors)
    assert stdout_of(executed_cells(result)[3]) == "next\n"
    assert (scratch / EXECUTED_NOTEBOOK).stat().st_size < 300_000   # uncapped: 30 MB of state
    widgets = nbformat.read(result.executed_notebook, as_version=4).metadata.widgets
    states = widgets["application/vnd.jupyter.widget-state+json"]["state"].values()
    assert [s["state"]["value"] for s in states if s["model_name"] == "DOMWidgetModel"] == ["small"]
    assert any("malformed message" in e for e in result.errors)
    assert any("widget state passed the grader's output cap" in e for e in result.errors)


# --- CI ----------------------------------------------------------------------------------------


def test_requires_skips_normally_and_fails_under_ci(monkeypatch):
    def probe():
        return "ran"
    assert requires(True, "x")(probe) is probe
    marked = pytest.mark.skipif(True, reason="x")
    if not ON_CI:
        assert requires(False, "x").mark == marked.mark
    monkeypatch.setattr(sys.modules[__name__], "ON_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI must prove the sandbox, but bwrap is missing"):
        requires(False, "bwrap is missing")(probe)()
