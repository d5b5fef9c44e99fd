"""The assignment config (TOML), validated on load.

Everything notebook-specific — parameter names and defaults, kernel names, questions, checks and
their thresholds — lives in the config so that a new handout needs no code change. pydantic does
the validation because its errors name the exact field at fault.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .paths import DEFAULT_CONFIG

ParamValue = int | float | str | None


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


class Parameters(Strict):
    tag: str = "parameters"
    data_dir: str = "DATA_DIR"   # the parameter the grader points at its read-only MNIST copy
    spec: dict[str, ParameterSpec]
    presets: dict[str, dict[str, int | float | str]] = {}

    @model_validator(mode="after")
    def _presets_name_known_parameters(self) -> "Parameters":
        for preset, values in self.presets.items():
            for name, value in values.items():
                if name not in self.spec:
                    raise ValueError(f"preset {preset!r} sets unknown parameter {name!r}")
                self.spec[name].coerce(value)
        if self.data_dir not in self.spec:
            raise ValueError(f"data_dir names {self.data_dir!r}, which is not a parameter")
        return self

    def defaults(self) -> dict[str, ParamValue]:
        return {name: spec.default for name, spec in self.spec.items()}


class Contract(Strict):
    ae: str
    vae_beta0: str
    vae_beta10: str
    vae_tuned: str
    best_beta: str
    kl_divergence: str
    reparameterize: str
    ae_history: str
    vae_histories: str
    best_beta_pattern: str

    def model_names(self) -> dict[str, str]:
        """Role -> kernel variable, for the four models."""
        return {role: getattr(self, role) for role in ("ae", "vae_beta0", "vae_beta10", "vae_tuned")}


class Architecture(Strict):
    """The architecture the handout prescribes. The grader measures a student's model by loading
    the weights it hands back into its own copy of these classes, never by calling the student's
    objects, so nothing the student's code does at run time can change what is measured."""

    ae: str                              # "module:Class", built as Class(latent size)
    vae: str
    latent: str                          # the parameter that holds the latent size
    kinds: dict[str, Literal["ae", "vae"]]   # role -> kind, one per model in the contract

    def kind(self, role: str) -> Literal["ae", "vae"]:
        return self.kinds[role]

    def model_class(self, role: str) -> type:
        import importlib

        module, _, name = getattr(self, self.kind(role)).partition(":")
        return getattr(importlib.import_module(module), name)


class ReferenceInfo(Strict):
    betas_fixed: list[float]
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
    n_kl: int = Field(default=64, gt=1)         # rows for the KL unit check
    interp_labels: list[str] = Field(default=["START_LABEL", "END_LABEL"], min_length=2, max_length=2)  # parameters
    seed: int
    max_history_epochs: int = Field(default=1000, gt=0)   # history entries kept per model (figures only)
    max_export_mb: int = Field(default=64, gt=0)          # the weights the kernel may hand back
    unit_timeout_s: float = Field(default=120, gt=0)      # the unit checker's fresh process
    memorised_distance: float = Field(default=0.025, gt=0)  # a sample this close to an MNIST image is a copy


class RubricItemSpec(Strict):
    """A starting rubric item (Gradescope-style); staff edit the rubric in `grader mark`."""

    text: str = Field(min_length=1)
    points: float        # positive adds, negative deducts


class Evidence(Strict):
    """What of the student's own work a marker sees beside an answer (in `grader mark`)."""

    figures: list[str] = []    # figure names of the result record (result.figures), in this order
    metrics: list[str] = []    # "role.field" of Metrics.student / Metrics.reference, e.g. "vae_beta0.kl"
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
                problems.append(f"evidence metric {metric!r} is not of the form role.field (e.g. 'vae_beta0.kl')")
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
    model: Literal["ae", "vae_beta0", "vae_beta10", "vae_tuned"]
    slack: float = Field(ge=1.0)
    floor: Literal["mean_image"] = "mean_image"


class Beta0Check(CheckBase):
    kind: Literal["beta0_behaviour"]
    model: Literal["vae_beta0"] = "vae_beta0"
    kl_factor: float = Field(gt=1.0)
    slack: float = Field(ge=1.0)


class Beta10Check(CheckBase):
    kind: Literal["beta10_behaviour"]
    model: Literal["vae_beta10"] = "vae_beta10"
    kl_max: float = Field(gt=0)
    slack: float = Field(ge=1.0)
    kl_band_factor: float = Field(default=2.0, gt=1.0)   # zero KL credit from this x kl_max
    decoder_floor: float = Field(default=1.25, gt=0)     # no credit at an MSE above this x max(mean image, reference)


class SampleWeights(Strict):
    fid: float = Field(default=0.6, ge=0)
    confidence: float = Field(default=0.2, ge=0)
    coverage: float = Field(default=0.2, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SampleWeights":
        if abs(self.fid + self.confidence + self.coverage - 1.0) > 1e-9:
            raise ValueError("fid + confidence + coverage must be 1")
        return self


class SampleQualityCheck(CheckBase):
    kind: Literal["sample_quality"]
    model: Literal["vae_tuned", "vae_beta0", "vae_beta10"] = "vae_tuned"
    slack: float = Field(ge=1.0)
    fid_floor_factor: float = Field(gt=1.0)
    weights: SampleWeights = Field(default_factory=SampleWeights)
    max_memorised_share: float = Field(default=0.1, ge=0, le=1)   # more copies of MNIST: no credit


class BestBetaCheck(CheckBase):
    kind: Literal["best_beta"]


class InterpolationCheck(CheckBase):
    kind: Literal["interpolation"]
    models: list[Literal["ae", "vae_tuned"]] = Field(min_length=1)
    accept_confidence: float = Field(gt=0, lt=1)
    slack: float = Field(ge=1.0)


CheckSpec = Annotated[
    Union[
        KLUnitCheck,
        ReparamUnitCheck,
        ReconstructionCheck,
        Beta0Check,
        Beta10Check,
        SampleQualityCheck,
        BestBetaCheck,
        InterpolationCheck,
    ],
    Field(discriminator="kind"),
]


class Assessable(Strict):
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
    contract: Contract
    architecture: Architecture
    reference: ReferenceInfo
    limits: Limits
    probe: ProbeInfo
    questions: list[Question] = Field(min_length=1)
    checks: list[CheckSpec] = Field(min_length=1)
    assessable: Assessable
    marking: MarkingSettings = Field(default_factory=MarkingSettings)

    # Set by load_config: the folder the relative paths above are resolved against.
    base_dir: Path = Path(".")
    digest: str = ""

    @model_validator(mode="after")
    def _every_model_has_a_kind(self) -> "AssignmentConfig":
        missing = sorted(set(self.contract.model_names()) - set(self.architecture.kinds))
        if missing:
            raise ValueError(f"architecture.kinds: no kind (ae or vae) for the model(s) {', '.join(missing)}")
        if self.architecture.latent not in self.parameters.spec:
            raise ValueError(f"architecture.latent names {self.architecture.latent!r}, which is not a parameter")
        return self

    @model_validator(mode="after")
    def _evidence_roles_are_models(self) -> "AssignmentConfig":
        roles = self.contract.model_names()
        for question in self.questions:
            for metric in question.evidence.metrics:
                role = metric.partition(".")[0]
                if role not in roles:
                    raise ValueError(f"question {question.id}: evidence metric {metric!r} names the role {role!r}, "
                                     f"which is not a model of the contract (known: {', '.join(roles)})")
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
