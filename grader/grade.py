"""Grade a folder of notebooks: execute (sandboxed), probe, measure, score, answers, report.

A submission is one self-contained job, `grade_job(JobSpec) -> JobOutcome`, that runs execute →
probe → measure → score → answers → figures → PDF in a worker process: local runs use a pool of
--workers processes (grader/pool.py), a cluster runs the same function on dask.distributed
workers (grader/cluster.py). Each worker builds its GradingContext (config, parameters, data,
classifier, reference models, fixed probe inputs) once, from the cache, and reuses it for every
job of the same run. The main process only plans the jobs (their cache keys), schedules them,
shows progress, keeps the marking database and writes the gradebook and the summary.
Reruns reuse what is still valid: execution.json is keyed by everything that changes a run, and
result.json additionally by the config, so a rubric change re-scores without re-executing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import nbformat
from pydantic import BaseModel

from . import __version__, atomic, versioning
from .config import AssignmentConfig, load_config
from .devices import Slot
from .errors import GraderError
from .execute import EXECUTED_NOTEBOOK
from .exporting import VALUES_FILE, WEIGHTS_FILE
from .marking.store import DB_NAME, MarkStore
from .records import Answer, ExecutionResult, Mark, RubricItem, SubmissionResult
from .score import score_checks, totals

if TYPE_CHECKING:  # types only: the torch-using modules load in a worker's thread while its kernel runs (prepare)
    from .measure import Judge, ReferenceMeasurement
    from .probe import ProbeData, ProbeInputs
    from .reference import ReferenceSet
    from .unitcheck import UnitInputs, UnitResult

# What may be copied out of a scratch directory, and how big each may be (bytes).
MAX_EXECUTED_BYTES = 100 << 20

Log = Callable[[str], None]


@dataclass
class GradeOptions:
    out_dir: Path
    overrides: dict = field(default_factory=dict)
    preset: str | None = None
    workers: int = 1
    cell_timeout: float | None = None
    notebook_timeout: float | None = None
    config_path: Path | None = None
    pdf: bool = True
    data_dir: Path | None = None
    scheduler: str | None = None          # a dask.distributed scheduler's address: run the jobs there
    timeout_factor: float | None = None   # each notebook's limit: this × the solution's own run time
    kernels_per_gpu: int = 1             # kernels sharing one GPU; 0: all on the CPU (grader/devices.py)


def run_overrides(config: AssignmentConfig, params: dict) -> dict:
    """The parameters that differ from the config's defaults (what the report calls reduced)."""
    defaults = config.parameters.defaults()
    return {k: v for k, v in params.items() if defaults.get(k) != v}


@dataclass
class RunPlan:
    """What the main process knows of a run: enough to name every job and its cache keys, none
    of the heavy parts (data, classifier, reference) that only the workers load."""

    config: AssignmentConfig
    params: dict
    unit_inputs: UnitInputs
    options: GradeOptions

    @property
    def overrides(self) -> dict:
        return run_overrides(self.config, self.params)


def plan_run(options: GradeOptions) -> RunPlan:
    from .unitcheck import make_unit_inputs

    config = load_config(options.config_path)
    params = config.resolve_parameters(options.overrides, options.preset)
    return RunPlan(config, params, make_unit_inputs(config, params), options)


@dataclass
class MeasuringParts:
    """The parts of a GradingContext that only measuring needs, and that take seconds to load:
    the probe's inputs (MNIST), the judge (classifier, test-set statistics, image bank) and the
    reference models. A worker builds them in a thread while its first kernel runs."""

    inputs: ProbeInputs                # model inputs; they never leave the grader's process
    judge: Judge                       # the classifier, the test set's statistics, the image bank
    reference: ReferenceSet            # the reference models at the run's parameters
    device: str                        # where the grader runs models: a GPU where there is one


@dataclass
class GradingContext:
    """Everything shared by the submissions of one run. Execution needs only the light fields;
    `measuring` may still be loading while the first notebook runs (see prepare)."""

    config: AssignmentConfig
    params: dict
    data_dir: Path
    unit_inputs: UnitInputs            # inputs of the KL / reparameterize unit checks
    measuring: Future[MeasuringParts]
    template: nbformat.NotebookNode | None
    options: GradeOptions
    log: Log = print
    _reference_probes: dict[float | None, ProbeData] = field(default_factory=dict)
    _reference_figures: dict[float | None, ReferenceMeasurement] = field(default_factory=dict)
    marks: MarkStore | None = None     # OUT's marking database: answers synced as they are graded
    # The two caches above are filled by a job and by the warm-up thread (warm_up): one at a time.
    _reference_lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def parts(self) -> MeasuringParts:
        """The measuring parts, waiting for them if they are still loading; raises what loading raised."""
        return self.measuring.result()

    @property
    def inputs(self) -> ProbeInputs:
        return self.parts.inputs

    @property
    def judge(self) -> Judge:
        return self.parts.judge

    @property
    def reference(self) -> ReferenceSet:
        return self.parts.reference

    @property
    def device(self) -> str:
        return self.parts.device

    @property
    def overrides(self) -> dict:
        """The parameters that differ from the config's defaults (what the report calls reduced)."""
        return run_overrides(self.config, self.params)

    def reference_probe(self, beta: float | None) -> ProbeData:
        """The reference models' outputs, with the tuned model's trained at `beta`: the same
        function measures them as measures the students' rebuilt models."""
        from .probe import probe_models

        tuned_beta, tuned = self.reference.vae_for(beta)
        with self._reference_lock:
            if tuned_beta not in self._reference_probes:
                models = dict(self.reference.models)
                if self.config.tuned_model is not None:
                    models[self.config.tuned_model.role] = tuned
                self._reference_probes[tuned_beta] = probe_models(models, self.config, self.inputs)
            return self._reference_probes[tuned_beta]

    def reference_measurement(self, beta: float | None) -> ReferenceMeasurement:
        """The reference's figures and samples' captions with the tuned model at `beta`: measured
        once per β and reference (kept on disk), not per student, run or worker."""
        from .measure import measure_reference
        from .reference_measured import cached_measurement, measurement_key

        tuned_beta, _ = self.reference.vae_for(beta)
        with self._reference_lock:
            if tuned_beta not in self._reference_figures:
                key = measurement_key(self.reference.key, tuned_beta, self.config.digest, self.params)
                self._reference_figures[tuned_beta] = cached_measurement(key, lambda: measure_reference(
                    self.reference_probe(beta), self.reference_probe(None), self.inputs, self.judge, self.config))
            return self._reference_figures[tuned_beta]


