"""The `grader` command line: one entry point, one sub-command per job (typer)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import GraderError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Grade autoencoder/VAE notebooks.")
classifier_app = typer.Typer(no_args_is_help=True, help="The MNIST classifier that judges samples.")
app.add_typer(classifier_app, name="classifier")
marks_app = typer.Typer(no_args_is_help=True, help="Staff marks of the written answers as spreadsheets.")
app.add_typer(marks_app, name="marks")

ConfigOpt = typer.Option(None, "--config", help="Assignment config (default: reference/assignment.toml).")
ParamOpt = typer.Option([], "-p", "--parameter", help="Override a notebook parameter: NAME=VALUE (repeatable).")


def _log(message: str) -> None:
    typer.echo(message, err=True)


def _user_errors(command):
    """A GraderError (bad input the user can fix) becomes one red line and exit code 2."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GraderError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None

    return run


def _overrides(pairs: list[str]) -> dict:
    from .config import parse_override

    return dict(parse_override(p) for p in pairs)


@app.command()
@_user_errors
def data(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="MNIST root (default: the per-user cache)."),
    source: Optional[Path] = typer.Option(None, "--source", help="A directory that already holds the idx files."),
) -> None:
    """Provision MNIST (the four canonical idx files, md5-verified) without internet."""
    from .data import ensure_mnist

    root = ensure_mnist(data_dir, source_dir=source, log=_log)
    typer.echo(f"MNIST ready in {root / 'MNIST' / 'raw'}")


