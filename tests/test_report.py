"""PDF reports: contents per status, maths, reproducible bytes, no grader-side file in a PDF."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import weasyprint
from pypdf import PdfReader

from grader import figures, reference, score, text
from grader.config import load_config
from grader.mathtext import markdown_to_html, tex_to_svg
from grader.records import (
    Answer,
    CellRun,
    ClassSummary,
    EpochLosses,
    FigureRef,
    KLUnitFigures,
    Measurement,
    Metrics,
    ModelFigures,
    ReparamUnitFigures,
    SubmissionResult,
    TrainingHistories,
)
from grader.report import (
    DataOnlyFetcher,
    ReportError,
    build_report_html,
    build_summary,
    failure_section,
    fmt_number,
    html_to_pdf,
    load_result,
    metric_sections,
    render_report,
    render_summary,
    rerender,
)
from grader.score import score_checks, totals

CONFIG = load_config()
GRADED_AT = "2026-11-25T14:16:00+00:00"
RED_TRACEBACK = (
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m\n"
    "\x1b[0;31mNameError\x1b[0m                                 Traceback (most recent call last)\n"
    "Cell \x1b[0;32mIn[14], line 3\x1b[0m\n"
    "\x1b[0;32m----> 3\x1b[0m vae_tuned \x1b[38;5;241m=\x1b[39m train_vae(best_bta)\n"
    "\x1b[0;31mNameError\x1b[0m: name 'best_bta' is not defined"
)

# The seed student's answers (/work/shared/seeds), each with a phrase the PDF must show.
ANSWERS = {
    "Q1": ("An interesting fact is when I increased the number of epoch, the images become more and "
           "more similar and hard to recognize. I guess it's due to the limitation of prior "
           "distribution, overfitting and the points distribute are more closed.",
           "limitation of prior distribution"),
    "Q2": (r"When $\beta=0$, though the reconstruction loss gets really small very quickly, KL loss "
           r"quickly increases. The sampling result is unrecognizable because KL is unconstrained "
           r"and $q(z|x)$ drifts away from $\mathcal{N}(0, I)$.",
           "KL loss quickly increases"),
    "Q3": ("Once we make beta large, both our reconstruction loss and kl loss decrease very quickly. "
           + "Our sampling result is much better, we can recognize most of them. " * 20,
           "sampling result is much better"),
    "Q5": ("- 1. Some digits in AE feel like they are seperated by some cuts and some digits in VAE "
           "are kind of blurred.\n- Since VAE has KL divergence loss, it has better proximate "
           "distribution.",
           "seperated by some cuts"),
}


def reference_figures() -> dict[str, ModelFigures]:
    return {
        "ae": ModelFigures(mse=0.0151, sample_fid=41.0, sample_confidence=0.62, sample_coverage=0.8,
                           interp_accept=0.52, interp_smoothness=0.31),
        "vae_beta0": ModelFigures(mse=0.0162, kl=251.0, elbo=-263.0),
        "vae_beta10": ModelFigures(mse=0.0851, kl=0.012, elbo=-66.7),
        "vae_tuned": ModelFigures(mse=0.0302, kl=25.3, elbo=-49.0, sample_fid=9.7, sample_confidence=0.91,
                                  sample_coverage=1.0, interp_accept=0.83, interp_smoothness=0.21),
    }


def make_metrics(student: dict[str, ModelFigures]) -> Metrics:
    return Metrics(
        student=student, reference=reference_figures(), mean_image_mse=0.0671,
        kl_unit=KLUnitFigures(rows=64, max_rel_error=2e-7, student_mean=30.1, analytic_mean=30.1),
        reparam_unit=ReparamUnitFigures(mean_error=0.012, std_error=0.4, no_noise=False, draws=4096),
        reference_good_betas=[1.0, 2.0, 4.0], reference_best_beta=2.0,
        reference_best=ModelFigures(mse=0.0297, kl=24.6, elbo=-48.1, sample_fid=9.1),
    )


def make_answers() -> list[Answer]:
    answers = []
    for question in CONFIG.questions:
        if question.id in ANSWERS:
            text = ANSWERS[question.id][0]
            words = len(text.split())
            answers.append(Answer(id=question.id, found=True, text=text, words=words, limit=question.limit,
                                  max_points=question.points, over_limit=words > question.limit))
        else:
            answers.append(Answer(id=question.id, found=False, limit=question.limit, max_points=question.points,
                                  note="the question was found but no 'Answer:' label followed it"))
    return answers


def write_figures(out: Path) -> list[FigureRef]:
    """Small real PNGs from random arrays, as the grade stage writes them next to result.json."""
    rng = np.random.default_rng(0)
    images = rng.random((4, 28, 28))
    drawn = [
        (FigureRef(kind="reconstructions", role="ae", file=""),
         figures.reconstructions_png(out / "recon_ae.png", images, images * 0.5, images ** 2)),
        (FigureRef(kind="samples", role="vae_tuned", side="student", file=""),
         figures.samples_png(out / "samples_vae_tuned_student.png", images, [1, 7, 3, 9], [0.9, 0.55, 0.71, 0.99])),
        (FigureRef(kind="interpolation", role="vae_tuned", file=""),
         figures.interpolation_png(out / "interp_vae_tuned.png", rng.random((1, 5, 28, 28)), rng.random((1, 5, 28, 28)))),
        (FigureRef(kind="training_curves", file=""), figures.training_curves_png(out / "training_curves.png", {
            "ae": [{"epoch": e, "rec": 30.0 - e} for e in range(3)],
            "vae": {"0.0": [{"epoch": e, "rec": 28.0 - e, "kl": 90.0 + e} for e in range(3)]}})),
    ]
    return [figure.model_copy(update={"file": path.name}) for figure, path in drawn]


def graded_result(out: Path, **changes) -> SubmissionResult:
    student = reference_figures()
    student["vae_tuned"] = student["vae_tuned"].model_copy(update={"mse": 0.041, "sample_fid": 14.2})
    checks = score_checks(CONFIG, Measurement(metrics=make_metrics(student), best_beta=6.77))
    score, max_score = totals(checks)
    result = SubmissionResult(
        submission="alice", status="graded", score=score, max_score=max_score,
        answer_points_pending=CONFIG.max_answer_points, parameters=CONFIG.parameters.defaults(),
        checks=checks, metrics=make_metrics(student), answers=make_answers(), best_beta=6.77,
        best_beta_source="markdown",
        cells=[CellRun(index=i, status="ok", seconds=0.5 + i, source_head=f"# cell {i}") for i in range(4)],
        figures=write_figures(out), grader_version="0.1.0", device="cpu", graded_at=GRADED_AT, seconds=42.0,
    )
    return result.model_copy(update=changes)


def failed_result(status: str) -> SubmissionResult:
    """A run that stopped at cell 14: the tuned VAE and everything after it is missing."""
    student = {role: figs for role, figs in reference_figures().items() if role != "vae_tuned"}
    missing = {"vae_tuned": "name 'vae_tuned' is not defined (the notebook stopped before it)"}
    checks = score_checks(CONFIG, Measurement(metrics=make_metrics(student), missing=missing, best_beta=6.77))
    score, max_score = totals(checks)
    failing = {
        "error": CellRun(index=14, status="error", seconds=3.2, source_head="vae_tuned = train_vae(best_bta)",
                         error="NameError: name 'best_bta' is not defined", traceback=RED_TRACEBACK),
        "timeout": CellRun(index=14, status="timeout", seconds=600.0, source_head="for epoch in range(10000):",
                           error="the cell ran longer than 600 s"),
        "crashed": CellRun(index=14, status="crashed", seconds=80.0, source_head="big = torch.zeros(10**12)",
                           error="the kernel died (probably out of memory)"),
    }[status]
    cells = [CellRun(index=i, status="ok", seconds=1.0, source_head=f"# cell {i}") for i in range(14)]
    cells += [failing, CellRun(index=15, status="not_run", source_head="print(best_beta)")]
    return SubmissionResult(
        submission=f"bob_{status}", status=status, score=score, max_score=max_score,
        answer_points_pending=CONFIG.max_answer_points, parameters=CONFIG.parameters.defaults(),
        checks=checks, metrics=make_metrics(student), answers=make_answers(), cells=cells,
        errors=[f"cell 14: {failing.error}", f"vae_tuned: {missing['vae_tuned']}"],
        grader_version="0.1.0", device="cpu", graded_at=GRADED_AT,
    )


def invalid_result() -> SubmissionResult:
    return SubmissionResult(submission="carol_invalid", status="invalid",
                            errors=["carol_invalid.ipynb: not a notebook (invalid JSON at line 1)"],
                            graded_at=GRADED_AT)


def pdf_text(path: Path) -> str:
    """The PDF's text with whitespace runs collapsed (line breaks fall anywhere)."""
    text = " ".join(page.extract_text() for page in PdfReader(path).pages)
    return " ".join(text.split())


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    out = tmp_path_factory.mktemp("alice")
    result = graded_result(out)
    return result, out, render_report(result, out, CONFIG)