def load_measuring_parts(config: AssignmentConfig, params: dict, data_dir: Path, log: Log) -> MeasuringParts:
    """MNIST, the probe's inputs, the classifier and its judge, the reference set: all from the cache."""
    import torch

    torch.set_num_threads(config.limits.threads)   # before its first operation: the process's setting

    from .classifier import load_configured_classifier
    from .data import load_mnist
    from .measure import Judge, mnist_image_bank
    from .models import pick_device
    from .probe import make_probe_inputs
    from .reference import build_reference

    test_x, test_y = load_mnist(train=False, data_dir=data_dir)
    inputs = make_probe_inputs(config, params, test_x, test_y)
    # On the GPU where there is one, as the reference measures its models (pick_device):
    # classify() moves each batch to the classifier's device and returns CPU tensors.
    device = pick_device()
    classifier = load_configured_classifier(config, device)
    judge = Judge.build(classifier, test_x, config.probe.accept_confidence, config.probe.memorised_distance,
                        bank=mnist_image_bank(data_dir))
    reference = build_reference(config, params, log=log)
    return MeasuringParts(inputs, judge, reference, str(device))


def prepare(options: GradeOptions, log: Log, defer: bool = False) -> GradingContext:
    """A run's GradingContext. defer: load the measuring parts in a thread and return at once, so
    that they load while the first notebook runs (a worker's first job then waits only for what
    the kernel's run did not hide); otherwise they are loaded before this returns. Nothing here
    imports torch (3 s): the thread does."""
    from .data import ensure_mnist
    from .unitcheck import make_unit_inputs

    config = load_config(options.config_path)
    params = config.resolve_parameters(options.overrides, options.preset)
    data_dir = ensure_mnist(options.data_dir, log=log)
    unit_inputs = make_unit_inputs(config, params)
    measuring: Future[MeasuringParts] = Future()
    handout = config.path(config.assignment.handout)
    template = nbformat.read(handout, as_version=4) if handout.exists() else None
    ctx = GradingContext(config, params, data_dir, unit_inputs, measuring, template=template, options=options, log=log)
    if defer:
        threading.Thread(target=_load_and_warm_up, args=(ctx,), name="measuring-parts", daemon=True).start()
    else:
        measuring.set_result(load_measuring_parts(config, params, data_dir, log))
    return ctx


def _load_and_warm_up(ctx: GradingContext) -> None:
    """The loading thread: the measuring parts, then warm_up."""
    try:
        ctx.measuring.set_result(load_measuring_parts(ctx.config, ctx.params, ctx.data_dir, ctx.log))
    except BaseException as exc:   # the job that waits for the parts raises it
        ctx.measuring.set_exception(exc)
        return
    warm_up(ctx)


def warm_up(ctx: GradingContext) -> None:
    """What a worker's first evaluation would otherwise do after its kernel ended, done while the
    kernel runs: the imports of measuring, figures and the PDF (matplotlib and WeasyPrint take
    about a second each), the fonts of both kinds of figure, and the reference's measurement with
    its own tuned β, the one most students pick. A failure here only leaves the work to the job,
    which then reports it."""
    try:
        import numpy as np

        from . import figures, measure, report, result_figures  # noqa: F401 -- imported for their import time

        ctx.reference_measurement(None)
        with tempfile.TemporaryDirectory(prefix="grader.warm-up-") as scratch:   # fonts, caches, lazy imports
            history = [{"epoch": 1, "rec": 2.0, "kl": 300.0}, {"epoch": 2, "rec": 1.0, "kl": 0.5}]   # a log axis too
            figures.training_curves_png(Path(scratch) / "curves.png", {"ae": history, "vae": {"1": history}})
            figures.samples_png(Path(scratch) / "grid.png", np.zeros((2, 28, 28), np.float32), [0, 1], [0.5, 0.5])
    except Exception as exc:
        ctx.log(f"warming up the worker: {type(exc).__name__}: {exc} (left to the first job)")


