"""Reference set: parameter mapping, cache key, and a tiny real build (train, cache, corrupt)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time

import pytest
import torch

from grader.classifier import MnistClassifier
from grader.config import load_config
from grader.data import load_mnist
from grader.errors import ConfigError
from grader.models import TrainSettings, train_model
from grader.reference import (
    META_FILE,
    WEIGHTS_FILE,
    _CorruptEntry,
    _load_entry,
    build_reference,
    format_reference_table,
    reference_cache_key,
    reference_params,
    select_betas,
    training_params,
    training_subset,
)


@pytest.fixture(scope="module")
def config():
    return load_config()


def _with_reference(config, **changes):
    return config.model_copy(update={"reference": config.reference.model_copy(update=changes)})


def _with_beta(config, role, beta):
    """The config with one model's fixed β changed."""
    models = [m.model_copy(update={"beta": beta}) if m.role == role else m for m in config.models]
    return config.model_copy(update={"models": models})


def _training_names(config):
    """The parameters the config's roles say train the models (NZ, EPOCHS, ... in the shipped one)."""
    return set(config.parameters.roles.training().values())


# --- parameters ---------------------------------------------------------------------------------


def test_reference_params_maps_notebook_parameters(config):
    params = config.resolve_parameters({"NZ": 8, "EPOCHS": 3, "BATCH_SIZE": 64, "LR": 0.002, "SEED": 5})
    assert reference_params(config, params) == TrainSettings(nz=8, epochs=3, batch_size=64, lr=0.002, seed=5)
    assert set(training_params(config, params)) == _training_names(config)
    assert _training_names(config) == {"NZ", "EPOCHS", "BATCH_SIZE", "LR", "SEED", "TRAIN_SUBSET"}


@pytest.mark.parametrize(
    "override, message",
    [({"NZ": 0}, "NZ"), ({"LR": -1.0}, "LR"), ({"TRAIN_SUBSET": 0}, "TRAIN_SUBSET"), ({"EPOCHS": 1.5}, "EPOCHS")],
)
def test_training_params_rejects_bad_values(config, override, message):
    params = {**config.parameters.defaults(), **override}
    with pytest.raises(ConfigError, match=message):
        training_params(config, params)


def test_training_subset_is_the_first_n_images():
    images = torch.arange(10.0).view(10, 1, 1, 1)
    assert training_subset(images, 3).flatten().tolist() == [0.0, 1.0, 2.0]
    assert training_subset(images, None) is images


# --- cache key ----------------------------------------------------------------------------------

CHANGED = {"NZ": 17, "EPOCHS": 11, "BATCH_SIZE": 64, "LR": 0.002, "SEED": 1, "TRAIN_SUBSET": 1000}


def test_cache_key_changes_with_each_training_parameter_and_the_betas(config):
    params = config.resolve_parameters()
    base = reference_cache_key(config, params, "cpu")
    assert len(base) == 64 and base == reference_cache_key(config, dict(params), "cpu")
    assert set(CHANGED) == _training_names(config)
    keys = {base}
    for name, value in CHANGED.items():
        keys.add(reference_cache_key(config, {**params, name: value}, "cpu"))
    keys.add(reference_cache_key(_with_beta(config, "vae_beta10", 9.0), params, "cpu"))
    keys.add(reference_cache_key(_with_reference(config, beta_sweep=[0.3, 1.0, 2.0, 4.0]), params, "cpu"))
    keys.add(reference_cache_key(config, params, "cuda"))
    keys.add(reference_cache_key(config, params, "cpu", classifier_digest="f" * 64))
    assert len(keys) == len(CHANGED) + 5


def test_cache_key_ignores_parameters_that_do_not_change_the_models(config):
    params = config.resolve_parameters()
    base = reference_cache_key(config, params, "cpu")
    for name, value in {"START_LABEL": 3, "END_LABEL": 4, "DATA_DIR": "/elsewhere"}.items():
        assert reference_cache_key(config, {**params, name: value}, "cpu") == base
    assert reference_cache_key(config, params, torch.device("cpu")) == base


# --- beta selection -----------------------------------------------------------------------------