def test_graded_report_shows_score_checks_answers_and_pending_points(graded):
    result, out, pdf = graded
    assert pdf == out / "report.pdf"
    text = pdf_text(pdf)
    assert f"{result.score:g} of {result.max_score:g} points" in text
    assert 0 < result.score < result.max_score  # the fixture loses points on purpose
    for check in result.checks:
        assert check.title in text
        assert squash(check.message) in text, check.id
    for _, phrase in ANSWERS.values():
        assert phrase in text
    assert "No answer found" in text and "no 'Answer:' label followed it" in text
    assert "PENDING" in text and f"up to {CONFIG.max_answer_points:g} more points" in text
    assert "over the limit by" in text  # Q3 is over its limit
    assert "reduced parameters" not in text and "Parameters the assignment's defaults" in text
    assert "2026-11-25 14:16 UTC" in text


def test_the_reference_at_its_best_beta_has_its_own_labelled_section(graded):
    result, _, pdf = graded
    sections = metric_sections(result, CONFIG)
    anchor = [s for s in sections if s["anchor"]]
    assert len(anchor) == 1 and anchor[0]["label"].endswith("the reference at its own best β = 2")
    assert not anchor[0]["checks"]
    rows = {row["label"]: (row["student"], row["reference"]) for row in anchor[0]["rows"]}
    assert rows["KL divergence (nats per image)"] == ("—", "24.6")
    assert [s["role"] for s in sections if not s["anchor"]] == list(CONFIG.model_names())
    text = pdf_text(pdf)
    assert "the reference at its own best β" in text and "could not be measured" not in text


