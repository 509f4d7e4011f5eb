"""Benchmark row 7 (benchmarks/peers.py): the peer adapters against a dense Hessian, their HVP
counters against hand counts, and the accuracy sweep's choice on a solver with known answers.

The peer packages are benchmark-only dependencies (``pip install -r benchmarks/requirements.txt``);
each peer's tests are skipped when its package is missing.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import peers
from unroll_utils.data import load_digits_data
from unroll_utils.hessian import HessianOperator
from unroll_utils.models import build_model


@pytest.fixture(scope="module")
def problem():
    """A 456-parameter small CNN with BatchNorm on 64 digits, running statistics made non-trivial,
    and its exact spectrum (dense Hessian, eval-mode BN)."""
    data = load_digits_data(n_train=200, seed=0)
    x, y = data.train_x[:64], data.train_y[:64]
    model = build_model("small_cnn", in_channels=1, width=2, seed=0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    model.train()  # every adapter must switch to eval mode itself (or leave BN as PyHessian does)
    dense = HessianOperator(model, torch.nn.functional.cross_entropy, x, y, bn_mode="eval").dense()
    evals = torch.linalg.eigvalsh(dense)
    return model, x, y, float(evals[-1]), float(evals[0]), float(evals[-2])


def fresh(model):
    import copy
    return copy.deepcopy(model)


def test_problem_is_well_posed_for_power_methods(problem):
    _, _, _, lam_max, lam_min, lam_2 = problem
    assert lam_max > 0 and abs(lam_min) < 0.5 * lam_max  # power iteration targets λ_max too
    assert lam_2 / lam_max < 0.9


def test_counter_counts_columns_and_enforces_the_budget():
    c = peers.HVPCounter(budget=5)
    f = c.wrap(lambda v: 2 * v)
    g = c.wrap(lambda m: m, columns=lambda m: m.shape[1])
    assert f(3) == 6 and c.count == 1
    g(torch.zeros(4, 3))
    assert c.count == 4
    f(1)
    with pytest.raises(peers.BudgetExceeded):
        g(torch.zeros(4, 2))
    assert c.count == 5  # the refused call did no work


@pytest.mark.parametrize("stop", ["eigenvalue", "residual"])
def test_ours_matches_dense_and_counts(problem, stop):
    model, x, y, lam_max, *_ = problem
    method = peers.Ours(200, stop)
    res = method.solve(fresh(model), x, y, {"tol": 1e-6}, seed=3)
    assert abs(res.eigenvalue - lam_max) <= 1e-5 * lam_max
    # the counter agrees with the solver's own iteration count
    from unroll_utils.hessian import lanczos_top_eigen
    op = HessianOperator(fresh(model), torch.nn.functional.cross_entropy, x, y)
    own = lanczos_top_eigen(op.matvec, op.numel, tol=1e-6, max_iter=200,
                            init=peers.start_vector(op.numel, 3), stop=stop)
    assert res.n_hvp == own.n_hvp == op.n_hvp


def test_pyhessian_matches_dense_and_counts(problem):
    pytest.importorskip("pyhessian")
    model, x, y, lam_max, *_ = problem
    method = peers.PyHessianPower(2000)
    res = method.solve(fresh(model), x, y, {"tol": 1e-7, "maxIter": 2000}, seed=3)
    assert abs(res.eigenvalue - lam_max) <= 1e-4 * lam_max
    # tol=0 never stops early: exactly maxIter HVPs, and the patch is removed afterwards
    import sys
    module = sys.modules["pyhessian.hessian"]
    original = module.hessian_vector_product
    m = fresh(model)
    assert method.solve(m, x, y, {"tol": 0.0, "maxIter": 7}, seed=3).n_hvp == 7
    assert module.hessian_vector_product is original
    assert all(p.grad is None for p in m.parameters())


def test_curvlinops_eigsh_matches_dense_and_counts(problem, monkeypatch):
    pytest.importorskip("curvlinops")
    from curvlinops import HessianLinearOperator

    model, x, y, lam_max, *_ = problem
    method = peers.CurvlinopsEigsh(500)
    # an independent count one level down: columns through the torch operator's _matmat
    columns = []
    inner = HessianLinearOperator._matmat

    def counting(self, M):
        columns.append(M[0].shape[-1])
        return inner(self, M)

    monkeypatch.setattr(HessianLinearOperator, "_matmat", counting)
    res = method.solve(fresh(model), x, y, {"tol": 1e-8, "ncv": 8}, seed=3)
    assert abs(res.eigenvalue - lam_max) <= 1e-6 * lam_max
    assert res.n_hvp == sum(columns) > 0


def test_eigenthings_lanczos_matches_dense_and_counts(problem):
    pytest.importorskip("hessian_eigenthings")
    model, x, y, lam_max, *_ = problem
    method = peers.EigenthingsLanczos(60)
    res = method.solve(fresh(model), x, y, {"max_iter": 40}, seed=3)
    assert abs(res.eigenvalue - lam_max) <= 1e-4 * lam_max
    assert res.n_hvp == 40  # exactly max_iter Lanczos steps, one HVP each
    assert method.solve(fresh(model), x, y, {"max_iter": 5}, seed=3).n_hvp == 5


def test_eigenthings_power_matches_dense_and_counts(problem):
    pytest.importorskip("hessian_eigenthings")
    import hessian_eigenthings as he

    model, x, y, lam_max, *_ = problem
    method = peers.EigenthingsPower(3000)
    res = method.solve(fresh(model), x, y, {"tol": 1e-6, "max_iter": 3000}, seed=3)
    assert abs(res.eigenvalue - lam_max) <= 1e-4 * lam_max
    # the count equals the iterations the package itself reports (one matvec each)
    op = peers._eigenthings_operator(fresh(model), x, y, peers.HVPCounter())
    _, _, _, iters, _ = he.power_iteration_one(op, max_iter=3000, tol=1e-6, seed=3)
    assert res.n_hvp == iters
    assert method.solve(fresh(model), x, y, {"tol": 1e-12, "max_iter": 9}, seed=3).n_hvp == 9


class _Table(peers.Method):
    """A solver with a known (HVPs, value) per setting, for the sweep's logic."""

    label = "table"

    def __init__(self, groups, starts, floor=None):
        super().__init__(budget=100)
        self.groups, self.starts, self.floor = groups, starts, floor or {}
        self.calls = []

    def grid(self):
        return [([{"g": gi, "k": k} for k in range(len(grp))], self.starts[gi])
                for gi, grp in enumerate(self.groups)]

    def min_hvps(self, setting):
        return self.floor.get(setting["g"], 1)

    def _call(self, model, x, y, setting, seed, counter):
        self.calls.append((setting["g"], setting["k"]))
        hvps, value = self.groups[setting["g"]][setting["k"]]
        for _ in range(hvps):
            counter.wrap(lambda: None)()
        return value, ""


