"""Hostile or careless inputs: file names and file types that must not stop or fool the batch,
messages a student can act on, and a notebook whose parameters cell is not tagged.

The unit tests need no kernel; one module-scoped batch (smoke parameters, real sandboxed kernels
for the three real notebooks in it) checks the whole pipeline end to end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.config import load_config
from grader.execute import NotebookInvalid, read_notebook, read_submission
from grader.grade import CLASS_FILES, GradeOptions, discover, grade_submissions, output_name
from grader.hints import DEVICE_LINE, hint_for
from grader.inject import INJECTED_TAG, inject_parameters, locate_parameters, placement_warning
from grader.records import CellRun

CONFIG = load_config()
NAMES = list(CONFIG.parameters.spec)
SECRET = "SECRET-d41d8cd98f00b204"   # in the target of a link: must never reach OUT


def tiny_notebook(*sources: str, tagged: bool = True) -> nbformat.NotebookNode:
    params = new_code_cell("NZ = 16\nEPOCHS = 10\nDATA_DIR = './data'",
                           metadata={"tags": ["parameters"]} if tagged else {})
    cells = [new_markdown_cell("# A tiny notebook"), params] + [new_code_cell(s) for s in sources]
    return new_notebook(cells=cells)


def write_raw(path: Path, mutate) -> Path:
    data = json.loads(nbformat.writes(tiny_notebook("x = 1")))
    mutate(data)
    path.write_text(json.dumps(data))
    return path


# --- output folder names ---------------------------------------------------------------------


def test_output_names_never_take_the_graders_own_files():
    from grader import report

    # every file the grader writes next to the submissions' folders is reserved
    assert {report.SUMMARY_PDF, report.SUMMARY_JSON, report.SUMMARY_HISTOGRAM, "gradebook.csv"} <= CLASS_FILES
    for name in CLASS_FILES | {"Gradebook.CSV", "SUMMARY.json", "results.csv", "notes.txt"}:
        folder = output_name(Path(f"{name}.ipynb"))
        assert folder.lower() not in CLASS_FILES and folder != name, name
        assert folder.startswith(name[:5]), folder   # still recognisable


@pytest.mark.parametrize("stem", [".hidden", "-rf", "a b", "a\\b", "naïve", "ü" * 3,
                                  "x\ny", "a;rm -rf", "..", "名前", "x" * 300, "$(reboot)"])
def test_output_names_are_safe(stem):
    folder = output_name(Path(f"{stem}.ipynb"))
    assert folder and not folder.startswith((".", "-"))
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in folder), folder
    assert len(folder) <= 100
    assert output_name(Path(f"/elsewhere/{stem}.ipynb")) == folder  # stable: the name alone decides


def test_output_names_are_readable_and_unique():
    assert output_name(Path("correct.ipynb")) == "correct"
    assert output_name(Path("jane.doe_hw3-v2.ipynb")) == "jane.doe_hw3-v2"
    similar = ["a b", "a_b", "a?b", "a  b", "a\tb", "gradebook.csv", "gradebook_csv"]
    folders = [output_name(Path(f"{s}.ipynb")) for s in similar]
    # a name chosen to equal another's hashed folder gets a folder of its own
    similar.append(output_name(Path("a b.ipynb")))
    folders.append(output_name(Path(f"{similar[-1]}.ipynb")))
    assert len(set(folders)) == len(folders), folders


def test_discover_keeps_what_is_not_a_notebook_file(tmp_path):
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "dir.ipynb").mkdir()
    (tmp_path / "link.ipynb").symlink_to("/etc/hostname")
    (tmp_path / "dangling.ipynb").symlink_to(tmp_path / "nothing")
    (tmp_path / ".hidden.ipynb").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    assert [p.name for p in discover(tmp_path)] == ["a.ipynb", "dangling.ipynb", "dir.ipynb", "link.ipynb"]


# --- reading a submission --------------------------------------------------------------------


def test_a_symbolic_link_is_refused_without_reading_its_target(tmp_path, monkeypatch):
    target = tmp_path / "secret.ipynb"
    nbformat.write(tiny_notebook(f"print({SECRET!r})"), target)
    link = tmp_path / "link.ipynb"
    link.symlink_to(target)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    with pytest.raises(NotebookInvalid, match=r"link\.ipynb is a symbolic link; submit the notebook file itself"):
        read_notebook(link)
    assert str(target) not in opened
    # a link in the submissions' place that points at a directory or a FIFO: the same, no hang
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifo-link.ipynb").symlink_to(tmp_path / "fifo")
    with pytest.raises(NotebookInvalid, match="symbolic link"):
        read_submission(tmp_path / "fifo-link.ipynb")


def test_files_that_are_not_notebook_files(tmp_path):
    (tmp_path / "x.ipynb").mkdir()
    with pytest.raises(NotebookInvalid, match=r"x\.ipynb is a directory, not a notebook"):
        read_notebook(tmp_path / "x.ipynb")
    os.mkfifo(tmp_path / "pipe.ipynb")   # opening it for reading would block forever
    with pytest.raises(NotebookInvalid, match="is a named pipe, not a notebook"):
        read_notebook(tmp_path / "pipe.ipynb")
    big = tmp_path / "big.ipynb"
    nbformat.write(tiny_notebook("x = 1"), big)
    with pytest.raises(NotebookInvalid, match="too large"):
        read_submission(big, max_bytes=100)
    assert read_submission(big) == big.read_bytes()


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d["cells"][2].__setitem__("source", 5), r"cell 2 \(a code cell\): its 'source' must be text"),
    (lambda d: d["cells"][0].__setitem__("metadata", [1, 2]),
     r"cell 0 \(a markdown cell starting '# A tiny notebook'\): its 'metadata' must be a mapping.*not \[1, 2\]"),
    (lambda d: d["cells"][1]["metadata"].__setitem__("tags", "parameters"), r"cell 1 .*'metadata.tags' must be a list"),
    (lambda d: d["cells"][2].__setitem__("outputs", {}), r"cell 2 .*'outputs' must be a list"),
    (lambda d: d["cells"][2].__setitem__("cell_type", "python"), r"cell 2 .*'cell_type' must be one of"),
    (lambda d: d["cells"].append(7), r"cell 3 is not a cell"),
    (lambda d: d.pop("metadata"), r"the notebook lacks the field 'metadata'"),
    (lambda d: d.__setitem__("nbformat", 9), r"format version is 9"),
])
def test_schema_violations_name_the_file_and_the_cell(tmp_path, mutate, words):
    path = write_raw(tmp_path / "student.ipynb", mutate)
    with pytest.raises(NotebookInvalid, match=words) as caught:
        read_notebook(path)
    assert str(caught.value).startswith("student.ipynb: ")


def test_an_invalid_notebook_is_invalid_before_any_kernel_starts(tmp_path, monkeypatch):
    import grader.execute as execute_module

    monkeypatch.setattr(execute_module, "Sandbox", None)   # any attempt to run it would raise
    for name, mutate in [("source5", lambda d: d["cells"][2].__setitem__("source", 5)),
                         ("metalist", lambda d: d["cells"][0].__setitem__("metadata", [1, 2]))]:
        path = write_raw(tmp_path / f"{name}.ipynb", mutate)
        result = execute_module.execute_notebook(path, tmp_path / f"scratch-{name}", {"EPOCHS": 1},
                                                 config=CONFIG, data_dir=tmp_path)
        assert result.status == "invalid" and result.errors[0].startswith(f"{name}.ipynb: not a valid"), result
    (tmp_path / "x.ipynb").mkdir()
    result = execute_module.execute_notebook(tmp_path / "x.ipynb", tmp_path / "s", {}, config=CONFIG, data_dir=tmp_path)
    assert result.status == "invalid" and "is a directory, not a notebook" in result.errors[0]


def test_harmless_irregularities_still_read(tmp_path):
    def extra(d):
        d["nbformat_minor"] = 4                   # ids in a 4.4 notebook: Jupyter opens it
        d["cells"][2]["vscode_extra"] = {"x": 1}  # an editor's own key
        del d["cells"][1]["id"]
    nb = read_notebook(write_raw(tmp_path / "ok.ipynb", extra))
    assert nb.cells[2].source == "x = 1"


# --- hints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("error, expected", [
    ("RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU",
     ["cell 4 asks for a CUDA GPU", "CPU-only", DEVICE_LINE]),
    ("AssertionError: Torch not compiled with CUDA enabled", ["cell 4 asks for a CUDA GPU", DEVICE_LINE]),
    ("ModuleNotFoundError: No module named 'google'", ["Colab", "drive.mount", "except ImportError", "DATA_DIR"]),
    ("ModuleNotFoundError: No module named 'google.colab'", ["Colab", "except ImportError"]),
    ("URLError: <urlopen error [Errno -3] Temporary failure in name resolution>", ["without network", "pip install"]),
    ("ModuleNotFoundError: No module named 'seaborn'", ["'seaborn'", "no network"]),
    ("FileNotFoundError: [Errno 2] No such file or directory: '/content/drive/MyDrive/vae.pt'",
     ["'/content/drive/MyDrive/vae.pt'", "only on your machine", "only the notebook and DATA_DIR"]),
    ("FileNotFoundError: [Errno 2] No such file or directory: '/scratch/data/MNIST/processed/x.pt'",
     ["inside DATA_DIR", "torchvision.datasets.MNIST(DATA_DIR"]),
])
def test_hints_for_errors_of_the_graders_environment(error, expected):
    hint = hint_for(4, error, None, data_dir="/scratch/data", data_parameter="DATA_DIR")   # the config's name
    assert hint is not None
    for words in expected:
        assert words in hint, (words, hint)


def test_hints_name_the_configs_data_parameter():
    hint = hint_for(4, "RuntimeError: Dataset not found. You can use download=True", None, data_parameter="DATA_ROOT")
    assert "torchvision.datasets.MNIST(DATA_ROOT" in hint and "DATA_DIR" not in hint
    assert "the data folder parameter" in hint_for(4, "RuntimeError: Dataset not found.", None)


def test_no_hint_for_the_students_own_bugs():
    assert hint_for(2, "ZeroDivisionError: division by zero", "1 / 0") is None
    assert hint_for(2, "NameError: name 'vae' is not defined", "  # we use google.colab on Colab") is None
    assert CellRun(index=0, status="ok").hint is None


# --- the parameters cell ---------------------------------------------------------------------


COLAB_PARAMETERS = ("%matplotlib inline\n!pip -q install torchsummary\nNZ = 16\nEPOCHS: int = 10\n"
                    "BATCH_SIZE, LR = 128, 1e-3\nif True:\n    DATA_DIR = './data'\nSEED = 0\n")


def test_the_cell_that_sets_the_parameters_is_found_without_a_tag():
    nb = new_notebook(cells=[
        new_markdown_cell("# VAE"), new_code_cell("import torch\nEPOCHS = 3"),
        new_code_cell(COLAB_PARAMETERS), new_code_cell("EPOCHS = 50"),
    ])
    placement = locate_parameters(nb, NAMES)
    assert placement.guessed == 2 and placement.position == 3
    assert placement.sets == ["NZ", "EPOCHS", "BATCH_SIZE", "LR", "DATA_DIR", "SEED"]
    warning = placement_warning(placement, "hw.ipynb")
    assert "no cell is tagged 'parameters'; the grader treated cell 2 (which sets NZ, EPOCHS" in warning
    assert "set its values after it" in warning and "Tags" in warning
    injected = inject_parameters(nb, {"EPOCHS": 1, "NZ": 16, "DATA_DIR": "/d"})
    assert INJECTED_TAG in injected.cells[3].metadata.tags and "EPOCHS = 1" in injected.cells[3].source


def test_without_such_a_cell_the_warning_says_which_later_assignments_win():
    nb = new_notebook(cells=[new_code_cell("import torch"), new_code_cell("%%time\nEPOCHS = 10\nNZ = 8"),
                             new_code_cell("def f():\n    LR = 1\n    SEED = 2\n    BATCH_SIZE = 3")])
    placement = locate_parameters(nb, NAMES)
    assert placement.guessed is None and placement.position == 0
    assert placement.later == {"EPOCHS": 1, "NZ": 1}
    warning = placement_warning(placement, "hw.ipynb")
    assert "EPOCHS (cell 1)" in warning and "win over the grader's values" in warning
    assert "run out of time" in warning
    tagged = new_notebook(cells=[new_code_cell("EPOCHS = 2", metadata={"tags": ["parameters"]})])
    assert placement_warning(locate_parameters(tagged, NAMES), "hw.ipynb") is None


# --- the whole batch -------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict:
    """Every entry of folder (links as links), with its content hash and mtime."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = (os.readlink(path) if path.is_symlink() else
                   hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
        state[str(path.relative_to(folder))] = (content, info.st_mtime_ns, info.st_mode)
    return state


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "in"
    folder.mkdir()
    outside = root / "outside"
    outside.mkdir()
    nbformat.write(tiny_notebook(f"print({SECRET!r})"), outside / "secret.ipynb")
    # Each submission costs ~10 s of measuring and drawing even when invalid, so each one here
    # plays two parts: a name the grader's own files had, and a file that is not a notebook.
    nbformat.write(tiny_notebook("x = 1"), folder / "gradebook.csv.ipynb")     # a well-behaved one
    (folder / "summary.json.ipynb").symlink_to(outside / "secret.ipynb")
    (folder / "summary.pdf.ipynb").mkdir()
    (folder / "summary.pdf.ipynb" / "inside.ipynb").write_text("{}")
    write_raw(folder / "summary_scores.png.ipynb", lambda d: d["cells"][2].__setitem__("source", 5))
    colab = new_notebook(cells=[
        new_markdown_cell("# Colab-style, no tags"),
        new_code_cell(COLAB_PARAMETERS.replace("!pip -q install torchsummary\n", "")
                      + "TRAIN_SUBSET = None\nSTART_LABEL, END_LABEL = 1, 9"),
        new_code_cell("print(EPOCHS, TRAIN_SUBSET)"),
        new_code_cell("import torch\nx = torch.zeros(1).cuda()"),
        new_code_cell("from google.colab import drive\ndrive.mount('/content/drive')"),
        new_code_cell("import urllib.request\nurllib.request.urlopen('http://mnist.example.invalid/train.gz', timeout=5)"),
        new_code_cell("open('/home/student/Downloads/vae_weights.pt', 'rb')"),
    ])
    nbformat.write(colab, folder / "colab.ipynb")
    before = _snapshot(root)
    out = root / "out"
    results = grade_submissions(folder, GradeOptions(out_dir=out, preset="smoke", workers=2), log=lambda _: None,
                                print_table=False)
    return root, folder, out, {r.submission: r for r in results}, before


