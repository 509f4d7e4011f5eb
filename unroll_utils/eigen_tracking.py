"""λ_max along a trajectory for about one block of HVPs per step (notebook 04, eq. (1); Exp A, notebook 07).

σ at every step (the reference's Exp A/B schedule, ``correlation_verification.py``) needs λ_max of
a Hessian that moves a little per step. Both trackers carry what the last step found, take any
symmetric operator as ``matvec`` (e.g. :meth:`unroll_utils.hessian.HessianOperator.matvec`) and
return :class:`unroll_utils.hessian.TopEigen`, solving only when their error estimate fails:

* :class:`TopEigenTracker`: one vector, one HVP per step, Kato–Temple with the gap λ_max − λ₂ of
  the last full solve, which two eigenvalues approaching or crossing can break.
* :class:`BlockEigenTracker`: k vectors, k HVPs per step, a Lehmann/Kato–Temple-type bound that
  needs only the gap to the spectrum *outside* the block, so the top two may cross.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch

from .hessian import TRACK_METHOD, MatVec, TopEigen, _check_solver_args, lanczos_top_eigen

MatMat = Callable[[torch.Tensor], torch.Tensor]
BLOCK_SOLVE_METHOD = "block_lanczos"


class TopEigenTracker:
    """The top (algebraically largest) Hessian eigenvalue along a trajectory, ≈ 1 HVP per step.

    A unit vector v is carried from step to step; at each new operator H one HVP gives θ = vᵀHv,
    ρ = ‖Hv − θv‖ and the estimate ε = min(ρ, ρ²/δ), δ = θ·g·s (g: the relative gap of the last
    full solve, s = ``gap_safety``). Its quadratic term is the **Kato–Temple** bound: for any α
    with λ₂ ≤ α < θ, θ ≤ λ_max ≤ θ + ρ²/(θ − α) (Kato 1949; Parlett, *The Symmetric Eigenvalue
    Problem*, Thm 10.8.1; θ ≤ λ_max holds for every unit v). With α = θ − δ it is a bound exactly
    when λ₂ ≤ θ·(1 − g·s), i.e. when the relative gap (λ_max − λ₂)/λ_max is still at least s times
    the one measured at the last Lanczos solve (g = δ_L/θ_L, δ_L = θ_L − θ'_L − ρ'_L that solve's
    Kato–Temple gap; only solves with a Krylov space of ≥ 4 vectors update g). That assumption is
    not checked, and two eigenvalues that approach or cross between full solves break it (then θ
    can sit below λ_max by more than ε); :class:`BlockEigenTracker` does not depend on λ₂.

    When ε ≤ tol·θ the step is accepted (``method="track"``, ``n_hvp=1``) and Hv/‖Hv‖ is carried
    on (a free power step). Otherwise it **falls back** to :func:`lanczos_top_eigen` warm-started
    from v, reusing the HVP already spent, and stopping on the same estimate (``stop="eigenvalue"``:
    a residual rule at max(tol, sqrt(tol·g·s)); ``"residual"``: ρ ≤ tol·θ), not on the short warm
    Krylov space's own gap, whose second Ritz value can sit far below λ₂; the reported
    ``error_bound`` is min(ρ, ρ²/δ) of the Ritz pair (after a fallback that re-measured g it can
    end slightly above tol·θ). The first call is a cold Lanczos solve to the residual rule at
    min(tol, 1e-3), which also resolves the second Ritz value for g.

    Args:
        tol: relative tolerance in (0, 1) of acceptance and fallbacks (σ = sqrt(λ), and e_t ∝ σ,
            then within about tol/2).
        max_iter: HVP budget of a fallback solve, ≥ 1.
        stop: the fallback's rule, ``"eigenvalue"`` (default) or ``"residual"`` (more HVPs).
        generator: torch.Generator for the first (cold) solve's start vector (default seeded 0).
        gap_safety: s in (0, 1], the fraction of the last measured relative gap assumed to hold
            (default 0.5: the gap may halve between two full solves).

    Raises:
        ValueError: ``tol`` outside (0, 1), ``max_iter`` < 1, an unknown ``stop`` or
            ``gap_safety`` outside (0, 1].

    Source: σ at every step of Exp A (`Unlearning/correlation_verification.py`); Kato–Temple above.
    """

    MIN_GAP_KRYLOV = 4  # Krylov dimension a solve needs before its gap updates g

    def __init__(self, *, tol: float = 1e-2, max_iter: int = 100, stop: str = "eigenvalue",
                 generator: torch.Generator | None = None, gap_safety: float = 0.5) -> None:
        _check_solver_args("LA", tol, max_iter, stop)
        if not 0.0 < gap_safety <= 1.0:
            raise ValueError(f"gap_safety must be in (0, 1]; got {gap_safety}")
        self.tol, self.max_iter, self.stop = float(tol), int(max_iter), stop
        self.gap_safety = float(gap_safety)
        self.generator = generator
        self.eigenvector: torch.Tensor | None = None
        self.gap_ratio = math.nan  # g = δ/θ of the last full solve with a Krylov space of ≥ 4
        self.n_tracked = 0
        self.n_fallback = 0

    def update(self, matvec: MatVec, n: int, *, device=None) -> TopEigen:
        """The top eigenpair of the operator at this step (see the class docstring).

        Args:
            matvec: v (P,) float64 → H v (P,), H symmetric (e.g. :meth:`HessianOperator.matvec`).
            n: P.
            device: where vectors live (default CPU).

        Returns:
            :class:`TopEigen`: ``method="track"`` (1 HVP, ``error_bound`` = ε, ``gap`` = δ) for an
            accepted step, else the fallback's ``"lanczos"`` result (its ``n_hvp`` includes the
            tracking HVP it reused).
        """
        device = device if device is not None else "cpu"
        if self.eigenvector is None:
            return self._solve(matvec, n, device, None, None, "residual", min(self.tol, 1e-3))
        v = self.eigenvector.to(device=device, dtype=torch.float64)
        v = v / v.norm()
        hv = matvec(v).to(device=device, dtype=torch.float64)
        theta = float(torch.dot(v, hv))
        rho = float((hv - theta * v).norm())
        gap = self._gap(theta)
        bound = self._estimate(rho, gap)
        if bound <= self.tol * abs(theta):
            self.n_tracked += 1
            norm = float(hv.norm())
            self.eigenvector = hv / norm if math.isfinite(norm) and norm > 0 else v
            return TopEigen(theta, v, rho, 1, True, TRACK_METHOD, "LA", error_bound=bound,
                            stop=self.stop, gap=gap)
        return self._solve(matvec, n, device, v, hv, "residual", self._fallback_tol(gap, theta))

    def _solve(self, matvec: MatVec, n: int, device, init, first_hv, stop: str,
               tol: float) -> TopEigen:
        """Lanczos (warm-started from ``init``, reusing ``first_hv`` = H·init); updates the state."""
        pending = [first_hv]

        def reuse_first(q: torch.Tensor) -> torch.Tensor:
            if pending[0] is not None:
                hv, pending[0] = pending[0], None
                return hv
            return matvec(q)

        res = lanczos_top_eigen(reuse_first, n, which="LA", tol=tol, max_iter=self.max_iter,
                                init=init, generator=self.generator, device=device, stop=stop)
        self.eigenvector = res.eigenvector
        if res.n_hvp >= self.MIN_GAP_KRYLOV and res.eigenvalue > 0 and res.gap > 0:
            self.gap_ratio = res.gap / res.eigenvalue
        if init is None:
            return res
        self.n_fallback += 1
        # report the tracker's estimate (Kato–Temple with the assumed gap θ·g), not the one from
        # a short warm-started Krylov space, whose second Ritz value can sit far below λ₂
        gap = self._gap(res.eigenvalue)
        return dataclasses.replace(res, error_bound=float(self._estimate(res.residual, gap)),
                                   gap=float(gap))

    @staticmethod
    def _estimate(rho: float, gap: float) -> float:
        """The error estimate ε = min(ρ, ρ²/δ) of a Rayleigh quotient with residual ρ and assumed
        gap δ (∞ while no gap has been measured)."""
        return min(rho, rho * rho / gap) if gap > 0 else math.inf

    def _fallback_tol(self, gap: float, theta: float) -> float:
        """The residual tolerance of a fallback solve. ``stop="eigenvalue"``: the largest relative
        residual whose estimate min(ρ, ρ²/δ) (δ the assumed gap θ·g·s) is ≤ tol·θ, i.e.
        max(tol, sqrt(tol·g·s)); ``"residual"`` (or no gap measured yet): tol."""
        if self.stop == "eigenvalue" and gap > 0 and theta > 0:
            return min(max(self.tol, math.sqrt(self.tol * gap / theta)), 0.5)
        return self.tol

    def _gap(self, theta: float) -> float:
        """The assumed gap δ = θ·g·s below θ (NaN when θ ≤ 0 or no g has been measured)."""
        if theta > 0 and math.isfinite(self.gap_ratio):
            return theta * self.gap_ratio * self.gap_safety
        return math.nan

    def state_dict(self) -> dict:
        return {"eigenvector": self.eigenvector, "gap_ratio": self.gap_ratio,
                "n_tracked": self.n_tracked, "n_fallback": self.n_fallback}

    def load_state_dict(self, state: dict) -> None:
        self.eigenvector, self.gap_ratio = state["eigenvector"], float(state["gap_ratio"])
        self.n_tracked, self.n_fallback = int(state["n_tracked"]), int(state["n_fallback"])



def block_top_bound(theta: float, rest: float, residual_norm: float) -> float:
    """Upper bound on λ_max(H) from a block's Rayleigh–Ritz and the top of the rest of the spectrum.

    For a symmetric H, an orthonormal block V (P×k) with M = VᵀHV (top eigenvalue θ) and residual
    R = HV − VM, write H = [[M, Eᵀ], [E, N]] in the basis (V, V⊥): ‖E‖₂ = ‖R‖₂. If λ_max(N) ≤ α,

        θ ≤ λ_max(H) ≤ (θ + α)/2 + sqrt(((θ − α)/2)² + ‖R‖₂²) = θ + 2‖R‖²/(η + sqrt(η² + 4‖R‖²)),

    η = θ − α (if λ = λ_max(H) > α it is an eigenvalue of M + Eᵀ(λ − N)⁻¹E ⪯ M + ‖E‖²/(λ − α),
    so (λ − θ)(λ − α) ≤ ‖E‖²; else λ ≤ α, below the bound). k = 1, α = λ₂ is Kato–Temple's bound
    sharpened; for η > 0 it is ≤ θ + min(‖R‖, ‖R‖²/η).

    Args: ``theta`` θ; ``rest`` α (any real); ``residual_norm`` ‖R‖₂ ≥ 0. Returns the bound
    (``inf`` for a non-finite α).

    Source: C.-K. Li and R.-C. Li, "A note on eigenvalues of perturbed Hermitian matrices",
    Linear Algebra Appl. 395 (2005) 183–190; B. N. Parlett, *The Symmetric Eigenvalue Problem*,
    §10.8 (Kato–Temple, Lehmann).
    """
    if not math.isfinite(rest):
        return math.inf
    half = 0.5 * (theta - rest)
    return 0.5 * (theta + rest) + math.hypot(half, residual_norm)


def _orthonormal_rows(block: torch.Tensor) -> torch.Tensor:
    """Rows spanning the same space, orthonormal (thin QR of the (P, k) transpose)."""
    q, r = torch.linalg.qr(block.T)
    keep = r.diagonal().abs() > 1e-12 * max(float(r.diagonal().abs().max()), 1e-300)
    return q.T[keep].contiguous()


def _spectral_norm(rows: torch.Tensor) -> float:
    """‖R‖₂ of a (k, P) block from its k×k Gram matrix."""
    gram = (rows @ rows.T).cpu().numpy()
    return math.sqrt(max(float(np.linalg.eigvalsh(0.5 * (gram + gram.T))[-1]), 0.0))


class BlockEigenTracker:
    """The top Hessian eigenvalue along a trajectory from a carried block of k vectors.

    At each new operator H, k HVPs on the orthonormal block V (P×k) give, by Rayleigh–Ritz, Ritz
    values θ₁ ≥ … ≥ θ_k and the block residual R; θ₁ is reported with ε = B(θ₁, α, ‖R‖₂) − θ₁,
    α = θ₁ − s·g·|θ₁| (B: :func:`block_top_bound`; s = ``gap_safety``; g the relative gap between
    θ₁ and the spectrum outside the block at the last full solve). θ₁ ≤ λ_max ≤ θ₁ + ε holds
    whenever

        (A) λ_max of H compressed to the block's complement is ≤ θ₁ − s·g·|θ₁| at this step.

    Unlike the one-vector tracker's assumption (on λ_max − λ₂), (A) does not involve the
    eigenvalues inside the block: when the top two swap or nearly meet, the block holds both and
    the bound stands (with k = 2, (A) is about λ₃). No Krylov method can exclude an eigenvector
    it has not seen, so (A) is not checked; it fails only if an eigenvalue from outside the block
    climbs to within s·g of the top between two full solves.

    **Accepted step** (ε ≤ tol·|θ₁|; ``stop="residual"``: also the top pair's residual ≤
    tol·|θ₁|): ``method="track"``, ``n_hvp`` = k, ‖R‖₂ from the k×k matrices VᵀHV and (HV)ᵀHV,
    and the next block is orth(HV) by Cholesky-QR (a free subspace-iteration step). **Fallback**:
    Rayleigh–Ritz on a basis that starts as the block (its k HVPs reused) and grows by the block
    residual's largest column (orthogonalised twice, one HVP each) until ε ≤ tol·|θ₁|, with α the
    larger of (A)'s and the basis's own ϑ_{k+1} + ρ_{k+1} + ‖R‖₂ (the next Ritz value, its
    residual, and Weyl's bound on the block's coupling to the rest). A solve with ≥ k + 2 basis
    vectors re-measures g = 1 − (ϑ_{k+1} + ρ_{k+1} + ‖R‖₂)/|ϑ₁| (NaN, so no acceptance, while
    ≤ 0). Only when the warm solve exhausts ``max_iter`` (the block lost the top eigenvalue) does
    a **cold** solve run: Lanczos with full reorthogonalisation from a random vector, to
    min(tol, 1e-3) with ≥ k + 2 vectors, ‖R‖₂ = |β|·‖(s_{m,1}, …, s_{m,k})‖ from the tridiagonal
    matrix. The first call is a cold solve. Memory: the block (k·P float64) and, in a solve,
    2·m·P float64.

    Args:
        tol: relative tolerance of ε, in (0, 1) (σ = sqrt(λ) and e_t then within about tol/2).
        block: k, 1–8 (default 2). max_iter: HVP budget of one solve, ≥ block + 2.
        stop: ``"eigenvalue"`` (default: the bound alone) or ``"residual"`` (see above).
        gap_safety: s in (0, 1] (default 0.5: the gap to the rest may halve between full solves).
        generator: torch.Generator for cold start vectors (default seeded 0).

    Raises:
        ValueError: ``tol`` outside (0, 1), ``block`` outside 1–8, ``max_iter`` < block + 2, an
            unknown ``stop`` or ``gap_safety`` outside (0, 1].

    Source: σ at every step of Exp A (`Unlearning/correlation_verification.py`); :func:`block_top_bound`;
    block Rayleigh–Ritz with residual expansion (Davidson/block Lanczos: Parlett, *The Symmetric
    Eigenvalue Problem*, ch. 11, 13).
    """

    MAX_BLOCK = 8

    def __init__(self, *, tol: float = 2e-2, block: int = 2, max_iter: int = 100,
                 stop: str = "eigenvalue", gap_safety: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        _check_solver_args("LA", tol, max_iter, stop)
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= self.MAX_BLOCK:
            raise ValueError(f"block must be an integer in 1..{self.MAX_BLOCK}; got {block!r}")
        if max_iter < block + 2:
            raise ValueError(f"max_iter must be >= block + 2 = {block + 2}; got {max_iter}")
        if not 0.0 < gap_safety <= 1.0:
            raise ValueError(f"gap_safety must be in (0, 1]; got {gap_safety}")
        self.tol, self.block, self.max_iter, self.stop = float(tol), block, int(max_iter), stop
        self.gap_safety = float(gap_safety)
        self.generator = generator
        self.basis: torch.Tensor | None = None     # (k, P) carried block, orthonormal rows
        self.eigenvector: torch.Tensor | None = None  # top Ritz vector of the last step
        self.gap_ratio = math.nan   # g of the last solve with ≥ k + 2 basis vectors
        self.n_tracked = self.n_fallback = self.n_cold = 0

    def update(self, matvec: MatVec, n: int, *, device=None, matmat: MatMat | None = None) -> TopEigen:
        """The top eigenpair at this step (class docstring). ``matvec``: v (P,) → H v, H symmetric;
        ``n``: P; ``device``: where vectors live (default CPU); ``matmat``: optional V (m, P) → H V
        row by row (e.g. :meth:`unroll_utils.hessian.HessianOperator.matmat`; default ``matvec``
        per row). Returns :class:`unroll_utils.hessian.TopEigen`: ``method="track"`` (accepted) or
        ``"block_lanczos"`` (a solve), ``error_bound`` ε, ``gap`` θ₁ − α, ``residual`` the top
        Ritz pair's, ``n_hvp`` every HVP of the step."""
        device = device if device is not None else "cpu"
        mm = matmat if matmat is not None else (lambda v: torch.stack([matvec(r) for r in v]))

        def images(v: torch.Tensor) -> torch.Tensor:
            return mm(v).to(device=device, dtype=torch.float64).reshape(v.shape)

        if self.basis is None:
            return self._cold(matvec, n, device)
        v = self.basis.to(device=device, dtype=torch.float64)  # orthonormal rows (see _finish)
        hv = images(v)
        small = _small_ritz(v, hv, self.block)
        bound = self._bound(small, krylov=False)
        if self._accepts(small, bound):
            self.n_tracked += 1
            # the next block spans HV = H·V (one free subspace-iteration step)
            ritz = {**small, "y": small["s"] @ v, "carry": _cholesky_qr(hv)}
            return self._finish(ritz, bound, v.shape[0], TRACK_METHOD, True)
        res = self._solve(matvec, v, hv, self.max_iter, cold=False)
        if res.converged:
            self.n_fallback += 1
            return dataclasses.replace(res, n_hvp=res.n_hvp + v.shape[0])
        cold = self._cold(matvec, n, device)
        return dataclasses.replace(cold, n_hvp=cold.n_hvp + res.n_hvp + v.shape[0])

    # -- internals ---------------------------------------------------------------------------

    def _cold(self, matvec: MatVec, n: int, device) -> TopEigen:
        """Lanczos (full reorthogonalisation) from a random vector: the Krylov space the residual
        expansion would build from one vector, with every Ritz residual β·s_{m,i}·q_{m+1} known
        from the tridiagonal matrix, so ‖R‖₂ = |β|·‖s_{m,1..k}‖ needs no model-sized work."""
        g = self.generator if self.generator is not None else torch.Generator().manual_seed(0)
        self.n_cold += 1
        tol = min(self.tol, 1e-3)
        cap = min(self.max_iter, n)
        basis = torch.empty(min(cap, 16), n, dtype=torch.float64, device=device)
        q0 = torch.randn(n, generator=g, dtype=torch.float64).to(device)
        basis[0] = q0 / q0.norm()
        w = torch.empty(n, dtype=torch.float64, device=device)
        alphas, betas = [], []
        for m in range(1, cap + 1):
            q = basis[m - 1]
            w.copy_(matvec(q))
            alphas.append(float(torch.dot(q, w)))
            kry = basis[:m]
            w.addmv_(kry.T, kry @ w, alpha=-1.0)
            w.addmv_(kry.T, kry @ w, alpha=-1.0)
            beta = float(w.norm())
            t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
            evals, evecs = np.linalg.eigh(t)
            evals, evecs = evals[::-1], evecs[:, ::-1]
            k = min(self.block, m)
            last = np.abs(beta * evecs[-1])
            rnorm = abs(beta) * float(np.linalg.norm(evecs[-1, :k]))
            rest = float(evals[k] + last[k]) + rnorm if m > k else -math.inf
            small = {"theta": evals[:k], "rnorm": rnorm, "rho": float(last[0]), "rest": rest}
            bound = self._bound(small, krylov=True)
            invariant = beta <= 1e-12 * max(abs(float(evals[0])), 1e-300)
            converged = invariant or (m >= self.block + 2 and self._accepts(small, bound, tol))
            if converged or m == cap:
                break
            betas.append(beta)
            if m == basis.shape[0]:
                basis = torch.cat([basis, torch.empty(min(m, cap - m), n, dtype=torch.float64,
                                                      device=device)])
            torch.div(w, beta, out=basis[m])
        if m >= self.block + 2 and math.isfinite(rest):
            gr = 1.0 - rest / abs(float(evals[0])) if evals[0] != 0 else -1.0
            self.gap_ratio = gr if gr > 0 else math.nan
        s = torch.as_tensor(evecs[:, :k].T.copy(), dtype=torch.float64, device=device)
        y = s @ basis[:m]
        ritz = {**small, "y": y, "carry": _orthonormal_rows(y)}
        return self._finish(ritz, bound, m, BLOCK_SOLVE_METHOD, converged)

    def _solve(self, matvec: MatVec, q: torch.Tensor, hq: torch.Tensor, budget: int,
               cold: bool) -> TopEigen:
        """Rayleigh–Ritz on span(q), expanded by the largest residual column until the bound
        holds (``n_hvp`` counts the new HVPs only); updates g and the carried block."""
        tol = min(self.tol, 1e-3) if cold else self.tol
        spent, m = 0, q.shape[0]
        # basis and images in buffers that grow by doubling (no copy of the whole basis per HVP)
        qb = torch.empty(min(m + budget, max(2 * m, 8)), q.shape[1], dtype=torch.float64, device=q.device)
        hb = torch.empty_like(qb)
        qb[:m], hb[:m] = q, hq
        while True:
            ritz = _ritz(qb[:m], hb[:m], self.block)
            bound = self._bound(ritz, krylov=True)
            enough = not cold or m >= self.block + 2
            if enough and self._accepts(ritz, bound, tol):
                converged = True
                break
            z = _expansion(qb[:m], ritz["r"])
            if z is None:  # span(q) is invariant: R = 0 up to rounding, the bound stands as is
                converged = True
                break
            if spent >= budget:
                converged = False
                break
            if m == qb.shape[0]:
                grow = min(m + budget - spent, 2 * m)
                qb = torch.cat([qb, torch.empty(grow - m, q.shape[1], dtype=torch.float64, device=q.device)])
                hb = torch.cat([hb, torch.empty_like(qb[m:])])
            qb[m] = z
            hb[m] = matvec(z).to(device=q.device, dtype=torch.float64)
            m, spent = m + 1, spent + 1
        ritz["carry"] = _cholesky_qr(ritz["hy"])
        if m >= self.block + 2 and math.isfinite(ritz["rest"]):
            # g for the following steps; this step's bound keeps the α it was tested with
            g = 1.0 - ritz["rest"] / abs(ritz["theta"][0]) if ritz["theta"][0] != 0 else -1.0
            self.gap_ratio = g if g > 0 else math.nan
        return self._finish(ritz, bound, spent, BLOCK_SOLVE_METHOD, converged)

    def _bound(self, ritz: dict, krylov: bool) -> float:
        """ε = B(θ₁, α, ‖R‖) − θ₁ with α from (A) and, in a solve, the Krylov estimate."""
        theta = float(ritz["theta"][0])
        alpha = theta - self.gap_safety * self.gap_ratio * abs(theta) if math.isfinite(self.gap_ratio) \
            else -math.inf
        if krylov and math.isfinite(ritz["rest"]):
            alpha = max(alpha, ritz["rest"])
        if not math.isfinite(alpha) or theta == 0.0:
            return math.inf
        return block_top_bound(theta, alpha, ritz["rnorm"]) - theta

    def _accepts(self, ritz: dict, bound: float, tol: float | None = None) -> bool:
        tol = self.tol if tol is None else tol
        scale = abs(float(ritz["theta"][0]))
        ok = bound <= tol * scale
        return ok and (self.stop == "eigenvalue" or ritz["rho"] <= tol * scale)

    def _finish(self, ritz: dict, bound: float, n_hvp: int, method: str, converged: bool) -> TopEigen:
        """Carry ``ritz["carry"]`` (orthonormal rows) and report the top Ritz pair."""
        carried = ritz["carry"]
        self.basis = carried if carried.shape[0] == ritz["y"].shape[0] else _orthonormal_rows(ritz["y"])
        self.eigenvector = ritz["y"][0].clone()
        theta = float(ritz["theta"][0])
        gap = self.gap_safety * self.gap_ratio * abs(theta)  # θ₁ − α of assumption (A)
        return TopEigen(theta, self.eigenvector, float(ritz["rho"]), int(n_hvp), bool(converged),
                        method, "LA", error_bound=float(bound), stop=self.stop, gap=float(gap))

    def state_dict(self) -> dict:
        return {"basis": self.basis, "eigenvector": self.eigenvector, "gap_ratio": self.gap_ratio,
                "n_tracked": self.n_tracked, "n_fallback": self.n_fallback, "n_cold": self.n_cold}

    def load_state_dict(self, state: dict) -> None:
        self.basis, self.eigenvector = state["basis"], state["eigenvector"]  # saved orthonormal
        self.gap_ratio = float(state["gap_ratio"])
        self.n_tracked, self.n_fallback = int(state["n_tracked"]), int(state["n_fallback"])
        self.n_cold = int(state["n_cold"])


