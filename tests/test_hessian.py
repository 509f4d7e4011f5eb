"""Top Hessian eigenvalue: closed forms, dense cross-checks, scipy cross-check, no side effects."""

import copy
import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from torch import nn
from torch.func import functional_call

from unroll_utils import hessian
from unroll_utils.losses import make_loss


def quadratic_model(a: torch.Tensor, b: torch.Tensor):
    """L(x) = ½‖Ax − b‖² as a 'model' with one parameter x; Hessian = AᵀA exactly."""
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.x = nn.Parameter(torch.zeros(a.shape[1], dtype=torch.float64))

        def forward(self, inp):
            return inp @ self.x

    def loss(pred, target):
        return 0.5 * ((pred - target) ** 2).sum()

    return Lin(), loss


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_quadratic_sigma_is_top_eigenvalue_of_AtA(method):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 12, dtype=torch.float64, generator=g)
    b = torch.randn(40, dtype=torch.float64, generator=g)
    model, loss = quadratic_model(a, b)
    res = hessian.top_hessian_eigenvalue(model, loss, a, b, method=method, tol=1e-9, max_iter=2000)
    expected = float(torch.linalg.eigvalsh(a.T @ a)[-1])
    assert res.converged
    assert res.eigenvalue == pytest.approx(expected, rel=1e-7)
    sigma = hessian.sigma_from_eigenvalue(res.eigenvalue, "sqrt_eig")
    assert sigma == pytest.approx(math.sqrt(expected), rel=1e-7)
    assert hessian.sigma_from_eigenvalue(res.eigenvalue, "abs_eig") == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_indefinite_returns_algebraically_largest(method):
    # spectrum {-7, -3, 0.5, 2}: largest magnitude is -7, algebraically largest is 2
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    h = q @ torch.diag(torch.tensor([-7.0, -3.0, 0.5, 2.0], dtype=torch.float64)) @ q.T
    solver = hessian.lanczos_top_eigen if method == "lanczos" else hessian.power_top_eigen
    la = solver(lambda v: h @ v, 4, which="LA", tol=1e-8, max_iter=5000)
    lm = solver(lambda v: h @ v, 4, which="LM", tol=1e-8, max_iter=5000)
    assert la.eigenvalue == pytest.approx(2.0, rel=1e-6)
    assert lm.eigenvalue == pytest.approx(-7.0, rel=1e-6)
    # residual reported is the true residual of the returned pair
    v = la.eigenvector
    assert float((h @ v - la.eigenvalue * v).norm()) == pytest.approx(la.residual, abs=1e-9)


def test_negative_top_eigenvalue_is_reported_never_nan():
    h = -torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    res = hessian.lanczos_top_eigen(lambda v: h @ v, 3, tol=1e-10)
    assert res.eigenvalue == pytest.approx(-1.0)
    assert hessian.sigma_from_eigenvalue(res.eigenvalue, "sqrt_eig") == 0.0
    assert hessian.sigma_from_eigenvalue(res.eigenvalue, "abs_eig") == pytest.approx(1.0)


class TinyNet(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.bn(self.conv(x)))).flatten(1))


def tiny_setup(bn=True):
    torch.manual_seed(0)
    net = TinyNet(bn).double()
    # give BN non-trivial running statistics so eval mode differs from train mode
    with torch.no_grad():
        net.train()
        net(torch.randn(16, 1, 6, 6, dtype=torch.float64) * 2 + 1)
    x = torch.randn(10, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(4))
    return net, x, y


