"""Scoring: partial credit computed by hand, and each check's message and defect."""

from __future__ import annotations

import pytest

from grader.config import load_config
from grader.records import KLUnitFigures, Measurement, Metrics, ModelFigures, ReparamUnitFigures, StudentMeasurement
from grader.score import (
    higher_credit,
    linear_credit,
    lower_credit,
    score_checks,
    totals,
)

CONFIG = load_config()


def test_linear_credit_in_both_directions():
    assert linear_credit(0.05, full_at=0.04, zero_at=0.06) == pytest.approx(0.5)
    assert linear_credit(0.03, full_at=0.04, zero_at=0.06) == 1.0
    assert linear_credit(0.07, full_at=0.04, zero_at=0.06) == 0.0
    assert linear_credit(300, full_at=100, zero_at=20) == 1.0
    assert linear_credit(60, full_at=100, zero_at=20) == pytest.approx(0.5)
    assert linear_credit(float("nan"), 1, 0) == 0.0


def test_bands_never_turn_upside_down():
    band = CONFIG.scoring.min_band_factor
    assert band == 1.25   # the shipped rubric's, which the numbers below follow
    # reference 0.08 beyond the floor 0.067: full credit up to 0.08, zero at 0.1
    assert lower_credit(0.075, full_at=0.08, zero_at=0.067, min_band=band) == 1.0
    assert lower_credit(0.09, full_at=0.08, zero_at=0.067, min_band=band) == pytest.approx(0.5)
    assert higher_credit(0.9, full_at=1.0, zero_at=1.2, min_band=band) == pytest.approx(0.5)
    assert higher_credit(0.0, full_at=0.0, zero_at=0.0, min_band=band) == 1.0
    assert lower_credit(None, 1, 2, min_band=band) == 0.0
    # the factor is the config's: a wider one moves the zero end
    assert lower_credit(0.09, full_at=0.08, zero_at=0.067, min_band=1.5) == pytest.approx(0.75)
    assert higher_credit(0.9, full_at=1.0, zero_at=1.2, min_band=2.0) == pytest.approx(0.8)


def test_a_band_without_its_zero_end_scores_only_what_needs_none():
    # A figure that sets the zero end was not measured (None): as before the functions checked
    # for it, missing and full-credit values still score and anything else raises TypeError.
    assert lower_credit(None, 1.0, None, min_band=1.25) == 0.0
    assert lower_credit(0.5, 1.0, None, min_band=1.25) == 1.0
    assert higher_credit(2.0, 1.0, None, min_band=1.25) == 1.0
    with pytest.raises(TypeError):
        lower_credit(1.5, 1.0, None, min_band=1.25)
    with pytest.raises(TypeError):
        higher_credit(0.5, 1.0, None, min_band=1.25)


# --- a builder of the measure stage's real output ------------------------------------------------
# Scoring is fed what grader/measure.py returns: a StudentMeasurement holding a Metrics with
# ModelFigures per role. pydantic ignores an unknown keyword, so every record is built through
# `typed`, which refuses a field the record does not have: a field renamed in grader/records.py
# (or a role renamed in the config) fails here instead of silently scoring None.

STUDENT_ROLES = list(CONFIG.model_names())   # the roles measure() reports for a student


def typed(record, **values):
    unknown = set(values) - set(record.model_fields)
    assert not unknown, f"{record.__name__} has no field(s) {sorted(unknown)}"
    return record(**values)


REFERENCE_VALUES = {
    "ae": {"mse": 0.02, "sample_fid": 40, "sample_confidence": 0.6, "sample_coverage": 0.8,
           "interp_accept": 0.5, "interp_smoothness": 0.3, "interp_endpoints": 1.0},
    "vae_beta0": {"mse": 0.025, "kl": 250.0},
    "vae_beta10": {"mse": 0.085, "kl": 0.01},
    "vae_tuned": {"mse": 0.04, "kl": 25.0, "sample_fid": 10.0, "sample_confidence": 0.9,
                  "sample_coverage": 1.0, "interp_accept": 0.8, "interp_smoothness": 0.2,
                  "interp_endpoints": 0.875, "sample_memorised": 0.0},
}
assert set(REFERENCE_VALUES) == set(STUDENT_ROLES), "the roles the config and measure_reference use"
# The reference's tuned VAE at its own best β (Metrics.reference_best): the fixed-β checks' anchor.
REFERENCE_BEST = {"mse": 0.04, "kl": 25.0, "sample_fid": 10.0}