@classifier_app.command("train")
@_user_errors
def classifier_train(
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the weights (default: the config's)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Train the sample-judging CNN deterministically; prints its test accuracy and SHA-256."""
    from .classifier import DEFAULT_EPOCHS, file_sha256, train_classifier
    from .config import load_config

    cfg = load_config(config)
    target = out or cfg.path(cfg.classifier.weights)
    accuracy = train_classifier(target, seed=cfg.classifier.seed if seed is None else seed,
                                epochs=DEFAULT_EPOCHS if epochs is None else epochs, log=_log)
    typer.echo(f"weights {target}\nsha256 {file_sha256(target)}\naccuracy {accuracy:.4f}")


@classifier_app.command("evaluate")
@_user_errors
def classifier_evaluate(config: Optional[Path] = ConfigOpt) -> None:
    """Accuracy of the shipped (hash-checked) classifier on the 10 000 MNIST test images."""
    from .classifier import evaluate_configured
    from .config import load_config

    accuracy = evaluate_configured(load_config(config))
    typer.echo(f"accuracy {accuracy:.4f}")


@app.command()
@_user_errors
def reference(
    parameter: list[str] = ParamOpt,
    preset: Optional[str] = typer.Option(None, "--preset", help="A parameter preset from the config (quick, smoke)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Train (or load from the cache) the solution's AE and VAEs under the given parameters."""
    import torch

    from .config import load_config
    from .reference import build_reference, format_reference_table

    cfg = load_config(config)
    params = cfg.resolve_parameters(_overrides(parameter), preset)
    torch.set_num_threads(cfg.limits.threads)  # as grading does: fast on shared cores, reproducible
    ref = build_reference(cfg, params, log=_log)
    typer.echo(format_reference_table(ref))


@app.command()
@_user_errors
def grade(
    submissions: Path = typer.Argument(..., help="A folder of .ipynb files, or one notebook."),
    out: Path = typer.Option(..., "--out", help="Output folder (gradebook.csv, one folder per submission)."),
    parameter: list[str] = ParamOpt,
    preset: Optional[str] = typer.Option(None, "--preset", help="A parameter preset from the config (quick, smoke)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes: submissions graded at once, "
                                "each the whole job (run, measure, figures, PDF)."),
    kernels_per_gpu: int = typer.Option(
        1, "--kernels-per-gpu", min=0,
        help="Kernels sharing one GPU (or MIG slice), each capped to its share of the memory; "
             "0: every kernel on the CPU. On a GPU host the workers are capped at the GPU slots."),
    cell_timeout: Optional[float] = typer.Option(None, "--cell-timeout", help="Seconds per cell."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per notebook."),
    timeout_factor: Optional[float] = typer.Option(
        None, "--timeout-factor", help="Instead of --timeout: each notebook may take F x the solution notebook's own "
        "run time (reference/solution.ipynb, run the same sandboxed way at the same parameters on this host; "
        "measured once, then cached per parameters, host and versions). F >= 1."),
    no_pdf: bool = typer.Option(False, "--no-pdf", help="Skip the PDF reports."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="A dask.distributed scheduler (tcp://HOST:8786): grade on its workers "
        "(each with the grader and bubblewrap installed); results, figures and PDFs come back into OUT."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Grade every notebook: sandboxed run, measurement against the reference, points, PDFs."""
    from .grade import GradeOptions, grade_submissions

    options = GradeOptions(
        out_dir=out, overrides=_overrides(parameter), preset=preset,
        workers=workers, cell_timeout=cell_timeout, notebook_timeout=timeout,
        config_path=config, pdf=not no_pdf, kernels_per_gpu=kernels_per_gpu, scheduler=scheduler,
        timeout_factor=timeout_factor,
    )
    grade_submissions(submissions, options, log=_log)


@app.command()
@_user_errors
def check(
    notebook: Path = typer.Argument(..., help="Your notebook."),
    out: Path = typer.Option(Path("grader-check"), "--out", help="Where the report goes."),
    parameter: list[str] = ParamOpt,
    preset: str = typer.Option("quick", "--preset", help="Parameter preset (default: quick)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Self-check before handing in: the grading pipeline on one notebook, with quick parameters."""
    from .grade import GradeOptions, self_check

    options = GradeOptions(out_dir=out, overrides=_overrides(parameter), preset=preset, config_path=config)
    self_check(notebook, options, log=_log)


@app.command()
@_user_errors
def report(
    out: Path = typer.Argument(..., help="An output folder written by `grader grade`."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Re-render every PDF (and the class summary) from the result.json files alone."""
    from .config import load_config
    from .report import rerender

    paths = rerender(out, load_config(config))
    typer.echo(f"rendered {len(paths)} PDF(s) in {out}")


MarkerOpt = typer.Option(None, "--marker", help="Who is marking (recorded with every mark; default: your user name).")


@app.command()
@_user_errors
def mark(
    out: Path = typer.Argument(..., help="An output folder written by `grader grade`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs the printed token."),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    marker: Optional[str] = MarkerOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Start the marking page over a graded OUT folder: question by question, rubric items, groups."""
    from .config import load_config
    from .marking.app import serve

    serve(out, load_config(config), host=host, port=port, marker=marker, log=_log)


@marks_app.command("export")
@_user_errors
def marks_export(
    out: Path = typer.Argument(..., help="An output folder written by `grader grade`."),
    question: str = typer.Option(..., "--question", help="The question's id, e.g. Q2."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="CSV file to write (default: standard output)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """One question's marking sheet as CSV: submission, answer, words, rubric items, points, comment."""
    from .config import load_config
    from .marking.sheet import export_sheet

    export_sheet(out, load_config(config), question, output)


@marks_app.command("import")
@_user_errors
def marks_import(
    out: Path = typer.Argument(..., help="An output folder written by `grader grade`."),
    sheet: Path = typer.Argument(..., help="A marking sheet CSV (as `grader marks export` writes it)."),
    marker: Optional[str] = MarkerOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Read a marking sheet back; every row is validated first and nothing is applied unless all are valid."""
    from .config import load_config
    from .marking.sheet import import_sheet

    report = import_sheet(out, load_config(config), sheet, marker=marker)
    typer.echo(str(report))


@app.command("export")
@_user_errors
def export_grades(
    out: Path = typer.Argument(..., help="An output folder written by `grader grade`."),
    format: str = typer.Option("csv", "--format", help="canvas, moodle or csv."),
    roster: Optional[Path] = typer.Option(None, "--roster", help="CSV mapping submission files to student ids."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write (default: OUT/grades-<format>.csv)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """The gradebook (automatic + written points) in an LMS's import format."""
    from .config import load_config
    from .marking.lms import export_grades as run_export

    run_export(out, load_config(config), format, roster=roster, output=output, log=_log)


def main() -> None:  # pragma: no cover - console script shim
    sys.exit(app())
