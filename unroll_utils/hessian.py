"""The top Hessian eigenvalue and σ, from Hessian-vector products (notebook 04, eq. (1); PyHessian).

σ enters the unlearning error e = (η²/2)·t·‖w_t − w_0‖·σ. The reference code takes σ = sqrt(λ_top)
from PyHessian's power iteration (100 HVPs, eval mode, unseeded start, largest-*magnitude*
eigenvalue, NaN when it is negative). Here:

* :class:`HessianOperator`: H = ∇²_w L(w; X, Y) as a matrix-free operator on flat vectors that never
  touches the model; ``micro_batch`` accumulates each HVP over micro-batches (PyHessian's loader).
* :func:`lanczos_top_eigen` (full reorthogonalisation) and :func:`power_top_eigen`: the
  algebraically largest (``which="LA"``) or largest-magnitude (``"LM"``) eigenvalue of any
  symmetric operator, stopping on the residual ‖Hv − λv‖ ≤ tol·|λ| or (Lanczos) on the
  Kato–Temple eigenvalue error estimate (``stop="eigenvalue"``).
* :func:`estimate_sigma` maps λ to σ under a named convention: ``"sqrt_eig"`` (the reference,
  σ = sqrt(λ_max), 0 — never NaN — when λ_max ≤ 0) or ``"abs_eig"`` (max|λ|).
* σ comes from the data loss L alone by default (the reference code); ``weight_decay=wd`` takes it
  from L + ½·wd·‖w‖² (Hessian ∇²L + wd·I). Works inside ``torch.no_grad()`` (not inference_mode).
  λ_max along a trajectory (σ at every step): :mod:`unroll_utils.eigen_tracking`.
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

MatVec = Callable[[torch.Tensor], torch.Tensor]

BN_MODES = ("eval", "train")
WHICH = ("LA", "LM")
SIGMA_CONVENTIONS = ("sqrt_eig", "abs_eig")
METHODS = ("lanczos", "power")
TRACK_METHOD = "track"
STOP_RULES = ("residual", "eigenvalue")


@dataclass(frozen=True)
class TopEigen:
    """Result of a top-eigenvalue solve.

    Attributes:
        eigenvalue: algebraically largest (``which="LA"``) or largest-magnitude (``"LM"``); may be < 0.
        eigenvector: (P,) float64 unit vector, flat in ``model.parameters()`` order.
        residual: ‖Hv − λv‖₂ of the pair (Lanczos: the Ritz residual |β_k·s_k|). n_hvp: HVPs spent.
        converged: ``stop`` was met within ``max_iter``. which: ``"LA"`` or ``"LM"``.
        method: ``"lanczos"``, ``"power"``, or a tracker's (:mod:`unroll_utils.eigen_tracking`).
        bn_mode: ``"eval"``/``"train"`` (``""``: not from a model). stop: the stopping rule.
        error_bound: estimate of |λ − eigenvalue|: min(ρ, ρ²/δ) (Lanczos), ρ (power), a tracker's.
        gap: δ behind ``error_bound`` (Lanczos: |θ − θ'| − ρ', NaN if not > 0; trackers: assumed).
    """

    eigenvalue: float
    eigenvector: torch.Tensor
    residual: float
    n_hvp: int
    converged: bool
    method: str
    which: str
    bn_mode: str = ""
    error_bound: float = math.nan
    stop: str = "residual"
    gap: float = math.nan


@contextlib.contextmanager
def preserved_modes(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Temporarily set every module's train/eval flag; restore each module's own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class HessianOperator:
    """H = ∇²_w L(w; X, Y) (+ wd·I) of a model at its current weights, as a matrix-free operator.

    The forward pass and create-graph gradient are built once (under ``torch.enable_grad()``);
    each :meth:`matvec` is one double backward (one HVP). The model is left as found (detached
    parameters, cloned buffers, no ``.grad``, flags restored). Parameters the loss does not reach
    keep their coordinates with a zero Hessian block: P counts every trainable entry, in
    ``model.named_parameters()`` order.

    **Micro-batches** (PyHessian's ``dataloader_hv_product``): ``micro_batch`` splits the N points
    into consecutive sizes n_1..n_J and accumulates H v = Σ_j (n_j/N)·H_j v (:attr:`loss` and
    :attr:`gradient` likewise); each HVP reruns a forward and a double backward per micro-batch,
    so memory is one micro-batch's. With ``bn_mode="eval"`` this is exactly the full-batch
    mean-loss HVP (float32 summation order aside, ≈ 1e-6); with ``"train"`` each micro-batch uses
    its own BatchNorm statistics, so it is the size-weighted mean of the micro-batches' Hessians,
    not the full-batch one (dropout masks are seeded per micro-batch: one fixed symmetric matrix).
    Any per-example mean loss (cross-entropy, the SD loss) decomposes this way.

    Args:
        model: the network; its trainable parameters define the P coordinates.
        loss_fn: ``loss(logits, targets) -> scalar`` (batch mean), e.g. the training objective.
        inputs: (N, ...) batch on the model's device. targets: (N,) labels.
        bn_mode: ``"eval"`` (default, as PyHessian/the reference code) or ``"train"``.
        weight_decay: wd ≥ 0: the Hessian of L + ½·wd·‖w‖² (every eigenvalue + wd; :attr:`loss`
            and :attr:`gradient` too). Default 0: the data loss alone, as the reference code's σ.
        micro_batch: None (default, one pass), an int m ≥ 1 (micro-batches of m, the last one
            smaller) or positive ints summing to N; :attr:`micro_sizes` holds the sizes used.

    Raises:
        ValueError: unknown ``bn_mode``, negative or non-finite ``weight_decay``, empty batch, no
            trainable parameters, a bad ``micro_batch`` (named, with N). RuntimeError: inside
            ``torch.inference_mode()`` (``torch.no_grad()`` is fine).

    Source: notebook 04, eq. (1) (σ from the top eigenvalue), without PyHessian's side effects.
    """

    def __init__(self, model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor,
                 *, bn_mode: str = "eval", weight_decay: float = 0.0,
                 micro_batch: int | Sequence[int] | None = None) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}; got {bn_mode!r}")
        _check_weight_decay(weight_decay)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("HessianOperator needs a gradient graph, which torch.inference_mode() "
                               "forbids; call it outside inference_mode (torch.no_grad() is fine)")
        if inputs.shape[0] == 0:
            raise ValueError("inputs must hold at least one example (got an empty batch)")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters")
        self.names, self.shapes = [n for n, _ in named], [p.shape for _, p in named]
        self.bn_mode, self.weight_decay = bn_mode, float(weight_decay)
        # clones are ordinary tensors even when the originals were made under inference_mode
        inputs, targets = _usable(inputs), _usable(targets)
        self.micro_sizes = micro_batch_sizes(micro_batch, int(inputs.shape[0]))
        self._params = [p.detach().clone().requires_grad_(True) for _, p in named]
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self._model, self._loss_fn = model, loss_fn
        self._state = {**dict(zip(self.names, self._params)), **buffers}
        self._flat_params = torch.cat([p.detach().reshape(-1) for p in self._params])
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        if len(self.micro_sizes) == 1:
            loss, self._flat_grad = self._graph(inputs, targets, 0)  # kept: one backward per HVP
            data_loss = float(loss.detach())
        else:
            n, start = int(inputs.shape[0]), 0
            for size in self.micro_sizes:
                self._chunks.append((inputs[start:start + size], targets[start:start + size], size / n))
                start += size
            data_loss, grad = 0.0, None
            for j, (x, y, weight) in enumerate(self._chunks):
                loss, g = self._graph(x, y, j)
                data_loss += weight * float(loss.detach())
                g = g.detach() * weight
                grad = g if grad is None else grad + g
            self._flat_grad = grad
        self.loss = data_loss + 0.5 * self.weight_decay * float(self._flat_params.double().square().sum())
        self.numel, self.n_hvp = self._flat_grad.numel(), 0
        self.device, self.dtype = self._flat_grad.device, self._flat_grad.dtype

    def _graph(self, x: torch.Tensor, y: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, flat gradient with its graph) on (x, y); in train mode with several micro-batches
        the forward pass's random numbers (dropout) are seeded with the micro-batch's index."""
        training = self.bn_mode == "train"
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(preserved_modes(self._model, training=training))
            if training and len(self.micro_sizes) > 1:
                devices = [x.device] if x.device.type == "cuda" else []
                stack.enter_context(torch.random.fork_rng(devices=devices))
                torch.manual_seed(index)
            loss = self._loss_fn(functional_call(self._model, self._state, (x,)), y)
            grads = torch.autograd.grad(loss, self._params, create_graph=True, allow_unused=True)
            # an unused parameter's gradient is None: its gradient and Hessian block are zero
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                              for g, p in zip(grads, self._params)])
        return loss, flat

    @property
    def gradient(self) -> torch.Tensor:
        """(P,) float64 gradient ∇_w L (+ wd·w) at the operator's weights."""
        g = self._flat_grad.detach().double()
        return g + self.weight_decay * self._flat_params.double() if self.weight_decay else g

    def _second_backward(self, grad_outputs: torch.Tensor, batched: bool) -> list[torch.Tensor]:
        """∂(gradient · grad_outputs)/∂w per parameter (zeros if unreached), summed over micro-batches."""
        if not self._chunks:
            return self._rows(self._flat_grad, grad_outputs, batched, retain=True)
        total = None
        for j, (x, y, weight) in enumerate(self._chunks):
            rows = [r.mul_(weight) for r in self._rows(self._graph(x, y, j)[1], grad_outputs, batched,
                                                        retain=False)]
            total = rows if total is None else [t.add_(r) for t, r in zip(total, rows)]
        return total

    def _rows(self, flat_grad: torch.Tensor, grad_outputs: torch.Tensor, batched: bool,
              retain: bool) -> list[torch.Tensor]:
        lead = grad_outputs.shape[:1] if batched else ()
        if not flat_grad.requires_grad:  # the loss is at most linear in w: H = 0
            return [torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device) for p in self._params]
        with torch.enable_grad():
            rows = torch.autograd.grad(flat_grad, self._params, grad_outputs=grad_outputs,
                                       retain_graph=retain, allow_unused=True,
                                       is_grads_batched=batched)
        return [r if r is not None else torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device)
                for r, p in zip(rows, self._params)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v (+ wd·v) for a (P,) vector (any float dtype and device): a (P,) tensor on ``v``'s
        device, in ``v``'s dtype if float32/float64, else float64. ValueError for a wrong shape."""
        if v.shape != (self.numel,):
            raise ValueError(f"v must have shape ({self.numel},); got {tuple(v.shape)}")
        return self._apply(v, batched=False)

    __call__ = matvec

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        """H V (+ wd·V) row by row for a (k, P) block, through one batched double backward
        (``is_grads_batched``; k HVPs). Dtypes as :meth:`matvec`; ValueError for a wrong shape."""
        if v.dim() != 2 or v.shape[1] != self.numel:
            raise ValueError(f"v must have shape (k, {self.numel}); got {tuple(v.shape)}")
        return self._apply(v, batched=True)

    def _apply(self, v: torch.Tensor, batched: bool) -> torch.Tensor:
        vv = v.to(device=self.device, dtype=self.dtype)
        lead = v.shape[:1] if batched else ()
        hv = torch.cat([h.reshape(*lead, -1) for h in self._second_backward(vv, batched)], dim=-1)
        if self.weight_decay:
            hv = hv.add(vv, alpha=self.weight_decay)
        self.n_hvp += v.shape[0] if batched else 1
        out = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float64
        return hv.to(device=v.device, dtype=out)

    def dense(self) -> torch.Tensor:
        """The full (P, P) float64 Hessian (+ wd·I) from P batched HVPs. Tiny models only."""
        rows = self._second_backward(torch.eye(self.numel, device=self.device, dtype=self.dtype), True)
        self.n_hvp += self.numel
        h = torch.cat([r.reshape(self.numel, -1) for r in rows], dim=1).double()
        return h + self.weight_decay * torch.eye(self.numel, dtype=h.dtype, device=h.device)


