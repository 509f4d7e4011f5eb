"""σ tracking along a trajectory (eigen_tracking.TopEigenTracker and BlockEigenTracker,
LockStepConfig.sigma_track): checked against a dense eigh of a tiny model's Hessian at every step,
including an engineered crossing of the top two eigenvalues."""

import math

import pytest
import torch
from torch import nn

from unroll_utils import eigen_tracking, hessian
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
    steps = _trajectory(eigen_tracking.TopEigenTracker(tol=1e-2, stop=stop), lr)
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
    by_rule = {stop: _trajectory(eigen_tracking.TopEigenTracker(tol=1e-2, stop=stop), 5e-2)
               for stop in ("eigenvalue", "residual")}
    eig, res_rule = by_rule["eigenvalue"], by_rule["residual"]
    assert any(r.method == "lanczos" for r, _ in eig[1:])
    assert sum(r.n_hvp for r, _ in eig) < sum(r.n_hvp for r, _ in res_rule)
    for r, _ in res_rule[1:]:
        assert r.method == "track" or r.residual <= 1e-2 * r.eigenvalue


def test_easy_regime_costs_one_hvp_per_step():
    tracker = eigen_tracking.TopEigenTracker(tol=1e-2)
    steps = _trajectory(tracker, lr=1e-4)
    later = [res for res, _ in steps[1:]]
    assert all(res.method == "track" and res.n_hvp == 1 for res in later)
    assert tracker.n_tracked == len(later) and tracker.n_fallback == 0
    assert max(abs(res.eigenvalue - truth) / truth for res, truth in steps) <= 1e-2


def test_fallback_triggers_when_the_estimate_exceeds_the_tolerance():
    # a tolerance no one-HVP estimate can meet after a step: every later step falls back to Lanczos
    tracker = eigen_tracking.TopEigenTracker(tol=1e-12, stop="residual")
    steps = _trajectory(tracker, lr=5e-2, steps=5)
    assert [res.method for res, _ in steps] == ["lanczos"] * 5
    assert tracker.n_fallback == 4 and tracker.n_tracked == 0
    for res, truth in steps:
        assert res.n_hvp > 1
        assert abs(res.eigenvalue - truth) <= 1e-9 * truth


def test_fallback_reuses_the_tracking_hvp():
    net, (x, y) = TinyNet().double(), _data()
    op = hessian.HessianOperator(net, nn.functional.cross_entropy, x, y)
    tracker = eigen_tracking.TopEigenTracker(tol=1e-12, stop="residual")
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
        eigen_tracking.TopEigenTracker(tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        eigen_tracking.TopEigenTracker(max_iter=0)
    with pytest.raises(ValueError, match="stop"):
        eigen_tracking.TopEigenTracker(stop="never")


def _lockstep(**kw):
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data(40)
    cfg = LockStepConfig(lr=0.01, batch_size=8, epochs=1, eval_every=1, sigma_every=1,
                         sigma_points=16, seed=0, **kw)
    return run_lockstep(net, x, y, torch.tensor([0, 1]), cfg, progress=False)


def _tracked_and_solved(track, hvps_per_step):
    """A tracked lock-step run (tol 1e-2) and a tightly solved one; asserts that tracking was used after t = 1
    with ``hvps_per_step`` HVPs per accepted step, and that every tracked λ is below the solved λ_max by at most
    its reported error bound."""
    tracked = _lockstep(sigma_track=track, sigma_tol=1e-2).table
    solved = _lockstep(sigma_tol=1e-6).table
    assert tracked["eig_tracked"].iloc[1:].any() and not tracked["eig_tracked"].iloc[0]
    assert (tracked.loc[tracked["eig_tracked"], "eig_hvps"] == hvps_per_step).all()
    gap = solved["eigenvalue"] - tracked["eigenvalue"]
    assert (gap >= -1e-8 * solved["eigenvalue"]).all()
    assert (gap <= tracked["eig_error_bound"] + 1e-6 * solved["eigenvalue"]).all()
    return tracked, solved


def _resumed_after_two_steps(tmp_path, track):
    """The table of a tracked lock-step run (tol 1e-2) stopped after 2 steps and resumed from its checkpoint."""
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data(40)
    cfg = LockStepConfig(lr=0.01, batch_size=8, epochs=1, eval_every=1, sigma_every=1,
                         sigma_points=16, seed=0, sigma_track=track, sigma_tol=1e-2)
    path = tmp_path / "ck.pt"
    run_lockstep(net, x, y, torch.tensor([0, 1]), cfg, progress=False, checkpoint_path=path, stop_after=2)
    return run_lockstep(net, x, y, torch.tensor([0, 1]), cfg, progress=False, checkpoint_path=path).table


def test_lockstep_sigma_track_matches_solves_within_its_estimate():
    tracked, solved = _tracked_and_solved(True, hvps_per_step=1)
    # e_t ∝ σ = sqrt(λ): relative error ≤ about tol/2
    rel = (tracked["unlearning_error"] / solved["unlearning_error"] - 1).abs().iloc[1:]
    assert rel.max() <= 5e-3
    assert "eig_tracked" not in solved.columns
    # everything but σ is the same run
    assert tracked["ve"].equals(solved["ve"]) and tracked["delta_w"].equals(solved["delta_w"])


def test_lockstep_sigma_track_resumes_bit_identically(tmp_path):
    full = _lockstep(sigma_track=True, sigma_tol=1e-2).table
    assert _resumed_after_two_steps(tmp_path, True).equals(full)


def test_sigma_track_config_is_validated():
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track=True, sigma_method="power").validate()
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track=True, sigma_convention="abs_eig").validate()
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track=1).validate()