def test_graded_report_embeds_each_figure(graded):
    result, _, pdf = graded
    # WeasyPrint shares one resource dictionary between pages: count distinct images.
    images = {hashlib.sha256(image.data).digest() for page in PdfReader(pdf).pages for image in page.images}
    assert len(images) == len(result.figures) == 4


def test_figures_are_captioned_from_their_records(tmp_path):
    result = graded_result(tmp_path)
    assert [f.name for f in result.figures] == ["reconstructions_ae", "samples_vae_tuned_student",
                                                "interpolation_vae_tuned", "training_curves"]
    html = build_report_html(result, tmp_path, CONFIG)
    assert "Samples — Tuned VAE, your model. Decoded from z ~ N(0, I)" in html
    assert "Reconstructions — Autoencoder. Test digits (top row)" in html
    assert "Training curves. As recorded in your ae_history" in html


def test_a_result_written_with_figures_by_name_still_shows_them(tmp_path):
    """result.json of an older grader: figures as {name: file name}; reading it makes the records
    from the names, so a rerender draws the same report."""
    result = graded_result(tmp_path)
    older = json.loads(result.model_dump_json())
    older["figures"] = {f.name: f.file for f in result.figures}
    (tmp_path / "result.json").write_text(json.dumps(older))
    loaded = load_result(tmp_path / "result.json")
    assert loaded.figures == result.figures
    assert build_report_html(loaded, tmp_path, CONFIG) == build_report_html(result, tmp_path, CONFIG)
    older["figures"] = {"stolen": "secret.png"}   # no figure the grader draws: the record is refused
    (tmp_path / "result.json").write_text(json.dumps(older))
    with pytest.raises(ReportError, match="figures"):
        load_result(tmp_path / "result.json")


