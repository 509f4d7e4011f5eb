"""σ tracking along a trajectory (hessian.TopEigenTracker, LockStepConfig.sigma_track): checked
against a dense eigh of a tiny network's Hessian at every step."""

import math

import pytest
import torch
from torch import nn

from unroll_utils import hessian
from unroll_utils.trajectory import LockStepConfig, run_lockstep


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


def _data(n=24):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 6, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


def _trajectory(tracker, lr, steps=12):
    """SGD on the tiny net; at every step the tracker's result and the dense truth λ_max."""
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data()
    loss_fn = nn.functional.cross_entropy
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    out = []
    for t in range(steps):
        if t:
            opt.zero_grad()
            loss_fn(net(x[: 8]), y[: 8]).backward()
            opt.step()
        op = hessian.HessianOperator(net, loss_fn, x, y)
        res = tracker.update(op.matvec, op.numel)
        truth = float(torch.linalg.eigvalsh(op.dense())[-1])
        out.append((res, truth))
    return out


@pytest.mark.parametrize("stop", ["eigenvalue", "residual"])
@pytest.mark.parametrize("lr", [1e-3, 5e-2])
def test_tracked_eigenvalue_is_within_its_error_estimate_of_the_dense_truth(lr, stop):
    steps = _trajectory(hessian.TopEigenTracker(tol=1e-2, stop=stop), lr)
    for t, (res, truth) in enumerate(steps):
        # Kato–Temple: θ ≤ λ_max ≤ θ + ε (rounding slack 1e-10·λ)
        assert res.eigenvalue <= truth + 1e-10 * abs(truth), (t, res, truth)
        assert truth - res.eigenvalue <= res.error_bound + 1e-10 * abs(truth), (t, res, truth)
        # every step, tracked or fallen back, meets the tolerance on its own estimate
        assert res.converged and res.error_bound <= 1e-2 * res.eigenvalue, (t, res)
    assert any(res.method == "track" for res, _ in steps)


def test_eigenvalue_rule_fallback_stops_on_the_trackers_estimate():
    # lr 0.05 makes later steps fall back; the eigenvalue rule stops a fallback once
    # min(ρ, ρ²/δ) ≤ tol·θ with the tracker's gap, so here it spends fewer HVPs than the residual
    # rule, and its residual may exceed tol·θ (the point of the rule) while the estimate may not
    by_rule = {stop: _trajectory(hessian.TopEigenTracker(tol=1e-2, stop=stop), 5e-2)
               for stop in ("eigenvalue", "residual")}
    eig, res_rule = by_rule["eigenvalue"], by_rule["residual"]
    assert any(r.method == "lanczos" for r, _ in eig[1:])
    assert sum(r.n_hvp for r, _ in eig) < sum(r.n_hvp for r, _ in res_rule)
    for r, _ in res_rule[1:]:
        assert r.method == "track" or r.residual <= 1e-2 * r.eigenvalue


def test_easy_regime_costs_one_hvp_per_step():
    tracker = hessian.TopEigenTracker(tol=1e-2)
    steps = _trajectory(tracker, lr=1e-4)
    later = [res for res, _ in steps[1:]]
    assert all(res.method == "track" and res.n_hvp == 1 for res in later)
    assert tracker.n_tracked == len(later) and tracker.n_fallback == 0
    assert max(abs(res.eigenvalue - truth) / truth for res, truth in steps) <= 1e-2


def test_fallback_triggers_when_the_estimate_exceeds_the_tolerance():
    # a tolerance no one-HVP estimate can meet after a step: every later step falls back to Lanczos
    tracker = hessian.TopEigenTracker(tol=1e-12, stop="residual")
    steps = _trajectory(tracker, lr=5e-2, steps=5)
    assert [res.method for res, _ in steps] == ["lanczos"] * 5
    assert tracker.n_fallback == 4 and tracker.n_tracked == 0
    for res, truth in steps:
        assert res.n_hvp > 1
        assert abs(res.eigenvalue - truth) <= 1e-9 * truth


def test_fallback_reuses_the_tracking_hvp():
    net, (x, y) = TinyNet().double(), _data()
    op = hessian.HessianOperator(net, nn.functional.cross_entropy, x, y)
    tracker = hessian.TopEigenTracker(tol=1e-12, stop="residual")
    tracker.update(op.matvec, op.numel)
    v = tracker.eigenvector.clone()
    with torch.no_grad():  # move the weights: the carried vector is no longer exact
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(5)))
    op = hessian.HessianOperator(net, nn.functional.cross_entropy, x, y)
    count = op.n_hvp
    res = tracker.update(op.matvec, op.numel)  # falls back (tol 1e-12)
    assert res.method == "lanczos" and op.n_hvp - count == res.n_hvp
    truth = torch.linalg.eigh(op.dense())
    assert res.eigenvalue == pytest.approx(float(truth.eigenvalues[-1]), rel=1e-9)
    assert float(torch.dot(v, tracker.eigenvector)) ** 2 < 1.0 - 1e-6  # it did move


def test_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tol"):
        hessian.TopEigenTracker(tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        hessian.TopEigenTracker(max_iter=0)
    with pytest.raises(ValueError, match="stop"):
        hessian.TopEigenTracker(stop="never")


def _lockstep(**kw):
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data(40)
    cfg = LockStepConfig(lr=0.01, batch_size=8, epochs=1, eval_every=1, sigma_every=1,
                         sigma_points=16, seed=0, **kw)
    return run_lockstep(net, x, y, torch.tensor([0, 1]), cfg, progress=False)


def test_lockstep_sigma_track_matches_solves_within_its_estimate():
    tracked = _lockstep(sigma_track=True, sigma_tol=1e-2).table
    solved = _lockstep(sigma_tol=1e-6).table
    assert tracked["eig_tracked"].iloc[1:].any() and not tracked["eig_tracked"].iloc[0]
    assert (tracked.loc[tracked["eig_tracked"], "eig_hvps"] == 1).all()
    gap = solved["eigenvalue"] - tracked["eigenvalue"]
    assert (gap >= -1e-8 * solved["eigenvalue"]).all()
    assert (gap <= tracked["eig_error_bound"] + 1e-6 * solved["eigenvalue"]).all()
    # e_t ∝ σ = sqrt(λ): relative error ≤ about tol/2
    rel = (tracked["unlearning_error"] / solved["unlearning_error"] - 1).abs().iloc[1:]
    assert rel.max() <= 5e-3
    assert "eig_tracked" not in solved.columns
    # everything but σ is the same run
    assert tracked["ve"].equals(solved["ve"]) and tracked["delta_w"].equals(solved["delta_w"])


def test_lockstep_sigma_track_resumes_bit_identically(tmp_path):
    full = _lockstep(sigma_track=True, sigma_tol=1e-2).table
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data(40)
    cfg = LockStepConfig(lr=0.01, batch_size=8, epochs=1, eval_every=1, sigma_every=1,
                         sigma_points=16, seed=0, sigma_track=True, sigma_tol=1e-2)
    path = tmp_path / "ck.pt"
    run_lockstep(net, x, y, torch.tensor([0, 1]), cfg, progress=False, checkpoint_path=path,
                 stop_after=2)
    resumed = run_lockstep(net, x, y, torch.tensor([0, 1]), cfg, progress=False,
                           checkpoint_path=path).table
    assert resumed.equals(full)


def test_sigma_track_config_is_validated():
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track=True, sigma_method="power").validate()
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track=True, sigma_convention="abs_eig").validate()
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track=1).validate()
