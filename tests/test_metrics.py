"""Verification error and the weight distances under it (unroll_utils.metrics, unroll_utils.distances),
unlearning error, correlations (paper §1.2, §1.4)."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from unroll_utils import distances, metrics


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
    wa, wb = distances.model_weights(a, True), distances.model_weights(b, True)
    assert distances.weight_distance(wa, wb) == pytest.approx(5.0 * 2.0, rel=1e-6)  # sqrt(4 * 25)


def test_weight_distance_offset_equals_explicit_sum():
    a, b = two_models()
    u = [torch.randn_like(p) for p in a.parameters()]
    explicit = [p.detach() + d for p, d in zip(a.parameters(), u)]
    assert distances.weight_distance(a, b, offset=u) == pytest.approx(
        distances.weight_distance(explicit, b), rel=1e-6)
    with pytest.raises(ValueError, match="same"):
        distances.weight_distance(a, [torch.zeros(3)])
    with pytest.raises(ValueError, match="offset"):
        distances.weight_distance(a, b, offset=[torch.zeros(1)])


def lockstep_weights(dtype=torch.float32, seed=0):
    """w_t, w′_t, w_0 and u with tensors above, at and below the CPU block size, mixed shapes."""
    block = distances._BLOCK
    shapes = [(3, 4), (300, 300), (block,), (1, 1, 3, 3), (2 * block + 5,), (7,), (64, 3, 3, 3)]
    assert any(math.prod(s) > block for s in shapes) and any(math.prod(s) <= block for s in shapes)
    g = torch.Generator().manual_seed(seed)
    w_t, w_r, w_0, u = ([torch.randn(s, generator=g, dtype=dtype) * scale for s in shapes]
                        for scale in (1.0, 1.0, 1.0, 0.1))
    return w_t, w_r, w_0, u


def flat64(ws):
    return np.concatenate([w.double().numpy().ravel() for w in ws])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lockstep_distances_match_weight_distance_and_numpy(dtype):
    w_t, w_r, w_0, u = lockstep_weights(dtype)
    big, small = distances._partition([w_t, w_r, w_0, u])
    assert big and small  # both the blockwise and the foreach path are exercised
    d = distances.lockstep_distances(w_t, w_r, w_0, undo=u)
    # the same values as the three weight_distance calls run_lockstep used to make
    assert d == (distances.weight_distance(w_t, w_r, offset=u), distances.weight_distance(w_t, w_0),
                 distances.weight_distance(w_t, w_r))
    assert d._fields == ("ve", "delta_w", "dist_retrained")
    # and an independent float64 computation on flat vectors
    a, r, w0, du = flat64(w_t), flat64(w_r), flat64(w_0), flat64(u)
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    assert d.ve == pytest.approx(np.linalg.norm(a + du - r), rel=rel)
    assert d.delta_w == pytest.approx(np.linalg.norm(a - w0), rel=rel)
    assert d.dist_retrained == pytest.approx(np.linalg.norm(a - r), rel=rel)
    assert len({d.ve, d.delta_w, d.dist_retrained}) == 3  # three different quantities


def test_lockstep_distances_foreach_path_for_mixed_dtypes():
    # a float64 undo on float32 weights sends every tensor, large ones too, through foreach ops
    w_t, w_r, w_0, _ = lockstep_weights()
    u = [torch.randn(w.shape, dtype=torch.float64) * 0.1 for w in w_t]
    assert distances._partition([w_t, w_r, w_0, u])[0] == []
    d = distances.lockstep_distances(w_t, w_r, w_0, undo=u)
    a, r, w0, du = flat64(w_t), flat64(w_r), flat64(w_0), flat64(u)
    assert d.ve == pytest.approx(np.linalg.norm(a + du - r), rel=1e-6)
    assert d.delta_w == pytest.approx(np.linalg.norm(a - w0), rel=1e-6)
    assert d.dist_retrained == pytest.approx(np.linalg.norm(a - r), rel=1e-6)


def test_lockstep_distances_zero_for_identical_weights_and_no_undo():
    w_t, w_r, w_0, u = lockstep_weights()
    same = [w.clone() for w in w_t]
    zero = [torch.zeros_like(w) for w in w_t]
    assert distances.lockstep_distances(w_t, same, same, undo=zero) == (0.0, 0.0, 0.0)
    assert distances.lockstep_distances(w_t, same, w_0, undo=None).ve == 0.0
    # undo=None: VE is the distance to M′ itself, not the norm of anything else
    d = distances.lockstep_distances(w_t, w_r, w_0)
    assert d.ve == d.dist_retrained == distances.weight_distance(w_t, w_r)
    assert d.delta_w == distances.weight_distance(w_t, w_0)
    # only u left: VE = ‖u‖
    assert distances.lockstep_distances(w_t, same, w_0, undo=u).ve == pytest.approx(
        np.linalg.norm(flat64(u)), rel=1e-6)


def test_lockstep_distances_accept_models():
    a, b = two_models()
    c = copy.deepcopy(a)
    with torch.no_grad():
        for p in c.parameters():
            p.add_(1.0)
    n = sum(p.numel() for p in a.parameters())
    d = distances.lockstep_distances(a, b, c)
    assert d.delta_w == pytest.approx(math.sqrt(n), rel=1e-6)
    assert d.dist_retrained == pytest.approx(metrics.verification_error(a, b), rel=1e-12)


def test_lockstep_distances_reject_mismatched_inputs():
    w_t, w_r, w_0, u = lockstep_weights()
    with pytest.raises(ValueError, match="w_retrained must hold the same number"):
        distances.lockstep_distances(w_t, w_r[:-1], w_0, u)
    with pytest.raises(ValueError, match="w_retrained must hold the same number"):
        distances.lockstep_distances(w_t, w_r[::-1], w_0, u)
    with pytest.raises(ValueError, match="w_initial must match"):
        distances.lockstep_distances(w_t, w_r, w_0 + [torch.zeros(2)], u)
    with pytest.raises(ValueError, match="w_initial must match"):
        distances.lockstep_distances(w_t, w_r, [w.reshape(-1) for w in w_0], u)
    with pytest.raises(ValueError, match="undo must match"):
        distances.lockstep_distances(w_t, w_r, w_0, u[1:])
    with pytest.raises(ValueError, match="undo must match"):
        distances.lockstep_distances(w_t, w_r, w_0, [x.T if x.dim() == 2 else x for x in u])


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
    assert c["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert c["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert c["n"] == 50
    assert math.isnan(metrics.correlations([1, 1, 1], [1, 2, 3])["pearson"])
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


class TwoLayers(nn.Module):
    """Two same-shaped layers; ``reverse`` registers them in the other order (same names)."""

    def __init__(self, reverse=False):
        super().__init__()
        if reverse:
            self.second = nn.Linear(4, 4)
            self.first = nn.Linear(4, 4)
        else:
            self.first = nn.Linear(4, 4)
            self.second = nn.Linear(4, 4)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def flat_by_name(sd, names):
    return np.concatenate([sd[n].detach().double().numpy().ravel() for n in names])


def test_same_weights_under_two_wrappers_give_ve_exactly_zero():
    a, b = two_models()
    a_copy = copy.deepcopy(a)
    compiled = torch.compile(a_copy)  # an OptimizedModule: names start with "_orig_mod."
    parallel = nn.DataParallel(a)     # names start with "module." (runs on CPU as well)
    assert next(iter(dict(compiled.named_parameters()))).startswith("_orig_mod.")
    assert next(iter(dict(parallel.named_parameters()))).startswith("module.")
    assert metrics.verification_error(parallel, a_copy) == 0.0
    assert metrics.verification_error(compiled, parallel) == 0.0
    assert metrics.verification_error(nn.DataParallel(compiled), a) == 0.0
    assert distances.lockstep_distances(parallel, compiled, a_copy) == (0.0, 0.0, 0.0)
    # and a real distance is the same with or without the wrapper
    assert metrics.verification_error(parallel, b) == metrics.verification_error(a, b) > 0
    # a state dict saved from DataParallel (BN buffers included) against the plain model's
    saved = {"module." + k: v for k, v in b.state_dict().items()}
    assert distances.weight_distance(saved, a.state_dict()) == pytest.approx(
        distances.weight_distance(distances.model_weights(b, True), distances.model_weights(a, True)),
        rel=1e-12)


def test_reordered_registration_is_paired_by_name():
    torch.manual_seed(0)
    fwd, other = TwoLayers(), TwoLayers()
    rev = TwoLayers(reverse=True)
    rev.load_state_dict(fwd.state_dict())
    assert [n for n, _ in rev.named_parameters()][0] == "second.weight"
    assert metrics.verification_error(fwd, rev) == 0.0
    assert distances.lockstep_distances(fwd, rev, rev, undo=None) == (0.0, 0.0, 0.0)
    # positional pairing (lists) compares first with second: the large VE the issue describes
    positional = metrics.verification_error(distances.model_weights(fwd), distances.model_weights(rev))
    names = [n for n, _ in fwd.named_parameters()]
    swapped = [n.replace("first", "tmp").replace("second", "first").replace("tmp", "second")
               for n in names]
    sd = fwd.state_dict()
    assert positional == pytest.approx(np.linalg.norm(flat_by_name(sd, names) - flat_by_name(sd, swapped)),
                                       rel=1e-6)
    assert positional > 0.1
    # against another model: the by-name distance, whatever the registration order
    expected = np.linalg.norm(flat_by_name(sd, names) - flat_by_name(other.state_dict(), names))
    assert metrics.verification_error(rev, other) == pytest.approx(expected, rel=1e-6)
    # an undo list follows w_orig's parameters() order; w_retrained is re-ordered by name
    u = [torch.full_like(p, 0.5) for p in rev.parameters()]
    d = distances.lockstep_distances(rev, nn.DataParallel(fwd), fwd, undo=u)
    n_params = sum(p.numel() for p in fwd.parameters())
    assert d.ve == pytest.approx(0.5 * math.sqrt(n_params), rel=1e-6)
    assert d.delta_w == 0.0 and d.dist_retrained == 0.0


def test_different_parameter_names_raise_naming_the_first():
    a, _ = two_models()
    renamed = nn.Module()
    renamed.add_module("0", copy.deepcopy(a[0]))
    renamed.add_module("norm", copy.deepcopy(a[1]))
    renamed.add_module("2", copy.deepcopy(a[2]))
    with pytest.raises(ValueError) as err:
        metrics.verification_error(a, renamed)
    assert str(err.value).startswith("w_unlearned and w_retrained name different parameters: "
                                     "'1.weight' is in w_unlearned but not in w_retrained")
    assert "distances.model_weights" in str(err.value)  # how to pair by position instead
    # extra parameter on the second side: named too
    bigger = nn.Sequential(*copy.deepcopy(a), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"w_orig and w_retrained name different parameters: '3.weight' is in w_retrained but not in w_orig"):
        distances.lockstep_distances(a, bigger, a)
    with pytest.raises(ValueError, match=r"w_orig and w_initial name different parameters: '1.weight'"):
        distances.lockstep_distances(a, a, renamed)
    # same names, other shapes: the name and both shapes
    wide = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"a and b disagree in the shape of '0.weight': \(4, 5\) vs \(6, 5\)"):
        distances.weight_distance(a, wide)
    # positional mode needs no names: same shapes, other names -> a distance, no error
    assert distances.weight_distance(distances.model_weights(a), distances.model_weights(renamed)) == 0.0
