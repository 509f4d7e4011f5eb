"""Row 6: Exp A end to end on the small CNN — σ at every step on the fixed points, per schedule.

One lock-step trajectory (M and M′ from w_0, lr ``s.step_lr``, b=32, x* = the first batch, which
M′ skips) is run once; at every step each schedule's measurement is timed side by side (the order
rotates from step to step, so load drifts hit all alike):

* **reference protocol** (paper §2.2, re-enacted as in row 1): the undo gradient at w_0 recomputed
  (``forget_gradient``), M, M′ and M″ flattened to Python lists and differenced with
  ``np.linalg.norm`` (:func:`benchmarks.metrics_cost.reference_metrics`), σ from PyHessian's
  default loop (:class:`benchmarks.pyhessian_ref.PyHessianEigen`, fresh global-RNG start);
* **ours**, one :class:`unroll_utils.trajectory.SigmaTracker` per schedule (the code
  ``run_lockstep`` runs), the undo gradient once at w_0 and ``lockstep_distances`` every step:
  σ tracking (``sigma_track=True``, tol 1e-2), warm-started Lanczos every step (residual rule and
  eigenvalue rule, tol 1e-3), and the package default (σ every 10 steps, held in between).

The SGD steps of M and M′ are the same work in every protocol: they are timed once and added to
each total. Ground truth: at every step a tight Lanczos solve (residual ≤ 1e-6·λ, warm-started
from the previous truth; untimed) gives λ_max, σ* = sqrt(λ_max), e*_t and rolling e*_t. Since
every schedule sees the same w_t, e_t/e*_t − 1 = σ_t/σ*_t − 1; the errors are taken over t ≥ 2
(e_1 = 0 for every schedule, t − 1 = 0 second-order terms).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from unroll_utils.hessian import HessianOperator, lanczos_top_eigen, sigma_from_eigenvalue
from unroll_utils.metrics import lockstep_distances, model_weights, unlearning_error
from unroll_utils.training import make_optimizer, sgd_step
from unroll_utils.trajectory import LockStepConfig, SigmaTracker
from unroll_utils.unlearning import forget_gradient

from .common import sync
from .context import Context
from .metrics_cost import reference_metrics, weights_to_list_fast
from .pyhessian_ref import PyHessianEigen
from .report import Report, status

REFERENCE = "reference protocol: PyHessian default every step"
SCHEDULES = {
    "ours: σ tracking every step (sigma_track, tol 1e-2)":
        dict(sigma_every=1, sigma_track=True, sigma_tol=1e-2),
    "ours: warm Lanczos every step, eigenvalue rule (tol 1e-3)":
        dict(sigma_every=1, sigma_stop="eigenvalue"),
    "ours: warm Lanczos every step, residual rule (tol 1e-3)": dict(sigma_every=1),
    "ours: σ every 10 steps, held (package default)": dict(sigma_every=10),
}
TARGET_SPEEDUP, TARGET_ERR = 6.0, 0.01


class _Ours:
    """One of our schedules: a SigmaTracker and the per-step ``lockstep_distances``."""

    def __init__(self, overrides: dict, loss_fn, xh, yh, lr: float, steps: int) -> None:
        cfg = LockStepConfig(lr=lr, batch_size=32, sigma_points=xh.shape[0], **overrides).validate()
        self.tracker = SigmaTracker(cfg, loss_fn, xh, yh)
        self.steps, self.hvps, self.bounds = steps, 0, []

    def measure(self, t: int, model, retrained, initial, undo, xb, yb) -> float:
        lockstep_distances(model_weights(model), model_weights(retrained), model_weights(initial),
                           undo=undo)
        if self.tracker.due(t, t == self.steps):
            row = self.tracker.measure(model, xb, yb)
            self.hvps += row["eig_hvps"]
            self.bounds.append(row["eig_error_bound"] / row["eigenvalue"])
        return self.tracker.sigmas[-1]


class _Reference:
    """The reference protocol's measurement step (undo recomputed, list flattening, PyHessian)."""

    def __init__(self, loss_fn, xh, yh, x_forget, y_forget, initial, seed: int, lr: float) -> None:
        self.loss_fn, self.xh, self.yh, self.lr = loss_fn, xh, yh, lr
        self.x_forget, self.y_forget, self.initial, self.seed = x_forget, y_forget, initial, seed
        self.w0_list = weights_to_list_fast(list(initial.parameters()))
        self.hvps = 0

    def measure(self, t: int, model, retrained, initial, undo, xb, yb) -> float:
        grad = forget_gradient(self.initial, self.loss_fn, self.x_forget, self.y_forget)
        reference_metrics(model, retrained, [-self.lr * g for g in grad], self.w0_list)
        torch.manual_seed(self.seed + t)  # PyHessian's start: the global RNG
        h = PyHessianEigen(model, self.loss_fn, self.xh, self.yh, self.xh.device)
        tr = h.eigenvalues(maxIter=100, tol=1e-3)
        h.release()
        model.train()  # the reference code never calls train() again; the small CNN has no BN
        self.hvps += tr.n_hvp
        return math.sqrt(tr.eigenvalue) if tr.eigenvalue > 0 else math.nan


def _truth(model, loss_fn, xh, yh, init):
    op = HessianOperator(model, loss_fn, xh, yh)
    res = lanczos_top_eigen(op.matvec, op.numel, tol=1e-6, max_iter=300, init=init,
                            device=op.device, generator=torch.Generator().manual_seed(99))
    return res


