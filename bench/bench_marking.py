"""Marking at course scale: a synthetic OUT of 500 submissions x 5 questions, then the seconds of
what a marker waits for.

    python bench/bench_marking.py [--submissions 500] [--pdfs 20] [--out DIR]

The answers are variations (dropped sentences, typos, other words, hedges, mixtures of two) of
real ones: the seed student's (/work/shared/seeds, when present) and those of the sample
submissions in submissions/*.ipynb, read as the grader reads them (no notebook is run). Every
result.json is a full graded record (checks, metrics, figures), so the PDFs are the real ones.

Measures and prints: syncing the answers into the marking database, opening a question's page
(the web app's GET when grader.marking.app exists, else the store reads a page needs; goal
<= 200 ms), the answer groups cold (computed) and warm (read back), applying a rubric item to 50
answers at once, exporting a question's marking sheet, and regenerating PDFs (`--pdfs N` of
them, extrapolated to all).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import nbformat

from grader.answers import count_words, extract_answers
from grader.config import AssignmentConfig, load_config
from grader.records import Answer

SEEDS_DIR = Path("/work/shared/seeds")
SUBMISSIONS_DIR = REPO / "submissions"
PAGE_GOAL_S = 0.200
SYNONYMS = {
    "samples": "generated images", "blurry": "fuzzy", "digits": "numbers", "reconstructions": "outputs",
    "because": "since", "very": "really", "good": "fine", "KL": "KL divergence", "latent": "hidden",
    "smooth": "gradual", "images": "pictures", "the": "the", "model": "network", "small": "low",
}
HEDGES = ["I think ", "In my opinion, ", "As far as I can see, ", "Basically, ", ""]


# --- answers --------------------------------------------------------------------------------


def _seed_notebook(text: str) -> nbformat.NotebookNode:
    """A seed file (markdown cells' text, blank-line separated) as a notebook of markdown cells."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n\s*\n", text) if b.strip()]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(b) for b in blocks])


def base_answers(config: AssignmentConfig) -> dict[str, list[str]]:
    """Question id -> the real answers found in the seeds and the sample submissions."""
    notebooks = [nbformat.read(p, as_version=4) for p in sorted(SUBMISSIONS_DIR.glob("*.ipynb"))]
    if SEEDS_DIR.is_dir():
        notebooks += [_seed_notebook(p.read_text(errors="replace")) for p in sorted(SEEDS_DIR.glob("*.txt"))]
    found: dict[str, list[str]] = {q.id: [] for q in config.questions}
    for nb in notebooks:
        for answer in extract_answers(nb, config):
            if answer.found and answer.text.strip() and answer.text not in found[answer.id]:
                found[answer.id].append(answer.text)
    empty = [q for q, texts in found.items() if not texts]
    if empty:
        raise SystemExit(f"no real answer found for {', '.join(empty)} in {SUBMISSIONS_DIR} or {SEEDS_DIR}")
    return found


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def vary(text: str, rng: random.Random, other: str | None = None) -> str:
    """One student's version of a real answer: some of its sentences, typos, other words, a
    hedge; with `other`, half of another answer's sentences mixed in."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    if len(sentences) > 2 and rng.random() < 0.5:
        sentences.pop(rng.randrange(len(sentences)))
    if other:
        extra = [s for s in re.split(r"(?<=[.!?])\s+", other) if s.strip()]
        sentences = sentences[: max(1, len(sentences) // 2)] + extra[len(extra) // 2:]
    words = " ".join(sentences).split(" ")
    for i, word in enumerate(words):
        roll = rng.random()
        if roll < 0.04:
            words[i] = _typo(word, rng)
        elif roll < 0.10 and word in SYNONYMS:
            words[i] = SYNONYMS[word]
    return rng.choice(HEDGES) + " ".join(words)


def synthetic_answers(config: AssignmentConfig, count: int, seed: int = 0) -> list[list[Answer]]:
    """count students' answers to every question: variations of the real ones, 4% missing,
    2% empty, 10% mixtures of two answers."""
    rng = random.Random(seed)
    bases = base_answers(config)
    students = []
    for _ in range(count):
        answers = []
        for question in config.questions:
            roll = rng.random()
            if roll < 0.04:
                answers.append(Answer(id=question.id, found=False, limit=question.limit, max_points=question.points,
                                      note="question found but no answer after it"))
                continue
            if roll < 0.06:
                text = ""
            else:
                texts = bases[question.id]
                other = rng.choice(texts) if roll > 0.90 and len(texts) > 1 else None
                text = vary(rng.choice(texts), rng, other)
            words = count_words(text)
            answers.append(Answer(id=question.id, found=bool(text), text=text, words=words, limit=question.limit,
                                  max_points=question.points, over_limit=words > question.limit))
        students.append(answers)
    return students


# --- the synthetic OUT ----------------------------------------------------------------------


def build_out(out: Path, config: AssignmentConfig, count: int) -> list[str]:
    """OUT with count submission folders: a full graded record each (the test suite's sample
    record with this student's answers) and the same figure files beside it."""
    import test_report as samples

    template_dir = out / ".figures"
    template_dir.mkdir(parents=True, exist_ok=True)
    template = samples.graded_result(template_dir)
    names = []
    for number, answers in enumerate(synthetic_answers(config, count)):
        name = f"student{number:04d}"
        folder = out / name
        folder.mkdir(exist_ok=True)
        for file_name in template.figures.values():
            shutil.copyfile(template_dir / file_name, folder / file_name)
        record = template.model_copy(update={"submission": name, "answers": answers})
        (folder / "result.json").write_text(record.model_dump_json())
        names.append(name)
    shutil.rmtree(template_dir)
    return names


# --- measuring ------------------------------------------------------------------------------


def timed(step, repeats: int = 1) -> tuple[float, object]:
    """The median seconds of `repeats` runs of step, and its last value."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def page_opener(out: Path, config: AssignmentConfig, question: str):
    """A function that opens the question's marking page, and what it measures."""
    from grader.marking.store import MarkStore

    try:
        from grader.marking.app import create_app
    except ImportError:
        create_app = None
    if create_app is not None:
        with warnings.catch_warnings():   # starlette's note on its httpx dependency
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient

        from grader.marking.app import TOKEN_HEADER

        token = "bench-token"
        client = TestClient(create_app(out, config, "bench", token))
        first = MarkStore(out, config, marker="bench").answers(question)[0]["submission"]
        urls = [f"/q/{question}", f"/api/answer/{question}/{first}"]

        def open_page():
            for url in urls:   # the page, then the first answer it shows (with its evidence)
                response = client.get(url, headers={TOKEN_HEADER: token})
                if response.status_code != 200:
                    raise SystemExit(f"GET {url}: HTTP {response.status_code}: {response.text[:300]}")

        return open_page, "web app: GET " + " + ".join(urls)

    def read_page():
        from grader.marking.groups import answer_groups

        store = MarkStore(out, config, marker="bench")
        return (store.answers(question), store.rubric(question), store.question_marks(question),
                store.item_counts(question), answer_groups(store, question))

    return read_page, "store reads (no grader.marking.app yet)"


def sheet_exporter(out: Path, config: AssignmentConfig, question: str, target: Path):
    try:
        from grader.marking.sheet import export_sheet
    except ImportError:
        return None
    def export():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            export_sheet(out, config, question, target)   # (it says where it wrote)

    return export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=500)
    parser.add_argument("--pdfs", type=int, default=20, help="PDFs to regenerate (the rest is extrapolated)")
    parser.add_argument("--out", type=Path, help="build the synthetic OUT here (default: a temporary folder)")
    args = parser.parse_args()

    from grader.marking.final import load_results
    from grader.marking.groups import answer_groups
    from grader.marking.store import MarkStore
    from grader.report import class_marking, write_report

    config = load_config()
    question = config.questions[1].id
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "OUT"
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out}: not empty")
        rows: list[tuple[str, float, str]] = []
        t, names = timed(lambda: build_out(out, config, args.submissions))
        print(f"built {len(names)} submissions x {len(config.questions)} questions in {t:.1f} s ({out})")

        store = MarkStore(out, config, marker="bench")
        results, problems = load_results(out)
        assert not problems, problems
        t, _ = timed(lambda: store.sync_answers(results))
        rows.append(("sync answers into the database (first time)", t, f"{len(results) * len(config.questions)} answers"))

        other = config.questions[0].id
        t, _ = timed(lambda: answer_groups(store, other))
        rows.append((f"answer groups of {other}, cold, first in the process", t, "includes importing scikit-learn"))
        t, groups = timed(lambda: answer_groups(store, question))
        sizes = sorted((g.size for g in groups), reverse=True)
        rows.append((f"answer groups of {question}, cold (computed)", t,
                     f"{len(groups)} groups, largest {sizes[:5]}, {sum(s == 1 for s in sizes)} singletons"))
        t, _ = timed(lambda: answer_groups(store, question), repeats=5)
        rows.append((f"answer groups of {question}, warm (stored)", t, ""))

        item = store.rubric(question)[0]
        fifty = [s for g in groups for s in g.submissions][:50]
        t, _ = timed(lambda: store.apply_item(item.id, fifty))
        rows.append(("apply a rubric item to 50 answers", t, "one transaction"))
        for number, submission in enumerate(names[: len(names) // 2]):
            store.set_mark(submission, question, comment=f"bench comment {number}")

        open_page, how = page_opener(out, config, question)
        open_page()  # first request: imports, template compilation
        t, _ = timed(open_page, repeats=5)
        verdict = "meets" if t <= PAGE_GOAL_S else "MISSES"
        rows.append((f"open {question}'s marking page", t, f"{how}; {verdict} the {PAGE_GOAL_S * 1000:.0f} ms goal"))

        export = sheet_exporter(out, config, question, out / "sheet.csv")
        if export is None:
            rows.append(("export a question's sheet", float("nan"), "grader.marking.sheet not there yet"))
        else:
            t, _ = timed(export, repeats=3)
            rows.append((f"export {question}'s marking sheet (CSV)", t, f"{(out / 'sheet.csv').stat().st_size} bytes"))

        t, marking = timed(lambda: class_marking(store, results))
        rows.append(("read every final grade (sync + marks + rubric)", t, "what `grader report` reads first"))
        some = results[: args.pdfs]
        t, _ = timed(lambda: [write_report(r, out / folder, config, marking.of(r.submission)) for folder, r in some])
        per_pdf = t / max(len(some), 1)
        rows.append((f"regenerate {len(some)} PDFs", t, f"{per_pdf:.2f} s per PDF"))
        rows.append((f"regenerate all {len(results)} PDFs (extrapolated)", per_pdf * len(results), "one process"))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'step':<{width}}  {'seconds':>9}  notes")
    for step, seconds, notes in rows:
        print(f"{step:<{width}}  {seconds:>9.3f}  {notes}")


if __name__ == "__main__":
    main()
