"""Resumable pretraining: the plain SGD run that produces w_0 (paper §2.1), with checkpoints.

:class:`Pretraining` takes exactly the steps of :func:`unroll_utils.trajectory.train_sgd` (same
seeded shuffle per epoch, same augmentation draws, same optimiser), so an uninterrupted run gives
the same weights bit for bit; it also saves its state atomically every few steps, and a run killed
(or interrupted with Ctrl-C) part-way resumes from the last checkpoint to the weights the
uninterrupted run reaches, bit for bit on the same machine, torch build and thread count.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import results
from .losses import make_loss
from .trajectory import (LockStepConfig, augmentation_draws, batch_order, crop_flip, make_optimizer,
                         sgd_step)


class Pretraining:
    """Plain SGD training of ``model`` in place, resumable from a checkpoint.

    Args:
        model: trained in place, on its own device; it must be the same starting model when a run
            resumes (checked through the squared norm of its weights, part of the fingerprint).
        x: (N, ...) inputs, y: (N,) int64 labels, on the model's device.
        lr, epochs, batch_size, seed, loss, lam, momentum, weight_decay, augment: as
            :func:`unroll_utils.trajectory.train_sgd` (the order is a seeded shuffle per epoch).

    Attributes:
        t: SGD steps done; total_steps: epochs · ceil(N / batch_size).
        epoch_losses: mean training loss of every finished epoch.

    Raises:
        ValueError: invalid hyper-parameters (named as the arguments above).

    The models of :mod:`unroll_utils.models` draw no random numbers in their forward pass, so the
    global RNG is not part of the state.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                 epochs: int, batch_size: int, seed: int = 0, loss: str = "ce", lam: float = 0.0,
                 momentum: float = 0.0, weight_decay: float = 0.0, augment: str = "none") -> None:
        self.config = LockStepConfig(lr=lr, batch_size=batch_size, epochs=epochs, momentum=momentum,
                                     weight_decay=weight_decay, loss=loss, lam=lam, augment=augment,
                                     seed=seed).validate()
        self.model, self.x, self.y = model, x, y
        self.loss_fn = make_loss(loss, lam)
        self.optimizer = make_optimizer(model, lr, momentum, weight_decay)
        self.n = x.shape[0]
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        self.total_steps = epochs * self.steps_per_epoch
        self.t = 0
        self.epoch_losses: list[float] = []
        self._epoch_total = 0.0  # Σ batch loss × batch size over the current epoch's steps
        with torch.no_grad():
            start_norm = float(sum(p.detach().double().square().sum() for p in model.parameters()))
        self.fingerprint = results.fingerprint({"config": asdict(self.config), "n": self.n,
                                                "x_shape": list(x.shape), "w_start": start_norm})

    def state_dict(self) -> dict:
        """Everything a resume needs: step, losses, model and optimiser state, fingerprint."""
        return {"fingerprint": self.fingerprint, "t": self.t, "epoch_losses": list(self.epoch_losses),
                "epoch_total": self._epoch_total, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; ValueError if it belongs to another run."""
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("the pretraining checkpoint was written by another configuration or "
                             "starting model; delete it or choose another checkpoint_path")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.t, self.epoch_losses = state["t"], list(state["epoch_losses"])
        self._epoch_total = state["epoch_total"]

    def run(self, *, checkpoint_path: str | Path | None = None, checkpoint_every: int = 50,
            progress: bool = True) -> list[float]:
        """Train to the end, resuming from ``checkpoint_path`` when it exists.

        Args:
            checkpoint_path: where the state is saved atomically every ``checkpoint_every`` steps
                and at the end (None: no checkpoints).
            checkpoint_every: steps between checkpoints, ≥ 1.
            progress: a ``tqdm.auto`` progress bar.

        Returns:
            Mean training loss per epoch (as :func:`~unroll_utils.trajectory.train_sgd`).

        Raises:
            ValueError: ``checkpoint_every`` < 1, or a checkpoint of another run.
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
        if checkpoint_path is not None and Path(checkpoint_path).exists():
            self.load_state_dict(results.load_checkpoint(checkpoint_path,
                                                         map_location=self.x.device))
        cfg, empty = self.config, torch.empty(0, dtype=torch.long)
        with tqdm(total=self.total_steps, initial=self.t, desc="pretrain", disable=not progress,
                  mininterval=1.0, leave=False) as bar:
            for epoch in range(self.t // self.steps_per_epoch, cfg.epochs):
                shifts, flips = (augmentation_draws(self.n, epoch, cfg.seed)
                                 if cfg.augment == "crop_flip" else (None, None))
                order = batch_order(self.n, empty, cfg.batch_size, "shuffle", epoch, cfg.seed)
                for idx in order[self.t - epoch * self.steps_per_epoch:]:
                    xb = self.x[idx.to(self.x.device)]
                    if shifts is not None:
                        xb = crop_flip(xb, shifts[idx], flips[idx])
                    batch_loss = sgd_step(self.model, self.optimizer, self.loss_fn, xb,
                                          self.y[idx.to(self.y.device)])
                    self._epoch_total += batch_loss * len(idx)
                    self.t += 1
                    if self.t % self.steps_per_epoch == 0:
                        self.epoch_losses.append(self._epoch_total / self.n)
                        self._epoch_total = 0.0
                    if checkpoint_path is not None and self.t % checkpoint_every == 0:
                        results.save_checkpoint(self.state_dict(), checkpoint_path)
                    bar.update(1)
        if checkpoint_path is not None:
            results.save_checkpoint(self.state_dict(), checkpoint_path)
        return list(self.epoch_losses)