# -- the block tracker ---------------------------------------------------------------------------

def test_block_top_bound_is_exact_for_a_two_by_two_matrix():
    # H = [[a, e], [e, b]], block V = e₁: θ = a, ‖R‖ = |e|, and λ_max(N) = b exactly, so the bound
    # is λ_max itself; with a smaller rest estimate it is still ≤ the Kato–Temple θ + ρ²/(θ − α)
    a, b, e = 5.0, 2.0, 0.7
    lam = float(torch.linalg.eigvalsh(torch.tensor([[a, e], [e, b]], dtype=torch.float64))[-1])
    assert eigen_tracking.block_top_bound(a, b, e) == pytest.approx(lam, rel=1e-14)
    assert eigen_tracking.block_top_bound(a, 1.0, e) <= a + e * e / (a - 1.0)
    assert eigen_tracking.block_top_bound(a, 6.0, e) >= 6.0  # α above θ: bound above α
    assert eigen_tracking.block_top_bound(a, -math.inf, e) == math.inf
    assert eigen_tracking.block_top_bound(a, b, 0.0) == a


def _crossing_batch(t: int, steps: int):
    """Inputs X_t (32, 8) of a linear least-squares model whose Hessian 2·X_tᵀX_t/N has the
    eigenvalues 2·s² with s² = (10 − 4f, 6 + 4f, 3, 2.5, 2, 1, 0.5, 0.2), f = t/(steps − 1): the top
    two swap at the middle of the trajectory, while the eigenvectors rotate slowly (exp(t·A))."""
    d, n = 8, 32
    g = torch.Generator().manual_seed(0)
    z, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    f = t / (steps - 1)
    s2 = torch.tensor([10 - 4 * f, 6 + 4 * f, 3, 2.5, 2, 1, 0.5, 0.2], dtype=torch.float64)
    x = z * math.sqrt(n) @ torch.diag(s2.sqrt()) @ torch.matrix_exp(0.02 * (a - a.T) * t).T
    return x, torch.zeros(n, 1, dtype=torch.float64)


def _crossing(tracker, steps=12):
    net = nn.Linear(8, 1, bias=False).double()
    out = []
    for t in range(steps):
        x, y = _crossing_batch(t, steps)
        op = hessian.HessianOperator(net, nn.functional.mse_loss, x, y)
        kw = {"matmat": op.matmat} if isinstance(tracker, eigen_tracking.BlockEigenTracker) else {}
        before = op.n_hvp
        res = tracker.update(op.matvec, op.numel, **kw)
        assert op.n_hvp - before == res.n_hvp
        evals = torch.linalg.eigvalsh(op.dense())
        out.append((res, float(evals[-1]), float(evals[-2])))
    return out


