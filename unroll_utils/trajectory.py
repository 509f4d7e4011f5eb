"""The lock-step training trajectory of M, M′ and M″ (paper §1.1–§1.4, §2.2–§2.4).

From the same weights w_0, the original model M trains on every batch of a fixed, recorded order,
and the naively retrained model M′ trains on the *same* batches with the forget points removed
(same augmentation draws, its own optimiser state; a batch made only of forget points is skipped,
as M′ skips the x* batch in the reference code). Single gradient unlearning
(:mod:`unroll_utils.unlearning`) gives M″ at every measurement step, and the paper's metrics are
logged: verification error ‖w″_t − w′_t‖, ‖w_t − w_0‖, ‖w_t − w′_t‖, σ, the unlearning error e and
its rolling variant, and accuracies. Results are a tidy :class:`pandas.DataFrame`; long runs
checkpoint atomically and resume bit-identically.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import hessian, results
from .losses import make_loss
from .metrics import (accuracy, lockstep_distances, model_weights, snapshot, unlearning_error,
                      weight_distance)
from .unlearning import UNDO_FORMS, UNDO_POINTS, forget_gradient

ORDERS = ("forget_first", "index", "shuffle")
AUGMENTS = ("none", "crop_flip")
SIGMA_BATCHES = ("fixed", "current")


@dataclass(frozen=True)
class LockStepConfig:
    """Configuration of a lock-step run; every field is validated by :meth:`validate`.

    Attributes:
        lr: η > 0, constant SGD learning rate.
        batch_size: b ≥ 1 (the last batch may be smaller, down to 1 point).
        epochs: passes over the data, ≥ 1.
        momentum, weight_decay: SGD options in [0, 1) and ≥ 0 (0 = the plain SGD of the theory;
            the reference Exp A used 0.9 and 5e-4, under which the η-scaled undo under-corrects).
        loss: ``"ce"`` or ``"sd"`` (SD loss with ``lam``); also the Hessian's objective.
        lam: λ ≥ 0 of the SD loss.
        order: ``"forget_first"`` (paper: x* first, then the rest in index order, every epoch),
            ``"index"`` (dataset order), ``"shuffle"`` (a seeded permutation per epoch).
        augment: ``"none"`` or ``"crop_flip"`` (random 4-pixel-padded crop + horizontal flip,
            drawn per point and epoch from ``seed``, identical for M and M′).
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
        sigma_convention: ``"sqrt_eig"`` (reference, σ = sqrt(λ_max)) or ``"abs_eig"``.
        sigma_method: ``"lanczos"`` or ``"power"``.
        sigma_tol: relative tolerance of the eigen-solve's stopping rule, in (0, 1).
        sigma_stop: ``"residual"`` (‖Hv − λv‖ ≤ tol·|λ|, default) or ``"eigenvalue"`` (Lanczos
            only: estimated eigenvalue error ≤ tol·|λ|; about half the HVPs per warm-started
            solve, see :func:`unroll_utils.hessian.lanczos_top_eigen`).
        sigma_max_iter: HVP budget per σ, ≥ 1.
        sigma_warm_start: start each solve from the previous eigenvector.
        sigma_bn_mode: ``"eval"`` (reference) or ``"train"``.
        accuracy_every: measure test/forget accuracy of M, M′, M″ every this many steps (and at the
            last step); 0 = last step only.
        include_buffers: include BatchNorm running statistics in VE and ‖w_t − w_0‖ (the paper
            excludes them).
    """

    lr: float = 0.01
    batch_size: int = 32
    epochs: int = 1
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "ce"
    lam: float = 0.0
    order: str = "forget_first"
    augment: str = "none"
    seed: int = 0
    undo_at: str = "w0"
    undo_bn_mode: str = "train"
    undo_form: str = "paper"
    checkpoint_freq: int = 10
    eval_every: int = 10
    sigma_every: int = 10
    sigma_batch: str = "fixed"
    sigma_points: int = 512
    sigma_convention: str = "sqrt_eig"
    sigma_method: str = "lanczos"
    sigma_tol: float = 1e-3
    sigma_stop: str = "residual"
    sigma_max_iter: int = 100
    sigma_warm_start: bool = True
    sigma_bn_mode: str = "eval"
    accuracy_every: int = 0
    include_buffers: bool = False

    def validate(self) -> "LockStepConfig":
        """Raise ValueError naming the first bad field and its allowed range; return self."""
        def need(ok: bool, name: str, allowed: str) -> None:
            require(self, ok, name, allowed)

        need(math.isfinite(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.epochs >= 1, "epochs", ">= 1")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.loss in ("ce", "sd"), "loss", "one of ('ce', 'sd')")
        need(self.lam >= 0 and (self.loss == "sd" or self.lam == 0), "lam",
             ">= 0, and 0 unless loss='sd'")
        need(self.order in ORDERS, "order", f"one of {ORDERS}")
        need(self.augment in AUGMENTS, "augment", f"one of {AUGMENTS}")
        need(self.undo_at in UNDO_POINTS, "undo_at", f"one of {UNDO_POINTS}")
        need(self.undo_bn_mode in hessian.BN_MODES, "undo_bn_mode", f"one of {hessian.BN_MODES}")
        need(self.undo_form in UNDO_FORMS, "undo_form", f"one of {UNDO_FORMS}")
        need(self.checkpoint_freq >= 1, "checkpoint_freq", ">= 1")
        need(self.eval_every >= 1, "eval_every", ">= 1")
        need(self.sigma_every >= 0, "sigma_every", ">= 0 (0 disables σ)")
        need(self.sigma_batch in SIGMA_BATCHES, "sigma_batch", f"one of {SIGMA_BATCHES}")
        need(self.sigma_points >= 1, "sigma_points", ">= 1")
        need(self.sigma_convention in hessian.SIGMA_CONVENTIONS, "sigma_convention",
             f"one of {hessian.SIGMA_CONVENTIONS}")
        need(self.sigma_method in hessian.METHODS, "sigma_method", f"one of {hessian.METHODS}")
        need(0 < self.sigma_tol < 1, "sigma_tol", "in (0, 1)")
        need(self.sigma_stop in hessian.STOP_RULES
             and (self.sigma_stop == "residual" or self.sigma_method == "lanczos"), "sigma_stop",
             f"one of {hessian.STOP_RULES}, and 'residual' unless sigma_method='lanczos'")
        need(self.sigma_max_iter >= 1, "sigma_max_iter", ">= 1")
        need(self.sigma_bn_mode in hessian.BN_MODES, "sigma_bn_mode", f"one of {hessian.BN_MODES}")
        need(self.accuracy_every >= 0, "accuracy_every", ">= 0")
        return self


def require(config, ok: bool, name: str, allowed: str) -> None:
    """Raise ValueError naming ``config.<name>``, its allowed range and its value, unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {getattr(config, name)!r}")