def micro_batch_sizes(micro_batch: int | Sequence[int] | None, n: int) -> list[int]:
    """Sizes for ``micro_batch`` over n points (:class:`HessianOperator`): None → [n], an int m ≥ 1 →
    [m, ..., m, n mod m], positive ints summing to n → those; else ValueError naming it."""
    if micro_batch is None:
        return [n]
    if isinstance(micro_batch, (int, np.integer)) and not isinstance(micro_batch, bool):
        m = int(micro_batch)
        if m < 1:
            raise ValueError(f"micro_batch must be None, an integer >= 1 or sizes summing to N={n}; got {m}")
        return [min(m, n - start) for start in range(0, n, m)]
    try:
        sizes = [operator.index(s) for s in micro_batch if not isinstance(s, bool)]
        ok = len(sizes) == len(micro_batch) and sizes and all(s >= 1 for s in sizes) and sum(sizes) == n
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"micro_batch must be None, an integer >= 1 or positive integer sizes summing to "
                         f"N={n} (the Hessian batch); got {micro_batch!r}")
    return sizes


def _check_weight_decay(weight_decay: float) -> None:
    if not (math.isfinite(float(weight_decay)) and float(weight_decay) >= 0.0):
        raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay}")


def _usable(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or an ordinary clone of an inference-mode tensor (autograd refuses those)."""
    return t.clone() if t.is_inference() else t


def _start_vector(n: int, init: torch.Tensor | None, generator: torch.Generator | None,
                  device) -> torch.Tensor:
    if init is not None:
        v = init.detach().to(device=device, dtype=torch.float64).reshape(-1).clone()
        if v.numel() != n:
            raise ValueError(f"init must have {n} elements; got {v.numel()}")
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ValueError("init must be a finite, non-zero vector")
    else:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        v = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    return v / v.norm()


def _check_solver_args(which: str, tol: float, max_iter: int, stop: str = "residual") -> None:
    if stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {STOP_RULES}; got {stop!r}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}; got {which!r}")
    if not (0.0 < tol < 1.0):
        raise ValueError(f"tol must be in (0, 1); got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")


def lanczos_top_eigen(matvec: MatVec, n: int, *, which: str = "LA", tol: float = 1e-3,
                      max_iter: int = 100, init: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, device=None,
                      stop: str = "residual") -> TopEigen:
    """Top eigenpair of a symmetric operator by Lanczos with full reorthogonalisation.

    One ``matvec`` per iteration; the Ritz pair (θ, y) comes from the tridiagonal matrix, with
    residual ρ = ‖Hy − θy‖ = |β_k·s_k|. ``stop="residual"`` (default): ρ ≤ tol·|θ|, which puts
    *an* eigenvalue within tol·|θ| (and usually over-solves λ by orders of magnitude).
    ``stop="eigenvalue"``: min(ρ, ρ²/δ) ≤ tol·|θ|, the Kato–Temple error with the gap estimated
    from the Ritz values, δ = |θ − θ'| − ρ' (θ' the nearest other Ritz value, ρ' its residual;
    quadratic term only while δ > 0): fewer HVPs, but a heuristic — while an eigenvalue close to
    the top has not entered the Krylov space it can stop on the wrong one (seen on synthetic
    spectra with λ₂/λ₁ ≥ 0.9; on CNN Hessians, λ₂/λ₁ ≈ 0.6, its errors stayed below tol).
    The basis is float64 (float32 inner products over millions of entries push θ above λ_max).

    Args:
        matvec: v (P,) float64 → H v (P,), H symmetric, any float dtype (never modified).
        n: P. which: ``"LA"`` (default) or ``"LM"``. tol: in (0, 1).
        max_iter: at most this many matvecs (the Krylov dimension), ≥ 1.
        init: optional (P,) start vector (warm start); else a random one from ``generator``
            (default: a fresh generator seeded 0; the global RNG is never consumed).
        device: where vectors live (default CPU). stop: ``"residual"`` or ``"eigenvalue"``.

    Returns :class:`TopEigen`, ``method="lanczos"``, ``error_bound`` = min(ρ, ρ²/δ) (ρ before a
    gap). Raises ValueError for a bad ``which``, ``tol``, ``max_iter``, ``stop`` or ``init``.
    """
    _check_solver_args(which, tol, max_iter, stop)
    device = device if device is not None else (init.device if init is not None else "cpu")
    rows = min(max_iter, n)  # the basis starts at 16 rows and grows by doubling (memory ∝ iterations)
    basis = torch.empty(min(rows, 16), n, dtype=torch.float64, device=device)
    basis[0] = _start_vector(n, init, generator, device)
    w = torch.empty(n, dtype=torch.float64, device=device)  # the one work vector, reused
    alphas, betas = [], []
    theta, s, resid, bound, converged = 0.0, np.ones(1), float("inf"), float("inf"), False
    gap_used = math.nan
    for k in range(rows):
        q = basis[k]
        w.copy_(matvec(q))  # matvec's output is never modified
        alpha = float(torch.dot(q, w))
        alphas.append(alpha)
        # full reorthogonalisation, twice ("twice is enough"), in place: no model-sized
        # temporaries (they dominated the cost for 11M-parameter models on CPU)
        krylov = basis[: k + 1]
        w.addmv_(krylov.T, krylov @ w, alpha=-1.0)
        w.addmv_(krylov.T, krylov @ w, alpha=-1.0)
        beta = float(w.norm())
        evals, evecs = _tridiag_eigh(alphas, betas)
        idx = int(np.argmax(evals)) if which == "LA" else int(np.argmax(np.abs(evals)))
        theta, s = float(evals[idx]), evecs[:, idx]
        resid = abs(beta * s[-1])
        bound = resid
        if len(evals) > 1:  # Kato–Temple with the gap to the nearest other Ritz value
            others = np.delete(np.arange(len(evals)), idx)
            j = others[int(np.argmin(np.abs(evals[others] - theta)))]
            gap = abs(theta - float(evals[j])) - abs(beta * evecs[-1, j])
            gap_used = gap if gap > 0 else math.nan
            if gap > 0:
                bound = min(resid, resid * resid / gap)
        if (bound if stop == "eigenvalue" else resid) <= tol * abs(theta):
            converged = True
            break
        if beta <= 1e-12 * max(abs(theta), 1e-300):  # invariant subspace: the Ritz pairs are exact
            converged, bound = True, 0.0
            break
        betas.append(beta)
        if k + 1 == rows:
            break
        if k + 1 == basis.shape[0]:
            basis = torch.cat([basis, torch.empty(min(k + 1, rows - k - 1), n, dtype=torch.float64,
                                                  device=device)])
        torch.div(w, beta, out=basis[k + 1])
    m = len(alphas)
    vec = basis[:m].T @ torch.as_tensor(s, dtype=torch.float64, device=device)
    vec /= vec.norm()
    return TopEigen(theta, vec, float(resid), m, bool(converged), "lanczos", which,
                    error_bound=float(bound), stop=stop, gap=float(gap_used))


def _tridiag_eigh(alphas: list[float], betas: list[float]):
    t = np.diag(np.asarray(alphas))
    if betas:
        off = np.asarray(betas[: len(alphas) - 1])
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)


def power_top_eigen(matvec: MatVec, n: int, *, which: str = "LA", tol: float = 1e-3,
                    max_iter: int = 100, init: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, device=None) -> TopEigen:
    """Top eigenpair of a symmetric operator by power iteration with a residual stopping rule.

    Power iteration finds the largest-*magnitude* eigenvalue μ; for ``which="LA"`` and μ < 0 it
    reruns on H − μI (spectrum ≥ 0) and shifts back, so the algebraically largest is returned.
    Args, Returns and Raises as :func:`lanczos_top_eigen` (``method="power"``, no ``stop``);
    ``n_hvp`` counts both runs."""
    _check_solver_args(which, tol, max_iter)
    device = device if device is not None else (init.device if init is not None else "cpu")
    v0 = _start_vector(n, init, generator, device)
    res = _power(matvec, v0, tol, max_iter)
    if which == "LA" and res.eigenvalue < 0:
        shifted = _power(matvec, v0, tol, max_iter, shift=res.eigenvalue)
        res = TopEigen(shifted.eigenvalue, shifted.eigenvector, shifted.residual,
                       res.n_hvp + shifted.n_hvp, shifted.converged, "power", which)
    return TopEigen(res.eigenvalue, res.eigenvector, res.residual, res.n_hvp, res.converged,
                    "power", which, error_bound=res.residual)


def _power(matvec: MatVec, v: torch.Tensor, tol: float, max_iter: int,
           shift: float = 0.0) -> TopEigen:
    """Power iteration on H − shift·I; returns the eigenvalue of H (shift added back)."""
    lam, resid, converged, k = 0.0, float("inf"), False, 0
    for k in range(1, max_iter + 1):
        hv = matvec(v).to(dtype=torch.float64, device=v.device)
        if shift != 0.0:  # (no model-sized temporaries for the usual unshifted run)
            hv = hv - shift * v
        theta = float(torch.dot(v, hv))
        lam = theta + shift
        resid = float((hv - theta * v).norm())  # = ‖Hv − λv‖
        norm = hv.norm()
        if resid <= tol * abs(lam) or float(norm) == 0.0:  # (norm 0: an exact eigenvector, θ = 0)
            converged = True
            break
        v = hv / norm
    return TopEigen(lam, v, resid, k, converged, "power", "LM")


def top_hessian_eigenvalue(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor,
                           *, method: str = "lanczos", which: str = "LA", tol: float = 1e-3,
                           max_iter: int = 100, init: torch.Tensor | None = None,
                           generator: torch.Generator | None = None, bn_mode: str = "eval",
                           stop: str = "residual", weight_decay: float = 0.0,
                           micro_batch: int | Sequence[int] | None = None) -> TopEigen:
    """Top eigenvalue of the loss Hessian ∇²_w L(w; X, Y) (+ wd·I) at the model's current weights.

    Works inside ``torch.no_grad()``; the model is left exactly as found.

    Args:
        model, inputs (N, ...), targets (N,): the network and the Hessian batch (e.g. 512 fixed
            points or the current batch). loss_fn: batch-mean training objective (the loss M trains on).
        method: ``"lanczos"`` (default) or ``"power"``. which: ``"LA"`` (default) or ``"LM"``
            (PyHessian's). tol, max_iter, init, generator, stop: as :func:`lanczos_top_eigen`
            (``stop="eigenvalue"`` is Lanczos only).
        bn_mode, weight_decay, micro_batch: as :class:`HessianOperator` (micro-batches: the same
            eigenvalue in eval mode for a fraction of the memory).

    Returns :class:`TopEigen` (eigenvalue in loss units per parameter², i.e. the curvature).

    Raises:
        ValueError: unknown ``method``/``which``/``bn_mode``/``stop`` (``"eigenvalue"`` with
            ``method="power"``), bad ``tol``/``max_iter``/``init``/``weight_decay``/``micro_batch``.
        RuntimeError: inside ``torch.inference_mode()``.

    Source: notebook 04, eq. (1); PyHessian's `hessian(...).eigenvalues()` (what the reference calls).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    _check_solver_args(which, tol, max_iter, stop)
    _check_weight_decay(weight_decay)
    if method == "power" and stop != "residual":
        raise ValueError(f"stop={stop!r} needs method='lanczos' (power iteration has no gap "
                         "estimate); use stop='residual' with method='power'")
    op = HessianOperator(model, loss_fn, inputs, targets, bn_mode=bn_mode,
                         weight_decay=weight_decay, micro_batch=micro_batch)
    kwargs = {"stop": stop} if method == "lanczos" else {}
    solver = lanczos_top_eigen if method == "lanczos" else power_top_eigen
    res = solver(op.matvec, op.numel, which=which, tol=tol, max_iter=max_iter, init=init,
                 generator=generator, device=op.device, **kwargs)
    return TopEigen(res.eigenvalue, res.eigenvector, res.residual, res.n_hvp, res.converged,
                    res.method, res.which, bn_mode, res.error_bound, res.stop, res.gap)


def sigma_from_eigenvalue(eigenvalue: float, convention: str = "sqrt_eig") -> float:
    """σ from a top eigenvalue: ``"sqrt_eig"`` σ = sqrt(λ_max) as in the reference code (0, never
    NaN, when λ_max ≤ 0; log λ to see the sign) or ``"abs_eig"`` σ = |λ| (the largest singular
    value of the symmetric Hessian, from the largest-magnitude eigenvalue). ValueError for an
    unknown ``convention`` or a non-finite eigenvalue. Source: `Unlearning/correlation_verification.py`."""
    if convention not in SIGMA_CONVENTIONS:
        raise ValueError(f"convention must be one of {SIGMA_CONVENTIONS}; got {convention!r}")
    if not math.isfinite(eigenvalue):
        raise ValueError(f"eigenvalue must be finite; got {eigenvalue}")
    if convention == "abs_eig":
        return abs(float(eigenvalue))
    return math.sqrt(max(float(eigenvalue), 0.0))


def estimate_sigma(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *,
                   convention: str = "sqrt_eig", weight_decay: float = 0.0,
                   **kwargs) -> tuple[float, TopEigen]:
    """(σ, :class:`TopEigen`) for the unlearning error: ``"sqrt_eig"`` solves for the algebraically
    largest eigenvalue, ``"abs_eig"`` for the largest-magnitude one; ``weight_decay`` (wd ≥ 0,
    default 0: the data loss alone, as the reference code) takes σ from L + ½·wd·‖w‖² (λ_max + wd).
    Other keyword arguments go to :func:`top_hessian_eigenvalue`, whose errors it raises (and
    :func:`sigma_from_eigenvalue`'s)."""
    if convention not in SIGMA_CONVENTIONS:
        raise ValueError(f"convention must be one of {SIGMA_CONVENTIONS}; got {convention!r}")
    which = "LA" if convention == "sqrt_eig" else "LM"
    res = top_hessian_eigenvalue(model, loss_fn, inputs, targets, which=which,
                                 weight_decay=weight_decay, **kwargs)
    return sigma_from_eigenvalue(res.eigenvalue, convention), res
