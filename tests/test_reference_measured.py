"""The on-disk cache of the reference's measurement per β (grader/reference_measured.py)."""

from __future__ import annotations

import numpy as np

from grader.measure import ReferenceMeasurement, SampleCaptions
from grader.records import ModelFigures
from grader.reference_measured import cached_measurement, measurement_key


def _measurement(seed: int = 0) -> ReferenceMeasurement:
    rng = np.random.default_rng(seed)
    figures = {"ae": ModelFigures(mse=float(rng.random()), sample_fid=float(rng.random()) * 100),
               "vae_tuned": ModelFigures(mse=0.1 / 3, kl=float(rng.random()), sample_memorised=None)}
    captions = {"ae": SampleCaptions(labels=rng.integers(0, 10, 50), confidences=rng.random(50).astype(np.float32))}
    return ReferenceMeasurement(figures, captions)


def _same(a: ReferenceMeasurement, b: ReferenceMeasurement) -> bool:
    return (a.figures == b.figures and a.captions.keys() == b.captions.keys()
            and all(np.array_equal(a.captions[r].labels, b.captions[r].labels)
                    and np.array_equal(a.captions[r].confidences, b.captions[r].confidences)
                    and a.captions[r].confidences.dtype == b.captions[r].confidences.dtype for r in a.captions))


def test_measured_once_then_read_back_exactly(tmp_path):
    made = []

    def make():
        made.append(1)
        return _measurement()

    first = cached_measurement("k", make, root=tmp_path)
    second = cached_measurement("k", make, root=tmp_path)
    assert len(made) == 1
    assert _same(first, second)        # floats and arrays round-trip bit for bit
    assert second.figures["vae_tuned"].mse == 0.1 / 3


def test_damaged_entry_is_measured_again(tmp_path):
    cached_measurement("k", _measurement, root=tmp_path)
    (tmp_path / "k.npz").write_bytes(b"not an npz")
    made = []
    again = cached_measurement("k", lambda: made.append(1) or _measurement(1), root=tmp_path)
    assert made == [1]
    assert _same(again, _measurement(1))
    assert _same(cached_measurement("k", lambda: _measurement(2), root=tmp_path), _measurement(1))


def test_key_follows_every_part():
    base = measurement_key("ref", 4.0, "config", {"EPOCHS": 4})
    assert base == measurement_key("ref", 4.0, "config", {"EPOCHS": 4})
    others = {measurement_key("ref2", 4.0, "config", {"EPOCHS": 4}), measurement_key("ref", 2.0, "config", {"EPOCHS": 4}),
              measurement_key("ref", 4.0, "config2", {"EPOCHS": 4}), measurement_key("ref", 4.0, "config", {"EPOCHS": 5})}
    assert base not in others and len(others) == 4
