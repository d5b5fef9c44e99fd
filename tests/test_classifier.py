"""The grader's MNIST classifier: pinned weights, real accuracy, output shapes, reproducible training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grader import classifier as classifier_module
from grader.classifier import (
    FEATURES,
    MnistClassifier,
    classify,
    evaluate_classifier,
    feature_stats_cached,
    file_sha256,
    fit_classifier,
    load_classifier,
    load_configured_classifier,
    random_affine,
    save_classifier,
)
from grader.config import load_config
from grader.data import load_mnist
from grader.errors import ClassifierError


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def shipped(config) -> MnistClassifier:
    return load_configured_classifier(config)


@pytest.fixture(scope="module")
def test_slice():
    """Every fifth MNIST test image: 2000 images spread over the whole test set."""
    images, labels = load_mnist(train=False)
    return images[::5], labels[::5]


def test_shipped_weights_match_the_configured_hash(config):
    weights = config.path(config.classifier.weights)
    assert weights.is_file()
    assert file_sha256(weights) == config.classifier.sha256
    assert weights.stat().st_size < 5 * 1024 * 1024


def test_saved_weights_do_not_depend_on_file_name_or_time(shipped, config, tmp_path):
    # torch.save to a path embeds the file's name in the archive; the hash must not depend on it.
    resaved = tmp_path / "some-other-name.pt"
    save_classifier(shipped, resaved)
    assert file_sha256(resaved) == config.classifier.sha256


def test_modified_weights_are_refused_naming_file_and_hashes(config, tmp_path):
    original = config.path(config.classifier.weights)
    copy = tmp_path / "classifier.pt"
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ClassifierError) as info:
        load_classifier(copy, config.classifier.sha256)
    message = str(info.value)
    assert str(copy) in message
    assert config.classifier.sha256 in message
    assert file_sha256(copy) in message
    assert "grader classifier train" in message


def test_missing_weights_are_refused(config, tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ClassifierError, match="not found") as info:
        load_classifier(missing, config.classifier.sha256)
    assert str(missing) in str(info.value)


def test_matching_hash_but_wrong_contents_is_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ClassifierError, match="not a state_dict"):
        load_classifier(other, file_sha256(other))


def test_shipped_classifier_is_accurate_on_real_test_images(shipped, test_slice):
    images, labels = test_slice
    assert len(images) == 2000
    assert evaluate_classifier(shipped, images, labels) >= 0.99


def test_classify_shapes_flat_input_and_determinism(shipped, test_slice):
    images = test_slice[0][:300]
    out = classify(shipped, images, batch_size=128)
    assert out.probs.shape == (300, 10)
    assert out.features.shape == (300, FEATURES)
    assert torch.allclose(out.probs.sum(dim=1), torch.ones(300), atol=1e-5)
    flat = classify(shipped, images.reshape(300, 784), batch_size=1000)
    assert torch.allclose(flat.probs, out.probs, atol=1e-5)
    again = classify(shipped, images, batch_size=128)
    assert torch.equal(again.probs, out.probs) and torch.equal(again.features, out.features)
    assert shipped.features(images[:5]).shape == (5, FEATURES)
    assert shipped(images[:5]).shape == (5, 10)


def test_cpu_batch_size_does_not_change_a_single_bit(shipped, test_slice):
    """classify's CPU default (CPU_BATCH images a pass, for speed) gives what batches of
    DEVICE_BATCH give: the figures of a run do not depend on the batch size chosen."""
    images = test_slice[0][:1100]
    default = classify(shipped, images)
    large = classify(shipped, images, batch_size=classifier_module.DEVICE_BATCH)
    assert classifier_module.CPU_BATCH < classifier_module.DEVICE_BATCH
    assert torch.equal(default.probs, large.probs) and torch.equal(default.features, large.features)


def test_inference_path_gives_the_modules_features_bit_for_bit(shipped, test_slice):
    """classify pools first (elementwise maxima, then batch norm and ReLU on the pooled values):
    the same bits as the modules' own forward, on real digits and on noisy blobs like a poor
    decoder's, also where a batch norm's weight is negative (its pool is a minimum then)."""
    flipped = MnistClassifier()
    flipped.load_state_dict(shipped.state_dict())
    with torch.no_grad():
        flipped.body[1].weight[::3] *= -1.0           # every third channel of the first block
        flipped.body[5].weight[1] = 0.0
    blobs = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) ** 3
    for model in (shipped, flipped.eval()):
        for images in (test_slice[0][:500], blobs):
            with torch.no_grad():
                expected = model.eval().features(images)
                probs = torch.softmax(model.head(expected), dim=1)
            out = classify(model, images)
            assert torch.equal(out.features.view(torch.int32), expected.view(torch.int32))   # -0.0 too
            assert torch.equal(out.probs, probs)


def test_test_set_statistics_are_cached_per_classifier_and_images(shipped, test_slice, tmp_path, monkeypatch):
    images = test_slice[0][:400]
    computed = []
    real_classify = classifier_module.classify
    monkeypatch.setattr(classifier_module, "classify", lambda *a, **k: computed.append(1) or real_classify(*a, **k))
    monkeypatch.setattr(classifier_module, "_FEATURE_STATS", {})   # this process's memo, emptied
    first = feature_stats_cached(shipped, images, cache_dir=tmp_path)
    assert len(computed) == 1 and len(list(tmp_path.glob("*.npz"))) == 1

    monkeypatch.setattr(classifier_module, "_FEATURE_STATS", {})   # as a new worker process
    again = feature_stats_cached(shipped, images, cache_dir=tmp_path)
    assert len(computed) == 1                                       # read from the cache file
    assert np.array_equal(again.mean, first.mean) and np.array_equal(again.cov, first.cov) and again.n == 400

    other = MnistClassifier()
    other.load_state_dict(shipped.state_dict())
    with torch.no_grad():
        other.head[1].bias += 1.0            # another classifier: another digest, another entry
        other.body[-3].weight[0, 0] += 0.5
    changed = feature_stats_cached(other, images, cache_dir=tmp_path)
    assert len(computed) == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    assert not np.array_equal(changed.cov, first.cov)
    feature_stats_cached(shipped, images[:300], cache_dir=tmp_path)   # other images: another entry
    assert len(computed) == 3

    monkeypatch.setattr(classifier_module, "_FEATURE_STATS", {})
    entry = tmp_path / f"{classifier_module.feature_cache_key(shipped, images)}.npz"
    entry.write_bytes(b"truncated")                                 # a damaged entry is recomputed
    assert np.array_equal(feature_stats_cached(shipped, images, cache_dir=tmp_path).cov, first.cov)
    assert len(computed) == 4 and entry.read_bytes().startswith(b"PK")


def test_wrong_input_shape_is_a_clear_error(shipped):
    with pytest.raises(ValueError, match="expected MNIST images"):
        shipped(torch.zeros(2, 1, 32, 32))


def test_augmentation_moves_digits_without_destroying_them(test_slice):
    images = test_slice[0][:64]
    moved = random_affine(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape
    assert not torch.allclose(moved, images)
    assert moved.min() >= 0 and moved.max() <= 1
    ink, moved_ink = images.sum(dim=(1, 2, 3)), moved.sum(dim=(1, 2, 3))
    assert ((moved_ink / ink - 1).abs() < 0.35).all()   # scale change is at most 10% per side


def test_training_is_deterministic_given_the_seed(test_slice):
    images, labels = test_slice[0][:384], test_slice[1][:384]

    def train(seed: int) -> dict[str, torch.Tensor]:
        model = fit_classifier(images, labels, seed=seed, epochs=1, log=lambda _: None)
        return model.state_dict()

    first, second, other = train(0), train(0), train(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["head.1.weight"], other["head.1.weight"])
