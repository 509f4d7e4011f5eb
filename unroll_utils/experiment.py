"""The main job: the paper's core experiment end to end (data → lock-step trajectory → metrics → table, figure).

Pretrain briefly to get w_0, fine-tune M and M′ in lock-step with x* as the first batch, unlearn
with single gradient unlearning, and report t, VE, ‖w_t − w_0‖, σ, e, rolling e and the Pearson
correlation of e with VE (Exp A of the reference's `Unlearning/correlation_verification.py` on the embedded MNIST subset, on CPU in a few minutes).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

import matplotlib.pyplot as plt
import pandas as pd
import torch

from . import data, models, plot, results
from .metrics import correlations
from .device import DEVICES, environment, key_environment, resolve_device
from .training import SGDConfig, SGDTraining, option, require
from .trajectory import LockStepConfig, run_lockstep

FORGET_KINDS = ("batch", "random", "class")

# options that only matter under another option's value: (option, controlling option, the
# controlling values under which it is used; None = a value > 0). Setting one where it is not used
# is an error, not a silently ignored value.
DEPENDENT_OPTIONS = (
    ("forget_batch", "forget", ("batch",)),
    ("forget_k", "forget", ("random",)),
    ("forget_class", "forget", ("class",)),
    ("width", "model", ("small_cnn",)),
    ("n_train", "dataset", ("mnist", "digits")),
    ("lam", "loss", ("sd",)),
    ("pretrain_lr", "pretrain_epochs", None),
    ("pretrain_batch_size", "pretrain_epochs", None),
    ("sigma_points", "sigma_every", None),
    ("sigma_convention", "sigma_every", None),
)


#: how the main job's pretraining names the fields of its :class:`~unroll_utils.training.SGDConfig`
PRETRAIN_NAMES = {"lr": "pretrain_lr", "batch_size": "pretrain_batch_size", "epochs": "pretrain_epochs"}


@dataclass(frozen=True)
class MainJobConfig(SGDConfig):
    """Parameters of the main job (every field is also a command-line option, its help the
    field's ``help`` text, :func:`unroll_utils.training.field_help`).

    An option that another option makes unused (:data:`DEPENDENT_OPTIONS`, e.g. ``forget_class``
    without ``forget="class"``) must stay at its default; :meth:`validate` raises otherwise.

    Attributes:
        lr, batch_size, epochs, momentum, weight_decay, loss, lam, order, augment, seed: the
            lock-step fine-tuning, :class:`unroll_utils.training.SGDConfig`'s fields (validated
            there; see :class:`unroll_utils.trajectory.LockStepConfig`); ``seed`` also seeds the
            data split, the initialisation and the Hessian start vector.
        dataset: ``"mnist"`` (embedded default), ``"digits"``, ``"cifar10"`` or ``"cifar100"``.
        model: ``"small_cnn"``, ``"resnet18"`` or ``"vgg19"``.
        width: channel width of ``"small_cnn"`` (16 keeps the CPU run to about a minute).
        n_train: training points for the embedded datasets (mnist, digits only).
        pretrain_epochs, pretrain_lr, pretrain_batch_size: pretraining that produces w_0 (notebook 06),
            plain SGD with this run's ``loss``, ``lam`` and ``seed`` (:meth:`pretrain_config`);
            checkpointed and resumable (:class:`unroll_utils.training.SGDTraining`).
        undo_at: where single gradient unlearning takes the gradient.
        forget: ``"batch"`` (paper: x* = batch ``forget_batch``), ``"random"`` (``forget_k``
            points) or ``"class"`` (every point of class ``forget_class``).
        eval_every, sigma_every, sigma_points, sigma_convention: measurement schedule and σ.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    epochs: int = option(2, "lock-step fine-tuning epochs of M and M' from w_0")
    order: str = "forget_first"
    seed: int = option(0, "seeds the data split, initialisation, order, augmentation and "
                          "eigen-solver start")
    dataset: str = option("mnist", "training data (mnist and digits ship with the packages; CIFAR "
                                   "is read from $UNROLL_DATA)")
    model: str = option("small_cnn", "network: a small CNN for CPUs, or the paper's CIFAR "
                                     "ResNet-18 / VGG-19-BN")
    width: int = option(16, "channels of the first small_cnn block (small_cnn only)")
    n_train: int = option(4000, "training points (mnist, digits only; the rest of the set is the "
                                "test set)")
    pretrain_epochs: int = option(3, "epochs of plain SGD that produce w_0")
    pretrain_lr: float = option(0.1, "learning rate of that pretraining")
    pretrain_batch_size: int = option(64, "batch size of that pretraining")
    undo_at: str = option("w0", "where single gradient unlearning takes the gradient: w_0 (the "
                                "paper), the current weights after each step that saw x*, the "
                                "final weights, or the last checkpoint")
    forget: str = option("batch", "forget set x*: one batch (the paper), k random points, or a "
                                  "whole class")
    forget_batch: int = option(0, "index of the batch that is x* (with --forget batch)")
    forget_k: int = option(32, "number of random points (with --forget random)")
    forget_class: int = option(0, "class to forget (with --forget class)")
    eval_every: int = option(10, "measure VE and the weight distances every this many steps")
    sigma_every: int = option(20, "measure sigma (top Hessian eigenvalue) every this many steps; "
                                  "0: never")
    sigma_points: int = option(128, "fixed Hessian batch: the first this many training points")
    sigma_convention: str = option("sqrt_eig", "sigma = sqrt(lambda_max) (the reference code) or "
                                               "max |lambda|")
    device: str = option("cpu", "cpu, cuda, or auto (CUDA when present)")

    def validate(self) -> "MainJobConfig":
        """Raise ValueError naming the first bad parameter and its allowed values; return self."""
        def need(ok: bool, name: str, allowed: str) -> None:
            require(self, ok, name, allowed)

        need(self.dataset in data.DATASETS, "dataset", f"one of {data.DATASETS}")
        need(self.model in models.IMAGE_MODEL_NAMES, "model", f"one of {models.IMAGE_MODEL_NAMES}")
        need(self.width >= 1, "width", ">= 1")
        need(self.n_train >= 10, "n_train", ">= 10")
        need(self.pretrain_epochs >= 0, "pretrain_epochs", ">= 0")
        if self.pretrain_epochs:  # else its options must stay at their defaults (check_dependencies)
            self.pretrain_config().validate(PRETRAIN_NAMES)
        need(self.forget in FORGET_KINDS, "forget", f"one of {FORGET_KINDS}")
        need(self.device in DEVICES, "device", f"one of {DEVICES}")
        self.lockstep_config().validate()
        self.check_dependencies()
        return self

    def check_dependencies(self, explicit: Iterable[str] = ()) -> None:
        """Raise ValueError for an option set where another option makes it unused.

        An option of :data:`DEPENDENT_OPTIONS` conflicts when its controlling option has a value
        under which it is ignored (e.g. ``forget_class`` without ``forget="class"``) and it differs
        from its default, or it is named in ``explicit`` (the options a user gave, e.g. on the
        command line, even at their default value).
        """
        defaults = {f.name: f.default for f in fields(self)}
        explicit = set(explicit)
        for option, controller, allowed in DEPENDENT_OPTIONS:
            value, ctrl = getattr(self, option), getattr(self, controller)
            used = ctrl > 0 if allowed is None else ctrl in allowed
            if used or (option not in explicit and value == defaults[option]):
                continue
            needs = (f"{controller} > 0" if allowed is None
                     else " or ".join(f"{controller}={a!r}" for a in allowed))
            raise ValueError(f"{option} is used only with {needs}; got {controller}={ctrl!r} "
                             f"(so {option}={value!r} would be ignored)")

    def pretrain_config(self) -> SGDConfig:
        """The pretraining of w_0: plain SGD (a seeded shuffle per epoch, no augmentation, no
        momentum or weight decay) at ``pretrain_lr``, ``pretrain_batch_size``, ``pretrain_epochs``
        with this run's ``loss``, ``lam`` and ``seed``."""
        return SGDConfig(lr=self.pretrain_lr, batch_size=self.pretrain_batch_size,
                         epochs=self.pretrain_epochs, loss=self.loss, lam=self.lam, seed=self.seed)

    def lockstep_config(self) -> LockStepConfig:
        """The lock-step part: every field this config shares by name with LockStepConfig."""
        return LockStepConfig(**{f.name: getattr(self, f.name) for f in fields(LockStepConfig)
                                 if hasattr(self, f.name)})