def test_missing_figure_is_left_out(tmp_path):
    result = graded_result(tmp_path)
    (tmp_path / result.figure("training_curves").file).unlink()
    html = build_report_html(result, tmp_path, CONFIG)
    assert html.count("data:image/png;base64,") == len(result.figures) - 1
    assert "Training curves" not in html


def test_maths_in_answers_is_drawn_not_shown_as_tex(graded):
    result, out, pdf = graded
    html = build_report_html(result, out, CONFIG)
    q2 = re.search(r"<h3>Q2.*?</div>\s*</div>", html, re.DOTALL).group(0)
    assert q2.count("<svg") == 3  # \beta=0, q(z|x), \mathcal{N}(0, I)
    text = pdf_text(pdf)
    assert r"$\beta=0$" not in text and r"\beta" not in text
    assert "When" in text and "though the reconstruction loss" in text


def test_bad_tex_is_shown_as_source_and_html_is_escaped():
    html = markdown_to_html(r"Broken $\frac{a}{$ and <script>alert(1)</script> **bold**")
    assert "<svg" not in html
    assert r'<code class="tex-source">$\frac{a}{$</code>' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<strong>bold</strong>" in html
    assert tex_to_svg(r"\beta = 0").startswith("<svg")


def test_answer_html_keeps_formatting_but_no_link_comment_or_resource():
    html = markdown_to_html("[site](http://example.org) <http://auto.example> ![pic](file:///etc/passwd)\n\n"
                            "| a | b |\n|---|---|\n| 1 | 2 |\n\n3. three\n\n<!-- hidden --> ~~gone~~ `x < y`")
    assert "href" not in html and "src=" not in html and "<a" not in html and "<img" not in html
    assert "site" in html and "http://auto.example" in html and "![pic](file:///etc/passwd)" in html
    assert "<table>" in html and "<td>1</td>" in html and '<ol start="3">' in html
    assert "<s>gone</s>" in html and "<code>x &lt; y</code>" in html
    assert "<!--" not in html and "&lt;!-- hidden --&gt;" in html   # raw HTML is shown as text


@pytest.mark.parametrize("status", ["error", "timeout", "crashed"])
def test_failed_run_says_what_happened_where_and_what_it_cost(tmp_path, status):
    result = failed_result(status)
    text = pdf_text(render_report(result, tmp_path, CONFIG))
    failing = next(c for c in result.cells if c.status == status)
    assert "What went wrong" in text
    assert f"cell {failing.index}" in text and squash(failing.source_head) in text
    assert failing.error in text
    lost = [c for c in result.checks if c.points == 0 and "Could not be measured" in c.message]
    assert lost, "the fixture must lose checks to the missing vae_tuned"
    assert [c.id for c in failure_section(result)["lost_checks"]] == [c.id for c in lost]
    assert "these checks could not give you points" in text
    for check in lost:
        assert check.title in text
    assert "\x1b" not in text and "[0;31m" not in text
    if status == "error":
        assert "NameError: name 'best_bta' is not defined" in text
        assert "----> 3 vae_tuned = train_vae(best_bta)" in text
    assert "Run time per cell" in text and "not run" in text


def test_a_result_written_before_checks_had_reasons_still_names_the_checks_it_lost(tmp_path):
    """result.json of an older grader: no reason on its checks; reading it derives each reason
    from the wording of that time, so a rerender names the same lost checks."""
    result = failed_result("error")
    older = json.loads(result.model_dump_json())
    for check in older["checks"]:
        del check["reason"], check["missing"]
    (tmp_path / "result.json").write_text(json.dumps(older))
    loaded = load_result(tmp_path / "result.json")
    assert [c.reason for c in loaded.checks] == [c.reason for c in result.checks]
    assert {c.reason for c in loaded.checks} == {"measured", "missing"}
    lost = [c.id for c in failure_section(loaded)["lost_checks"]]
    assert lost == [c.id for c in failure_section(result)["lost_checks"]] and lost


