"""Matrix functions of a symmetric operator by Lanczos: f(A) b from m operator applications.

Hessian-propagated single gradient unlearning (:mod:`unroll_utils.propagated`, notebook 14, eq. (2))
needs f(H̄)·g for a polynomial-like f of a Hessian H̄ that is only available through Hessian-vector
products. :func:`lanczos_basis` runs m Lanczos steps from b (full reorthogonalisation, float64) and
returns a :class:`KrylovBasis` A Q_mᵀ ≈ Q_mᵀ T_m; :meth:`KrylovBasis.apply` gives

    f(A) b ≈ ‖b‖ Q_mᵀ f(T_m) e_1

(Saad 1992; Higham 2008, §13.2) with an error estimate, the norm of the last Krylov update
‖b‖·‖f(T_m)e_1 − [f(T_{m−1})e_1; 0]‖ (no extra operator application; 0 when the Krylov space is
invariant). :func:`flatten` and :func:`unflatten` turn a model's parameter tensors into the flat
(P,) float64 vectors the operator acts on and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["MatVec", "check_int", "KrylovBasis", "lanczos_basis", "flatten", "unflatten"]

#: An operator given by its product: v (P,) → A v (P,), A symmetric (e.g. a Hessian-vector product).
MatVec = Callable[[torch.Tensor], torch.Tensor]


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(name: str, value, low: int) -> int:
    """``value`` as an int if it is an integer ≥ ``low`` (not a bool, not a float such as 2.5),
    else ValueError naming ``name`` and the allowed range."""
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


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
            f: vectorised scalar function of the Ritz values (e.g.
                :func:`unroll_utils.propagated.propagation_factor`).

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
        matvec: v (P,) float64 → A v, A symmetric (e.g.
            :meth:`unroll_utils.hessian.HessianOperator.matvec`).
        b: (P,) start vector (any float dtype), non-zero and finite.
        krylov: m ≥ 1; fewer steps are taken if the Krylov space becomes invariant.

    Returns:
        :class:`KrylovBasis`.

    Raises:
        ValueError: krylov not an integer ≥ 1, or b zero or non-finite.

    Source: C. Lanczos (1950); Y. Saad, SIAM J. Numer. Anal. 29(1), 1992 (f(A)b by Krylov).
    """
    krylov = check_int("krylov", krylov, 1)
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
