"""Forget benchmarks: single gradient unlearning next to the usual unlearning baselines.

The methods themselves, the task they act on and M's recorded training are in
:mod:`unroll_utils.unlearning_methods`; this module holds their registry (:data:`METHODS`,
:data:`SOURCES`, :func:`budget`), the forget sets, the measurements and the benchmark's table.

Most users run "Unrolling SGD" as a baseline in someone else's benchmark: forget a random k% of the
training set or a whole class, then report forget / retain / test accuracy, a membership-inference
score, and run time next to naive retraining. This module trains the original model M once per seed
(recording what amnesiac unlearning needs), retrains M′ on the retain set (the reference), applies each
method in :data:`METHODS` and tabulates the measurements, one row per seed, kind and method (their means
and 95% intervals over seeds: :func:`unroll_utils.statistics.seed_summary`).

Protocol (the paper's M and M′, notebook 01, with a shuffled order): M trains from w_0 for ``epochs`` epochs
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
import time
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from .membership import mia_cv_accuracy, svc_mia_efficacy
from .metrics import verification_error
from .privacy import loss_attack_auc, per_example_loss, predict_probs
from .training import SGDConfig, sub_seed
from .unlearning_methods import (UnlearningTask, amnesiac, fine_tuning, gradient_ascent, naive_retraining,
                                 neggrad_plus, random_labels_graves, random_labels_salun, sgu_at_final,
                                 sgu_at_w0, sgu_propagated, train_recorded)

__all__ = ["TrainingConfig", "METHODS", "SOURCES", "BUDGET_OPTIONS", "FORGET_KINDS", "MIA_METRICS",
           "budget", "make_forget_sets", "run_forget_benchmark"]


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
    cross-validated logistic regression on the same losses (:func:`~unroll_utils.membership.mia_cv_accuracy`,
    seeded by M's seed; NaN with fewer than 6 forget or test points). ``mia_efficacy``: SalUn's SVC
    MIA-Efficacy on p_y, shadow members = the first len(test) retain points, non-members = the test
    set (:func:`~unroll_utils.membership.svc_mia_efficacy`)."""
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
        progress: a progress bar over the seeds.

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