def test_every_hostile_submission_gets_a_result_a_report_and_a_row(batch):
    root, folder, out, results, _ = batch
    expected = {"gradebook.csv": "graded", "summary.json": "invalid", "summary.pdf": "invalid",
                "summary_scores.png": "invalid", "colab": "error"}
    assert {name: r.status for name, r in results.items()} == expected
    assert (out / "gradebook.csv").is_file() and (out / "summary.json").is_file() and (out / "summary.pdf").is_file()
    with open(out / "gradebook.csv") as handle:
        rows = {row[0]: row[1] for row in list(csv.reader(handle))[1:]}
    assert rows == expected
    for name in expected:
        folder_name = output_name(folder / f"{name}.ipynb")
        assert (out / folder_name / "result.json").is_file() and (out / folder_name / "report.pdf").is_file(), name
        assert json.loads((out / folder_name / "result.json").read_text())["submission"] == name
    assert not any((out / name).is_dir() for name in CLASS_FILES)


def test_invalid_submissions_say_why(batch):
    _, _, _, results, _ = batch
    said = {name: " ".join(results[name].errors) for name in ("summary.json", "summary.pdf", "summary_scores.png")}
    assert "summary.json.ipynb is a symbolic link; submit the notebook file itself" in said["summary.json"]
    assert "summary.pdf.ipynb is a directory, not a notebook" in said["summary.pdf"]
    schema = said["summary_scores.png"]
    assert "summary_scores.png.ipynb" in schema and "cell 2" in schema and "'source'" in schema
    for name in said:
        assert not any("could not run" in e or "grader failed" in e for e in results[name].errors), name
        assert not any(a.found for a in results[name].answers)


