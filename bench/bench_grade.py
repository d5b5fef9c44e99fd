"""Grader overhead: `grader grade` on sample notebooks against bare nbclient execution of them.

    python bench/bench_grade.py [--preset smoke|quick] [--workers N] [NOTEBOOK ...]

Bare execution: nbclient with a plain local ipykernel, the same injected parameters, one thread,
no sandbox, no probe, nothing measured. Grading: the whole pipeline (sandbox, probe, measurement,
scoring, figures, PDFs) into a fresh output folder, with the reference set already cached (its
one-off training time is printed separately). Prints both totals and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from grader.config import load_config
from grader.data import ensure_mnist
from grader.grade import GradeOptions, StageSeconds, grade_submissions
from grader.inject import inject_parameters
from grader.models import pick_device
from grader.paths import REPO_ROOT
from grader.reference import build_reference


def bare_run(notebook: Path, params: dict, data_dir: Path, threads: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        nb = inject_parameters(nbformat.read(notebook, as_version=4), {**params, "DATA_DIR": str(data_dir)})
        env_backup = dict(os.environ)
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg")
        try:
            started = time.perf_counter()
            NotebookClient(nb, timeout=1200, allow_errors=True, kernel_name="python3",
                           resources={"metadata": {"path": tmp}}).execute()
            return time.perf_counter() - started
        finally:
            os.environ.clear()
            os.environ.update(env_backup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    notebooks = args.notebooks or [REPO_ROOT / "submissions" / n for n in ("correct.ipynb", "vae_cell_raises.ipynb")]
    config = load_config()
    params = config.resolve_parameters(preset=args.preset)
    data_dir = ensure_mnist()
    started = time.perf_counter()
    build_reference(config, params, log=lambda _: None)
    print(f"device {pick_device()}; preset {args.preset} {config.resolve_parameters(preset=args.preset)}")
    print(f"reference set ready in {time.perf_counter() - started:.1f} s (0 when cached)")

    bare = {nb.name: bare_run(nb, params, data_dir, config.limits.threads) for nb in notebooks}
    for name, seconds in bare.items():
        print(f"bare nbclient  {name:32s} {seconds:7.1f} s")
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for nb in notebooks:
            shutil.copy(nb, folder / nb.name)
        started = time.perf_counter()
        stages: dict[str, StageSeconds] = {}
        grade_submissions(folder, GradeOptions(out_dir=Path(tmp) / "out", preset=args.preset, workers=args.workers),
                          log=lambda _: None, stages=stages)
        graded = time.perf_counter() - started
    print("stages in the worker, wall seconds (context: the worker's light context; waiting: for the"
          " measuring parts after the kernel ended)")
    for name, seconds in sorted(stages.items()):
        parts = "  ".join(f"{stage} {value:6.2f}" for stage, value in seconds.model_dump().items())
        print(f"  {name:32s} {parts}  in jobs {sum(seconds.model_dump().values()):6.2f}")
    total_bare = sum(bare.values())
    print(f"bare nbclient total   {total_bare:7.1f} s")
    print(f"grader grade total    {graded:7.1f} s  (workers {args.workers})")
    print(f"overhead ratio        {graded / total_bare:7.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
