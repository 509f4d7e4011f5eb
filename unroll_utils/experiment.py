"""The main job: the paper's core experiment end to end (data → lock-step trajectory → metrics → table, figure).

Pretrain briefly to get w_0, fine-tune M and M′ in lock-step with x* as the first batch, unlearn
with single gradient unlearning, and report t, VE, ‖w_t − w_0‖, σ, e, rolling e and the Pearson
correlation of e with VE (paper §2.2 on the embedded MNIST subset, on CPU in a few minutes).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from . import data, models, plot, results
from .device import resolve_device
from .metrics import correlations
from .training import require, train_sgd
from .trajectory import LockStepConfig, run_lockstep

FORGET_KINDS = ("batch", "random", "class")


@dataclass(frozen=True)
class MainJobConfig:
    """Parameters of the main job (every field is also a command-line option).

    Attributes:
        dataset: ``"mnist"`` (embedded default), ``"digits"``, ``"cifar10"`` or ``"cifar100"``.
        model: ``"small_cnn"``, ``"resnet18"`` or ``"vgg19"``.
        width: channel width of ``"small_cnn"`` (16 keeps the CPU run to about a minute).
        n_train: training points for the embedded datasets (ignored for CIFAR).
        pretrain_epochs, pretrain_lr, pretrain_batch_size: pretraining that produces w_0 (§2.1).
        epochs, lr, batch_size, momentum, weight_decay, loss, lam, order, undo_at: the lock-step
            fine-tuning (see :class:`unroll_utils.trajectory.LockStepConfig`).
        forget: ``"batch"`` (paper: x* = batch ``forget_batch``), ``"random"`` (``forget_k``
            points) or ``"class"`` (every point of class ``forget_class``).
        eval_every, sigma_every, sigma_points, sigma_convention: measurement schedule and σ.
        seed: seeds data split, init, order, augmentation, Hessian start vector.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    dataset: str = "mnist"
    model: str = "small_cnn"
    width: int = 16
    n_train: int = 4000
    pretrain_epochs: int = 3
    pretrain_lr: float = 0.1
    pretrain_batch_size: int = 64
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "ce"
    lam: float = 0.0
    order: str = "forget_first"
    undo_at: str = "w0"
    forget: str = "batch"
    forget_batch: int = 0
    forget_k: int = 32
    forget_class: int = 0
    eval_every: int = 10
    sigma_every: int = 20
    sigma_points: int = 128
    sigma_convention: str = "sqrt_eig"
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "MainJobConfig":
        """Raise ValueError naming the first bad parameter and its allowed values; return self."""
        def need(ok: bool, name: str, allowed: str) -> None:
            require(self, ok, name, allowed)

        need(self.dataset in data.DATASETS, "dataset", f"one of {data.DATASETS}")
        need(self.model in ("small_cnn", "resnet18", "vgg19"), "model",
             "one of ('small_cnn', 'resnet18', 'vgg19')")
        need(self.width >= 1, "width", ">= 1")
        need(self.n_train >= 10, "n_train", ">= 10")
        need(self.pretrain_epochs >= 0, "pretrain_epochs", ">= 0")
        need(math.isfinite(self.pretrain_lr) and self.pretrain_lr > 0, "pretrain_lr", "> 0")
        need(self.pretrain_batch_size >= 1, "pretrain_batch_size", ">= 1")
        need(self.forget in FORGET_KINDS, "forget", f"one of {FORGET_KINDS}")
        need(self.device in ("cpu", "cuda", "auto"), "device", "one of ('cpu', 'cuda', 'auto')")
        self.lockstep_config().validate()
        return self

    def lockstep_config(self) -> LockStepConfig:
        """The lock-step part: every field this config shares by name with LockStepConfig."""
        return LockStepConfig(**{f.name: getattr(self, f.name) for f in fields(LockStepConfig)
                                 if hasattr(self, f.name)})


