"""One measurement path: a student's model (probe_models -> measure.measure_model) and a reference
model (reference._model_figures, which ranks the β sweep) give the same figures for the same
model on the same inputs, and both equal a short computation written out here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grader import measure, reference
from grader.classifier import MnistClassifier, classify
from grader.config import load_config
from grader.measure import Judge, ShapeError, measure_model
from grader.metrics import FeatureStats
from grader.probe import ModelOutputs, ProbeData, make_probe_inputs, probe_models

CONFIG = load_config()
PARAMS = CONFIG.resolve_parameters(preset="smoke")
NZ = PARAMS["NZ"]
SAMPLE_FIELDS = ("sample_confidence", "sample_coverage", "sample_fid")


def _stats(features: np.ndarray) -> FeatureStats:
    x = features.astype(np.float64)
    return FeatureStats(mean=x.mean(axis=0), cov=np.cov(x, rowvar=False), n=len(x))


def _frechet_by_hand(a: FeatureStats, b: FeatureStats) -> float:
    """|mu_a - mu_b|^2 + Tr(A) + Tr(B) - 2 Tr (AB)^(1/2), the root's trace from AB's eigenvalues
    (real and >= 0 for PSD A, B: round-off clipped), not the two symmetric roots metrics uses."""
    eigenvalues = np.linalg.eigvals(a.cov @ b.cov).real.clip(min=0)
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.sqrt(eigenvalues).sum())


@torch.no_grad()
def _by_hand(model, kind, x, z, classifier, test_stats, confidence) -> dict[str, float | None]:
    x = torch.as_tensor(x)
    if kind == "vae":
        mu, log_sigma = model.encode(x)
    else:
        mu, log_sigma = model.encode(x), None
    recon = model.decode(mu).double().reshape(len(x), -1)
    flat = x.double().reshape(len(x), -1)
    out: dict[str, float | None] = {"mse": ((recon - flat) ** 2).mean().item(), "kl": None, "elbo": None}
    if log_sigma is not None:
        m, s = mu.double(), log_sigma.double()
        kl = 0.5 * (m**2 + torch.exp(2 * s) - 1 - 2 * s).sum(dim=1)
        out["kl"] = kl.mean().item()
        out["elbo"] = (-(((recon - flat) ** 2).sum(dim=1) + kl)).mean().item()
    judged = classify(classifier, model.decode(torch.as_tensor(z)))
    top, label = judged.probs.double().max(dim=1)
    out["sample_confidence"] = top.mean().item()
    confident = np.bincount(label[top >= confidence].numpy(), minlength=10)
    out["sample_coverage"] = float(np.mean((confident >= 0.01 * len(top)) & (confident > 0)))
    out["sample_fid"] = _frechet_by_hand(_stats(judged.features.numpy()), test_stats)
    return out


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 1, 28, 28, generator=generator)
    inputs = make_probe_inputs(CONFIG, PARAMS, x, torch.arange(len(x)) % 10)
    torch.manual_seed(0)
    classifier = MnistClassifier().eval()
    models = {"ae": CONFIG.model_class("ae")(NZ), "vae_tuned": CONFIG.model_class("vae")(NZ)}
    test_stats = _stats(classify(classifier, torch.from_numpy(inputs.test_x)).features.numpy())
    # an untrained classifier is never 50% sure: a threshold at its median makes coverage count
    top = classify(classifier, models["ae"].decode(torch.from_numpy(inputs.prior_z)).detach()).probs.max(dim=1).values
    confidence = float(top.median())
    judge = Judge(classifier, test_stats, accept_confidence=confidence, memorised_distance=CONFIG.probe.memorised_distance)
    return inputs, classifier, models, test_stats, judge


@pytest.mark.parametrize("role", ["ae", "vae_tuned"])
def test_student_and_reference_paths_give_the_figures_computed_by_hand(setting, role):
    inputs, classifier, models, test_stats, judge = setting
    model = models[role]
    kind = CONFIG.model(role).kind
    expected = _by_hand(model, kind, inputs.test_x, inputs.prior_z, classifier, test_stats, judge.accept_confidence)
    assert 0 < expected["sample_coverage"] < 1          # the threshold makes coverage a real test

    student = measure_model(probe_models({role: model}, CONFIG, inputs), role, inputs, judge).figures
    ev = reference._Evaluation(test_x=torch.from_numpy(inputs.test_x), test_stats=test_stats,
                               prior_z=torch.from_numpy(inputs.prior_z), classifier=classifier,
                               device=torch.device("cpu"), confidence=judge.accept_confidence)
    ref = reference._model_figures(model, kind, ev)
    for figures in (student, ref):
        for name, value in expected.items():
            got = getattr(figures, name)
            if value is None:
                assert got is None, name
            else:
                assert got == pytest.approx(value, rel=1e-6, abs=1e-9), name
    # the two paths: the same figures (the reference's have no interpolation / memorisation ones)
    for name in ("mse", "kl", "elbo", *SAMPLE_FIELDS):
        mine, theirs = getattr(student, name), getattr(ref, name)
        assert (mine is None and theirs is None) or theirs == pytest.approx(mine, rel=1e-9, abs=1e-12), name


def test_a_diverged_reference_model_has_no_sample_figures_but_a_student_is_told_why(setting):
    """Policies stay apart: the reference's NaN figures become None (its sweep ranks it last), a
    student's non-finite samples make the model unmeasurable, with the reason."""
    inputs, classifier, models, test_stats, judge = setting
    broken = CONFIG.model_class("ae")(NZ)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    ev = reference._Evaluation(test_x=torch.from_numpy(inputs.test_x), test_stats=test_stats,
                               prior_z=torch.from_numpy(inputs.prior_z), classifier=classifier,
                               device=torch.device("cpu"), confidence=judge.accept_confidence)
    figures = reference._model_figures(broken, "ae", ev)
    assert figures.mse is None and all(getattr(figures, name) is None for name in SAMPLE_FIELDS)
    with pytest.raises(ShapeError, match="NaN or infinite"):
        measure_model(probe_models({"ae": broken}, CONFIG, inputs), "ae", inputs, judge)


