"""Batch throughput: `grader grade --workers W` against bare nbclient with W processes, in one run.

    python bench/bench_throughput.py [--n 4] [--workers 2] [--preset quick|smoke] [--no-single]

N copies of submissions/correct.ipynb. Bare: W worker processes, each executing its share of the
copies one after another with nbclient in a plain local ipykernel, at one thread (OMP/MKL/OpenBLAS
threads 1 in the kernel's environment and torch.set_num_threads(1) in a cell injected first, as
the grader's kernels run), the same injected parameters, no sandbox, probe, measurement or PDF.
Grading: the `grader grade` command into a fresh output folder (every notebook executed and
graded; the reference set and the classifier's caches warmed first, untimed). Prints the
seconds, the ratio grade / bare (goal <= 1.05, must be <= 1.15) and, unless --no-single, the
speed-up of --workers W over --workers 1 (goal >= 1.7x for W=2 on 2 cores); --bare-single adds bare
nbclient with one process, the speed-up the machine itself gives two kernels (the grader's ceiling).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat

from grader.config import load_config
from grader.data import ensure_mnist
from grader.inject import inject_parameters
from grader.paths import REPO_ROOT

SAMPLE = REPO_ROOT / "submissions" / "correct.ipynb"
GRADER = Path(sys.executable).with_name("grader")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
TORCH_ONE_THREAD = "import torch\ntorch.set_num_threads(1)\ntorch.set_num_interop_threads(1)"


def bare_share(notebooks: list[str], params: dict, data_dir: str) -> float:
    """One bare worker: its notebooks one after another, each in a fresh kernel and directory."""
    from nbclient import NotebookClient

    os.environ.update(ONE_THREAD)   # this process is the kernels' parent: they inherit it
    started = time.perf_counter()
    for notebook in notebooks:
        nb = inject_parameters(nbformat.read(notebook, as_version=4), {**params, "DATA_DIR": data_dir})
        nb.cells.insert(0, nbformat.v4.new_code_cell(TORCH_ONE_THREAD))
        with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
            NotebookClient(nb, timeout=3600, allow_errors=True, kernel_name="python3",
                           resources={"metadata": {"path": tmp}}).execute()
    return time.perf_counter() - started


def bare_batch(notebooks: list[Path], workers: int, params: dict, data_dir: Path) -> float:
    shares = [[str(nb) for nb in notebooks[i::workers]] for i in range(workers)]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(bare_share, shares, [params] * workers, [str(data_dir)] * workers))
    return time.perf_counter() - started


def grade_batch(folder: Path, workers: int, preset: str) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as out:
        started = time.perf_counter()
        subprocess.run([str(GRADER), "grade", str(folder), "--out", out, "--preset", preset,
                        "--workers", str(workers)], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4, help="copies of the correct sample")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", default="quick", choices=["quick", "smoke"])
    parser.add_argument("--no-single", action="store_true", help="skip the --workers 1 run (the speed-up)")
    parser.add_argument("--bare-single", action="store_true",
                        help="also bare nbclient with 1 process: the machine's own speed-up, the grader's ceiling")
    args = parser.parse_args()
    config = load_config()
    params = config.resolve_parameters(preset=args.preset)
    data_dir = ensure_mnist()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        for i in range(args.n):
            shutil.copy(SAMPLE, folder / f"correct{i}.ipynb")
        warm = Path(tmp) / "warm"
        warm.mkdir()
        shutil.copy(SAMPLE, warm / "correct.ipynb")
        print(f"warming the caches (reference at {args.preset}, classifier): one untimed grade", flush=True)
        grade_batch(warm, 1, args.preset)
        cores = len(os.sched_getaffinity(0))
        print(f"{args.n} x {SAMPLE.name}, preset {args.preset} {params}, {cores} cores", flush=True)
        bare = bare_batch(sorted(folder.iterdir()), args.workers, params, data_dir)
        print(f"bare nbclient, {args.workers} processes x 1 thread: {bare:.1f} s", flush=True)
        graded = grade_batch(folder, args.workers, args.preset)
        print(f"grader grade --workers {args.workers}: {graded:.1f} s", flush=True)
        print(f"ratio grade / bare: {graded / bare:.3f} (goal <= 1.05, must be <= 1.15)")
        if not args.no_single:
            single = grade_batch(folder, 1, args.preset)
            print(f"grader grade --workers 1: {single:.1f} s")
            print(f"speed-up --workers {args.workers} over --workers 1: {single / graded:.2f}x (goal >= 1.7x)")
        if args.bare_single:
            alone = bare_batch(sorted(folder.iterdir()), 1, params, data_dir)
            print(f"bare nbclient, 1 process: {alone:.1f} s; the machine's own speed-up at {args.workers} "
                  f"processes: {alone / bare:.2f}x")


if __name__ == "__main__":
    main()
