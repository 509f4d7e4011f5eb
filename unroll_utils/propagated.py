"""Hessian-propagated single gradient unlearning: the correction that follows the trajectory.

Single gradient unlearning (:mod:`unroll_utils.unlearning`, paper §1.3) adds back η·∇L(w; x*) for
every step τ_k that saw the forget set x*. Unrolling SGD one order further (paper §1.6) says what
became of that trace: each later step multiplies it by (I − η H_i), so after t steps

    δ_t ≈ Σ_k Π_{i>τ_k} (I − η H_i) · (−η_k ∇L(w_{τ_k − 1}; x*)),

and single gradient unlearning replaces every product by the identity. Here the products are
replaced by a matrix function of one Hessian H̄ (taken post hoc, from M alone),

    u = Σ_k η_k · f_k(H̄) · g_k,    f_k(x) = clamp((1 − η (x + λ_wd))^{n_k}, −1, 1),

with n_k = t − τ_k the steps after the k-th visit, λ_wd the weight decay (0 for plain SGD), and
f_k(H̄)·g_k applied by Lanczos on :class:`unroll_utils.hessian.HessianOperator` in ``krylov`` HVPs
(Saad 1992; Higham 2008, §13.2): f(H̄) g ≈ ‖g‖ Q_m f(T_m) e_1. The clamp keeps the powers bounded
where η·θ > 2 or θ < 0 (negative curvature), where (1 − ηθ)^n would blow up; it is a modelling
choice (SGD does not amplify those directions indefinitely in practice), not part of the expansion.
The error estimate is the norm of the last Krylov update, ‖g‖·‖f(T_m)e_1 − [f(T_{m−1})e_1; 0]‖ (the
change from m − 1 to m Lanczos steps; no extra HVP; 0 when the Krylov space is invariant, i.e. the
residual β_m vanishes). On a tiny CNN's exact Hessian it was within 0.5–2× of the true error, while
the residual term ‖g‖·β_m·|[f(T_m)]_{m,1}| (exact for smooth f in the limit) underestimated it
10–200×, because the clamp makes f non-smooth.

This is first-order in the products and linear in the Hessian; it is exact for a quadratic loss
trained by full-batch gradient descent on the retain set after x*'s step (H̄ = that Hessian). It
assumes plain SGD (momentum makes x*'s trace a different polynomial, see notebook 03 §6).

:class:`PropagatedConfig` names the choices; :class:`PropagatedUndo` is the lock-step bookkeeping
(visits recorded with the gradient where M stepped on x*, the correction computed at measurement
steps); :func:`propagated_unlearning` is the post-hoc form for a model M and a gradient at w_0.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .hessian import BN_MODES, HessianOperator
from .unlearning import forget_gradient

HESSIAN_POINTS = ("current", "w0")

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PropagatedConfig:
    """Choices of Hessian-propagated single gradient unlearning.

    Attributes:
        krylov: m ≥ 1, Lanczos steps (HVPs) per visit of x*. 10 is within 2% of 20 on the
            default main job (see notebook 14).
        points: the Hessian batch H̄ is taken on the first ``points`` training points, ≥ 1 (128,
            the main job's σ batch: on the default main job its VE was within 1% of 512 points
            at a quarter of the HVP cost).
        at: where H̄ is taken: ``"current"`` (M's weights w_t being unlearned, default) or
            ``"w0"`` (the initial weights; one Lanczos run per visit, reused at every t, but stale
            later in training).
        bn_mode: BatchNorm mode of H̄: ``"train"`` (batch statistics, as SGD trains; default) or
            ``"eval"`` (running statistics; the wrong operator for the trajectory, ~12× the
            curvature on the default job).
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
        checks = (("krylov", self.krylov >= 1, ">= 1"), ("points", self.points >= 1, ">= 1"),
                  ("at", self.at in HESSIAN_POINTS, f"one of {HESSIAN_POINTS}"),
                  ("bn_mode", self.bn_mode in BN_MODES, f"one of {BN_MODES}"),
                  ("clamp", isinstance(self.clamp, bool), "True or False"),
                  ("every", self.every >= 1, ">= 1"))
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
    """
    base = 1.0 - lr * (np.asarray(x, dtype=np.float64) + weight_decay)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.power(base, int(steps))
    return np.clip(out, -1.0, 1.0) if clamp else out


@dataclass
class KrylovBasis:
    """A Lanczos decomposition A Q_mᵀ ≈ Q_mᵀ T_m of a symmetric operator from a start vector b.

    Attributes:
        basis: (m, P) float64 orthonormal rows Q_m (q_1 = b/‖b‖).
        alphas, betas: T_m's diagonal (m,) and off-diagonal (m − 1,).
        beta_last: β_m, the norm of the last residual (0: the Krylov space is invariant).
        norm_b: ‖b‖. n_hvp: operator applications spent.
    """

    basis: torch.Tensor
    alphas: np.ndarray
    betas: np.ndarray
    beta_last: float
    norm_b: float
    n_hvp: int

    def ritz_values(self) -> np.ndarray:
        """Eigenvalues θ of T_m, ascending."""
        return self._eigh()[0]

    def _eigh(self, m: int | None = None):
        m = len(self.alphas) if m is None else m
        t = np.diag(self.alphas[:m])
        if m > 1:
            t += np.diag(self.betas[: m - 1], 1) + np.diag(self.betas[: m - 1], -1)
        return np.linalg.eigh(t)

    def _f_e1(self, f, m: int) -> np.ndarray:
        theta, s = self._eigh(m)
        return s @ (np.asarray(f(theta), dtype=np.float64) * s[0])

    def apply(self, f: Callable[[np.ndarray], np.ndarray]) -> tuple[torch.Tensor, float]:
        """f(A) b ≈ ‖b‖ Q_mᵀ f(T_m) e_1 and the error estimate ‖b‖·‖f(T_m)e_1 − [f(T_{m−1})e_1; 0]‖
        (0 when the Krylov space is invariant, β_m = 0).

        Args:
            f: vectorised scalar function of the Ritz values (e.g. :func:`propagation_factor`).

        Returns:
            ((P,) float64 vector, error estimate in the vector's units).
        """
        m = len(self.alphas)
        fte1 = self._f_e1(f, m)  # f(T_m) e_1
        coeffs = torch.as_tensor(self.norm_b * fte1, dtype=torch.float64, device=self.basis.device)
        error = 0.0
        if self.beta_last > 0:
            previous = np.zeros(m)
            if m > 1:
                previous[: m - 1] = self._f_e1(f, m - 1)
            error = self.norm_b * float(np.linalg.norm(fte1 - previous))
        return self.basis.T @ coeffs, error


def lanczos_basis(matvec: MatVec, b: torch.Tensor, krylov: int) -> KrylovBasis:
    """Run ``krylov`` Lanczos steps from b with full reorthogonalisation (twice), in float64.

    Args:
        matvec: v (P,) float64 → A v, A symmetric (e.g. :meth:`HessianOperator.matvec`).
        b: (P,) start vector (any float dtype), non-zero and finite.
        krylov: m ≥ 1; fewer steps are taken if the Krylov space becomes invariant.

    Returns:
        :class:`KrylovBasis`.

    Raises:
        ValueError: krylov < 1, or b zero or non-finite.

    Source: C. Lanczos (1950); Y. Saad, SIAM J. Numer. Anal. 29(1), 1992 (f(A)b by Krylov).
    """
    if krylov < 1:
        raise ValueError(f"krylov must be >= 1; got {krylov}")
    q = b.detach().to(torch.float64).reshape(-1)
    norm_b = float(q.norm())
    if not math.isfinite(norm_b) or norm_b == 0.0:
        raise ValueError("the start vector (the forget gradient) must be finite and non-zero")
    n = q.numel()
    m = min(krylov, n)
    basis = torch.empty(m, n, dtype=torch.float64, device=q.device)
    basis[0] = q / norm_b
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for k in range(m):
        w = matvec(basis[k]).to(torch.float64).clone()
        alphas.append(float(torch.dot(basis[k], w)))
        krylov_rows = basis[: k + 1]
        w.addmv_(krylov_rows.T, krylov_rows @ w, alpha=-1.0)
        w.addmv_(krylov_rows.T, krylov_rows @ w, alpha=-1.0)
        beta = float(w.norm())
        scale = max(max(abs(a) for a in alphas), 1e-300)
        if beta <= 1e-12 * scale:  # invariant subspace: f(T) e_1 is exact
            beta = 0.0
            break
        if k + 1 < m:
            betas.append(beta)
            basis[k + 1] = w / beta
    used = len(alphas)
    return KrylovBasis(basis[:used], np.asarray(alphas), np.asarray(betas[: used - 1]), beta,
                       norm_b, used)


@dataclass
class Visit:
    """One SGD step that saw forget points: its 1-based step index τ, learning rate η and the
    forget gradient g (flat, float64) at the weights M stepped from."""

    step: int
    lr: float
    gradient: torch.Tensor


def propagated_correction(matvec: MatVec, visits: Sequence[Visit], t: int, *, krylov: int,
                          clamp: bool = True, weight_decay: float = 0.0,
                          bases: dict | None = None) -> tuple[torch.Tensor, dict]:
    """u = Σ_k η_k f_k(H̄) g_k with f_k = :func:`propagation_factor` for n_k = t − τ_k steps.

    Args:
        matvec: H̄ v (e.g. :meth:`HessianOperator.matvec`).
        visits: the steps that saw x* (τ_k ≤ t).
        t: the step being unlearned (M's steps since w_0).
        krylov: Lanczos steps per visit. clamp, weight_decay: see :func:`propagation_factor`.
        bases: optional cache {visit index: :class:`KrylovBasis`} reused and filled (H̄ fixed,
            e.g. at w_0); visits with n_k = 0 need no HVP (f = 1: single gradient unlearning),
            nor do visits whose gradient is exactly zero.

    Returns:
        ((P,) float64 u, {"hvps": HVPs spent now, "error": Σ_k η_k·error estimate_k}).

    Raises:
        ValueError: a visit after t, or as :func:`lanczos_basis`.
    """
    if not visits:
        raise ValueError("no visit of the forget set to unlearn")
    u = torch.zeros_like(visits[0].gradient, dtype=torch.float64)
    hvps, error = 0, 0.0
    for i, v in enumerate(visits):
        n = t - v.step
        if n < 0:
            raise ValueError(f"visit at step {v.step} is after t={t}")
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


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat (P,) vector into tensors shaped (and typed) like ``like``."""
    out, i = [], 0
    for p in like:
        out.append(flat[i: i + p.numel()].reshape(p.shape).to(dtype=p.dtype, device=p.device))
        i += p.numel()
    return out


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat float64 (P,) vector."""
    return torch.cat([x.detach().reshape(-1).to(torch.float64) for x in tensors])


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
        lr: η > 0. steps_after: n_k ≥ 0 for each visit (SGD steps after it).
        krylov, bn_mode, clamp: see :class:`PropagatedConfig`. weight_decay: λ_wd ≥ 0.

    Returns:
        (w‴ as new tensors in ``model.parameters()`` order, {"hvps", "error", "seconds"}).

    Raises:
        ValueError: lr ≤ 0, an n_k < 0, no visit, bad ``bn_mode``/``krylov``.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if not steps_after or min(steps_after) < 0:
        raise ValueError(f"steps_after must hold at least one integer >= 0; got {steps_after}")
    if krylov < 1:
        raise ValueError(f"krylov must be >= 1; got {krylov}")
    start = time.perf_counter()
    params = list(model.parameters())
    g = flatten(forget_grad)
    t = max(steps_after)
    visits = [Visit(t - n, lr, g) for n in steps_after]
    op = HessianOperator(model, loss_fn, hessian_x, hessian_y, bn_mode=bn_mode)
    basis = lanczos_basis(op.matvec, g, krylov) if t > 0 and bool(g.any()) else None  # t = max n_k
    bases = {i: basis for i in range(len(visits))} if basis is not None else None
    u, info = propagated_correction(op.matvec, visits, t, krylov=krylov, clamp=clamp,
                                    weight_decay=weight_decay, bases=bases)
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
        """Computed at t = 1, multiples of ``every`` and the last step (of the measurement steps)."""
        return t == 1 or t % self.config.every == 0 or last

    def record(self, step: int, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
               fmask: torch.Tensor) -> None:
        """Record that M's step number ``step`` (1-based) will use batch (xb, yb) with forget points
        ``fmask``; call before the step (the gradient is taken at M's current weights)."""
        g = forget_gradient(model, self.loss_fn, xb, yb, fmask, bn_mode=self.undo_bn_mode,
                            form=self.undo_form)
        self.visits.append(Visit(step, self.lr, flatten(g)))

    def correction(self, t: int, model: nn.Module, initial: nn.Module) -> tuple[list[torch.Tensor], dict]:
        """u at step t (w‴_t = w_t + u, ``model.parameters()`` order) and the row fields
        ``propagated_hvps``, ``propagated_error``, ``propagated_seconds``."""
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
        return {"propagated_visits": [(v.step, v.lr, v.gradient) for v in self.visits]}

    def load_state_dict(self, state: dict) -> None:
        self.visits = [Visit(s, lr, g) for s, lr, g in state["propagated_visits"]]
        self.bases = {}
