"""Hessian-propagated single gradient unlearning: the correction that follows the trajectory.

Single gradient unlearning (:mod:`unroll_utils.unlearning`, notebook 03 eq. (1)) adds back η·∇L(w; x*)
for every step τ_k that saw the forget set x*. Unrolling SGD one order further (notebook 02,
eqs. (3)–(6); notebook 14, eq. (1)) says what
became of that trace: each later step multiplies it by (I − η H_i), so after t steps

    δ_t ≈ Σ_k Π_{i>τ_k} (I − η H_i) · (−η_k ∇L(w_{τ_k − 1}; x*)),

and single gradient unlearning replaces every product by the identity. Here the products are
replaced by a matrix function of one Hessian H̄ (taken post hoc, from M alone),

    u = Σ_k η_k · f_k(H̄) · g_k,    f_k(x) = clamp((1 − η (x + λ_wd))^{n_k}, −1, 1),

with n_k the steps after the k-th visit on which the retrained model M′ moves (see *Which steps
count* below), λ_wd the weight decay (0 for plain SGD), and
f_k(H̄)·g_k applied by Lanczos (:mod:`unroll_utils.krylov`) on
:class:`unroll_utils.hessian.HessianOperator` in ``krylov`` HVPs
(Saad 1992; Higham 2008, §13.2): f(H̄) g ≈ ‖g‖ Q_m f(T_m) e_1. The clamp keeps the powers bounded
where η·θ > 2 or θ < 0 (negative curvature), where (1 − ηθ)^n would blow up; it is a modelling
choice (SGD does not amplify those directions indefinitely in practice), not part of the expansion.
The error estimate is the norm of the last Krylov update, ‖g‖·‖f(T_m)e_1 − [f(T_{m−1})e_1; 0]‖ (the
change from m − 1 to m Lanczos steps; no extra HVP; 0 when the Krylov space is invariant, i.e. the
residual β_m vanishes). It is used instead of the residual term ‖g‖·β_m·|[f(T_m)]_{m,1}| (exact
for smooth f in the limit), which underestimates the error when the clamp makes f non-smooth.

This is first-order in the products and linear in the Hessian; it is exact for a quadratic loss
trained by full-batch gradient descent on the retain set between x*'s steps (H̄ = that Hessian). It
assumes plain SGD (momentum makes x*'s trace a different polynomial, see notebook 03, eq. (3)).

Which steps count (a convention): n_k counts the steps τ_k < i ≤ t whose batch held at least one
retain point. A later step on a batch of forget points only is not counted: M′ does not move there
(the lock-step skips it, :meth:`unroll_utils.lockstep.LockStep.step`), so M's step adds that
visit's own gradient and leaves the earlier traces as they were. With two epochs of [x*, 12 retain
steps], t = 26, the exponents are n = [24, 12], not t − τ = [25, 12]; the count is exact for the
quadratic above (:func:`retain_steps_after`).

:class:`PropagatedConfig` names the choices; :class:`PropagatedUndo` is the lock-step bookkeeping
(visits recorded with the gradient where M stepped on x*, the correction computed at measurement
steps); :func:`propagated_unlearning` is the post-hoc form for a model M and a gradient at w_0.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .hessian import BN_MODES, HessianOperator
from .krylov import KrylovBasis, MatVec, _is_int, check_int, flatten, lanczos_basis, unflatten
from .unlearning import forget_gradient

HESSIAN_POINTS = ("current", "w0")


def check_number(name: str, value, *, positive: bool) -> float:
    """``value`` as a float if it is a finite real > 0 (``positive``) or ≥ 0, else ValueError naming
    ``name`` and the allowed range."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}; "
                         f"got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PropagatedConfig:
    """Choices of Hessian-propagated single gradient unlearning.

    Attributes:
        krylov: m ≥ 1, Lanczos steps (HVPs) per visit of x* (notebook 14 compares m with 2m).
        points: the Hessian batch H̄ is taken on the first ``points`` training points, ≥ 1 (default
            128, the main job's σ batch).
        at: where H̄ is taken: ``"current"`` (M's weights w_t being unlearned, default) or
            ``"w0"`` (the initial weights; one Lanczos run per visit, reused at every t, but stale
            later in training).
        bn_mode: BatchNorm mode of H̄: ``"train"`` (batch statistics, as SGD trains; default) or
            ``"eval"`` (running statistics; not the operator SGD steps with, see notebook 14,
            section 3).
        clamp: clamp f to [−1, 1] (default True; without it negative or large Ritz values blow
            the powers up).
        every: compute the correction at measurement steps t = 1, multiples of ``every`` and the
            last step (≥ 1; it costs ``krylov`` HVPs per visit each time).
    """

    krylov: int = 10
    points: int = 128
    at: str = "current"
    bn_mode: str = "train"
    clamp: bool = True
    every: int = 1

    def validate(self) -> "PropagatedConfig":
        """Raise ValueError naming the first bad field (as ``propagated.<field>``); return self."""
        def whole(v) -> bool:
            return _is_int(v) and v >= 1

        checks = (("krylov", whole(self.krylov), "an integer >= 1"),
                  ("points", whole(self.points), "an integer >= 1"),
                  ("at", self.at in HESSIAN_POINTS, f"one of {HESSIAN_POINTS}"),
                  ("bn_mode", self.bn_mode in BN_MODES, f"one of {BN_MODES}"),
                  ("clamp", isinstance(self.clamp, bool), "True or False"),
                  ("every", whole(self.every), "an integer >= 1"))
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"propagated.{name} must be {allowed}; got {getattr(self, name)!r}")
        return self


