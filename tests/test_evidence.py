"""A question's evidence for the marker: figures, numbers, and the saved outputs beside the re-run's.

Each test builds its own graded folder: a result.json, a tiny PNG, and the submitted and executed
notebooks written with nbformat (the executed one with the grader's injected cell, as a real run
has it).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from grader.config import Evidence, Question, load_config
from grader.errors import ConfigError
from grader.grade import keep_submission
from grader.marking.evidence import NOT_KEPT, question_evidence
from grader.paths import DEFAULT_CONFIG, REPO_ROOT
from grader.records import CellRun, FigureRef, Metrics, ModelFigures, SubmissionResult

CONFIG = load_config()
FOLDER = "alice"


def png_bytes(colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_output(colour: int):
    import base64

    return new_output("display_data", data={"image/png": base64.b64encode(png_bytes(colour)).decode(),
                                            "text/plain": "<Figure size 640x480 with 1 Axes>"})


def stream(text: str, name: str = "stdout"):
    return new_output("stream", name=name, text=text)


def code(source: str, outputs=(), count: int | None = None, **metadata):
    cell = new_code_cell(source, metadata=metadata)
    cell.outputs, cell.execution_count = list(outputs), count
    return cell


def notebook(train_log: str, *, samples=(png_output(10),), counts=(1, 2, 3, 4)) -> nbformat.NotebookNode:
    """A notebook whose training cell prints train_log and whose samples cell shows `samples`."""
    return new_notebook(cells=[
        new_markdown_cell("# Homework"),
        code("EPOCHS = 10", (), counts[0], tags=["parameters"]),
        code("ae, ae_history = train(beta=None)", [stream(train_log), png_output(200)], counts[1]),
        code('show_samples(ae, "AE")', list(samples), counts[2]),
        new_markdown_cell("**Answer:** blurry."),
        code("print('the end')", [stream("the end\n")], counts[3]),
    ])


def executed(submitted: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The submitted notebook with the grader's injected cell after the parameters cell."""
    nb = nbformat.from_dict(submitted)
    nb.cells.insert(2, code("# Parameters set by the grader\nEPOCHS = 1", (), 2, tags=["injected-parameters"]))
    return nb


def make_result() -> SubmissionResult:
    return SubmissionResult(
        submission=FOLDER, status="graded",
        metrics=Metrics(student={"ae": ModelFigures(mse=0.021234, sample_fid=43.21)},
                        reference={"ae": ModelFigures(mse=0.0151, sample_fid=41.0),
                                   "vae_beta0": ModelFigures(kl=251.0)}),
        figures=[FigureRef(kind="samples", role="ae", side="student", file="samples_ae_student.png"),
                 FigureRef(kind="reconstructions", role="ae", file="../outside.png")],
        cells=[CellRun(index=1, status="ok"), CellRun(index=2, status="ok"), CellRun(index=3, status="error"),
               CellRun(index=5, status="ok")],
    )


QUESTION = Question(
    id="Q1", part="1 AE", match="observations", points=2, limit=150,
    evidence=Evidence(figures=["samples_ae_student", "samples_ae_reference", "reconstructions_ae"],
                      metrics=["ae.mse", "ae.sample_fid", "vae_beta0.kl"],
                      cells=[r"show_samples\(\s*ae\b", r"train\(", r"never_in_this_notebook"]),
)


def graded_folder(out: Path, submitted: nbformat.NotebookNode | None, rerun: nbformat.NotebookNode | None = None) -> Path:
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples_ae_student.png").write_bytes(png_bytes(128))
    (out / "outside.png").write_bytes(png_bytes(0))   # named with a path: must not be followed
    (folder / "result.json").write_text(make_result().model_dump_json())
    if submitted is not None:
        nbformat.write(submitted, folder / "submitted.ipynb")
    if rerun is not None or submitted is not None:
        nbformat.write(rerun if rerun is not None else executed(submitted), folder / "executed.ipynb")
    return out


def evidence(out: Path, question: Question = QUESTION):
    return question_evidence(out, FOLDER, make_result(), question, CONFIG)


def cell(found, pattern: str):
    return next(c for c in found.cells if c.pattern == pattern)


LOG = "epoch 1/10: loss 96.50, KL 39.39\nepoch 2/10: loss 80.10, KL 30.02\n"


def test_figures_with_captions_and_data_uris_and_missing_ones_named(tmp_path):
    found = evidence(graded_folder(tmp_path, notebook(LOG)))
    assert [f.name for f in found.figures] == ["samples_ae_student"]
    figure = found.figures[0]
    assert figure.caption.startswith("Samples — Autoencoder")
    assert figure.uri.startswith("data:image/png;base64,iVBORw0KGgo")
    # not in the result at all, and one whose file name has a path in it
    assert found.missing_figures == ["samples_ae_reference", "reconstructions_ae"]