def test_invalid_submission_with_almost_nothing_known(tmp_path):
    result = invalid_result()
    text = pdf_text(render_report(result, tmp_path, CONFIG))
    assert "not a notebook the grader can read" in text
    assert "invalid JSON at line 1" in text
    assert f"No automatic points (the automatic checks are worth {CONFIG.max_auto_points:g} points)" in text
    assert "No automatic check could be run" in text
    assert "No answers could be read" in text


def test_reduced_parameters_are_named(tmp_path):
    params = CONFIG.resolve_parameters(preset="quick")
    result = graded_result(tmp_path, parameters=params, overrides={"EPOCHS": 4, "TRAIN_SUBSET": 16384},
                           figures={})
    text = pdf_text(render_report(result, tmp_path, CONFIG))
    assert "This run used reduced parameters; the final grade runs the full ones." in text
    assert "EPOCHS = 4 (full: 10)" in text and "TRAIN_SUBSET = 16384 (full: None)" in text
    assert "Parameters EPOCHS = 4 (set by the grader), TRAIN_SUBSET = 16384 (set by the grader)" in text


def test_long_traceback_and_answer_are_capped(tmp_path):
    result = failed_result("error")
    result.cells[14].traceback = "frame\n" * 50_000 + "ValueError: the end"
    result.answers[0].text = "word " * 100_000
    html = build_report_html(result, tmp_path, CONFIG)
    assert len(html) < 200_000
    assert "ValueError: the end" in html  # a traceback keeps its last lines
    assert "characters left out above" in html and "more characters, not shown" in html


def test_rerender_reproduces_the_same_bytes(tmp_path):
    out = tmp_path / "OUT"
    results = [graded_result(out / "alice"), failed_result("error"), invalid_result()]
    first = {}
    for result in results:
        folder = out / result.submission
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(result.model_dump_json(indent=1))
        first[result.submission] = render_report(result, folder, CONFIG).read_bytes()
    written = rerender(out, CONFIG)
    assert {p.name for p in written} == {"report.pdf", "summary.pdf", "summary.json"}
    for submission, data in first.items():
        again = (out / submission / "report.pdf").read_bytes()
        assert hashlib.sha256(again).digest() == hashlib.sha256(data).digest(), submission
    summary = (out / "summary.pdf").read_bytes()
    render_summary(results, out, CONFIG)
    assert (out / "summary.pdf").read_bytes() == summary


def test_rerender_names_an_unreadable_result(tmp_path):
    with pytest.raises(ReportError, match="no \\*/result.json to render"):
        rerender(tmp_path, CONFIG)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text('{"submission": 3}')
    with pytest.raises(ReportError, match=r"broken/result.json: not a valid result record: submission"):
        rerender(tmp_path, CONFIG)
    assert (tmp_path / "summary.json").exists()  # the readable rest (none here) is still summarised


