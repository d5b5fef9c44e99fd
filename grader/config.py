"""The assignment config (TOML), validated on load.

Everything notebook-specific — parameter names and defaults, kernel names, questions, checks and
their thresholds — lives in the config so that a new handout needs no code change. pydantic does
the validation because its errors name the exact field at fault.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .paths import DEFAULT_CONFIG

ParamValue = int | float | str | None
ModelKind = Literal["ae", "vae"]   # an autoencoder (encode -> code) or a VAE (encode -> mu, log_sigma)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AssignmentInfo(Strict):
    name: str
    contract_version: int
    handout: str
    solution: str
    # The handout's answer cells carry {answer_cell_key: {"answer": "<question id>"}} in their
    # metadata (written by scripts/make_handout.py); grader/answers.py reads an answer from its
    # tagged cell first and falls back to the text rules where a notebook lost the tags.
    answer_cell_key: str = "grader"


class ClassifierInfo(Strict):
    weights: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    seed: int = 0


class ParameterSpec(Strict):
    type: Literal["int", "float", "str"]
    default: int | float | str | None = None
    nullable: bool = False

    @model_validator(mode="after")
    def _default_matches_type(self) -> "ParameterSpec":
        if self.default is None and not self.nullable:
            raise ValueError("a parameter without a default must be nullable")
        if self.default is not None:
            self.coerce(self.default)
        return self

    def coerce(self, value: ParamValue) -> ParamValue:
        """Value converted to this parameter's type; ValueError says why it cannot be."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError("None is not allowed")
        if self.type == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if self.type == "float":
            if isinstance(value, (bool, str)):
                raise ValueError(f"{value!r} is not a number")
            return float(value)
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        return value


class ParameterRoles(Strict):
    """What the grader reads each notebook parameter as: every value names a [parameters.spec]
    entry. The training ones are the reference's settings (and what its cache is keyed by)."""

    data_dir: str              # pointed at the grader's read-only copy of the data set
    latent_size: str           # every model class is built as Class(latent size)
    epochs: str
    batch_size: str
    learning_rate: str
    seed: str
    train_subset: str          # nullable: None trains on every training image
    interpolation_start: str   # the class of the interpolation paths' first ends
    interpolation_end: str     # and of their last ends

    TRAINING: ClassVar[tuple[str, ...]] = ("latent_size", "epochs", "batch_size", "learning_rate", "seed",
                                           "train_subset")

    def training(self) -> dict[str, str]:
        """Training role -> parameter name, in TRAINING's order."""
        return {role: getattr(self, role) for role in self.TRAINING}


class Parameters(Strict):
    tag: str = "parameters"
    roles: ParameterRoles
    spec: dict[str, ParameterSpec]
    presets: dict[str, dict[str, int | float | str]] = {}

    @model_validator(mode="after")
    def _presets_name_known_parameters(self) -> "Parameters":
        for preset, values in self.presets.items():
            for name, value in values.items():
                if name not in self.spec:
                    raise ValueError(f"preset {preset!r} sets unknown parameter {name!r}")
                self.spec[name].coerce(value)
        for role, name in self.roles.model_dump().items():
            if name not in self.spec:
                raise ValueError(f"roles.{role} names {name!r}, which is not a parameter")
        return self

    @property
    def data_dir(self) -> str:
        """The parameter the grader points at its read-only copy of the data."""
        return self.roles.data_dir

    def defaults(self) -> dict[str, ParamValue]:
        return {name: spec.default for name, spec in self.spec.items()}


class ModelSpec(Strict):
    """One model the notebook trains and the grader measures (a [[models]] table)."""

    role: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")   # how checks, evidence and figures name it
    kind: ModelKind
    variable: str                       # the kernel variable that holds it after the student's cells
    label: str                          # the one wording a student or marker reads: report, figures, evidence
    # A VAE's β: a fixed value (the reference is trained at it), or "tuned": the student's choice,
    # measured against the reference trained at the same β (at most one model is tuned).
    beta: float | Literal["tuned"] | None = None

    @model_validator(mode="after")
    def _beta_matches_kind(self) -> "ModelSpec":
        if self.kind == "ae" and self.beta is not None:
            raise ValueError(f"model {self.role!r}: an autoencoder has no beta")
        if self.kind == "vae" and self.beta is None:
            raise ValueError(f"model {self.role!r}: a VAE needs a beta (a number, or \"tuned\")")
        if isinstance(self.beta, float) and not (self.beta >= 0 and self.beta < float("inf")):
            raise ValueError(f"model {self.role!r}: beta must be a finite number >= 0, not {self.beta}")
        return self

    @property
    def tuned(self) -> bool:
        return self.beta == "tuned"

    @property
    def fixed_beta(self) -> float | None:
        """The β the reference trains this model at, when it is fixed by the config."""
        return None if self.beta is None or self.tuned else float(self.beta)


