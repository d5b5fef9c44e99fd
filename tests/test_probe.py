"""The probe: fixed inputs, tensors out, one broken part costs only itself."""

from __future__ import annotations

import numpy as np
import torch

from grader import models
from grader.config import load_config
from grader.probe import INPUTS_FILE, load_probe, make_probe_inputs, probe_code, probe_in_process, run_probe, probe_spec

CONFIG = load_config()
PARAMS = CONFIG.resolve_parameters(preset="smoke")


def fake_test_set(n=600):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def namespace(**changes):
    torch.manual_seed(0)
    ns = {
        "ae": models.AutoEncoder(16), "vae_beta0": models.VAE(16), "vae_beta10": models.VAE(16),
        "vae_tuned": models.VAE(16), "kl_divergence": models.kl_divergence,
        "reparameterize": models.reparameterize, "reconstruction_loss": models.reconstruction_loss,
        "best_beta": 2.5, "ae_history": [{"epoch": 1, "rec": torch.tensor(30.0), "kl": 0}],
    }
    ns.update(changes)
    return {k: v for k, v in ns.items() if v is not None}


def test_inputs_are_fixed_and_respect_labels():
    x, y = fake_test_set()
    a, b = make_probe_inputs(CONFIG, PARAMS, x, y), make_probe_inputs(CONFIG, PARAMS, x, y)
    for name in a.__dict__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.prior_z.shape == (CONFIG.probe.n_samples, PARAMS["NZ"])
    start = x[y == PARAMS["START_LABEL"]].numpy()
    assert all(any(np.array_equal(img, s) for s in start) for img in a.interp_start)


def test_probe_hands_back_every_array_with_contract_shapes(tmp_path):
    x, y = fake_test_set()
    inputs = make_probe_inputs(CONFIG, PARAMS, x, y)
    data = probe_in_process(namespace(), CONFIG, inputs, tmp_path)
    assert data.errors == {}
    n = CONFIG.probe.n_test if CONFIG.probe.n_test < len(x) else len(x)
    assert data.arrays["ae.recon"].shape == (n, 1, 28, 28)
    assert data.arrays["vae_tuned.log_sigma"].shape == (n, 16)
    assert data.arrays["vae_beta0.interp"].shape == (CONFIG.probe.n_interp_pairs, CONFIG.probe.interp_steps, 784)
    np.testing.assert_allclose(
        data.arrays["kl_unit"], models.kl_divergence(torch.from_numpy(inputs.kl_mu), torch.from_numpy(inputs.kl_log_sigma)).numpy(), rtol=1e-6
    )
    assert data.values["best_beta"] == 2.5
    assert data.values["ae_history"] == [{"epoch": 1.0, "rec": 30.0, "kl": 0.0}]


def test_a_broken_part_costs_only_itself(tmp_path):
    x, y = fake_test_set()
    inputs = make_probe_inputs(CONFIG, PARAMS, x, y)
    ns = namespace(vae_beta10=None, vae_tuned=models.VAE(8), reparameterize=lambda mu, ls: 1 / 0, best_beta="big")
    data = probe_in_process(ns, CONFIG, inputs, tmp_path)
    assert data.errors["vae_beta10"] == "NameError: name 'vae_beta10' is not defined"
    assert "shapes cannot be multiplied" in data.errors["vae_tuned"]
    assert data.errors["reparameterize"].startswith("ZeroDivisionError")
    assert "best_beta is not a number" in data.errors["best_beta"]
    assert "ae.recon" in data.arrays and "kl_unit" in data.arrays


def test_modified_inputs_are_refused(tmp_path):
    x, y = fake_test_set()
    inputs = make_probe_inputs(CONFIG, PARAMS, x, y)
    sha = inputs.save(tmp_path / INPUTS_FILE)
    inputs.test_x[:] = 0
    inputs.save(tmp_path / INPUTS_FILE)
    run_probe(namespace(), probe_spec(CONFIG, sha), str(tmp_path))
    data = load_probe(tmp_path)
    assert "modified" in data.errors["inputs"] and "ae.recon" not in data.arrays


def test_probe_code_runs_as_kernel_source(tmp_path, monkeypatch):
    x, y = fake_test_set()
    inputs = make_probe_inputs(CONFIG, PARAMS, x, y)
    sha = inputs.save(tmp_path / INPUTS_FILE)
    monkeypatch.chdir(tmp_path)
    kernel_globals = namespace()
    exec(compile(probe_code(CONFIG, sha), "<probe>", "exec"), kernel_globals)
    assert "run_probe" not in kernel_globals  # the probe cleans up after itself
    assert load_probe(tmp_path).errors == {}


def test_unreadable_probe_output_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "probe.npz").write_bytes(b"not an npz")
    assert "could not be read" in load_probe(tmp_path).errors["probe"]