def test_sweep_walks_to_the_cheapest_passing_setting():
    lam = 100.0
    # loose -> tight: (HVPs, value); pass means within 1e-3 of 100
    group = [(2, 90.0), (3, 99.0), (4, 99.95), (5, 99.99), (6, 100.0)]
    from_pass = peers.sweep(_Table([group], [4]), lambda: None, None, None, seed=0,
                            lam_max=lam, rel_acc=1e-3)
    assert from_pass.setting == {"g": 0, "k": 2} and from_pass.solve.n_hvp == 4
    m = _Table([group], [0])
    from_fail = peers.sweep(m, lambda: None, None, None, seed=0, lam_max=lam, rel_acc=1e-3)
    assert from_fail.setting == {"g": 0, "k": 2} and m.calls == [(0, 0), (0, 1), (0, 2)]
    never = peers.sweep(_Table([group[:2]], [0]), lambda: None, None, None, seed=0,
                        lam_max=lam, rel_acc=1e-3)
    assert never.setting is None and math.isinf(never.error)


def test_sweep_keeps_the_fewest_hvps_over_groups_and_prunes():
    lam = 100.0
    cheap = [(5, 100.0)]
    dear = [(9, 100.0)]
    m = _Table([dear, cheap, dear], [0, 0, 0], floor={2: 8})
    out = peers.sweep(m, lambda: None, None, None, seed=0, lam_max=lam, rel_acc=1e-3)
    assert out.setting == {"g": 1, "k": 0} and out.solve.n_hvp == 5
    assert (2, 0) not in m.calls and len(out.skipped) == 1  # ≥ 8 HVPs cannot beat 5


