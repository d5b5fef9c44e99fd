"""Hints a student can act on, for the errors that come from the grader's environment rather
than from the student's code: no GPU, no Colab, no network, none of the student's own files.

A small table of (pattern on the cell's error and traceback, hint); the first that matches wins.
A hint is stored in CellRun.hint and printed under the cell's error in the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

DEVICE_LINE = "device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')"


@dataclass(frozen=True)
class Hint:
    pattern: re.Pattern
    text: Callable[[int, re.Match, "HintContext"], str | None]  # None: not this hint after all


@dataclass(frozen=True)
class HintContext:
    data_dir: str | None = None     # the data folder as the kernel saw it
    data_parameter: str = "the data folder parameter"   # the parameter that names it (the config's)
    source: str = ""                 # the failing cell's source
    memory_mb: int | None = None     # the kernel's memory limit
    gpu_memory_mb: int | None = None  # the kernel's share of its GPU's memory (a GPU slot's cap)


def _cuda(index: int, match: re.Match, ctx: HintContext) -> str:
    return (f"cell {index} asks for a CUDA GPU, but the grader ran this notebook on the CPU (a CPU-only "
            f"machine, or a worker without a GPU): use `{DEVICE_LINE}` and move models and tensors with "
            "`.to(device)` instead of `.cuda()` or `device='cuda'`, so the notebook runs on either")


def _other_gpu(index: int, match: re.Match, ctx: HintContext) -> str:
    return (f"cell {index} asks for a GPU other than the first (e.g. `cuda:1`), but the grader gives a "
            "notebook one GPU, which is `cuda` (`cuda:0`): use "
            f"`{DEVICE_LINE}` and never a GPU number")


def _cuda_load(index: int, match: re.Match, ctx: HintContext) -> str:
    return (f"cell {index} loads tensors saved on a GPU, but the grader runs on a CPU-only machine: "
            "pass `map_location=device` to torch.load (with "
            f"`{DEVICE_LINE}`)")


def _colab(index: int, match: re.Match, ctx: HintContext) -> str:
    return (f"cell {index} uses Google Colab (google.colab: drive.mount, files.upload), which does not "
            "exist in the grader: remove Colab-only cells, or guard them with "
            "`try: from google.colab import drive ... except ImportError: pass`; "
            f"the MNIST data is provided in {ctx.data_parameter}")


def _network(index: int, match: re.Match, ctx: HintContext) -> str:
    return (f"cell {index} needs the internet, but the grader runs notebooks without network access: "
            "nothing can be downloaded or installed (`!pip install` does nothing there); load MNIST with "
            f"`torchvision.datasets.MNIST({ctx.data_parameter}, ..., download=True)`, which finds the provided "
            "copy, and use only the packages the handout imports")


def _module(index: int, match: re.Match, ctx: HintContext) -> str:
    module = match.group(1)
    installed = " (your notebook tries to `pip install` packages, which cannot work there)" if re.search(
        r"pip\s+install", ctx.source) else ""
    return (f"cell {index} imports {module!r}, which the grader's environment does not have, and the "
            f"grader has no network to install it{installed}: use only the packages the handout imports "
            "(torch, torchvision, numpy, matplotlib)")


def _missing_file(index: int, match: re.Match, ctx: HintContext) -> str | None:
    path = match.group("path")
    root = (ctx.data_dir or "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return (f"cell {index} reads {path!r} inside {ctx.data_parameter}, which holds only MNIST as torchvision "
                f"stores it: load it with `torchvision.datasets.MNIST({ctx.data_parameter}, ..., download=True)`")
    return (f"cell {index} reads {path!r}, a file that exists only on your machine: in the grader only "
            f"the notebook and {ctx.data_parameter} (MNIST) exist, in a fresh working directory; load the data from "
            f"{ctx.data_parameter} and create every other file in the notebook itself (train instead of loading "
            "saved weights)")


def _memory(index: int, match: re.Match, ctx: HintContext) -> str:
    limit = f" of {ctx.memory_mb} MB" if ctx.memory_mb else ""
    return (f"cell {index} ran out of memory: the grader gives a notebook a memory limit{limit} (the "
            "kernel and its processes together); keep the data as the handout loads it, train in "
            "batches, and free large tensors you no longer need")


def _gpu_memory(index: int, match: re.Match, ctx: HintContext) -> str:
    share = f" ({ctx.gpu_memory_mb} MB)" if ctx.gpu_memory_mb else ""
    return (f"cell {index} ran out of GPU memory: the grader gives a notebook its share of a GPU{share}; "
            "train in batches of the handout's size, keep only the tensors you need on the GPU, and "
            "evaluate under `torch.no_grad()`")


_HINTS = [
    Hint(re.compile(r"CUDA out of memory|OutOfMemoryError: CUDA"), _gpu_memory),
    Hint(re.compile(r"MemoryError|DefaultCPUAllocator: can't allocate memory"), _memory),
    Hint(re.compile(r"Attempting to deserialize object on a CUDA device"), _cuda_load),
    Hint(re.compile(r"Found no NVIDIA driver|Torch not compiled with CUDA enabled|no CUDA GPUs are available"
                    r"|CUDA driver initialization failed|NVIDIA driver on your system is too old"
                    r"|cudaGetDeviceCount|No CUDA GPUs|CUDA unknown error|CUDA-capable device"), _cuda),
    Hint(re.compile(r"invalid device ordinal"), _other_gpu),
    Hint(re.compile(r"No module named '?google(?:\.colab)?'?(?![\w.])"), _colab),
    Hint(re.compile(r"URLError|Temporary failure in name resolution|Name or service not known"
                    r"|Network is unreachable|Failed to establish a new connection|getaddrinfo failed"
                    r"|Max retries exceeded with url|Error downloading|ConnectionRefusedError"
                    r"|nodename nor servname"), _network),
    Hint(re.compile(r"ModuleNotFoundError: No module named '([^'.]+)"), _module),
    Hint(re.compile(r"Dataset not found"), lambda index, match, ctx: (
        f"cell {index} looks for MNIST in a folder where it is not: pass {ctx.data_parameter} as the dataset's "
        f"root, `torchvision.datasets.MNIST({ctx.data_parameter}, train=True, download=True, ...)`, and do not "
        f"change {ctx.data_parameter}")),
    Hint(re.compile(r"(?:FileNotFoundError|No such file or directory)\b.*?: '(?P<path>[^']+)'"), _missing_file),
]


def hint_for(index: int, error: str | None, traceback: str | None = None, *,
             data_dir: str | None = None, data_parameter: str | None = None, source: str = "",
             memory_mb: int | None = None, gpu_memory_mb: int | None = None) -> str | None:
    """The hint for cell `index` that failed with `error` (and `traceback`), or None."""
    if not error and not traceback:
        return None
    ctx = HintContext(data_dir=data_dir, data_parameter=data_parameter or HintContext.data_parameter,
                      source=source or "", memory_mb=memory_mb, gpu_memory_mb=gpu_memory_mb)
    # The error line first: a traceback may quote unrelated text (a student's own comment).
    for text in (error or "", traceback or ""):
        for hint in _HINTS:
            match = hint.pattern.search(text)
            if match:
                found = hint.text(index, match, ctx)
                if found:
                    return found
    return None
