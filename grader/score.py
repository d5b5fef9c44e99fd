"""Points per check from the measured metrics, with partial credit that follows each metric.

Each check kind has one scoring function: (check spec, measurement) -> CheckResult. Messages say
what was measured and what was expected. When the reference itself has not learned at the run's
parameters, quality checks are "not assessable": they neither award nor withhold points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .config import (
    AssignmentConfig,
    BestBetaCheck,
    CheckSpec,
    InterpolationCheck,
    KLCollapseCheck,
    KLUnconstrainedCheck,
    KLUnitCheck,
    ReconstructionCheck,
    ReparamUnitCheck,
    SampleQualityCheck,
)
from .records import CheckReason, CheckResult, Measurement, ModelFigures
from .text import format_quantity


def linear_credit(value: float, full_at: float, zero_at: float) -> float:
    """1 at full_at, 0 at zero_at, linear between, clipped; works in either direction."""
    if value is None or not math.isfinite(value):
        return 0.0
    if full_at == zero_at:
        return 1.0 if value == full_at else 0.0
    share = (value - zero_at) / (full_at - zero_at)
    return min(1.0, max(0.0, share))


def lower_credit(value: float | None, full_at: float, zero_at: float | None, min_band: float) -> float:
    """Credit for a lower-is-better figure. When the reference itself sits beyond the floor (a
    β so large that the mean image does better), the band keeps its zero end at least min_band x
    full credit (the config's scoring.min_band_factor) instead of turning upside down.

    zero_at is None where the figure that sets it was not measured: a value that is missing or
    at full credit is scored without it, any other raises (see _no_zero_end)."""
    if value is None or not math.isfinite(value):
        return 0.0
    if value <= full_at:
        return 1.0
    if zero_at is None:
        raise _no_zero_end("lower_credit", value, full_at)
    return linear_credit(value, full_at, max(zero_at, full_at * min_band))


def higher_credit(value: float | None, full_at: float, zero_at: float | None, min_band: float) -> float:
    """Credit for a higher-is-better figure; the mirror of lower_credit (zero at most at
    full_at / min_band)."""
    if value is None or not math.isfinite(value):
        return 0.0
    if value >= full_at:
        return 1.0
    if zero_at is None:
        raise _no_zero_end("higher_credit", value, full_at)
    zero_at = min(zero_at, full_at * (1 / min_band))
    return 0.0 if zero_at >= full_at else linear_credit(value, full_at, zero_at)


def _no_zero_end(scorer: str, value: float, full_at: float) -> TypeError:
    # Partial credit needs the band's zero end. The figures that set it (the mean image's MSE, the
    # reference's) are the grader's own, always measured; scoring without one is a bug, raised
    # as the TypeError that arithmetic on the None raised before these functions checked for it.
    return TypeError(f"{scorer}: {value:g} is short of full credit ({full_at:g}) and the band has no zero end")


def _known(value: float | None, what: str) -> float:
    """A figure of the grader's own that a band is computed from. measure() always sets them, so
    None is a bug: raised as the TypeError that multiplying the None raised before."""
    if value is None:
        raise TypeError(f"{what} was not measured: the band cannot be computed")
    return value


def _fmt(value: float | None, digits: int = 4) -> str:
    # "n/a" and exponent form from 1e4 up, not the report's "—" and 1e5: the messages' style before
    # the formatter was shared, kept so that re-grading writes the messages it wrote before.
    return format_quantity(value, digits, missing="n/a", exponent_from=1e4)


def _result(check: CheckSpec, share: float, message: str, band: str = "", reason: CheckReason = "measured",
            missing: list[str] | None = None) -> CheckResult:
    assessable = reason != "not_assessable"
    points = round(check.points * share, 2) if assessable else 0.0
    return CheckResult(
        id=check.id, title=check.title, points=points, max_points=check.points,
        message=message, band=band, assessable=assessable, reason=reason, missing=missing or [],
    )


def _missing(check: CheckSpec, message: str, *parts: str) -> CheckResult:
    """Zero because the parts named could not be measured."""
    return _result(check, 0.0, message, reason="missing", missing=list(parts))


def _unmeasurable(check: CheckSpec, m: Measurement, *parts: str) -> CheckResult | None:
    missing = [part for part in parts if part in m.missing]
    if missing:
        return _missing(check, "Could not be measured — " + "; ".join(f"{part}: {m.missing[part]}" for part in missing),
                        *missing)
    return None


def _not_assessable(check: CheckSpec, m: Measurement, *parts: str) -> CheckResult:
    """Neither awarded nor withheld; what was missing is still said, so the student can fix it."""
    missing = [part for part in parts if part in m.missing]
    also = "".join(f" Also, {part} could not be measured: {m.missing[part]}." for part in missing)
    return _result(
        check, 0.0,
        f"Not assessable at these parameters: {m.assessable_reason}. No points awarded or withheld.{also}",
        reason="not_assessable", missing=missing,
    )


def _gate(check: CheckSpec, m: Measurement, *parts: str) -> CheckResult | None:
    """The result of a quality check that cannot be scored: parameters too small to assess, then
    a part of the student's notebook that could not be measured; None when it can be scored."""
    if not m.assessable:
        return _not_assessable(check, m, *parts)
    return _unmeasurable(check, m, *parts)


def _figures(m: Measurement, side: str, role: str) -> ModelFigures:
    return getattr(m.metrics, side).get(role) or ModelFigures()


def _best(m: Measurement, config: AssignmentConfig) -> ModelFigures:
    """The reference's VAE at its own best β (results written before that anchor existed hold
    only the reference at the student's β, under the tuned model's role)."""
    if m.metrics.reference_best is not None:
        return m.metrics.reference_best
    tuned = config.tuned_model
    return _figures(m, "reference", tuned.role) if tuned is not None else ModelFigures()


def score_kl(check: KLUnitCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _unmeasurable(check, m, "kl_divergence")):
        return early
    unit = m.metrics.kl_unit
    if unit is None:
        return _missing(check, "Could not be measured — kl_divergence: no result", "kl_divergence")
    err = unit.max_rel_error
    ok = err is not None and err <= check.rtol
    message = (
        f"kl_divergence on {unit.rows} fixed (mu, log_sigma) rows: max relative error {_fmt(err)} against the "
        f"analytic KL (allowed {check.rtol:g}); mean {_fmt(unit.student_mean)} vs expected "
        f"{_fmt(unit.analytic_mean)}."
    )
    if not ok and unit.student_mean is not None and unit.student_mean < 0:
        message += " The KL divergence is never negative: check the sign of your expression."
    return _result(check, 1.0 if ok else 0.0, message, band=f"full credit at relative error <= {check.rtol:g}")


def score_reparam(check: ReparamUnitCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _unmeasurable(check, m, "reparameterize")):
        return early
    unit = m.metrics.reparam_unit
    if unit is None:
        return _missing(check, "Could not be measured — reparameterize: no result", "reparameterize")
    if unit.no_noise:
        return _result(check, 0.0, "reparameterize returned mu unchanged: no noise was added, so "
                       "the model cannot learn a distribution (expected mu + sigma * eps, eps ~ N(0, I)).",
                       reason="gated")
    mean_err, std_err = unit.mean_error, unit.std_error
    mean_ok = mean_err is not None and mean_err <= check.mean_tol
    std_ok = std_err is not None and std_err <= check.std_tol
    message = (
        f"{unit.draws} draws: mean off by {_fmt(mean_err)} sigma (allowed {check.mean_tol:g}), "
        f"std off by {_fmt(std_err)} of sigma (allowed {check.std_tol:g})."
    )
    if mean_ok and not std_ok:
        message += " The spread is wrong: sigma = exp(log_sigma), eps ~ N(0, I)."
    return _result(check, (mean_ok + std_ok) / 2, message,
                   band="half for the mean, half for the spread")


def score_reconstruction(check: ReconstructionCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _gate(check, m, check.model)):
        return early
    model = config.model(check.model)
    student = _figures(m, "student", check.model).mse
    reference = _figures(m, "reference", check.model).mse
    floor = m.metrics.mean_image_mse
    full_at = check.slack * _known(reference, f"the reference {check.model}'s MSE")
    share = lower_credit(student, full_at, floor, config.scoring.min_band_factor)
    band = f"full credit at MSE <= {_fmt(full_at)}, none at >= {_fmt(floor)} (the mean image)"
    message = (
        f"{model.label} test MSE per pixel {_fmt(student)}; reference"
        f"{' at the same beta' if model.tuned else ''} {_fmt(reference)}; "
        f"predicting the mean image gives {_fmt(floor)}."
    )
    return _result(check, share, message, band)


def score_kl_unconstrained(check: KLUnconstrainedCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _gate(check, m, check.model)):
        return early
    band_factor = config.scoring.min_band_factor
    label = config.model(check.model).label
    student = _figures(m, "student", check.model)
    tuned_kl = _known(_best(m, config).kl, "the tuned reference's KL")
    reference = _figures(m, "reference", check.model)
    kl_full_at = check.kl_factor * tuned_kl
    kl_share = higher_credit(student.kl, kl_full_at, tuned_kl, band_factor)
    mse_full_at = check.slack * _known(reference.mse, f"the reference {check.model}'s MSE")
    mse_share = lower_credit(student.mse, mse_full_at, m.metrics.mean_image_mse, band_factor)
    message = (
        f"{label}: KL {_fmt(student.kl)} nats (expected far above the tuned reference's {_fmt(tuned_kl)}, "
        f"at least {_fmt(kl_full_at)}; reference {label}: {_fmt(reference.kl)}); "
        f"MSE {_fmt(student.mse)} (reference {_fmt(reference.mse)})."
    )
    band = "half for an unconstrained KL, half for reconstruction"
    return _result(check, (kl_share + mse_share) / 2, message, band)


def score_kl_collapse(check: KLCollapseCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _gate(check, m, check.model)):
        return early
    band_factor = config.scoring.min_band_factor
    label = config.model(check.model).label
    student = _figures(m, "student", check.model)
    reference = _figures(m, "reference", check.model)
    tuned = _best(m, config)
    # An untrained encoder also has a KL near zero: the collapse counts only where the decoder
    # learned about as much as a collapsed VAE's does, the mean image (or the reference's
    # decoder at this β, where that is still short of it).
    floor = check.decoder_floor * max(m.metrics.mean_image_mse or 0.0, reference.mse or 0.0)
    if student.mse is None or student.mse > floor:
        return _result(check, 0.0, (
            f"{label}: MSE {_fmt(student.mse)}, worse than {_fmt(floor)} ({check.decoder_floor:g} x the mean "
            f"image's {_fmt(m.metrics.mean_image_mse)} or the reference {label}'s {_fmt(reference.mse)}): "
            f"the decoder learned nothing, so its KL of {_fmt(student.kl)} nats shows no collapse to the prior."),
            band=f"none at an MSE above {_fmt(floor)}", reason="gated")
    kl_share = lower_credit(student.kl, check.kl_max, max(tuned.kl or 0.0, check.kl_band_factor * check.kl_max),
                            band_factor)
    # Worse reconstruction than a tuned VAE is the expected behaviour, as far as the reference's.
    worse_full_at = _known(reference.mse, f"the reference {check.model}'s MSE") / check.slack
    worse_share = higher_credit(student.mse, worse_full_at, tuned.mse, band_factor)
    message = (
        f"{label}: KL {_fmt(student.kl)} nats (expected near zero, <= {check.kl_max:g}; reference "
        f"{_fmt(reference.kl)}); MSE {_fmt(student.mse)} (reference {label} {_fmt(reference.mse)}, "
        f"tuned {_fmt(tuned.mse)}: the prior should dominate and blur reconstructions)."
    )
    band = "half for a collapsed KL, half for reconstructions as blurred as the reference's"
    return _result(check, (kl_share + worse_share) / 2, message, band)


def score_samples(check: SampleQualityCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _gate(check, m, check.model)):
        return early
    band_factor = config.scoring.min_band_factor
    s, r = _figures(m, "student", check.model), _figures(m, "reference", check.model)
    if s.sample_memorised is not None and s.sample_memorised > check.max_memorised_share:
        return _result(check, 0.0, (
            f"{100 * s.sample_memorised:.0f}% of the decoded prior samples are copies of MNIST images "
            f"(allowed {100 * check.max_memorised_share:.0f}%): a generator that reproduces stored digits "
            f"earns no sample credit, whatever its Fréchet distance ({_fmt(s.sample_fid)})."),
            band="no credit for memorised samples", reason="gated")
    ref_fid = _known(r.sample_fid, f"the reference {check.model}'s Fréchet distance")
    fid_full_at, fid_zero_at = check.slack * ref_fid, check.fid_floor_factor * ref_fid
    fid_share = lower_credit(s.sample_fid, fid_full_at, fid_zero_at, band_factor)
    ref_confidence = _known(r.sample_confidence, f"the reference {check.model}'s sample confidence")
    conf_share = higher_credit(s.sample_confidence, ref_confidence / check.slack, check.confidence_floor,
                               band_factor)
    ref_coverage = _known(r.sample_coverage, f"the reference {check.model}'s class coverage")
    cov_share = higher_credit(s.sample_coverage, ref_coverage - check.coverage_margin, 0.0, band_factor)
    w = check.weights
    # Fréchet distance and confidence count in proportion to class coverage: a generator of one
    # confidently classified blob (an untrained decoder) is neither diverse nor close to MNIST.
    share = cov_share * (w.fid * fid_share + w.confidence * conf_share) + w.coverage * cov_share
    message = (
        f"Fréchet distance {_fmt(s.sample_fid)} (reference at the same beta {_fmt(r.sample_fid)}), "
        f"classifier confidence {_fmt(s.sample_confidence)} (reference {_fmt(r.sample_confidence)}), "
        f"class coverage {_fmt(s.sample_coverage)} (reference {_fmt(r.sample_coverage)})."
    )
    band = (f"Fréchet distance: full credit <= {_fmt(fid_full_at)}, none >= "
            f"{_fmt(fid_zero_at)} ({w.fid:.0%}); confidence {w.confidence:.0%}; "
            f"coverage {w.coverage:.0%}; the first two scaled by the coverage credit")
    return _result(check, share, message, band)


def score_best_beta(check: BestBetaCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    good = m.metrics.reference_good_betas
    if not m.assessable or not good:
        return _not_assessable(check, m)
    if m.best_beta is None:
        return _missing(check, "best_beta was not found in the kernel nor in the markdown.", "best_beta")
    low, high = min(good), max(good)
    ok = low <= m.best_beta <= high
    message = (
        f"best_beta = {_fmt(m.best_beta)}; the reference sweep found betas from {_fmt(low)} to "
        f"{_fmt(high)} good (best {_fmt(m.metrics.reference_best_beta)})."
    )
    return _result(check, 1.0 if ok else 0.0, message, band=f"full credit within [{_fmt(low)}, {_fmt(high)}]")


def score_interpolation(check: InterpolationCheck, m: Measurement, config: AssignmentConfig) -> CheckResult:
    if (early := _gate(check, m, *check.models)):
        return early
    band_factor = config.scoring.min_band_factor
    shares, parts = [], []
    for role in check.models:
        s, r = _figures(m, "student", role), _figures(m, "reference", role)
        accept = higher_credit(s.interp_accept, (r.interp_accept or 0.0) / check.slack, 0.0, band_factor)
        # smoothness is the largest step over the path's length: 1 is a path that is one jump
        smooth = lower_credit(s.interp_smoothness, check.slack * (r.interp_smoothness or 1.0), 1.0, band_factor)
        # A path counts only between recognisable ends: a constant, confidently classified blob
        # would otherwise be "smooth and recognisable".
        ends = higher_credit(s.interp_endpoints, (r.interp_endpoints or 0.0) / check.slack, 0.0, band_factor)
        shares.append(ends * (accept + smooth) / 2)
        parts.append(
            f"{config.model(role).label}: {_fmt(s.interp_endpoints)} of paths start and end on their own digits (reference "
            f"{_fmt(r.interp_endpoints)}), {_fmt(s.interp_accept)} of intermediate images recognised (reference "
            f"{_fmt(r.interp_accept)}), smoothness {_fmt(s.interp_smoothness)} (reference "
            f"{_fmt(r.interp_smoothness)}, lower is smoother)"
        )
    band = ("per model: half for recognisable intermediates, half for even steps, both scaled by the "
            "share of paths whose ends decode to their own digits")
    return _result(check, sum(shares) / len(shares), "; ".join(parts) + ".", band)


# The first argument is the check of the scorer's own kind: score_checks dispatches on check.kind,
# which the types cannot follow from a str key.
Scorer = Callable[[Any, Measurement, AssignmentConfig], CheckResult]

SCORERS: dict[str, Scorer] = {
    "kl_unit": score_kl,
    "reparam_unit": score_reparam,
    "reconstruction": score_reconstruction,
    "kl_unconstrained": score_kl_unconstrained,
    "kl_collapse": score_kl_collapse,
    "sample_quality": score_samples,
    "best_beta": score_best_beta,
    "interpolation": score_interpolation,
}


def score_checks(config: AssignmentConfig, measurement: Measurement) -> list[CheckResult]:
    return [SCORERS[check.kind](check, measurement, config) for check in config.checks]


def totals(checks: list[CheckResult]) -> tuple[float, float]:
    """(score, max_score) over the assessable checks."""
    assessable = [c for c in checks if c.assessable]
    return round(sum(c.points for c in assessable), 2), round(sum(c.max_points for c in assessable), 2)
