"""Hessian-propagated single gradient unlearning: Lanczos f(H)g against dense eigh, the exact
quadratic case, the clamp, and the lock-step option."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unroll_utils import distances
from unroll_utils.hessian import HessianOperator
from unroll_utils.propagated import (PropagatedConfig, Visit, flatten, lanczos_basis,
                                     propagated_correction, propagated_unlearning,
                                     propagation_factor, unflatten)
from unroll_utils.trajectory import LockStep, LockStepConfig, run_lockstep
from unroll_utils.unlearning import forget_gradient


def dense_f_times(h: torch.Tensor, g: torch.Tensor, f) -> torch.Tensor:
    """f(H) g from a full eigendecomposition (torch.linalg.eigh)."""
    lam, v = torch.linalg.eigh(h)
    fl = torch.as_tensor(f(lam.numpy()), dtype=torch.float64)
    return v @ (fl * (v.T @ g))


def test_propagation_factor_by_hand():
    x = np.array([-1.0, 0.0, 10.0, 50.0, 300.0])
    out = propagation_factor(x, 0.01, 3)
    assert out.tolist() == pytest.approx([1.0, 1.0, 0.9 ** 3, 0.5 ** 3, -1.0])
    raw = propagation_factor(x, 0.01, 3, clamp=False)
    assert raw[0] == pytest.approx(1.01 ** 3) and raw[-1] == pytest.approx(-8.0)
    assert propagation_factor(np.array([10.0]), 0.01, 2, weight_decay=10.0)[0] == pytest.approx(0.64)
    assert propagation_factor(x, 0.01, 0).tolist() == [1.0] * 5


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_lanczos_f_of_h_matches_dense_eigh_on_a_tiny_model(bn_mode, toy_data, tiny_net):
    x, y = toy_data(dtype=torch.float64)
    net = tiny_net().double()  # float64 HVPs: agreement to round-off
    op = HessianOperator(net, F.cross_entropy, x[:32], y[:32], bn_mode=bn_mode)
    h = op.dense()
    g = flatten(forget_gradient(net, F.cross_entropy, x[32:48], y[32:48]))
    f = lambda lam: propagation_factor(lam, 0.5, 7)  # noqa: E731
    expected = dense_f_times(h, g, f)
    full = lanczos_basis(op.matvec, g, op.numel)  # the whole space: exact up to round-off
    got, err = full.apply(f)
    assert torch.allclose(got, expected, rtol=0, atol=1e-9 * float(g.norm()))
    small = lanczos_basis(op.matvec, g, 6)
    approx, estimate = small.apply(f)
    actual = float((approx - expected).norm())
    assert small.n_hvp == 6 and estimate > 0 and actual > 0
    # the last Krylov update is of the size of the actual error (measured: 0.5–2×)
    assert actual / 4 < estimate < 4 * actual
    assert err < 1e-6 * estimate or full.beta_last == 0


def quadratic_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(5, 1, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        40, 1, generator=g, dtype=torch.float64))
    torch.manual_seed(0)
    net = nn.Linear(5, 1).double()
    return net, x, y


def test_exact_on_a_quadratic_with_full_batch_gradient_descent():
    net, x, y = quadratic_problem()
    loss = lambda out, tgt: 0.5 * ((out - tgt) ** 2).mean()  # noqa: E731
    forget, retain = slice(0, 8), slice(8, None)
    lr, t = 0.2, 40
    m, m_prime = copy.deepcopy(net), copy.deepcopy(net)
    opt, opt_prime = torch.optim.SGD(m.parameters(), lr=lr), torch.optim.SGD(m_prime.parameters(), lr=lr)
    g0 = forget_gradient(net, loss, x[forget], y[forget])
    for step in range(t):  # step 1 on x* (M only), then full-batch GD on the retain set
        for model, o, part in ((m, opt, forget if step == 0 else retain), (m_prime, opt_prime, retain)):
            if model is m_prime and step == 0:
                continue
            o.zero_grad()
            loss(model(x[part]), y[part]).backward()
            o.step()
    w, info = propagated_unlearning(m, loss, x[retain], y[retain], g0, lr=lr, steps_after=[t - 1],
                                    krylov=6)
    ve = distances.weight_distance(w, m_prime)
    sgu = distances.weight_distance(m, m_prime, offset=[lr * gi for gi in g0])
    nothing = distances.weight_distance(m, m_prime)
    assert ve < 1e-12 * nothing and sgu > 0.1 * nothing  # SGU is far off, the propagated one exact
    assert info["hvps"] == 6 and info["error"] < 1e-12


def test_clamp_bounds_negative_and_large_curvature():
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    lam = torch.tensor([-3.0, -0.5, 0.0, 1.0, 10.0, 300.0], dtype=torch.float64)  # η·300 = 3 > 2
    a = q @ torch.diag(lam) @ q.T
    b = torch.randn(6, generator=g, dtype=torch.float64)
    lr, n = 0.01, 200
    basis = lanczos_basis(lambda v: a @ v, b, 6)
    clamped, _ = basis.apply(lambda th: propagation_factor(th, lr, n))
    raw, _ = basis.apply(lambda th: propagation_factor(th, lr, n, clamp=False))
    assert torch.allclose(clamped, dense_f_times(a, b, lambda v: propagation_factor(v, lr, n)),
                          atol=1e-10)
    assert float(clamped.norm()) <= float(b.norm()) * (1 + 1e-12)
    assert float(raw.norm()) > 1e10 * float(b.norm())  # (1 + 0.03)^200, (−2)^200: blown up
    # clamped, the negative-curvature directions keep the single gradient (f = 1)
    coef = q.T @ clamped
    assert coef[:3].tolist() == pytest.approx((q.T @ b)[:3].tolist(), rel=1e-9)


def test_correction_with_several_visits_matches_dense(toy_data, tiny_net):
    x, y = toy_data(dtype=torch.float64)
    net = tiny_net().double()
    op = HessianOperator(net, F.cross_entropy, x[:32], y[:32], bn_mode="train")
    h = op.dense()
    g1 = flatten(forget_gradient(net, F.cross_entropy, x[32:48], y[32:48]))
    g2 = flatten(forget_gradient(net, F.cross_entropy, x[48:64], y[48:64]))
    visits = [Visit(1, 0.3, g1), Visit(5, 0.3, g2), Visit(9, 0.3, g1)]
    u, info = propagated_correction(op.matvec, visits, 9, krylov=op.numel)
    expected = sum(0.3 * dense_f_times(h, v.gradient, lambda lam, n=9 - v.step: propagation_factor(
        lam, 0.3, n)) for v in visits)
    assert torch.allclose(u, expected, atol=1e-9)
    assert 0 < info["hvps"] <= 2 * op.numel  # the visit with n = 0 needs no HVP
    with pytest.raises(ValueError, match="after t"):
        propagated_correction(op.matvec, visits, 4, krylov=3)


def lockstep_cfg(**kw):
    base = dict(lr=0.05, batch_size=16, epochs=2, eval_every=1, sigma_every=0)
    base.update(kw)
    return LockStepConfig(**base)


def test_lockstep_option_against_dense_with_gradients_where_m_saw_x_star(toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    prop = PropagatedConfig(krylov=200, points=32)  # ≥ P: Lanczos is exact
    run = LockStep(net, x, y, torch.arange(16), lockstep_cfg(propagated=prop))
    grads = []
    while not run.done:
        if run.t % run.per_epoch == 0:  # x* is the next batch (forget_first)
            grads.append(flatten(forget_gradient(run.model, F.cross_entropy, x[:16], y[:16])))
        run.step()
        row = run.measure()
        if run.t == 1:
            assert row["propagated_hvps"] == 0
            assert row["ve_propagated"] == pytest.approx(row["ve"], rel=1e-5, abs=1e-9)
    res = run.result()
    t = res.steps_done
    h = HessianOperator(res.model, F.cross_entropy, x[:32], y[:32], bn_mode="train").dense()
    steps = [1, run.per_epoch + 1]
    u = sum(0.05 * dense_f_times(h, g, lambda lam, n=t - s: propagation_factor(lam, 0.05, n))
            for g, s in zip(grads, steps))
    expected = distances.weight_distance(res.model, res.retrained,
                                       offset=unflatten(u, list(res.model.parameters())))
    last = res.table.iloc[-1]
    assert last["ve_propagated"] == pytest.approx(expected, rel=1e-5)
    assert last["propagated_error"] < 1e-8 and last["propagated_hvps"] > 0
    assert last["ve"] == pytest.approx(float(run_lockstep(net, x, y, torch.arange(16), lockstep_cfg(),
                                                          progress=False).table["ve"].iloc[-1]))
    assert res.propagated_undo is not None


def test_default_run_has_no_propagated_columns_and_hessian_at_w0_reuses_lanczos(tmp_path, toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    plain = run_lockstep(net, x, y, torch.arange(16), lockstep_cfg(), progress=False)
    assert not any(c.startswith(("ve_prop", "propagated")) for c in plain.table.columns)
    assert plain.propagated_undo is None
    c = lockstep_cfg(propagated=PropagatedConfig(krylov=4, points=32, at="w0", every=3))
    res = run_lockstep(net, x, y, torch.arange(16), c, progress=False)
    tab = res.table
    assert tab["ve"].equals(plain.table["ve"])  # the variant never feeds back into training
    due = (tab.t == 1) | (tab.t % 3 == 0) | (tab.t == tab.t.max())
    assert tab.loc[due, "ve_propagated"].notna().all() and tab.loc[~due, "ve_propagated"].isna().all()
    # H̄ at w_0: one Lanczos run per visit (4 HVPs), then reused at every later t
    assert int(tab["propagated_hvps"].sum()) == 2 * 4
    ck = tmp_path / "run.pt"
    run_lockstep(net, x, y, torch.arange(16), c, checkpoint_path=ck, stop_after=7, progress=False)
    resumed = run_lockstep(net, x, y, torch.arange(16), c, checkpoint_path=ck, progress=False)
    assert resumed.table["ve_propagated"].equals(tab["ve_propagated"])


@pytest.mark.parametrize("field,value", [("krylov", 0), ("points", 0), ("at", "w1"),
                                         ("bn_mode", "test"), ("clamp", 1), ("every", 0)])
def test_bad_propagated_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"propagated.{field}"):
        lockstep_cfg(propagated=PropagatedConfig(**{field: value})).validate()
    with pytest.raises(ValueError, match="propagated"):
        lockstep_cfg(propagated={"krylov": 3}).validate()


def test_post_hoc_form_checks_its_arguments():
    net, x, y = quadratic_problem()
    loss = lambda out, tgt: 0.5 * ((out - tgt) ** 2).mean()  # noqa: E731
    g0 = [torch.zeros_like(p) for p in net.parameters()]
    with pytest.raises(ValueError, match="lr"):
        propagated_unlearning(net, loss, x, y, g0, lr=0.0, steps_after=[1])
    with pytest.raises(ValueError, match="steps_after"):
        propagated_unlearning(net, loss, x, y, g0, lr=0.1, steps_after=[-1])
    w, info = propagated_unlearning(net, loss, x, y, g0, lr=0.1, steps_after=[3])  # zero gradient
    assert distances.weight_distance(w, net) == 0.0 and info["hvps"] == 0
    with pytest.raises(ValueError, match="non-zero"):
        lanczos_basis(lambda v: v, torch.full((3,), float("nan")), 2)
