"""Grader overhead: `grader grade` on sample notebooks against bare nbclient execution of them.

    python bench/bench_grade.py [--preset smoke|quick] [--workers N] [NOTEBOOK ...]

Bare execution: nbclient with a plain local ipykernel, the same injected parameters, one thread,
no sandbox, no probe, nothing measured. Grading: the whole pipeline (sandbox, probe, measurement,
scoring, figures, PDFs) into a fresh output folder, with the reference set already cached (its
one-off training time is printed separately). Prints both totals and their ratio.

The student's cells alone vary by several seconds from one run to the next on a shared machine
(46-57 s for the same notebook within ten minutes here), more than the overhead being measured.
So each side also reports the seconds its kernel spent in the notebook's cells (the kernel's own
execute_input -> execute_reply timestamps, the same on both sides), and the overhead is printed
twice: wall against wall, and "beyond the cells" (each side's wall minus its own cells' seconds),
which cancels the cells' noise but would hide a grader that slowed the cells themselves (compare
the two cell sums for that). --repeat N alternates bare and graded runs N times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat

# Only light imports at the top: the grader's workers are spawned, and a spawned process imports
# the main module again (a CLI's main module is grader.cli, which imports nothing heavy).
REPO_ROOT = Path(__file__).resolve().parent.parent


def cell_seconds(nb: nbformat.NotebookNode) -> float:
    """Seconds the kernel spent in the notebook's code cells, by the timestamps nbclient records."""
    total = 0.0
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        began, ended = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if cell.cell_type == "code" and began and ended:
            total += (datetime.fromisoformat(ended.replace("Z", "+00:00"))
                      - datetime.fromisoformat(began.replace("Z", "+00:00"))).total_seconds()
    return total


def bare_run(notebook: Path, params: dict, data_dir: Path, threads: int) -> tuple[float, float]:
    """(wall seconds, the cells' seconds) of one bare nbclient run."""
    from nbclient import NotebookClient

    from grader.inject import inject_parameters

    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        nb = inject_parameters(nbformat.read(notebook, as_version=4), {**params, "DATA_DIR": str(data_dir)})
        env_backup = dict(os.environ)
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg")
        try:
            started = time.perf_counter()
            NotebookClient(nb, timeout=1200, allow_errors=True, kernel_name="python3",
                           resources={"metadata": {"path": tmp}}).execute()
            return time.perf_counter() - started, cell_seconds(nb)
        finally:
            os.environ.clear()
            os.environ.update(env_backup)


def graded_run(notebooks: list[Path], preset: str, workers: int) -> tuple[float, float, dict[str, dict]]:
    """(wall seconds, the cells' seconds summed over the notebooks, stage times) of one grade run,
    in a fresh process as `grader grade` runs (interpreter start, imports and worker start timed)."""
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for nb in notebooks:
            shutil.copy(nb, folder / nb.name)
        stages_file = Path(tmp) / "stages.json"
        started, started_at = time.perf_counter(), time.time()
        subprocess.run([sys.executable, __file__, "--graded-child", str(folder), str(Path(tmp) / "out"),
                        str(stages_file), "--preset", preset, "--workers", str(workers)], check=True)
        graded, ended_at = time.perf_counter() - started, time.time()
        cells = sum(cell_seconds(nbformat.read(executed, as_version=4))
                    for executed in (Path(tmp) / "out").glob("*/executed.ipynb"))
        saved = json.loads(stages_file.read_text())
        child = saved.pop("")
        print(f"  the grading process: start and imports {child['entered'] - started_at:.2f} s, grade_submissions "
              f"{child['returned'] - child['entered']:.2f} s, exit {ended_at - child['returned']:.2f} s")
        return graded, cells, saved


def graded_child(folder: Path, out: Path, stages_file: Path, preset: str, workers: int) -> None:
    """What `grader grade FOLDER --out OUT --preset P --workers W` does, keeping the stage times."""
    from grader.grade import GradeOptions, StageSeconds, grade_submissions

    entered = time.time()
    stages: dict[str, StageSeconds] = {}
    grade_submissions(folder, GradeOptions(out_dir=out, preset=preset, workers=workers), stages=stages)
    saved: dict[str, dict] = {name: s.model_dump() for name, s in stages.items()}
    saved[""] = {"entered": entered, "returned": time.time()}   # wall clock: compared across processes
    stages_file.write_text(json.dumps(saved))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="alternate bare and graded runs this many times")
    parser.add_argument("--graded-child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.graded_child:
        graded_child(*args.graded_child, args.preset, args.workers)
        return
    from grader.config import load_config
    from grader.data import ensure_mnist
    from grader.models import pick_device
    from grader.reference import build_reference

    notebooks = args.notebooks or [REPO_ROOT / "submissions" / n for n in ("correct.ipynb", "vae_cell_raises.ipynb")]
    config = load_config()
    params = config.resolve_parameters(preset=args.preset)
    data_dir = ensure_mnist()
    started = time.perf_counter()
    build_reference(config, params, log=lambda _: None)
    print(f"device {pick_device()}; preset {args.preset} {config.resolve_parameters(preset=args.preset)}")
    print(f"reference set ready in {time.perf_counter() - started:.1f} s (0 when cached)")

    rounds = []
    for round_ in range(args.repeat):
        bare = {nb.name: bare_run(nb, params, data_dir, config.limits.threads) for nb in notebooks}
        for name, (seconds, cells) in bare.items():
            print(f"bare nbclient  {name:32s} {seconds:7.1f} s  (cells {cells:.1f} s)")
        graded, graded_cells, stages = graded_run(notebooks, args.preset, args.workers)
        print("stages in the worker, wall seconds (context: the worker's light context; waiting: for the"
              " measuring parts after the kernel ended)")
        for name, seconds in sorted(stages.items()):
            parts = "  ".join(f"{stage} {value:6.2f}" for stage, value in seconds.items())
            print(f"  {name:32s} {parts}  in jobs {sum(seconds.values()):6.2f}")
        total_bare = sum(wall for wall, _ in bare.values())
        bare_cells = sum(cells for _, cells in bare.values())
        rounds.append((total_bare, bare_cells, graded, graded_cells))
        print(f"round {round_ + 1}: bare nbclient {total_bare:6.1f} s (cells {bare_cells:.1f} s), grader grade "
              f"{graded:6.1f} s (cells {graded_cells:.1f} s, workers {args.workers})")
        print(f"  overhead, wall against wall     {graded - total_bare:+6.1f} s  (ratio {graded / total_bare:.2f}x)")
        print(f"  overhead beyond the cells       {(graded - graded_cells) - (total_bare - bare_cells):+6.1f} s  "
              f"(grader {graded - graded_cells:.1f} s, bare {total_bare - bare_cells:.1f} s outside the cells)")
        sys.stdout.flush()
    if len(rounds) > 1:
        beyond = sorted((g - gc) - (b - bc) for b, bc, g, gc in rounds)
        walls = sorted(g - b for b, _, g, _ in rounds)
        print(f"over {len(rounds)} rounds: overhead beyond the cells median {beyond[len(beyond) // 2]:+.1f} s "
              f"(range {beyond[0]:+.1f} .. {beyond[-1]:+.1f}); wall against wall median {walls[len(walls) // 2]:+.1f} s "
              f"(range {walls[0]:+.1f} .. {walls[-1]:+.1f})")


if __name__ == "__main__":
    main()
