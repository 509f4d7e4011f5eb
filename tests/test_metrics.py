"""Verification error, weight distances, unlearning error, correlations (paper §1.2, §1.4)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from unroll_utils import metrics


def two_models():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    b = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    return a, b


def test_verification_error_matches_float64_flattened_norm():
    a, b = two_models()
    flat = lambda m: np.concatenate([p.detach().double().numpy().ravel() for p in m.parameters()])
    expected = np.linalg.norm(flat(a) - flat(b))  # the reference code's definition, in float64
    assert metrics.verification_error(a, b) == pytest.approx(expected, rel=1e-6)
    assert metrics.verification_error(a, a) == 0.0
    # parameters only by default: BN running stats do not count
    b.load_state_dict(a.state_dict())
    b[1].running_mean += 5.0
    assert metrics.verification_error(a, b) == 0.0
    wa, wb = metrics.model_weights(a, True), metrics.model_weights(b, True)
    assert metrics.weight_distance(wa, wb) == pytest.approx(5.0 * 2.0, rel=1e-6)  # sqrt(4 * 25)


def test_weight_distance_offset_equals_explicit_sum():
    a, b = two_models()
    u = [torch.randn_like(p) for p in a.parameters()]
    explicit = [p.detach() + d for p, d in zip(a.parameters(), u)]
    assert metrics.weight_distance(a, b, offset=u) == pytest.approx(
        metrics.weight_distance(explicit, b), rel=1e-6)
    with pytest.raises(ValueError, match="same"):
        metrics.weight_distance(a, [torch.zeros(3)])
    with pytest.raises(ValueError, match="offset"):
        metrics.weight_distance(a, b, offset=[torch.zeros(1)])


def test_unlearning_error_formula():
    assert metrics.unlearning_error(0.1, 20, 3.0, 4.0) == pytest.approx(0.01 / 2 * 20 * 3.0 * 4.0)
    assert metrics.unlearning_error(0.1, 0, 3.0, 4.0) == 0.0
    # quadratic in lr, linear in t, delta_w and sigma
    base = metrics.unlearning_error(0.01, 10, 1.0, 1.0)
    assert metrics.unlearning_error(0.02, 10, 1.0, 1.0) == pytest.approx(4 * base)
    assert metrics.unlearning_error(0.01, 30, 2.0, 5.0) == pytest.approx(30 * base)
    for kwargs, name in [((0.0, 1, 1, 1), "lr"), ((0.1, -1, 1, 1), "t"), ((0.1, 1, -1, 1), "delta_w"),
                         ((0.1, 1, 1, float("nan")), "sigma")]:
        with pytest.raises(ValueError, match=name):
            metrics.unlearning_error(*kwargs)


def test_rolling_mean_and_correlations_match_scipy():
    assert np.allclose(metrics.rolling_mean([2.0, 4.0, 9.0]), [2.0, 3.0, 5.0])
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    c = metrics.correlations(x, y)
    assert c["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert c["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert c["n"] == 50
    assert math.isnan(metrics.correlations([1, 1, 1], [1, 2, 3])["pearson_r"])
    with pytest.raises(ValueError, match="same length"):
        metrics.correlations([1, 2], [1, 2, 3])


def test_accuracy_restores_mode():
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    net.train()
    assert metrics.accuracy(net, x, y, batch_size=3) == 0.75
    assert net.training
    with pytest.raises(ValueError):
        metrics.accuracy(net, x[:0], y[:0])