def propagation_factor(x: np.ndarray, lr: float, steps: int, *, clamp: bool = True,
                       weight_decay: float = 0.0) -> np.ndarray:
    """f(x) = (1 − η (x + λ_wd))^n, clamped to [−1, 1] unless ``clamp`` is False.

    Args:
        x: eigenvalues (curvature, loss units per parameter²), any shape.
        lr: η > 0. steps: n ≥ 0, SGD steps after the visit. weight_decay: λ_wd ≥ 0.

    Returns:
        Array shaped like ``x`` (float64); without the clamp it may hold ±inf.

    Raises:
        ValueError: lr ≤ 0, steps not an integer ≥ 0, weight_decay < 0 (or non-finite).

    Source: notebook 14, eq. (2) (f_n; here with weight decay, which adds λ_wd to every eigenvalue).
    """
    lr = check_number("lr", lr, positive=True)
    steps = check_int("steps", steps, 0)
    weight_decay = check_number("weight_decay", weight_decay, positive=False)
    base = 1.0 - lr * (np.asarray(x, dtype=np.float64) + weight_decay)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.power(base, steps)
    return np.clip(out, -1.0, 1.0) if clamp else out


@dataclass
class Visit:
    """One SGD step that saw forget points: its 1-based step index τ, learning rate η, the
    forget gradient g (flat, float64) at the weights M stepped from, and ``forget_only``: the batch
    held forget points only, so M′ did not step there (that step is not counted in the later
    exponents of the earlier visits, :func:`retain_steps_after`)."""

    step: int
    lr: float
    gradient: torch.Tensor
    forget_only: bool = False


def retain_steps_after(steps: Sequence[int], forget_only: Sequence[bool], t: int) -> list[int]:
    """n_k for visits at 1-based steps τ_k: the steps τ_k < i ≤ t on which the retrained model M′
    moves, n_k = t − τ_k − #{j : τ_k < τ_j ≤ t, forget_only_j} (module docstring, *Which steps
    count*).

    Args:
        steps: (K,) τ_k, each an integer in [0, t] (1-based; the post-hoc form's virtual τ may
            be 0). forget_only: (K,) whether visit k's batch held forget points only.
        t: the step being unlearned (M's steps since w_0).

    Returns:
        (K,) non-negative integers. Two epochs of [x*, 12 retain steps] (τ = 1, 14; t = 26):
        [24, 12].

    Raises:
        ValueError: mismatched lengths, repeated steps, a step outside [0, t].
    """
    steps = [check_int("visit step", s, 0) for s in steps]
    if len(steps) != len(forget_only):
        raise ValueError(f"steps and forget_only differ in length ({len(steps)}, {len(forget_only)})")
    if len(set(steps)) != len(steps):
        raise ValueError(f"visit steps must be distinct; got {steps}")
    for s in steps:
        if s > t:
            raise ValueError(f"visit at step {s} is after t={t}")
    skipped = sorted(s for s, only in zip(steps, forget_only) if only)
    return [t - s - (len(skipped) - int(np.searchsorted(skipped, s, side="right"))) for s in steps]