def test_select_betas_lowest_fid_and_factor(config):
    cfg = _with_reference(config, beta_sweep=[0.5, 1.0, 2.0, 4.0], good_beta_fid_factor=1.25)
    best, good = select_betas(cfg, {0.5: 12.0, 1.0: 10.0, 2.0: 12.5, 4.0: 12.6})
    assert best == 1.0 and good == [0.5, 1.0, 2.0]          # 12.5 <= 1.25 * 10 < 12.6
    best, good = select_betas(cfg, {0.5: float("nan"), 1.0: None, 2.0: 3.0, 4.0: 30.0})
    assert best == 2.0 and good == [2.0]


# --- a tiny real build --------------------------------------------------------------------------

TINY = {"EPOCHS": 1, "TRAIN_SUBSET": 512}


@contextlib.contextmanager
def one_thread():
    """Train as `grader reference` does (config limits.threads = 1): far faster on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(config, tmp_path_factory):
    """A real build at a tiny setting, judged by a seeded untrained classifier (no shipped weights
    needed); returns (config, params, classifier, cache dir, the first build's set)."""
    torch.manual_seed(0)
    classifier = MnistClassifier().eval()
    cfg = _with_reference(config, beta_sweep=[1.0, 4.0])
    params = cfg.resolve_parameters(TINY)
    cache = tmp_path_factory.mktemp("reference-cache")
    messages: list[str] = []
    with one_thread():
        ref = build_reference(cfg, params, device="cpu", cache_dir=cache, log=messages.append, classifier=classifier)
    return cfg, params, classifier, cache, ref, messages


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_build_trains_every_model_and_measures_it(tiny):
    cfg, params, _, cache, ref, messages = tiny
    assert not ref.cache_hit and ref.path == cache / ref.key and ref.device == "cpu"
    assert (ref.path / WEIGHTS_FILE).is_file() and (ref.path / META_FILE).is_file()
    assert any("training 5 models on 512 images" in m for m in messages)
    assert set(ref.models) == {"ae", "vae_beta0", "vae_beta10", "vae_tuned"}
    assert type(ref.models["ae"]) is cfg.model_class("ae")   # the solution notebook's classes
    assert all(type(ref.models[r]) is cfg.model_class("vae") for r in ("vae_beta0", "vae_beta10", "vae_tuned"))
    assert set(ref.sweep) == {1.0, 4.0} and ref.models["vae_tuned"] is ref.sweep[ref.best_beta]
    assert ref.betas == {"ae": None, "vae_beta0": 0.0, "vae_beta10": 10.0, "vae_tuned": ref.best_beta}
    assert ref.best_beta in ref.good_betas
    fids = {b: f.sample_fid for b, f in ref.sweep_figures.items()}
    assert ref.best_beta == min(fids, key=fids.get)
    assert len(ref.histories["ae"]) == 1 and set(ref.histories["vae"]) == {0.0, 10.0, 1.0, 4.0}
    assert ref.figures["ae"].kl is None and ref.figures["vae_beta0"].kl > 0
    for figures in ref.figures.values():
        assert 0 < figures.mse < 1 and figures.sample_fid is not None and 0 <= figures.sample_coverage <= 1
    # the floor, computed independently: the mean of the first 512 training images
    train_x, _ = load_mnist(train=True)
    test_x, _ = load_mnist(train=False)
    floor = ((train_x[:512].mean(dim=0) - test_x) ** 2).mean().item()
    assert ref.mean_image_mse == pytest.approx(floor, rel=1e-5)
    table = format_reference_table(ref)
    for label in ("ae", "vae_beta0", "vae_beta10", "sweep", "mean image", "best: vae_tuned"):
        assert label in table
    assert f"best beta {ref.best_beta:g}" in table


@pytest.mark.slow
def test_second_build_is_a_fast_cache_hit_with_identical_weights(tiny):
    cfg, params, classifier, cache, ref, _ = tiny
    started = time.perf_counter()
    again = build_reference(cfg, params, device="cpu", cache_dir=cache, log=lambda m: None, classifier=classifier)
    elapsed = time.perf_counter() - started
    assert again.cache_hit and again.key == ref.key
    assert elapsed < 1.0, f"cache hit took {elapsed:.2f} s"
    for role in ref.models:
        assert _same_weights(again.models[role], ref.models[role])
    assert again.figures == ref.figures and again.best_beta == ref.best_beta
    assert again.histories == ref.histories and torch.equal(again.mean_image, ref.mean_image)


@pytest.mark.slow
def test_corrupt_weights_are_retrained_not_used(tiny, tmp_path):
    cfg, params, classifier, _, ref, _ = tiny
    copy = tmp_path / ref.key
    shutil.copytree(ref.path, copy)
    weights = copy / WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                     # one flipped byte
    weights.write_bytes(bytes(raw))
    messages: list[str] = []
    with one_thread():
        rebuilt = build_reference(
            cfg, params, device="cpu", cache_dir=tmp_path, log=messages.append, classifier=classifier
        )
    assert not rebuilt.cache_hit
    assert any("corrupt" in m and "sha256" in m for m in messages)
    for role in ref.models:                        # seeded training: the same weights again
        assert _same_weights(rebuilt.models[role], ref.models[role])
    assert _load_entry(copy, ref.key, cfg).cache_hit   # the rewritten entry is sound
    meta = json.loads((copy / META_FILE).read_text())
    assert meta["key_inputs"]["training"]["TRAIN_SUBSET"] == 512 and meta["key_inputs"]["device"] == "cpu"


@pytest.mark.slow
def test_unreadable_or_foreign_metadata_is_corrupt(tiny, tmp_path):
    cfg, _, _, _, ref, _ = tiny
    copy = tmp_path / "entry"
    shutil.copytree(ref.path, copy)
    (copy / META_FILE).write_text("{not json")
    with pytest.raises(_CorruptEntry, match="unreadable"):
        _load_entry(copy, ref.key, cfg)
    meta = json.loads((ref.path / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "key": "0" * 64}))
    with pytest.raises(_CorruptEntry, match="another key"):
        _load_entry(copy, ref.key, cfg)
    del meta["models"]["ae"]
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(_CorruptEntry, match="inconsistent"):
        _load_entry(copy, ref.key, cfg)


