"""Row 6: Exp A end to end — σ at every step on the fixed points, per schedule, on two models.

One lock-step trajectory (M and M′ from w_0, lr ``s.step_lr``, b=32, x* = the first batch, which
M′ skips) is run once per model; at every step each schedule's measurement is timed side by side
(the order rotates from step to step, so load drifts hit all alike):

* **reference protocol** (paper §2.2, re-enacted as in row 1): the undo gradient at w_0 recomputed
  (``forget_gradient``), M, M′ and M″ flattened to Python lists and differenced with
  ``np.linalg.norm`` (:func:`benchmarks.metrics_cost.reference_metrics`), σ from PyHessian's
  default loop (:class:`benchmarks.pyhessian_ref.PyHessianEigen`, fresh global-RNG start);
* **ours**, one :class:`unroll_utils.sigma.SigmaTracker` per schedule (the code
  ``run_lockstep`` runs), the undo gradient once at w_0 and ``lockstep_distances`` every step:
  σ tracking (``sigma_track=True``; tol 2e-2, whose estimate bounds e_t's error by 1%, and 1e-2),
  warm-started Lanczos every step (eigenvalue rule, and on the small CNN the residual rule,
  tol 1e-3), and the package default (σ every 10 steps, held in between).

Models: the small CNN at the suite's w_0 on MNIST (512 fixed points, the paper's Exp A batch), and
ResNet-18 on synthetic CIFAR-shaped data (a smaller fixed batch in quick mode) at its seeded
initialisation with BatchNorm running statistics settled by forward passes in train mode (a
pretrained w_0 has settled statistics; without them the eval-mode Hessian that σ is taken from
jumps with every step's statistics update).

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
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from unroll_utils.hessian import HessianOperator, lanczos_top_eigen, sigma_from_eigenvalue
from unroll_utils.distances import lockstep_distances, model_weights
from unroll_utils.metrics import unlearning_error
from unroll_utils.training import make_optimizer, sgd_step
from unroll_utils.sigma import SigmaTracker
from unroll_utils.trajectory import LockStepConfig
from unroll_utils.unlearning import forget_gradient

from .common import sync
from .context import Context
from .metrics_cost import reference_metrics, weights_to_list_fast
from .pyhessian_ref import PyHessianEigen
from .report import Report, ratio_text, status

REFERENCE = "reference protocol: PyHessian default every step"
TRACK_1PCT = "ours: σ tracking every step (sigma_track, tol 2e-2: e_t within 1%)"
BLOCK_1PCT = "ours: block σ tracking every step (sigma_track='block', k=2, tol 2e-2)"
TRACK_1E2 = "ours: σ tracking every step (sigma_track, tol 1e-2)"
RESIDUAL = "ours: warm Lanczos every step, residual rule (tol 1e-3)"
SCHEDULES = {
    TRACK_1PCT: dict(sigma_every=1, sigma_track=True, sigma_tol=2e-2, sigma_stop="eigenvalue"),
    BLOCK_1PCT: dict(sigma_every=1, sigma_track="block", sigma_tol=2e-2, sigma_stop="eigenvalue"),
    TRACK_1E2: dict(sigma_every=1, sigma_track=True, sigma_tol=1e-2, sigma_stop="eigenvalue"),
    "ours: warm Lanczos every step, eigenvalue rule (tol 1e-3)":
        dict(sigma_every=1, sigma_stop="eigenvalue"),
    RESIDUAL: dict(sigma_every=1),
    "ours: σ every 10 steps, held (package default)": dict(sigma_every=10),
}
# the residual rule needs 2–4× the HVPs of the eigenvalue rule: left out where HVPs are dear;
# quick mode also leaves out the 1e-2 tracking variant
RESNET_SKIP = (RESIDUAL,)
QUICK_SKIP = (RESIDUAL, TRACK_1E2)
TARGET_SPEEDUP, TARGET_ERR = 5.0, 0.01
BOUND_SLACK = 1e-6  # relative: the ground truth's own accuracy and float32 HVP rounding


class _Ours:
    """One of our schedules: a SigmaTracker and the per-step ``lockstep_distances``."""

    def __init__(self, overrides: dict, loss_fn, xh, yh, lr: float, steps: int) -> None:
        cfg = LockStepConfig(lr=lr, batch_size=32, sigma_points=xh.shape[0], **overrides).validate()
        self.tracker = SigmaTracker(cfg, loss_fn, xh, yh)
        self.steps, self.hvps, self.bounds = steps, 0, []
        self.last: tuple[int, float, float] | None = None  # (t, λ estimate, its error bound)
        self.checked, self.violations, self.worst = 0, 0, 0.0  # the bound against the truth

    def measure(self, t: int, model, retrained, initial, undo, xb, yb) -> float:
        lockstep_distances(model_weights(model), model_weights(retrained), model_weights(initial),
                           undo=undo)
        if self.tracker.due(t, t == self.steps):
            row = self.tracker.measure(model, xb, yb)
            self.hvps += row["eig_hvps"]
            self.bounds.append(row["eig_error_bound"] / row["eigenvalue"])
            self.last = (t, row["eigenvalue"], row["eig_error_bound"])
        return self.tracker.sigmas[-1]

    def check(self, t: int, lam: float) -> None:
        """Whether this step's estimate θ and bound ε hold: θ ≤ λ_max ≤ θ + ε (up to
        ``BOUND_SLACK``·λ_max); ``worst`` is the largest (λ_max − θ)/ε seen."""
        if self.last is None or self.last[0] != t or not self.tracker.config.sigma_track:
            return
        _, theta, eps = self.last
        slack = BOUND_SLACK * abs(lam)
        self.checked += 1
        self.violations += not (theta <= lam + slack and lam - theta <= eps + slack)
        self.worst = max(self.worst, (lam - theta) / eps if eps > 0 else math.inf * (lam > theta + slack))


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
        model.train()  # PyHessian left it in eval mode; M trains in train mode (BatchNorm)
        self.hvps += tr.n_hvp
        return math.sqrt(tr.eigenvalue) if tr.eigenvalue > 0 else math.nan


def _truth(model, loss_fn, xh, yh, init):
    op = HessianOperator(model, loss_fn, xh, yh)
    res = lanczos_top_eigen(op.matvec, op.numel, tol=1e-6, max_iter=300, init=init,
                            device=op.device, generator=torch.Generator().manual_seed(99))
    return res


@dataclass
class Workload:
    """One model's Exp A setting: w_0, the fixed Hessian batch and the training batches."""

    label: str
    model: torch.nn.Module
    fixed: tuple[torch.Tensor, torch.Tensor]
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # t (1-based) → batch t; t=1 is x*
    steps: int
    schedules: tuple[str, ...]
    info: str = ""