def propagated_correction(matvec: MatVec, visits: Sequence[Visit], t: int, *, krylov: int,
                          clamp: bool = True, weight_decay: float = 0.0,
                          bases: dict | None = None) -> tuple[torch.Tensor, dict]:
    """u = Σ_k η_k f_k(H̄) g_k with f_k = :func:`propagation_factor` for n_k steps, n_k from
    :func:`retain_steps_after` (the later steps on which M′ moves; t − τ_k when no visit's batch held
    forget points only).

    Args:
        matvec: H̄ v (e.g. :meth:`HessianOperator.matvec`).
        visits: the steps that saw x* (τ_k ≤ t, distinct).
        t: the step being unlearned (M's steps since w_0).
        krylov: Lanczos steps per visit. clamp, weight_decay: see :func:`propagation_factor`.
        bases: optional cache {visit index: :class:`~unroll_utils.krylov.KrylovBasis`} reused and
            filled (H̄ fixed, e.g. at w_0); visits with n_k = 0 need no HVP (f = 1: single gradient
            unlearning), nor do visits whose gradient is exactly zero.

    Returns:
        ((P,) float64 u, {"hvps": HVPs spent now, "error": Σ_k η_k·error estimate_k}).

    Raises:
        ValueError: a visit after t, repeated visit steps, or as :func:`~unroll_utils.krylov.lanczos_basis`.

    Source: notebook 14, eq. (2).
    """
    if not visits:
        raise ValueError("no visit of the forget set to unlearn")
    counts = retain_steps_after([v.step for v in visits], [v.forget_only for v in visits], t)
    u = torch.zeros_like(visits[0].gradient, dtype=torch.float64)
    hvps, error = 0, 0.0
    for i, (v, n) in enumerate(zip(visits, counts)):
        if n == 0:
            u.add_(v.gradient.to(torch.float64), alpha=v.lr)
            continue
        if not bool(v.gradient.any()):  # a zero gradient (x* fitted exactly) adds nothing
            continue
        basis = bases.get(i) if bases is not None else None
        if basis is None:
            basis = lanczos_basis(matvec, v.gradient, krylov)
            hvps += basis.n_hvp
            if bases is not None:
                bases[i] = basis
        fg, err = basis.apply(lambda x: propagation_factor(x, v.lr, n, clamp=clamp,
                                                           weight_decay=weight_decay))
        u.add_(fg, alpha=v.lr)
        error += v.lr * err
    return u, {"hvps": hvps, "error": error}