def test_summary_counts(tmp_path):
    results = [graded_result(tmp_path / "figs"), failed_result("error"), failed_result("timeout"),
               failed_result("crashed"), invalid_result()]
    pdf, json_path = render_summary(results, tmp_path, CONFIG)
    summary = json.loads(json_path.read_text())
    assert summary["submissions"] == 5
    assert summary["statuses"] == {"graded": 1, "error": 1, "timeout": 1, "crashed": 1, "invalid": 1}
    assert [row["submission"] for row in summary["list"]] == sorted(r.submission for r in results)
    questions = {q["id"]: q for q in summary["questions"]}
    assert questions["Q4"] == {"id": "Q4", "part": "3 tuning", "found": 0, "missing": 5, "over_limit": 0}
    assert questions["Q3"]["found"] == 4 and questions["Q3"]["over_limit"] == 4
    checks = {c["id"]: c for c in summary["checks"]}
    samples = [c for r in results for c in r.checks if c.id == "vae_tuned_samples"]
    assert checks["vae_tuned_samples"]["lost_points"] == sum(c.points < c.max_points for c in samples) == 4
    assert checks["vae_tuned_samples"]["not_scored"] == 1  # the invalid one has no checks
    assert checks["kl_divergence"]["mean_points"] == pytest.approx(2.0)
    text = pdf_text(pdf)
    assert "Class summary" in text
    for result in results:
        assert result.submission in text
    # summary.json is the ClassSummary record's: read back typed, it is the summary built
    typed = ClassSummary.model_validate_json(json_path.read_text())
    assert typed == build_summary(results, CONFIG) and typed.to_json() == json_path.read_text()
    assert [row.submission for row in typed.rows] == [row["submission"] for row in summary["list"]]
    assert typed.checks[0].id == summary["checks"][0]["id"] and typed.marking is None


# --- nothing from the grader's machine may end up in a PDF ------------------------------------


@pytest.fixture()
def secret(tmp_path) -> Path:
    path = tmp_path / "grader-secret.txt"
    path.write_text("TOP-SECRET-GRADER-TOKEN\n")
    return path


HOSTILE = '<link rel="attachment" href="{url}"> <img src="{url}"> <link rel="stylesheet" href="{url}">'


def test_default_weasyprint_would_embed_the_file(secret):
    """The attack is real: without our fetcher WeasyPrint attaches the file (so the next test can fail)."""
    html = "<p>hi</p>" + HOSTILE.format(url=secret.as_uri())
    reader = PdfReader(io.BytesIO(weasyprint.HTML(string=html).write_pdf()))
    assert any(b"TOP-SECRET" in data for contents in reader.attachments.values() for data in contents)


def test_report_renderer_fetches_nothing_but_data_urls(tmp_path, secret):
    html = "<p>hi</p>" + HOSTILE.format(url=secret.as_uri())
    pdf = html_to_pdf(html, tmp_path / "raw.pdf")
    reader = PdfReader(pdf)
    assert reader.attachments == {}
    assert not [image for page in reader.pages for image in page.images]
    fetcher = DataOnlyFetcher()
    with pytest.raises(ValueError):
        fetcher.fetch(secret.as_uri())
    assert fetcher.refused == [secret.as_uri()]
    assert fetcher.fetch("data:text/plain,ok").read() == b"ok"


def test_students_html_cannot_reach_the_grader_files(tmp_path, secret):
    result = invalid_result().model_copy(update={
        "status": "graded", "submission": "mallory",
        "answers": [Answer(id="Q1", found=True, limit=150, max_points=2, words=9,
                           text="My answer " + HOSTILE.format(url=secret.as_uri())
                           + f" ![x]({secret.as_uri()}) [y]({secret.as_uri()})")],
        "errors": [HOSTILE.format(url=secret.as_uri())],
        "figures": [FigureRef(kind="samples", role="ae", side="student", file=str(secret)),
                    FigureRef(kind="training_curves", file="../grader-secret.txt")],
    })
    html = build_report_html(result, tmp_path, CONFIG)
    assert "<link" not in html.split("</style>")[1] and "<img" not in html
    reader = PdfReader(render_report(result, tmp_path, CONFIG))
    assert reader.attachments == {}
    assert not [image for page in reader.pages for image in page.images]
    assert "My answer" in pdf_text(tmp_path / "report.pdf")


# --- figures ----------------------------------------------------------------------------------


