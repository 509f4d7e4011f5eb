"""The lock-step training trajectory of M, M′ and M″ (notebooks 03–04; the reference's
`Unlearning/correlation_verification.py`).

From the same weights w_0, the original model M trains on every batch of a fixed, recorded order,
and the naively retrained model M′ trains on the *same* batches with the forget points removed
(same augmentation draws, its own optimiser state; a batch made only of forget points is skipped,
as M′ skips the x* batch in the reference code). Single gradient unlearning
(:mod:`unroll_utils.unlearning`) gives M″ at every measurement step, and the paper's metrics are
logged: verification error ‖w″_t − w′_t‖, ‖w_t − w_0‖, ‖w_t − w′_t‖, σ, the unlearning error e and
its rolling variant, and accuracies. Results are a tidy :class:`pandas.DataFrame`; long runs
checkpoint atomically and resume bit-identically.

This module holds what a user writes and calls: the run's configuration, :class:`LockStepConfig`,
and the one-call form, :func:`run_lockstep`. The run itself is the state machine
:class:`unroll_utils.lockstep.LockStep` (step, measure, checkpoint state), with the σ bookkeeping
in :class:`unroll_utils.sigma.SigmaTracker` and the unlearning correction in
:class:`unroll_utils.unlearning.UndoAccumulator`; the training primitives (data order,
augmentation, SGD steps) live in :mod:`unroll_utils.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import hessian
from .lockstep import LockStep, LockStepResult
from .propagated import PropagatedConfig
from .training import SGDConfig, require
from .unlearning import UNDO_FORMS, UNDO_POINTS

__all__ = ["LockStepConfig", "run_lockstep", "SIGMA_BATCHES", "SIGMA_DATA"]

SIGMA_BATCHES = ("fixed", "current")
SIGMA_DATA = ("augmented", "raw")

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

        super().validate()
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


def run_lockstep(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: LockStepConfig, *,
                 test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None,
                 checkpoint_path: str | Path | None = None, checkpoint_every: int = 100,
                 progress: bool = True, stop_after: int | None = None) -> LockStepResult:
    """Train M and M′ in lock-step from ``model``'s weights w_0 and measure unlearning.

    Args:
        model, train_x, train_y, forget, config, test_x, test_y: as
            :class:`unroll_utils.lockstep.LockStep`.
        checkpoint_path: if given, the run state is saved there atomically every
            ``checkpoint_every`` steps and at the end; an existing checkpoint of the same
            configuration is resumed (bit-identical to an uninterrupted run).
        checkpoint_every: steps between checkpoints, ≥ 1.
        progress: show a ``tqdm.auto`` progress bar.
        stop_after: stop after this many steps in this call (after checkpointing), e.g. to slice a
            long run; ``complete`` is then False.

    Returns:
        :class:`unroll_utils.lockstep.LockStepResult`. Table columns: ``t`` (SGD steps of M since w_0), ``epoch``,
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
            written by another configuration or in another
            :data:`unroll_utils.lockstep.CHECKPOINT_FORMAT` (by another
            version of unroll_utils: delete it to recompute), or a ``model`` that is not the
            checkpoint's w_0.
    """
    run = LockStep(model, train_x, train_y, forget, config, test_x=test_x, test_y=test_y)
    return run.run(checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                   progress=progress, stop_after=stop_after)