def _schedules(ctx: Context, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    skip = skip + (QUICK_SKIP if ctx.settings.quick else ())
    return tuple(k for k in SCHEDULES if k not in skip)


def small_cnn_workload(ctx: Context) -> Workload:
    s = ctx.settings
    return Workload(f"small CNN, MNIST, {s.exp_a_points} fixed points", ctx.model("small_cnn"),
                    ctx.cnn_batch(0, s.exp_a_points), lambda t: ctx.cnn_batch(32 * (t - 1), 32),
                    s.exp_a_steps, _schedules(ctx))


def resnet_pretrained_workload(ctx: Context) -> Workload:
    """ResNet-18 at a w_0 pretrained on padded MNIST (:meth:`Context.resnet_pretrained`), fine-tuned
    on the same padded images (x* = the first batch), σ on the first ``resnet_exp_a_points``."""
    s = ctx.settings
    t0 = time.perf_counter()
    model, acc = ctx.resnet_pretrained()
    info = (f"w_0: {s.resnet_pretrain_epochs} epochs of the reference recipe on "
            f"{s.resnet_pretrain_n} padded MNIST images, test accuracy {acc:.1%} "
            f"({time.perf_counter() - t0:.0f} s incl. cache)")
    print(f"    ResNet-18 {info}", flush=True)
    return Workload(f"ResNet-18, pretrained w_0, padded MNIST, {s.resnet_exp_a_points} fixed points",
                    model, ctx.padded_mnist(0, s.resnet_exp_a_points),
                    lambda t: ctx.padded_mnist(32 * (t - 1), 32), s.resnet_exp_a_steps,
                    _schedules(ctx, RESNET_SKIP), info)


def resnet_workload(ctx: Context) -> Workload:
    """ResNet-18 at its seeded initialisation, BatchNorm statistics settled by
    ``s.resnet_exp_a_settle`` forward passes in train mode on synthetic batches (no weight update)."""
    s = ctx.settings
    model = ctx.model("resnet18")
    model.train()
    with torch.no_grad():
        for i in range(s.resnet_exp_a_settle):
            model(ctx.cifar_batch(32, 5000 + i)[0])
    return Workload(f"ResNet-18, random init, synthetic CIFAR (stress case), "
                    f"{s.resnet_exp_a_points} fixed points", model,
                    ctx.cifar_batch(s.resnet_exp_a_points, 4999),
                    lambda t: ctx.cifar_batch(32, 6000 + t), s.resnet_exp_a_steps,
                    _schedules(ctx, RESNET_SKIP))


def run(ctx: Context, report: Report) -> None:
    """Row 6 on the small CNN, then (unless its step count is 0) on ResNet-18 from a pretrained
    w_0 and, with ``resnet_exp_a_stress``, on the synthetic random-init ResNet-18."""
    run_workload(ctx, report, small_cnn_workload(ctx))
    if ctx.settings.resnet_exp_a_steps:
        run_workload(ctx, report, resnet_pretrained_workload(ctx))
        if ctx.settings.resnet_exp_a_stress:
            run_workload(ctx, report, resnet_workload(ctx))


def run_workload(ctx: Context, report: Report, work: Workload) -> None:
    """Row 6 for one model (see the module docstring)."""
    s, dev, lr, steps = ctx.settings, ctx.device, ctx.settings.step_lr, work.steps
    loss_fn = F.cross_entropy
    xh, yh = work.fixed
    x_forget, y_forget = work.batch(1)  # x* = the first batch (forget_first order)
    model, initial = work.model, copy.deepcopy(work.model)
    retrained = copy.deepcopy(model)
    opt_m, opt_r = make_optimizer(model, lr), make_optimizer(retrained, lr)
    t0 = time.perf_counter()
    undo = [-lr * g for g in forget_gradient(initial, loss_fn, x_forget, y_forget)]
    undo_once = time.perf_counter() - t0
    cases = {REFERENCE: _Reference(loss_fn, xh, yh, x_forget, y_forget, initial, s.seed + 600, lr)}
    cases.update({k: _Ours(SCHEDULES[k], loss_fn, xh, yh, lr, steps) for k in work.schedules})
    seconds = {k: 0.0 for k in cases}
    sigmas = {k: [] for k in cases}
    train_s, truth_sigma, truth_vec, truth_hvps = 0.0, [], None, 0
    names = list(cases)
    for t in range(1, steps + 1):
        xb, yb = work.batch(t)
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
        for case in cases.values():
            if isinstance(case, _Ours):
                case.check(t, truth.eigenvalue)
        print(f"    {work.label}: step {t}/{steps}: λ_max {truth.eigenvalue:.2f}", flush=True)
    _report(report, work.label, cases, seconds, sigmas, truth_sigma, train_s, undo_once,
            truth_hvps, steps, lr, work.info)


def _errors(sig: list[float], truth: list[float], lr: float) -> dict:
    """Max/mean relative error of e_t and rolling e_t against the truth, over t ≥ 2. A NaN σ (the
    reference's sqrt of a negative largest-magnitude eigenvalue, paper §2.9) counts as an infinite
    error at that step, and at every later step of the rolling mean."""
    e, r = [], []
    for t in range(2, len(truth) + 1):
        e_true = unlearning_error(lr, t - 1, 1.0, truth[t - 1])
        roll_true = unlearning_error(lr, t - 1, 1.0, float(np.mean(truth[:t])))
        e.append(_rel(sig[t - 1], lr, t, e_true))
        r.append(_rel(float(np.mean(sig[:t])), lr, t, roll_true))
    return {"max": max(e), "mean": float(np.mean(e)), "roll_max": max(r),
            "roll_mean": float(np.mean(r)), "nan_steps": sum(math.isnan(x) for x in sig)}


def _rel(sigma: float, lr: float, t: int, e_true: float) -> float:
    if not math.isfinite(sigma):
        return math.inf
    return abs(unlearning_error(lr, t - 1, 1.0, sigma) / e_true - 1)


def _report(report, label, cases, seconds, sigmas, truth_sigma, train_s, undo_once, truth_hvps,
            steps, lr, info="") -> None:
    setting = f"{label}, {steps} lock-step steps, lr {lr:g}"
    step_s = train_s / steps / 2  # one plain SGD step (M and M′ take one each per step)
    total_ref = train_s + seconds[REFERENCE]
    report.detail(row=6, setting=setting, case="ground truth: tight Lanczos (residual ≤ 1e-6·λ)",
                  n=steps, hvps=truth_hvps, notes="untimed; σ* range "
                  f"{min(truth_sigma):.3g}–{max(truth_sigma):.3g}" + (f"; {info}" if info else ""))
    errors = {name: _errors(sigmas[name], truth_sigma, lr) for name in cases}
    for name, case in cases.items():
        total = train_s + seconds[name] + (0.0 if name == REFERENCE else undo_once)
        err = errors[name]
        per_step = total / steps / step_s
        extra = ""
        if name != REFERENCE and case.bounds:
            extra = f"; max estimated eigenvalue error {max(case.bounds):.2g}·λ"
        if name != REFERENCE and case.checked:
            extra += (f"; bound held at {case.checked - case.violations}/{case.checked} steps "
                      f"(max (λ* − λ)/ε {case.worst:.2f})")
        report.detail(row=6, setting=setting, case=name, n=steps, seconds=total, hvps=case.hvps,
                      rel_err=err["max"],
                      notes=f"e_t error max {err['max']:.2%} mean {err['mean']:.2%}; rolling e_t "
                            f"max {err['roll_max']:.2%} mean {err['roll_mean']:.2%}; "
                            f"{case.hvps / steps:.2f} HVPs/step; {per_step:.0f}× a plain SGD step "
                            f"per step{extra}"
                            + (f"; σ NaN at {err['nan_steps']} steps" if err["nan_steps"] else ""))
        if name == REFERENCE:
            continue
        speed = total_ref / total
        ok = err["max"] <= TARGET_ERR and speed >= TARGET_SPEEDUP and not case.violations
        report.add(row=6, benchmark="Exp A end to end: σ every step", setting=setting, ours=name,
                   baseline=REFERENCE, quantity="seconds", ours_value=total,
                   baseline_value=total_ref, ratio=ratio_text(speed),
                   target=f"≥{TARGET_SPEEDUP:g}× at max e_t error ≤ {TARGET_ERR:.0%}"
                          + (", estimate holding every step" if case.checked else ""),
                   status=status(ok),
                   notes=(f"bound violated at {case.violations}/{case.checked} steps; " if case.violations
                          else "") + f"max e_t error {err['max']:.2%} (mean {err['mean']:.2%}), rolling "
                         f"{err['roll_max']:.2%}; HVPs {case.hvps} vs {cases[REFERENCE].hvps}; "
                         f"reference max e_t error {errors[REFERENCE]['max']:.2%}")