def dense_hessian(net, loss_fn, x, y, training: bool):
    """Independent dense reference.

    eval mode: ``torch.func.hessian`` through ``functional_call``. train mode (batch statistics):
    central finite differences of the autograd gradient, because torch.func's second derivative
    through BatchNorm in training mode came out asymmetric (wrong) in torch 2.14, while finite
    differences and double backward agree to 1e-9.
    """
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    if training:
        net = copy.deepcopy(net).train()
        params = list(net.parameters())

        def grad(flat):
            torch.nn.utils.vector_to_parameters(flat, params)
            g = torch.autograd.grad(loss_fn(net(x), y), params)
            return torch.cat([t.reshape(-1) for t in g])

        eps, cols = 1e-5, []
        for j in range(flat0.numel()):
            e = torch.zeros_like(flat0)
            e[j] = eps
            cols.append((grad(flat0 + e) - grad(flat0 - e)) / (2 * eps))
        return torch.stack(cols, 1)
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    net.eval()

    def f(flat):
        parts = torch.split(flat, sizes)
        state = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        return loss_fn(functional_call(net, {**state, **buffers}, (x,)), y)

    return torch.func.hessian(f)(flat0)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("loss_name,lam", [("ce", 0.0), ("sd", 2.0)])
def test_lanczos_and_power_agree_with_dense_eigh(bn_mode, loss_name, lam):
    net, x, y = tiny_setup()
    loss_fn = make_loss(loss_name, lam)
    h = dense_hessian(net, loss_fn, x, y, training=(bn_mode == "train"))
    evals = torch.linalg.eigvalsh(h)
    op = hessian.HessianOperator(net, loss_fn, x, y, bn_mode=bn_mode)
    assert torch.allclose(op.dense(), h, atol=1e-7 if bn_mode == "train" else 1e-10)
    for method in ("lanczos", "power"):
        res = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, method=method, tol=1e-7,
                                             max_iter=3000, bn_mode=bn_mode)
        assert res.eigenvalue == pytest.approx(float(evals[-1]), rel=1e-5), method
        assert res.bn_mode == bn_mode
    lm = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, which="LM", tol=1e-8, max_iter=200,
                                        bn_mode=bn_mode)
    assert abs(lm.eigenvalue) == pytest.approx(float(evals.abs().max()), rel=1e-6)


def test_lanczos_matches_scipy_eigsh():
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    op = hessian.HessianOperator(net, loss_fn, x, y)
    lin = spla.LinearOperator((op.numel, op.numel), dtype=np.float64,
                              matvec=lambda v: op.matvec(torch.from_numpy(np.asarray(v).ravel())).numpy())
    ref = spla.eigsh(lin, k=1, which="LA", tol=1e-10, v0=np.ones(op.numel))[0][0]
    ours = hessian.lanczos_top_eigen(op.matvec, op.numel, tol=1e-9, max_iter=200)
    assert ours.eigenvalue == pytest.approx(ref, rel=1e-7)


def test_model_left_exactly_as_found():
    net, x, y = tiny_setup()
    net.train()
    net.bn.eval()  # a mixed per-module mode must survive too
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.25)
    before_params = [p.detach().clone() for p in net.parameters()]
    before_buffers = [b.clone() for b in net.buffers()]
    before_grads = [p.grad.clone() for p in net.parameters()]
    rng_before = torch.get_rng_state()
    for bn_mode in ("eval", "train"):
        hessian.estimate_sigma(net, make_loss("ce"), x, y, bn_mode=bn_mode, max_iter=20)
    assert net.training and not net.bn.training and net.fc.training
    assert all(torch.equal(a, p) for a, p in zip(before_params, net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_buffers, net.buffers()))
    assert all(torch.equal(a, p.grad) for a, p in zip(before_grads, net.parameters()))
    assert torch.equal(rng_before, torch.get_rng_state())  # global RNG not consumed


def test_start_vector_is_seeded_and_warm_start_saves_hvps():
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    r1 = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, generator=torch.Generator().manual_seed(5))
    r2 = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, generator=torch.Generator().manual_seed(5))
    assert r1.eigenvalue == r2.eigenvalue and r1.n_hvp == r2.n_hvp
    warm = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, init=r1.eigenvector)
    assert warm.n_hvp <= 2 and warm.eigenvalue == pytest.approx(r1.eigenvalue, rel=1e-3)


