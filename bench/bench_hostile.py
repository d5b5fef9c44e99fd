"""Grades the hostile corpus (tests/hostile/hostile_cases.py) once and prints what it cost.

Figures: wall time of the one `grader grade` run (quick preset, 2 workers, --cell-timeout 60,
--timeout 300), the grader process's peak RSS (VmHWM), the peak disk used under the scratch root
by the run's scratch directories (polled with du), the largest RSS of any kernel or helper, the
scratch file system's peak growth, strays left after the run, then one row per case: the status
it got (and the one expected), its score, and its first message.

Usage: .venv/bin/python bench/bench_hostile.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "hostile"))
import harness  # noqa: E402
import hostile_cases as hc  # noqa: E402


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="grade into this folder and keep it")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    token = secrets.token_hex(6)
    canary_dir = Path("/tmp") / f"hostile-canary-{token}"
    canary_dir.mkdir()
    try:
        ctx = hc.BuildContext(corpus=root / "corpus", out=root / "out", token=token, canary_dir=canary_dir)
        hc.build_corpus(ctx)
        report = harness.run_grader(harness.grader_command(ctx.corpus, ctx.out), root / "run",
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        results = harness.collect_results(ctx.out)
        left = harness.left_by_this_run(report, {c.file[: -len(".ipynb")][:40] for c in hc.CASES})
        mounts = harness.mounts_left_by(report)
        for entry in left:  # left by this run's grader: do not litter /tmp
            if entry not in mounts:
                subprocess.run(["rm", "-rf", "--one-file-system", entry], check=False)
        print(f"hostile corpus: {len(hc.CASES)} submissions, one `grader grade` run (quick, 2 workers)")
        print(f"wall time            {report.wall_s:.0f} s (grader exit code {report.returncode})")
        print(f"grader peak RSS      {_mib(report.grader_peak_rss)}")
        print(f"largest other proc.  {_mib(report.largest_process_rss)} (a kernel or helper, polled)")
        print(f"scratch disk peak    {_mib(report.peak_scratch_bytes)} (du of the run's scratch dirs, polled)")
        print(f"scratch fs growth    {_mib(report.peak_fs_used_delta)} (includes other users of that disk)")
        print(f"strays after the run {len(report.strays)}; scratch entries left {len(left)}; mounts left {len(mounts)}")
        print(f"load average         {os.getloadavg()[0]:.1f}")
        print()
        width = max(len(c.name) for c in hc.CASES)
        print(f"{'case':<{width}}  {'status':<8} {'expected':<16} {'score':>6}  first message")
        for case in hc.CASES:
            found = results.get(case.name) or results.get(case.file)
            if found is None:
                print(f"{case.name:<{width}}  {'-':<8} {'/'.join(case.statuses):<16} {'-':>6}  (no result.json)")
                continue
            result = found[1]
            texts = harness.messages(result)
            first = " ".join(texts[0].split())[:90] if texts else ""
            mark = "" if result.get("status") in case.statuses else " !"
            print(f"{case.name:<{width}}  {result.get('status', '?'):<8} {'/'.join(case.statuses) + mark:<16} "
                  f"{result.get('score', 0):>6.2f}  {first}")
    finally:
        shutil.rmtree(canary_dir, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