_FORGET_ARG_NAMES = {"k": "forget_k", "cls": "forget_class", "batch_index": "forget_batch"}


def select_forget(cfg: MainJobConfig, ds: data.TensorData) -> torch.Tensor:
    """The forget set x* of the configuration (``forget``, ``forget_*``) for the loaded data.

    Raises:
        ValueError: a data-dependent bad value, named as the config field (``forget_class``,
            ``forget_k``, ``forget_batch``, ``batch_size``) with its allowed range.
    """
    n = ds.train_x.shape[0]
    try:
        if cfg.forget == "batch":
            return data.select_forget_set(n, "batch", batch_size=cfg.batch_size,
                                          batch_index=cfg.forget_batch)
        if cfg.forget == "random":
            return data.select_forget_set(n, "random", k=cfg.forget_k, seed=cfg.seed)
        return data.select_forget_set(n, "class", labels=ds.train_y, cls=cfg.forget_class)
    except ValueError as err:  # data.select_forget_set names its own arguments (cls, k, ...)
        message = re.sub(r"^(k|cls|batch_index)\b", lambda m: _FORGET_ARG_NAMES[m.group(1)], str(err))
        raise ValueError(message) from None


def _pretrained_w0(cfg: MainJobConfig, ds: data.TensorData, device: torch.device, out: Path,
                   env: dict, *, progress: bool, resume: bool, checkpoint_every: int) -> dict:
    """w_0: cached under ``out/cache``; until then a ``pretrain-<hash>.pt`` checkpoint in ``out``
    (the same hash as the cache key) lets an interrupted pretraining resume bit-identically."""
    arch = {"width": cfg.width} if cfg.model == "small_cnn" else {}
    fp = results.fingerprint({**{f.name: getattr(cfg, f.name) for f in fields(cfg)
                                 if f.name.startswith(("dataset", "model", "width", "n_train",
                                                       "pretrain", "seed", "loss", "lam"))},
                              **key_environment(env)})
    ckpt = out / f"pretrain-{fp}.pt"
    if not resume:
        ckpt.unlink(missing_ok=True)

    def pretrain() -> dict:
        net = models.build_model(cfg.model, in_channels=ds.input_shape[0],
                                 num_classes=ds.num_classes, seed=cfg.seed, **arch).to(device)
        if cfg.pretrain_epochs:
            SGDTraining(net, ds.train_x.to(device), ds.train_y.to(device), cfg.pretrain_config()).run(
                checkpoint_path=ckpt, checkpoint_every=checkpoint_every, progress=progress,
                desc="pretrain")
        return {k: v.cpu() for k, v in net.state_dict().items()}

    w0 = results.load_or_run("w0_" + fp, pretrain, out / "cache")
    ckpt.unlink(missing_ok=True)  # the cached w_0 supersedes it
    model = models.build_model(cfg.model, in_channels=ds.input_shape[0],
                               num_classes=ds.num_classes, seed=cfg.seed, **arch)
    model.load_state_dict(w0)
    return model.to(device)


