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
from unroll_utils.krylov import flatten, lanczos_basis, unflatten
from unroll_utils.propagated import (PropagatedConfig, Visit, propagated_correction, propagated_unlearning,
                                     propagation_factor)
from unroll_utils.lockstep import LockStep
from unroll_utils.trajectory import LockStepConfig, run_lockstep
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
    # x* fills its batch (16 points, b = 16): M′ skips those steps, so the second visit's step
    # is not counted in the first visit's exponent
    exponents = [t - 1 - 1, t - run.per_epoch - 1]
    assert [v.forget_only for v in run.propagated.visits] == [True, True]
    u = sum(0.05 * dense_f_times(h, g, lambda lam, n=n: propagation_factor(lam, 0.05, n))
            for g, n in zip(grads, exponents))
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


# --- which steps count: two epochs of [x*, 12 retain steps] by full-batch gradient descent ---------

LR, RETAIN_STEPS, EPOCHS = 0.2, 12, 2


def two_epoch_problem():
    """128 retain points (first, so that sgu_propagated's H-bar batch is exactly the retain set) and
    4 forget points; y holds (target, 1 for retain / 0 for forget)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(132, 5, generator=g, dtype=torch.float64)
    target = x @ torch.randn(5, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        132, generator=g, dtype=torch.float64)
    kind = torch.ones(132, dtype=torch.float64)
    kind[128:] = 0.0
    torch.manual_seed(0)
    return nn.Linear(5, 1).double(), x, torch.stack([target, kind], 1)


def mse(out, tgt):
    return 0.5 * ((out[:, 0] - tgt[:, 0]) ** 2).mean()


def quadratic_retain_linear_forget(out, tgt):
    """Quadratic on retain rows, linear on forget rows: the forget gradient is the same at every w."""
    kind = tgt[:, 1]
    return (kind * 0.5 * (out[:, 0] - tgt[:, 0]) ** 2 + (1 - kind) * out[:, 0]).mean()


def train_two_epochs(net, x, y, loss, before_forget_step=None):
    """M: per epoch one step on x* alone, then 12 full-batch steps on the retain set; M′ the same
    without the x* steps (it does not move there). Returns (M, M′, the x* steps τ)."""
    forget, retain = slice(128, None), slice(0, 128)
    m, m_prime = copy.deepcopy(net), copy.deepcopy(net)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=LR),
            id(m_prime): torch.optim.SGD(m_prime.parameters(), lr=LR)}

    def step(model, part):
        opts[id(model)].zero_grad()
        loss(model(x[part]), y[part]).backward()
        opts[id(model)].step()

    t, taus = 0, []
    for _ in range(EPOCHS):
        t += 1
        taus.append(t)
        if before_forget_step is not None:
            before_forget_step(t, m, x[forget], y[forget])
        step(m, forget)
        for _ in range(RETAIN_STEPS):
            t += 1
            step(m, retain)
            step(m_prime, retain)
    return m, m_prime, taus


def test_retain_steps_after_by_hand():
    from unroll_utils.propagated import retain_steps_after
    assert retain_steps_after([1, 14], [True, True], 26) == [24, 12]
    assert retain_steps_after([1, 14], [False, True], 26) == [24, 12]  # only the later one matters
    assert retain_steps_after([1, 14], [True, False], 26) == [25, 12]  # mixed batch: M′ moves
    assert retain_steps_after([2, 3, 9], [True, True, True], 9) == [5, 5, 0]
    with pytest.raises(ValueError, match="after t"):
        retain_steps_after([1, 30], [True, True], 26)
    with pytest.raises(ValueError, match="distinct"):
        retain_steps_after([3, 3], [True, True], 26)


def test_lockstep_bookkeeping_is_exact_when_x_star_is_seen_twice():
    # the gradients are taken where M saw x* (MSE: they differ between the two visits)
    net, x, y = two_epoch_problem()
    from unroll_utils.propagated import PropagatedUndo
    undo = PropagatedUndo(PropagatedConfig(krylov=6, points=128), LR, 0.0, mse, x[:128], y[:128])

    def record(t, m, xf, yf):
        undo.record(t, m, xf, yf, torch.ones(len(xf), dtype=torch.bool))

    m, m_prime, taus = train_two_epochs(net, x, y, mse, record)
    t = taus[-1] + RETAIN_STEPS
    assert t == 26 and [v.step for v in undo.visits] == [1, 14]
    assert all(v.forget_only for v in undo.visits)
    u, info = undo.correction(t, m, net)
    ve = distances.weight_distance(m, m_prime, offset=u)
    nothing = distances.weight_distance(m, m_prime)
    assert ve <= 1e-10 and nothing > 5e-3
    # counting the second x* step (exponents t − τ = [25, 12]) is off by the first trace's factor
    wrong = [Visit(v.step, v.lr, v.gradient) for v in undo.visits]
    op = HessianOperator(m, mse, x[:128], y[:128])
    u_wrong, _ = propagated_correction(op.matvec, wrong, t, krylov=6)
    ve_wrong = distances.weight_distance(m, m_prime, offset=unflatten(u_wrong, list(m.parameters())))
    assert ve_wrong > 1e-5


def test_sgu_propagated_is_exact_when_x_star_is_seen_twice(monkeypatch):
    from unroll_utils import baselines as B
    from unroll_utils import unlearning_methods as UM
    net, x, y = two_epoch_problem()
    m, m_prime, taus = train_two_epochs(net, x, y, quadratic_retain_linear_forget)
    monkeypatch.setattr(UM, "make_loss", lambda name, lam: quadratic_retain_linear_forget)
    forget = torch.arange(128, 132)
    cfg = B.TrainingConfig(lr=LR, epochs=EPOCHS, batch_size=4, seed=0)
    record = UM.TrainingRecord(steps=26, batches=[forget, forget], batch_steps=taus)
    task = UM.UnlearningTask(m, net, x, y, forget, cfg, record)
    assert UM.PROPAGATED_POINTS == 128  # H-bar on x[:128]: exactly the retain set
    out = UM.sgu_propagated(task, krylov=6)
    assert distances.weight_distance(out, m_prime) <= 1e-10
    assert distances.weight_distance(m, m_prime) > 5e-3
    # the same correction from the post-hoc form with the exponents [24, 12]
    g0 = forget_gradient(net, quadratic_retain_linear_forget, x[128:], y[128:])
    w, _ = propagated_unlearning(m, quadratic_retain_linear_forget, x[:128], y[:128], g0, lr=LR,
                                 steps_after=[24, 12], krylov=6)
    assert distances.weight_distance(w, m_prime) <= 1e-10


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps_after=[3.7]), r"steps_after must hold integers >= 0.*3\.7"),
    (dict(steps_after=[True]), r"steps_after must hold integers >= 0"),
    (dict(steps_after=3), r"steps_after must be a non-empty list"),
    (dict(weight_decay=-1), r"weight_decay must be a finite number >= 0; got -1"),
    (dict(weight_decay=float("nan")), r"weight_decay must be a finite number >= 0"),
    (dict(krylov=2.5), r"krylov must be an integer >= 1; got 2\.5"),
    (dict(lr=float("inf")), r"lr must be a finite number > 0"),
    (dict(clamp="yes"), r"clamp must be True or False"),
])
def test_post_hoc_form_names_the_bad_argument_and_its_range(kwargs, match):
    net, x, y = quadratic_problem()
    loss = lambda out, tgt: 0.5 * ((out - tgt) ** 2).mean()  # noqa: E731
    g0 = forget_gradient(net, loss, x[:8], y[:8])
    args = dict(lr=0.1, steps_after=[3], krylov=3) | kwargs
    with pytest.raises(ValueError, match=match):
        propagated_unlearning(net, loss, x, y, g0, **args)


@pytest.mark.parametrize("field,value", [("krylov", 2.5), ("points", 12.5), ("every", 1.5),
                                         ("krylov", True)])
def test_propagated_config_refuses_non_integers(field, value):
    with pytest.raises(ValueError, match=rf"propagated\.{field} must be an integer >= 1"):
        PropagatedConfig(**{field: value}).validate()


def test_building_blocks_refuse_non_integer_counts():
    with pytest.raises(ValueError, match=r"krylov must be an integer >= 1; got 2\.5"):
        lanczos_basis(lambda v: v, torch.ones(3, dtype=torch.float64), 2.5)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 0; got 3\.7"):
        propagation_factor(np.ones(2), 0.1, 3.7)
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0"):
        propagation_factor(np.ones(2), 0.1, 3, weight_decay=-1.0)
    # n_k = 3 twice is one visit of weight 2 (the same correction as two visits)
    net, x, y = quadratic_problem()
    loss = lambda out, tgt: 0.5 * ((out - tgt) ** 2).mean()  # noqa: E731
    g0 = forget_gradient(net, loss, x[:8], y[:8])
    twice, _ = propagated_unlearning(net, loss, x, y, g0, lr=0.1, steps_after=[3, 3], krylov=6)
    once, _ = propagated_unlearning(net, loss, x, y, g0, lr=0.1, steps_after=[3], krylov=6)
    p = list(net.parameters())
    for a, b, w in zip(twice, once, p):
        assert torch.allclose(a - w, 2 * (b - w), rtol=1e-12, atol=1e-15)


def test_post_hoc_form_takes_steps_after_as_a_list_tuple_or_integer_array():
    net, x, y = quadratic_problem()
    loss = lambda out, tgt: 0.5 * ((out - tgt) ** 2).mean()  # noqa: E731
    g0 = forget_gradient(net, loss, x[:8], y[:8])
    outs = [propagated_unlearning(net, loss, x, y, g0, lr=0.1, steps_after=s, krylov=6)[0]
            for s in ([5, 2], (5, 2), np.array([5, 2]))]
    for w in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(w, outs[0]))
    with pytest.raises(ValueError, match="integers >= 0"):
        propagated_unlearning(net, loss, x, y, g0, lr=0.1, steps_after=np.array([3.7]))