def test_nothing_of_a_links_target_reaches_the_output(batch):
    _, _, out, _, _ = batch
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".pdf":
                data = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True).stdout
            assert SECRET.encode() not in data, path


def test_the_originals_are_untouched(batch):
    root, _, _, _, before = batch
    now = _snapshot(root)
    assert {k: v for k, v in now.items() if k != "out" and not k.startswith("out/")} == before


def test_hostile_neighbours_change_nothing_for_the_others(batch, tmp_path):
    _, folder, out, results, _ = batch
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "gradebook.csv.ipynb", alone)
    solo = grade_submissions(alone, GradeOptions(out_dir=tmp_path / "out", preset="smoke", pdf=False),
                             log=lambda _: None, print_table=False)[0]

    def numbers(r):
        return (r.status, r.score, r.checks, r.metrics, r.answers, [(c.index, c.status, c.error) for c in r.cells])

    assert numbers(solo) == numbers(results["gradebook.csv"])


def test_a_rerun_uses_the_same_folders(batch):
    _, folder, out, results, _ = batch
    folders = sorted(p.name for p in out.iterdir())
    again = grade_submissions(folder, GradeOptions(out_dir=out, preset="smoke"), log=lambda _: None, print_table=False)
    assert sorted(p.name for p in out.iterdir()) == folders
    assert {r.submission: r.status for r in again} == {n: r.status for n, r in results.items()}


