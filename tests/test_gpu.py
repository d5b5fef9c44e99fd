"""Kernels and GPUs: the hints a notebook that asks for CUDA gets, the grader's hidden setup cell,
and (marked `gpu`) the real CUDA path: a sandboxed kernel on a GPU slot sees exactly its device,
with its memory fraction set.

The `gpu` tests skip where torch sees no CUDA device, and fail instead under GPU_REQUIRED=1
(bench/gpu_check.sh sets it on a GPU host, where a skip would hide a broken GPU path).
"""

from __future__ import annotations

import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader import execute as execute_module
from grader import sandbox as sandbox_module
from grader.config import load_config
from grader.devices import Slot, discover_gpus, plan_slots
from grader.execute import execute_notebook
from grader.hints import DEVICE_LINE, hint_for

CONFIG = load_config()
GPU_REQUIRED = os.environ.get("GPU_REQUIRED") == "1"


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def needs_gpu(test):
    """Run only where the grader's torch sees a CUDA device; without one, skip (fail under GPU_REQUIRED=1)."""
    test = pytest.mark.gpu(test)
    if _cuda_devices() and discover_gpus().devices:
        return test
    if GPU_REQUIRED:
        def failing(*args, **kwargs):
            pytest.fail(f"GPU_REQUIRED=1 but no CUDA device is usable here ({discover_gpus().notes or 'none found'})")
        failing.__name__ = test.__name__
        return pytest.mark.gpu(failing)
    return pytest.mark.skip(reason="no CUDA device here")(test)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A stand-in MNIST root: these notebooks never read it."""
    root = tmp_path_factory.mktemp("mnist-root")
    root.chmod(0o755)
    (root / "MNIST" / "raw").mkdir(parents=True)
    return root


def run(tmp_path, cells, data_dir, **kwargs):
    path = tmp_path / "submission.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("EPOCHS = 10", metadata={"tags": ["parameters"]}), *cells]), path)
    scratch = sandbox_module.make_scratch_dir("gpu-test", CONFIG.limits)
    try:
        result = execute_notebook(path, scratch, {"EPOCHS": 1}, config=CONFIG, data_dir=data_dir, **kwargs)
        executed = nbformat.read(result.executed_notebook, as_version=4) if result.executed_notebook else None
        report = json.loads((scratch / "report.json").read_text()) if (scratch / "report.json").exists() else None
    finally:
        sandbox_module.remove_tree(scratch)
    return result, executed, report


# --- hints (no kernel) ---------------------------------------------------------------------------

CUDA_ERRORS = [
    # the CUDA wheel on a host without a driver (this grader's own torch, a CPU-only host)
    "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed "
    "a driver from http://www.nvidia.com/Download/index.aspx",
    "AssertionError: Torch not compiled with CUDA enabled",              # a CPU-only wheel
    "RuntimeError: No CUDA GPUs are available",                          # a CPU slot on a GPU host
    "RuntimeError: CUDA unknown error - this may be due to an incorrectly set up environment, e.g. changing env "
    "variable CUDA_VISIBLE_DEVICES after program start. Setting the available devices to be zero.",
]


@pytest.mark.parametrize("error", CUDA_ERRORS)
def test_a_notebook_asking_for_cuda_without_one_is_told_to_fall_back(error):
    hint = hint_for(6, error, None)
    assert hint.startswith("cell 6 asks for a CUDA GPU") and "on the CPU" in hint and DEVICE_LINE in hint


def test_a_cuda_error_only_in_the_traceback_still_gets_its_hint():
    traceback = ("RuntimeError                              Traceback (most recent call last)\n"
                 "Cell In[5], line 3\n----> 3 model = AutoEncoder(NZ).cuda()\n"
                 "RuntimeError: Found no NVIDIA driver on your system.")
    assert "cell 5 asks for a CUDA GPU" in hint_for(5, "RuntimeError", traceback)


def test_a_second_gpu_and_gpu_memory_get_their_own_hints():
    ordinal = hint_for(3, "RuntimeError: CUDA error: invalid device ordinal\nCUDA kernel errors might be "
                          "asynchronously reported at some other API call")
    assert "cell 3 asks for a GPU other than the first" in ordinal and DEVICE_LINE in ordinal
    oom = hint_for(8, "OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 GiB. GPU 0 has a total "
                      "capacity of 139.81 GiB of which 137.2 GiB is free.", gpu_memory_mb=64000)
    assert "cell 8 ran out of GPU memory" in oom and "(64000 MB)" in oom
    assert "GPU" not in hint_for(8, "MemoryError: Unable to allocate 3.00 GiB", memory_mb=6144)


# --- real kernels on the CPU path --------------------------------------------------------------


def test_the_hidden_setup_runs_before_the_first_cell_and_is_never_shown(tmp_path, data_dir, monkeypatch):
    # A setup that leaves a mark the student's first cell can see (the real one caps GPU memory).
    monkeypatch.setattr(execute_module, "setup_code",
                        lambda slot: "open('setup-ran', 'w').write('yes')\n__grader_seen = 1\ndel __grader_seen")
    result, executed, _ = run(tmp_path, [new_markdown_cell("# Q1"), new_code_cell("print(open('setup-ran').read())")],
                              data_dir)
    assert result.status == "graded", result
    assert [c.index for c in result.cells] == [0, 2]             # the student's code cells, no more
    sources = [c.source for c in executed.cells]
    assert not any("setup-ran', 'w'" in s for s in sources)     # not in executed.ipynb
    first = executed.cells[-1]
    assert first.outputs[0].text.strip() == "yes" and first.execution_count is not None
    counts = [c.execution_count for c in executed.cells if c.cell_type == "code"]
    assert counts == [1, 2, 3]   # the setup is outside the history: the student's counts start at 1


def test_a_failing_setup_is_said_and_the_notebook_still_runs(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(execute_module, "setup_code", lambda slot: "raise RuntimeError('no device')")
    result, _, _ = run(tmp_path, [new_code_cell("x = 1")], data_dir)
    assert result.status == "graded" and [c.status for c in result.cells] == ["ok", "ok"]
    assert any("the grader's device setup failed before the first cell: RuntimeError: no device" in e
               for e in result.errors)


def test_a_cpu_slots_kernel_sees_no_gpu_and_says_it_ran_on_the_cpu(tmp_path, data_dir):
    probe = ("import json, os\njson.dump({'dev': sorted(n for n in os.listdir('/dev') if 'nvidia' in n),"
             " 'visible': os.environ.get('CUDA_VISIBLE_DEVICES')}, open('report.json', 'w'))")
    result, _, report = run(tmp_path, [new_code_cell(probe)], data_dir, slot=Slot(index=0))
    assert result.status == "graded" and result.device == "cpu"
    assert report == {"dev": [], "visible": ""}


@pytest.mark.slow
def test_cuda_on_a_cpu_host_is_named_by_cell_with_the_fallback(tmp_path, data_dir):
    if _cuda_devices():
        pytest.skip("this host has a GPU: the CPU path's error does not happen")
    result, _, _ = run(tmp_path, [new_code_cell("import torch"), new_code_cell("x = torch.zeros(1).cuda()"),
                                  new_code_cell("y = 1")], data_dir)
    cells = {c.index: c for c in result.cells}
    assert result.status == "error" and cells[2].status == "error" and cells[3].status == "ok"
    assert cells[2].hint.startswith("cell 2 asks for a CUDA GPU") and DEVICE_LINE in cells[2].hint


# --- the real CUDA path (a GPU host) -----------------------------------------------------------

GPU_PROBE = """
import json, os, torch
r = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": torch.cuda.device_count(),
     "nodes": sorted(n for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()),
     "fraction": torch.cuda.get_per_process_memory_fraction(0),
     "uuid": str(torch.cuda.get_device_properties(0).uuid), "name": torch.cuda.get_device_name(0)}