def test_a_model_the_probe_did_not_produce_is_named(setting):
    inputs, _, _, _, judge = setting
    with pytest.raises(ShapeError, match=r"vae_tuned.decode\(encode\(x\)\) was not produced"):
        measure_model(ProbeData(), "vae_tuned", inputs, judge)
    outputs = ModelOutputs(recon=np.zeros((3, 784), np.float32), z=np.zeros((3, NZ), np.float32),
                           samples=np.zeros((1, 784), np.float32), interp=np.zeros((1, 1, 784), np.float32))
    with pytest.raises(ShapeError, match=r"expected \[1000, 1, 28, 28\]"):
        measure_model(ProbeData(models={"ae": outputs}), "ae", inputs, judge)


def test_measuring_models_side_by_side_changes_no_figure_and_no_order(setting, monkeypatch):
    """all_model_figures measures MEASURE_THREADS models at a time: the figures are those of one
    at a time, bit for bit, and the missing models are named in the config's order."""
    inputs, _, models, _, judge = setting
    every = {role: CONFIG.model_class(CONFIG.model(role).kind)(NZ) for role in CONFIG.model_names()}
    every["ae"] = models["ae"]
    probe = probe_models({r: m for r, m in every.items() if r != "vae_beta0"}, CONFIG, inputs)
    probe.errors["vae_beta0"] = "NameError: name 'vae_beta0' is not defined"
    probe.models["vae_beta10"] = ModelOutputs(   # a reconstruction of the wrong shape
        recon=np.zeros((3, 784), np.float32), z=np.zeros((3, NZ), np.float32),
        samples=np.zeros((1, 784), np.float32), interp=np.zeros((1, 1, 784), np.float32))
    results = {}
    for threads in (1, 2):
        monkeypatch.setattr(measure, "MEASURE_THREADS", threads)
        captions: dict = {}
        figures, missing = measure.all_model_figures(probe, inputs, judge, CONFIG, captions=captions)
        results[threads] = (figures, list(missing.items()), {r: c.labels.tolist() for r, c in captions.items()})
    assert results[1] == results[2]
    figures, missing, _ = results[2]
    assert list(figures) == [r for r in CONFIG.model_names() if r not in ("vae_beta0", "vae_beta10")]
    assert [role for role, _ in missing] == ["vae_beta0", "vae_beta10"]
    assert "not defined" in missing[0][1] and "expected" in missing[1][1]


def test_the_cached_image_bank_is_the_bank_of_every_mnist_image_and_a_damaged_one_is_pooled_again(tmp_path, monkeypatch):
    from grader import data
    from grader.data import ensure_mnist, load_mnist
    from grader.metrics import ImageBank

    monkeypatch.setenv("GRADER_CACHE", str(tmp_path))
    data_dir = ensure_mnist()
    train_x, _ = load_mnist(train=True, data_dir=data_dir)
    test_x, _ = load_mnist(train=False, data_dir=data_dir)
    expected = ImageBank.of(torch.cat([train_x, test_x]))

    def same(bank: ImageBank) -> bool:
        return all(torch.equal(getattr(bank, f), getattr(expected, f)) for f in ("pooled", "norms", "coarse", "coarse_norms"))

    assert same(measure.mnist_image_bank(data_dir))
    [cached] = (tmp_path / "image_bank").glob("*.npy")

    def no_loading(*args, **kwargs):
        raise AssertionError("a cached bank needs no MNIST file read")

    monkeypatch.setattr(data, "load_mnist", no_loading)
    assert same(measure.mnist_image_bank(data_dir))          # read back, bit for bit
    monkeypatch.undo()
    monkeypatch.setenv("GRADER_CACHE", str(tmp_path))
    cached.write_bytes(cached.read_bytes()[: 1000])                  # cut short
    assert same(measure.mnist_image_bank(data_dir))
    assert cached.stat().st_size > 1000