def test_untagged_parameters_cell_is_found_and_errors_get_hints(batch):
    _, folder, out, results, _ = batch
    colab = results["colab"]
    assert any("no cell is tagged 'parameters'; the grader treated cell 1 (which sets NZ, EPOCHS" in e
               for e in colab.errors)
    executed = nbformat.read(out / output_name(folder / "colab.ipynb") / "executed.ipynb", as_version=4)
    assert INJECTED_TAG in executed.cells[2].metadata.tags
    printed = "".join(o.get("text", "") for o in executed.cells[3].outputs)
    assert printed.split() == ["1", "2048"]   # the smoke preset's values won over the notebook's 10 and None
    cells = {c.index: c for c in colab.cells}
    import torch

    if not torch.cuda.is_available():
        assert cells[3].status == "error" and "cell 3 asks for a CUDA GPU" in cells[3].hint
    assert cells[4].status == "error" and "Colab" in cells[4].hint
    assert cells[5].status == "error" and "network" in cells[5].hint, cells[5].error
    assert cells[6].status == "error" and "only on your machine" in cells[6].hint
    report = subprocess.run(["pdftotext", str(out / output_name(folder / "colab.ipynb") / "report.pdf"), "-"],
                            capture_output=True, text=True, check=True).stdout
    flat = " ".join(report.split())
    assert "What to change:" in flat and "only on your machine" in flat and "guard them with" in flat


def test_an_out_of_memory_error_says_what_the_limit_is():
    from grader.hints import hint_for

    hint = hint_for(7, "MemoryError: Unable to allocate 100. MiB for an array", memory_mb=6144)
    assert "cell 7 ran out of memory" in hint and "6144 MB" in hint
