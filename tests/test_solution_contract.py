"""The shipped notebooks keep the contract of /work/shared/ASSIGNMENT.md.

The slow test runs reference/solution.ipynb for real (nbclient, the smoke preset, MNIST linked into
a fresh folder) and then inspects the kernel it leaves behind: the contract's names and shapes,
and that the classes the grader takes out of it (the config's architecture, "solution.ipynb:...")
and grader.models' training loop give the notebook's own models.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from grader.config import load_config
from grader.inject import find_parameters_cell, inject_parameters, is_injected
from grader.paths import REPO_ROOT, default_data_dir

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import make_handout  # noqa: E402
import make_submissions  # noqa: E402

CONFIG = load_config()
SOLUTION = CONFIG.path(CONFIG.assignment.solution)
HANDOUT = CONFIG.path(CONFIG.assignment.handout)

# Runs in the solution's kernel after its last cell; prints one JSON line of facts for the test.
KERNEL_PROBE = textwrap.dedent(
    """
    import json as _json
    import torch as _torch
    from grader import models as _ref
    from grader.config import load_config as _load_config
    _arch = _load_config()
    _grader_ae, _grader_vae = _arch.model_class("ae"), _arch.model_class("vae")

    def _shape(t):
        return list(t.shape)

    _x = test_images[:5]
    _facts = {"nz": NZ, "best_beta_type": type(best_beta).__name__, "best_beta": best_beta}
    with _torch.no_grad():
        _facts["ae_type"] = type(ae).__name__
        _facts["ae_encode"] = _shape(ae.encode(_x))
        _facts["ae_decode"] = _shape(ae.decode(_torch.randn(5, NZ)))
        for _name in ("vae_beta0", "vae_beta10", "vae_tuned"):
            _mu, _log_sigma = globals()[_name].encode(_x)
            _facts[_name] = {
                "type": type(globals()[_name]).__name__,
                "encode": [_shape(_mu), _shape(_log_sigma)],
                "decode": _shape(globals()[_name].decode(_torch.randn(5, NZ))),
            }
        _mu, _log_sigma = vae_tuned.encode(_x)
        _x_hat = ae(_x)
        _facts["rec"] = _shape(reconstruction_loss(_x_hat, _x))
        _facts["rec_matches_reference"] = _torch.allclose(
            reconstruction_loss(_x_hat, _x), _ref.reconstruction_loss(_x_hat, _x))
        _facts["kl"] = _shape(kl_divergence(_mu, _log_sigma))
        _facts["kl_matches_reference"] = _torch.allclose(
            kl_divergence(_mu, _log_sigma), _ref.kl_divergence(_mu, _log_sigma))
        _facts["reparameterize"] = _shape(reparameterize(_mu, _log_sigma))

    # The same layers, created in the same order: identical state_dicts from the same seed.
    _facts["state_dicts"] = {}
    for _ours, _theirs in ((AutoEncoder, _grader_ae), (VAE, _grader_vae)):
        _torch.manual_seed(0)
        _a = _ours(NZ).state_dict()
        _torch.manual_seed(0)
        _b = _theirs(NZ).state_dict()
        _facts["state_dicts"][_ours.__name__] = {
            "keys_ours": {k: list(v.shape) for k, v in _a.items()},
            "keys_reference": {k: list(v.shape) for k, v in _b.items()},
            "equal_init": _a.keys() == _b.keys() and all(_torch.equal(_a[k], _b[k]) for k in _a),
        }

    # The reference training loop on the notebook's own data gives the notebook's models.
    _settings = _ref.TrainSettings(nz=NZ, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR, seed=SEED)
    _facts["training"] = {}
    for _label, _model, _history, _beta in (
        ("ae", ae, ae_history, None),
        ("vae_tuned", vae_tuned, vae_histories[best_beta], best_beta),
    ):
        _trained = _ref.train_model(train_images, _settings, beta=_beta, device="cpu",
                                    build=_grader_ae if _beta is None else _grader_vae)
        _facts["training"][_label] = {
            "history": _history,
            "reference_history": _trained.history,
            "max_weight_diff": max(
                (_model.state_dict()[k] - v).abs().max().item() for k, v in _trained.model.state_dict().items()),
        }
    _facts["vae_history_betas"] = sorted(vae_histories)
    print(_json.dumps(_facts))
    """
)


def _mnist_workdir(root: Path) -> Path:
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    files = sorted((default_data_dir() / "MNIST" / "raw").glob("*-ubyte"))
    if len(files) < 4:
        pytest.skip(f"MNIST idx files missing under {default_data_dir()}")
    for file in files:
        (raw / file.name).symlink_to(file)
    return root / "data"


def _markdown(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


def _answer(source: str) -> str:
    parts = make_handout.ANSWER_LABEL.split(source, maxsplit=1)
    return parts[2].strip() if len(parts) == 3 else ""


def _question_cell(nb, question) -> str:
    matches = [text for text in _markdown(nb) if re.search(question.match, text)]
    assert len(matches) == 1, f"{question.id}: {len(matches)} markdown cells match {question.match!r}"
    return matches[0]


def _parameters(nb) -> dict:
    cell = nb.cells[find_parameters_cell(nb, CONFIG.parameters.tag)]
    values = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), f"parameters cell: not an assignment: {ast.unparse(node)}"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.fixture(scope="module")
def solution():
    return nbformat.read(SOLUTION, as_version=4)


@pytest.fixture(scope="module")
def handout():
    return nbformat.read(HANDOUT, as_version=4)


@pytest.mark.parametrize("which", ["handout", "solution"])
def test_every_question_and_the_parameters_cell(which, request):
    nb = request.getfixturevalue(which)
    for question in CONFIG.questions:
        text = _question_cell(nb, question)
        assert "Inline Question" in text, question.id
        assert f"[{question.points:g}pt]" in text, question.id
        assert f"limit your answer to <{question.limit} words" in text, question.id
    assert _parameters(nb) == CONFIG.parameters.defaults()


def test_handout_is_blank_and_has_no_outputs(handout):
    for question in CONFIG.questions:
        text = _question_cell(handout, question)
        assert text.rstrip().endswith("**Answer:**"), f"{question.id}: the handout's answer is not empty"
    assert not any(re.search(CONFIG.contract.best_beta_pattern, text) for text in _markdown(handout))
    code = [cell for cell in handout.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    sources = "\n".join(cell.source for cell in code)
    assert make_handout.BEGIN not in sources and make_handout.END not in sources
    for name in ("def reconstruction_loss", "def kl_divergence", "def reparameterize", "class VAE", "best_beta"):
        assert name in sources
    assert sources.count("raise NotImplementedError()") >= 9
    assert "torch.randn_like" not in sources, "the handout gives reparameterize away"


def test_handout_is_generated_from_the_solution(solution, handout):
    assert make_handout.make_handout(solution, CONFIG) == handout, (
        "reference/handout.ipynb is out of date: run python scripts/make_handout.py"
    )


def test_solution_answers_within_limits_and_best_beta_line(solution):
    for question in CONFIG.questions:
        words = len(_answer(_question_cell(solution, question)).split())
        assert 0 < words <= question.limit, f"{question.id}: {words} words"
    lines = [m for text in _markdown(solution) for m in re.findall(CONFIG.contract.best_beta_pattern, text)]
    assert lines == ["1.0"]


@pytest.mark.parametrize("submission", make_submissions.SUBMISSIONS, ids=lambda s: s.name)
def test_submission_is_what_the_script_builds(submission, solution):
    path = make_submissions.SUBMISSIONS_DIR / submission.name
    nb = nbformat.read(path, as_version=4)
    assert path.stat().st_size < 1_000_000
    assert not any(is_injected(cell) for cell in nb.cells)
    expected = make_submissions.build(solution, submission, CONFIG)
    assert [c.source for c in nb.cells] == [c.source for c in expected.cells], (
        f"{path} is out of date: run python scripts/make_submissions.py {submission.name}"
    )
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), f"{path} was not run"
    errors = [out.ename for cell in code for out in cell.outputs if out.output_type == "error"]
    if submission.name == "vae_cell_raises.ipynb":
        assert "RuntimeError" in errors
    elif submission.name in ("correct.ipynb", "answers_incomplete.ipynb", "bad_beta.ipynb"):
        assert errors == []


@pytest.mark.slow
def test_solution_runs_and_keeps_the_contract(solution, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data_dir = _mnist_workdir(tmp_path)
    parameters = dict(CONFIG.parameters.presets["smoke"]) | {"DATA_DIR": str(data_dir)}
    nb = make_handout.solution_code(solution)
    nb = inject_parameters(nb, parameters, CONFIG.parameters.tag)
    nb.cells.append(new_code_cell(KERNEL_PROBE))
    NotebookClient(
        nb, timeout=CONFIG.limits.cell_timeout_s, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()   # raises CellExecutionError, with the traceback, if any cell fails

    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 15, "the plots did not reach the notebook"
    facts = json.loads(nb.cells[-1].outputs[-1].text)
    nz, b = facts["nz"], 5
    assert facts["ae_type"] == "AutoEncoder"
    assert facts["ae_encode"] == [b, nz]
    assert facts["ae_decode"] in ([b, 1, 28, 28], [b, 784])
    for name in ("vae_beta0", "vae_beta10", "vae_tuned"):
        assert facts[name]["type"] == "VAE", name
        assert facts[name]["encode"] == [[b, nz], [b, nz]], name
        assert facts[name]["decode"] in ([b, 1, 28, 28], [b, 784]), name
    assert facts["rec"] == [b] and facts["rec_matches_reference"]
    assert facts["kl"] == [b] and facts["kl_matches_reference"]
    assert facts["reparameterize"] == [b, nz]
    assert facts["best_beta_type"] == "float"
    assert facts["vae_history_betas"] == sorted({0.0, 10.0, facts["best_beta"]})
    for cls, sd in facts["state_dicts"].items():
        assert sd["keys_ours"] == sd["keys_reference"], cls
        assert sd["equal_init"], f"{cls}: a different initialisation from the same seed"
    for label, run in facts["training"].items():
        assert len(run["history"]) == parameters["EPOCHS"], label
        for ours, theirs in zip(run["history"], run["reference_history"]):
            assert ours["epoch"] == theirs["epoch"]
            assert ours["rec"] == pytest.approx(theirs["rec"], rel=1e-4), label
            assert ours["kl"] == pytest.approx(theirs["kl"], rel=1e-4, abs=1e-6), label
        assert run["max_weight_diff"] < 1e-4, f"{label}: trained weights differ from grader.models'"