def with_undo(model: nn.Module, undo: list[torch.Tensor]) -> nn.Module:
    """M″: a copy of ``model`` with the single gradient unlearning correction added (w″ = w + u)."""
    unlearned = copy.deepcopy(model)
    with torch.no_grad():
        torch._foreach_add_(list(unlearned.parameters()), undo)
    return unlearned


def _sub_seed(seed: int, *stream: int) -> int:
    """An independent 63-bit seed for (seed, stream...) from numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_order(n: int, forget: torch.Tensor, batch_size: int, order: str, epoch: int,
                seed: int) -> list[torch.Tensor]:
    """The batches (int64 index tensors) M sees in one epoch.

    Args:
        n: dataset size; forget: sorted forget indices; batch_size: b; order: see
        :class:`LockStepConfig`; epoch: 0-based epoch (only ``"shuffle"`` depends on it);
        seed: run seed.

    Returns:
        ceil(n/b) index tensors covering [0, n) once; the last may hold fewer than b points.

    Raises:
        ValueError: unknown ``order``.
    """
    if order == "forget_first":
        is_forget = torch.zeros(n, dtype=torch.bool)
        is_forget[forget] = True
        perm = torch.cat([forget, torch.nonzero(~is_forget).flatten()])
    elif order == "index":
        perm = torch.arange(n)
    elif order == "shuffle":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_sub_seed(seed, 0, epoch)))
    else:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    return list(torch.split(perm, batch_size))


def augmentation_draws(n: int, epoch: int, seed: int, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point crop offsets (n, 2) in [0, 2·pad] and flips (n,) for one epoch, from ``seed``."""
    g = torch.Generator().manual_seed(_sub_seed(seed, 1, epoch))
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    return shifts, flips


def crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip of a batch, with given draws.

    Args:
        x: (B, C, H, W); shifts: (B, 2) int offsets in [0, 2·pad]; flips: (B,) bool.

    Returns:
        (B, C, H, W), zero padding in the (normalised) input space.
    """
    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    shifts = shifts.to(x.device)
    rows = shifts[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = shifts[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips.to(x.device)[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, x: torch.Tensor,
             y: torch.Tensor) -> float:
    """One training step (model in train mode); returns the batch loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.SGD:
    """``torch.optim.SGD`` with the run's hyper-parameters (a fresh state per model)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, epochs: int,
              batch_size: int, seed: int = 0, loss: str = "ce", lam: float = 0.0,
              momentum: float = 0.0, weight_decay: float = 0.0, augment: str = "none",
              progress: bool = True) -> list[float]:
    """Plain SGD training in place (e.g. the pretraining that produces w_0, paper §2.1).

    Args:
        model: trained in place, on its own device. x: (N, ...), y: (N,) on that device.
        lr, epochs, batch_size, seed, loss, lam, momentum, weight_decay, augment: as
            :class:`LockStepConfig` (the order is a seeded shuffle per epoch).

    Returns:
        Mean training loss per epoch.

    Raises:
        ValueError: invalid hyper-parameters (named).
    """
    cfg = LockStepConfig(lr=lr, batch_size=batch_size, epochs=epochs, momentum=momentum,
                         weight_decay=weight_decay, loss=loss, lam=lam, augment=augment,
                         seed=seed).validate()
    loss_fn = make_loss(loss, lam)
    opt = make_optimizer(model, lr, momentum, weight_decay)
    n = x.shape[0]
    empty = torch.empty(0, dtype=torch.long)
    losses = []
    steps = epochs * math.ceil(n / batch_size)
    with tqdm(total=steps, desc="pretrain", disable=not progress, mininterval=1.0, leave=False) as bar:
        for epoch in range(epochs):
            shifts, flips = augmentation_draws(n, epoch, cfg.seed) if augment == "crop_flip" else (None, None)
            total = 0.0
            for idx in batch_order(n, empty, batch_size, "shuffle", epoch, cfg.seed):
                xb = x[idx.to(x.device)]
                if shifts is not None:
                    xb = crop_flip(xb, shifts[idx], flips[idx])
                total += sgd_step(model, opt, loss_fn, xb, y[idx.to(y.device)]) * len(idx)
                bar.update(1)
            losses.append(total / n)
    return losses


@dataclass
class LockStepResult:
    """What :func:`run_lockstep` returns.

    Attributes:
        table: one row per measurement step (see :func:`run_lockstep`).
        config: the validated configuration.
        model: M at the last step done; retrained: M′; initial: M at w_0 (frozen copy).
        undo: single gradient unlearning correction u (w″ = w_t + u), parameters order.
        forget: the forget indices; steps_done / total_steps; complete: all steps done.
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

    def unlearned_model(self) -> nn.Module:
        """M″: a copy of M with w″ = w_t + u loaded (buffers are M's)."""
        return with_undo(self.model, self.undo)


