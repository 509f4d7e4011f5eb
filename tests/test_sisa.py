"""SISA: partition, slice checkpoints, exact shard retraining, aggregation."""

import math

import pytest
import torch

from unroll_utils import models
from unroll_utils.distances import weight_distance
from unroll_utils.privacy import predict_probs
from unroll_utils.sisa import SISA


def _make(seed=0):
    return SISA(lambda s: models.build_model("linear", in_features=64, seed=s % 1000), 3, 4, lr=0.1,
                epochs_per_slice=1, batch_size=16, seed=seed)


def test_partition_and_fit_steps(digits):
    sisa = _make()
    cost = sisa.fit(digits.train_x, digits.train_y)
    everything = torch.cat([sl for shard in sisa.slices for sl in shard])
    assert torch.equal(everything.sort().values, torch.arange(300))  # disjoint and complete
    assert [sum(len(sl) for sl in shard) for shard in sisa.slices] == [100, 100, 100]
    # stage r of a shard trains on slices 0..r: 25, 50, 75, 100 points in batches of 16
    assert cost.steps == 3 * sum(math.ceil(25 * (r + 1) / 16) for r in range(4))


def test_unlearn_retrains_only_the_affected_shard_from_its_checkpoint(digits):
    sisa, scratch = _make(), _make()
    sisa.fit(digits.train_x, digits.train_y)
    scratch.fit(digits.train_x, digits.train_y)
    point = int(sisa.slices[1][2][0])  # shard 1, slice 2
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in sisa.models]
    cost = sisa.unlearn([point])
    assert cost.retrained == {1: 2}
    # stages 2 and 3 of shard 1: 74 and 99 points
    assert cost.steps == math.ceil(74 / 16) + math.ceil(99 / 16)
    for s in (0, 2):
        assert all(torch.equal(before[s][k], v) for k, v in sisa.models[s].state_dict().items())
    assert all(point not in sl for shard in sisa.slices for sl in shard)
    # the checkpoint restart gives the same model as retraining the shard from its initialisation
    full = scratch.unlearn([point], from_scratch=True)
    assert full.steps > cost.steps
    assert weight_distance(sisa.models[1], scratch.models[1]) == 0.0
    with pytest.raises(ValueError, match="already unlearned"):
        sisa.unlearn([point])


def test_aggregation(digits):
    sisa = _make()
    sisa.fit(digits.train_x, digits.train_y)
    x = digits.test_x[:50]
    mean = torch.stack([predict_probs(m, x) for m in sisa.models]).mean(0)
    assert torch.allclose(sisa.predict_proba(x), mean)
    votes = torch.stack([predict_probs(m, x).argmax(1) for m in sisa.models])
    maj = sisa.predict(x, "majority_vote")
    for i in range(50):
        counts = torch.bincount(votes[:, i], minlength=10)
        assert counts[maj[i]] == counts.max() and maj[i] == int(torch.nonzero(counts == counts.max())[0])
    assert 0.0 <= sisa.accuracy(digits.test_x, digits.test_y) <= 1.0
    with pytest.raises(ValueError, match="aggregation"):
        sisa.predict(x, "median")


def test_validation(digits):
    with pytest.raises(ValueError, match="n_shards"):
        SISA(lambda s: None, 0, 2, lr=0.1)
    with pytest.raises(ValueError, match="exceeds"):
        SISA(lambda s: None, 100, 10, lr=0.1).fit(digits.train_x, digits.train_y)
    with pytest.raises(ValueError, match="fit first"):
        _make().unlearn([0])