def test_bad_arguments_raise():
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    with pytest.raises(ValueError, match="bn_mode"):
        hessian.HessianOperator(net, loss_fn, x, y, bn_mode="frozen")
    with pytest.raises(ValueError, match="method"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, method="arnoldi")
    with pytest.raises(ValueError, match="which"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, which="SA")
    with pytest.raises(ValueError, match="stop must be one of"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, stop="change")
    with pytest.raises(ValueError, match="method='lanczos'"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, method="power", stop="eigenvalue")
    with pytest.raises(ValueError, match="tol"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, max_iter=0)
    with pytest.raises(ValueError, match="init"):
        hessian.top_hessian_eigenvalue(net, loss_fn, x, y, init=torch.zeros(3))
    with pytest.raises(ValueError, match="convention"):
        hessian.sigma_from_eigenvalue(1.0, "sqrt")
    with pytest.raises(ValueError, match="eigenvalue"):
        hessian.sigma_from_eigenvalue(float("nan"))
    with pytest.raises(ValueError, match="empty"):
        hessian.HessianOperator(net, loss_fn, x[:0], y[:0])


def _diag_operator(spectrum):
    d = torch.tensor(spectrum, dtype=torch.float64)
    return (lambda v: d * v), d.numel()


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_eigenvalue_rule_reaches_tol_in_fewer_hvps(ratio):
    # known spectrum: top 1, second `ratio` (λ₂/λ₁ ≈ 0.56–0.60 was measured on CNN Hessians), a
    # bulk near 0. (With a near-degenerate top pair the rule can stop on the wrong eigenvalue before
    # the Krylov space resolves the pair; the docstring says so.)
    rng = np.random.default_rng(3)
    spectrum = np.concatenate([[1.0, ratio], rng.uniform(-0.1, 0.2, 500)])
    mv, n = _diag_operator(spectrum)
    for tol in (1e-2, 1e-3, 1e-4):
        res = hessian.lanczos_top_eigen(mv, n, tol=tol, generator=torch.Generator().manual_seed(1))
        eig = hessian.lanczos_top_eigen(mv, n, tol=tol, stop="eigenvalue",
                                        generator=torch.Generator().manual_seed(1))
        assert res.converged and eig.converged and eig.stop == "eigenvalue"
        err = 1.0 - eig.eigenvalue  # Ritz values approach λ_max from below
        assert 0.0 <= err <= tol
        assert err <= eig.error_bound <= eig.residual  # the estimate bounds the true error here
        assert eig.n_hvp < res.n_hvp  # with a clear gap it stops strictly earlier


def test_eigenvalue_rule_on_a_network_hessian_matches_dense_eigh():
    net, x, y = tiny_setup(bn=False)
    loss_fn = make_loss("ce")
    exact = float(torch.linalg.eigvalsh(hessian.HessianOperator(net, loss_fn, x, y).dense())[-1])
    res = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, tol=1e-4, stop="eigenvalue")
    assert res.converged and res.stop == "eigenvalue"
    assert res.eigenvalue == pytest.approx(exact, rel=1e-4)
    assert abs(exact - res.eigenvalue) <= res.error_bound
    power = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, method="power")
    assert power.error_bound == power.residual and power.stop == "residual"



def test_basis_grows_past_its_first_block():
    rng = np.random.default_rng(5)
    spectrum = np.concatenate([[1.0, 0.97], rng.uniform(-0.5, 0.9, 3000)])  # slow: > 16 HVPs
    mv, n = _diag_operator(spectrum)
    res = hessian.lanczos_top_eigen(mv, n, tol=1e-6, max_iter=200,
                                    generator=torch.Generator().manual_seed(2))
    assert res.n_hvp > 16 and res.converged
    assert res.eigenvalue == pytest.approx(1.0, rel=1e-9)
    assert abs(float(res.eigenvector[0])) == pytest.approx(1.0, abs=1e-5)


