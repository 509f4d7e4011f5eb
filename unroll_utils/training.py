"""Training primitives shared by every trajectory: data order, augmentation, SGD steps (the reference's
`Unlearning/pretrain.py` and fine-tuning scripts).

The batches of an epoch (:func:`batch_order`), the per-point augmentation draws
(:func:`augmentation_draws`, :func:`crop_flip`, :func:`rotation_draws`, :func:`rotate`,
:func:`epoch_draws`, :func:`augment_batch`), one SGD step (:func:`sgd_step`), the optimiser
(:func:`make_optimizer`), the one declaration and validator of SGD's hyper-parameters
(:class:`SGDConfig`) and the one resumable SGD loop (:class:`SGDTraining`, :func:`train_sgd`: the
pretraining that produces w_0). Every draw comes from an explicit seed, so that M and M′ (:mod:`unroll_utils.trajectory`)
see bit-identical batches and augmentations.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import models, results
from .losses import make_loss

ORDERS = ("forget_first", "index", "shuffle", "forget_first_shuffle")
#: the orders that draw a new permutation every epoch (checked epoch by epoch for lone-point batches)
RESHUFFLED_ORDERS = ("shuffle", "forget_first_shuffle")
#: The augmentations of every SGD run: none, the reference's CIFAR-10 transform (crop + flip) and
#: its CIFAR-100 transform (crop + flip + rotation in ±15°).
ALL_AUGMENTS = ("none", "crop_flip", "crop_flip_rotate")
LOSSES = ("ce", "sd")


def require(config, ok: bool, name: str, allowed: str, shown: str | None = None) -> None:
    """Raise ValueError naming ``config.<name>`` (as ``shown``, when the user spells it otherwise),
    its allowed range and its value, unless ``ok``."""
    if not ok:
        raise ValueError(f"{shown or name} must be {allowed}; got {getattr(config, name)!r}")


def option(default, help: str):
    """A configuration field with its one-line description (``metadata["help"]``), the text the
    command line shows for it (:func:`field_help`)."""
    return field(default=default, metadata={"help": help})


def field_help(cls, name: str) -> str:
    """The one-line description of field ``name`` of the dataclass ``cls``: the ``help`` of the
    nearest declaration in ``cls`` or its bases (a subclass that only changes a default keeps its
    base's text). Raises KeyError when no declaration has one."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and "help" in declared.metadata:
            return declared.metadata["help"]
    raise KeyError(f"{cls.__name__}.{name} has no help text")


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters of SGD training, declared and validated here once: plain training
    (:func:`train_sgd`, :class:`SGDTraining`) takes it, and the pretraining recipe
    (:class:`unroll_utils.pretraining.PretrainConfig`), the lock-step run
    (:class:`unroll_utils.trajectory.LockStepConfig`), the forget benchmark's training
    (:class:`unroll_utils.baselines.TrainingConfig`) and the main job
    (:class:`unroll_utils.experiment.MainJobConfig`) extend it: they may change a default, never
    a check.

    Attributes:
        lr: η > 0 (finite). batch_size: b ≥ 1. epochs: ≥ :attr:`MIN_EPOCHS` (1 here; 0 for
        pretraining, where it leaves the random initialisation). momentum: in [0, 1).
        weight_decay: ≥ 0. loss: ``"ce"`` or ``"sd"`` (the SD loss with ``lam`` ≥ 0; ``lam`` is
        0 unless ``loss="sd"``). order: see :func:`batch_order`. augment: one of
        :data:`ALL_AUGMENTS` (see :func:`epoch_draws`). seed: ≥ 0, seeds the order and the
        augmentation (each its own stream, :func:`sub_seed`).
    """

    MIN_EPOCHS: ClassVar[int] = 1

    lr: float = option(0.01, "learning rate eta (> 0)")
    batch_size: int = option(32, "batch size b (>= 1)")
    epochs: int = option(1, "passes over the training data")
    momentum: float = option(0.0, "SGD momentum in [0, 1) (0: the plain SGD of the paper's theory)")
    weight_decay: float = option(0.0, "SGD weight decay (>= 0)")
    loss: str = option("ce", "training objective: cross-entropy, or the SD loss with --lam")
    lam: float = option(0.0, "lambda of the SD loss (only with --loss sd)")
    order: str = option("shuffle", "data order: x* first every epoch (the paper), dataset order, a "
                        "seeded shuffle per epoch, or x* first and the rest reshuffled every epoch")
    augment: str = option("none", "augmentation: none, random crop + flip (the reference's CIFAR-10 "
                          "transform), or also a rotation in +-15 degrees (its CIFAR-100 transform)")
    seed: int = option(0, "seeds the data order and the augmentation")

    def validate(self, names: Mapping[str, str] | None = None) -> "SGDConfig":
        """Raise ValueError naming the first bad SGD field, its allowed range and its value;
        return self.

        Args:
            names: how the caller spells a field in errors, e.g. ``{"lr": "pretrain_lr"}`` for
                the main job's pretraining (default: the field's own name).
        """
        names = names or {}

        def need(ok: bool, name: str, allowed: str) -> None:
            require(self, ok, name, allowed, names.get(name))

        def real(v) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        def integer(v) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        need(real(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        need(integer(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(integer(self.epochs) and self.epochs >= self.MIN_EPOCHS, "epochs",
             f"an integer >= {self.MIN_EPOCHS}")
        need(real(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0")
        need(self.loss in LOSSES, "loss", f"one of {LOSSES}")
        need(self.lam >= 0 and (self.loss == "sd" or self.lam == 0), "lam",
             ">= 0, and 0 unless loss='sd'")
        need(self.order in ORDERS, "order", f"one of {ORDERS}")
        need(self.augment in ALL_AUGMENTS, "augment", f"one of {ALL_AUGMENTS}")
        need(self.seed >= 0, "seed", ">= 0")
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


def train_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: bool = True,
              **options) -> list[float]:
    """Plain SGD training in place (e.g. the pretraining that produces w_0, notebook 06): the
    one-call form of :class:`SGDTraining`.

    Args:
        model: trained in place, on its own device. x: (N, ...), y: (N,) on that device.
        progress: a tqdm progress bar over the steps.
        **options: :class:`SGDConfig`'s fields by name (``lr=0.1, epochs=3, batch_size=64, ...``;
            the others keep SGDConfig's defaults: a seeded shuffle per epoch, no augmentation).

    Returns:
        Mean training loss per epoch.

    Raises:
        TypeError: an option that is not a field of :class:`SGDConfig`.
        ValueError: invalid hyper-parameters (named); a batch of one point that the model's
            BatchNorm cannot train on (see :func:`check_lone_point_batches`).
    """
    return SGDTraining(model, x, y, SGDConfig(**options)).run(progress=progress)


class SGDTraining:
    """SGD training of ``model`` in place, resumable from a checkpoint: the one training loop
    behind :func:`train_sgd`, the main job's pretraining and
    :class:`unroll_utils.pretraining.Pretrainer` (which adds the cosine schedule and a test
    accuracy after every epoch).

    Every epoch's batches come from :func:`batch_order` (``config.order`` over all N points) and
    its augmentation from :func:`epoch_draws`, both functions of (seed, epoch) only, so an
    uninterrupted run and a run resumed from any checkpoint reach the same weights bit for bit
    (same machine, torch build and thread count).

    Args:
        model: trained in place, on its own device; a resumed run must start from the same model
            (its squared weight norm is part of the fingerprint).
        x: (N, ...) inputs, y: (N,) int64 labels, on the model's device.
        config: a :class:`SGDConfig` (or a subclass; its SGD fields are used, and all of its
            fields enter the checkpoint's fingerprint).
        t_max: None (default): constant learning rate; an integer ≥ 1: ``CosineAnnealingLR``
            with ``T_max=t_max`` stepped once per epoch, as the reference ``Unlearning/pretrain.py``.

    Attributes:
        t: SGD steps done; steps_per_epoch: ceil(N / batch_size); total_steps: epochs ·
        steps_per_epoch; history: one record per finished epoch, ``{"epoch": 1-based, "lr": the
        epoch's learning rate, "train_loss": mean loss over the epoch}`` and the fields of
        :meth:`end_of_epoch`; resumed_at: the step the last loaded checkpoint held (0: none).

    Raises:
        ValueError: invalid hyper-parameters (named); a batch of one point that the model's
            BatchNorm cannot train on (see :func:`check_lone_point_batches`).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: SGDConfig, *,
                 t_max: int | None = None) -> None:
        cfg = self.config = config.validate()
        if t_max is not None and not (isinstance(t_max, int) and t_max >= 1):
            raise ValueError(f"t_max must be None (constant lr) or an integer >= 1; got {t_max!r}")
        self.model, self.x, self.y = model, x, y
        self.n = x.shape[0]
        self._no_forget = torch.empty(0, dtype=torch.long)
        check_lone_point_batches(model, x, self._no_forget, cfg.batch_size, cfg.order, cfg.epochs,
                                 cfg.seed)
        self.loss_fn = make_loss(cfg.loss, cfg.lam)
        self.optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.scheduler = (None if t_max is None else
                          torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=t_max))
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.t = self.resumed_at = 0
        self.history: list[dict] = []
        self._epoch_total = 0.0  # Σ batch loss × batch size over the current epoch's steps
        self._plan: tuple | None = None  # (epoch, batches, draws)
        with torch.no_grad():
            start_norm = float(sum(p.detach().double().square().sum() for p in model.parameters()))
        self.fingerprint = results.fingerprint({"config": asdict(cfg), "n": self.n,
                                                "x_shape": list(x.shape), "w_start": start_norm,
                                                **({} if t_max is None else {"t_max": t_max})})

    @property
    def epoch(self) -> int:
        """Epochs finished."""
        return self.t // self.steps_per_epoch

    @property
    def done(self) -> bool:
        """All ``epochs`` × ceil(N/b) steps are done."""
        return self.t >= self.total_steps

    @property
    def epoch_losses(self) -> list[float]:
        """Mean training loss of every finished epoch."""
        return [record["train_loss"] for record in self.history]

    def end_of_epoch(self) -> dict:
        """Extra fields of an epoch's history record, computed after the epoch (and its scheduler
        step); none here, a subclass adds e.g. the test accuracy."""
        return {}

    def state_dict(self) -> dict:
        """Everything a resume needs: step, history, model, optimiser (and scheduler) state,
        fingerprint."""
        return {"fingerprint": self.fingerprint, "t": self.t, "history": list(self.history),
                "epoch_total": self._epoch_total, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; ValueError if it belongs to another run."""
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("the training checkpoint was written by another configuration or "
                             "starting model; delete it or choose another checkpoint_path")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.t, self.resumed_at, self._epoch_total = state["t"], state["t"], state["epoch_total"]
        self.history = list(state["history"])

    def step(self) -> float:
        """One SGD step on the next batch of the order (augmented with its epoch's draws); at the
        end of an epoch, its history record and the scheduler step. Returns the batch loss.
        Raises RuntimeError when the run is already done."""
        if self.done:
            raise RuntimeError(f"the run is done ({self.total_steps} steps)")
        cfg = self.config
        epoch, i = divmod(self.t, self.steps_per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, batch_order(self.n, self._no_forget, cfg.batch_size, cfg.order,
                                             epoch, cfg.seed),
                          epoch_draws(cfg.augment, self.n, epoch, cfg.seed))
        _, batches, draws = self._plan
        idx = batches[i]
        xb = augment_batch(self.x[idx.to(self.x.device)], idx, draws)
        batch_loss = sgd_step(self.model, self.optimizer, self.loss_fn, xb, self.y[idx.to(self.y.device)])
        self._epoch_total += batch_loss * len(idx)
        self.t += 1
        if i + 1 == self.steps_per_epoch:
            record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                      "train_loss": self._epoch_total / self.n}
            if self.scheduler is not None:
                self.scheduler.step()
            self.history.append({**record, **self.end_of_epoch()})
            self._epoch_total = 0.0
        return batch_loss

    def run(self, *, checkpoint_path: str | Path | None = None, checkpoint_every: int = 50,
            progress: bool = True, stop_after: int | None = None, desc: str = "train") -> list[float]:
        """Train to the end (or ``stop_after`` more steps), resuming from ``checkpoint_path`` when
        it exists, saving the state there atomically every ``checkpoint_every`` steps and at the
        end (None: no checkpoints); ``desc`` labels the progress bar.

        Returns:
            Mean training loss of every finished epoch (as :func:`train_sgd`).

        Raises:
            ValueError: ``checkpoint_every`` < 1, ``stop_after`` < 1, or a checkpoint of another run.
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
        if stop_after is not None and stop_after < 1:
            raise ValueError(f"stop_after must be None or >= 1; got {stop_after}")
        if checkpoint_path is not None and Path(checkpoint_path).exists():
            self.load_state_dict(results.load_checkpoint(checkpoint_path, map_location=self.x.device))
        stop_at = self.total_steps if stop_after is None else min(self.t + stop_after, self.total_steps)
        with tqdm(total=self.total_steps, initial=self.t, desc=desc, disable=not progress,
                  mininterval=1.0, leave=False) as bar:
            while self.t < stop_at:
                self.step()
                if checkpoint_path is not None and self.t % checkpoint_every == 0:
                    results.save_checkpoint(self.state_dict(), checkpoint_path)
                bar.update(1)
        if checkpoint_path is not None:
            results.save_checkpoint(self.state_dict(), checkpoint_path)
        return self.epoch_losses


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
    if models.trains_on_one_point(model, x[:1]):
        return
    where = find_lone_point_batch(x.shape[0], forget, batch_size, order, epochs, seed)
    if where is not None:
        raise ValueError(f"{where}, and this model's BatchNorm cannot train on one point (one value "
                         "per channel); choose a batch_size (or forget set) that leaves no batch of "
                         "one point")