def test_engineered_crossing_breaks_the_one_vector_estimate_but_not_the_block_bound():
    steps = _crossing(eigen_tracking.BlockEigenTracker(tol=1e-2, block=2))
    # the top two do swap: the eigenvalue of the first direction ends up second
    assert steps[0][1] == pytest.approx(20.0) and steps[-1][1] == pytest.approx(20.0)
    assert steps[6][1] - steps[6][2] < 1.0
    for t, (res, lam, _) in enumerate(steps):
        assert res.eigenvalue <= lam + 1e-10 * lam, t
        assert lam - res.eigenvalue <= res.error_bound + 1e-10 * lam, (t, res, lam)
        assert res.converged and res.error_bound <= 1e-2 * res.eigenvalue, (t, res)
    assert sum(res.method == "track" for res, _, _ in steps) >= 6
    assert all(res.n_hvp == 2 for res, _, _ in steps if res.method == "track")
    # the one-vector tracker follows the first direction past the crossing and under-reports
    # λ_max by more than its own estimate (its assumed gap λ_max − λ₂ collapsed)
    single = _crossing(eigen_tracking.TopEigenTracker(tol=1e-2))
    broken = [t for t, (res, lam, _) in enumerate(single) if lam - res.eigenvalue > res.error_bound]
    assert broken


@pytest.mark.parametrize("block", [2, 3])
@pytest.mark.parametrize("lr", [1e-3, 5e-2, 2e-1])
def test_block_bound_holds_against_the_dense_truth_on_a_tiny_net(lr, block):
    tracker = eigen_tracking.BlockEigenTracker(tol=1e-2, block=block)
    steps = _trajectory(tracker, lr)
    for t, (res, truth) in enumerate(steps):
        assert res.eigenvalue <= truth + 1e-10 * abs(truth), (t, res, truth)
        assert truth - res.eigenvalue <= res.error_bound + 1e-10 * abs(truth), (t, res, truth)
        assert res.converged and res.error_bound <= 1e-2 * res.eigenvalue, (t, res)
    tracked = [res for res, _ in steps if res.method == "track"]
    assert tracked and all(res.n_hvp == block for res in tracked)
    assert tracker.n_tracked == len(tracked) and tracker.n_cold == 1
    assert tracker.n_fallback == len(steps) - 1 - len(tracked)


def test_block_tracker_falls_back_to_a_cold_solve_only_when_the_warm_solve_fails():
    def rotated(spectrum, seed):
        q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64))
        return q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ q.T

    tracker = eigen_tracking.BlockEigenTracker(tol=1e-3, block=2, max_iter=4,
                                               generator=torch.Generator().manual_seed(1))
    # four distinct eigenvalues: the cold Krylov space is invariant after 4 vectors (exact, and
    # g = 1 − 2/10 is measured from the third Ritz value)
    h = rotated([10, 9, 2, 1, 1, 1, 1, 1], 0)
    first = tracker.update(lambda v: h @ v, 8)
    assert tracker.n_cold == 1 and first.eigenvalue == pytest.approx(10.0, rel=1e-12)
    assert tracker.gap_ratio == pytest.approx(0.8, rel=1e-9)
    # the same operator: the carried block is exact, accepted for its 2 HVPs
    again = tracker.update(lambda v: h @ v, 8)
    assert again.method == "track" and again.n_hvp == 2 and tracker.n_cold == 1
    assert again.eigenvalue == pytest.approx(10.0, rel=1e-12) and again.error_bound < 1e-9
    # an unrelated eigenbasis with a clustered top: 4 HVPs from the old block do not meet the
    # bound, so a cold solve follows; every HVP of the step is counted
    h2 = rotated([10, 9.5, 9, 8.5, 8, 7.5, 7, 1], 1)
    calls = []
    res = tracker.update(lambda v: calls.append(1) or h2 @ v, 8)
    assert tracker.n_cold == 2 and tracker.n_fallback == 0 and res.method == "block_lanczos"
    assert res.n_hvp == len(calls) == 2 + 4 + 4 and res.eigenvalue <= 10.0 + 1e-9


def test_block_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="block"):
        eigen_tracking.BlockEigenTracker(block=0)
    with pytest.raises(ValueError, match="block"):
        eigen_tracking.BlockEigenTracker(block=True)
    with pytest.raises(ValueError, match="max_iter"):
        eigen_tracking.BlockEigenTracker(block=3, max_iter=4)
    with pytest.raises(ValueError, match="gap_safety"):
        eigen_tracking.BlockEigenTracker(gap_safety=0.0)
    with pytest.raises(ValueError, match="tol"):
        eigen_tracking.BlockEigenTracker(tol=1.0)


def test_lockstep_block_tracking_matches_solves_within_its_bound_and_resumes(tmp_path):
    tracked, solved = _tracked_and_solved("block", hvps_per_step=2)
    assert tracked["ve"].equals(solved["ve"])
    assert _resumed_after_two_steps(tmp_path, "block").equals(tracked)
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track="block", sigma_max_iter=3).validate()
    with pytest.raises(ValueError, match="sigma_track"):
        LockStepConfig(sigma_track="blocks").validate()
