"""The lock-step training trajectory of M, M′ and M″ (paper §1.1–§1.4, §2.2–§2.4).

From the same weights w_0, the original model M trains on every batch of a fixed, recorded order,
and the naively retrained model M′ trains on the *same* batches with the forget points removed
(same augmentation draws, its own optimiser state; a batch made only of forget points is skipped,
as M′ skips the x* batch in the reference code). Single gradient unlearning
(:mod:`unroll_utils.unlearning`) gives M″ at every measurement step, and the paper's metrics are
logged: verification error ‖w″_t − w′_t‖, ‖w_t − w_0‖, ‖w_t − w′_t‖, σ, the unlearning error e and
its rolling variant, and accuracies. Results are a tidy :class:`pandas.DataFrame`; long runs
checkpoint atomically and resume bit-identically.

The run is a small state machine, :class:`LockStep`, with the σ bookkeeping in
:class:`SigmaTracker` and the unlearning correction in :class:`UndoAccumulator`;
:func:`run_lockstep` is the one-call form. The training primitives (data order, augmentation,
SGD steps) live in :mod:`unroll_utils.training`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import eigen_tracking, hessian, results
from .losses import make_loss
from .distances import lockstep_distances, model_weights, snapshot, weight_distance
from .metrics import accuracy, unlearning_error
from .training import (ALL_AUGMENTS, AUGMENTS, ORDERS, SGDConfig, augment_batch, augmentation_draws,
                       batch_order, check_lone_point_batches, check_sgd_fields, crop_flip,
                       epoch_draws, make_optimizer, require, sgd_step, sub_seed)
from .propagated import PropagatedConfig, PropagatedUndo
from .unlearning import UNDO_FORMS, UNDO_POINTS, forget_gradient

__all__ = [
    "LockStepConfig", "LockStepResult", "LockStep", "SigmaTracker", "UndoAccumulator",
    "run_lockstep", "with_undo", "SIGMA_BATCHES", "CHECKPOINT_FORMAT",
]

SIGMA_BATCHES = ("fixed", "current")
SIGMA_DATA = ("augmented", "raw")

#: The layout of :meth:`LockStep.state_dict` and of its fingerprint. Raise it when that layout changes;
#: a field added to or removed from :class:`LockStepConfig` needs no change here, as the state also
#: records the config's field names and a checkpoint with other names is refused the same way (a
#: message saying so, instead of a resume into a run it does not describe). 1: unrolling-sgd 0.1.0
#: (no ``format`` entry; fields added after its first release left out of the fingerprint at their
#: defaults).
CHECKPOINT_FORMAT = 2


@dataclass(frozen=True)
class LockStepConfig(SGDConfig):
    """Configuration of a lock-step run; every field is validated by :meth:`validate`.

    Attributes:
        lr: η > 0, constant SGD learning rate.
        batch_size: b ≥ 1 (the last batch may be smaller, down to 1 point, unless the model has a
            BatchNorm layer that cannot train on one point: then the run is refused up front).
        epochs: passes over the data, ≥ 1.
        momentum, weight_decay: SGD options in [0, 1) and ≥ 0 (0 = the plain SGD of the theory;
            the reference Exp A used 0.9 and 5e-4, under which the η-scaled undo under-corrects).
        loss: ``"ce"`` or ``"sd"`` (SD loss with ``lam``); also the Hessian's objective.
        lam: λ ≥ 0 of the SD loss.
        order: ``"forget_first"`` (paper: x* first, then the rest in index order, every epoch),
            ``"forget_first_shuffle"`` (x* first, then the rest in a seeded permutation drawn anew
            every epoch: the reference's ``shuffle=True`` loaders with x* kept first),
            ``"index"`` (dataset order), ``"shuffle"`` (a seeded permutation per epoch); see
            :func:`unroll_utils.training.batch_order`.
        augment: ``"none"``, ``"crop_flip"`` (random 4-pixel-padded crop + horizontal flip,
            drawn per point and epoch from ``seed``, identical for M and M′; the reference's
            CIFAR-10 transform) or ``"crop_flip_rotate"`` (also a rotation uniform in ±15°, the
            reference's CIFAR-100 transform in ``Unlearning/correlation_verification.py``).
        seed: seeds the order, the augmentation and the Hessian start vector.
        undo_at: where single gradient unlearning takes the gradient (see
            :mod:`unroll_utils.unlearning`): ``"w0"``, ``"current"``, ``"final"``, ``"checkpoint"``.
        undo_bn_mode: BatchNorm mode of the undo gradient, ``"train"`` (reference) or ``"eval"``.
        undo_form: ``"paper"`` (the forget points' gradient) or ``"batch_difference"`` (exact first
            order when x* shares batches with retained points; see :mod:`unroll_utils.unlearning`).
        checkpoint_freq: steps between checkpoints for ``undo_at="checkpoint"``, ≥ 1.
        eval_every: measure VE and the weight distances every this many steps (also at t=1 and at
            the last step), ≥ 1.
        sigma_every: also measure σ at t=1, every this many steps and at the last step; 0 = never
            (then e is NaN).
        sigma_batch: ``"fixed"`` (the first ``sigma_points`` training points, Exp A) or
            ``"current"`` (the current batch, Exp C/D).
        sigma_points: size of the fixed Hessian batch, ≥ 1.
        sigma_data: the fixed Hessian batch's images: ``"augmented"`` (default, the reference:
            ``list(trainset)`` in ``correlation_verification.py`` augments every point once, and
            σ's points are those same images, which M trains on; here the first epoch's draws of
            those points) or ``"raw"`` (the un-augmented points). Identical when
            ``augment="none"``.
        sigma_convention: ``"sqrt_eig"`` (reference, σ = sqrt(λ_max)) or ``"abs_eig"``.
        sigma_method: ``"lanczos"`` or ``"power"``.
        sigma_tol: relative tolerance of the eigen-solve's stopping rule, in (0, 1).
        sigma_stop: ``"residual"`` (‖Hv − λv‖ ≤ tol·|λ|, default) or ``"eigenvalue"`` (Lanczos
            only: estimated eigenvalue error ≤ tol·|λ|; about half the HVPs per warm-started
            solve, see :func:`unroll_utils.hessian.lanczos_top_eigen`).
        sigma_max_iter: HVP budget per σ, ≥ 1.
        sigma_warm_start: start each solve from the previous eigenvector.
        sigma_bn_mode: ``"eval"`` (reference) or ``"train"``.
        sigma_micro_batch: None (default: the Hessian batch in one forward pass, as the reference
            code) or a size m ≥ 1: each HVP is accumulated over micro-batches of m points
            (:class:`unroll_utils.hessian.HessianOperator`), so ``sigma_points`` = 512 CIFAR images
            or the whole training set fit in a small GPU's memory. With ``sigma_bn_mode="eval"``
            this is the same Hessian (float32 rounding aside); with ``"train"`` BatchNorm uses each
            micro-batch's own statistics, a different Hessian.
        sigma_weight_decay: take σ from the Hessian of the objective SGD actually minimises with
            ``weight_decay`` > 0, L + ½·wd·‖w‖², whose eigenvalues are the data loss's plus wd
            (λ_max(H + wd·I) = λ_max(H) + wd). False (default, as the reference code): the data
            loss alone.
        accuracy_every: measure test/forget accuracy of M, M′, M″ every this many steps (and at the
            last step); 0 = last step only.
        include_buffers: include BatchNorm running statistics in VE and ‖w_t − w_0‖ (the paper
            excludes them).
        propagated: a :class:`unroll_utils.propagated.PropagatedConfig` to also unlearn with the
            Hessian-propagated single gradient (gradients where M saw x*, propagated by
            f(H̄) = clamp((1 − ηH̄)^{n_k}, −1, 1)); adds the columns ``ve_propagated``,
            ``propagated_hvps``, ``propagated_error``, ``propagated_seconds``. None (default): off.
        sigma_track: measure λ_max with :class:`unroll_utils.eigen_tracking.TopEigenTracker` (about one
            HVP per measurement: the carried eigenvector's Rayleigh quotient with a Kato–Temple
            error estimate, a warm-started Lanczos solve only when the estimate exceeds
            ``sigma_tol``·λ; with ``sigma_stop="eigenvalue"`` the fallback stops as soon as that
            same estimate meets the tolerance, with ``"residual"`` when ‖Hv − λv‖ ≤ tol·λ, which
            costs more HVPs). Every reported λ then satisfies λ ≤ λ_max ≤ λ + ``eig_error_bound``
            (under the tracker's gap assumption), so σ and e_t are within about ``sigma_tol``/2
            (relative); use it with ``sigma_every=1``, ``sigma_stop="eigenvalue"`` and a
            ``sigma_tol`` of 2e-2 (σ, e_t within ≈ 1%) or 1e-2 (≈ 0.5%). Needs
            ``sigma_method="lanczos"`` and
            ``sigma_convention="sqrt_eig"``; adds the column ``eig_tracked`` (True where the step
            was accepted without a fallback). ``"block"``: the same with
            :class:`unroll_utils.eigen_tracking.BlockEigenTracker` (a carried block of 2 vectors,
            2 HVPs per accepted step, a bound that assumes only the gap to the spectrum outside
            the block, so it survives the top two eigenvalues crossing; needs
            ``sigma_max_iter`` ≥ 4). False (default): a solve per measurement.
    """

    order: str = "forget_first"  # the SGD fields are SGDConfig's; only the default order differs
    undo_at: str = "w0"
    undo_bn_mode: str = "train"
    undo_form: str = "paper"
    checkpoint_freq: int = 10
    eval_every: int = 10
    sigma_every: int = 10
    sigma_batch: str = "fixed"
    sigma_points: int = 512
    sigma_data: str = "augmented"
    sigma_convention: str = "sqrt_eig"
    sigma_method: str = "lanczos"
    sigma_tol: float = 1e-3
    sigma_stop: str = "residual"
    sigma_max_iter: int = 100
    sigma_warm_start: bool = True
    sigma_bn_mode: str = "eval"
    sigma_weight_decay: bool = False
    sigma_micro_batch: int | None = None
    accuracy_every: int = 0
    include_buffers: bool = False
    propagated: PropagatedConfig | None = None
    sigma_track: bool | str = False

    def validate(self) -> "LockStepConfig":
        """Raise ValueError naming the first bad field and its allowed range; return self."""
        def need(ok: bool, name: str, allowed: str) -> None:
            require(self, ok, name, allowed)

        check_sgd_fields(self, ALL_AUGMENTS)
        need(self.undo_at in UNDO_POINTS, "undo_at", f"one of {UNDO_POINTS}")
        need(self.undo_bn_mode in hessian.BN_MODES, "undo_bn_mode", f"one of {hessian.BN_MODES}")
        need(self.undo_form in UNDO_FORMS, "undo_form", f"one of {UNDO_FORMS}")
        need(self.checkpoint_freq >= 1, "checkpoint_freq", ">= 1")
        need(self.eval_every >= 1, "eval_every", ">= 1")
        need(self.sigma_every >= 0, "sigma_every", ">= 0 (0 disables σ)")
        need(self.sigma_batch in SIGMA_BATCHES, "sigma_batch", f"one of {SIGMA_BATCHES}")
        need(self.sigma_points >= 1, "sigma_points", ">= 1")
        need(self.sigma_data in SIGMA_DATA, "sigma_data", f"one of {SIGMA_DATA}")
        need(self.sigma_convention in hessian.SIGMA_CONVENTIONS, "sigma_convention",
             f"one of {hessian.SIGMA_CONVENTIONS}")
        need(self.sigma_method in hessian.METHODS, "sigma_method", f"one of {hessian.METHODS}")
        need(0 < self.sigma_tol < 1, "sigma_tol", "in (0, 1)")
        need(self.sigma_stop in hessian.STOP_RULES
             and (self.sigma_stop == "residual" or self.sigma_method == "lanczos"), "sigma_stop",
             f"one of {hessian.STOP_RULES}, and 'residual' unless sigma_method='lanczos'")
        need(self.sigma_max_iter >= 1, "sigma_max_iter", ">= 1")
        need(self.sigma_bn_mode in hessian.BN_MODES, "sigma_bn_mode", f"one of {hessian.BN_MODES}")
        need(isinstance(self.sigma_weight_decay, bool), "sigma_weight_decay", "True or False")
        need(self.sigma_micro_batch is None or (isinstance(self.sigma_micro_batch, int)
                                                and not isinstance(self.sigma_micro_batch, bool)
                                                and self.sigma_micro_batch >= 1),
             "sigma_micro_batch", "None (one forward pass) or an integer >= 1")
        need((isinstance(self.sigma_track, bool) or self.sigma_track == "block")
             and (not self.sigma_track or (self.sigma_method == "lanczos"
                                           and self.sigma_convention == "sqrt_eig"))
             and (self.sigma_track != "block" or self.sigma_max_iter >= 4),
             "sigma_track", "True, False or 'block'; True and 'block' need sigma_method='lanczos' "
             "and sigma_convention='sqrt_eig', 'block' also sigma_max_iter >= 4")
        need(self.accuracy_every >= 0, "accuracy_every", ">= 0")
        need(self.propagated is None or isinstance(self.propagated, PropagatedConfig), "propagated",
             "None or a PropagatedConfig")
        if self.propagated is not None:
            self.propagated.validate()
        return self


@dataclass
class LockStepResult:
    """What :func:`run_lockstep` returns.

    Attributes:
        table: one row per measurement step (see :func:`run_lockstep`).
        config: the validated configuration.
        model: M at the last step done; retrained: M′; initial: M at w_0 (frozen copy).
        undo: single gradient unlearning correction u (w″ = w_t + u), parameters order.
        forget: the forget indices; steps_done / total_steps; complete: all steps done.
        propagated_undo: the Hessian-propagated correction at the last measurement where it was
            computed (w‴ = w_t + u), or None when ``config.propagated`` is None.
    """

    table: pd.DataFrame
    config: LockStepConfig
    model: nn.Module
    retrained: nn.Module
    initial: nn.Module
    undo: list[torch.Tensor]
    forget: torch.Tensor
    steps_done: int
    total_steps: int
    complete: bool = field(default=True)
    propagated_undo: list[torch.Tensor] | None = None

    def unlearned_model(self) -> nn.Module:
        """M″: a copy of M with w″ = w_t + u loaded (buffers are M's)."""
        return with_undo(self.model, self.undo)


def with_undo(model: nn.Module, undo: list[torch.Tensor]) -> nn.Module:
    """M″: a copy of ``model`` with the single gradient unlearning correction added (w″ = w + u)."""
    unlearned = copy.deepcopy(model)
    with torch.no_grad():
        torch._foreach_add_(list(unlearned.parameters()), undo)
    return unlearned


class SigmaTracker:
    """The σ bookkeeping of a lock-step run (paper §1.4): when σ is measured, on which batch, the
    warm start from the previous eigenvector, and the running mean behind rolling e.

    Args:
        config: the validated :class:`LockStepConfig` (``sigma_*`` fields, ``lr``, ``seed``).
        loss_fn: the training objective, whose Hessian is taken.
        fixed_x, fixed_y: the fixed Hessian batch (the first ``sigma_points`` training points),
            used when ``sigma_batch="fixed"``.
    """

    def __init__(self, config: LockStepConfig, loss_fn, fixed_x: torch.Tensor,
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
        terms, paper §1.4); NaN before the first measurement."""
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
        cfg = self.config
        kind = (eigen_tracking.BlockEigenTracker if cfg.sigma_track == "block"
                else eigen_tracking.TopEigenTracker)
        return kind(tol=cfg.sigma_tol, max_iter=cfg.sigma_max_iter, stop=cfg.sigma_stop,
                    generator=torch.Generator().manual_seed(sub_seed(cfg.seed, 2)))


class UndoAccumulator:
    """The single gradient unlearning correction u (w″ = w_t + u) of a lock-step run, for every
    ``undo_at`` point of :mod:`unroll_utils.unlearning` (paper §1.3).

    ``"w0"`` adds η·∇L(w_0; x*∩B) (cached per distinct batch) at every step that saw forget points;
    ``"current"`` adds η·∇L(w_t; x*∩B) right after M's step; ``"final"`` and ``"checkpoint"``
    remember each distinct forget-holding batch with its summed η and evaluate the gradients when u
    is asked for (at the current weights, or at the last checkpoint).

    The checkpoint follows ``Unlearning/checkpoint_version.py``: before step t + 1 with t a
    positive multiple of c = ``checkpoint_freq`` it moves to the weights w_t, so the measurement
    after step t uses w_ckpt = w_{c·⌊(t−1)/c⌋} (w_0 for t ≤ c): at t = kc it is still
    w_{(k−1)c}, and w_{kc} is first used at t = kc + 1.
    """

    def __init__(self, config: LockStepConfig, loss_fn, params: list[torch.Tensor]) -> None:
        self.config, self.loss_fn, self.params = config, loss_fn, params
        self.undo = [torch.zeros_like(p) for p in params]
        self.at_w0: dict[bytes, list[torch.Tensor]] = {}
        self.occurrences: dict[bytes, dict] = {}  # "final"/"checkpoint": batch tensors and Σ η
        self.ckpt_weights = snapshot(params)

    def record(self, key: bytes, xb: torch.Tensor, yb: torch.Tensor, fmask: torch.Tensor,
               model: nn.Module, initial: nn.Module) -> None:
        """Account for one step of M on batch (xb, yb) whose forget points are ``fmask``."""
        cfg = self.config
        if cfg.undo_at == "w0":
            if key not in self.at_w0:
                self.at_w0[key] = forget_gradient(initial, self.loss_fn, xb, yb, fmask,
                                                  bn_mode=cfg.undo_bn_mode, form=cfg.undo_form)
            torch._foreach_add_(self.undo, self.at_w0[key], alpha=cfg.lr)
        elif cfg.undo_at == "current":
            g = forget_gradient(model, self.loss_fn, xb, yb, fmask, bn_mode=cfg.undo_bn_mode,
                                form=cfg.undo_form)
            torch._foreach_add_(self.undo, g, alpha=cfg.lr)
        else:
            occ = self.occurrences.setdefault(key, {"x": xb, "y": yb, "mask": fmask, "eta": 0.0})
            occ["eta"] += cfg.lr

    def before_step(self, t: int) -> None:
        """Before step t + 1 (``t`` steps done): move the checkpoint to the current weights w_t
        when t is a positive multiple of ``checkpoint_freq``."""
        if self.config.undo_at == "checkpoint" and t > 0 and t % self.config.checkpoint_freq == 0:
            with torch.no_grad():
                torch._foreach_copy_(self.ckpt_weights, self.params)

    def current(self, model: nn.Module) -> list[torch.Tensor]:
        """u for M (``model``) now, in ``model.parameters()`` order."""
        cfg = self.config
        if cfg.undo_at in ("w0", "current"):
            return self.undo
        at = None if cfg.undo_at == "final" else self.ckpt_weights
        u = [torch.zeros_like(p) for p in self.params]
        for occ in self.occurrences.values():
            g = forget_gradient(model, self.loss_fn, occ["x"], occ["y"], occ["mask"], weights=at,
                                bn_mode=cfg.undo_bn_mode, form=cfg.undo_form)
            torch._foreach_add_(u, g, alpha=occ["eta"])
        return u

    def state_dict(self) -> dict:
        return {"undo": self.undo, "ckpt_weights": self.ckpt_weights, "undo_at_w0": self.at_w0,
                "occurrences": self.occurrences}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.undo, state["undo"])
            torch._foreach_copy_(self.ckpt_weights, state["ckpt_weights"])
        self.at_w0, self.occurrences = state["undo_at_w0"], state["occurrences"]


class LockStep:
    """A lock-step run of M and M′ from the same w_0, with single gradient unlearning (M″) and the
    paper's measurements, as a small state machine (paper §1.1–§1.4, §2.2–§2.4).

    ``step()`` trains M and M′ on the next batch of the recorded order; ``measure()`` appends a
    table row for the current step; ``run()`` loops over both with checkpoints and a progress bar;
    ``state_dict()``/``load_state_dict()`` save and restore everything a bit-identical resume
    needs. :func:`run_lockstep` is the one-call form.

    Args:
        model: the network at w_0 (not modified; M, M′ and a frozen w_0 copy are deep copies).
        train_x: (N, ...) inputs; train_y: (N,) int64 labels (moved to the model's device).
        forget: sorted unique int64 forget indices in [0, N) (see
            :func:`unroll_utils.data.select_forget_set`); at least one point must remain.
        config: a :class:`LockStepConfig`.
        test_x, test_y: optional test set for accuracies.

    Raises:
        ValueError: invalid config (named field), bad forget set, mismatched data, or a batch of
            one point (for M, or M′ after removing the forget points) that the model's BatchNorm
            cannot train on (:func:`unroll_utils.training.check_lone_point_batches`).
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: LockStepConfig, *,
                 test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None) -> None:
        cfg = self.config = config.validate()
        self.device = next(model.parameters()).device
        n = self.n = train_x.shape[0]
        if train_y.shape != (n,):
            raise ValueError(f"train_y must have shape ({n},); got {tuple(train_y.shape)}")
        self.forget = _checked_forget(forget, n)
        if (test_x is None) != (test_y is None):
            raise ValueError("test_x and test_y must be given together")
        self.x, self.y = train_x.to(self.device), train_y.to(self.device)
        check_lone_point_batches(model, self.x, self.forget, cfg.batch_size, cfg.order, cfg.epochs,
                                 cfg.seed)
        self.test_x, self.test_y = test_x, test_y
        self.is_forget = torch.zeros(n, dtype=torch.bool)
        self.is_forget[self.forget] = True
        self.loss_fn = make_loss(cfg.loss, cfg.lam)
        self.per_epoch = math.ceil(n / cfg.batch_size)
        self.total_steps = cfg.epochs * self.per_epoch
        self.initial = copy.deepcopy(model).requires_grad_(False)
        self.model, self.retrained = copy.deepcopy(model), copy.deepcopy(model)
        self.opt_model = make_optimizer(self.model, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.opt_retrained = make_optimizer(self.retrained, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.undo = UndoAccumulator(cfg, self.loss_fn, list(self.model.parameters()))
        sigma_x = self.x[: cfg.sigma_points]
        if cfg.sigma_data == "augmented":  # the first epoch's images of these points, as M sees them
            sigma_idx = torch.arange(sigma_x.shape[0])
            sigma_x = augment_batch(sigma_x, sigma_idx, epoch_draws(cfg.augment, n, 0, cfg.seed))
        self.sigma = SigmaTracker(cfg, self.loss_fn, sigma_x, self.y[: cfg.sigma_points])
        self.propagated = None if cfg.propagated is None else PropagatedUndo(
            cfg.propagated, cfg.lr, cfg.weight_decay, self.loss_fn, self.x[: cfg.propagated.points],
            self.y[: cfg.propagated.points], undo_bn_mode=cfg.undo_bn_mode, undo_form=cfg.undo_form)
        self.propagated_undo: list[torch.Tensor] | None = None
        self.rows: list[dict] = []
        self.t, self.times_seen = 0, 0
        self.fingerprint = results.fingerprint({"format": CHECKPOINT_FORMAT, "config": asdict(cfg),
                                                "n": n, "forget": self.forget.tolist(),
                                                "x_shape": list(train_x.shape)})
        self._epoch_plan: tuple | None = None  # (epoch, batches, draws)
        self._last: tuple | None = None  # (xb, yb, loss, epoch) of the last step

    @property
    def done(self) -> bool:
        """All ``epochs`` × ceil(N/b) steps are done."""
        return self.t >= self.total_steps

    def _plan(self, epoch: int) -> tuple:
        """The epoch's batches and augmentation draws (computed once per epoch)."""
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            cfg = self.config
            draws = epoch_draws(cfg.augment, self.n, epoch, cfg.seed)
            batches = batch_order(self.n, self.forget, cfg.batch_size, cfg.order, epoch, cfg.seed)
            self._epoch_plan = (epoch, batches, draws)
        return self._epoch_plan

    def step(self) -> float:
        """One SGD step of M on the next batch and of M′ on the same batch without its forget
        points (skipped when nothing is left); updates the unlearning correction. Returns M's
        batch loss. Raises RuntimeError when the run is already done."""
        if self.done:
            raise RuntimeError(f"the run is done ({self.total_steps} steps)")
        epoch, i = divmod(self.t, self.per_epoch)
        _, batches, draws = self._plan(epoch)
        idx = batches[i]
        xb, yb = self.x[idx.to(self.device)], self.y[idx.to(self.device)]
        xb = augment_batch(xb, idx, draws)
        fmask = self.is_forget[idx].to(self.device)
        if self.propagated is not None and bool(fmask.any()):  # the gradient where M sees x*
            self.propagated.record(self.t + 1, self.model, xb, yb, fmask)
        self.undo.before_step(self.t)
        loss_value = sgd_step(self.model, self.opt_model, self.loss_fn, xb, yb)
        keep = ~fmask
        if bool(keep.any()):
            sgd_step(self.retrained, self.opt_retrained, self.loss_fn, xb[keep], yb[keep])
        self.t += 1
        if bool(fmask.any()):
            self.times_seen += 1
            key = idx.numpy().tobytes() + (epoch.to_bytes(4, "little") if draws is not None else b"")
            self.undo.record(key, xb, yb, fmask, self.model, self.initial)
        self._last = (xb, yb, loss_value, epoch)
        return loss_value

    def measurement_due(self) -> bool:
        """The schedule: t = 1, every ``eval_every`` and ``sigma_every`` steps, and the last step."""
        cfg, t = self.config, self.t
        return (t == 1 or t % cfg.eval_every == 0 or t == self.total_steps
                or bool(cfg.sigma_every and t % cfg.sigma_every == 0))

    def current_undo(self) -> list[torch.Tensor]:
        """u with w″_t = w_t + u, in ``model.parameters()`` order."""
        return self.undo.current(self.model)

    def measure(self) -> dict:
        """Append (and return) the table row of the current step: distances, σ when due, e,
        accuracies when due (columns in :func:`run_lockstep`). Call after :meth:`step`."""
        if self._last is None:
            raise RuntimeError("measure() needs a step() first")
        cfg, t = self.config, self.t
        xb, yb, loss_value, epoch = self._last
        last = t == self.total_steps
        u = self.current_undo()
        dist = lockstep_distances(model_weights(self.model, cfg.include_buffers),
                                  model_weights(self.retrained, cfg.include_buffers),
                                  model_weights(self.initial, cfg.include_buffers),
                                  undo=self._with_buffers(u))
        row = {"t": t, "epoch": epoch, "times_seen": self.times_seen, "loss": loss_value,
               "ve": dist.ve, "delta_w": dist.delta_w, "dist_retrained": dist.dist_retrained,
               "eigenvalue": math.nan, "eig_residual": math.nan, "eig_error_bound": math.nan,
               "eig_hvps": 0}
        if cfg.undo_at == "checkpoint":  # Exp B's ‖w_t − w_ckpt‖ (parameters), see before_step
            row["dist_ckpt"] = weight_distance(list(self.model.parameters()), self.undo.ckpt_weights)
        if cfg.sigma_track:
            row["eig_tracked"] = False
        if self.propagated is not None:
            row.update(self._propagated(t, last))
        if self.sigma.due(t, last):
            row.update(self.sigma.measure(self.model, xb, yb))
        row.update(self.sigma.errors(t, row["delta_w"]))
        if self.test_x is not None and (last or (cfg.accuracy_every and t % cfg.accuracy_every == 0)):
            row.update(self._accuracies(u))
        self.rows.append(row)
        return row

    def _propagated(self, t: int, last: bool) -> dict:
        """VE of the Hessian-propagated correction (NaN when not due or before x* was seen)."""
        if not (self.propagated.due(t, last) and self.propagated.visits):
            return {"ve_propagated": math.nan, "propagated_hvps": 0, "propagated_error": math.nan,
                    "propagated_seconds": 0.0}
        u, info = self.propagated.correction(t, self.model, self.initial)
        self.propagated_undo = u
        cfg = self.config
        ve = weight_distance(model_weights(self.model, cfg.include_buffers),
                             model_weights(self.retrained, cfg.include_buffers),
                             offset=self._with_buffers(u))
        return {"ve_propagated": ve, **info}

    def _with_buffers(self, ws: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pad a parameters-only list with zeros for the buffers (include_buffers=True)."""
        if not self.config.include_buffers:
            return ws
        return ws + [torch.zeros_like(b) for b in self.model.buffers() if b.is_floating_point()]

    def _accuracies(self, u: list[torch.Tensor]) -> dict:
        """Test and forget-set accuracy of M, M′ (``_retrained``) and M″ (``_unlearned``)."""
        unlearned = with_undo(self.model, u)
        forget = self.forget.to(self.device)
        fx, fy = self.x[forget], self.y[forget]
        tx, ty = self.test_x.to(self.device), self.test_y.to(self.device)
        out = {}
        for suffix, m in (("", self.model), ("_retrained", self.retrained), ("_unlearned", unlearned)):
            out["test_acc" + suffix] = accuracy(m, tx, ty)
            out["forget_acc" + suffix] = accuracy(m, fx, fy)
        return out

    def state_dict(self) -> dict:
        """Everything a bit-identical resume needs (the checkpoint format of :func:`run_lockstep`)."""
        return {"format": CHECKPOINT_FORMAT, "config_fields": _config_fields(),
                "fingerprint": self.fingerprint, "t": self.t, "times_seen": self.times_seen,
                "initial": self.initial.state_dict(), "model": self.model.state_dict(),
                "retrained": self.retrained.state_dict(), "opt_model": self.opt_model.state_dict(),
                "opt_retrained": self.opt_retrained.state_dict(), **self.undo.state_dict(),
                **self.sigma.state_dict(), "rows": self.rows,
                **(self.propagated.state_dict() if self.propagated is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`. Raises ValueError if it was written in another
        :data:`CHECKPOINT_FORMAT` (by another version of unroll_utils), by another configuration
        or forget set, or from another w_0."""
        written = state.get("format", 1)
        if written != CHECKPOINT_FORMAT:
            raise ValueError(f"the state is in checkpoint format {written}, written by "
                             f"{'an older' if written < CHECKPOINT_FORMAT else 'a newer'} version of "
                             f"unroll_utils; this version reads format {CHECKPOINT_FORMAT}")
        if state["config_fields"] != _config_fields():
            added = sorted(set(_config_fields()) - set(state["config_fields"]))
            removed = sorted(set(state["config_fields"]) - set(_config_fields()))
            raise ValueError(f"the state is in checkpoint format {written} but was written by another "
                             f"version of unroll_utils, whose LockStepConfig lacked {added} and had "
                             f"{removed}")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("the state was written by another configuration or forget set")
        initial = copy.deepcopy(self.initial)
        initial.load_state_dict(state["initial"])
        if weight_distance(initial, self.initial) != 0.0:
            raise ValueError("model is not at the checkpoint's w_0; pass the same initial model")
        self.initial = initial
        self.model.load_state_dict(state["model"])
        self.retrained.load_state_dict(state["retrained"])
        self.opt_model.load_state_dict(state["opt_model"])
        self.opt_retrained.load_state_dict(state["opt_retrained"])
        self.undo.load_state_dict(state)
        self.sigma.load_state_dict(state)
        if self.propagated is not None:
            self.propagated.load_state_dict(state)
        self.rows, self.t, self.times_seen = state["rows"], state["t"], state["times_seen"]

    def _save(self, path: str | Path | None) -> None:
        if path is not None:
            results.save_checkpoint(self.state_dict(), path)

    def result(self) -> LockStepResult:
        """The table and models as they are now."""
        return LockStepResult(pd.DataFrame(self.rows), self.config, self.model, self.retrained,
                              self.initial, self.current_undo(), self.forget, self.t,
                              self.total_steps, complete=self.done,
                              propagated_undo=self.propagated_undo)

    def run(self, *, checkpoint_path: str | Path | None = None, checkpoint_every: int = 100,
            progress: bool = True, stop_after: int | None = None) -> LockStepResult:
        """Step and measure to the end (or ``stop_after`` more steps), checkpointing atomically to
        ``checkpoint_path`` every ``checkpoint_every`` steps and at the end; an existing checkpoint
        of the same run is resumed first. See :func:`run_lockstep`."""
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
        if checkpoint_path is not None and Path(checkpoint_path).exists():
            try:
                self.load_state_dict(results.load_checkpoint(checkpoint_path, map_location=self.device))
            except ValueError as err:
                if "checkpoint format" in str(err):
                    raise ValueError(f"checkpoint {checkpoint_path}: {err}; delete it to recompute the "
                                     "run, or choose another checkpoint_path") from None
                if "another configuration" not in str(err):
                    raise
                raise ValueError(f"checkpoint {checkpoint_path} was written by another configuration "
                                 "or forget set; delete it or choose another checkpoint_path") from None
        stop_at = self.t + stop_after if stop_after is not None else None
        with tqdm(total=self.total_steps, initial=self.t, desc="lock-step", disable=not progress,
                  mininterval=1.0, leave=False) as bar:
            while not self.done:
                if stop_at is not None and self.t >= stop_at:
                    self._save(checkpoint_path)
                    return self.result()
                self.step()
                if self.measurement_due():
                    self.measure()
                if self.t % checkpoint_every == 0:
                    self._save(checkpoint_path)
                bar.update(1)
        self._save(checkpoint_path)
        return self.result()


def _config_fields() -> list[str]:
    """The names of :class:`LockStepConfig`'s fields, in declaration order (stored in a checkpoint)."""
    return [f.name for f in fields(LockStepConfig)]


def _checked_forget(forget, n: int) -> torch.Tensor:
    """``forget`` as a CPU int64 tensor of sorted unique indices in [0, n), 1 ≤ m ≤ n − 1."""
    forget = torch.as_tensor(forget, dtype=torch.long).cpu()
    if forget.numel() == 0 or forget.numel() >= n:
        raise ValueError(f"forget must hold between 1 and {n - 1} indices; got {forget.numel()}")
    if not bool((forget[1:] > forget[:-1]).all()) or int(forget[0]) < 0 or int(forget[-1]) >= n:
        raise ValueError(f"forget must be sorted, unique indices in [0, {n - 1}]")
    return forget


def run_lockstep(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: LockStepConfig, *,
                 test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None,
                 checkpoint_path: str | Path | None = None, checkpoint_every: int = 100,
                 progress: bool = True, stop_after: int | None = None) -> LockStepResult:
    """Train M and M′ in lock-step from ``model``'s weights w_0 and measure unlearning.

    Args:
        model, train_x, train_y, forget, config, test_x, test_y: as :class:`LockStep`.
        checkpoint_path: if given, the run state is saved there atomically every
            ``checkpoint_every`` steps and at the end; an existing checkpoint of the same
            configuration is resumed (bit-identical to an uninterrupted run).
        checkpoint_every: steps between checkpoints, ≥ 1.
        progress: show a ``tqdm.auto`` progress bar.
        stop_after: stop after this many steps in this call (after checkpointing), e.g. to slice a
            long run; ``complete`` is then False.

    Returns:
        :class:`LockStepResult`. Table columns: ``t`` (SGD steps of M since w_0), ``epoch``,
        ``times_seen`` (steps that contained forget points so far), ``loss`` (M's batch loss),
        ``ve`` (‖w″_t − w′_t‖), ``delta_w`` (‖w_t − w_0‖), ``dist_retrained`` (‖w_t − w′_t‖, no
        unlearning; these three from one :func:`~unroll_utils.distances.lockstep_distances`
        pass), ``eigenvalue`` (λ, the top Hessian eigenvalue, NaN when not measured),
        ``eig_residual``, ``eig_error_bound`` (estimated |λ − eigenvalue|), ``eig_hvps``
        (and ``eig_tracked`` with ``config.sigma_track``; ``dist_ckpt``, ‖w_t − w_ckpt‖ over the
        parameters, with ``undo_at="checkpoint"``), ``sigma`` (latest σ), ``sigma_mean`` (running mean of σ),
        ``unlearning_error`` (e with t−1 second-order terms), ``rolling_unlearning_error``, and,
        at accuracy steps, ``test_acc``/``forget_acc`` for M, M′ (``_retrained``) and M″
        (``_unlearned``), in [0, 1]; with ``config.propagated``: ``ve_propagated`` (‖w‴_t − w′_t‖,
        the Hessian-propagated correction, NaN where not computed), ``propagated_hvps`` (HVPs spent
        at this step), ``propagated_error`` (Krylov error estimate of ‖u‖'s propagated part, weight
        units), ``propagated_seconds`` (wall time of the correction).

    Raises:
        ValueError: invalid config (named field), bad forget set, mismatched data, a checkpoint
            written by another configuration or in another :data:`CHECKPOINT_FORMAT` (by another
            version of unroll_utils: delete it to recompute), or a ``model`` that is not the
            checkpoint's w_0.
    """
    run = LockStep(model, train_x, train_y, forget, config, test_x=test_x, test_y=test_y)
    return run.run(checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                   progress=progress, stop_after=stop_after)
