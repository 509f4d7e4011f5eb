"""The lock-step engine: M, M′ and M″ stepped together from w_0, measured, and checkpointed
(notebooks 03–04; the reference's `Unlearning/correlation_verification.py`).

From the same weights w_0, the original model M trains on every batch of a fixed, recorded order,
and the naively retrained model M′ trains on the *same* batches with the forget points removed
(same augmentation draws, its own optimiser state; a batch made only of forget points is skipped,
as M′ skips the x* batch in the reference code). :class:`LockStep` is that run as a small state
machine: ``step()``, ``measure()`` (one table row), ``run()``, and ``state_dict()`` in the
checkpoint layout :data:`CHECKPOINT_FORMAT`, resumed bit-identically. Its configuration is
:class:`unroll_utils.trajectory.LockStepConfig`, and :func:`unroll_utils.trajectory.run_lockstep`
its one-call form; the σ bookkeeping is :class:`unroll_utils.sigma.SigmaTracker` and the
unlearning correction :class:`unroll_utils.unlearning.UndoAccumulator`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import results
from .distances import lockstep_distances, model_weights, weight_distance
from .losses import make_loss
from .metrics import accuracy
from .propagated import PropagatedUndo
from .sigma import SigmaTracker
from .training import (SGDConfig, augment_batch, batch_order, check_lone_point_batches, epoch_draws,
                       make_optimizer, sgd_step)
from .unlearning import UndoAccumulator, with_undo

__all__ = ["LockStep", "LockStepResult", "CHECKPOINT_FORMAT"]

#: The layout of :meth:`LockStep.state_dict` and of its fingerprint. Raise it when that layout changes;
#: a field added to or removed from
#: :class:`unroll_utils.trajectory.LockStepConfig` needs no change here, as the state also
#: records the config's field names and a checkpoint with other names is refused the same way (a
#: message saying so, instead of a resume into a run it does not describe). 1: unrolling-sgd 0.1.0
#: (no ``format`` entry; fields added after its first release left out of the fingerprint at their
#: defaults).
CHECKPOINT_FORMAT = 2


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
    config: SGDConfig
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


class LockStep:
    """A lock-step run of M and M′ from the same w_0, with single gradient unlearning (M″) and the
    paper's measurements, as a small state machine (notebooks 03–04; the reference's `Unlearning/correlation_verification.py`).

    ``step()`` trains M and M′ on the next batch of the recorded order; ``measure()`` appends a
    table row for the current step; ``run()`` loops over both with checkpoints and a progress bar;
    ``state_dict()``/``load_state_dict()`` save and restore everything a bit-identical resume
    needs. :func:`run_lockstep` is the one-call form.

    Args:
        model: the network at w_0 (not modified; M, M′ and a frozen w_0 copy are deep copies).
        train_x: (N, ...) inputs; train_y: (N,) int64 labels (moved to the model's device).
        forget: sorted unique int64 forget indices in [0, N) (see
            :func:`unroll_utils.data.select_forget_set`); at least one point must remain.
        config: a :class:`unroll_utils.trajectory.LockStepConfig`.
        test_x, test_y: optional test set for accuracies.

    Raises:
        ValueError: invalid config (named field), bad forget set, mismatched data, or a batch of
            one point (for M, or M′ after removing the forget points) that the model's BatchNorm
            cannot train on (:func:`unroll_utils.training.check_lone_point_batches`).
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: SGDConfig, *,
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
        return {"format": CHECKPOINT_FORMAT, "config_fields": _config_fields(self.config),
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
        if state["config_fields"] != _config_fields(self.config):
            added = sorted(set(_config_fields(self.config)) - set(state["config_fields"]))
            removed = sorted(set(state["config_fields"]) - set(_config_fields(self.config)))
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


def _config_fields(config) -> list[str]:
    """The names of the run configuration's fields (:class:`unroll_utils.trajectory.LockStepConfig`),
    in declaration order (stored in a checkpoint)."""
    return [f.name for f in fields(config)]


def _checked_forget(forget, n: int) -> torch.Tensor:
    """``forget`` as a CPU int64 tensor of sorted unique indices in [0, n), 1 ≤ m ≤ n − 1."""
    forget = torch.as_tensor(forget, dtype=torch.long).cpu()
    if forget.numel() == 0 or forget.numel() >= n:
        raise ValueError(f"forget must hold between 1 and {n - 1} indices; got {forget.numel()}")
    if not bool((forget[1:] > forget[:-1]).all()) or int(forget[0]) < 0 or int(forget[-1]) >= n:
        raise ValueError(f"forget must be sorted, unique indices in [0, {n - 1}]")
    return forget
