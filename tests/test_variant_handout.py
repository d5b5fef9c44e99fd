"""A variant handout graded with a config change only (issue 11: "the contract is data").

tests/fixtures/variant/ holds another assignment: convolutional models whose classes the grader
takes from the variant's own solution notebook, other kernel names (autoenc, vae_free, ...,
chosen_beta, kl_to_prior), other parameter names (LATENT, N_EPOCHS, SUBSET, FROM_DIGIT, ...),
three fixed betas instead of two and other labels. Its solution is graded by the real pipeline
(sandboxed kernel, probe, reference trained in the variant's architecture, scoring, PDF) at the
variant's smoke preset; nothing of the shipped assignment may show, and every model is measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from grader.config import load_config
from grader.grade import GradeOptions, grade_submissions

pytestmark = pytest.mark.slow
VARIANT = Path(__file__).parent / "fixtures" / "variant"
CONFIG_PATH = VARIANT / "assignment.toml"
CONFIG = load_config(CONFIG_PATH)
SHIPPED = load_config()


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> tuple[Path, dict]:
    submissions = tmp_path_factory.mktemp("variant-submissions")
    shutil.copy(VARIANT / "solution.ipynb", submissions / "student.ipynb")
    out = tmp_path_factory.mktemp("variant-out")
    grade_submissions(submissions, GradeOptions(out_dir=out, config_path=CONFIG_PATH, preset="smoke"),
                      log=lambda _: None)
    return out / "student", json.loads((out / "student" / "result.json").read_text())


def test_the_variant_is_not_the_shipped_assignment():
    """What the test relies on: none of the variant's names is the shipped one's."""
    assert set(CONFIG.model_names()).isdisjoint(SHIPPED.model_names())
    assert set(CONFIG.model_names().values()).isdisjoint(SHIPPED.model_names().values())
    assert set(CONFIG.parameters.spec).isdisjoint(SHIPPED.parameters.spec)
    assert len(CONFIG.fixed_betas()) == 3 and len(SHIPPED.fixed_betas()) == 2
    assert CONFIG.architecture.vae.startswith("solution.ipynb:")


def test_every_variant_model_is_read_rebuilt_and_measured(graded):
    _, result = graded
    assert result["status"] == "graded", result["errors"]
    roles = list(CONFIG.model_names())
    assert list(result["metrics"]["student"]) == roles
    assert set(result["metrics"]["reference"]) >= set(roles)
    # the third fixed beta: the student's model and the reference's at beta = 2, both VAEs
    for side in ("student", "reference"):
        mid = result["metrics"][side]["mid"]
        assert mid["kl"] is not None and mid["kl"] > 0 and mid["mse"] is not None, side
    assert result["metrics"]["student"]["plain"]["kl"] is None   # the autoencoder has no KL
    assert not [e for e in result["errors"] if any(role in e for role in roles)], result["errors"]


def test_the_variant_contract_names_parameters_and_checks_are_used(graded):
    _, result = graded
    checks = {c["id"]: c for c in result["checks"]}
    assert list(checks) == [c.id for c in CONFIG.checks]
    assert all(not c["missing"] for c in checks.values()), {i: c["missing"] for i, c in checks.items()}
    # kl_to_prior and draw_code found and right; chosen_beta read from the kernel
    assert checks["kl"]["points"] == checks["kl"]["max_points"]
    assert checks["noise"]["points"] == checks["noise"]["max_points"]
    assert result["best_beta"] == 0.5 and result["best_beta_source"] == "kernel"
    assert result["overrides"] == {"N_EPOCHS": 1, "SUBSET": 2048}
    # at the smoke preset the reference autoencoder has not learned: the variant's assessability
    # anchor says so, by its label, and the quality checks neither award nor withhold points
    assert checks["mid_reconstruction"]["reason"] == "not_assessable"
    assert "the reference model (Conv autoencoder) reconstructs" in checks["mid_reconstruction"]["message"]
    assert result["max_score"] == sum(c.points for c in CONFIG.checks if c.kind in ("kl_unit", "reparam_unit"))
    # histories under the variant's names, by kind, with the three fixed betas and the chosen one
    assert len(result["histories"]["ae"]) == 1
    assert {float(b) for b in result["histories"]["vae"]} == {0.0, 2.0, 20.0, 0.5}


def test_the_figures_and_the_report_use_the_variant_roles_and_labels(graded):
    folder, result = graded
    names = {f["kind"] + "_" + (f["role"] or "") + ("_" + f["side"] if f["side"] else "") for f in result["figures"]}
    assert {"reconstructions_mid", "samples_mid_student", "samples_mid_reference", "interpolation_plain",
            "interpolation_picked"} <= names
    text = subprocess.run(["pdftotext", "-layout", str(folder / "report.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    for model in CONFIG.models:
        assert model.label in text, model.label
    for variable in ("vae_mid", "vae_heavy", "autoenc_log"):
        assert variable in text, variable
    for model in SHIPPED.models:
        assert model.label not in text, model.label
