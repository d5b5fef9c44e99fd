"""The hostile corpus (hostile_cases.py), graded in ONE `grader grade` run, then checked case by case.

The run: `grader grade CORPUS --out OUT --preset quick --workers 2 --cell-timeout 60 --timeout 300`,
started by harness.py's reaper (it records strays, peak memory and scratch disk). Before it, host
canaries holding a random secret are planted (in the grader's cache, in $HOME, in a /tmp folder,
and in the grader's environment); after it, the tests check that each case got its status and
its message (in result.json and in report.pdf), that forgeries score no more than an untrained
control, that the real sample keeps its score, that nothing of the host reached OUT, that nothing
was written outside OUT and scratch, that no process was left behind, and that the machine still
answers.

Selected with `pytest -m hostile`; part of the default suite. Measured on a quiet 2-core machine
(2026-12-03): 438 s for the test file, 425 s of it the one grade run (the 48 jobs' executions sum
to 590 s on 2 workers; the longest are infinite_loop at its 60 s cell timeout and the trained
control at 55 s), plus ~70 s when the reference models for the quick preset are not cached (their
cache key includes the grader's code).
Outputs of a run: pytest's tmp folder (corpus/, out/, run/ with the grader's stdout and stderr).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import hostile_cases as hc  # noqa: E402

pytestmark = [pytest.mark.hostile, pytest.mark.slow]

CELL_TIMEOUT = 60
NOTEBOOK_TIMEOUT = 300
FORGERY_MARGIN = 0.5
# The corpus was meant to grade in about 5 minutes on 2 cores; it took 660 s on a lightly loaded
# 2-core machine and 1059 s on a busy one. This bound only catches gross slowness.
WALL_BUDGET_S = 1200
GRADER_FAILURE = ("the grader failed while evaluating", "the grader could not run")


@dataclass
class CorpusRun:
    ctx: hc.BuildContext
    report: harness.RunReport
    results: dict            # submission -> (folder, result)
    secret: str
    hashes_before: dict
    hashes_after: dict
    canary_before: dict
    canary_after: dict
    outside_found: list
    marker_processes: list
    scratch_left: list
    mounts_left: list
    started_at: float


def _fingerprint(path: Path) -> str:
    """sha256 of a submission as it lies on disk: a link's target name, a folder's files."""
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return "dir:" + h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def _processes_with(marker: str) -> list[str]:
    done = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if marker in line and "ps -eo" not in line]


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> CorpusRun:
    from grader.paths import cache_dir

    root = tmp_path_factory.mktemp("hostile")
    token, secret = secrets.token_hex(6), secrets.token_hex(16)
    canary_dir = Path("/tmp") / f"hostile-canary-{token}"
    canary_dir.mkdir()
    (canary_dir / "canary.txt").write_text(f"host secret {secret}\n")
    host_canaries = [cache_dir() / f"hostile-canary-{token}.txt", Path.home() / f".hostile-canary-{token}.txt",
                     canary_dir / "canary.txt"]
    for path in host_canaries[:2]:
        path.write_text(f"host secret {secret}\n")
    ctx = hc.BuildContext(corpus=root / "corpus", out=root / "out", token=token, canary_dir=canary_dir,
                          host_canaries=host_canaries, cache_dir=cache_dir())
    try:
        paths = hc.build_corpus(ctx)
        hashes_before = {name: _fingerprint(p) for name, p in paths.items()}
        canary_before = _listing(canary_dir)
        env = {**os.environ, "HOSTILE_GRADER_SECRET": secret, "PYTHONUNBUFFERED": "1"}
        started_at = time.time()
        report = harness.run_grader(
            harness.grader_command(ctx.corpus, ctx.out, cell_timeout=CELL_TIMEOUT, timeout=NOTEBOOK_TIMEOUT),
            root / "run", env=env,
        )
        marker_processes = _processes_with(ctx.daemon_marker)
        hashes_after = {name: _fingerprint(p) if (p.exists() or p.is_symlink()) else "<gone>"
                        for name, p in paths.items()}
        canary_after = _listing(canary_dir)
        outside_found = [str(p) for p in ctx.outside_targets() if p.exists()]
        outside_found += [str(p) for p in canary_dir.glob(f"made-{token}*")]
        scratch_left = harness.left_by_this_run(report, {c.file[: -len(".ipynb")][:40] for c in hc.CASES})
        mounts_left = harness.mounts_left_by(report)
    finally:
        for path in host_canaries:
            path.unlink(missing_ok=True)
        shutil.rmtree(canary_dir, ignore_errors=True)
    for leftover in scratch_left:  # left by this run's grader (e.g. a 1500-level tree): do not litter /tmp
        if leftover not in mounts_left:
            subprocess.run(["rm", "-rf", "--one-file-system", leftover], check=False)
    return CorpusRun(ctx, report, harness.collect_results(ctx.out), secret, hashes_before, hashes_after,
                     canary_before, canary_after, outside_found, marker_processes, scratch_left, mounts_left,
                     started_at)


def _result(run: CorpusRun, case: hc.Case) -> tuple[Path, dict] | None:
    return run.results.get(case.name) or run.results.get(case.file)


def _score(run: CorpusRun, name: str) -> float | None:
    found = run.results.get(name)
    return None if found is None else float(found[1].get("score", 0.0))


@pytest.mark.parametrize("case", hc.CASES, ids=[c.name for c in hc.CASES])
def test_case(run: CorpusRun, case: hc.Case) -> None:
    if case.cpu_only and _has_gpu():
        pytest.skip("the expectation is for a host without a GPU")
    found = _result(run, case)
    assert found is not None, (
        f"no result.json names {case.name!r} as its submission; results for: {sorted(run.results)}; "
        f"grader exit {run.report.returncode}; its stderr ends: {run.report.stderr[-1500:]}"
    )
    folder, result = found
    problems = []
    if result.get("status") not in case.statuses:
        problems.append(f"status {result.get('status')!r}, expected {' or '.join(case.statuses)}")
    texts = harness.messages(result)
    if not any(harness.matches(case.message, t) for t in texts):
        problems.append(f"no message matches {case.message!r} in result.json; its messages: "
                        + " | ".join(t[:300] for t in texts[:12]))
    pdf = harness.pdf_text(folder / "report.pdf")
    if pdf is None:
        problems.append("report.pdf is missing or unreadable")
    elif not harness.matches(case.message, pdf):
        problems.append(f"report.pdf's text does not match {case.message!r}")
    score = float(result.get("score", 0.0))
    if case.max_score is not None and score > case.max_score:
        problems.append(f"score {score:g} > {case.max_score:g}")
    if case.min_score is not None and score < case.min_score:
        problems.append(f"score {score:g} < {case.min_score:g}")
    if case.forgery:
        control = _score(run, hc.UNTRAINED_CONTROL)
        if control is None:
            problems.append("the untrained control has no result to compare with")
        elif score > control + FORGERY_MARGIN:
            lost = {c["id"]: c["points"] for c in result.get("checks", []) if c.get("points")}
            problems.append(f"score {score:g} > untrained control {control:g} + {FORGERY_MARGIN}; points on {lost}")
    failures = [t[:300] for t in texts if any(f in t for f in GRADER_FAILURE)]
    if failures:
        problems.append(f"the grader itself failed: {failures}")
    for name, limit in (("executed.ipynb", case.max_executed_bytes), ("result.json", case.max_result_bytes)):
        path = folder / name
        if path.is_file() and path.stat().st_size > limit:
            problems.append(f"{name} is {path.stat().st_size:,} bytes (limit {limit:,})")
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if total > 60_000_000:
        problems.append(f"its output folder holds {total:,} bytes")
    assert not problems, f"{case.name} ({case.attack}):\n- " + "\n- ".join(problems)


def test_enough_cases_and_every_attack_group() -> None:
    assert len(hc.CASES) >= 40
    groups = {c.group for c in hc.CASES}
    assert {"forgery", "weak checks", "disk", "memory", "output", "processes", "names and files",
            "confinement"} <= groups


def test_the_batch_finished_with_a_row_per_submission(run: CorpusRun) -> None:
    out = run.ctx.out
    assert run.report.returncode == 0 and not run.report.timed_out, run.report.stderr[-3000:]
    gradebook = out / "gradebook.csv"
    assert gradebook.is_file(), "no gradebook.csv file"
    rows = [line.split(",", 1)[0] for line in gradebook.read_text().splitlines()[1:]]
    missing = [c.name for c in hc.CASES if c.name not in rows and c.file not in rows]
    assert not missing, f"no gradebook row for {missing}"
    assert (out / "summary.pdf").is_file()


def test_the_corpus_grades_within_budget(run: CorpusRun) -> None:
    assert run.report.wall_s <= WALL_BUDGET_S, (
        f"one grade run of {len(hc.CASES)} submissions took {run.report.wall_s:.0f} s (budget {WALL_BUDGET_S} s)")


def test_the_real_sample_keeps_its_score(run: CorpusRun) -> None:
    score = _score(run, hc.CONTROL)
    assert score is not None and score > 16, f"{hc.CONTROL}: {score} (expected > 16 of 18)"


def test_submissions_are_not_modified(run: CorpusRun) -> None:
    changed = [n for n in run.hashes_before if run.hashes_before[n] != run.hashes_after[n]]
    assert not changed, f"submissions changed by grading: {changed}"


def _file_texts(path: Path, data: bytes):
    """A file's bytes, a PDF's text too and an npz's members unpacked."""
    import zipfile

    if path.suffix == ".pdf":
        yield (harness.pdf_text(path) or "").encode()
    if path.suffix == ".npz" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size < 300_000_000:
                    yield z.read(info)
    yield data