GOOD_KL_UNIT = {"rows": 64, "max_rel_error": 1e-7, "student_mean": 30.0, "analytic_mean": 30.0}
GOOD_REPARAM_UNIT = {"mean_error": 0.01, "std_error": 0.01, "no_noise": False, "draws": 4096}


def reference_figures() -> dict[str, ModelFigures]:
    """What measure_reference hands on: the reference's figures per role."""
    return {role: typed(ModelFigures, **values) for role, values in REFERENCE_VALUES.items()}


def measurement(*, missing_models: dict[str, str] | None = None, kl_unit: dict | None = None,
                reparam_unit: dict | None = None, best_beta: float | None = 1.0, not_assessable: str = "",
                reference_best: dict | None = REFERENCE_BEST, **student_changes: dict) -> StudentMeasurement:
    """The StudentMeasurement measure() returns for a student whose figures equal the reference's
    except student_changes (role -> {field: value}); a model in missing_models (role -> why) was
    not measured; not_assessable: the reason the parameters cannot assess quality."""
    assert set(student_changes) <= set(STUDENT_ROLES), f"no such role: {set(student_changes) - set(STUDENT_ROLES)}"
    missing = dict(missing_models or {})
    student = {role: typed(ModelFigures, **{**REFERENCE_VALUES[role], **student_changes.get(role, {})})
               for role in STUDENT_ROLES if role not in missing}
    metrics = typed(
        Metrics, student=student, reference=reference_figures(), mean_image_mse=0.067,
        kl_unit=typed(KLUnitFigures, **(kl_unit or GOOD_KL_UNIT)),
        reparam_unit=typed(ReparamUnitFigures, **(reparam_unit or GOOD_REPARAM_UNIT)),
        reference_good_betas=[1.0, 2.0], reference_best_beta=1.0,
        reference_best=None if reference_best is None else typed(ModelFigures, **reference_best),
    )
    return StudentMeasurement(metrics=metrics, missing=missing, best_beta=best_beta,
                              assessable=not not_assessable, assessable_reason=not_assessable)


def test_the_builder_refuses_a_field_the_records_do_not_have():
    with pytest.raises(AssertionError, match="ModelFigures has no field"):
        measurement(ae={"mse_per_pixel": 0.045})
    with pytest.raises(AssertionError, match="no such role"):
        measurement(vae={"mse": 0.045})


def by_id(m: Measurement) -> dict:
    return {c.id: c for c in score_checks(CONFIG, m)}


def test_a_submission_equal_to_the_reference_gets_full_marks():
    checks = by_id(measurement())
    assert all(c.points == c.max_points for c in checks.values()), [
        (c.id, c.points, c.message) for c in checks.values() if c.points != c.max_points
    ]
    assert totals(list(checks.values())) == (CONFIG.max_auto_points, CONFIG.max_auto_points)
    assert {c.reason for c in checks.values()} == {"measured"} and not any(c.missing for c in checks.values())


def test_kl_sign_error_loses_the_kl_points_and_says_why():
    m = measurement(kl_unit={"rows": 64, "max_rel_error": 2.0, "student_mean": -30.0, "analytic_mean": 30.0})
    kl = by_id(m)["kl_divergence"]
    assert kl.points == 0 and "sign" in kl.message and "-30" in kl.message


def test_reparameterize_without_noise():
    m = measurement(reparam_unit={"mean_error": 0.0, "std_error": 1.0, "no_noise": True, "draws": 4096})
    check = by_id(m)["reparameterize"]
    assert check.points == 0 and "no noise" in check.message
    assert check.reason == "gated" and check.missing == []


def test_reconstruction_credit_is_linear_between_reference_and_mean_image():
    # full at 1.15 * 0.02 = 0.023, zero at 0.067: 0.045 is exactly halfway
    check = by_id(measurement(ae={"mse": 0.045}))["ae_reconstruction"]
    assert check.points == pytest.approx(1.0)
    assert "0.045" in check.message and "0.067" in check.message


def test_beta10_that_does_not_collapse_loses_points():
    check = by_id(measurement(vae_beta10={"kl": 25.0, "mse": 0.04}))["vae_beta10_behaviour"]
    assert check.points == 0


