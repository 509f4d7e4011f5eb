"""Training primitives shared by every trajectory: data order, augmentation, SGD steps (paper §2.0–§2.1).

The batches of an epoch (:func:`batch_order`), the per-point augmentation draws
(:func:`augmentation_draws`, :func:`crop_flip`, :func:`rotation_draws`, :func:`rotate`,
:func:`epoch_draws`, :func:`augment_batch`), one SGD step (:func:`sgd_step`), the optimiser
(:func:`make_optimizer`) and plain SGD training (:func:`train_sgd`, the pretraining that produces
w_0). Every draw comes from an explicit seed, so that M and M′ (:mod:`unroll_utils.trajectory`)
see bit-identical batches and augmentations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import results
from .losses import make_loss

ORDERS = ("forget_first", "index", "shuffle", "forget_first_shuffle")
#: the orders that draw a new permutation every epoch (checked epoch by epoch for lone-point batches)
RESHUFFLED_ORDERS = ("shuffle", "forget_first_shuffle")
AUGMENTS = ("none", "crop_flip")
#: The augmentations of fine-tuning (lock-step) and pretraining runs: the reference's CIFAR-10
#: transform (crop + flip) and its CIFAR-100 transform (crop + flip + rotation in ±15°).
ALL_AUGMENTS = ("none", "crop_flip", "crop_flip_rotate")
LOSSES = ("ce", "sd")


def require(config, ok: bool, name: str, allowed: str) -> None:
    """Raise ValueError naming ``config.<name>``, its allowed range and its value, unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {getattr(config, name)!r}")


def check_sgd_fields(config, augments: tuple[str, ...] = AUGMENTS) -> None:
    """Validate the SGD fields every training configuration shares (``lr``, ``batch_size``,
    ``epochs``, ``momentum``, ``weight_decay``, ``loss``, ``lam``, ``order``, ``augment``;
    ``augment`` must be one of ``augments``).

    Raises:
        ValueError: naming the first bad field, its allowed range and its value.
    """
    def need(ok: bool, name: str, allowed: str) -> None:
        require(config, ok, name, allowed)

    need(math.isfinite(config.lr) and config.lr > 0, "lr", "a finite number > 0")
    need(config.batch_size >= 1, "batch_size", ">= 1")
    need(config.epochs >= 1, "epochs", ">= 1")
    need(0 <= config.momentum < 1, "momentum", "in [0, 1)")
    need(config.weight_decay >= 0, "weight_decay", ">= 0")
    need(config.loss in LOSSES, "loss", f"one of {LOSSES}")
    need(config.lam >= 0 and (config.loss == "sd" or config.lam == 0), "lam",
         ">= 0, and 0 unless loss='sd'")
    need(config.order in ORDERS, "order", f"one of {ORDERS}")
    need(config.augment in augments, "augment", f"one of {augments}")


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters of plain SGD training (:func:`train_sgd`).

    Attributes:
        lr: η > 0. batch_size: b ≥ 1. epochs: ≥ 1. momentum: in [0, 1). weight_decay: ≥ 0.
        loss: ``"ce"`` or ``"sd"`` (SD loss with ``lam`` ≥ 0). order: see :func:`batch_order`.
        augment: ``"none"`` or ``"crop_flip"``. seed: seeds the order and the augmentation.
    """

    lr: float = 0.01
    batch_size: int = 32
    epochs: int = 1
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "ce"
    lam: float = 0.0
    order: str = "shuffle"
    augment: str = "none"
    seed: int = 0

    def validate(self) -> "SGDConfig":
        """Raise ValueError naming the first bad field and its allowed range; return self."""
        check_sgd_fields(self)
        return self


def sub_seed(seed: int, *stream: int) -> int:
    """An independent 63-bit seed for (seed, stream...) from numpy's SeedSequence: every random
    draw of a run gets its own stream (0: data order, 1: augmentation, 2: eigen-solver start, ...)."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_order(n: int, forget: torch.Tensor, batch_size: int, order: str, epoch: int,
                seed: int) -> list[torch.Tensor]:
    """The batches (int64 index tensors) M sees in one epoch.

    Args:
        n: dataset size; forget: sorted forget indices; batch_size: b; epoch: 0-based epoch
        (only the reshuffled orders depend on it); seed: run seed. order:

        * ``"forget_first"``: the forget points first, then the others in index order, the same
          every epoch (the reference's ``DataLoader(..., shuffle=False)`` over a set whose first
          batch is x*, e.g. Exp C's ``Unlearning/Correlation_unlearning.py``);
        * ``"forget_first_shuffle"``: the forget points first, then the others in a permutation
          drawn anew every epoch from ``sub_seed(seed, 0, epoch)`` (a ``shuffle=True`` loader, as
          in ``Unlearning/master_unlearning.py`` and ``BERT/no_bert_training_unlearning.py``,
          with x* kept first so that M′ can skip it; M and M′ get the same permutation);
        * ``"index"``: dataset order; ``"shuffle"``: a seeded permutation of all points per
          epoch (the forget points wherever it puts them).

    Returns:
        ceil(n/b) index tensors covering [0, n) once; the last may hold fewer than b points.

    Raises:
        ValueError: unknown ``order``.
    """
    if order == "forget_first":
        is_forget = torch.zeros(n, dtype=torch.bool)
        is_forget[forget] = True
        perm = torch.cat([forget, torch.nonzero(~is_forget).flatten()])
    elif order == "forget_first_shuffle":
        is_forget = torch.zeros(n, dtype=torch.bool)
        is_forget[forget] = True
        rest = torch.nonzero(~is_forget).flatten()
        g = torch.Generator().manual_seed(sub_seed(seed, 0, epoch))
        perm = torch.cat([forget, rest[torch.randperm(len(rest), generator=g)]])
    elif order == "index":
        perm = torch.arange(n)
    elif order == "shuffle":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(sub_seed(seed, 0, epoch)))
    else:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    return list(torch.split(perm, batch_size))


