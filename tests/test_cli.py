"""The command line: clear messages and exit code 2 for bad input; the documented last lines."""

from __future__ import annotations

from typer.testing import CliRunner

from grader.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_missing_submissions_folder(tmp_path):
    result = run("grade", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "nope: no such file or folder" in result.output


def test_malformed_and_unknown_parameters(tmp_path):
    result = run("grade", "submissions", "--out", str(tmp_path / "out"), "-p", "EPOCHS")
    assert result.exit_code == 2 and "expected NAME=VALUE" in result.output
    result = run("check", "submissions/correct.ipynb", "--out", str(tmp_path / "out"), "-p", "EPOCHZ=2")
    assert result.exit_code == 2 and "unknown parameter 'EPOCHZ'" in result.output


def test_invalid_config_is_named(tmp_path):
    bad = tmp_path / "assignment.toml"
    bad.write_text("[assignment]\nname = 1\n")
    result = run("reference", "--config", str(bad))
    assert result.exit_code == 2 and str(bad) in result.output and "invalid assignment config" in result.output


def test_report_on_an_empty_folder(tmp_path):
    result = run("report", str(tmp_path))
    assert result.exit_code == 2 and str(tmp_path) in result.output


def test_classifier_evaluate_ends_with_the_accuracy():
    result = run("classifier", "evaluate")
    assert result.exit_code == 0
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("accuracy 0.") and float(last.split()[1]) >= 0.995