total = torch.cuda.get_device_properties(0).total_memory
try:
    torch.empty(int(total * (r["fraction"] + 0.05)), dtype=torch.uint8, device="cuda")
    r["over_cap"] = "allocated"
except torch.OutOfMemoryError:
    r["over_cap"] = "refused"
x = torch.ones(1 << 20, device="cuda")
r["sum"] = float(x.sum())
json.dump(r, open("report.json", "w"))
"""


@needs_gpu
def test_a_gpu_slots_kernel_sees_exactly_its_gpu_with_its_memory_capped(tmp_path, data_dir):
    slots = plan_slots(8, kernels_per_gpu=2)
    slot = slots[-1]                     # the last slot: on a host of several GPUs, not the first GPU
    result, _, report = run(tmp_path, [new_code_cell(GPU_PROBE)], data_dir, slot=slot, cell_timeout=120)
    assert result.status == "graded", (result.errors, [(c.error, c.traceback) for c in result.cells])
    assert result.device == slot.label and slot.label.startswith("cuda:")
    assert report["visible"] == slot.device and report["count"] == 1
    assert report["nodes"] == [f"nvidia{slot.gpu.minor}"]          # no other GPU's node exists in there
    if slot.gpu.mig_device is None:
        assert report["uuid"] and report["uuid"] in slot.device     # torch prints it without "GPU-"
    assert report["fraction"] == pytest.approx(slot.memory_fraction)
    assert report["over_cap"] == "refused" and report["sum"] == float(1 << 20)


@needs_gpu
def test_a_cuda_notebook_runs_on_a_gpu_slot_without_a_hint(tmp_path, data_dir):
    slot = plan_slots(1)[0]
    result, _, _ = run(tmp_path, [new_code_cell("import torch\nx = torch.zeros(1).cuda()\nassert x.is_cuda")],
                       data_dir, slot=slot, cell_timeout=120)
    assert result.status == "graded" and all(c.hint is None for c in result.cells), result.cells


@needs_gpu
def test_the_reference_and_the_classifier_pick_the_gpu():
    from grader.models import pick_device

    assert pick_device().type == "cuda"
