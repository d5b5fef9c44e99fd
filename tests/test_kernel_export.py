"""The export (grader/kernel_export.py) run in the grader's own process on a small namespace, and
its text as the kernel gets it: the same module, the same files."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from grader import kernel_export
from grader.config import load_config
from grader.exporting import export_code, export_source
from grader.kernel_export import run_export

SPEC = {
    "models": {"tiny": "net", "absent": "no_such_model", "not_a_model": "text", "too_big": "big"},
    "best_beta": "best_beta",
    "histories": {"history.tiny": "losses", "history.odd": "odd_history"},
    "max_history": 3,
    "max_elements": 20,
    "weights_file": "weights.npz",
    "values_file": "probe.json",
}


def tiny_namespace() -> dict:
    torch.manual_seed(0)
    return {
        "net": torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)),   # 13 weights
        "text": "a model, honest",
        "big": torch.nn.Linear(10, 10),                                                              # 110 weights
        "best_beta": torch.tensor(2.5),
        "losses": [{"epoch": 1, "rec": torch.tensor(3.0)}, {"epoch": 2, "rec": float("nan")},
                   {"epoch": 3, "rec": 1.0}, {"epoch": 4, "rec": 0.5}],
        "odd_history": [object()],
    }


def written(workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(workdir / SPEC["weights_file"], allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return arrays, json.loads((workdir / SPEC["values_file"]).read_text())


def test_the_export_writes_the_weights_and_plain_values_and_says_what_it_could_not(tmp_path):
    ns = tiny_namespace()
    run_export(ns, SPEC, str(tmp_path))
    arrays, probe = written(tmp_path)
    state = ns["net"].state_dict()
    assert set(arrays) == {f"tiny/{name}" for name in state}        # nothing of the refused models
    for name, tensor in state.items():
        assert arrays[f"tiny/{name}"].dtype == np.float32
        np.testing.assert_array_equal(arrays[f"tiny/{name}"], tensor.numpy())
    errors, values = probe["errors"], probe["values"]
    assert errors["absent"] == "NameError: name 'no_such_model' is not defined"
    assert errors["not_a_model"] == "TypeError: text is a str, not a torch.nn.Module"
    assert errors["too_big"] == "ValueError: big has more than 20 weights"
    assert values["best_beta"] == 2.5
    assert values["history.tiny"] == [{"epoch": 1.0, "rec": 3.0}, {"epoch": 2.0, "rec": None}, {"epoch": 3.0, "rec": 1.0}]
    assert errors["history.tiny"] == "losses has 4 entries; the first 3 are drawn"
    assert errors["history.odd"] == "TypeError: unsupported object" and "history.odd" not in values
    assert set(errors) == {"absent", "not_a_model", "too_big", "history.tiny", "history.odd"}


def test_a_best_beta_that_is_no_number_is_said_and_missing_values_are_left_out(tmp_path):
    ns = {"net": torch.nn.Linear(1, 1), "best_beta": "large"}
    run_export(ns, SPEC, str(tmp_path))
    _, probe = written(tmp_path)
    assert probe["errors"]["best_beta"] == "best_beta is not a number: 'large'"
    assert "history.tiny" not in probe["values"] and "history.odd" not in probe["values"]


def test_the_text_sent_to_the_kernel_is_the_module_and_writes_what_the_import_writes(tmp_path, monkeypatch):
    source = export_source()
    assert source == Path(kernel_export.__file__).read_text(encoding="utf-8")
    code = export_code(load_config())
    assert code.startswith(source)
    imported_dir, kernel_dir = tmp_path / "imported", tmp_path / "kernel"
    imported_dir.mkdir()
    kernel_dir.mkdir()
    run_export(tiny_namespace(), SPEC, str(imported_dir))
    monkeypatch.chdir(kernel_dir)
    ns = tiny_namespace()
    before = set(ns)
    call = f"\nrun_export(globals(), __import__('json').loads({json.dumps(SPEC)!r}))\ndel run_export\n"
    exec(compile(source + call, "<kernel>", "exec"), ns)  # noqa: S102 - as the kernel runs it
    assert set(ns) - {"__builtins__"} == before                       # the student's names, no more, no __doc__
    by_import, by_text = written(imported_dir), written(kernel_dir)
    assert by_import[1] == by_text[1]
    assert by_import[0].keys() == by_text[0].keys()
    for key, array in by_import[0].items():
        np.testing.assert_array_equal(array, by_text[0][key])


def test_the_module_defines_only_run_export_and_runs_after_the_probe_cells_chdir():
    statements = ast.parse(export_source()).body
    assert [type(s).__name__ for s in statements] == ["FunctionDef"] and statements[0].name == "run_export"
    compile("__import__('os').chdir('.')\n" + export_source(), "<probe cell>", "exec")   # no __future__ line


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_history_numbers_become_null(tmp_path, value):
    run_export({"losses": [value, 1]}, SPEC, str(tmp_path))
    assert written(tmp_path)[1]["values"]["history.tiny"] == [None, 1.0]
