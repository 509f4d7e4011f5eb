"""SISA: partition, slice checkpoints, exact shard retraining, aggregation."""

import math

import pytest
import torch

from unroll_utils import models
from unroll_utils.distances import weight_distance
from unroll_utils.privacy import predict_probs
from unroll_utils.sisa import SISA, expected_retrain_fraction, stage_epochs


def _make(seed=0, **kw):
    kw = kw or dict(schedule="per_stage", epochs_per_slice=1)
    return SISA(lambda s: models.build_model("linear", in_features=64, seed=s % 1000), 3, 4, lr=0.1,
                batch_size=16, seed=seed, **kw)


def test_stage_epochs_follow_bourtoule_by_hand():
    # sisa.py: avg = 2R/(R+1) * E/R; stage r gets int((r+1) avg) - int(r avg)
    # R = 4, E = 5: avg = 8/5 * 5/4 = 2 -> [2, 2, 2, 2], 8 stage-epochs; data seen 2*(1+2+3+4)/4 = 5 epochs
    e = stage_epochs(5, 4)
    assert e == [2, 2, 2, 2] and sum(e) == 8
    assert sum(ei * (r + 1) / 4 for r, ei in enumerate(e)) == 5.0
    # R = 3, E = 5: avg = 6/4 * 5/3 = 2.5 -> int(2.5)=2, int(5)-2=3, int(7.5)-5=2
    assert stage_epochs(5, 3) == [2, 3, 2]
    # R = 4, E = 1: avg = 0.4 -> 0, 0, int(1.2)=1, int(1.6)-1=0: a stage may get no epoch
    assert stage_epochs(1, 4) == [0, 0, 1, 0]
    assert stage_epochs(7, 1) == [7]
    with pytest.raises(ValueError, match="epochs"):
        stage_epochs(0, 4)


def test_expected_retrain_fraction_by_hand():
    # R = 4, equal stage epochs: a point in slice j redoes stages j..3 of cost (r+1):
    # (10 + 9 + 7 + 4) / 4 / 10 = 30/40 = 3/4 = (2R+1)/(3R)
    assert expected_retrain_fraction([2, 2, 2, 2]) == pytest.approx(0.75, abs=1e-15)
    for r in (1, 2, 5, 10):
        assert expected_retrain_fraction([1] * r) == pytest.approx((2 * r + 1) / (3 * r), abs=1e-15)
    # R = 3, [2, 3, 2]: costs 2, 6, 6 (total 14); from j=0: 14, j=1: 12, j=2: 6 -> 32/42
    assert expected_retrain_fraction([2, 3, 2]) == pytest.approx(32 / 42, abs=1e-15)


def test_spread_schedule_steps_and_default_vote(digits):
    sisa = _make(epochs=5)  # the default schedule: Bourtoule's, [2, 2, 2, 2] at R = 4
    assert sisa.schedule == "spread" and sisa.stage_epochs == [2, 2, 2, 2]
    cost = sisa.fit(digits.train_x, digits.train_y)
    assert cost.steps == 3 * sum(2 * math.ceil(25 * (r + 1) / 16) for r in range(4))  # 25 points a slice
    x = digits.test_x[:40]
    assert torch.equal(sisa.predict(x), sisa.predict(x, "majority_vote"))  # the vote is the default
    one = _make(epochs=1)  # [0, 0, 1, 0]: only stage 2 (75 points) trains
    assert one.fit(digits.train_x, digits.train_y).steps == 3 * math.ceil(75 / 16)


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
        SISA(lambda s: None, 0, 2, lr=0.1, epochs=1)
    with pytest.raises(ValueError, match="epochs .*required"):
        SISA(lambda s: None, 2, 2, lr=0.1)
    with pytest.raises(ValueError, match="schedule"):
        SISA(lambda s: None, 2, 2, lr=0.1, epochs=1, schedule="linear")
    with pytest.raises(ValueError, match="epochs_per_slice"):
        SISA(lambda s: None, 2, 2, lr=0.1, schedule="per_stage", epochs_per_slice=0)
    with pytest.raises(ValueError, match="exceeds"):
        SISA(lambda s: None, 100, 10, lr=0.1, epochs=1).fit(digits.train_x, digits.train_y)
    with pytest.raises(ValueError, match="fit first"):
        _make().unlearn([0])