def propagated_unlearning(model: nn.Module, loss_fn, hessian_x: torch.Tensor,
                          hessian_y: torch.Tensor, forget_grad: Sequence[torch.Tensor], *,
                          lr: float, steps_after: Sequence[int], krylov: int = 10,
                          bn_mode: str = "train", clamp: bool = True,
                          weight_decay: float = 0.0) -> tuple[list[torch.Tensor], dict]:
    """Post hoc, from M alone: w‴ = w_t + Σ_k η f_k(H̄) g, H̄ at M's weights.

    Args:
        model: M at w_t (not modified).
        loss_fn: the training objective (batch mean).
        hessian_x, hessian_y: (N, ...) and (N,) the Hessian batch of H̄ (e.g. the first 128
            training points).
        forget_grad: ∇L(w_0; x*) in ``model.parameters()`` order (from
            :func:`unroll_utils.unlearning.forget_gradient` on the initial model), used for every
            visit (the gradient where M saw x* is not known post hoc).
        lr: η > 0. steps_after: n_k, an integer ≥ 0 for each visit: the later SGD steps on which
            the retrained model moves (a later step on forget points only is not counted; see
            the module docstring, *Which steps count*).
        krylov, bn_mode, clamp: see :class:`PropagatedConfig`. weight_decay: λ_wd ≥ 0.

    Returns:
        (w‴ as new tensors in ``model.parameters()`` order, {"hvps", "error", "seconds"}).

    Raises:
        ValueError: lr not > 0, ``steps_after`` empty or holding a non-integer (3.7) or a negative
            count, weight_decay not ≥ 0, krylov not an integer ≥ 1, clamp not a bool, bad
            ``bn_mode``.

    Source: notebook 14, eq. (2), with g_k = ∇L(w_0; x*) for every visit.
    """
    lr = check_number("lr", lr, positive=True)
    if isinstance(steps_after, np.ndarray):
        steps_after = steps_after.tolist()
    if isinstance(steps_after, (str, bytes)) or not isinstance(steps_after, Sequence) or not steps_after:
        raise ValueError(f"steps_after must be a non-empty list of integers >= 0; got {steps_after!r}")
    for n in steps_after:
        if not _is_int(n) or n < 0:
            raise ValueError(f"steps_after must hold integers >= 0 (steps after each visit); got {n!r}")
    steps_after = [int(n) for n in steps_after]
    krylov = check_int("krylov", krylov, 1)
    weight_decay = check_number("weight_decay", weight_decay, positive=False)
    if not isinstance(clamp, bool):
        raise ValueError(f"clamp must be True or False; got {clamp!r}")
    start = time.perf_counter()
    params = list(model.parameters())
    g = flatten(forget_grad)
    op = HessianOperator(model, loss_fn, hessian_x, hessian_y, bn_mode=bn_mode)
    info = {"hvps": 0, "error": 0.0}
    if not bool(g.any()):  # a zero gradient (x* fitted exactly) adds nothing
        u = torch.zeros_like(g)
    elif max(steps_after) == 0:  # f = 1 for every visit: single gradient unlearning, no HVP
        u = lr * len(steps_after) * g
    else:  # one gradient for every visit: Σ_k f_k(H̄) g = (Σ_k f_k)(H̄) g, one Lanczos run
        fg, err = lanczos_basis(op.matvec, g, krylov).apply(lambda x: sum(
            propagation_factor(x, lr, n, clamp=clamp, weight_decay=weight_decay) for n in steps_after))
        u, info["error"] = lr * fg, lr * err
    info["hvps"] = op.n_hvp
    with torch.no_grad():
        w = [p.detach() + d for p, d in zip(params, unflatten(u, params))]
    return w, {**info, "seconds": time.perf_counter() - start}


