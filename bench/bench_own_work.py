"""Seconds of the grader's own work on one notebook: everything but the kernel's run of its cells.

    python bench/bench_own_work.py                    # /tmp/fresh/out/correct if it exists, else
                                                      # grades submissions/correct.ipynb first
    python bench/bench_own_work.py --sample OUT/NAME  # any graded submission's folder (read-only)
    python bench/bench_own_work.py --profile          # plus the top of a cProfile of one evaluation

The sample's kernel export (weights.npz, probe.json) and unit-check files are copied into a
scratch folder, so the graded OUT is never touched. One CPU thread (torch, OpenMP and BLAS), the
quick preset, warm caches: the grading context is prepared once (its cost is printed as "per
run"), one evaluation warms the per-run caches (the reference's figures at the student's β), and
then each repeat times the real pipeline (grade.evaluate, the PDF, the sandboxed unit checks),
stage by stage, by wrapping the functions it calls; a stage inside another is printed indented
under it. Goal (issue 10): the per-notebook total <= 5 s, the PDF <= 1 s.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"   # before numpy and torch load their thread pools

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLE = Path("/tmp/fresh/out/correct")
SAMPLE_FILES = ("weights.npz", "probe.json", "unit.json", "unit.npz", "execution.json")
GOAL_SECONDS = 5.0


class StageTimer:
    """Accumulates the seconds of wrapped functions; nested calls are keyed by their path."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.order: list[str] = []
        self._stack: list[str] = []

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            key = " / ".join([*self._stack, label])
            if key not in self.order:
                self.order.append(key)
            self._stack.append(label)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1
                self._stack.pop()

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(timer: StageTimer) -> None:
    """Wrap the stages of grade.evaluate, the report and the checks' heavy parts, wherever the
    caller looks them up (module globals), so the real code path is what gets timed."""
    from grader import figures, grade, measure, metrics, report, result_figures

    for owner, name, label in [
        (grade, "_unit_checks", "unit checks (sandboxed process)"),
        (grade, "_read_notebook", "read notebook"),
        (grade, "student_probe", "probe the rebuilt models"),
        (measure, "measure", "measure"),
        (grade, "score_checks", "score"),
        (grade, "_answers", "answers"),
        (result_figures, "write_figures", "figures"),
        (report, "build_report_html", "PDF: HTML"),
        (report, "html_to_pdf", "PDF: WeasyPrint"),
        (measure, "classify", "classifier"),
        (metrics, "frechet_distance_from_stats", "Fréchet distance"),
        (metrics, "feature_stats", "feature statistics"),
        (metrics, "memorised_share", "memorisation search"),
    ]:
        timer.wrap(owner, name, label)
    for name in dir(figures):
        if name.endswith("_png") and callable(getattr(figures, name)):
            timer.wrap(figures, name, name)


def graded_sample(workdir: Path, preset: str) -> Path:
    """A graded folder of submissions/correct.ipynb, made now (once) when none is given."""
    from grader.grade import GradeOptions, grade_submissions

    out = workdir / "graded"
    grade_submissions(REPO / "submissions" / "correct.ipynb",
                      GradeOptions(out_dir=out, preset=preset, pdf=False), log=lambda _: None, print_table=False)
    return out / "correct"


def copy_sample(sample: Path, into: Path) -> tuple[Path, Path]:
    """(notebook, folder): the sample's export and unit files copied into a scratch folder."""
    folder = into / sample.name
    folder.mkdir(parents=True)
    for name in SAMPLE_FILES:
        if (sample / name).exists():
            shutil.copyfile(sample / name, folder / name)
    notebook = REPO / "submissions" / f"{sample.name}.ipynb"
    if not notebook.exists():
        notebook = sample / "submitted.ipynb"
    return notebook, folder