def run(ctx: Context, report: Report) -> None:
    """Row 6 (see the module docstring)."""
    s, dev = ctx.settings, ctx.device
    steps, n_fixed, lr = s.exp_a_steps, s.exp_a_points, s.step_lr
    loss_fn = F.cross_entropy
    xh, yh = ctx.cnn_batch(0, n_fixed)
    x_forget, y_forget = ctx.cnn_batch(0, 32)  # x* = the first batch (forget_first order)
    model, initial = ctx.model("small_cnn"), ctx.model("small_cnn")
    retrained = copy.deepcopy(model)
    opt_m, opt_r = make_optimizer(model, lr), make_optimizer(retrained, lr)
    t0 = time.perf_counter()
    undo = [-lr * g for g in forget_gradient(initial, loss_fn, x_forget, y_forget)]
    undo_once = time.perf_counter() - t0
    cases = {REFERENCE: _Reference(loss_fn, xh, yh, x_forget, y_forget, initial, s.seed + 600, lr)}
    cases.update({k: _Ours(v, loss_fn, xh, yh, lr, steps) for k, v in SCHEDULES.items()})
    seconds = {k: 0.0 for k in cases}
    sigmas = {k: [] for k in cases}
    train_s, truth_sigma, truth_vec, truth_hvps = 0.0, [], None, 0
    names = list(cases)
    for t in range(1, steps + 1):
        xb, yb = ctx.cnn_batch(32 * (t - 1), 32)
        t0 = time.perf_counter()
        sgd_step(model, opt_m, loss_fn, xb, yb)
        if t > 1:  # M′ skips x*'s batch
            sgd_step(retrained, opt_r, loss_fn, xb, yb)
        sync(dev)
        train_s += time.perf_counter() - t0
        k = (t - 1) % len(names)
        for name in names[k:] + names[:k]:
            sync(dev)
            t0 = time.perf_counter()
            sigma = cases[name].measure(t, model, retrained, initial, undo, xb, yb)
            sync(dev)
            seconds[name] += time.perf_counter() - t0
            sigmas[name].append(sigma)
        truth = _truth(model, loss_fn, xh, yh, truth_vec)
        truth_vec, truth_hvps = truth.eigenvector, truth_hvps + truth.n_hvp
        truth_sigma.append(sigma_from_eigenvalue(truth.eigenvalue))
        print(f"    step {t}/{steps}: λ_max {truth.eigenvalue:.2f}", flush=True)
    _report(report, s, cases, seconds, sigmas, truth_sigma, train_s, undo_once, truth_hvps, steps,
            lr, n_fixed)


def _errors(sig: list[float], truth: list[float], lr: float) -> dict:
    """Max/mean relative error of e_t and rolling e_t against the truth, over t ≥ 2."""
    e, r = [], []
    for t in range(2, len(truth) + 1):
        e_hat = unlearning_error(lr, t - 1, 1.0, sig[t - 1])
        e_true = unlearning_error(lr, t - 1, 1.0, truth[t - 1])
        roll_hat = unlearning_error(lr, t - 1, 1.0, float(np.mean(sig[:t])))
        roll_true = unlearning_error(lr, t - 1, 1.0, float(np.mean(truth[:t])))
        e.append(abs(e_hat / e_true - 1))
        r.append(abs(roll_hat / roll_true - 1))
    return {"max": max(e), "mean": float(np.mean(e)), "roll_max": max(r),
            "roll_mean": float(np.mean(r))}


def _report(report, s, cases, seconds, sigmas, truth_sigma, train_s, undo_once, truth_hvps,
            steps, lr, n_fixed) -> None:
    setting = f"small CNN, MNIST, {n_fixed} fixed points, {steps} lock-step steps, lr {lr:g}"
    step_s = train_s / steps / 2  # one plain SGD step (M and M′ take one each per step)
    total_ref = train_s + seconds[REFERENCE]
    report.detail(row=6, setting=setting, case="ground truth: tight Lanczos (residual ≤ 1e-6·λ)",
                  n=steps, hvps=truth_hvps, notes="untimed; σ* range "
                  f"{min(truth_sigma):.3g}–{max(truth_sigma):.3g}")
    for name, case in cases.items():
        total = train_s + seconds[name] + (0.0 if name == REFERENCE else undo_once)
        err = _errors(sigmas[name], truth_sigma, lr)
        per_step = total / steps / step_s
        extra = ""
        if name != REFERENCE and case.bounds:
            extra = f"; max estimated eigenvalue error {max(case.bounds):.2g}·λ"
        report.detail(row=6, setting=setting, case=name, n=steps, seconds=total, hvps=case.hvps,
                      rel_err=err["max"],
                      notes=f"e_t error max {err['max']:.2%} mean {err['mean']:.2%}; rolling e_t "
                            f"max {err['roll_max']:.2%} mean {err['roll_mean']:.2%}; "
                            f"{case.hvps / steps:.2f} HVPs/step; {per_step:.0f}× a plain SGD step "
                            f"per step{extra}")
        if name == REFERENCE:
            continue
        speed = total_ref / total
        ok = err["max"] <= TARGET_ERR and speed >= TARGET_SPEEDUP
        report.add(row=6, benchmark="Exp A end to end: σ every step", setting=setting, ours=name,
                   baseline=REFERENCE, quantity="seconds", ours_value=total,
                   baseline_value=total_ref, ratio=f"{speed:.3g}×",
                   target=f"≥{TARGET_SPEEDUP:g}× at max e_t error ≤ {TARGET_ERR:.0%}",
                   status=status(ok),
                   notes=f"max e_t error {err['max']:.2%} (mean {err['mean']:.2%}), rolling "
                         f"{err['roll_max']:.2%}; HVPs {case.hvps} vs {cases[REFERENCE].hvps}; "
                         f"reference max e_t error {_errors(sigmas[REFERENCE], truth_sigma, lr)['max']:.2%}")