def augmentation_draws(n: int, epoch: int, seed: int, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point crop offsets (n, 2) in [0, 2·pad] and flips (n,) for one epoch, from ``seed``."""
    g = torch.Generator().manual_seed(sub_seed(seed, 1, epoch))
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


def rotation_draws(n: int, epoch: int, seed: int, degrees: float = 15.0) -> torch.Tensor:
    """Per-point rotation angles (n,) in radians, uniform in ±``degrees``, for one epoch."""
    g = torch.Generator().manual_seed(sub_seed(seed, 3, epoch))
    return (torch.rand(n, generator=g) * 2 - 1) * math.radians(degrees)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate a batch (B, C, H, W) by ``angles`` (B,) radians about the centre (nearest
    neighbour, as torchvision's RandomRotation; outside pixels 0)."""
    cos, sin = angles.cos().to(x), angles.sin().to(x)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def epoch_draws(augment: str, n: int, epoch: int, seed: int) -> tuple | None:
    """One epoch's augmentation draws for ``augment`` (one of :data:`ALL_AUGMENTS`): None for
    ``"none"``, else ``(shifts (n, 2), flips (n,), angles (n,) or None)``; the same (seed, epoch)
    gives the same crops and flips whether or not the rotation is on.

    Source: the reference's train transforms (``Unlearning/pretrain.py``,
    ``Unlearning/correlation_verification.py``): ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()`` and, for CIFAR-100 only, ``RandomRotation(15)``.

    Raises:
        ValueError: unknown ``augment``.
    """
    if augment not in ALL_AUGMENTS:
        raise ValueError(f"augment must be one of {ALL_AUGMENTS}; got {augment!r}")
    if augment == "none":
        return None
    shifts, flips = augmentation_draws(n, epoch, seed)
    angles = rotation_draws(n, epoch, seed) if augment == "crop_flip_rotate" else None
    return shifts, flips, angles


def augment_batch(x: torch.Tensor, idx: torch.Tensor, draws: tuple | None) -> torch.Tensor:
    """The points ``idx`` of an epoch as the model trains on them: ``x`` (B, C, H, W) holds
    those points (already indexed), ``draws`` is :func:`epoch_draws`'s (indexed by ``idx``);
    crop + flip, then the rotation when drawn (torchvision's order). None: ``x`` unchanged."""
    if draws is None:
        return x
    shifts, flips, angles = draws
    x = crop_flip(x, shifts[idx], flips[idx])
    return x if angles is None else rotate(x, angles[idx])


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
            :class:`SGDConfig` (the order is a seeded shuffle per epoch).

    Returns:
        Mean training loss per epoch.

    Raises:
        ValueError: invalid hyper-parameters (named); a batch of one point that the model's
            BatchNorm cannot train on (see :func:`check_lone_point_batches`).
    """
    return SGDTraining(model, x, y, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
                       loss=loss, lam=lam, momentum=momentum, weight_decay=weight_decay,
                       augment=augment).run(progress=progress)


class SGDTraining:
    """Plain SGD training of ``model`` in place, resumable from a checkpoint (the run behind
    :func:`train_sgd`; the main job's pretraining uses it directly to checkpoint).

    It takes exactly :func:`train_sgd`'s steps (a seeded shuffle per epoch, the same augmentation
    draws and optimiser), so an uninterrupted run and a run resumed from any checkpoint reach the
    same weights bit for bit (same machine, torch build and thread count).

    Args:
        model: trained in place, on its own device; a resumed run must start from the same model
            (its squared weight norm is part of the fingerprint).
        x: (N, ...) inputs, y: (N,) int64 labels, on the model's device.
        lr, epochs, batch_size, seed, loss, lam, momentum, weight_decay, augment: as
            :class:`SGDConfig`.

    Attributes:
        t: SGD steps done; total_steps: epochs · ceil(N / batch_size);
        epoch_losses: mean training loss of every finished epoch.

    Raises:
        ValueError: invalid hyper-parameters (named); a batch of one point that the model's
            BatchNorm cannot train on (see :func:`check_lone_point_batches`).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                 epochs: int, batch_size: int, seed: int = 0, loss: str = "ce", lam: float = 0.0,
                 momentum: float = 0.0, weight_decay: float = 0.0, augment: str = "none") -> None:
        self.config = SGDConfig(lr=lr, batch_size=batch_size, epochs=epochs, momentum=momentum,
                                weight_decay=weight_decay, loss=loss, lam=lam, augment=augment,
                                seed=seed).validate()
        self.model, self.x, self.y = model, x, y
        self.n = x.shape[0]
        self._no_forget = torch.empty(0, dtype=torch.long)
        check_lone_point_batches(model, x, self._no_forget, batch_size, "shuffle", epochs, seed)
        self.loss_fn = make_loss(loss, lam)
        self.optimizer = make_optimizer(model, lr, momentum, weight_decay)
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

    def step(self, idx: torch.Tensor, shifts: torch.Tensor | None, flips: torch.Tensor | None) -> None:
        """One SGD step on the points ``idx`` (augmented with the epoch's draws, if any)."""
        xb = self.x[idx.to(self.x.device)]
        if shifts is not None:
            xb = crop_flip(xb, shifts[idx], flips[idx])
        batch_loss = sgd_step(self.model, self.optimizer, self.loss_fn, xb, self.y[idx.to(self.y.device)])
        self._epoch_total += batch_loss * len(idx)
        self.t += 1
        if self.t % self.steps_per_epoch == 0:
            self.epoch_losses.append(self._epoch_total / self.n)
            self._epoch_total = 0.0

    def run(self, *, checkpoint_path: str | Path | None = None, checkpoint_every: int = 50,
            progress: bool = True) -> list[float]:
        """Train to the end, resuming from ``checkpoint_path`` when it exists, saving the state
        there atomically every ``checkpoint_every`` steps and at the end (None: no checkpoints).

        Returns:
            Mean training loss per epoch (as :func:`train_sgd`).

        Raises:
            ValueError: ``checkpoint_every`` < 1, or a checkpoint of another run.
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
        if checkpoint_path is not None and Path(checkpoint_path).exists():
            self.load_state_dict(results.load_checkpoint(checkpoint_path, map_location=self.x.device))
        cfg = self.config
        with tqdm(total=self.total_steps, initial=self.t, desc="pretrain", disable=not progress,
                  mininterval=1.0, leave=False) as bar:
            for epoch in range(self.t // self.steps_per_epoch, cfg.epochs):
                shifts, flips = (augmentation_draws(self.n, epoch, cfg.seed)
                                 if cfg.augment == "crop_flip" else (None, None))
                order = batch_order(self.n, self._no_forget, cfg.batch_size, "shuffle", epoch, cfg.seed)
                for idx in order[self.t - epoch * self.steps_per_epoch:]:
                    self.step(idx, shifts, flips)
                    if checkpoint_path is not None and self.t % checkpoint_every == 0:
                        results.save_checkpoint(self.state_dict(), checkpoint_path)
                    bar.update(1)
        if checkpoint_path is not None:
            results.save_checkpoint(self.state_dict(), checkpoint_path)
        return list(self.epoch_losses)


def trains_on_one_point(model: nn.Module, x_one: torch.Tensor) -> bool:
    """Whether ``model`` can take a training-mode forward pass on a batch of one point.

    BatchNorm fails on one point when it sees one value per channel (``BatchNorm1d`` after a
    linear layer, ``BatchNorm2d`` on 1×1 maps); ``BatchNorm2d`` on larger maps works. The probe runs
    on a deep copy under ``no_grad``, so the model's buffers are untouched.

    Args:
        model: the network. x_one: (1, ...) one input on the model's device.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return True
    probe = copy.deepcopy(model).train()
    try:
        with torch.no_grad():
            probe(x_one)
    except ValueError as err:
        if "more than 1 value per channel" in str(err):
            return False
        raise
    return True