class Contract(Strict):
    """Names the grader reads from the kernel beside the models (each [[models]] names its own)."""

    best_beta: str
    kl_divergence: str
    reparameterize: str
    # Training records by model kind: the autoencoder's a list of {"epoch", "rec", "kl"}, the VAEs'
    # a dict of such lists by β (figures only).
    histories: dict[ModelKind, str] = {}
    best_beta_pattern: str


def architecture_source(target: str, base_dir: Path) -> str:
    """The code that defines the class `target` names: for "notebook.ipynb:Class" the notebook's
    top-level definitions the class needs (imports, helpers, constants: grader.unitcheck's
    `definitions`), for "file.py:Class" that file, for "package.module:Class" its module's file."""
    import importlib.util

    module_name, _, name = target.partition(":")
    if module_name.endswith(".ipynb"):
        import nbformat

        from .unitcheck import definitions

        nb = nbformat.read(base_dir / module_name, as_version=4)
        found = definitions(nb, [name])
        if not any(item["source"].startswith(f"class {name}") for item in found):
            raise ConfigError(f"architecture: {base_dir / module_name} defines no class {name}")
        return "\n\n".join(item["source"] for item in found) + "\n"
    if module_name.endswith(".py"):
        return (base_dir / module_name).read_text()
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ConfigError(f"architecture: no module {module_name!r}")
    return Path(spec.origin).read_text()


@functools.lru_cache(maxsize=32)   # per process: rebuilding each student's models asks for it again
def _load_class(target: str, base_dir: Path) -> type:
    """The class `target` names: "package.module:Class", or, beside the config, "file.py:Class"
    or "notebook.ipynb:Class" (the instructor's solution defining the architecture; its cells that
    the class needs run here, nothing else of it). Trusted code: the config's author's."""
    import importlib
    import sys
    import types

    module_name, _, name = target.partition(":")
    if not module_name.endswith((".py", ".ipynb")):
        return getattr(importlib.import_module(module_name), name)
    source = architecture_source(target, base_dir)
    key = "grader_architecture_" + hashlib.sha256(f"{base_dir.resolve()}\0{target}\0{source}".encode()).hexdigest()[:16]
    if key not in sys.modules:
        module = types.ModuleType(key)
        module.__file__ = str(base_dir / module_name)
        exec(compile(source, f"{base_dir / module_name} ({name})", "exec"), module.__dict__)
        sys.modules[key] = module
    return getattr(sys.modules[key], name)


class Architecture(Strict):
    """The architecture the handout prescribes, one class per model kind. The grader measures a
    student's model by loading the weights it hands back into its own copy of these classes, never
    by calling the student's objects, so nothing the student's code does at run time can change
    what is measured. Each is built as Class(latent size)."""

    ae: str                              # "package.module:Class", or "file.py:Class" beside the config
    vae: str

    def target(self, kind: ModelKind) -> str:
        return getattr(self, kind)


class ReferenceInfo(Strict):
    beta_sweep: list[float] = Field(min_length=1)
    good_beta_fid_factor: float = Field(gt=1.0)


class Limits(Strict):
    cell_timeout_s: float = Field(gt=0)
    notebook_timeout_s: float = Field(gt=0)
    memory_mb: int = Field(gt=0)
    processes: int = Field(gt=0)
    output_bytes: int = Field(gt=0)
    threads: int = Field(default=1, gt=0)   # CPU threads per kernel and for reference training
    disk_mb: int = Field(default=2048, gt=0)  # a kernel's scratch dir, and its /tmp and /dev/shm, each
    file_mb: int = Field(default=1024, gt=0)  # the largest file a sandboxed process may write
    message_mb: int = Field(default=256, gt=0)  # the largest kernel message the grader accepts


