"""σ along a lock-step run (notebook 04, eq. (1)): when it is measured, on which batch, the warm start
from the previous eigenvector (or the carried eigenvector of ``sigma_track``), and the running
mean behind the rolling unlearning error.

:class:`SigmaTracker` is the σ bookkeeping of :class:`unroll_utils.lockstep.LockStep`, configured
by the ``sigma_*`` fields of :class:`unroll_utils.trajectory.LockStepConfig`; the eigen-solvers
are :mod:`unroll_utils.hessian`'s and e is :func:`unroll_utils.metrics.unlearning_error`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import eigen_tracking, hessian
from .metrics import unlearning_error
from .training import SGDConfig, sub_seed

__all__ = ["SigmaTracker"]


class SigmaTracker:
    """The σ bookkeeping of a lock-step run (notebook 04, eq. (1)): when σ is measured, on which batch, the
    warm start from the previous eigenvector, and the running mean behind rolling e.

    Args:
        config: the validated :class:`unroll_utils.trajectory.LockStepConfig` (``sigma_*`` fields, ``lr``, ``seed``).
        loss_fn: the training objective, whose Hessian is taken.
        fixed_x, fixed_y: the fixed Hessian batch (the first ``sigma_points`` training points),
            used when ``sigma_batch="fixed"``.
    """

    def __init__(self, config: SGDConfig, loss_fn, fixed_x: torch.Tensor,
                 fixed_y: torch.Tensor) -> None:
        self.config, self.loss_fn = config, loss_fn
        self.fixed_x, self.fixed_y = fixed_x, fixed_y
        self.sigmas: list[float] = []
        self.eigvec: torch.Tensor | None = None
        self.tracker = None  # with sigma_track, an eigen_tracking tracker made on first use

    def due(self, t: int, last: bool) -> bool:
        """σ is measured at t = 1, every ``sigma_every`` steps and at the last step (never if 0)."""
        every = self.config.sigma_every
        return bool(every) and (t == 1 or t % every == 0 or last)

    def measure(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> dict:
        """Solve for the top Hessian eigenvalue of ``model`` on the configured batch (``xb``/``yb``
        is the current batch); record σ. Returns the row fields ``eigenvalue``, ``eig_residual``,
        ``eig_error_bound``, ``eig_hvps`` (and ``eig_tracked`` with ``sigma_track``)."""
        cfg = self.config
        xh, yh = (self.fixed_x, self.fixed_y) if cfg.sigma_batch == "fixed" else (xb, yb)
        if cfg.sigma_track:
            return self._track(model, xh, yh)
        sigma, eig = hessian.estimate_sigma(
            model, self.loss_fn, xh, yh, convention=cfg.sigma_convention, method=cfg.sigma_method,
            tol=cfg.sigma_tol, max_iter=cfg.sigma_max_iter, stop=cfg.sigma_stop,
            init=self.eigvec if cfg.sigma_warm_start else None,
            generator=torch.Generator().manual_seed(sub_seed(cfg.seed, 2)),
            bn_mode=cfg.sigma_bn_mode, micro_batch=cfg.sigma_micro_batch,
            weight_decay=cfg.weight_decay if cfg.sigma_weight_decay else 0.0)
        self.sigmas.append(sigma)
        self.eigvec = eig.eigenvector
        return {"eigenvalue": eig.eigenvalue, "eig_residual": eig.residual,
                "eig_error_bound": eig.error_bound, "eig_hvps": eig.n_hvp}

    def _track(self, model: nn.Module, xh: torch.Tensor, yh: torch.Tensor) -> dict:
        """``sigma_track``: one tracker update (:mod:`unroll_utils.eigen_tracking`) on this step's Hessian."""
        cfg = self.config
        if self.tracker is None:
            self.tracker = self._new_tracker()
        op = hessian.HessianOperator(model, self.loss_fn, xh, yh, bn_mode=cfg.sigma_bn_mode,
                                     weight_decay=cfg.weight_decay if cfg.sigma_weight_decay else 0.0,
                                     micro_batch=cfg.sigma_micro_batch)
        eig = self.tracker.update(op.matvec, op.numel, device=op.device)
        self.sigmas.append(hessian.sigma_from_eigenvalue(eig.eigenvalue, "sqrt_eig"))
        self.eigvec = self.tracker.eigenvector
        return {"eigenvalue": eig.eigenvalue, "eig_residual": eig.residual,
                "eig_error_bound": eig.error_bound, "eig_hvps": eig.n_hvp,
                "eig_tracked": eig.method == hessian.TRACK_METHOD}

    def errors(self, t: int, delta_w: float) -> dict:
        """σ (latest), its running mean, e and rolling e at step t (e with t − 1 second-order
        terms, notebook 04); NaN before the first measurement."""
        if not self.sigmas:
            return {"sigma": math.nan, "sigma_mean": math.nan, "unlearning_error": math.nan,
                    "rolling_unlearning_error": math.nan}
        sigma, mean = self.sigmas[-1], float(np.mean(self.sigmas))
        lr = self.config.lr
        return {"sigma": sigma, "sigma_mean": mean,
                "unlearning_error": unlearning_error(lr, t - 1, delta_w, sigma),
                "rolling_unlearning_error": unlearning_error(lr, t - 1, delta_w, mean)}

    def state_dict(self) -> dict:
        state = {"sigmas": self.sigmas, "eigvec": self.eigvec}
        if self.tracker is not None:
            state["sigma_tracker"] = self.tracker.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sigmas, self.eigvec = state["sigmas"], state["eigvec"]
        if "sigma_tracker" in state:
            self.tracker = self._new_tracker()
            self.tracker.load_state_dict(state["sigma_tracker"])

    def _new_tracker(self):
        """The tracker of ``sigma_track``: True, the carried vector; ``"block"``, the carried block."""
        cfg = self.config
        kind = (eigen_tracking.BlockEigenTracker if cfg.sigma_track == "block"
                else eigen_tracking.TopEigenTracker)
        return kind(tol=cfg.sigma_tol, max_iter=cfg.sigma_max_iter, stop=cfg.sigma_stop,
                    generator=torch.Generator().manual_seed(sub_seed(cfg.seed, 2)))