def _leaks_in(out: Path, needles: dict[str, bytes]) -> set[str]:
    """'<what> in <path>' for every needle in any file under OUT (see _file_texts). Each distinct
    file content is searched once: most of OUT's 1.2 GB are copies (the untrained cases' identical
    weights.npz, ...), and 50 needles through all of it took most of this test's 17 s. The same
    bytes give the same PDF text and npz members, so the findings are the same."""
    found: dict[tuple[str, bytes], list[str]] = {}   # (suffix, content digest) -> the needles in it
    leaks: set[str] = set()
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        key = (path.suffix, hashlib.blake2b(data, digest_size=32).digest())
        if key not in found:
            found[key] = sorted({what for text in _file_texts(path, data)
                                 for what, needle in needles.items() if needle in text})
        leaks.update(f"{what} in {path.relative_to(out)}" for what in found[key])
    return leaks


def test_no_host_content_reaches_out(run: CorpusRun) -> None:
    needles = {"the planted secret": run.secret.encode()}
    for host_file in ("/etc/shadow", "/etc/passwd"):
        try:
            lines = Path(host_file).read_bytes().splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if len(line.strip()) >= 8:
                needles[f"{host_file} line {i + 1}"] = line.strip()
    leaks = _leaks_in(run.ctx.out, needles)
    assert not leaks, sorted(leaks)  # names only: the content itself is never printed