def find_lone_point_batch(n: int, forget: torch.Tensor, batch_size: int, order: str, epochs: int,
                          seed: int) -> str | None:
    """Where M (all points) or M′ (the retained points) would train on exactly one point, as a
    phrase for an error message, or None. Reshuffled orders are checked in every epoch."""
    is_forget = torch.zeros(n, dtype=torch.bool)
    is_forget[forget] = True
    for epoch in range(epochs if order in RESHUFFLED_ORDERS else 1):
        for i, idx in enumerate(batch_order(n, forget, batch_size, order, epoch, seed)):
            if len(idx) == 1:
                return (f"batch_size={batch_size} with {n} training points leaves a last batch of "
                        f"one point (n % batch_size == 1)")
            kept = int((~is_forget[idx]).sum())
            if kept == 1:
                return (f"the naively retrained model M′ would train on one retained point in batch "
                        f"{i} of epoch {epoch} (the rest of that batch is in the forget set)")
    return None


def check_lone_point_batches(model: nn.Module, x: torch.Tensor, forget: torch.Tensor,
                             batch_size: int, order: str, epochs: int, seed: int) -> None:
    """Refuse up front a run in which a batch of one point would reach a BatchNorm layer that
    cannot train on it (rather than crash mid-run).

    Raises:
        ValueError: naming ``batch_size`` (and the forget set for M′) and how to fix it.
    """
    if trains_on_one_point(model, x[:1]):
        return
    where = find_lone_point_batch(x.shape[0], forget, batch_size, order, epochs, seed)
    if where is not None:
        raise ValueError(f"{where}, and this model's BatchNorm cannot train on one point (one value "
                         "per channel); choose a batch_size (or forget set) that leaves no batch of "
                         "one point")