# The grader's own files in OUT, next to the submissions' folders: no folder may take their names.
GRADEBOOK_CSV = "gradebook.csv"
CLASS_FILES = frozenset({GRADEBOOK_CSV, "summary.pdf", "summary.json", "summary_scores.png",
                         DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"})   # DB_NAME: the marking database
# A folder name ending like a file the grader writes (or may one day write) in OUT is reserved too.
_FILE_LIKE = (".csv", ".json", ".pdf", ".png", ".html", ".txt", ".log", ".tmp", ".npz", ".ipynb", ".sqlite")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HASHED = re.compile(r"-[0-9a-f]{12}$")   # what output_name appends: no plain name may end so
MAX_NAME_CHARS = 80


def output_name(notebook: Path) -> str:
    """The name of a submission's folder in OUT: its stem when that is a safe name (ASCII letters,
    digits, `.`, `_`, `-`; no leading dot or dash; not one of the grader's own files in OUT), else a
    cleaned stem with a short hash of the real name. A function of the file name alone, so the
    same in every run, and distinct for distinct names (two names that clean to the same text
    differ in their hashes). The submission's id in the results stays its readable stem."""
    stem = Path(notebook).name.removesuffix(".ipynb")
    clean = _UNSAFE.sub("_", unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode())
    clean = clean.lstrip(".-") or "notebook"
    if (clean == stem and len(stem) <= MAX_NAME_CHARS and stem.lower() not in CLASS_FILES
            and not stem.lower().endswith(_FILE_LIKE) and not _HASHED.search(stem)):
        return stem
    tag = hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{clean[:MAX_NAME_CHARS]}-{tag}"


def submission_digest(notebook: Path) -> str:
    """The hash of a submission's bytes, read as execute reads them (never through a link); an
    unreadable one hashes its reason, so it still gets a result (status invalid) and a key."""
    from .execute import NotebookInvalid, read_submission

    try:
        return hashlib.sha256(read_submission(notebook)).hexdigest()
    except NotebookInvalid as exc:
        return "invalid: " + str(exc)


def discover(submissions: Path) -> list[Path]:
    """The submissions to grade: one notebook, or every *.ipynb entry of a folder (hidden ones
    aside). Entries that are not notebook files (a link, a directory named x.ipynb) are kept: each
    gets a result saying so (status invalid) instead of vanishing or stopping the batch."""
    if not submissions.exists() and not submissions.is_symlink():
        raise GraderError(f"{submissions}: no such file or folder")
    if not submissions.is_dir():  # one notebook (a link or a pipe given here is refused when read)
        return [submissions]
    found = sorted(p for p in submissions.iterdir() if p.name.endswith(".ipynb") and not p.name.startswith("."))
    if not found:
        raise GraderError(f"{submissions}: no .ipynb files in this folder")
    names = [output_name(p) for p in found]
    if len(set(names)) != len(names):  # a 48-bit hash collision between two cleaned names
        clash = sorted({n for n in names if names.count(n) > 1})
        raise GraderError(f"{submissions}: two notebooks would share the output folder {clash[0]!r}; rename one")
    return found


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def execution_key(ctx: RunPlan | GradingContext, notebook: Path) -> str:
    limits = ctx.config.limits.model_dump()
    return _digest(
        submission_digest(notebook), ctx.params, ctx.unit_inputs.__dict__,
        ctx.config.contract.model_dump(), [m.model_dump() for m in ctx.config.models],
        ctx.config.architecture.model_dump(), ctx.config.probe.model_dump(),
        ctx.config.parameters.tag, limits, ctx.options.cell_timeout, ctx.options.notebook_timeout,
        __version__, versioning.execution_digest(),
    )


def run_execution(ctx: GradingContext, notebook: Path, out: Path, key: str | None = None,
                  invalid: str | None = None, options: GradeOptions | None = None,
                  slot: Slot | None = None) -> ExecutionResult:
    """Execute one notebook in a fresh scratch directory, or reuse a finished run of the same key.
    invalid: why the submitting machine could not read the notebook (a cluster job gets no file);
    options: the job's (its timeouts), default the context's; slot: the device its kernel gets
    (None: the CPU)."""
    from . import sandbox
    from .execute import execute_notebook
    from .exporting import export_code

    if invalid is not None:
        return ExecutionResult(status="invalid", errors=[invalid])
    key = key or execution_key(ctx, notebook)
    options = options or ctx.options
    keep_submission(notebook, out)
    record = out / "execution.json"
    if record.exists():
        try:
            saved = json.loads(record.read_text())
            if saved.get("key") == key:
                return ExecutionResult.model_validate(saved["result"])
        except (ValueError, KeyError):
            pass  # unreadable record: run again
    out.mkdir(parents=True, exist_ok=True)
    scratch = sandbox.make_scratch_dir(notebook.stem, ctx.config.limits)  # a size-capped tmpfs where possible
    # The unit checks need only the notebook's source, not its run: their own sandboxed process
    # runs beside the kernel (a second core), so it adds nothing to a notebook's latency.
    with ThreadPoolExecutor(1, thread_name_prefix="unit-checks") as beside:
        unit_checks = beside.submit(_unit_checks, ctx, notebook)
        try:
            result = execute_notebook(
                notebook, scratch, dict(ctx.params), config=ctx.config, data_dir=ctx.data_dir,
                probe_code=export_code(ctx.config),
                cell_timeout=options.cell_timeout, notebook_timeout=options.notebook_timeout,
                threads=ctx.config.limits.threads, slot=slot,
            )
            _take_out_of_scratch(ctx, scratch, out, result)
        finally:
            sandbox.remove_tree(scratch)  # any depth; unmounts the tmpfs
        unit = unit_checks.result()
    if result.status != "invalid":
        unit.save(out)
    atomic.write_text(record, json.dumps({"key": key, "result": result.model_dump()}, indent=1))
    return result


def keep_submission(notebook: Path, out: Path) -> None:
    """OUT/<folder>/submitted.ipynb: the notebook as handed in, so that `grader mark` can show the
    outputs the student saved beside the re-run's (the submission itself is never modified).
    Copied on every run, even one that reuses its execution, so it is the bytes that were graded;
    one that cannot be copied (a link, a directory, over the cap) is not kept, and execution says
    why it is invalid."""
    from .execute import MAX_NOTEBOOK_BYTES, SUBMISSION_COPY

    out.mkdir(parents=True, exist_ok=True)
    try:
        atomic.copy_bounded(notebook, out / SUBMISSION_COPY, MAX_NOTEBOOK_BYTES)
    except (atomic.CopyRefused, OSError):
        (out / SUBMISSION_COPY).unlink(missing_ok=True)


def _take_out_of_scratch(ctx: GradingContext, scratch: Path, out: Path, result: ExecutionResult) -> None:
    """Copy what the grader keeps out of the scratch directory, each file size-checked first
    (sparse files included): the executed notebook and the kernel's export."""
    bounds = {EXECUTED_NOTEBOOK: MAX_EXECUTED_BYTES, WEIGHTS_FILE: ctx.config.probe.max_export_mb << 20,
              VALUES_FILE: ctx.config.probe.max_export_mb << 20}
    for name, max_bytes in bounds.items():
        (out / name).unlink(missing_ok=True)
        source = scratch / name
        if not (source.exists() or source.is_symlink()):
            continue
        try:
            atomic.copy_bounded(source, out / name, max_bytes)
        except (atomic.CopyRefused, OSError) as exc:
            result.errors.append(f"the grader did not keep {name}: {exc}")
            if name == WEIGHTS_FILE:
                result.probe_error = result.probe_error or f"{name} was refused: {exc}"
    result.executed_notebook = EXECUTED_NOTEBOOK if (out / EXECUTED_NOTEBOOK).exists() else None
    result.probe_file = WEIGHTS_FILE if (out / WEIGHTS_FILE).exists() else None


def _unit_checks(ctx: GradingContext, notebook: Path) -> UnitResult:
    from .execute import NotebookInvalid, read_notebook
    from .unitcheck import UnitResult, run_unit_checks

    try:
        nb = read_notebook(notebook)
    except NotebookInvalid as exc:
        return UnitResult(errors={"kl_divergence": str(exc), "reparameterize": str(exc)})
    return run_unit_checks(nb, ctx.config, ctx.params, ctx.unit_inputs, ctx.data_dir)


def student_probe(ctx: GradingContext, out: Path, execution: ExecutionResult) -> tuple[ProbeData, list[str]]:
    """The student's models, rebuilt from their weights in the grader's architecture and run here,
    plus the unit checks' outputs; the notes say how weights were matched."""
    from .probe import KernelExport, load_export, probe_models
    from .unitcheck import UnitResult
    from .weights import rebuild_models

    if execution.probe_file:
        export = load_export(out, ctx.config)
    else:
        export = KernelExport(errors={"probe": execution.probe_error or
                                      f"the notebook's run ended as {execution.status!r} before the grader could probe it"})
    if execution.probe_error and "probe" not in export.errors:
        export.errors["probe"] = execution.probe_error
    rebuilt = rebuild_models(ctx.config, ctx.params, export)
    probe = probe_models(rebuilt.models, ctx.config, ctx.inputs)
    probe.errors.update(rebuilt.errors)
    probe.errors.update({k: v for k, v in export.errors.items() if k not in probe.errors})
    probe.values = export.values
    if execution.status != "invalid":
        unit = UnitResult.load(out, ctx.config)
        probe.arrays.update(unit.arrays)
        probe.errors.update(unit.errors)
    return probe, list(rebuilt.notes.values())


def _read_notebook(path: Path) -> nbformat.NotebookNode | None:
    """The submission for answer extraction; None when execution already found it unreadable."""
    from .execute import NotebookInvalid, read_notebook

    try:
        return read_notebook(path)
    except NotebookInvalid:
        return None


def _answers(ctx: GradingContext, nb: nbformat.NotebookNode | None) -> list[Answer]:
    from .answers import extract_answers

    if nb is None:
        return [
            Answer(id=q.id, found=False, limit=q.limit, max_points=q.points,
                   note="the notebook could not be read, so no answer could be extracted")
            for q in ctx.config.questions
        ]
    return extract_answers(nb, ctx.config, template=ctx.template)


def _best_beta(ctx: GradingContext, probe: ProbeData, nb) -> tuple[float | None, str | None]:
    from .answers import find_best_beta_in_markdown

    value = probe.values.get("best_beta")
    if isinstance(value, (int, float)):
        return float(value), "kernel"
    if nb is not None:
        found = find_best_beta_in_markdown(nb, ctx.config.contract.best_beta_pattern)
        if found is not None:
            return found, "markdown"
    return None, None


def evaluate(ctx: GradingContext, notebook: Path, execution: ExecutionResult, out: Path) -> SubmissionResult:
    """Measure, score and collect answers for one executed submission."""
    from .measure import measure
    from .result_figures import histories_for_figures, write_figures

    nb = _read_notebook(notebook)
    student, notes = student_probe(ctx, out, execution)
    best_beta, source = _best_beta(ctx, student, nb)
    # The step that makes the reference at the student's β (trained once per β, kept in the
    # cache); everything after it only reads the reference.
    ctx.reference.train_vae_at(best_beta, ctx.data_dir, ctx.log)
    reference = ctx.reference_probe(best_beta)
    measurement = measure(
        student, ctx.reference_measurement(best_beta), ctx.inputs, ctx.unit_inputs, ctx.judge,
        mean_image_mse=ctx.reference.mean_image_mse, good_betas=ctx.reference.good_betas,
        reference_best_beta=ctx.reference.best_beta, best_beta=best_beta, config=ctx.config,
    )
    checks = score_checks(ctx.config, measurement)
    score, max_score = totals(checks)
    errors = list(execution.errors)
    errors += [f"{part}: {why}" for part, why in measurement.missing.items()]
    errors += notes
    result = SubmissionResult(
        submission=notebook.stem, status=execution.status, score=score, max_score=max_score,
        answer_points_pending=ctx.config.max_answer_points, overrides=ctx.overrides,
        parameters=ctx.params, checks=checks, metrics=measurement.metrics,
        answers=_answers(ctx, nb), best_beta=best_beta, best_beta_source=source,
        cells=execution.cells, errors=errors, sandbox_warnings=execution.sandbox_warnings,
        histories=histories_for_figures(student.values),
        grader_version=__version__, device=execution.device or ctx.device, seconds=round(execution.seconds, 2),
    )
    if execution.status != "invalid":  # nothing of the student's to show beside the reference
        result.figures = write_figures(out, ctx, student, reference, measurement)
    return result


def result_key(ctx: RunPlan | GradingContext, notebook: Path) -> str:
    return _digest(execution_key(ctx, notebook), ctx.config.digest, __version__, versioning.result_digest())


def _cached_result(out: Path, key: str) -> SubmissionResult | None:
    path = out / "result.json"
    if not path.exists():
        return None
    try:
        result = SubmissionResult.model_validate_json(path.read_text())
    except ValueError:
        return None
    return result if result.cache_key == key else None


class JobSpec(BaseModel):
    """One submission's job: everything a worker process needs besides what it loads from the cache.
    Small and picklable: it crosses a pipe to a local worker, or the network to a cluster's."""

    notebook: Path                 # the submission (on a cluster worker: a name only, the bytes below)
    folder: str                    # its folder's name in OUT
    out_dir: Path | None           # the folder to grade into; None: a temporary one whose files come back
    options: GradeOptions          # the run's options (parameters, timeouts, config path, pdf)
    execution_key: str             # the cache keys, computed by the main process
    result_key: str
    config_digest: str = ""        # the submitting machine's config: a worker with another one refuses
    marks: dict[str, Mark] = {}    # the staff's marks of this submission so far, by question: drawn in its PDF
    rubric: dict[int, RubricItem] = {}
    slot: Slot | None = None       # the local worker's slot (grader/devices.py): the device its kernels get
    notebook_bytes: bytes | None = None   # cluster: the submission as read on the submitting machine
    invalid: str | None = None     # cluster: why the submitting machine could not read it
    seed_files: dict[str, bytes] = {}     # cluster: the folder's files from an earlier run, reused when current


class StageSeconds(BaseModel):
    """Wall seconds of one job's stages in its worker (bench/bench_grade.py prints them): where
    the grader's own time goes, beside the kernel's run."""

    context: float = 0.0      # the worker's GradingContext, light part (0 once built)
    execute: float = 0.0      # the kernel's run in its sandbox, the unit checks beside it
    waiting: float = 0.0      # for the measuring parts still loading after the kernel ended
    evaluate: float = 0.0     # probe, measure, score, answers, figures
    report: float = 0.0       # the PDF


class JobOutcome(BaseModel):
    """What a job returns: the result; a failure of the grader itself (not of the notebook), so
    the batch can tell "no notebook could be graded" from bad notebooks; for a job that graded
    into a temporary folder, the folder's files (relative path -> bytes); its stages' times."""

    result: SubmissionResult
    failure: str | None = None
    files: dict[str, bytes] = {}
    seconds: StageSeconds = StageSeconds()


@contextlib.contextmanager
def _timed(seconds: StageSeconds, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        setattr(seconds, stage, round(getattr(seconds, stage) + time.perf_counter() - started, 3))


_contexts: dict[str, GradingContext] = {}
MAX_CONTEXTS = 2   # a worker serving batches of other parameters or configs keeps the newest


def _worker_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def context_key(options: GradeOptions) -> str:
    """What a GradingContext depends on: the config's content and the parameters (not the output
    folder or the timeouts, which each job brings)."""
    config = load_config(options.config_path)
    return _digest(config.digest, str(options.config_path), options.overrides, options.preset, str(options.data_dir))


def worker_context(options: GradeOptions) -> GradingContext:
    """This process's GradingContext for the run: built once (data, classifier and reference all
    through the cached, file-locked functions), then reused by every job of the run."""
    key = context_key(options)
    known = _contexts.get(key)
    if known is not None and known.measuring.done() and known.measuring.exception() is not None:
        del _contexts[key]   # its measuring parts failed to load: the next job tries again
    if key not in _contexts:
        while len(_contexts) >= MAX_CONTEXTS:
            _contexts.pop(next(iter(_contexts)))
        _contexts[key] = prepare(options, _worker_log, defer=True)
    return _contexts[key]


def grade_job(spec: JobSpec) -> JobOutcome:
    """One submission, start to end, in whatever process runs it. A failure of the grader on
    this notebook (the sandbox would not start, a figure could not be drawn) is recorded in its
    result and left uncached, so a rerun tries again."""
    seconds = StageSeconds()
    with _timed(seconds, "context"):
        ctx = worker_context(spec.options)
    if spec.config_digest and ctx.config.digest != spec.config_digest:
        raise GraderError(f"{socket.gethostname()}: the assignment config in {ctx.config.base_dir} differs from the submitting "
                          "machine's; install the same config on every worker")
    with _job_folder(spec) as (notebook, out), _job_slot(spec) as spec:
        outcome = _grade_in(ctx, spec, notebook, out, seconds)
        if spec.out_dir is None:
            outcome.files = folder_files(out)
    return outcome


@contextlib.contextmanager
def _job_slot(spec: JobSpec) -> Iterator[JobSpec]:
    """The job with the device its kernel gets: a local worker's own slot (planned by the main
    process), or, for a cluster job, a slot of the worker host's GPUs leased for the job."""
    if spec.slot is not None or spec.out_dir is not None:
        yield spec
        return
    from .devices import leased_slot

    with leased_slot(spec.options.kernels_per_gpu) as slot:
        yield spec.model_copy(update={"slot": slot})


@contextlib.contextmanager
def _job_folder(spec: JobSpec) -> Iterator[tuple[Path, Path]]:
    """(notebook, out folder): the real ones, or a temporary copy of both on a cluster worker."""
    if spec.out_dir is not None:
        yield spec.notebook, spec.out_dir
        return
    root = Path(tempfile.mkdtemp(prefix="grader.job-"))
    try:
        notebook, out = root / "in" / spec.notebook.name, root / "out" / spec.folder
        notebook.parent.mkdir()
        out.mkdir(parents=True)
        if spec.notebook_bytes is not None:
            notebook.write_bytes(spec.notebook_bytes)
        for name, data in spec.seed_files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        yield notebook, out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every regular file under folder (links and special files left out), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _grade_in(ctx: GradingContext, spec: JobSpec, notebook: Path, out: Path, seconds: StageSeconds) -> JobOutcome:
    failure = None
    try:
        with _timed(seconds, "execute"):
            execution = run_execution(ctx, notebook, out, spec.execution_key, spec.invalid, spec.options, spec.slot)
    except Exception as exc:
        failure = f"{notebook.name}: {type(exc).__name__}: {exc}"
        execution = _crashed_result(notebook, exc)
    with _timed(seconds, "waiting"):
        ctx.measuring.result()   # one that failed to load (no reference, no classifier) fails the job, as before
    try:
        result = _cached_result(out, spec.result_key)
        if result is None:
            with _timed(seconds, "evaluate"):
                result = evaluate(ctx, notebook, execution, out)
            result.cache_key = spec.result_key
            result.graded_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            atomic.write_text(out / "result.json", result.model_dump_json(indent=1))
        if spec.options.pdf:
            with _timed(seconds, "report"):
                _draw_report(ctx, spec, out, result)
    except Exception as exc:
        problem = f"{notebook.name}: the grader failed while evaluating it: {type(exc).__name__}: {exc}"
        ctx.log(problem)
        result = SubmissionResult(
            submission=notebook.stem, status=execution.status, max_score=ctx.config.max_auto_points,
            answer_points_pending=ctx.config.max_answer_points, overrides=ctx.overrides,
            parameters=ctx.params, cells=execution.cells, errors=[*execution.errors, problem],
            grader_version=__version__, device=execution.device or ctx.device,
        )
        atomic.write_text(out / "result.json", result.model_dump_json(indent=1))
        failure = failure or problem
    return JobOutcome(result=result, failure=failure, seconds=seconds)


def _draw_report(ctx: GradingContext, spec: JobSpec, out: Path, result: SubmissionResult) -> None:
    """The PDF with the staff's marks as the main process read them before the job. Syncing
    this result's answers may yet flag a mark stale; the main process then redraws it."""
    from .marking.final import final_grade
    from .report import report_is_current, report_marking, write_report

    marks = {question: {result.submission: mark} for question, mark in spec.marks.items()}
    marking = report_marking(final_grade(result, marks, ctx.config), spec.rubric)
    if not report_is_current(out, marking):
        write_report(result, out, ctx.config, marking)


def _crashed_result(notebook: Path, exc: BaseException) -> ExecutionResult:
    return ExecutionResult(status="crashed", errors=[f"the grader could not run {notebook.name}: {type(exc).__name__}: {exc}"])


# --- the main process: plan, schedule, collect -----------------------------------------------


def job_spec(plan: RunPlan, notebook: Path, marks: dict[str, dict[str, Mark]], rubric: dict[int, RubricItem],
             remote: bool) -> JobSpec:
    """A notebook's job; remote: for a worker that shares no file system with this machine."""
    folder = output_name(notebook)
    spec = JobSpec(
        notebook=notebook, folder=folder, out_dir=None if remote else plan.options.out_dir / folder,
        options=plan.options, execution_key=execution_key(plan, notebook), result_key=result_key(plan, notebook),
        config_digest=plan.config.digest,
        marks={q: by_sub[notebook.stem] for q, by_sub in marks.items() if notebook.stem in by_sub}, rubric=rubric,
    )
    if remote:
        from .execute import NotebookInvalid, read_submission

        try:
            spec.notebook_bytes = read_submission(notebook)
        except NotebookInvalid as exc:
            spec.invalid = str(exc)
        spec.seed_files = _seed_files(plan.options.out_dir / folder)
    return spec


MAX_SEED_BYTES = 256 << 20


def _seed_files(folder: Path) -> dict[str, bytes]:
    """An earlier run's files of a submission, so that a cluster worker reuses its execution and
    result when their keys still hold (a rubric change re-scores without re-executing)."""
    if not folder.is_dir() or not (folder / "execution.json").is_file():
        return {}
    files = folder_files(folder)
    return files if sum(map(len, files.values())) <= MAX_SEED_BYTES else {}


class LocalRunner:
    """The jobs in this machine's pool of worker processes (each at the config's threads). Worker i
    runs its kernels in slot i (grader/devices.py): a GPU share on a host with GPUs, else the CPU;
    a replaced worker takes the same index, so a slot is never held twice."""

    remote = False

    def __init__(self, workers: int, threads: int, kernels_per_gpu: int = 1, log: Log = print) -> None:
        from .devices import describe_slots, plan_slots
        from .pool import shared_pool

        self.slots = plan_slots(workers, kernels_per_gpu)
        log(describe_slots(self.slots, workers))
        self.workers = len(self.slots)
        self.pool = shared_pool(self.workers, threads, warm=__name__)

    def _with_slot(self, job, worker_index: int):
        """A grading job fitted to the local worker it goes to (other jobs go as they are)."""
        from .devices import slot_for

        return job.model_copy(update={"slot": slot_for(worker_index, self.slots)}) if isinstance(job, JobSpec) else job

    def run(self, function, jobs: list[tuple[str, object]]):
        return self.pool.run(function, jobs, assign=self._with_slot, limit=self.workers)

    def close(self) -> None:
        pass   # the pool stays for this process's next batch (closed at exit)


def make_runner(options: GradeOptions, jobs: int, threads: int, log: Log = print):
    """Where the jobs run: on the cluster behind --scheduler, else in this machine's worker pool."""
    if options.scheduler:
        from .cluster import ClusterRunner

        return ClusterRunner(options.scheduler)
    return LocalRunner(max(1, min(options.workers, jobs)), threads, options.kernels_per_gpu, log)


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """A cluster job's files into OUT/<folder>, each atomically: result.json first and the PDF and
    its stamp last, so a PDF is never older than the result it was drawn from."""
    from .report import REPORT_PDF, REPORT_STAMP

    def order(name: str) -> int:
        return 0 if name == "result.json" else 2 if name in (REPORT_PDF, REPORT_STAMP) else 1

    for name in sorted(files, key=lambda n: (order(n), n)):
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            continue   # never outside the submission's folder
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(target, files[name])


def _died_result(plan: RunPlan, spec: JobSpec, problem: str) -> SubmissionResult:
    return SubmissionResult(
        submission=spec.notebook.stem, status="crashed", max_score=plan.config.max_auto_points,
        answer_points_pending=plan.config.max_answer_points, overrides=plan.overrides,
        parameters=plan.params, errors=[problem], grader_version=__version__,
    )


def _collect(plan: RunPlan, spec: JobSpec, value, store: MarkStore, log: Log) -> tuple[SubmissionResult, str | None]:
    """A finished job's result in OUT: its files written (cluster), its answers synced into the
    marking database, its PDF redrawn where syncing changed the marks it shows."""
    from .pool import JobRaised, WorkerDied
    from .report import report_is_current, submission_marking, write_report

    out = plan.options.out_dir / spec.folder
    if isinstance(value, JobRaised) and value.grader_error:
        raise GraderError(value.message)
    if isinstance(value, (JobRaised, WorkerDied)):
        why = value.describe() if isinstance(value, WorkerDied) else f"{value.type_name}: {value.message}"
        problem = f"{spec.notebook.name}: {why}"
        log(problem + (f"\n{value.traceback}" if isinstance(value, JobRaised) else ""))
        result, failure = _died_result(plan, spec, problem), problem
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "result.json", result.model_dump_json(indent=1))   # uncached: a rerun tries again
    else:
        result, failure = value.result, value.failure
        if value.files:
            write_folder(out, value.files)
    marking = submission_marking(store, spec.folder, result)
    if plan.options.pdf and not report_is_current(out, marking):
        try:
            write_report(result, out, plan.config, marking)
        except Exception as exc:
            problem = f"{spec.notebook.name}: the grader could not draw its report: {type(exc).__name__}: {exc}"
            log(problem)
            failure = failure or problem
    return result, failure


def grade_submissions(
    submissions: Path, options: GradeOptions, log: Log = print, print_table: bool = True,
    stages: dict[str, StageSeconds] | None = None,
) -> list[SubmissionResult]:
    """Grade every notebook of `submissions` into options.out_dir; stages, when given, receives
    each finished job's stage times by submission (bench/bench_grade.py prints them)."""
    from tqdm import tqdm

    notebooks = discover(submissions)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    config = load_config(options.config_path)
    if options.timeout_factor is not None:
        from .timing import apply_timeout_factor, check_timeout_factor

        check_timeout_factor(options)
    runner = make_runner(options, len(notebooks), config.limits.threads, log)   # the workers start loading now
    if options.timeout_factor is not None:
        options = apply_timeout_factor(options, runner, log)   # the solution timed in a worker, or cached
    plan = plan_run(options)
    store = MarkStore(options.out_dir, plan.config)
    marks, rubric = store.all_marks(), store.rubric_items()
    specs = {spec.folder: spec for spec in (job_spec(plan, nb, marks, rubric, runner.remote) for nb in notebooks)}
    # The report's imports (WeasyPrint, matplotlib: seconds) load beside the first jobs, which must
    # not wait for them: the main process needs the report only once a job has finished.
    threading.Thread(target=_import_quietly, args=(f"{__package__}.report",), daemon=True).start()
    results: list[SubmissionResult] = []
    folders: list[tuple[str, SubmissionResult]] = []
    failures: list[str] = []
    with contextlib.closing(runner), tqdm(total=len(notebooks), desc="grading", unit="nb", file=sys.stderr) as bar:
        for folder, value in runner.run(grade_job, list(specs.items())):
            result, failure = _collect(plan, specs[folder], value, store, log)
            if stages is not None and isinstance(value, JobOutcome):
                stages[result.submission] = value.seconds
            if failure:
                failures.append(failure)
            results.append(result)
            folders.append((folder, result))
            bar.set_postfix_str(f"{result.submission}: {result.status}")
            bar.update()
    results.sort(key=lambda r: r.submission)
    from .report import class_marking, write_gradebook

    marking = class_marking(store, folders)   # every answer synced, failed evaluations too
    write_gradebook(options.out_dir / GRADEBOOK_CSV, results, plan.config, marking)
    if options.pdf:
        from .report import render_summary

        render_summary(results, options.out_dir, plan.config, marking)
    if print_table:
        print_summary(results, plan, time.monotonic() - started)
    if failures and len(failures) == len(notebooks):
        raise GraderError(f"the grader could not grade any notebook; the first problem: {failures[0]}")
    return results


def _import_quietly(module: str) -> None:
    """Import ahead of need; a failure is left to the import that needs the module, which raises it."""
    with contextlib.suppress(Exception):
        importlib.import_module(module)


def print_summary(results: list[SubmissionResult], ctx: RunPlan | GradingContext, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Graded {len(results)} notebook(s) in {seconds:.0f} s — parameters {ctx.overrides or 'defaults'}")
    for column in ("submission", "status", "score", "answers found", "lost points on"):
        table.add_column(column)
    for r in results:
        found = sum(a.found for a in r.answers)
        lost = ", ".join(c.id for c in r.checks if c.assessable and c.points < c.max_points) or "-"
        table.add_row(r.submission, r.status, f"{r.score:g} / {r.max_score:g}", f"{found}/{len(r.answers)}", lost)
    Console(stderr=False).print(table)


def self_check(notebook: Path, options: GradeOptions, log: Log = print) -> SubmissionResult:
    """`grader check`: the grading pipeline on one notebook, printed as a short table."""
    from rich.console import Console
    from rich.table import Table

    if not notebook.is_file():
        raise GraderError(f"{notebook}: no such notebook")
    results = grade_submissions(notebook, options, log=log, print_table=False)
    result = results[0]
    console = Console()
    table = Table(title=f"{notebook.name}: {result.score:g} / {result.max_score:g} automatic points")
    for column in ("check", "points", "message"):
        table.add_column(column)
    for c in result.checks:
        if c.assessable:
            table.add_row(c.title, f"{c.points:g}/{c.max_points:g}", c.message)
        else:
            table.add_row(c.title, "n/a", "not assessable at these parameters (the report says why)")
    console.print(table)
    answers = Table(title="Answers (graded by staff)")
    for column in ("question", "found", "words / limit"):
        answers.add_column(column)
    for a in result.answers:
        words = f"{a.words} / {a.limit}" + (" OVER" if a.over_limit else "")
        answers.add_row(a.id, "yes" if a.found else f"no — {a.note}", words)
    console.print(answers)
    if result.overrides:
        changed = ", ".join(f"{k}={v}" for k, v in result.overrides.items())
        console.print(f"Parameters changed for this check ({changed}); the final grade runs the assignment's own.")
    console.print(f"Report: {options.out_dir / output_name(notebook) / 'report.pdf'}")
    return result