def test_nothing_written_outside_out_and_scratch(run: CorpusRun) -> None:
    assert not run.outside_found, f"created outside OUT and scratch: {run.outside_found}"
    assert run.canary_after == run.canary_before, "the canary folder under /tmp changed"


def test_no_process_left_behind(run: CorpusRun) -> None:
    assert not run.report.strays, f"left running after the grader exited: {run.report.strays}"
    assert not run.marker_processes, f"the notebook's daemon is still alive: {run.marker_processes}"


def test_no_scratch_directory_or_mount_left_behind(run: CorpusRun) -> None:
    assert not run.scratch_left, f"scratch directories left after the run: {run.scratch_left}"
    assert not run.mounts_left, f"mounts left after the run: {run.mounts_left}"


def test_scratch_disk_stayed_bounded(run: CorpusRun) -> None:
    # disk_fill asks for 3 GiB: a cap must have refused some of it.
    assert run.report.peak_scratch_bytes < 3 << 30, f"peak scratch use {run.report.peak_scratch_bytes:,} bytes"


def test_the_machine_still_answers(run: CorpusRun) -> None:
    started = time.monotonic()
    subprocess.run(["true"], check=True, timeout=10)
    assert time.monotonic() - started < 5
    started = time.monotonic()
    sum(range(2_000_000))
    assert time.monotonic() - started < 5
    load = os.getloadavg()[0]
    assert load < 32, f"1-minute load average {load}"
    assert run.report.grader_peak_rss < 4 << 30, f"grader peak RSS {run.report.grader_peak_rss:,} bytes"