def _ritz(q: torch.Tensor, hq: torch.Tensor, block: int) -> dict:
    """Rayleigh–Ritz of H on span(q) (rows orthonormal, hq = H q row by row): the top min(block, m)
    Ritz values ``theta`` (descending), vectors ``y``, images ``hy``, residuals ``r``, the block
    residual's spectral norm ``rnorm``, the top pair's residual ``rho``, and ``rest`` = the next
    Ritz value + its residual + ``rnorm`` (−inf when the basis holds no further Ritz pair)."""
    m = q.shape[0]
    t = (q @ hq.T).cpu().numpy()
    evals, evecs = np.linalg.eigh(0.5 * (t + t.T))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    k = min(block, m)
    s = torch.as_tensor(evecs[:, :k].T.copy(), dtype=q.dtype, device=q.device)
    theta = torch.as_tensor(evals[:k].copy(), dtype=q.dtype, device=q.device)
    y, hy = s @ q, s @ hq
    r = hy - theta[:, None] * y
    rnorm = _spectral_norm(r)
    rest = -math.inf
    if m > k:
        s1 = torch.as_tensor(evecs[:, k].copy(), dtype=q.dtype, device=q.device)
        r1 = s1 @ hq - float(evals[k]) * (s1 @ q)
        rest = float(evals[k]) + float(r1.norm()) + rnorm
    return {"theta": evals[:k], "y": y, "hy": hy, "r": r, "rnorm": rnorm,
            "rho": float(r[0].norm()), "rest": rest}


