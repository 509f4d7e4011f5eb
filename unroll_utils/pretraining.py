"""Pretraining: the weights w_0 that the fine-tuning experiments start from (the reference's `Unlearning/pretrain.py`; notebook 06).

The reference ``pretrain.py`` trains with plain SGD (lr 0.1, **no momentum**, weight decay 5e-4),
a ``CosineAnnealingLR(T_max=200)`` stepped once per epoch (so over 50 epochs the learning rate only
falls to ≈ 0.085), batch 128, RandomCrop(32, padding 4) + horizontal flip (+ RandomRotation(15) for
CIFAR-100), and the cross-entropy or SD loss. :class:`PretrainConfig` has these defaults; Exp C and
Exp D (`Unlearning/Correlation_unlearning.py`, `Unlearning/master_unlearning.py`) pretrain with other recipes (lr 0.01 or 0.1, no weight decay, no augmentation,
constant lr), which are the same class with other values.

:func:`pretrain` caches w_0 under a key made of the full configuration, the data and the
environment (:func:`unroll_utils.device.environment`), keeps a per-epoch checkpoint (model,
optimiser and scheduler state, history) while it runs, and resumes from it bit-identically: the
data order and augmentation of an epoch are functions of (seed, epoch) only
(:func:`unroll_utils.training.batch_order`, :func:`~unroll_utils.training.augmentation_draws`).
The test accuracy is recorded after every epoch.

Differences from the reference, by design: augmentation is drawn on normalised tensors with an
explicit seed (crop padding and rotation fill are 0 in the normalised space, i.e. the mean colour,
where torchvision pads with black), and the order is a seeded permutation per epoch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch
from torch import nn

from . import data as data_mod
from . import models, results
from .device import environment, key_environment, resolve_device
from .metrics import accuracy
from .training import SGDConfig, SGDTraining, require
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class PretrainConfig(SGDConfig):
    """The recipe that produces w_0; every field enters the cache key. The SGD fields (``lr``,
    ``batch_size``, ``epochs``, ``momentum``, ``weight_decay``, ``loss``, ``lam``, ``order``,
    ``augment``, ``seed``) are :class:`unroll_utils.training.SGDConfig`'s, with the reference's
    defaults and ``epochs`` ≥ 0 (0 = the random initialisation, e.g. Exp D).

    Attributes:
        dataset: one of :data:`unroll_utils.data.DATASETS`.
        model: ``"small_cnn"``, ``"resnet18"`` or ``"vgg19"``; ``width``: channels of small_cnn.
        n_train: training points (None: 4,000 for MNIST, 1,400 for digits, all 50,000 for CIFAR;
            for CIFAR a number keeps the first ``n_train`` points). n_test: test points used for
            the accuracy (None: the whole test split; else the first ``n_test``).
        loss, lam: ``"ce"`` or ``"sd"`` with λ ≥ 0 (notebook 05, eq. (1)).
        lr, momentum, weight_decay, batch_size: SGD (reference: 0.1, 0, 5e-4, 128).
        schedule: ``"cosine"`` (``CosineAnnealingLR(T_max=t_max)`` stepped per epoch, the
            reference) or ``"constant"``.
        t_max: T_max of the cosine schedule in epochs, ≥ 1 (reference: 200).
        augment: ``"crop_flip"`` (reference CIFAR-10), ``"crop_flip_rotate"`` (reference
            CIFAR-100: also a rotation uniform in ±15°) or ``"none"``.
        order: ``"shuffle"`` (default: a seeded permutation per epoch) or another order of
            :func:`unroll_utils.training.batch_order`.
        seed: initialisation, data order, augmentation (and the MNIST split).
        init: initialisation of ``"resnet18"``/``"vgg19"`` (:data:`unroll_utils.models.INITS`):
            ``"pytorch_default"`` (the reference's module defaults) or ``"torchvision"``;
            ignored by ``"small_cnn"``.
    """

    MIN_EPOCHS: ClassVar[int] = 0

    lr: float = 0.1
    batch_size: int = 128
    epochs: int = 50
    weight_decay: float = 5e-4
    augment: str = "crop_flip"
    dataset: str = "cifar10"
    model: str = "resnet18"
    width: int = 16
    n_train: int | None = None
    n_test: int | None = None
    schedule: str = "cosine"
    t_max: int = 200
    init: str = "pytorch_default"

    def validate(self) -> "PretrainConfig":
        """Raise ValueError naming the first bad field and its allowed values; return self."""
        def need(ok: bool, name: str, allowed: str) -> None:
            require(self, ok, name, allowed)

        super().validate()
        need(self.dataset in data_mod.DATASETS, "dataset", f"one of {data_mod.DATASETS}")
        need(self.model in models.IMAGE_MODEL_NAMES, "model", f"one of {models.IMAGE_MODEL_NAMES}")
        need(self.width >= 1, "width", ">= 1")
        need(self.n_train is None or self.n_train >= 10, "n_train", "None or >= 10")
        need(self.n_test is None or self.n_test >= 1, "n_test", "None or >= 1")
        need(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        need(self.t_max >= 1, "t_max", ">= 1")
        need(self.init in models.INITS, "init", f"one of {models.INITS}")
        return self


def load_data(dataset: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
              download: bool = False, verify: bool = True) -> data_mod.TensorData:
    """The dataset of an experiment as tensors (see :mod:`unroll_utils.data`).

    MNIST/digits: the embedded subsets split by ``seed`` (``n_train`` None = their defaults).
    CIFAR-10/100: read from ``$UNROLL_DATA`` (``download=True`` fetches the archive there when it
    is missing; offline the error names the archive and the folder), then the first ``n_train``
    training and ``n_test`` test points (None = all); ``verify=False`` skips torchvision's md5
    check (re-packed copies, generated test files).

    Raises:
        ValueError: unknown dataset or bad sizes; FileNotFoundError / RuntimeError: missing CIFAR.
    """
    if dataset in ("mnist", "digits"):
        ds = data_mod.load_dataset(dataset, seed=seed, **({"n_train": n_train} if n_train else {}))
    else:
        ds = data_mod.load_cifar(dataset, download=download, verify=verify)
    n_tr = ds.train_x.shape[0] if n_train is None else min(n_train, ds.train_x.shape[0])
    n_te = ds.test_x.shape[0] if n_test is None else min(n_test, ds.test_x.shape[0])
    return data_mod.TensorData(ds.train_x[:n_tr], ds.train_y[:n_tr], ds.test_x[:n_te],
                               ds.test_y[:n_te], ds.num_classes, ds.name)


def cosine_lr(base_lr: float, epoch: int, t_max: int, eta_min: float = 0.0) -> float:
    """The closed form of ``CosineAnnealingLR`` after ``epoch`` scheduler steps:
    η_min + (η_0 − η_min)·(1 + cos(π·epoch/T_max))/2 (Loshchilov & Hutter, ICLR 2017)."""
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


class Pretrainer(SGDTraining):
    """One pretraining run: :class:`unroll_utils.training.SGDTraining` (the one resumable SGD
    loop) on a freshly built model, with the recipe's schedule and the test accuracy after every
    epoch.

    ``history`` holds one record per epoch, ``{"epoch", "lr", "train_loss", "test_acc"}``;
    ``state_dict()`` / ``load_state_dict()`` capture everything needed to continue bit-identically.

    Args:
        config: a :class:`PretrainConfig`. data: the dataset (see :func:`load_data`).
        device: where to train.

    Attributes:
        model: the network (built from ``config.seed``); x, y, test_x, test_y: the data on
        ``device``; and :class:`~unroll_utils.training.SGDTraining`'s.
    """

    def __init__(self, config: PretrainConfig, data: data_mod.TensorData, device: torch.device):
        cfg = config.validate()
        self.device = torch.device(device)
        arch = {"width": cfg.width} if cfg.model == "small_cnn" else {"init": cfg.init}
        model = models.build_model(cfg.model, in_channels=data.input_shape[0],
                                   num_classes=data.num_classes, seed=cfg.seed, **arch).to(self.device)
        self.test_x, self.test_y = data.test_x.to(self.device), data.test_y.to(self.device)
        super().__init__(model, data.train_x.to(self.device), data.train_y.to(self.device), cfg,
                         t_max=cfg.t_max if cfg.schedule == "cosine" else None)

    def end_of_epoch(self) -> dict:
        """The test accuracy in [0, 1] after the epoch."""
        return {"test_acc": accuracy(self.model, self.test_x, self.test_y)}


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns.

    Attributes:
        model: the network at w_0 (on the requested device, train mode).
        history: one row per epoch: ``epoch``, ``lr`` (the lr used in that epoch),
            ``train_loss`` (mean over the epoch), ``test_acc`` in [0, 1] after it.
        test_acc: test accuracy of w_0 in [0, 1]. key: the cache key. path: the cache
            file (or the partial checkpoint while ``complete`` is False).
        cached: w_0 came from the cache. resumed_from: the epoch a partial run resumed from (0 if
            none). complete: all epochs done.
    """

    model: nn.Module
    history: pd.DataFrame
    test_acc: float
    key: str
    path: Path
    cached: bool
    resumed_from: int
    complete: bool


def pretrain_key(config: PretrainConfig, data: data_mod.TensorData, device: torch.device) -> str:
    """The cache key of w_0: the full configuration, the data (name, shapes, a digest of the
    labels and of every 997th input value) and the environment that decides the floating-point
    results."""
    digest = hashlib.sha256(data.train_y.numpy().tobytes())
    digest.update(data.train_x.reshape(-1)[::997].numpy().tobytes())
    blob = {"config": asdict(config), "data": [data.name, list(data.train_x.shape),
                                               list(data.test_x.shape), digest.hexdigest()[:16]],
            "environment": key_environment(environment(device))}
    return f"pretrain_{config.dataset}_{config.model}_{results.fingerprint(blob)}"


def pretrain(config: PretrainConfig, data: data_mod.TensorData | None = None, *,
             device: str | torch.device = "auto", cache_dir: str | Path = "cache",
             progress: bool = True, stop_after_epochs: int | None = None,
             download: bool = False) -> PretrainResult:
    """w_0 for ``config``: from the cache, or trained (resuming a partial run) and cached.

    Args:
        config: a :class:`PretrainConfig`.
        data: the dataset; None loads it with :func:`load_data` from the config.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        cache_dir: ``<key>.pt`` holds the finished w_0 (state dict, history, config,
            environment); ``<key>.partial.pt`` the per-epoch checkpoint of a run in progress.
        progress: tqdm progress bar over the SGD steps.
        stop_after_epochs: stop after this many epochs in this call (checkpoint kept; the next
            call resumes), ≥ 1.
        download: passed to :func:`load_data` when ``data`` is None.

    Returns:
        :class:`PretrainResult`.

    Raises:
        ValueError: invalid config (named field) or ``stop_after_epochs`` < 1.
    """
    cfg = config.validate()
    if stop_after_epochs is not None and stop_after_epochs < 1:
        raise ValueError(f"stop_after_epochs must be None or >= 1; got {stop_after_epochs}")
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if data is None:
        data = load_data(cfg.dataset, cfg.n_train, cfg.n_test, cfg.seed, download)
    key = pretrain_key(cfg, data, dev)
    final, partial = Path(cache_dir) / f"{key}.pt", Path(cache_dir) / f"{key}.partial.pt"
    trainer = Pretrainer(cfg, data, dev)
    if final.exists():
        saved = results.load_checkpoint(final)
        trainer.model.load_state_dict(saved["model"])
        return PretrainResult(trainer.model, pd.DataFrame(saved["history"]), saved["test_acc"],
                              key, final, True, 0, True)
    todo = cfg.epochs if stop_after_epochs is None else stop_after_epochs
    if cfg.epochs:  # a checkpoint at the end of every epoch; an existing one is resumed first
        trainer.run(checkpoint_path=partial, checkpoint_every=trainer.steps_per_epoch,
                    progress=progress, stop_after=todo * trainer.steps_per_epoch,
                    desc=f"pretrain {cfg.model}")
    resumed_from = trainer.resumed_at // max(trainer.steps_per_epoch, 1)
    history = pd.DataFrame(trainer.history, columns=["epoch", "lr", "train_loss", "test_acc"])
    test_acc = (float(history.test_acc.iloc[-1]) if len(history)
                else accuracy(trainer.model, trainer.test_x, trainer.test_y))
    if trainer.epoch < cfg.epochs:
        return PretrainResult(trainer.model, history, test_acc, key, partial, False, resumed_from, False)
    weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    results.save_checkpoint({"model": weights, "history": list(trainer.history), "test_acc": test_acc,
                             "config": asdict(cfg), "environment": environment(dev)}, final)
    partial.unlink(missing_ok=True)
    return PretrainResult(trainer.model, history, test_acc, key, final, False, resumed_from, True)