def main_job(config: MainJobConfig, out_dir: str | Path, *, progress: bool = True,
             resume: bool = True, checkpoint_every: int = 50) -> dict:
    """Run the core experiment and write ``results.csv``/``results.json``, ``figure.png``.

    Args:
        config: a :class:`MainJobConfig`.
        out_dir: output folder, created only once the configuration, device, data and forget set
            are valid. ``checkpoint-<hash>.pt`` there lets a killed lock-step run resume, and
            ``pretrain-<hash>.pt`` a killed pretraining (until w_0 is cached under ``cache/``);
            the hashes cover the config and the environment that decides the numbers (device type,
            torch version, intra-op thread count, CPU model or GPU model), so a run with other
            options, threads or hardware starts afresh.
        progress: tqdm progress bars.
        resume: resume from those checkpoints when they exist.
        checkpoint_every: SGD steps between checkpoints (both phases), ≥ 1.

    Returns:
        Summary dict: correlations of e and rolling e with VE, final VE/accuracies, wall time,
        ``environment`` (:func:`unroll_utils.device.environment`: device type, torch version, intra-op threads,
        CPU model, GPU model on CUDA) and ``table`` (the DataFrame).

    Raises:
        ValueError: invalid parameter (named as the config field), or missing dataset files
            (FileNotFoundError); the output folder is not created then.
    """
    cfg = config.validate()
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    kwargs = {"n_train": cfg.n_train, "seed": cfg.seed} if cfg.dataset in ("mnist", "digits") else {}
    ds = data.load_dataset(cfg.dataset, **kwargs)
    forget = select_forget(cfg, ds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the float reduction order, hence the numbers, depend on the device, the torch build, the
    # intra-op thread count and the CPU: a cache or checkpoint made under others is not reused
    env = environment(device)
    model = _pretrained_w0(cfg, ds, device, out, env, progress=progress, resume=resume,
                           checkpoint_every=checkpoint_every)
    # one checkpoint per configuration: a changed option starts a fresh run, the same one resumes
    ckpt = out / f"checkpoint-{results.fingerprint({**asdict(cfg), **key_environment(env)})}.pt"
    if not resume and ckpt.exists():
        ckpt.unlink()
    if ckpt.exists() and progress:
        print(f"resuming from {ckpt}")
    res = run_lockstep(model, ds.train_x, ds.train_y, forget, cfg.lockstep_config(),
                       test_x=ds.test_x, test_y=ds.test_y, checkpoint_path=ckpt,
                       checkpoint_every=checkpoint_every, progress=progress)
    summary = _summary(res.table, forget, ds.train_x.shape[0], res.steps_done, env)
    summary["wall_seconds"] = time.perf_counter() - start
    results.save_table(res.table, out / "results", config=asdict(cfg), summary=summary)
    _figure(cfg, res.table, summary["pearson_e_ve"], out / "figure.png")
    summary["table"] = res.table
    return summary


def _summary(table: pd.DataFrame, forget: torch.Tensor, n: int, steps: int, environment: dict) -> dict:
    corr = correlations(table["unlearning_error"], table["ve"])
    corr_roll = correlations(table["rolling_unlearning_error"], table["ve"])
    last = table.iloc[-1]
    return {
        "pearson_e_ve": corr["pearson"], "spearman_e_ve": corr["spearman"],
        "pearson_rolling_e_ve": corr_roll["pearson"], "n_measurements": corr["n"],
        "final_ve": float(last["ve"]), "final_dist_retrained": float(last["dist_retrained"]),
        "test_acc": float(last["test_acc"]), "test_acc_retrained": float(last["test_acc_retrained"]),
        "test_acc_unlearned": float(last["test_acc_unlearned"]), "n_forget": int(forget.numel()),
        "n_train": n, "steps": steps, "environment": environment,
    }


def _figure(cfg: MainJobConfig, table: pd.DataFrame, pearson: float, path: Path) -> None:
    plot.setup(svg=False)
    fig = plot.plot_curves(table["t"], {"verification error": table["ve"],
                                        "‖w_t − w′_t‖ (no unlearning)": table["dist_retrained"]},
                           xlabel="SGD steps t since w_0", ylabel="weight distance",
                           right={"unlearning error e": table["unlearning_error"],
                                  "rolling e": table["rolling_unlearning_error"]},
                           right_label="unlearning error",
                           title=f"{cfg.dataset}/{cfg.model}: Pearson(e, VE) = {pearson:.3f}",
                           save=path)
    plt.close(fig)


def format_table(table: pd.DataFrame) -> str:
    """The printed table of the main job: t, VE, ‖w_t − w_0‖, σ, e, rolling e."""
    cols = {"t": "t", "ve": "VE", "dist_retrained": "VE_no_unlearn", "delta_w": "|w_t-w_0|",
            "sigma": "sigma", "unlearning_error": "e", "rolling_unlearning_error": "rolling_e"}
    view = table[list(cols)].rename(columns=cols)
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")