def _small_ritz(v: torch.Tensor, hv: torch.Tensor, block: int) -> dict:
    """Rayleigh–Ritz on span(v) (k orthonormal rows, hv = H v) from the k×k matrices T = v·hvᵀ and
    G = hv·hvᵀ alone: R Rᵀ = SᵀGS − Θ² (S the Ritz coefficients), so ‖R‖₂ and the top pair's
    residual need no model-sized temporaries. The cancellation costs ~1e-16·θ² in ‖R‖², far below
    the HVPs' own float32 rounding. Keys as :func:`_ritz` (``s``: the top Ritz coefficients, k×P
    rows of ``y`` are ``s @ v``); ``rest`` is −inf (the block has no further Ritz pair)."""
    t, g = (v @ hv.T).cpu().numpy(), (hv @ hv.T).cpu().numpy()
    k0 = v.shape[0]
    evals, evecs = np.linalg.eigh(0.5 * (t + t.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    k = min(block, k0)
    sm = evecs[:, :k]
    rr = sm.T @ (0.5 * (g + g.T)) @ sm - np.diag(evals[:k] ** 2)
    rnorm = math.sqrt(max(float(np.linalg.eigvalsh(0.5 * (rr + rr.T))[-1]), 0.0))
    return {"theta": evals[:k].copy(), "s": torch.as_tensor(sm.T.copy(), dtype=v.dtype, device=v.device),
            "rnorm": rnorm, "rho": math.sqrt(max(float(rr[0, 0]), 0.0)), "rest": -math.inf}


def _cholesky_qr(rows: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning ``rows`` (k, P): Cholesky-QR twice (two passes over the rows per
    round, no P-sized factorisation), Householder QR when the Gram matrix is not positive definite."""
    out = rows
    try:
        for _ in range(2):
            chol = torch.linalg.cholesky(out @ out.T)
            out = torch.linalg.solve_triangular(chol, out, upper=False)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        return _orthonormal_rows(rows)
    return out


def _expansion(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor | None:
    """The block residual's largest column, orthogonalised twice against span(q), normalised;
    None when every column lies in span(q) (to 1e-10 of its norm)."""
    norms = r.norm(dim=1)
    for i in torch.argsort(norms, descending=True).tolist():
        z = r[i].clone()
        if float(norms[i]) == 0.0:
            break
        for _ in range(2):
            z -= q.T @ (q @ z)
        if float(z.norm()) > 1e-10 * float(norms[i]):
            return z / z.norm()
    return None