def test_ours_eigsh_and_eigenthings_share_the_start_vector(problem):
    """One Lanczos step (and one power step) returns the start vector's Rayleigh quotient, so
    equal first estimates mean equal start vectors; another seed gives another value."""
    he = pytest.importorskip("hessian_eigenthings")
    model, x, y, *_ = problem
    op = HessianOperator(fresh(model), torch.nn.functional.cross_entropy, x, y)
    v = peers.start_vector(op.numel, 3).double()
    rq = float(v @ op.matvec(v) / (v @ v))
    ours = peers.Ours(1, "residual").solve(fresh(model), x, y, {"tol": 1e-3}, seed=3)
    eig = peers.EigenthingsLanczos(1).solve(fresh(model), x, y, {"max_iter": 1}, seed=3)
    power = peers.EigenthingsPower(1).solve(fresh(model), x, y, {"tol": 1e-3, "max_iter": 1}, seed=3)
    assert ours.n_hvp == eig.n_hvp == power.n_hvp == 1
    for value in (ours.eigenvalue, eig.eigenvalue, power.eigenvalue):
        assert value == pytest.approx(rq, rel=1e-5)
    other = peers.start_vector(op.numel, 4).double()
    assert float(other @ op.matvec(other) / (other @ other)) != pytest.approx(rq, rel=1e-3)
    assert he.__version__ == "1.0.0a5"


def test_targets_report_what_was_measured():
    from benchmarks.report import Report

    ours = {"hvps": 7, "seconds": 8.0, "error": 1e-4, "spread": 0.01}
    rows = {"ours: Lanczos": ours,
            "peer A": {"hvps": 6, "seconds": 10.0, "error": 5e-4, "spread": 0.01},
            "peer B": {"hvps": 3, "seconds": 1.0, "error": 2e-3, "spread": 0.0},  # not at 1e-3
            "peer C": None}                                                     # never reached
    rep = Report()
    peers._targets(rep, "m", rows, 1e-3, ["peer D"])
    hv, sec = rep.summary
    assert hv["baseline"] == "best peer: peer A" and hv["status"] == "FAIL"   # 7 > 6: the peer wins
    assert sec["status"] == "PASS" and sec["ratio"] == "1.25×"
    assert "peer B" in hv["notes"] and "peer C" in hv["notes"] and "peer D (not installed" in hv["notes"]
    rep = Report()
    peers._targets(rep, "m", {"ours: Lanczos": ours, "peer A": {**rows["peer A"], "hvps": 7,
                                                                 "seconds": 8.4, "spread": 0.1}},
                   1e-3, [])
    hv, sec = rep.summary
    assert hv["status"] == "TIE" and sec["status"].startswith("PASS (within the repeats' spread")
    rep = Report()
    peers._targets(rep, "m", {"ours: Lanczos": {**ours, "error": 2e-3}, "peer A": rows["peer A"]},
                   1e-3, [])
    assert rep.summary[0]["status"].startswith("FAIL (ours not at equal accuracy)")


def test_available_names_the_missing_package():
    class Missing(peers.Method):
        package = "no_such_peer_package_xyz"

    assert peers.available(peers.Ours(10, "residual")) is None
    reason = peers.available(Missing(10))
    assert "no_such_peer_package_xyz" in reason and "benchmarks/requirements.txt" in reason
