"""Seconds to render one PDF report and the class summary.

    python bench/bench_report.py            # the test suite's sample records (graded, error, invalid)
    python bench/bench_report.py OUT        # every OUT/<id>/result.json of a real `grader grade` run

Prints the median of a few runs per step: HTML building (templates, markdown, maths), printing to
PDF (WeasyPrint layout), one maths formula, and the summary for the whole set.
"""

from __future__ import annotations

import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from grader.config import load_config  # noqa: E402
from grader.mathtext import tex_to_svg  # noqa: E402
from grader.records import SubmissionResult  # noqa: E402
from grader.report import build_report_html, html_to_pdf, render_summary  # noqa: E402

REPEATS = 3


def timed(step, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_records(workdir: Path) -> list[tuple[SubmissionResult, Path]]:
    import test_report as samples

    graded_dir = workdir / "graded"
    return [(samples.graded_result(graded_dir), graded_dir),
            (samples.failed_result("error"), workdir / "error"),
            (samples.invalid_result(), workdir / "invalid")]


def real_records(out: Path) -> list[tuple[SubmissionResult, Path]]:
    return [(SubmissionResult.model_validate_json(p.read_bytes()), p.parent)
            for p in sorted(out.glob("*/result.json"))]


def main() -> None:
    config = load_config()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        tmp = Path(tmp)
        records = real_records(Path(sys.argv[1])) if len(sys.argv) > 1 else sample_records(tmp)
        if not records:
            sys.exit("no result.json found")
        formulas = [rf"\beta_{{{i}}} = \frac{{\mu_{i}}}{{\sigma^2}}" for i in range(20)]
        per_formula = timed(lambda: [tex_to_svg.__wrapped__(f) for f in formulas], 1) / len(formulas)
        print(f"maths: {per_formula * 1000:.1f} ms per formula (ziamath, uncached)")
        for result, folder in records:
            html = build_report_html(result, folder, config)
            t_html = timed(functools.partial(build_report_html, result, folder, config))
            t_pdf = timed(functools.partial(html_to_pdf, html, tmp / f"{result.submission}.pdf"))
            print(f"report {result.submission} ({result.status}): html {t_html:.3f} s + pdf {t_pdf:.3f} s "
                  f"= {t_html + t_pdf:.2f} s")
        # The summary over a class-sized set: the records repeated under new names.
        many = [r.model_copy(update={"submission": f"{r.submission}_{i:03d}"})
                for i in range(10) for r, _ in records]
        t_summary = timed(lambda: render_summary(many, tmp / "summary", config), 1)
        print(f"summary of {len(many)} submissions: {t_summary:.2f} s")


if __name__ == "__main__":
    main()