class WithUnusedHead(nn.Module):
    """TinyNet (no BN) plus a trainable head, registered between its layers, that forward() skips."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.aux = nn.Linear(12, 5)  # never called
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


def test_unused_parameters_have_a_zero_hessian_block_and_leave_lambda_max_unchanged():
    net, x, y = tiny_setup(bn=False)
    torch.manual_seed(7)
    wide = WithUnusedHead().double()
    wide.load_state_dict(net.state_dict(), strict=False)  # conv and fc as in net; aux random
    loss_fn = make_loss("ce")
    ref = dense_hessian(net, loss_fn, x, y, training=False)  # torch.func on the net without aux
    lam_ref = float(torch.linalg.eigvalsh(ref)[-1])
    assert lam_ref > 0
    h = hessian.HessianOperator(wide, loss_fn, x, y).dense()
    names = [n for n, _ in wide.named_parameters()]
    sizes = [p.numel() for p in wide.parameters()]
    is_aux = torch.cat([torch.full((s,), n.startswith("aux."), dtype=torch.bool)
                        for n, s in zip(names, sizes)])
    assert h.shape == (sum(sizes),) * 2 and int(is_aux.sum()) == 12 * 5 + 5
    assert torch.count_nonzero(h[is_aux]) == 0 and torch.count_nonzero(h[:, is_aux]) == 0
    assert torch.allclose(h[~is_aux][:, ~is_aux], ref, atol=1e-10)
    assert float(torch.linalg.eigvalsh(h)[-1]) == pytest.approx(lam_ref, rel=1e-10)
    for method in ("lanczos", "power"):
        res = hessian.top_hessian_eigenvalue(wide, loss_fn, x, y, method=method, tol=1e-8,
                                             max_iter=3000)
        assert res.eigenvalue == pytest.approx(lam_ref, rel=1e-6), method
        assert res.eigenvector.numel() == sum(sizes)
    sigma, _ = hessian.estimate_sigma(wide, loss_fn, x, y, tol=1e-8, max_iter=500)
    assert sigma == pytest.approx(math.sqrt(lam_ref), rel=1e-6)
    op = hessian.HessianOperator(wide, loss_fn, x, y)
    assert torch.count_nonzero(op.gradient[is_aux]) == 0


def test_a_loss_linear_in_the_weights_has_a_zero_hessian():
    lin = nn.Linear(3, 1, bias=False).double()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = hessian.HessianOperator(lin, lambda out, _: out.sum(), x, torch.zeros(5))
    assert torch.equal(op.dense(), torch.zeros(3, 3, dtype=torch.float64))
    assert torch.allclose(op.gradient, x.sum(0))
    op_wd = hessian.HessianOperator(lin, lambda out, _: out.sum(), x, torch.zeros(5), weight_decay=0.5)
    assert torch.equal(op_wd.dense(), 0.5 * torch.eye(3, dtype=torch.float64))


def test_hessian_works_inside_no_grad_and_refuses_inference_mode():
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    v = torch.randn(sum(p.numel() for p in net.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(9))
    outside = hessian.HessianOperator(net, loss_fn, x, y)
    expected_hv, expected_dense = outside.matvec(v), outside.dense()
    expected = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, tol=1e-6)
    expected_sigma = hessian.estimate_sigma(net, loss_fn, x, y, tol=1e-6, weight_decay=0.1)[0]
    with torch.no_grad():
        op = hessian.HessianOperator(net, loss_fn, x, y)
        assert torch.equal(op.matvec(v), expected_hv)
        assert torch.equal(op.dense(), expected_dense)
        res = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, tol=1e-6)
        sigma, _ = hessian.estimate_sigma(net, loss_fn, x, y, tol=1e-6, weight_decay=0.1)
    assert res.eigenvalue == expected.eigenvalue and res.n_hvp == expected.n_hvp
    assert sigma == expected_sigma > 0
    # the operator built under no_grad also works after the block, and vice versa
    assert torch.equal(op.matvec(v), expected_hv)
    with torch.no_grad():
        assert torch.equal(outside.matvec(v), expected_hv)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"torch.inference_mode\(\).*torch.no_grad\(\) is fine"):
            hessian.HessianOperator(net, loss_fn, x, y)
        with pytest.raises(RuntimeError, match="inference_mode"):
            hessian.estimate_sigma(net, loss_fn, x, y)
        x_inf = x.clone()
    # a batch made under inference_mode is usable outside it
    assert torch.equal(hessian.HessianOperator(net, loss_fn, x_inf, y).matvec(v), expected_hv)


def test_weight_decay_shifts_every_eigenvalue_by_wd():
    wd = 0.37
    # closed form: L = ½‖Ax − b‖², H = AᵀA, gradient Aᵀ(Ax − b); with wd: AᵀA + wd·I, + wd·x
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 12, dtype=torch.float64, generator=g)
    b = torch.randn(40, dtype=torch.float64, generator=g)
    model, loss = quadratic_model(a, b)
    with torch.no_grad():
        model.x.copy_(torch.randn(12, dtype=torch.float64, generator=g))
    x0 = model.x.detach()
    op = hessian.HessianOperator(model, loss, a, b, weight_decay=wd)
    assert torch.allclose(op.dense(), a.T @ a + wd * torch.eye(12, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(op.gradient, a.T @ (a @ x0 - b) + wd * x0, atol=1e-12)
    assert op.loss == pytest.approx(float(0.5 * (a @ x0 - b).square().sum() + 0.5 * wd * x0.square().sum()))
    top = float(torch.linalg.eigvalsh(a.T @ a)[-1])
    res = hessian.top_hessian_eigenvalue(model, loss, a, b, tol=1e-10, max_iter=200, weight_decay=wd)
    assert res.eigenvalue == pytest.approx(top + wd, rel=1e-9)
    # a network: λ_max(H + wd·I) = λ_max(H) + wd against an independent dense Hessian
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    evals = torch.linalg.eigvalsh(dense_hessian(net, loss_fn, x, y, training=False))
    dense_wd = hessian.HessianOperator(net, loss_fn, x, y, weight_decay=wd).dense()
    assert torch.allclose(torch.linalg.eigvalsh(dense_wd), evals + wd, atol=1e-9)
    for method in ("lanczos", "power"):
        res = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, method=method, tol=1e-8,
                                             max_iter=3000, weight_decay=wd)
        assert res.eigenvalue == pytest.approx(float(evals[-1]) + wd, rel=1e-6), method
    sigma, _ = hessian.estimate_sigma(net, loss_fn, x, y, tol=1e-8, max_iter=500, weight_decay=wd)
    assert sigma == pytest.approx(math.sqrt(float(evals[-1]) + wd), rel=1e-6)
    # the default is the data loss alone
    sigma0, _ = hessian.estimate_sigma(net, loss_fn, x, y, tol=1e-8, max_iter=500)
    assert sigma0 == pytest.approx(math.sqrt(float(evals[-1])), rel=1e-6)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0; got"):
            hessian.estimate_sigma(net, loss_fn, x, y, weight_decay=bad)
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0; got"):
            hessian.HessianOperator(net, loss_fn, x, y, weight_decay=bad)


# ------------------------------------------------------------------------------------------ micro-batches
def _bn_float32_setup(n=8):
    net, x, y = tiny_setup()
    x = torch.cat([x, x[:max(0, n - len(x))] * 0.5])[:n]
    return net.float(), x.float(), torch.cat([y, y])[:n]


@pytest.mark.parametrize("micro_batch", [[3, 5], [5, 3], [8], 3, [1] * 8, 100])
def test_micro_batch_hvp_is_the_full_batch_hvp_in_eval_mode(micro_batch):
    net, x, y = _bn_float32_setup()
    loss_fn = make_loss("sd", 2.0)
    full = hessian.HessianOperator(net, loss_fn, x, y)
    split = hessian.HessianOperator(net, loss_fn, x, y, micro_batch=micro_batch)
    expect = {3: [3, 3, 2], 100: [8]}.get(micro_batch, micro_batch) if isinstance(micro_batch, int) else micro_batch
    assert split.micro_sizes == expect
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(full.numel, generator=gen)
        ref, got = full.matvec(v), split.matvec(v)
        assert got.dtype == torch.float32
        # float32 precision: only the summation order differs
        assert float((got - ref).norm() / ref.norm()) < 2e-6
    torch.testing.assert_close(split.gradient, full.gradient, rtol=1e-5, atol=1e-7)
    assert split.loss == pytest.approx(full.loss, rel=1e-6)
    assert split.n_hvp == 3


def test_micro_batch_dense_hessian_matches_torch_func_in_float64():
    net, x, y = tiny_setup()  # float64, BatchNorm with non-trivial running statistics, 10 points
    loss_fn = make_loss("ce")
    ref = dense_hessian(net, loss_fn, x, y, training=False)  # independent: torch.func.hessian
    got = hessian.HessianOperator(net, loss_fn, x, y, micro_batch=[3, 5, 2]).dense()
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_micro_batch_top_eigenvalue_is_the_full_batch_one():
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    lam_dense = float(torch.linalg.eigvalsh(dense_hessian(net, loss_fn, x, y, training=False))[-1])
    for micro_batch in (None, [3, 7], 4):
        res = hessian.top_hessian_eigenvalue(net, loss_fn, x, y, tol=1e-8, max_iter=200,
                                             micro_batch=micro_batch)
        assert res.converged and res.eigenvalue == pytest.approx(lam_dense, rel=1e-9)
    sigma, _ = hessian.estimate_sigma(net, loss_fn, x, y, tol=1e-8, max_iter=200, micro_batch=[5, 5])
    assert sigma == pytest.approx(math.sqrt(lam_dense), rel=1e-9)


def test_train_mode_micro_batches_use_their_own_batch_statistics():
    # documented semantics: the size-weighted mean of the micro-batches' own Hessians, not the
    # full-batch Hessian (BatchNorm's batch statistics couple the points of one forward pass)
    net, x, y = tiny_setup()
    loss_fn = make_loss("ce")
    full = hessian.HessianOperator(net, loss_fn, x, y, bn_mode="train").dense()
    parts = [hessian.HessianOperator(net, loss_fn, x[s], y[s], bn_mode="train").dense()
             for s in (slice(0, 4), slice(4, 10))]
    split = hessian.HessianOperator(net, loss_fn, x, y, bn_mode="train", micro_batch=[4, 6]).dense()
    torch.testing.assert_close(split, 0.4 * parts[0] + 0.6 * parts[1], rtol=1e-10, atol=1e-12)
    assert float((split - full).norm() / full.norm()) > 1e-2  # not the full-batch Hessian
    one = hessian.HessianOperator(net, loss_fn, x, y, bn_mode="train", micro_batch=[10]).dense()
    torch.testing.assert_close(one, full, rtol=0, atol=0)


def test_train_mode_micro_batches_with_dropout_give_one_fixed_symmetric_operator():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    x = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(2))
    op = hessian.HessianOperator(net, make_loss("ce"), x, y, bn_mode="train", micro_batch=4)
    gen = torch.Generator().manual_seed(3)
    u, v = (torch.randn(op.numel, dtype=torch.float64, generator=gen) for _ in range(2))
    hv = op.matvec(v)
    torch.testing.assert_close(op.matvec(v), hv, rtol=0, atol=0)  # the same masks at every HVP
    assert float(u @ hv) == pytest.approx(float(v @ op.matvec(u)), rel=1e-10)
    state = torch.random.get_rng_state()
    op.matvec(v)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


@pytest.mark.parametrize("micro_batch", [0, -2, [3, 4], [0, 10], [2.5, 7.5], "4", [True, 9], []])
def test_bad_micro_batch_names_the_parameter_and_n(micro_batch):
    net, x, y = tiny_setup()
    with pytest.raises(ValueError, match=r"micro_batch must be None, an integer >= 1 or .*N=10"):
        hessian.HessianOperator(net, make_loss("ce"), x, y, micro_batch=micro_batch)


def test_matmat_is_the_stacked_matvec_and_counts_each_row():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g)
    for wd in (0.0, 0.1):
        op = hessian.HessianOperator(net, nn.functional.cross_entropy, x, y, weight_decay=wd)
        v = torch.randn(3, op.numel, generator=g, dtype=torch.float64)
        rows = torch.stack([op.matvec(r) for r in v])
        assert torch.allclose(op.matmat(v), rows, rtol=1e-12, atol=1e-14)
        assert torch.allclose(op.matmat(v), v @ op.dense(), rtol=1e-10, atol=1e-12)
        assert op.n_hvp == 3 + 3 + 3 + op.numel
    with pytest.raises(ValueError, match="shape"):
        op.matmat(torch.zeros(op.numel))