def test_training_histories_keep_what_the_curves_draw(tmp_path):
    """A kernel's histories (any JSON) as records: entries that are no mapping left out, an odd
    epoch the entry's position, a loss that is no finite number None; the curves drawn from the
    record are the curves drawn from the kernel's values."""
    kernel = {"ae": [{"epoch": 1, "rec": 3.0}, "junk", {"rec": 2.0, "kl": "x"}, {"epoch": "one", "rec": float("inf")}],
              "vae": {"0.0": [{"epoch": 1, "rec": 28.0, "kl": 90.0}, {"epoch": 2, "rec": 27.0, "kl": 95.0}],
                      "tuned": "not a list"}}
    histories = TrainingHistories.model_validate(kernel)
    assert histories.ae == [EpochLosses(epoch=1, rec=3.0), EpochLosses(epoch=2, rec=2.0), EpochLosses(epoch=3)]
    assert histories.vae == {"0.0": [EpochLosses(epoch=1, rec=28.0, kl=90.0), EpochLosses(epoch=2, rec=27.0, kl=95.0)],
                             "tuned": []}
    assert TrainingHistories.model_validate_json(histories.model_dump_json()) == histories
    assert TrainingHistories.model_validate({"vae": ["not", "by", "beta"]}) == TrainingHistories()
    drawn = figures.training_curves_png(tmp_path / "kernel.png", kernel)
    assert figures.training_curves_png(tmp_path / "record.png", histories.model_dump()).read_bytes() == drawn.read_bytes()


