"""A re-implementation of PyHessian's top-eigenvalue loop, the baseline of benchmark row 1.

Written from a reading of ``pyhessian/hessian.py`` (class ``hessian``: ``__init__`` and
``eigenvalues``) and ``pyhessian/utils.py`` (``group_product``, ``normalization``,
``orthnormal``, ``get_params_grad``, ``hessian_vector_product``) of amirgholami/PyHessian, the
library the reference code calls (paper §2.9). It keeps every step that costs time or changes the
numbers:

* the constructor puts the model in **eval mode**, runs one forward pass on the batch and calls
  ``loss.backward(create_graph=True)``, so the gradient graph lives in ``p.grad``; the gradients
  used for the HVPs are ``p.grad + 0.`` (PyPI 0.1's ``get_params_grad``);
* ``eigenvalues(maxIter=100, tol=1e-3, top_n=1)`` starts from ``torch.randn`` per parameter
  tensor drawn from the **global** RNG (moved to the device afterwards), normalises with
  ``v / (‖v‖ + 1e-6)``, and each iteration does ``orthnormal(v, [])`` (a second normalisation),
  ``model.zero_grad()``, one double-backward HVP ``autograd.grad(gradsH, params, v,
  retain_graph=True)``, ``λ = Σ⟨Hv, v⟩`` read back with ``.item()``, ``v = normalization(Hv)``;
* it stops when ``|λ_prev − λ| / (|λ_prev| + 1e-6) < tol`` and then returns ``λ_prev`` (the estimate
  *before* the last HVP), or after ``maxIter`` HVPs with the last estimate; float32 throughout;
  the estimate is the largest-*magnitude* eigenvalue (power iteration).

Additions for benchmarking, which do not change the work of the default loop: every iteration's
estimate and elapsed time are recorded, and the same power iteration can be *continued* after the
default stopping point until a predicate on the estimate holds (e.g. within 1e-3 of a reference
value) or a total HVP budget is spent. ``top_n`` > 1 (deflation) is not needed here and not
implemented. The start vector comes from the global RNG as in PyHessian; callers seed it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


def group_product(xs, ys):
    """Σ_i ⟨x_i, y_i⟩ over lists of tensors (a 0-d tensor)."""
    return sum(torch.sum(x * y) for x, y in zip(xs, ys))


def group_add(params, update, alpha=1.0):
    """In place: params_i += alpha · update_i."""
    for p, u in zip(params, update):
        p.data.add_(u * alpha)
    return params


def normalization(v):
    """v / (‖v‖ + 1e-6), the norm read back to the host as PyHessian does."""
    s = group_product(v, v) ** 0.5
    s = s.cpu().item()
    return [vi / (s + 1e-6) for vi in v]


def orthnormal(w, v_list):
    """Orthogonalise ``w`` against each vector of ``v_list``, then normalise."""
    for v in v_list:
        w = group_add(w, v, alpha=-group_product(w, v))
    return normalization(w)


@dataclass
class PowerTrace:
    """What :meth:`PyHessianEigen.eigenvalues` did.

    Attributes:
        eigenvalue: the value the default loop returns.
        n_hvp: HVPs of the default loop (its stopping rule).
        seconds: wall time from the start of the constructor to the default stop.
        estimates, elapsed: per HVP k (1-based list index k-1), the estimate λ_k and the seconds
            since the constructor started (continued past the default stop when asked).
        reached: HVPs at which the continuation predicate first held (None if never).
        reached_seconds: elapsed seconds at that HVP.
    """

    eigenvalue: float
    n_hvp: int
    seconds: float
    estimates: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    reached: int | None = None
    reached_seconds: float | None = None


class PyHessianEigen:
    """PyHessian's ``hessian(model, criterion, data=(inputs, targets))`` for one batch.

    Side effects, as in PyHessian: the model is switched to eval mode and its ``.grad`` fields
    hold create-graph gradients afterwards; pass a copy. Call :meth:`release` when done.
    """

    def __init__(self, model: nn.Module, criterion, inputs: torch.Tensor, targets: torch.Tensor,
                 device: torch.device, t0: float | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0
        self.device = device
        self.model = model.eval()
        self.criterion = criterion
        self.inputs, self.targets = inputs.to(device), targets.to(device)
        outputs = self.model(self.inputs)
        loss = self.criterion(outputs, self.targets)
        with warnings.catch_warnings():  # PyHessian's known reference cycle (issue #25): see release()
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            loss.backward(create_graph=True)
        params, grads = [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            params.append(p)
            grads.append(0.0 if p.grad is None else p.grad + 0.0)
        self.params = params
        self.gradsH = grads

    def hessian_vector_product(self, v):
        return torch.autograd.grad(self.gradsH, self.params, grad_outputs=v, only_inputs=True,
                                   retain_graph=True)

    def eigenvalues(self, maxIter: int = 100, tol: float = 1e-3, *,
                    continue_until: Callable[[float], bool] | None = None,
                    max_total_hvp: int = 1000, sync: Callable[[], None] = lambda: None
                    ) -> PowerTrace:
        """The default loop (top_n=1), optionally continued; see the module docstring."""
        eigenvectors: list = []
        v = [torch.randn(p.size()).to(self.device) for p in self.params]
        v = normalization(v)
        eigenvalue = None
        trace: PowerTrace | None = None
        estimates: list[float] = []
        elapsed: list[float] = []
        reached = reached_s = None
        k = 0
        while True:
            v = orthnormal(v, eigenvectors)
            self.model.zero_grad()
            hv = self.hessian_vector_product(v)
            tmp_eigenvalue = group_product(hv, v).cpu().item()
            v = normalization(hv)
            k += 1
            sync()
            now = time.perf_counter() - self.t0
            estimates.append(tmp_eigenvalue)
            elapsed.append(now)
            if continue_until is not None and reached is None and continue_until(tmp_eigenvalue):
                reached, reached_s = k, now
            if trace is None:  # the default loop's own logic
                stop = False
                if eigenvalue is None:
                    eigenvalue = tmp_eigenvalue
                elif abs(eigenvalue - tmp_eigenvalue) / (abs(eigenvalue) + 1e-6) < tol:
                    stop = True  # PyHessian breaks here and returns the previous estimate
                else:
                    eigenvalue = tmp_eigenvalue
                if stop or k >= maxIter:
                    trace = PowerTrace(float(eigenvalue), k, now)
            if trace is not None and (continue_until is None or reached is not None
                                      or k >= max_total_hvp):
                break
        trace.estimates, trace.elapsed = estimates, elapsed
        trace.reached, trace.reached_seconds = reached, reached_s
        return trace

    def release(self) -> None:
        """Drop the create-graph gradients (PyHessian leaves them in ``.grad``, issue #25)."""
        for p in self.params:
            p.grad = None
        self.gradsH = None
