"""grader.models.shuffled_batches: the one batching of the reference training and the classifier's."""

from __future__ import annotations

import torch

from grader.models import shuffled_batches


def test_every_index_once_in_the_generators_order():
    batches = list(shuffled_batches(10, 4, torch.Generator().manual_seed(3)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.equal(torch.cat(batches), torch.randperm(10, generator=torch.Generator().manual_seed(3)))


def test_a_lone_last_image_is_left_out_when_asked():
    assert [len(b) for b in shuffled_batches(9, 4, torch.Generator().manual_seed(0), min_size=2)] == [4, 4]
    assert [len(b) for b in shuffled_batches(10, 4, torch.Generator().manual_seed(0), min_size=2)] == [4, 4, 2]
    assert [len(b) for b in shuffled_batches(9, 4, torch.Generator().manual_seed(0))] == [4, 4, 1]
