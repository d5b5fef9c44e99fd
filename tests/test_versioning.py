"""Caches notice a new grader: each stage is redone exactly when code it depends on changed."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader import versioning
from grader.grade import GradeOptions, grade_submissions


@pytest.fixture
def package_copy(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "grader"
    shutil.copytree(versioning.PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    templates = tmp_path / "templates"
    shutil.copytree(versioning.TEMPLATES_DIR, templates)
    return root, templates


def digests(root: Path, templates: Path) -> tuple[str, str, str]:
    return (versioning.digest_of(root, versioning.EXECUTION_SOURCES),
            versioning.digest_of(root, versioning.RESULT_SOURCES, versioning.NOT_IN_RESULT),
            versioning.report_digest.__wrapped__(root, templates))


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


@pytest.mark.parametrize("changed, redone", [
    ("probe.py", (True, True, False)),          # what the kernel hands back: run and result again
    ("kernel_export.py", (True, True, False)),  # the export's text, run in the kernel
    ("sandbox.py", (True, True, False)),
    ("score.py", (False, True, False)),         # points only: re-score, reuse the run
    ("metrics/frechet.py", (False, True, False)),
    ("report.py", (False, False, True)),         # rendering only: the PDFs
    ("figures.py", (False, True, False)),        # the PNGs are made with the result
])
def test_each_source_changes_the_digests_of_the_stages_that_use_it(package_copy, changed, redone):
    root, templates = package_copy
    before = digests(root, templates)
    edit(root / changed)
    after = digests(root, templates)
    assert tuple(a != b for a, b in zip(before, after)) == redone


def _grader_imports(path: Path) -> set[str]:
    """The package's modules that the module at path imports (relative imports, lazy ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [alias.name for alias in node.names])
    return {f"{name.replace('.', '/')}.py" for name in found}


def test_the_run_is_keyed_on_every_module_that_drives_the_kernel_and_what_they_import():
    package = versioning.PACKAGE_DIR
    for source in versioning.EXECUTION_SOURCES:
        assert (package / source).is_file(), source
    reached, todo = set(), ["execute.py", "unitcheck.py"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(m for m in _grader_imports(package / module) if (package / m).is_file())
    assert reached <= set(versioning.EXECUTION_SOURCES), sorted(reached - set(versioning.EXECUTION_SOURCES))
    assert "kernel_export.py" in versioning.EXECUTION_SOURCES   # read as text: no import reaches it


def test_a_template_change_redraws_the_pdfs_only(package_copy):
    root, templates = package_copy
    before = digests(root, templates)
    edit(next(templates.glob("*.j2")))
    after = digests(root, templates)
    assert (before[0] == after[0], before[1] == after[1], before[2] != after[2]) == (True, True, True)


@pytest.mark.slow
def test_a_rerun_redoes_exactly_the_stages_whose_code_changed(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    params = new_code_cell("NZ = 16\nEPOCHS = 1\nDATA_DIR = './data'", metadata={"tags": ["parameters"]})
    nbformat.write(new_notebook(cells=[params, new_code_cell("x = 1")]), folder / "tiny.ipynb")
    out = tmp_path / "out"

    def run() -> dict[str, int]:
        grade_submissions(folder, GradeOptions(out_dir=out, preset="smoke"), log=lambda _: None, print_table=False)
        return {name: (out / "tiny" / name).stat().st_mtime_ns for name in ("execution.json", "result.json", "report.pdf")}

    first = run()
    assert run() == first                                   # nothing changed: nothing redone
    monkeypatch.setattr(versioning, "report_digest", lambda: "templates edited")
    third = run()
    assert third["execution.json"] == first["execution.json"] and third["result.json"] == first["result.json"]
    assert third["report.pdf"] != first["report.pdf"]
    monkeypatch.setattr(versioning, "result_digest", lambda: "scoring edited")
    fourth = run()
    assert fourth["execution.json"] == first["execution.json"] and fourth["result.json"] != third["result.json"]
    monkeypatch.setattr(versioning, "execution_digest", lambda: "sandbox edited")
    fifth = run()
    assert fifth["execution.json"] != first["execution.json"] and fifth["result.json"] != fourth["result.json"]