def run_lockstep(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: LockStepConfig, *,
                 test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None,
                 checkpoint_path: str | Path | None = None, checkpoint_every: int = 100,
                 progress: bool = True, stop_after: int | None = None) -> LockStepResult:
    """Train M and M′ in lock-step from ``model``'s weights w_0 and measure unlearning.

    Args:
        model: the network at w_0 (not modified; M, M′ and a frozen w_0 copy are deep copies).
        train_x: (N, ...) inputs; train_y: (N,) int64 labels (moved to the model's device).
        forget: sorted unique int64 forget indices in [0, N) (see
            :func:`unroll_utils.data.select_forget_set`); at least one point must remain.
        config: a :class:`LockStepConfig`.
        test_x, test_y: optional test set for accuracies.
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
        unlearning; these three from one :func:`~unroll_utils.metrics.lockstep_distances`
        pass), ``eigenvalue`` (λ, the top Hessian eigenvalue, NaN when not measured),
        ``eig_residual``, ``eig_error_bound`` (estimated |λ − eigenvalue|), ``eig_hvps``,
        ``sigma`` (latest σ), ``sigma_mean`` (running mean of σ),
        ``unlearning_error`` (e with t−1 second-order terms), ``rolling_unlearning_error``, and,
        at accuracy steps, ``test_acc``/``forget_acc`` for M, M′ (``_retrained``) and M″
        (``_unlearned``), in [0, 1].

    Raises:
        ValueError: invalid config (named field), bad forget set, mismatched data, a checkpoint
            written by another configuration, or a ``model`` that is not the checkpoint's w_0.
    """
    cfg = config.validate()
    device = next(model.parameters()).device
    n = train_x.shape[0]
    if train_y.shape != (n,):
        raise ValueError(f"train_y must have shape ({n},); got {tuple(train_y.shape)}")
    forget = torch.as_tensor(forget, dtype=torch.long).cpu()
    if forget.numel() == 0 or forget.numel() >= n:
        raise ValueError(f"forget must hold between 1 and {n - 1} indices; got {forget.numel()}")
    if not bool((forget[1:] > forget[:-1]).all()) or int(forget[0]) < 0 or int(forget[-1]) >= n:
        raise ValueError(f"forget must be sorted, unique indices in [0, {n - 1}]")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
    if (test_x is None) != (test_y is None):
        raise ValueError("test_x and test_y must be given together")
    x, y = train_x.to(device), train_y.to(device)
    is_forget = torch.zeros(n, dtype=torch.bool)
    is_forget[forget] = True
    loss_fn = make_loss(cfg.loss, cfg.lam)
    per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * per_epoch

    initial = copy.deepcopy(model).requires_grad_(False)
    m_orig, m_retr = copy.deepcopy(model), copy.deepcopy(model)
    opt_orig = make_optimizer(m_orig, cfg.lr, cfg.momentum, cfg.weight_decay)
    opt_retr = make_optimizer(m_retr, cfg.lr, cfg.momentum, cfg.weight_decay)
    params = list(m_orig.parameters())
    undo = [torch.zeros_like(p) for p in params]
    undo_at_w0: dict[bytes, list[torch.Tensor]] = {}
    occurrences: dict[bytes, dict] = {}  # for "final"/"checkpoint": batch tensors and Σ η
    ckpt_weights = snapshot(params)
    sigmas: list[float] = []
    eigvec: torch.Tensor | None = None
    rows: list[dict] = []
    times_seen, t = 0, 0
    fp = results.fingerprint({"config": asdict(cfg), "n": n, "forget": forget.tolist(),
                              "x_shape": list(train_x.shape)})

    if checkpoint_path is not None and Path(checkpoint_path).exists():
        st = results.load_checkpoint(checkpoint_path, map_location=device)
        if st["fingerprint"] != fp:
            raise ValueError(f"checkpoint {checkpoint_path} was written by another configuration or "
                             "forget set; delete it or choose another checkpoint_path")
        initial.load_state_dict(st["initial"])
        if weight_distance(initial, model) != 0.0:
            raise ValueError("model is not at the checkpoint's w_0; pass the same initial model")
        m_orig.load_state_dict(st["model"])
        m_retr.load_state_dict(st["retrained"])
        opt_orig.load_state_dict(st["opt_model"])
        opt_retr.load_state_dict(st["opt_retrained"])
        with torch.no_grad():
            torch._foreach_copy_(undo, st["undo"])
            torch._foreach_copy_(ckpt_weights, st["ckpt_weights"])
        undo_at_w0, occurrences = st["undo_at_w0"], st["occurrences"]
        sigmas, eigvec, rows = st["sigmas"], st["eigvec"], st["rows"]
        times_seen, t = st["times_seen"], st["t"]

    def save_state() -> None:
        if checkpoint_path is None:
            return
        results.save_checkpoint({
            "fingerprint": fp, "t": t, "times_seen": times_seen, "initial": initial.state_dict(),
            "model": m_orig.state_dict(), "retrained": m_retr.state_dict(),
            "opt_model": opt_orig.state_dict(), "opt_retrained": opt_retr.state_dict(),
            "undo": undo, "ckpt_weights": ckpt_weights, "undo_at_w0": undo_at_w0,
            "occurrences": occurrences, "sigmas": sigmas, "eigvec": eigvec, "rows": rows,
        }, checkpoint_path)

    def extended(ws: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pad a parameters-only list with zeros for the buffers (include_buffers=True)."""
        if not cfg.include_buffers:
            return ws
        return ws + [torch.zeros_like(b) for b in m_orig.buffers() if b.is_floating_point()]

    def current_undo() -> list[torch.Tensor]:
        if cfg.undo_at in ("w0", "current"):
            return undo
        at = None if cfg.undo_at == "final" else ckpt_weights
        u = [torch.zeros_like(p) for p in params]
        for occ in occurrences.values():
            g = forget_gradient(m_orig, loss_fn, occ["x"], occ["y"], occ["mask"], weights=at,
                                bn_mode=cfg.undo_bn_mode, form=cfg.undo_form)
            torch._foreach_add_(u, g, alpha=occ["eta"])
        return u

    def measure(xb: torch.Tensor, yb: torch.Tensor, loss_value: float, epoch: int) -> None:
        nonlocal eigvec
        last = t == total_steps
        u = current_undo()
        dist = lockstep_distances(model_weights(m_orig, cfg.include_buffers),
                                  model_weights(m_retr, cfg.include_buffers),
                                  model_weights(initial, cfg.include_buffers), undo=extended(u))
        row = {"t": t, "epoch": epoch, "times_seen": times_seen, "loss": loss_value,
               "ve": dist.ve, "delta_w": dist.delta_w, "dist_retrained": dist.dist_retrained,
               "eigenvalue": math.nan, "eig_residual": math.nan, "eig_error_bound": math.nan,
               "eig_hvps": 0,
               "sigma": math.nan, "sigma_mean": math.nan, "unlearning_error": math.nan,
               "rolling_unlearning_error": math.nan}
        if cfg.sigma_every and (t == 1 or t % cfg.sigma_every == 0 or last):
            if cfg.sigma_batch == "fixed":
                xh, yh = x[: cfg.sigma_points], y[: cfg.sigma_points]
            else:
                xh, yh = xb, yb
            sigma, eig = hessian.estimate_sigma(
                m_orig, loss_fn, xh, yh, convention=cfg.sigma_convention, method=cfg.sigma_method,
                tol=cfg.sigma_tol, max_iter=cfg.sigma_max_iter, stop=cfg.sigma_stop,
                init=eigvec if cfg.sigma_warm_start else None,
                generator=torch.Generator().manual_seed(_sub_seed(cfg.seed, 2)),
                bn_mode=cfg.sigma_bn_mode)
            sigmas.append(sigma)
            eigvec = eig.eigenvector
            row.update(eigenvalue=eig.eigenvalue, eig_residual=eig.residual,
                       eig_error_bound=eig.error_bound, eig_hvps=eig.n_hvp)
        if sigmas:
            row["sigma"], row["sigma_mean"] = sigmas[-1], float(np.mean(sigmas))
            row["unlearning_error"] = unlearning_error(cfg.lr, t - 1, row["delta_w"], sigmas[-1])
            row["rolling_unlearning_error"] = unlearning_error(cfg.lr, t - 1, row["delta_w"],
                                                               row["sigma_mean"])
        if test_x is not None and (last or (cfg.accuracy_every and t % cfg.accuracy_every == 0)):
            scratch = with_undo(m_orig, u)
            fx, fy = x[forget.to(device)], y[forget.to(device)]
            tx, ty = test_x.to(device), test_y.to(device)
            for suffix, m in (("", m_orig), ("_retrained", m_retr), ("_unlearned", scratch)):
                row["test_acc" + suffix] = accuracy(m, tx, ty)
                row["forget_acc" + suffix] = accuracy(m, fx, fy)
        rows.append(row)

    stop_at = t + stop_after if stop_after is not None else None
    with tqdm(total=total_steps, initial=t, desc="lock-step", disable=not progress,
              mininterval=1.0, leave=False) as bar:
        for epoch in range(t // per_epoch, cfg.epochs):
            shifts, flips = (augmentation_draws(n, epoch, cfg.seed) if cfg.augment == "crop_flip"
                             else (None, None))
            for i, idx in enumerate(batch_order(n, forget, cfg.batch_size, cfg.order, epoch, cfg.seed)):
                if epoch * per_epoch + i < t:
                    continue  # done before the resume
                if stop_at is not None and t >= stop_at:
                    save_state()
                    return LockStepResult(pd.DataFrame(rows), cfg, m_orig, m_retr, initial,
                                          current_undo(), forget, t, total_steps, complete=False)
                xb, yb = x[idx.to(device)], y[idx.to(device)]
                if shifts is not None:
                    xb = crop_flip(xb, shifts[idx], flips[idx])
                fmask = is_forget[idx].to(device)
                loss_value = sgd_step(m_orig, opt_orig, loss_fn, xb, yb)
                keep = ~fmask
                if bool(keep.any()):
                    sgd_step(m_retr, opt_retr, loss_fn, xb[keep], yb[keep])
                t += 1
                if bool(fmask.any()):
                    times_seen += 1
                    key = idx.numpy().tobytes() + (epoch.to_bytes(4, "little") if shifts is not None else b"")
                    if cfg.undo_at == "w0":
                        if key not in undo_at_w0:
                            undo_at_w0[key] = forget_gradient(
                                initial, loss_fn, xb, yb, fmask, bn_mode=cfg.undo_bn_mode,
                                form=cfg.undo_form)
                        torch._foreach_add_(undo, undo_at_w0[key], alpha=cfg.lr)
                    elif cfg.undo_at == "current":
                        g = forget_gradient(m_orig, loss_fn, xb, yb, fmask,
                                            bn_mode=cfg.undo_bn_mode, form=cfg.undo_form)
                        torch._foreach_add_(undo, g, alpha=cfg.lr)
                    else:
                        occ = occurrences.setdefault(key, {"x": xb, "y": yb, "mask": fmask, "eta": 0.0})
                        occ["eta"] += cfg.lr
                if cfg.undo_at == "checkpoint" and t % cfg.checkpoint_freq == 0:
                    with torch.no_grad():
                        torch._foreach_copy_(ckpt_weights, params)
                if t == 1 or t % cfg.eval_every == 0 or t == total_steps or (
                        cfg.sigma_every and t % cfg.sigma_every == 0):
                    measure(xb, yb, loss_value, epoch)
                if t % checkpoint_every == 0:
                    save_state()
                bar.update(1)
    save_state()
    return LockStepResult(pd.DataFrame(rows), cfg, m_orig, m_retr, initial, current_undo(),
                          forget, t, total_steps, complete=True)