def main_job(config: MainJobConfig, out_dir: str | Path, *, progress: bool = True,
             resume: bool = True) -> dict:
    """Run the core experiment and write ``results.csv``/``results.json``, ``figure.png``.

    Args:
        config: a :class:`MainJobConfig`.
        out_dir: output folder (created). ``checkpoint-<hash>.pt`` there lets a killed run
            resume; the hash covers the config and the environment that decides the numbers
            (device type, torch version, intra-op thread count), so a run with other options or
            another thread count starts afresh.
        progress: tqdm progress bars.
        resume: resume from that checkpoint when it exists.

    Returns:
        Summary dict: correlations of e and rolling e with VE, final VE/accuracies, wall time,
        ``environment`` (device type, torch version, intra-op threads) and ``table`` (the
        DataFrame).

    Raises:
        ValueError: invalid parameter (named), or missing dataset files (FileNotFoundError).
    """
    cfg = config.validate()
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    kwargs = {"n_train": cfg.n_train, "seed": cfg.seed} if cfg.dataset in ("mnist", "digits") else {}
    ds = data.load_dataset(cfg.dataset, **kwargs)
    n = ds.train_x.shape[0]
    if cfg.forget == "batch":
        forget = data.select_forget_set(n, "batch", batch_size=cfg.batch_size,
                                        batch_index=cfg.forget_batch)
    elif cfg.forget == "random":
        forget = data.select_forget_set(n, "random", k=cfg.forget_k, seed=cfg.seed)
    else:
        forget = data.select_forget_set(n, "class", labels=ds.train_y, cls=cfg.forget_class)

    arch = {"width": cfg.width} if cfg.model == "small_cnn" else {}

    def pretrain() -> dict:
        net = models.build_model(cfg.model, in_channels=ds.input_shape[0],
                                 num_classes=ds.num_classes, seed=cfg.seed, **arch).to(device)
        if cfg.pretrain_epochs:
            train_sgd(net, ds.train_x.to(device), ds.train_y.to(device), lr=cfg.pretrain_lr,
                      epochs=cfg.pretrain_epochs, batch_size=cfg.pretrain_batch_size,
                      seed=cfg.seed, loss=cfg.loss, lam=cfg.lam, progress=progress)
        return {k: v.cpu() for k, v in net.state_dict().items()}

    # the float reduction order, hence the numbers, depend on the device, the torch build and the
    # intra-op thread count: a cache or checkpoint made under others is not reused
    environment = {"device": device.type, "torch": torch.__version__,
                   "intra_op_threads": torch.get_num_threads()}
    key = "w0_" + results.fingerprint({**{f.name: getattr(cfg, f.name) for f in fields(cfg)
                                          if f.name.startswith(("dataset", "model", "width", "n_train",
                                                                "pretrain", "seed", "loss", "lam"))},
                                       **environment})
    w0 = results.load_or_run(key, pretrain, out / "cache")
    model = models.build_model(cfg.model, in_channels=ds.input_shape[0],
                               num_classes=ds.num_classes, seed=cfg.seed, **arch)
    model.load_state_dict(w0)
    model.to(device)
    # one checkpoint per configuration: a changed option starts a fresh run, the same one resumes
    ckpt = out / f"checkpoint-{results.fingerprint({**asdict(cfg), **environment})}.pt"
    if not resume and ckpt.exists():
        ckpt.unlink()
    if ckpt.exists() and progress:
        print(f"resuming from {ckpt}")
    res = run_lockstep(model, ds.train_x, ds.train_y, forget, cfg.lockstep_config(),
                       test_x=ds.test_x, test_y=ds.test_y, checkpoint_path=ckpt,
                       checkpoint_every=50, progress=progress)
    table = res.table
    corr = correlations(table["unlearning_error"], table["ve"])
    corr_roll = correlations(table["rolling_unlearning_error"], table["ve"])
    last = table.iloc[-1]
    summary = {
        "pearson_e_ve": corr["pearson_r"], "spearman_e_ve": corr["spearman_rho"],
        "pearson_rolling_e_ve": corr_roll["pearson_r"], "n_measurements": corr["n"],
        "final_ve": float(last["ve"]), "final_dist_retrained": float(last["dist_retrained"]),
        "test_acc": float(last["test_acc"]), "test_acc_retrained": float(last["test_acc_retrained"]),
        "test_acc_unlearned": float(last["test_acc_unlearned"]), "n_forget": int(forget.numel()),
        "n_train": n, "steps": res.steps_done, "wall_seconds": time.perf_counter() - start,
        "environment": environment,
    }
    results.save_table(table, out / "results", config=asdict(cfg), summary=summary)
    plot.setup(svg=False)
    fig = plot.plot_curves(table["t"], {"verification error": table["ve"],
                                        "‖w_t − w′_t‖ (no unlearning)": table["dist_retrained"]},
                           xlabel="SGD steps t since w_0", ylabel="weight distance",
                           right={"unlearning error e": table["unlearning_error"],
                                  "rolling e": table["rolling_unlearning_error"]},
                           right_label="unlearning error",
                           title=f"{cfg.dataset}/{cfg.model}: Pearson(e, VE) = {corr['pearson_r']:.3f}",
                           save=out / "figure.png")
    plt.close(fig)
    summary["table"] = table
    return summary


def format_table(table: pd.DataFrame) -> str:
    """The printed table of the main job: t, VE, ‖w_t − w_0‖, σ, e, rolling e."""
    cols = {"t": "t", "ve": "VE", "dist_retrained": "VE_no_unlearn", "delta_w": "|w_t-w_0|",
            "sigma": "sigma", "unlearning_error": "e", "rolling_unlearning_error": "rolling_e"}
    view = table[list(cols)].rename(columns=cols)
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")