@pytest.mark.slow
def test_vae_at_picks_the_nearest_sweep_beta_on_a_log_scale(tiny):
    ref = tiny[4]                                    # sweep 1 and 4: log-midpoint 2
    assert ref.vae_at(None) == (ref.best_beta, ref.models["vae_tuned"])
    assert ref.vae_at(1.9)[0] == 1.0 and ref.vae_at(2.1)[0] == 4.0 and ref.vae_at(100.0)[0] == 4.0
    assert ref.vae_at(0.0)[0] == 1.0 and ref.vae_at(float("nan"))[0] == ref.best_beta
    assert ref.vae_at(3.0)[1] is ref.sweep[4.0]


@pytest.mark.slow
def test_exact_vae_reuses_held_betas_and_trains_others_once(tiny):
    """vae_for only looks up; train_vae_at is the one step that trains, once per β."""
    _, params, _, _, ref, _ = tiny
    assert ref.vae_for(4.0)[1] is ref.sweep[4.0]
    assert ref.vae_for(10.0)[1] is ref.models["vae_beta10"]
    assert ref.vae_for(None) == ref.vae_at(None)
    assert not ref.train_vae_at(4.0) and not ref.train_vae_at(None)   # held, or no exact β: nothing to train
    with pytest.raises(LookupError, match="beta=2.5"):
        ref.vae_for(2.5)                          # a getter never trains
    messages: list[str] = []
    with one_thread():
        assert ref.train_vae_at(2.5, log=messages.append)
        beta, first = ref.vae_for(2.5)
        assert beta == 2.5 and len(messages) == 1 and "beta=2.5" in messages[0]
        assert not ref.train_vae_at(2.5, log=messages.append)
        again = ref.vae_for(2.5)[1]
        assert len(messages) == 1 and again is first  # loaded once, then held: not retrained, not reread
        direct = train_model(training_subset(load_mnist(train=True)[0], params["TRAIN_SUBSET"]),
                             reference_params(tiny[0], params), 2.5, "cpu", tiny[0].model_class("vae")).model
        assert _same_weights(first, direct)
        stored = ref.path / "extra" / "beta=2.5.pt"
        stored.write_bytes(b"damaged")
        elsewhere = dataclasses.replace(ref, _extras={})   # the same entry, as another worker loads it
        assert elsewhere.held_vae(2.5) is None    # a damaged file is not used
        assert elsewhere.train_vae_at(2.5, log=messages.append)
        retrained = elsewhere.vae_for(2.5)[1]
        assert len(messages) == 2 and _same_weights(retrained, first)