class ProbeInfo(Strict):
    n_test: int = Field(gt=0)
    n_samples: int = Field(gt=1)
    n_interp_pairs: int = Field(gt=0)
    interp_steps: int = Field(ge=3)
    n_reparam: int = Field(gt=1)
    n_kl: int = Field(gt=1)                     # rows for the KL unit check
    # The classifier recognises an image (a sample, a point on an interpolation path) as a digit
    # from this top-class probability.
    accept_confidence: float = Field(gt=0, lt=1)
    seed: int
    max_history_epochs: int = Field(default=1000, gt=0)   # history entries kept per model (figures only)
    max_export_mb: int = Field(default=64, gt=0)          # the weights the kernel may hand back
    unit_timeout_s: float = Field(default=120, gt=0)      # the unit checker's fresh process
    memorised_distance: float = Field(gt=0)     # a sample this close to an MNIST image is a copy


class RubricItemSpec(Strict):
    """A starting rubric item (Gradescope-style); staff edit the rubric in `grader mark`."""

    text: str = Field(min_length=1)
    points: float        # positive adds, negative deducts


class Evidence(Strict):
    """What of the student's own work a marker sees beside an answer (in `grader mark`)."""

    figures: list[str] = []    # figure names of the result record (result.figures), in this order
    metrics: list[str] = []    # "role.field" of Metrics.student / Metrics.reference (a [[models]] role)
    cells: list[str] = []      # regexes on code cells' source: their saved outputs beside the re-run's

    @field_validator("cells")
    @classmethod
    def _cells_compile(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
        return patterns

    def metric_problems(self) -> list[str]:
        """What is wrong with each "role.field" of metrics: its shape, or a field the measured
        figures (grader.records.ModelFigures) do not have. Roles are checked against the
        contract by AssignmentConfig, which knows it."""
        from .records import ModelFigures

        problems = []
        for metric in self.metrics:
            role, dot, name = metric.partition(".")
            if not (dot and role and name):
                problems.append(f"evidence metric {metric!r} is not of the form role.field (e.g. 'model.kl')")
            elif name not in ModelFigures.model_fields:
                known = ", ".join(ModelFigures.model_fields)
                problems.append(f"evidence metric {metric!r}: no measured figure {name!r} (known: {known})")
        return problems


class Question(Strict):
    id: str
    part: str
    match: str          # regex that identifies the question's markdown
    text: str = ""      # the question as the report shows it
    points: float = Field(gt=0)
    limit: int = Field(gt=0)
    # positive: an answer starts at 0 and rubric items add; negative: it starts at full points and
    # items deduct. Either way the points are kept within 0..points.
    scoring: Literal["positive", "negative"] = "positive"
    rubric: list[RubricItemSpec] = []
    evidence: Evidence = Field(default_factory=Evidence)

    @model_validator(mode="after")
    def _evidence_metrics_exist(self) -> "Question":
        problems = self.evidence.metric_problems()
        if problems:  # raised here, not in Evidence, so that the message names the question
            raise ValueError(f"question {self.id}: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _rubric_within_points(self) -> "Question":
        for item in self.rubric:
            if abs(item.points) > self.points:
                raise ValueError(f"rubric item {item.text!r}: {item.points:g} points, more than the question's {self.points:g}")
        return self

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern


class CheckBase(Strict):
    id: str
    title: str
    points: float = Field(gt=0)


class KLUnitCheck(CheckBase):
    kind: Literal["kl_unit"]
    rtol: float = Field(gt=0)


class ReparamUnitCheck(CheckBase):
    kind: Literal["reparam_unit"]
    mean_tol: float = Field(gt=0)
    std_tol: float = Field(gt=0)


class ReconstructionCheck(CheckBase):
    kind: Literal["reconstruction"]
    model: str                  # a [[models]] role
    slack: float = Field(ge=1.0)
    floor: Literal["mean_image"] = "mean_image"


class KLUnconstrainedCheck(CheckBase):
    """A VAE trained without a KL penalty (β = 0): its KL grows far past a tuned one's, and it
    reconstructs like an autoencoder."""

    kind: Literal["kl_unconstrained"]
    model: str                  # a VAE role
    kl_factor: float = Field(gt=1.0)   # KL at least this many times the tuned reference's (best β)
    slack: float = Field(ge=1.0)


class KLCollapseCheck(CheckBase):
    """A VAE whose KL penalty dominates (a large β): its posterior collapses onto the prior, its
    reconstructions blur toward the reference's at that β."""

    kind: Literal["kl_collapse"]
    model: str                  # a VAE role
    kl_max: float = Field(gt=0)
    slack: float = Field(ge=1.0)
    kl_band_factor: float = Field(gt=1.0)   # zero KL credit from this x kl_max
    decoder_floor: float = Field(gt=0)      # no credit at an MSE above this x max(mean image, reference)


class SampleWeights(Strict):
    fid: float = Field(ge=0)
    confidence: float = Field(ge=0)
    coverage: float = Field(ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SampleWeights":
        if abs(self.fid + self.confidence + self.coverage - 1.0) > 1e-9:
            raise ValueError("fid + confidence + coverage must be 1")
        return self


class SampleQualityCheck(CheckBase):
    kind: Literal["sample_quality"]
    model: str                  # a [[models]] role
    slack: float = Field(ge=1.0)
    fid_floor_factor: float = Field(gt=1.0)
    weights: SampleWeights
    max_memorised_share: float = Field(ge=0, le=1)   # more copies of training images: no credit
    confidence_floor: float = Field(ge=0, lt=1)      # no confidence credit at this mean confidence
    coverage_margin: float = Field(ge=0, le=1)       # full coverage credit this far below the reference's


class BestBetaCheck(CheckBase):
    kind: Literal["best_beta"]


class InterpolationCheck(CheckBase):
    kind: Literal["interpolation"]
    models: list[str] = Field(min_length=1)   # [[models]] roles
    slack: float = Field(ge=1.0)


CheckSpec = Annotated[
    Union[
        KLUnitCheck,
        ReparamUnitCheck,
        ReconstructionCheck,
        KLUnconstrainedCheck,
        KLCollapseCheck,
        SampleQualityCheck,
        BestBetaCheck,
        InterpolationCheck,
    ],
    Field(discriminator="kind"),
]


class Scoring(Strict):
    """Rules every check's partial credit follows (grader/score.py)."""

    # Where a reference lies beyond a band's zero-credit end (a β so large that the mean image
    # does better), the band keeps its zero end at least this factor past full credit instead of
    # turning upside down: full_at x factor for lower-is-better figures, full_at / factor for
    # higher-is-better ones.
    min_band_factor: float = Field(gt=1.0)


class Assessable(Strict):
    model: str                  # the [[models]] role whose reference must have learned
    max_reference_mse_ratio: float = Field(gt=0, le=1)


class MarkingSettings(Strict):
    """How `grader mark` groups similar answers (grader.marking.groups)."""

    # Answers join a group while their mean cosine distance (word and character TF-IDF) to its
    # members is under this: 0 = identical texts only, 1 = everything in one group.
    group_distance: float = Field(default=0.6, gt=0, lt=1)
    group_word_ngrams: tuple[int, int] = (1, 2)
    group_char_ngrams: tuple[int, int] = (3, 5)

    @field_validator("group_word_ngrams", "group_char_ngrams")
    @classmethod
    def _ngram_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError(f"an n-gram range is [smallest, largest] with 1 <= smallest <= largest, not {list(value)}")
        return value


class AssignmentConfig(Strict):
    assignment: AssignmentInfo
    classifier: ClassifierInfo
    parameters: Parameters
    models: list[ModelSpec] = Field(min_length=1)
    contract: Contract
    architecture: Architecture
    reference: ReferenceInfo
    limits: Limits
    probe: ProbeInfo
    questions: list[Question] = Field(min_length=1)
    checks: list[CheckSpec] = Field(min_length=1)
    scoring: Scoring
    assessable: Assessable
    marking: MarkingSettings = Field(default_factory=MarkingSettings)

    # Set by load_config: the folder the relative paths above are resolved against.
    base_dir: Path = Path(".")
    digest: str = ""

    @model_validator(mode="after")
    def _models_are_consistent(self) -> "AssignmentConfig":
        roles = [m.role for m in self.models]
        for what, names in (("role", roles), ("variable", [m.variable for m in self.models])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"models: duplicate {what}(s): {', '.join(dupes)}")
        if sum(m.tuned for m in self.models) > 1:
            raise ValueError("models: at most one model has beta = \"tuned\"")
        return self

    @model_validator(mode="after")
    def _roles_named_are_models(self) -> "AssignmentConfig":
        """Every role a check, the assessability test or an evidence list names is a declared model
        (of the kind its check measures)."""
        kinds = {m.role: m.kind for m in self.models}
        known = ", ".join(kinds)

        def need(role: str, where: str, kind: str | None = None) -> None:
            if role not in kinds:
                raise ValueError(f"{where} names the role {role!r}, which is not a model of [[models]] (known: {known})")
            if kind is not None and kinds[role] != kind:
                raise ValueError(f"{where} names the role {role!r}, a model of kind {kinds[role]}; it measures a {kind}")

        for check in self.checks:
            for role in getattr(check, "models", None) or [getattr(check, "model", None)]:
                if role is not None:
                    need(role, f"check {check.id}",
                         "vae" if check.kind in ("kl_unconstrained", "kl_collapse") else None)
        need(self.assessable.model, "assessable.model")
        for question in self.questions:
            for metric in question.evidence.metrics:
                need(metric.partition(".")[0], f"question {question.id}: evidence metric {metric!r}")
        if any(c.kind == "best_beta" for c in self.checks) and self.tuned_model is None:
            raise ValueError("a best_beta check needs a model with beta = \"tuned\"")
        return self

    @model_validator(mode="after")
    def _ids_unique(self) -> "AssignmentConfig":
        for kind, ids in (("question", [q.id for q in self.questions]), ("check", [c.id for c in self.checks])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} id(s): {', '.join(dupes)}")
        return self

    def path(self, relative: str) -> Path:
        return self.base_dir / relative

    # --- the models -----------------------------------------------------------------------------

    def model(self, role: str) -> ModelSpec:
        for spec in self.models:
            if spec.role == role:
                return spec
        raise KeyError(role)

    def model_names(self) -> dict[str, str]:
        """Role -> kernel variable, for every model, in the config's order."""
        return {m.role: m.variable for m in self.models}

    def labels(self) -> dict[str, str]:
        """Role -> the label a reader sees."""
        return {m.role: m.label for m in self.models}

    @property
    def tuned_model(self) -> ModelSpec | None:
        """The model whose β the student chooses, if one is."""
        return next((m for m in self.models if m.tuned), None)

    def fixed_betas(self) -> dict[str, float]:
        """Role -> β of the VAEs whose β the config fixes, in order."""
        return {m.role: m.fixed_beta for m in self.models if m.fixed_beta is not None}

    def model_class(self, kind: ModelKind) -> type:
        """The architecture's class for a kind of model (built as Class(latent size))."""
        return _load_class(self.architecture.target(kind), self.base_dir)

    def latent_size(self, params: dict[str, ParamValue]) -> int:
        return int(params[self.parameters.roles.latent_size])  # type: ignore[arg-type]

    @property
    def max_auto_points(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def max_answer_points(self) -> float:
        return sum(q.points for q in self.questions)

    def resolve_parameters(
        self, overrides: dict[str, ParamValue] | None = None, preset: str | None = None
    ) -> dict[str, ParamValue]:
        """Defaults, then a preset, then the user's overrides; each checked against its spec."""
        values = self.parameters.defaults()
        layers: list[tuple[str, dict[str, ParamValue]]] = []
        if preset:
            if preset not in self.parameters.presets:
                known = ", ".join(sorted(self.parameters.presets)) or "none"
                raise ConfigError(f"unknown parameter preset {preset!r} (known: {known})")
            layers.append((f"preset {preset!r}", dict(self.parameters.presets[preset])))
        layers.append(("-p", dict(overrides or {})))
        for source, layer in layers:
            for name, value in layer.items():
                if name not in self.parameters.spec:
                    known = ", ".join(self.parameters.spec)
                    raise ConfigError(f"{source}: unknown parameter {name!r} (known: {known})")
                try:
                    values[name] = self.parameters.spec[name].coerce(value)
                except ValueError as exc:
                    raise ConfigError(f"{source}: parameter {name}: {exc}") from exc
        return values


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid assignment config"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: Path | str | None = None) -> AssignmentConfig:
    """Read and validate the assignment config; ConfigError names the file and the field."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the assignment config ({exc.strerror})") from exc
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    raw["base_dir"] = path.resolve().parent
    raw["digest"] = hashlib.sha256(raw_bytes).hexdigest()
    try:
        return AssignmentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from exc


def parse_override(text: str) -> tuple[str, ParamValue]:
    """`NAME=VALUE` from the command line; VALUE read as a Python literal, else as a string."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"-p {text!r}: expected NAME=VALUE")
    value = value.strip()
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    if not isinstance(parsed, (int, float, str, type(None))):
        raise ConfigError(f"-p {text!r}: VALUE must be a number, a string or None")
    return name.strip(), parsed
