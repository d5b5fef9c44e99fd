"""The probe: the kernel hands back weights and plain values only; the grader rebuilds the
prescribed architecture, runs it on inputs the kernel never saw, and reads every file bounded."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from grader import models
from grader.config import load_config
from grader.exporting import VALUES_FILE, WEIGHTS_FILE, export_code, history_key, read_npz_bounded
from grader.paths import default_data_dir
from grader.probe import load_export, make_probe_inputs, probe_models
from grader.unitcheck import definitions, make_unit_inputs, run_unit_checks
from grader.weights import WeightsMismatch, match_state, rebuild_models

CONFIG = load_config()
# The handout's architecture as the grader takes it from the solution notebook: the kernel's models here.
AutoEncoder, VAE = CONFIG.model_class("ae"), CONFIG.model_class("vae")
PARAMS = CONFIG.resolve_parameters(preset="smoke")
NZ = PARAMS["NZ"]


def fake_test_set(n=600):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def kernel_namespace(**changes):
    torch.manual_seed(0)
    ns = {
        "ae": AutoEncoder(NZ), "vae_beta0": VAE(NZ), "vae_beta10": VAE(NZ),
        "vae_tuned": VAE(NZ), "best_beta": 2.5,
        "ae_history": [{"epoch": 1, "rec": torch.tensor(30.0), "kl": 0}],
    }
    ns.update(changes)
    return {k: v for k, v in ns.items() if v is not None}


def export_from(ns: dict, tmp_path, monkeypatch):
    """Run the export's source as the kernel would (exec in the kernel's globals), then read it."""
    monkeypatch.chdir(tmp_path)
    exec(compile(export_code(CONFIG), "<export>", "exec"), ns)
    assert "run_export" not in ns  # the export cleans up after itself
    return load_export(tmp_path, CONFIG)


def test_export_hands_back_weights_and_values_only(tmp_path, monkeypatch):
    ns = kernel_namespace()
    export = export_from(ns, tmp_path, monkeypatch)
    assert export.errors == {}
    assert set(export.weights) == {"ae", "vae_beta0", "vae_beta10", "vae_tuned"}
    np.testing.assert_array_equal(export.weights["ae"]["encoder.1.weight"], ns["ae"].encoder[1].weight.detach().numpy())
    assert export.values["best_beta"] == 2.5
    assert export.values[history_key("ae")] == [{"epoch": 1.0, "rec": 30.0, "kl": 0.0}]   # the contract's ae_history


def test_rebuilt_models_behave_like_the_originals_but_are_the_graders(tmp_path, monkeypatch):
    ns = kernel_namespace()
    export = export_from(ns, tmp_path, monkeypatch)
    rebuilt = rebuild_models(CONFIG, PARAMS, export)
    assert rebuilt.errors == {}
    x = torch.rand(5, 1, 28, 28)
    for role in ("ae", "vae_tuned"):
        assert type(rebuilt.models[role]) is type(ns[role]) and rebuilt.models[role] is not ns[role]
        model = rebuilt.models[role]
        torch.testing.assert_close(model(x) if role == "ae" else model.decode(ns[role].encode(x)[0]),
                                   ns[role](x) if role == "ae" else ns[role].decode(ns[role].encode(x)[0]))


def test_objects_that_are_not_the_handouts_models_cannot_be_measured(tmp_path, monkeypatch):
    class LookupTable:  # "encode remembers, decode gives back": not a module, no weights
        def encode(self, x):
            return x.flatten(1)[:, :NZ]

        def decode(self, z):
            return torch.zeros(len(z), 1, 28, 28)

    class Liar(torch.nn.Module):  # claims to be a VAE, holds other layers
        __class__ = VAE

        def __init__(self):
            super().__init__()
            self.table = torch.nn.Linear(3, 3)

    export = export_from(kernel_namespace(ae=LookupTable(), vae_beta0=Liar(), vae_beta10=VAE(NZ + 1),
                                          vae_tuned=None), tmp_path, monkeypatch)
    rebuilt = rebuild_models(CONFIG, PARAMS, export)
    assert "not a torch.nn.Module" in rebuilt.errors["ae"]
    assert "do not fit the handout's architecture" in rebuilt.errors["vae_beta0"]
    assert "should have shape [512, 784]" in rebuilt.errors["vae_beta0"] or "expected 12 tensors" in rebuilt.errors["vae_beta0"]
    assert "do not fit" in rebuilt.errors["vae_beta10"] and "[32, 256]" in rebuilt.errors["vae_beta10"]
    assert "not defined" in rebuilt.errors["vae_tuned"]
    assert set(rebuilt.models) == set()


def test_weights_are_matched_by_position_when_only_names_differ():
    torch.manual_seed(0)
    reference = VAE(NZ)
    renamed = {f"layer{i}": t.numpy() for i, t in enumerate(reference.state_dict().values())}
    state, note = match_state(VAE(NZ).state_dict(), renamed)
    assert "matched by position" in note
    torch.testing.assert_close(state["decoder.4.bias"], reference.state_dict()["decoder.4.bias"])
    broken = dict(renamed, layer0=np.full((512, 784), np.nan, dtype=np.float32))
    with pytest.raises(WeightsMismatch, match="NaN"):
        match_state(VAE(NZ).state_dict(), broken)


def test_probe_models_gives_contract_shapes_on_the_graders_inputs():
    x, y = fake_test_set()
    inputs = make_probe_inputs(CONFIG, PARAMS, x, y)
    torch.manual_seed(0)
    data = probe_models({"ae": AutoEncoder(NZ), "vae_tuned": VAE(NZ)}, CONFIG, inputs)
    assert data.errors == {}
    assert data.models["ae"].recon.shape == (len(inputs.test_x), 1, 28, 28)
    assert data.models["ae"].log_sigma is None                    # an autoencoder has none
    log_sigma = data.models["vae_tuned"].log_sigma
    assert log_sigma is not None and log_sigma.shape == (len(inputs.test_x), NZ)
    assert data.models["ae"].interp.shape == (CONFIG.probe.n_interp_pairs, CONFIG.probe.interp_steps, 784)
    assert data.models["ae"].samples.shape == (CONFIG.probe.n_samples, 1, 28, 28)
    assert data.arrays == {}                                      # only the unit checks' arrays go there
    assert inputs.start_label == PARAMS["START_LABEL"]


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_a_compressed_bomb_is_refused_before_it_is_unpacked(tmp_path):
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(_npz_bytes(**{"ae/x": np.zeros(64 << 20, dtype=np.uint8)}))   # 64 MB of zeros
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="unpacks to more than"):
        read_npz_bounded(path, 16 << 20)


def test_an_array_header_that_lies_about_its_size_is_refused(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 28,)})
    path = tmp_path / WEIGHTS_FILE
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ae/x.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(ValueError, match="claims more data"):
        read_npz_bounded(path, 16 << 20)


def test_sparse_symlinked_or_garbage_exports_are_errors_not_crashes(tmp_path):
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    with open(sparse / WEIGHTS_FILE, "wb") as handle:
        handle.truncate(1 << 30)                                # 1 GiB, no blocks on disk
    (sparse / VALUES_FILE).write_text("{}")
    assert "larger than" in load_export(sparse, CONFIG).errors["probe"]
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink("/etc/passwd", linked / WEIGHTS_FILE)
    assert "not a regular file" in load_export(linked, CONFIG).errors["probe"]
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / WEIGHTS_FILE).write_bytes(b"not an npz")
    assert "could not be read" in load_export(garbage, CONFIG).errors["probe"]


def test_definitions_keep_imports_defs_and_constants_not_training():
    nb = new_notebook(cells=[
        new_code_cell("import torch\n%matplotlib inline\nEPS = 1e-8\ndevice = torch.device('cpu')"),
        new_code_cell("def kl_divergence(mu, log_sigma):\n    return -mu.sum(1)\nmodel = train()"),
        new_code_cell("def kl_divergence(mu, log_sigma):  # the later one wins\n    return mu.sum(1) + EPS"),
        new_code_cell("this is not python"),
    ])
    sources = [d["source"] for d in definitions(nb)]
    assert sources[0] == "import torch" and "EPS = 1e-08" in sources and "device = torch.device('cpu')" in sources
    assert not any("train()" in s for s in sources)
    assert [d["cell"] for d in definitions(nb) if "def kl_divergence" in d["source"]] == [1, 2]


def test_definitions_for_roots_keep_only_what_the_checked_functions_need():
    nb = new_notebook(cells=[
        new_code_cell("import math\nimport torchvision\nimport matplotlib.pyplot as plt\nimport torch.nn.functional as F"),
        new_code_cell("SCALE = 0.5\nUNUSED = 3\ndef helper(x):\n    return F.softplus(x) * SCALE"),
        new_code_cell("def kl_divergence(mu, log_sigma):\n    return helper(mu).sum(1) + math.pi"),
        new_code_cell("def plot(images):\n    plt.imshow(torchvision.utils.make_grid(images))"),
        new_code_cell("from mylib import *"),
    ])
    sources = [d["source"] for d in definitions(nb, ["kl_divergence", "reparameterize"])]
    assert sources == ["import math", "import torch.nn.functional as F", "SCALE = 0.5",
                       sources[3], sources[4], "from mylib import *"]
    assert sources[3].startswith("def helper") and sources[4].startswith("def kl_divergence")
    assert len(definitions(nb)) == 10   # without roots: everything kept, as before


@pytest.mark.skipif(not (default_data_dir() / "MNIST").exists(), reason="MNIST not provisioned")
def test_unit_checks_run_the_notebooks_source_in_a_fresh_process(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("import torch\nimport numpy\nnumpy.savez = None  # patches in the kernel reach nothing"),
        new_code_cell(
            "def kl_divergence(mu, log_sigma):\n"
            "    return 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(dim=1)\n\n"
            "def reparameterize(mu, log_sigma):\n    return mu\n"),
    ])
    inputs = make_unit_inputs(CONFIG, PARAMS)
    result = run_unit_checks(nb, CONFIG, PARAMS, inputs, default_data_dir())
    assert result.errors == {}
    expected = models.kl_divergence(torch.from_numpy(inputs.kl_mu), torch.from_numpy(inputs.kl_log_sigma))
    np.testing.assert_allclose(result.arrays["kl_unit"], expected.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(result.arrays["reparam_unit"], inputs.reparam_mu)   # no noise: seen as such

    missing = run_unit_checks(new_notebook(cells=[new_code_cell("x = 1")]), CONFIG, PARAMS, inputs, default_data_dir())
    assert "no function 'kl_divergence' is defined" in missing.errors["kl_divergence"]


def test_the_export_is_small_source_with_its_bounds_inside():
    code = export_code(CONFIG)
    spec = json.loads(code.split("loads(", 1)[1].rsplit("))", 1)[0].strip("'"))
    assert spec["max_history"] == CONFIG.probe.max_history_epochs
    assert spec["max_elements"] * 4 * len(CONFIG.model_names()) <= CONFIG.probe.max_export_mb << 20
    assert "savez" in code and "probe_inputs" not in code   # nothing of the grader's inputs goes in