def test_metrics_student_beside_reference_with_labels(tmp_path):
    found = evidence(graded_folder(tmp_path, notebook(LOG)))
    rows = {m.key: m for m in found.metrics}
    assert list(rows) == ["ae.mse", "ae.sample_fid", "vae_beta0.kl"]
    assert rows["ae.mse"].label == "Reconstruction error (MSE per pixel) — Autoencoder"
    assert (rows["ae.mse"].student, rows["ae.mse"].reference) == ("0.02123", "0.0151")
    assert rows["ae.mse"].hint == "lower is better" and rows["ae.mse"].student_value == pytest.approx(0.021234)
    assert (rows["vae_beta0.kl"].student, rows["vae_beta0.kl"].reference) == ("—", "251")


def test_equal_outputs_and_losses_within_tolerance_do_not_differ(tmp_path):
    rerun_log = "epoch 1/10: loss 96.71, KL 39.20\nepoch 2/10: loss 80.02, KL 30.4\n"   # < 5% apart
    rerun = executed(notebook(rerun_log, samples=[png_output(99)]))
    found = evidence(graded_folder(tmp_path, notebook(LOG), rerun))
    assert found.saved_kept and not found.out_of_order and found.notes == []
    training = cell(found, r"train\(")
    assert training.index == 2 and training.rerun_status == "ok" and training.saved_execution_count == 2
    assert [i.kind for i in training.saved] == ["text", "image"] == [i.kind for i in training.rerun]
    assert "loss 96.50" in training.saved[0].text and "loss 96.71" in training.rerun[0].text
    assert not training.differs and training.reasons == []
    samples = cell(found, r"show_samples\(\s*ae\b")
    assert not samples.differs   # other pixels, same number of images: a retrained model
    assert found.unmatched_cells == ["never_in_this_notebook"]


def test_changed_text_differs_and_says_where(tmp_path):
    edited = LOG.replace("loss 80.10", "loss 12.00")
    found = evidence(graded_folder(tmp_path, notebook(edited), executed(notebook(LOG))))
    training = cell(found, r"train\(")
    assert training.differs
    assert training.reasons == ["text differs (line 2: saved 'epoch 2/10: loss 12.00, KL 30.02', "
                                "re-run 'epoch 2/10: loss 80.10, KL 30.02')"]
    words = evidence(graded_folder(tmp_path / "w", notebook(LOG.replace("KL", "kl")), executed(notebook(LOG))))
    assert cell(words, r"train\(").differs


def test_missing_saved_outputs_image_counts_and_copied_images_differ(tmp_path):
    submitted = notebook(LOG, samples=[])
    found = evidence(graded_folder(tmp_path, submitted, executed(notebook(LOG))))
    assert cell(found, r"show_samples\(\s*ae\b").reasons == ["the saved notebook has no outputs for this cell"]

    # two saved images where the re-run drew one, and one of them copied from the training cell
    submitted = notebook(LOG, samples=[png_output(10), png_output(200)])
    found = evidence(graded_folder(tmp_path / "two", submitted, executed(notebook(LOG))))
    reasons = cell(found, r"show_samples\(\s*ae\b").reasons
    assert reasons == ["2 image(s) saved, 1 in the re-run", "a saved image is byte-identical to one saved in cell 2"]


def test_untrusted_output_types_never_pass_through(tmp_path):
    hostile = [
        new_output("display_data", data={"text/html": "<img src=x onerror=alert(1)>",
                                         "image/svg+xml": "<svg onload=alert(2)></svg>",
                                         "application/javascript": "alert(3)"}),
        new_output("execute_result", data={"text/html": "<script>alert(4)</script>", "text/plain": "a table"},
                   execution_count=3),
        new_output("display_data", data={"image/png": "PHNjcmlwdD5hbGVydCg1KTwvc2NyaXB0Pg=="}),  # not a PNG
        new_output("display_data", data={"image/png": "iVBORw0KGgo\"><script>"}),                  # not base64
        new_output("error", ename="ValueError", evalue="\x1b[31mbad\x1b[0m value", traceback=["<b>tb</b>"]),
    ]
    submitted = notebook(LOG, samples=hostile)
    found = evidence(graded_folder(tmp_path, submitted))
    items = cell(found, r"show_samples\(\s*ae\b").saved
    assert [i.kind for i in items] == ["omitted", "text", "omitted", "omitted", "error"]
    assert items[1].text == "a table" and items[4].text == "ValueError: bad value"
    assert "text/html" in items[0].text and "not shown" in items[0].text
    dumped = found.model_dump_json()
    for marker in ("alert", "<script", "<svg", "onerror", "<b>", "\\u001b"):
        assert marker not in dumped, marker