def test_the_fixed_beta_checks_follow_the_reference_at_its_own_best_beta():
    # beta=0: the KL's full credit from kl_factor x the anchor's KL, zero at the anchor's KL. The
    # reference at the student's β (reference[vae_tuned], KL 25 here) is not the anchor.
    at_anchor = by_id(measurement(vae_beta0={"kl": 30.0}))["vae_beta0_behaviour"]
    lower = by_id(measurement(vae_beta0={"kl": 30.0}, reference_best={**REFERENCE_BEST, "kl": 5.0}))["vae_beta0_behaviour"]
    assert at_anchor.points < lower.points == lower.max_points
    assert "reference's 25" in at_anchor.message and "reference's 5" in lower.message
    # a result written before the anchor was measured: the reference at the student's β stands in
    old = by_id(measurement(vae_beta0={"kl": 30.0}, reference_best=None))["vae_beta0_behaviour"]
    assert old.points == at_anchor.points


def test_best_beta_outside_the_good_range():
    check = by_id(measurement(best_beta=50.0))["best_beta"]
    assert check.points == 0 and "50" in check.message
    assert check.reason == "measured"
    m = measurement(best_beta=None)
    assert "not found" in by_id(m)["best_beta"].message
    assert by_id(m)["best_beta"].reason == "missing" and by_id(m)["best_beta"].missing == ["best_beta"]


def test_missing_model_costs_only_its_checks():
    m = measurement(missing_models={"vae_tuned": "NameError: name 'vae_tuned' is not defined"})
    checks = by_id(m)
    for lost in ("vae_tuned_reconstruction", "vae_tuned_samples", "interpolation"):
        assert checks[lost].points == 0 and "vae_tuned" in checks[lost].message
        assert checks[lost].reason == "missing" and checks[lost].missing == ["vae_tuned"]
    assert checks["ae_reconstruction"].points == checks["ae_reconstruction"].max_points
    assert checks["ae_reconstruction"].reason == "measured"


def test_not_assessable_neither_awards_nor_withholds():
    m = measurement(ae={"mse": 0.5}, not_assessable="the reference has not learned",
                    missing_models={"vae_tuned": "NameError: name 'vae_tuned' is not defined"})
    checks = by_id(m)
    # a missing model is still named, but costs nothing the parameters could not assess
    samples = checks["vae_tuned_samples"]
    assert not samples.assessable and "name 'vae_tuned' is not defined" in samples.message
    assert samples.reason == "not_assessable" and samples.missing == ["vae_tuned"]
    quality = checks["ae_reconstruction"]
    assert not quality.assessable and "Not assessable" in quality.message
    score, max_score = totals(list(checks.values()))
    unit_points = checks["kl_divergence"].max_points + checks["reparameterize"].max_points
    assert max_score == unit_points and score == unit_points


def test_beta10_needs_a_decoder_at_least_as_good_as_the_mean_image():
    # an untrained VAE: KL ~0 (looks collapsed), reconstructions worse than the mean image
    check = by_id(measurement(vae_beta10={"kl": 0.001, "mse": 0.2}))["vae_beta10_behaviour"]
    assert check.points == 0 and "learned nothing" in check.message and check.reason == "gated"
    collapsed = by_id(measurement(vae_beta10={"kl": 0.001, "mse": 0.09}))["vae_beta10_behaviour"]
    assert collapsed.points == collapsed.max_points


def test_memorised_samples_earn_no_sample_credit():
    check = by_id(measurement(vae_tuned={"sample_memorised": 0.97, "sample_fid": 1.1}))["vae_tuned_samples"]
    assert check.points == 0 and "97% of the decoded prior samples are copies" in check.message
    assert check.reason == "gated"
    few = by_id(measurement(vae_tuned={"sample_memorised": 0.02}))["vae_tuned_samples"]
    assert few.points == few.max_points


def test_interpolation_between_unrecognisable_ends_earns_nothing():
    # a constant, confidently classified blob: smooth, "recognised", but its ends are not 1 and 9
    blob = {"interp_endpoints": 0.0, "interp_accept": 1.0, "interp_smoothness": 0.11}
    check = by_id(measurement(ae=blob, vae_tuned=blob))["interpolation"]
    assert check.points == 0 and "start and end on their own digits" in check.message
    half = by_id(measurement(ae={"interp_endpoints": 0.5}))["interpolation"]
    # full credit from the reference's 1.0 / slack 1.25 = 0.8, linear to 0: the AE gets 0.5 / 0.8
    assert half.points == pytest.approx(check.max_points * (0.5 / 0.8 + 1.0) / 2, abs=0.01)


def test_a_one_class_generator_earns_almost_no_sample_credit():
    # measured on an untrained VAE at quick: every sample the same blob, "1" with confidence 0.9998
    blob = {"sample_fid": 173.6, "sample_confidence": 0.9998, "sample_coverage": 0.1}
    check = by_id(measurement(vae_tuned=blob))["vae_tuned_samples"]
    assert check.points <= 0.1 * check.max_points