class PropagatedUndo:
    """The lock-step bookkeeping of Hessian-propagated single gradient unlearning.

    :meth:`record` is called *before* M's step on a batch holding forget points, so the gradient
    is taken where the trajectory saw x* (M's weights before the step, the step's BatchNorm mode
    and undo form); :meth:`correction` gives u at step t with H̄ on the fixed Hessian batch.
    Checkpoints keep the visits (one gradient of P floats each); with ``at="w0"`` the Lanczos runs
    are redone once after a resume (the VE is the same, the HVP count of that step is not).

    Args:
        config: a validated :class:`PropagatedConfig`.
        lr, weight_decay: the run's η and λ_wd. loss_fn: the training objective.
        hessian_x, hessian_y: the fixed Hessian batch (first ``config.points`` training points).
        undo_bn_mode, undo_form: as the run's single gradient unlearning.
    """

    def __init__(self, config: PropagatedConfig, lr: float, weight_decay: float, loss_fn,
                 hessian_x: torch.Tensor, hessian_y: torch.Tensor, *, undo_bn_mode: str = "train",
                 undo_form: str = "paper") -> None:
        self.config, self.lr, self.weight_decay, self.loss_fn = config, lr, weight_decay, loss_fn
        self.hessian_x, self.hessian_y = hessian_x, hessian_y
        self.undo_bn_mode, self.undo_form = undo_bn_mode, undo_form
        self.visits: list[Visit] = []
        self.bases: dict[int, KrylovBasis] = {}  # at="w0": one Lanczos run per visit, reused

    def due(self, t: int, last: bool) -> bool:
        """Whether the correction is computed at this measurement step.

        Args:
            t: the step (1-based).
            last: whether it is the run's last step.

        Returns:
            True at t = 1, at multiples of ``config.every`` and at the last step.
        """
        return t == 1 or t % self.config.every == 0 or last

    def record(self, step: int, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
               fmask: torch.Tensor) -> None:
        """Record a visit of x*: M's step number ``step`` will use a batch holding forget points.

        Call it before the step: the gradient is taken at M's current weights. A batch of forget points
        only is marked ``forget_only`` (M′ skips that step).

        Args:
            step: M's step number (1-based).
            model: M, before the step.
            xb, yb: (N_b, ...) inputs and (N_b,) labels of the batch.
            fmask: (N_b,) bool, True for the forget points.
        """
        g = forget_gradient(model, self.loss_fn, xb, yb, fmask, bn_mode=self.undo_bn_mode,
                            form=self.undo_form)
        self.visits.append(Visit(step, self.lr, flatten(g), forget_only=bool(fmask.all())))

    def correction(self, t: int, model: nn.Module, initial: nn.Module) -> tuple[list[torch.Tensor], dict]:
        """The propagated correction u at step t (w‴_t = w_t + u).

        Args:
            t: the step being unlearned.
            model: M at w_t (H̄ is taken there unless ``config.at == "w0"``).
            initial: the model at w_0 (used with ``config.at == "w0"``).

        Returns:
            (u as tensors in ``model.parameters()`` order, the row fields ``propagated_hvps``,
            ``propagated_error``, ``propagated_seconds``).

        Raises:
            ValueError: a model with frozen parameters (H̄ and the gradient differ in size), or as
                :func:`propagated_correction`.
        """
        start = time.perf_counter()
        cfg = self.config
        ops: list[HessianOperator] = []

        def matvec(v: torch.Tensor) -> torch.Tensor:  # H̄ is built only if an HVP is needed
            if not ops:
                # (the run's frozen w_0 copy has requires_grad off; the operator needs it on)
                at = copy.deepcopy(initial).requires_grad_(True) if cfg.at == "w0" else model
                ops.append(HessianOperator(at, self.loss_fn, self.hessian_x, self.hessian_y,
                                           bn_mode=cfg.bn_mode))
            if ops[0].numel != v.numel():
                raise ValueError("propagated unlearning needs every model parameter trainable "
                                 f"(H̄ has {ops[0].numel} coordinates, the gradient {v.numel()})")
            return ops[0].matvec(v)

        u, info = propagated_correction(matvec, self.visits, t, krylov=cfg.krylov, clamp=cfg.clamp,
                                        weight_decay=self.weight_decay,
                                        bases=self.bases if cfg.at == "w0" else None)
        params = list(model.parameters())
        return unflatten(u, params), {"propagated_hvps": info["hvps"],
                                      "propagated_error": info["error"],
                                      "propagated_seconds": time.perf_counter() - start}

    def state_dict(self) -> dict:
        """The recorded visits, for a run's checkpoint."""
        return {"propagated_visits": [(v.step, v.lr, v.gradient, v.forget_only) for v in self.visits]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the visits of :meth:`state_dict` (the cached Lanczos runs are dropped)."""
        # (checkpoints written before ``forget_only`` existed hold 3-tuples: counted as mixed batches)
        self.visits = [Visit(*row) for row in state["propagated_visits"]]
        self.bases = {}