def test_out_of_order_execution_is_a_notebook_note(tmp_path):
    found = evidence(graded_folder(tmp_path, notebook(LOG, counts=(1, 7, 3, 8))))
    assert found.out_of_order
    assert any("run out of order" in n and "cell 3 has execution count 3" in n for n in found.notes)
    assert not evidence(graded_folder(tmp_path / "ok", notebook(LOG, counts=(1, 2, None, 9)))).out_of_order


def test_folder_of_an_older_grader_shows_the_rerun_only(tmp_path):
    out = graded_folder(tmp_path, None, executed(notebook(LOG)))
    found = evidence(out)
    assert not found.saved_kept and found.notes == [NOT_KEPT]
    training = cell(found, r"train\(")
    assert training.saved is None and training.rerun and not training.differs
    # positions as in the submission: the executed notebook's injected cell is not counted
    samples = cell(found, r"show_samples\(\s*ae\b")
    assert (training.index, training.rerun_status) == (2, "ok")
    assert (samples.index, samples.rerun_status) == (3, "error")


def test_unreadable_notebooks_are_notes_not_failures(tmp_path):
    out = graded_folder(tmp_path, notebook(LOG))
    (out / FOLDER / "submitted.ipynb").write_text("{ not json")
    (out / FOLDER / "executed.ipynb").unlink()
    found = evidence(out)
    assert found.cells == [] and len(found.unmatched_cells) == 3
    assert any("submitted.ipynb could not be read" in n for n in found.notes)
    assert any("re-run was not kept" in n for n in found.notes)


def test_a_changed_notebook_is_read_again_and_a_view_is_fast(tmp_path):
    out = graded_folder(tmp_path, notebook(LOG))
    assert not cell(evidence(out), r"train\(").differs
    path = out / FOLDER / "submitted.ipynb"
    nbformat.write(notebook(LOG.replace("96.50", "10.00")), path)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert cell(evidence(out), r"train\(").differs

    # the real sample notebook, as submitted and as executed: one view after the first
    sample = REPO_ROOT / "submissions" / "correct.ipynb"
    shutil.copy(sample, out / FOLDER / "submitted.ipynb")
    shutil.copy(sample, out / FOLDER / "executed.ipynb")
    question = CONFIG.questions[1]
    evidence(out, question)
    started = time.perf_counter()
    for _ in range(10):
        found = evidence(out, question)
    assert (time.perf_counter() - started) / 10 < 0.05
    assert found.cells and found.cells[0].saved and not found.cells[0].differs


@pytest.mark.parametrize("old, new, expected", [
    ('"ae.mse", "ae.sample_confidence"', '"ae.mse", "ae.sample_confidense"',
     r"question Q1: evidence metric 'ae.sample_confidense': no measured figure 'sample_confidense'"),
    ('"vae_beta0.kl", "vae_beta0.mse"', '"vae_beta0.kl", "vae_beta0mse"',
     r"question Q2: evidence metric 'vae_beta0mse' is not of the form role.field"),
    ('"vae_beta10.kl", "vae_beta10.mse"', '"vae_beta10.kl", "vae_beta1.mse"',
     r"question Q3: evidence metric 'vae_beta1.mse' names the role 'vae_beta1', which is not a model"),
])
def test_a_typo_in_evidence_metrics_fails_at_load_naming_the_question(tmp_path, old, new, expected):
    import re

    shipped = DEFAULT_CONFIG.read_text()
    assert old in shipped
    path = tmp_path / "assignment.toml"
    path.write_text(shipped.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and re.search(expected, str(info.value)), str(info.value)


def test_grade_keeps_a_bounded_copy_of_the_submission(tmp_path):
    source = tmp_path / "in" / "bob.ipynb"
    source.parent.mkdir()
    nbformat.write(notebook(LOG), source)
    before = source.read_bytes()
    keep_submission(source, tmp_path / "out" / "bob")
    assert (tmp_path / "out" / "bob" / "submitted.ipynb").read_bytes() == before == source.read_bytes()
    link = tmp_path / "in" / "link.ipynb"
    link.symlink_to(source)
    (tmp_path / "out" / "link").mkdir()
    (tmp_path / "out" / "link" / "submitted.ipynb").write_text("left from an earlier run")
    keep_submission(link, tmp_path / "out" / "link")   # a link is never followed, and no stale copy stays
    assert not (tmp_path / "out" / "link" / "submitted.ipynb").exists()