def test_image_grid_is_drawn_pixel_for_pixel_with_captions_above_the_tiles(tmp_path):
    """A PIL grid: each image pixel a TILE_SCALE block at its tile's place, white gaps and empty
    slots, captions in the strip above a tile (dark text), nothing of a caption on the image."""
    from PIL import Image

    known = np.zeros((3, 28, 28))
    known[0, 5, 7] = 1.0                       # one white pixel on black
    known[1] = 1.0                             # all white
    known[2, :, 14:] = 0.5                     # right half mid-grey
    scale, gap, margin, caption = figures.TILE_SCALE, figures.GAP, figures.MARGIN, figures.CAPTION_PX
    side = 28 * scale
    plain = np.asarray(Image.open(figures.image_grid_png(tmp_path / "plain.png", known, ncols=2)))
    assert plain.shape == (2 * margin + gap + 2 * (side + gap), 2 * margin + gap + 2 * (side + gap))

    def tile(pixels: np.ndarray, row: int, col: int, strip: int = 0) -> np.ndarray:
        top = margin + gap + row * (side + strip + gap) + strip
        left = margin + gap + col * (side + gap)
        return pixels[top : top + side, left : left + side]

    first = tile(plain, 0, 0)
    assert (first[5 * scale : 6 * scale, 7 * scale : 8 * scale] == 255).all()
    assert first.sum() == 255 * scale * scale            # only that block is lit
    assert (tile(plain, 0, 1) == 255).all()
    assert (tile(plain, 1, 0)[:, : side // 2] == 0).all() and (tile(plain, 1, 0)[:, side // 2 :] == 128).all()
    assert (tile(plain, 1, 1) == 255).all()              # an empty slot is white
    assert (plain[:margin + gap] == 255).all() and (plain[:, margin + gap + side : margin + 2 * gap + side] == 255).all()

    titled = np.asarray(Image.open(figures.samples_png(tmp_path / "titled.png", known, [3, 7, 1], [0.5, 0.25, 1.0],
                                                       ncols=3)))
    assert titled.shape == (2 * margin + gap + side + caption + gap, 2 * margin + gap + 3 * (side + gap))
    assert np.array_equal(tile(titled, 0, 0, caption), first) and (tile(titled, 0, 1, caption) == 255).all()
    for col in range(3):
        left = margin + gap + col * (side + gap)
        strip = titled[margin + gap : margin + gap + caption, left : left + side]
        assert strip.min() < 100                         # the caption's text is there

    rows = np.asarray(Image.open(figures.interpolation_png(tmp_path / "rows.png", known[None], known[None, ::-1])))
    label_px = rows.shape[1] - 2 * margin - gap - 3 * (side + gap)
    assert rows.shape[0] == 2 * margin + gap + 2 * (side + gap) and label_px > 40   # room for "reference, path 1"
    shifted = rows[:, label_px:]
    assert np.array_equal(tile(shifted, 0, 0), first) and np.array_equal(tile(shifted, 1, 2), first)
    assert rows[margin:-margin, margin : label_px - figures.LABEL_GAP].min() < 100   # the labels


def test_figures_are_deterministic_pngs_without_software_metadata(tmp_path):
    images = np.random.default_rng(1).random((6, 784))  # flat rows are accepted too
    first = figures.image_grid_png(tmp_path / "a.png", images, titles=list("abcdef"), ncols=3).read_bytes()
    second = figures.image_grid_png(tmp_path / "b.png", images, titles=list("abcdef"), ncols=3).read_bytes()
    assert first == second and first.startswith(b"\x89PNG")
    assert b"Software" not in first and b"matplotlib" not in first.lower()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file
    assert figures.training_curves_png(tmp_path / "none.png", {"ae": None, "vae": {}}) is None
    assert figures.reconstructions_png(tmp_path / "none.png", images[:2], None, None) is None
    assert not (tmp_path / "none.png").exists()
    histogram = figures.score_histogram_png(tmp_path / "h.png", [0.0, 3.5, 18.0], 18.0)
    assert histogram.read_bytes().startswith(b"\x89PNG")


def test_the_three_number_formatters_are_one():
    # Outputs of report.fmt_number, score._fmt and reference._fmt as each wrote them before they
    # shared text.format_quantity: (value, report, score's messages, reference table at .4f / .1f).
    inf, nan = float("inf"), float("nan")
    expected = [
        (None, "—", "n/a", "-", "-"),
        (0, "0", "0", "0.0000", "0.0"),
        (5, "5", "5", "5.0000", "5.0"),
        (-3, "-3", "-3", "-3.0000", "-3.0"),
        (12345, "1.234e+04", "1.23e+04", "12345.0000", "12345.0"),
        (-0.0, "-0", "-0", "-0.0000", "-0.0"),
        (0.1234567, "0.1235", "0.1235", "0.1235", "0.1"),
        (0.001, "0.001", "0.001", "0.0010", "0.0"),
        (9.99e-4, "9.99e-04", "9.99e-04", "0.0010", "0.0"),
        (-2.5e-5, "-2.50e-05", "-2.50e-05", "-0.0000", "-0.0"),
        (1234.5678, "1235", "1235", "1234.5678", "1234.6"),
        (99999.4, "1e+05", "1.00e+05", "99999.4000", "99999.4"),
        (123456.7, "1.23e+05", "1.23e+05", "123456.7000", "123456.7"),
        (-inf, "-inf", "-inf", "-", "-"),
        (nan, "nan", "nan", "-", "-"),
    ]
    for value, in_report, in_messages, at_4f, at_1f in expected:
        assert fmt_number(value) == text.format_quantity(value) == in_report, value
        assert score._fmt(value) == in_messages, value
        assert reference._fmt(value, ".4f") == at_4f and reference._fmt(value, ".1f") == at_1f, value
    assert fmt_number(0.1234567, 3) == score._fmt(0.1234567, 3) == "0.123"
    assert fmt_number(True) == "True" and fmt_number("x") == "x"   # the `num` filter's other inputs


@pytest.mark.parametrize("count, ncols", [(1, 8), (2, 8), (8, 8), (12, 8), (9, 4), (30, 10), (7, 3)])
def test_image_grids_are_laid_out_as_torchvision_make_grid_lays_them_out(count, ncols):
    """figures._grid_image replaced torchvision.utils.make_grid (whose import costs 2 s): the same
    pixels for full and ragged rows and the one-tile case, against make_grid itself."""
    import torch
    from torchvision.utils import make_grid

    rng = np.random.default_rng(count)
    tiles = figures._tiles(rng.random((count, 28, 28)) * 1.2 - 0.1, count, caption_px=3)   # some out of [0, 1]
    theirs = make_grid(torch.from_numpy(tiles)[:, None], nrow=ncols, padding=figures.GAP, pad_value=1.0)[0]
    theirs_pixels = (theirs.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(figures._grid_image(tiles, ncols)), theirs_pixels)