def one_notebook(ctx, notebook: Path, folder: Path, unit_checks: bool):
    """The grader's own work on one executed notebook, as grade_one and run_execution do it."""
    from grader import grade, report
    from grader.records import ExecutionResult

    execution = ExecutionResult.model_validate(json.loads((folder / "execution.json").read_text())["result"])
    if unit_checks:
        grade._unit_checks(ctx, notebook).save(folder)
    result = grade.evaluate(ctx, notebook, execution, folder)
    report.write_report(result, folder, ctx.config, None)
    return result


def print_table(title: str, rows: list[tuple[str, int, float]], total: float | None = None) -> None:
    print(f"\n{title}")
    print(f"  {'stage':<52} {'calls':>5} {'seconds':>8}")
    for key, calls, seconds in rows:
        depth = key.count(" / ")
        label = "  " * depth + key.rsplit(" / ", 1)[-1]
        print(f"  {label:<52} {calls:>5} {seconds:>8.3f}")
    if total is not None:
        print(f"  {'total':<52} {'':>5} {total:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=None, help="a graded submission's folder")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-unit-checks", action="store_true", help="skip the sandboxed unit-check process")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one evaluation")
    args = parser.parse_args()

    import torch

    from grader import grade

    torch.set_num_threads(1)
    timer = StageTimer()
    with tempfile.TemporaryDirectory(prefix="bench-own-work-") as tmp:
        tmp = Path(tmp)
        sample = args.sample or (DEFAULT_SAMPLE if DEFAULT_SAMPLE.exists() else graded_sample(tmp, args.preset))
        notebook, folder = copy_sample(sample, tmp / "bench")
        from grader import classifier, measure, reference

        for owner, name, label in [(measure.Judge, "build", "judge (classifier, test statistics, image bank)"),
                                   (reference, "feature_stats_of_test_set", "test-set features"),
                                   (reference, "build_reference", "reference models (cache)"),
                                   (classifier, "load_configured_classifier", "load the classifier")]:
            timer.wrap(owner, name, label)
        start = time.perf_counter()
        ctx = grade.prepare(grade.GradeOptions(out_dir=tmp / "out", preset=args.preset, pdf=True), log=lambda _: None)
        torch.set_num_threads(1)
        prepared = time.perf_counter() - start
        rows = [(k, timer.calls[k], timer.seconds[k]) for k in timer.order]
        timer.reset()
        timer.order.clear()

        instrument(timer)
        start = time.perf_counter()
        one_notebook(ctx, notebook, folder, not args.no_unit_checks)   # warm-up: per-run caches filled
        warm_up = time.perf_counter() - start
        print(f"sample {sample} at preset {args.preset}, torch threads {torch.get_num_threads()}")
        print_table("per run (grade.prepare, in this process)", rows, prepared)
        print(f"\nfirst notebook of the run (per-run caches filled): {warm_up:.3f} s")

        per_repeat: list[dict[str, float]] = []
        totals = []
        for _ in range(args.repeats):
            timer.reset()
            start = time.perf_counter()
            one_notebook(ctx, notebook, folder, not args.no_unit_checks)
            totals.append(time.perf_counter() - start)
            per_repeat.append(dict(timer.seconds))
        calls = dict(timer.calls)
        rows = [(k, calls.get(k, 0), statistics.median(r.get(k, 0.0) for r in per_repeat))
                for k in timer.order if k in calls]
        rows.append(("everything else", 1, statistics.median(
            t - sum(v for k, v in r.items() if " / " not in k) for t, r in zip(totals, per_repeat))))
        total = statistics.median(totals)
        print_table(f"per notebook, warm (median of {args.repeats})", rows, total)
        print(f"\ngoal <= {GOAL_SECONDS:g} s per notebook: {'met' if total <= GOAL_SECONDS else 'NOT met'}")
        figures = sorted(folder.glob("*.png"))
        print(f"figures: {len(figures)} PNGs, {sum(p.stat().st_size for p in figures) / 1024:.0f} KiB; "
              f"report.pdf {(folder / 'report.pdf').stat().st_size / 1024:.0f} KiB")

        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            one_notebook(ctx, notebook, folder, False)
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
            print(text.getvalue())


if __name__ == "__main__":
    sys.exit(main())
