"""Forget benchmarks: single gradient unlearning next to the usual unlearning baselines.

Most users run "Unrolling SGD" as a baseline in someone else's benchmark: forget a random k% of the
training set or a whole class, then report forget / retain / test accuracy, a membership-inference
score, and run time next to naive retraining. This module trains the original model M once per seed
(recording what amnesiac unlearning needs), retrains M′ on the retain set (the reference), applies each
method in :data:`METHODS` and tabulates the measurements with means and 95% confidence intervals.

Protocol (the paper's M and M′, §1.1, with a shuffled order): M trains from w_0 for ``epochs`` epochs
of plain SGD on a seeded per-epoch shuffle of all N points; naive retraining trains from the same w_0
on the *same* batches with the forget points removed (a batch of forget points only is skipped), so
VE = ‖w_method − w′‖ measures the method, not SGD's order noise.

Every method is ``method(task, <one hyper-parameter>, **options) -> nn.Module``: it returns a new model
and never modifies ``task.original``, ``task.initial`` or any model passed in. The iterative baselines
(fine-tuning, gradient ascent, NegGrad+, the two random-label methods) run by default at the budget of
the code each one cites (epochs, learning rate, momentum, weight decay; :data:`SOURCES`, the docstrings,
and ``docs/fidelity.md``); ``options`` (:data:`BUDGET_OPTIONS`) change it, and :func:`budget` says
what ran. Membership inference is reported three ways (:data:`MIA_METRICS`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from .hessian import HessianOperator
from .losses import make_loss
from .metrics import verification_error
from .privacy import loss_attack_auc, mia_cv_accuracy, per_example_loss, predict_probs, svc_mia_efficacy
from .propagated import flatten, lanczos_basis, propagation_factor, unflatten
from .statistics import t_interval
from .training import SGDConfig, batch_order, make_optimizer, sgd_step, sub_seed, train_sgd
from .unlearning import forget_gradient, single_gradient_unlearning

__all__ = ["TrainingConfig", "TrainingRecord", "UnlearningTask", "train_recorded", "naive_retraining",
           "fine_tuning", "gradient_ascent", "neggrad_plus", "graves_relabel", "random_labels_graves",
           "random_labels_salun", "amnesiac", "sgu_at_w0", "sgu_at_final", "sgu_propagated",
           "PROPAGATED_POINTS", "METHODS", "SOURCES", "BUDGET_OPTIONS", "FORGET_KINDS", "MIA_METRICS",
           "budget", "make_forget_sets", "run_forget_benchmark", "summarize"]


@dataclass(frozen=True)
class TrainingConfig(SGDConfig):
    """How M (and naive retraining) are trained: plain SGD, the setting of the paper's theory
    (:class:`unroll_utils.training.SGDConfig` with this benchmark's defaults; the data order is a
    seeded shuffle per epoch, no augmentation).

    Attributes: lr (η > 0), epochs (≥ 1), batch_size (b ≥ 1), momentum in [0, 1), weight_decay ≥ 0,
    loss ("ce" or "sd") with lam (λ of the SD loss), seed (data order and every method's draws).
    """

    lr: float = 0.05
    epochs: int = 3

    def __post_init__(self):
        """Raise ValueError naming the first bad field (the checks of ``training.SGDConfig``)."""
        self.validate()


@dataclass
class TrainingRecord:
    """What one training run stores: its steps and, for amnesiac unlearning, the parameter update
    w_{i+1} − w_i of every step whose batch held a watched point (CPU tensors, parameters order),
    with that step's 1-based index in ``batch_steps`` (for :func:`sgu_propagated`).

    Memory: (#recorded steps) × (#parameters) floats; a random 10% forget set touches almost every
    batch of 32, so this is about epochs·N/b model copies (fine for small CNNs, not for ResNet-18).
    """

    steps: int = 0
    seconds: float = 0.0
    batches: list[torch.Tensor] = field(default_factory=list)
    updates: list[list[torch.Tensor]] = field(default_factory=list)
    batch_steps: list[int] = field(default_factory=list)


def train_recorded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainingConfig, *,
                   exclude: torch.Tensor | None = None, watch: torch.Tensor | None = None) -> TrainingRecord:
    """Train ``model`` in place on the seeded shuffled order of all N points, dropping ``exclude``.

    Args:
        model: trained in place. x: (N, ...) inputs, y: (N,) labels, on the model's device.
        config: :class:`TrainingConfig`.
        exclude: sorted indices left out of every batch (naive retraining); None = none.
        watch: indices whose batches' updates are recorded (amnesiac unlearning); None = none.

    Returns:
        A :class:`TrainingRecord` (steps done, wall seconds, watched batches, their updates and
        their 1-based step indices).
    """
    n = x.shape[0]
    loss_fn = make_loss(config.loss, config.lam)
    opt = make_optimizer(model, config.lr, config.momentum, config.weight_decay)
    keep = torch.ones(n, dtype=torch.bool)
    if exclude is not None:
        keep[exclude] = False
    watched = torch.zeros(n, dtype=torch.bool)
    if watch is not None:
        watched[watch] = True
    rec, empty = TrainingRecord(), torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        for idx in batch_order(n, empty, config.batch_size, "shuffle", epoch, config.seed):
            idx = idx[keep[idx]]
            if idx.numel() == 0:
                continue
            record = bool(watched[idx].any())
            before = [p.detach().clone() for p in model.parameters()] if record else None
            dev = idx.to(x.device)
            sgd_step(model, opt, loss_fn, x[dev], y[dev])
            rec.steps += 1
            if record:
                rec.batches.append(idx)
                rec.batch_steps.append(rec.steps)
                rec.updates.append([(p.detach() - b).cpu() for p, b in zip(model.parameters(), before)])
    rec.seconds = time.perf_counter() - start
    return rec


@dataclass
class UnlearningTask:
    """One unlearning request: M, its w_0, the training data, the forget set and how M was trained.

    Attributes:
        original: M (never modified by a method). initial: M at w_0 (never modified).
        train_x: (N, ...), train_y: (N,) on the models' device. forget: sorted (m,) int64 indices.
        config: the :class:`TrainingConfig` of M. record: M's :class:`TrainingRecord` with the
            updates of the batches that held forget points (needed by :func:`amnesiac` only).

    Raises:
        ValueError: a forget set that is empty, has duplicates, leaves an empty retain set or has
            indices outside [0, N − 1] (:func:`unroll_utils.data.validate_forget_indices`).
    """

    original: nn.Module
    initial: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    forget: torch.Tensor
    config: TrainingConfig
    record: TrainingRecord | None = None

    def __post_init__(self):
        self.forget = D.validate_forget_indices(self.forget, self.train_x.shape[0])

    @property
    def retain(self) -> torch.Tensor:
        """Sorted (N − m,) retain indices."""
        return D.retain_indices(self.forget, self.train_x.shape[0])

    def subset(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = idx.to(self.train_x.device)
        return self.train_x[dev], self.train_y[dev]


def _check_positive(name: str, value, integer: bool = False):
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else isinstance(value, (int, float))
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'} > 0; got {value!r}")
    return value


def naive_retraining(task: UnlearningTask, epochs: int | None = None) -> nn.Module:
    """The reference: retrain from w_0 on the retain set (M′; the same batches as M minus the forget
    points). Hyper-parameter ``epochs`` (default: M's). Exact unlearning by construction.
    Source: paper §1.1 (naive retraining); Cao & Yang, IEEE S&P 2015."""
    cfg = task.config if epochs is None else replace(task.config, epochs=_check_positive("epochs", epochs, True))
    model = copy.deepcopy(task.initial)
    train_recorded(model, task.train_x, task.train_y, cfg, exclude=task.forget)
    return model


def _num_classes(task: UnlearningTask) -> int:
    """C, the width of M's output (one eval-mode forward pass on one training point)."""
    return int(predict_probs(task.original, task.train_x[:1]).shape[1])


def _check_options(epochs, lr, momentum, weight_decay) -> None:
    """ValueError naming the first bad budget option (epochs ≥ 1, lr > 0, momentum in [0, 1), wd ≥ 0)."""
    _check_positive("epochs", epochs, True)
    _check_positive("lr", lr)
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
    if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")


def fine_tuning(task: UnlearningTask, epochs: int = 10, *, lr: float = 0.01, momentum: float = 0.9,
                weight_decay: float = 5e-4) -> nn.Module:
    """Fine-tune M on the retain set only (seeded shuffle per epoch, M's loss and batch size), hoping
    for catastrophic forgetting of the forget set.

    Defaults: the budget of Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS
    2023 (OPTML-Group/Unlearn-Sparse, ``unlearn/FT.py``; README command ``--unlearn FT
    --unlearn_lr 0.01 --unlearn_epochs 10``; ``arg_parser.py`` momentum 0.9, weight decay 5e-4;
    SalUn's FT is the same code): 10 epochs of SGD at lr 0.01, momentum 0.9, weight decay 5e-4.
    The unlearning challenge's starting kit fine-tunes for 5 epochs at lr 0.1 (cosine schedule):
    ``fine_tuning(task, 5, lr=0.1)`` without the schedule. The idea: Golatkar et al., CVPR 2020
    ("Fine-tune"); Warnecke et al., NDSS 2023.

    Raises:
        ValueError: a budget option out of range (named).
    """
    _check_options(epochs, lr, momentum, weight_decay)
    model = copy.deepcopy(task.original)
    xr, yr = task.subset(task.retain)
    c = task.config
    train_sgd(model, xr, yr, lr=lr, epochs=epochs, batch_size=c.batch_size, seed=sub_seed(c.seed, 10),
              loss=c.loss, lam=c.lam, momentum=momentum, weight_decay=weight_decay, progress=False)
    return model


def gradient_ascent(task: UnlearningTask, lr: float = 1e-4, *, epochs: int = 5, momentum: float = 0.9,
                    weight_decay: float = 5e-4) -> nn.Module:
    """Gradient ascent on the forget set: SGD on −loss over the forget set (seeded shuffle per epoch,
    M's loss and batch size); weight decay still pulls towards 0, as in the source's optimiser.

    Defaults: the budget of Jia et al., NeurIPS 2023 (OPTML-Group/Unlearn-Sparse, ``unlearn/GA.py``;
    README command ``--unlearn GA --unlearn_lr 0.0001 --unlearn_epochs 5``; momentum 0.9, weight decay
    5e-4): 5 epochs at lr 1e-4. The idea: Golatkar et al., CVPR 2020 ("NegGrad"); Thudi et al. 2022
    discuss it as a naive method.

    Raises:
        ValueError: a budget option out of range (named).
    """
    _check_options(epochs, lr, momentum, weight_decay)
    model = copy.deepcopy(task.original)
    xf, yf = task.subset(task.forget)
    c, loss_fn = task.config, make_loss(task.config.loss, task.config.lam)
    opt = make_optimizer(model, lr, momentum, weight_decay)
    neg = lambda z, t: -loss_fn(z, t)  # noqa: E731
    none = torch.empty(0, dtype=torch.long)
    for epoch in range(epochs):
        for idx in batch_order(xf.shape[0], none, c.batch_size, "shuffle", epoch, sub_seed(c.seed, 11)):
            dev = idx.to(xf.device)
            sgd_step(model, opt, neg, xf[dev], yf[dev])
    return model


def neggrad_plus(task: UnlearningTask, alpha: float = 0.95, *, epochs: int = 10, lr: float = 0.01,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> nn.Module:
    """NegGrad+: epochs over the retain set minimising α·L(retain batch) − (1 − α)·L(forget batch),
    the forget batches cycled alongside (a new shuffle of both every epoch); ``alpha`` in (0, 1)
    weighs retaining against forgetting.

    Defaults: SCRUB's NegGrad+ (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023;
    meghdadk/SCRUB, ``small_scale_unlearning.ipynb``: ``negative_grad`` with ``ng_alpha = 0.95``,
    ``ng_epochs = 10``, ``ng_lr = 0.01``, ``torch.optim.SGD(lr, weight_decay=0)``, no momentum).
    Deviation: the notebook adds α·(wd/2)·‖w − w_M‖² (its ``l2_penalty`` towards the original
    weights) to the retain loss; this function does not (``weight_decay`` here is the optimiser's).

    Raises:
        ValueError: ``alpha`` outside (0, 1) or a budget option out of range (named).
    """
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    _check_options(epochs, lr, momentum, weight_decay)
    model = copy.deepcopy(task.original)
    c, loss_fn = task.config, make_loss(task.config.loss, task.config.lam)
    opt = make_optimizer(model, lr, momentum, weight_decay)
    none = torch.empty(0, dtype=torch.long)
    retain, forget = task.retain, task.forget
    model.train()
    for epoch in range(epochs):
        f_batches = batch_order(len(forget), none, c.batch_size, "shuffle", epoch, sub_seed(c.seed, 12))
        r_batches = batch_order(len(retain), none, c.batch_size, "shuffle", epoch, sub_seed(c.seed, 13))
        for i, idx in enumerate(r_batches):
            xr, yr = task.subset(retain[idx])
            xf, yf = task.subset(forget[f_batches[i % len(f_batches)]])
            opt.zero_grad(set_to_none=True)
            loss = alpha * loss_fn(model(xr), yr) - (1.0 - alpha) * loss_fn(model(xf), yf)
            loss.backward()
            opt.step()
    return model


def graves_relabel(labels: torch.Tensor, forget: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Graves et al.'s relabelled training labels: a copy of (N,) ``labels`` in which each forget point
    gets a label drawn uniformly from the C − 1 classes other than its own (seeded, once); every
    other label is unchanged. Returns (N,) int64 on ``labels``' device.

    Raises:
        ValueError: ``num_classes`` < 2 or a label outside [0, C − 1].
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 to draw a wrong label; got {num_classes}")
    y = labels.detach().cpu().to(torch.int64)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}]")
    g = torch.Generator().manual_seed(int(seed))
    out = y.clone()
    shift = torch.randint(1, num_classes, (len(forget),), generator=g)
    out[forget] = (y[forget] + shift) % num_classes  # uniform over the other C − 1 classes
    return out.to(labels.device)


def random_labels_graves(task: UnlearningTask, epochs: int | None = None, *, lr: float | None = None,
                         momentum: float | None = None, weight_decay: float | None = None) -> nn.Module:
    """Graves et al.'s relabelling ("unlearning"): relabel each forget point once with a wrong label
    (:func:`graves_relabel`) and keep training M on the **whole** training set with the relabelled
    points among the rest (seeded shuffle per epoch), with M's optimiser settings.

    Source: Graves, Nagisetty, Ganesh, "Amnesiac Machine Learning", AAAI 2021 (lmgraves/AmnesiacML,
    ``Amnesiac Unlearning - MNIST.ipynb`` and ``Unlearning Tester - CIFAR100.ipynb``: the
    ``unlearningdata`` copy of the training set with the target points' labels replaced by
    ``random.choice`` of the other labels, trained for ``forgetfulepochs = 10`` epochs, as many as
    ``trainingepochs``, by the optimiser that trained the model). Defaults: ``epochs`` = M's epochs
    (the source's unlearning budget equals its training budget) and M's lr, momentum and weight
    decay (None = M's). The source continues M's optimiser state (Adam); M here is trained by SGD
    and this run starts a fresh optimiser (no momentum buffer carried over).

    Raises:
        ValueError: a budget option out of range (named).
    """
    c = task.config
    epochs = c.epochs if epochs is None else epochs
    lr = c.lr if lr is None else lr
    momentum = c.momentum if momentum is None else momentum
    weight_decay = c.weight_decay if weight_decay is None else weight_decay
    _check_options(epochs, lr, momentum, weight_decay)
    model = copy.deepcopy(task.original)
    y = graves_relabel(task.train_y, task.forget, _num_classes(task), sub_seed(c.seed, 14))
    train_sgd(model, task.train_x, y, lr=lr, epochs=epochs, batch_size=c.batch_size,
              seed=sub_seed(c.seed, 15), loss=c.loss, lam=c.lam, momentum=momentum,
              weight_decay=weight_decay, progress=False)
    return model


def random_labels_salun(task: UnlearningTask, epochs: int = 10, *, lr: float = 0.01, momentum: float = 0.9,
                        weight_decay: float = 5e-4) -> nn.Module:
    """SalUn's random labelling ("RL"), without the saliency mask: every epoch, one pass over the forget
    set with labels drawn uniformly from all C classes afresh for each batch (a draw may hit the true
    label), then one pass over the retain set with its true labels; one SGD optimiser throughout
    (seeded shuffles and draws; M's loss and batch size).

    Source: Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
    ICLR 2024 (OPTML-Group/Unlearn-Saliency, ``Classification/unlearn/RL.py``, the CIFAR-10/SVHN
    branch, ``target = torch.randint(0, num_classes, ...)``; ``unlearn/impl.py`` builds
    ``SGD(unlearn_lr, momentum, weight_decay)`` once; ``arg_parser.py`` defaults: ``unlearn_epochs``
    10, ``unlearn_lr`` 0.01, momentum 0.9, weight decay 5e-4; its learning-rate milestones 91 and 136
    never trigger in 10 epochs). SalUn's CIFAR-100/Tiny-ImageNet branch instead shuffles the relabelled
    forget set into the retain set; the README's lr 0.013 is for RL with the saliency mask.

    Raises:
        ValueError: a budget option out of range (named).
    """
    _check_options(epochs, lr, momentum, weight_decay)
    model = copy.deepcopy(task.original)
    c, loss_fn = task.config, make_loss(task.config.loss, task.config.lam)
    n_cls = _num_classes(task)
    opt = make_optimizer(model, lr, momentum, weight_decay)
    g = torch.Generator().manual_seed(sub_seed(c.seed, 16))
    none = torch.empty(0, dtype=torch.long)
    retain, forget = task.retain, task.forget
    for epoch in range(epochs):
        for idx in batch_order(len(forget), none, c.batch_size, "shuffle", epoch, sub_seed(c.seed, 17)):
            xf, _ = task.subset(forget[idx])
            sgd_step(model, opt, loss_fn, xf, torch.randint(0, n_cls, (len(idx),), generator=g).to(xf.device))
        for idx in batch_order(len(retain), none, c.batch_size, "shuffle", epoch, sub_seed(c.seed, 18)):
            xr, yr = task.subset(retain[idx])
            sgd_step(model, opt, loss_fn, xr, yr)
    return model


def amnesiac(task: UnlearningTask, scale: float = 1.0) -> nn.Module:
    """Amnesiac unlearning: subtract ``scale`` × the stored parameter updates of every training batch
    that held a forget point (scale 1 removes them entirely). Needs ``task.record`` from
    :func:`train_recorded` with ``watch`` covering the forget set.
    Source: Graves et al., "Amnesiac Machine Learning", AAAI 2021 (§4, amnesiac unlearning)."""
    _check_positive("scale", scale)
    if task.record is None:
        raise ValueError("amnesiac unlearning needs task.record (train M with train_recorded(watch=forget))")
    model = copy.deepcopy(task.original)
    is_forget = torch.zeros(task.train_x.shape[0], dtype=torch.bool)
    is_forget[task.forget] = True
    params = list(model.parameters())
    with torch.no_grad():
        for idx, upd in zip(task.record.batches, task.record.updates):
            if bool(is_forget[idx].any()):
                torch._foreach_add_(params, [u.to(p.device) for u, p in zip(upd, params)], alpha=-scale)
    return model


def _mean_forget_gradient(task: UnlearningTask, at: nn.Module) -> list[torch.Tensor]:
    """∇ of the mean loss over the forget set at ``at``'s weights, in batches of b (BatchNorm in
    train mode on each batch, as the reference's x* batch), batch gradients weighted by size."""
    loss_fn = make_loss(task.config.loss, task.config.lam)
    total = None
    m = len(task.forget)
    for chunk in torch.split(task.forget, task.config.batch_size):
        xf, yf = task.subset(chunk)
        g = forget_gradient(at, loss_fn, xf, yf, bn_mode="train")
        w = len(chunk) / m
        total = [gi * w for gi in g] if total is None else [t + gi * w for t, gi in zip(total, g)]
    return total


def _sgu(task: UnlearningTask, at: nn.Module, scale: float) -> nn.Module:
    """w″ = w_T + scale·η·E·(m/b)·∇L(w; x*): each forget point was seen once per epoch in a batch of
    b, i.e. E·m/b batch-equivalents of x* (paper §1.3, the 3P form (η·E/b)·Σ_{x∈x*}∇ℓ(w; x))."""
    _check_positive("scale", scale)
    c = task.config
    grad = _mean_forget_gradient(task, at)
    times = scale * c.epochs * len(task.forget) / c.batch_size
    model = copy.deepcopy(task.original)
    new = single_gradient_unlearning(list(model.parameters()), grad, c.lr, times)
    with torch.no_grad():
        torch._foreach_copy_(list(model.parameters()), new)
    return model


def sgu_at_w0(task: UnlearningTask, scale: float = 1.0) -> nn.Module:
    """Single gradient unlearning as in the paper: the gradient of the forget set's loss at **w_0**
    (here the initialisation M trained from), added back with the step size of SGD, ``scale`` × the
    first-order undo (1 = exact to first order). Source: Thudi et al., EuroS&P 2022, §1.3
    (correlation_verification.py); :mod:`unroll_utils.unlearning`."""
    return _sgu(task, task.initial, scale)


def sgu_at_final(task: UnlearningTask, scale: float = 1.0) -> nn.Module:
    """Single gradient unlearning with the gradient at the **final** weights w_T, the variant other
    papers usually run as "Unrolling SGD" baseline (the reference's cumulative_verification.py);
    ``scale`` as :func:`sgu_at_w0`. Source: paper §1.3, table of variants."""
    return _sgu(task, task.original, scale)


#: H̄ of :func:`sgu_propagated`: the Hessian of the training loss on the first this many training points.
PROPAGATED_POINTS = 128


def _forget_visits(task: UnlearningTask) -> tuple[list[int], list[float]]:
    """From ``task.record``: the 1-based steps τ_k of M whose batch B_k held forget points, in order,
    and their weights |x* ∩ B_k| / |B_k| (the forget points' share of that batch's mean loss)."""
    rec = task.record
    if rec is None:
        raise ValueError("sgu_propagated needs task.record (train M with train_recorded(watch=forget))")
    if len(rec.batch_steps) != len(rec.batches):
        raise ValueError("task.record has no step index per recorded batch (batch_steps); "
                         "record M with train_recorded(watch=forget)")
    is_forget = torch.zeros(task.train_x.shape[0], dtype=torch.bool)
    is_forget[task.forget] = True
    steps, weights = [], []
    for idx, step in zip(rec.batches, rec.batch_steps):
        hits = int(is_forget[idx].sum())
        if hits:
            steps.append(int(step))
            weights.append(hits / len(idx))
    if not steps:
        raise ValueError("task.record holds no batch with a forget point (train M with "
                         "train_recorded(watch=forget))")
    return steps, weights


def sgu_propagated(task: UnlearningTask, krylov: int = 10) -> nn.Module:
    """Hessian-propagated single gradient unlearning, post hoc from M (this package's variant,
    beyond the paper: :mod:`unroll_utils.propagated`, notebook 14).

    w‴ = w_T + η·Σ_k (|x*∩B_k|/|B_k|)·f_k(H̄)·g,  f_k(x) = clamp((1 − η(x + λ_wd))^{n_k}, −1, 1),

    over M's steps τ_k whose batch B_k held forget points (``task.record``: batches and step indices,
    T = its step count), with n_k the later steps τ_k < i ≤ T on which naive retraining moves: T − τ_k
    less the later batches of forget points only (:func:`unroll_utils.propagated.retain_steps_after`;
    M′ has no batch there, so those steps do not contract the earlier traces), H̄ the Hessian of the training loss at M's final weights w_T on the
    first :data:`PROPAGATED_POINTS` training points (BatchNorm in train mode, as SGD trains) and
    g = ∇L(w_0; x*), the mean forget-set gradient at w_0 that :func:`sgu_at_w0` uses. With f ≡ 1
    this is single gradient unlearning with Σ_k |x*∩B_k|/|B_k| batch-equivalents (E·m/b when b
    divides N); f shrinks the correction along the directions later steps contracted.

    One gradient for every visit, not each batch's own forget gradient: every visit then shares
    the Krylov space of g, and since f enters linearly, Σ_k w_k f_k(H̄) g = (Σ_k w_k f_k)(H̄) g is
    one Lanczos run of ``krylov`` HVPs (:func:`unroll_utils.propagated.lanczos_basis`,
    :meth:`KrylovBasis.apply`, the sum of :func:`~unroll_utils.propagated.propagated_correction`).
    Per-batch gradients would cost ``krylov`` HVPs per visit: a random 10% forget set meets
    almost every batch, ≈ E·N/b visits (91 of 96 steps for the smoke benchmark, N = 1000,
    b = 32, E = 3), and as many times the HVPs.

    Hyper-parameter ``krylov`` (≥ 1, default 10): Lanczos steps. Assumes plain SGD (momentum
    makes x*'s trace a different polynomial; the factor is then an approximation). Memory:
    ``krylov`` float64 copies of the parameters. Needs every parameter trainable.

    Raises:
        ValueError: ``krylov`` not a positive integer; ``task.record`` missing, without step
            indices or without a batch holding forget points.
    """
    from .propagated import retain_steps_after

    _check_positive("krylov", krylov, True)
    steps, weights = _forget_visits(task)
    c, total = task.config, task.record.steps
    model = copy.deepcopy(task.original)
    g = flatten(_mean_forget_gradient(task, task.initial))
    if not bool(g.any()):  # x* fitted exactly at w_0: nothing to add back
        return model
    points = min(PROPAGATED_POINTS, task.train_x.shape[0])
    op = HessianOperator(task.original, make_loss(c.loss, c.lam), task.train_x[:points],
                         task.train_y[:points], bn_mode="train")
    if op.numel != g.numel():
        raise ValueError("sgu_propagated needs every model parameter trainable "
                         f"(H-bar has {op.numel} coordinates, the gradient {g.numel()})")

    counts = retain_steps_after(steps, [w == 1.0 for w in weights], total)  # w = 1: x* only

    def factor(theta: np.ndarray) -> np.ndarray:  # Σ_k w_k f_k(θ)
        return sum(w * propagation_factor(theta, c.lr, n, weight_decay=c.weight_decay)
                   for n, w in zip(counts, weights))

    u, _ = lanczos_basis(op.matvec, g, krylov).apply(factor)
    params = list(model.parameters())
    with torch.no_grad():
        torch._foreach_add_(params, unflatten(c.lr * u, params))
    return model


#: name → (method, hyper-parameter name, default value).
METHODS = {
    "naive_retraining": (naive_retraining, "epochs", None),
    "fine_tuning": (fine_tuning, "epochs", 10),
    "gradient_ascent": (gradient_ascent, "lr", 1e-4),
    "neggrad_plus": (neggrad_plus, "alpha", 0.95),
    "random_labels_graves": (random_labels_graves, "epochs", None),
    "random_labels_salun": (random_labels_salun, "epochs", 10),
    "amnesiac": (amnesiac, "scale", 1.0),
    "sgu_w0": (sgu_at_w0, "scale", 1.0),
    "sgu_final": (sgu_at_final, "scale", 1.0),
    "sgu_propagated": (sgu_propagated, "krylov", 10),
}
#: name → the source whose code (and default budget) the method follows (details in its docstring).
SOURCES = {
    "naive_retraining": "Cao & Yang 2015; Thudi et al. 2022 (M', same batches)",
    "fine_tuning": "Jia et al. 2023, Unlearn-Sparse unlearn/FT.py",
    "gradient_ascent": "Jia et al. 2023, Unlearn-Sparse unlearn/GA.py",
    "neggrad_plus": "Kurmanji et al. 2023, SCRUB small_scale_unlearning.ipynb",
    "random_labels_graves": "Graves et al. 2021, AmnesiacML notebooks",
    "random_labels_salun": "Fan et al. 2024, Unlearn-Saliency unlearn/RL.py",
    "amnesiac": "Graves et al. 2021, AmnesiacML notebooks",
    "sgu_w0": "Thudi et al. 2022, correlation_verification.py",
    "sgu_final": "Thudi et al. 2022, cumulative_verification.py",
    "sgu_propagated": "this package (notebook 14)",
}
#: the budget options (keyword arguments) of the iterative methods.
BUDGET_OPTIONS = ("epochs", "lr", "momentum", "weight_decay")


def budget(name: str, config: TrainingConfig, hyper=None, options: dict | None = None) -> dict:
    """The budget method ``name`` runs with: epochs, lr, momentum and weight decay after the
    hyper-parameter ``hyper`` (None = the default of :data:`METHODS`) and the keyword ``options``
    are applied to its signature's defaults (None there = M's ``config`` value). Methods without
    such options (naive retraining: M's own budget; amnesiac and the single-gradient methods: no
    training) give the keys they have, the others None.

    Raises:
        ValueError: an unknown method or option name.
    """
    import inspect

    if name not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}; got {name!r}")
    fn, hp, default = METHODS[name]
    opts = dict(options or {})
    unknown = [k for k in opts if k not in inspect.signature(fn).parameters]
    if unknown:
        raise ValueError(f"{name} has no option {unknown[0]!r} (options: {list(BUDGET_OPTIONS)})")
    params = inspect.signature(fn).parameters
    chosen = {k: (p.default if p.default is not inspect.Parameter.empty else None) for k, p in params.items()}
    chosen.update({hp: default if hyper is None else hyper}, **opts)
    out = {}
    for key in BUDGET_OPTIONS:
        if key in params or (name == "naive_retraining" and key != "epochs"):
            value = chosen.get(key)
            out[key] = getattr(config, key) if value is None else value
        else:
            out[key] = None
    return out


#: forget-set kinds: random k% of the training set, or a whole class.
FORGET_KINDS = ("random1", "random5", "random10", "class")


def make_forget_sets(labels: torch.Tensor, kinds, *, seed: int, forget_class: int = 0) -> dict[str, torch.Tensor]:
    """Forget indices per kind for a training set with (N,) ``labels``.

    ``"randomK"`` (K in 1..99): ⌈K% · N⌉ points drawn with ``seed``
    (:func:`unroll_utils.data.select_forget_set`); ``"class"``: every point of ``forget_class``.

    Raises:
        ValueError: an unknown kind (the allowed forms are named), a ``randomK`` that would take every
            training point (naming the kind, the number of points and the largest K that fits), or a
            class absent from ``labels``.
    """
    n, out = len(labels), {}
    for kind in kinds:
        if kind == "class":
            out[kind] = D.select_forget_set(n, "class", labels=labels, cls=forget_class)
        elif isinstance(kind, str) and kind.startswith("random") and kind[6:].isdigit() and 1 <= int(kind[6:]) <= 99:
            pct = int(kind[6:])
            k = max(1, -(-pct * n // 100))  # ⌈K·N/100⌉ in integers (K/100*N in floats gives 8 for 7% of 100)
            if k > n - 1:
                top = max((q for q in range(1, 100) if -(-q * n // 100) <= n - 1), default=None)
                fits = (f"with {n} training points randomK needs K <= {top} (at most {n - 1} points)" if top
                        else f"{n} training point(s) leave no random forget set")
                raise ValueError(f"forget kind {kind!r} takes ⌈{pct}% · {n}⌉ = {k} of the {n} training points, so "
                                 f"nothing would be left to retain: {fits}")
            out[kind] = D.select_forget_set(n, "random", k=k, seed=seed)
        else:
            raise ValueError(f"forget kind must be 'class' or 'randomK' with K in 1..99 (e.g. {list(FORGET_KINDS)}); "
                             f"got {kind!r}")
    return out


#: the membership-inference columns of :func:`run_forget_benchmark`, each as its source computes it.
MIA_METRICS = ("loss_auc", "mia_accuracy", "mia_efficacy")


def _measure(model: nn.Module, task: UnlearningTask, test_x, test_y, reference: nn.Module | None) -> dict:
    """Accuracies, the three membership-inference numbers of :data:`MIA_METRICS` and VE to M′, from
    one eval-mode forward pass over the training and test sets.

    ``loss_auc``: ROC-AUC of the loss, forget set as members vs the test set
    (:func:`~unroll_utils.privacy.loss_attack_auc`). ``mia_accuracy``: the unlearning challenge kit's
    cross-validated logistic regression on the same losses (:func:`~unroll_utils.privacy.mia_cv_accuracy`,
    seeded by M's seed; NaN with fewer than 6 forget or test points). ``mia_efficacy``: SalUn's SVC
    MIA-Efficacy on p_y, shadow members = the first len(test) retain points, non-members = the test
    set (:func:`~unroll_utils.privacy.svc_mia_efficacy`)."""
    p_train, p_test = predict_probs(model, task.train_x).cpu(), predict_probs(model, test_x).cpu()
    y_train, y_test = task.train_y.cpu(), test_y.cpu()
    hit_train, hit_test = p_train.argmax(1) == y_train, p_test.argmax(1) == y_test
    f, r = task.forget, task.retain
    loss_f, loss_t = per_example_loss(p_train[f], y_train[f]), per_example_loss(p_test, y_test)
    acc = (mia_cv_accuracy(loss_f, loss_t, seed=sub_seed(task.config.seed, 19) % 2**32)
           if min(len(loss_f), len(loss_t)) >= 6 else float("nan"))
    shadow = r[: len(y_test)]
    return {"forget_acc": float(hit_train[f].double().mean()), "retain_acc": float(hit_train[r].double().mean()),
            "test_acc": float(hit_test.double().mean()),
            "loss_auc": loss_attack_auc(loss_f, loss_t), "mia_accuracy": acc,
            "mia_efficacy": svc_mia_efficacy(p_train[shadow], y_train[shadow], p_test, y_test, p_train[f], y_train[f]),
            "ve": verification_error(model, reference) if reference is not None else 0.0}


def _run_kind(task: UnlearningTask, methods, hyper: dict, options: dict, test_x, test_y) -> list[dict]:
    """Naive retraining first (the reference for VE and time), then every other method."""
    start = time.perf_counter()
    reference = naive_retraining(task)
    t_ref = time.perf_counter() - start
    rows = [{"method": "original", "seconds": 0.0, **_measure(task.original, task, test_x, test_y, reference)},
            {"method": "naive_retraining", "seconds": t_ref, **_measure(reference, task, test_x, test_y, reference)}]
    for name in methods:
        if name == "naive_retraining":
            continue
        fn, hp, default = METHODS[name]
        start = time.perf_counter()
        model = fn(task, **{hp: hyper.get(name, default)}, **options.get(name, {}))
        seconds = time.perf_counter() - start
        rows.append({"method": name, "seconds": seconds, **_measure(model, task, test_x, test_y, reference)})
    for r in rows:
        r["time_rel"] = r["seconds"] / t_ref
    return rows


def run_forget_benchmark(dataset: D.TensorData, build, *, kinds=FORGET_KINDS, methods=tuple(METHODS),
                         seeds=(0, 1, 2), config: TrainingConfig = TrainingConfig(), forget_class: int = 0,
                         hyper: dict | None = None, options: dict | None = None,
                         progress: bool = True) -> pd.DataFrame:
    """The forget benchmark: for every seed, train M, then for every forget-set kind retrain M′ and
    apply every method.

    Args:
        dataset: a :class:`~unroll_utils.data.TensorData` (train and test split).
        build: ``build(seed) -> nn.Module`` giving w_0 (e.g. a seeded ``models.build_model``).
        kinds: forget-set kinds (see :func:`make_forget_sets`). methods: names in :data:`METHODS`.
        seeds: seeds of w_0, the data order, the random forget sets and the methods' draws.
        config: how M is trained (its ``seed`` is replaced by each seed).
        forget_class: the class forgotten by the ``"class"`` kind.
        hyper: method name → value of its hyper-parameter (default: :data:`METHODS`).
        options: method name → dict of budget options (:data:`BUDGET_OPTIONS`, e.g.
            ``{"fine_tuning": {"epochs": 5, "lr": 0.1}}``); default: each method's reference budget
            (:func:`budget` says what ran).

    Returns:
        Tidy table, one row per (seed, kind, method): ``forget_acc``, ``retain_acc``, ``test_acc``
        (in [0, 1]); the membership-inference numbers of :data:`MIA_METRICS` (forget set against
        the test set; the retrained model's values are the target): ``loss_auc`` (ROC-AUC of the
        loss), ``mia_accuracy`` (the unlearning challenge kit's cross-validated logistic-regression
        accuracy) and ``mia_efficacy`` (SalUn's SVC MIA-Efficacy: the fraction of forget points
        called non-member); ``ve`` (‖w − w′‖ to naive retraining), ``seconds`` (wall time of the
        method) and ``time_rel`` (seconds / naive retraining's). The ``original`` row is M itself
        (no unlearning).

    Raises:
        ValueError: unknown method, kind or option, empty ``seeds``, or a class absent from the labels.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty list of {list(METHODS)}; got {list(methods)}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    options = dict(options or {})
    for name, opts in options.items():
        budget(name, config, (hyper or {}).get(name), opts)  # unknown method or option: ValueError now
    rows = []
    for seed in tqdm(list(seeds), desc="seeds", disable=not progress, leave=False):
        cfg = replace(config, seed=int(seed))
        sets = make_forget_sets(dataset.train_y, kinds, seed=int(seed), forget_class=forget_class)
        initial = build(int(seed))
        device = next(initial.parameters()).device
        x, y = dataset.train_x.to(device), dataset.train_y.to(device)
        tx, ty = dataset.test_x.to(device), dataset.test_y.to(device)
        original = copy.deepcopy(initial)
        record = train_recorded(original, x, y, cfg, watch=torch.unique(torch.cat(list(sets.values()))))
        for kind, forget in sets.items():
            task = UnlearningTask(original, initial, x, y, forget, cfg, record)
            for r in _run_kind(task, methods, hyper or {}, options, tx, ty):
                rows.append({"seed": int(seed), "kind": kind, "n_forget": len(forget), **r})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame,
              metrics=("forget_acc", "retain_acc", "test_acc") + MIA_METRICS + ("ve", "time_rel"),
              confidence: float = 0.95) -> pd.DataFrame:
    """Mean and two-sided Student-t confidence interval over seeds for each (kind, method, metric).

    The interval is mean ± t_{(1+c)/2, n−1}·s/√n with s the sample standard deviation over the n seeds
    (t-interval: few seeds, roughly normal means); NaN bounds when n = 1.

    Returns:
        Tidy table with columns kind, method, metric, mean, ci_low, ci_high, n.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    out = []
    for (kind, method), g in table.groupby(["kind", "method"], sort=False):
        for m in metrics:
            mean, low, high = t_interval(g[m].to_numpy(dtype=np.float64), confidence)
            out.append({"kind": kind, "method": method, "metric": m, "mean": mean,
                        "ci_low": low, "ci_high": high, "n": len(g)})
    return pd.DataFrame(out)
