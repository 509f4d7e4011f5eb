"""The unlearning methods a forget benchmark compares (:mod:`unroll_utils.baselines` runs them),
the unlearning request they act on (:class:`UnlearningTask`) and M's recorded training
(:func:`train_recorded`).

Every method is ``method(task, <one hyper-parameter>, **options) -> nn.Module``: it returns a new model
and never modifies ``task.original``, ``task.initial`` or any model passed in. The iterative baselines
(fine-tuning, gradient ascent, NegGrad+, the two random-label methods) run by default at the budget of
the code each one cites (epochs, learning rate, momentum, weight decay; the docstrings,
:data:`unroll_utils.baselines.SOURCES` and ``docs/fidelity.md``). Naive retraining trains from w_0 on
the *same* batches as M with the forget points removed, so VE = ‖w_method − w′‖ measures the method,
not SGD's order noise.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from . import data as D
from .hessian import HessianOperator
from .losses import make_loss
from .privacy import predict_probs
from .krylov import flatten, lanczos_basis, unflatten
from .propagated import propagation_factor
from .training import SGDConfig, batch_order, make_optimizer, sgd_step, sub_seed, train_sgd
from .unlearning import forget_gradient, single_gradient_unlearning

__all__ = ["TrainingRecord", "UnlearningTask", "train_recorded", "naive_retraining", "fine_tuning",
           "gradient_ascent", "neggrad_plus", "graves_relabel", "random_labels_graves",
           "random_labels_salun", "amnesiac", "sgu_at_w0", "sgu_at_final", "sgu_propagated",
           "PROPAGATED_POINTS"]


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


def train_recorded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: SGDConfig, *,
                   exclude: torch.Tensor | None = None, watch: torch.Tensor | None = None) -> TrainingRecord:
    """Train ``model`` in place on the seeded shuffled order of all N points, dropping ``exclude``.

    Args:
        model: trained in place. x: (N, ...) inputs, y: (N,) labels, on the model's device.
        config: :class:`unroll_utils.baselines.TrainingConfig`.
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
        config: the :class:`unroll_utils.baselines.TrainingConfig` of M. record: M's :class:`TrainingRecord` with the
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
    config: SGDConfig
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
    Source: naive retraining as the paper's M′ (arXiv 2109.13398; notebook 01); Cao & Yang, IEEE S&P 2015."""
    cfg = task.config if epochs is None else replace(task.config, epochs=_check_positive("epochs", epochs, True))
    model = copy.deepcopy(task.initial)
    train_recorded(model, task.train_x, task.train_y, cfg, exclude=task.forget)
    return model


def _num_classes(task: UnlearningTask) -> int:
    """C, the width of M's output (one eval-mode forward pass on one training point)."""
    return int(predict_probs(task.original, task.train_x[:1]).shape[1])


def _check_options(epochs, lr, momentum, weight_decay) -> None:
    """ValueError naming the first bad budget option (SGDConfig's checks: epochs an integer ≥ 1,
    lr > 0, momentum in [0, 1), weight decay ≥ 0)."""
    SGDConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay).validate()


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
    b, i.e. E·m/b batch-equivalents of x* (notebook 03, eq. (1): (η·E/b)·Σ_{x∈x*}∇ℓ(w; x))."""
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
    first-order undo (1 = exact to first order). Source: Thudi et al., EuroS&P 2022 (arXiv 2109.13398), notebook 03, eq. (1)
    (correlation_verification.py); :mod:`unroll_utils.unlearning`."""
    return _sgu(task, task.initial, scale)


def sgu_at_final(task: UnlearningTask, scale: float = 1.0) -> nn.Module:
    """Single gradient unlearning with the gradient at the **final** weights w_T, the variant other
    papers usually run as "Unrolling SGD" baseline (the reference's cumulative_verification.py);
    ``scale`` as :func:`sgu_at_w0`. Source: the reference's `Unlearning/cumulative_verification.py` (gradient at the final weights)."""
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
    one Lanczos run of ``krylov`` HVPs (:func:`unroll_utils.krylov.lanczos_basis`,
    :meth:`~unroll_utils.krylov.KrylovBasis.apply`, the sum of :func:`~unroll_utils.propagated.propagated_correction`).
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
