"""The paper's CIFAR experiments as protocols: presets, the regime map, per-run correlations, the
measurement schedule of Exp C/D, and a run-time estimate (reference code
cleverhans-lab/unrolling-sgd, ``Unlearning/pretrain.py``, ``correlation_verification.py``,
``checkpoint_version.py``, ``Correlation_unlearning.py`` and ``master_unlearning.py``; what each
default reproduces is listed in ``docs/fidelity.md``).

Notebooks 06–09 are thin layers over this module, :mod:`unroll_utils.pretraining`,
:mod:`unroll_utils.fine_tuning` (the runs of Exp A and Exp B, with Exp B's checkpointed error) and
:func:`unroll_utils.trajectory.run_lockstep`:

* :data:`PRESETS`: per experiment, the sizes of the ``smoke`` (CPU, CI: the embedded MNIST subset
  and ``small_cnn``), ``cpu`` (the paper's protocol with thinned grids and 3 seeds on the embedded
  MNIST subset, minutes on one CPU core: what ``PRESET=None`` picks without a GPU, see
  :func:`default_preset`), ``small`` (CIFAR-10 ResNet-18 on one GPU in minutes) and ``paper`` (the
  reference grids of the scripts above, see ``docs/fidelity.md``) presets.
* :func:`regime_map`: where single gradient unlearning (and, optionally, its Hessian-propagated
  variant) helps at all: VE / ‖w_t − w′_t‖ against η·λ_max and t.
* :func:`run_correlations`: Pearson and Spearman of e with VE per run (their interval over seeds:
  :func:`unroll_utils.statistics.seed_summary`).
* :func:`estimate_seconds`: a measured estimate of a run's wall time, printed before long runs.
* :func:`epoch_positions`, :func:`scheduled_steps`, :func:`run_scheduled`: the reference's
  measurement schedule of Exp C, Exp D and the IMDB experiment (``if i % eval_every == 0`` on
  the in-epoch batch index i, so the count restarts every epoch), as a lock-step run.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import hessian, results
from .losses import make_loss
from .metrics import correlations
from .propagated import PropagatedConfig
from .lockstep import LockStep, LockStepResult
from .training import make_optimizer, sgd_step
from .trajectory import LockStepConfig, run_lockstep

PRESET_NAMES = ("smoke", "cpu", "small", "paper")

_SMOKE_DATA = {"dataset": "mnist", "model": "small_cnn", "width": 8, "n_train": 1000, "n_test": 500,
               "sigma_tol": 1e-2}
_CPU_DATA = {"dataset": "mnist", "model": "small_cnn", "width": 8, "n_train": 2000, "n_test": 1000,
             "sigma_tol": 1e-3}
_SMALL_DATA = {"dataset": "cifar10", "model": "resnet18", "width": 16, "n_train": 10000, "n_test": 2000,
               "sigma_tol": 1e-3}
_PAPER_DATA = {"dataset": "cifar10", "model": "resnet18", "width": 16, "n_train": None, "n_test": None,
               "sigma_tol": 1e-3}

#: Sizes per experiment and preset; notebook parameters left at None take these values.
PRESETS: dict[str, dict[str, dict]] = {
    # Unlearning/pretrain.py: the reference recipe (lr 0.1, no momentum, wd 5e-4, cosine T_max=200,
    # crop+flip, b=128)
    "pretraining": {
        "smoke": {**_SMOKE_DATA, "n_train": 2000, "epochs": 2, "determinism_steps": 10},
        # 40 epochs of 16 steps: w_0 reaches about 0.77 test accuracy on the MNIST subset (10: about 0.3)
        "cpu": {**_CPU_DATA, "epochs": 40, "determinism_steps": 20},
        "small": {**_SMALL_DATA, "n_train": None, "n_test": None, "epochs": 5, "determinism_steps": 20},
        "paper": {**_PAPER_DATA, "epochs": 50, "determinism_steps": 20},
    },
    # Unlearning/correlation_verification.py and checkpoint_version.py: x* = batch 114 first, 1 epoch
    # at b=32, σ on the first 512 points, undo at w_0
    "fine_tuning": {
        "smoke": {**_SMOKE_DATA, "forget_batch": 20, "pretrain_epochs": 2, "lr": 0.01, "eval_every": 4,
                  "sigma_every": 32, "sigma_points": 32, "sigma_track": False, "n_seeds": 2,
                  "regime_lrs": [0.003, 0.01, 0.03, 0.1], "regime_steps": 30},
        # w_0 of the pretraining cpu preset; one epoch of 63 steps, VE at every step, σ (on the first
        # 512 points, tracked) at every second step
        "cpu": {**_CPU_DATA, "forget_batch": 20, "pretrain_epochs": 40, "lr": 0.01, "eval_every": 1,
                "sigma_every": 2, "sigma_points": 512, "sigma_track": True, "n_seeds": 3,
                "regime_lrs": [0.003, 0.01, 0.03, 0.1], "regime_steps": 40},
        "small": {**_SMALL_DATA, "forget_batch": 114, "pretrain_epochs": 5, "lr": 0.1, "eval_every": 1,
                  "sigma_every": 50, "sigma_points": 512, "sigma_track": False, "n_seeds": 2,
                  "regime_lrs": [0.001, 0.01, 0.03, 0.1],
                  "regime_steps": 50},
        "paper": {**_PAPER_DATA, "forget_batch": 114, "pretrain_epochs": 50, "lr": 0.1, "eval_every": 1,
                  "sigma_every": 1, "sigma_points": 512, "sigma_track": False, "n_seeds": 3,
                  "regime_lrs": [0.001, 0.003, 0.01, 0.03, 0.1],
                  "regime_steps": 200},
    },
    # Unlearning/Correlation_unlearning.py: SD(λ) pretraining at lr 0.01 (no momentum, no wd, no
    # augmentation), 5 epochs of fine-tuning at b=32 in a fixed order (x* first), undo at the current
    # weights, σ on the current batch at in-epoch positions 0, 200, 400, ... of every epoch
    # (shuffle=False, `main_idx % eval_every == 0`)
    "sd_loss_sweep": {
        "smoke": {**_SMOKE_DATA, "pretrain_epochs": 2, "pretrain_lr": 0.1, "epochs": 1, "eval_every": 8,
                  "lams": [0.0, 20.0], "n_seeds": 2, "schedule": "epoch_positions"},
        # 5 fine-tuning epochs of 63 steps, σ at in-epoch positions 0, 21, 42 (not every 200th step);
        # 5 of the 13 λ. Pretraining: the reference's 20 epochs at lr 0.01 are 320 steps here and leave
        # w_0 at about 0.27 test accuracy, so 40 epochs at lr 0.1 (as the pretraining recipe)
        "cpu": {**_CPU_DATA, "pretrain_epochs": 40, "pretrain_lr": 0.1, "epochs": 5, "eval_every": 21,
                "lams": [0.0, 1.0, 5.0, 20.0, 100.0], "n_seeds": 3, "schedule": "epoch_positions"},
        "small": {**_SMALL_DATA, "pretrain_epochs": 5, "pretrain_lr": 0.01, "epochs": 2,
                  "eval_every": 100, "lams": [0.0, 1.0, 10.0, 100.0], "n_seeds": 2,
                  "schedule": "epoch_positions"},
        "paper": {**_PAPER_DATA, "pretrain_epochs": 20, "pretrain_lr": 0.01, "epochs": 5,
                  "eval_every": 200, "n_seeds": 2, "schedule": "epoch_positions",
                  "lams": [0.0, 0.1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 50.0, 100.0, 150.0, 200.0, 250.0]},
    },
    # Unlearning/master_unlearning.py: from the random initialisation, lr 0.1, b=128, SD(λ), no
    # augmentation, a new shuffle every epoch (x* kept first for M′), σ on a full random batch at
    # in-epoch positions 1, 1 + eval_every, ... (shuffle=True, `i % 400 == 0`, i.e.
    # once per 391-batch epoch; position 1 here is the first shuffled batch after x*)
    "from_scratch": {
        "smoke": {**_SMOKE_DATA, "n_train": 768, "epochs": 2, "lams": [0.0, 5.0], "n_seeds": 2,
                  "order": "forget_first_shuffle", "schedule": "epoch_positions", "eval_every": 2},
        # 16 steps per epoch: σ at in-epoch positions 1 and 9 (twice per epoch) over 10 epochs
        "cpu": {**_CPU_DATA, "epochs": 10, "lams": [0.0, 5.0], "n_seeds": 3,
                "order": "forget_first_shuffle", "schedule": "epoch_positions", "eval_every": 8},
        "small": {**_SMALL_DATA, "epochs": 5, "lams": [0.0, 5.0], "n_seeds": 2,
                  "order": "forget_first_shuffle", "schedule": "epoch_positions", "eval_every": 400},
        "paper": {**_PAPER_DATA, "epochs": 50, "lams": [0.0, 5.0], "n_seeds": 2,
                  "order": "forget_first_shuffle", "schedule": "epoch_positions", "eval_every": 400},
    },
}
#: In-epoch position of Exp D's first measurement: 1, the first batch after x* (the reference,
#: which has no x*, measures its position 0, a random full batch; here position 0 is x*).
FROM_SCRATCH_OFFSET = 1


def default_preset(smoke: bool, cuda: bool | None = None) -> str:
    """The preset a notebook uses when its ``PRESET`` parameter is None: ``"smoke"`` when
    ``smoke`` is true (``UNROLL_SMOKE=1``, CI), else ``"small"`` where CUDA is available and
    ``"cpu"`` where it is not (``cuda=None`` asks ``torch.cuda.is_available()``)."""
    if smoke:
        return "smoke"
    if cuda is None:
        cuda = torch.cuda.is_available()
    return "small" if cuda else "cpu"


def at_preset(name: str, expected: str, sizes: dict, **values) -> bool:
    """Whether a notebook runs preset ``expected`` unchanged: ``name`` (the resolved ``PRESET``) is
    ``expected`` and every keyword value equals ``sizes[key]`` (the preset's value; a list compares
    element-wise). Notebooks assert their recorded ranges only then, so that a run with another
    size prints its numbers without failing on ranges measured for the preset.

    Raises:
        KeyError: a keyword that ``sizes`` does not have (a typo would otherwise disable the check).
    """
    missing = [k for k in values if k not in sizes]
    if missing:
        raise KeyError(f"the preset has no size {missing[0]!r} (sizes: {sorted(sizes)})")
    return name == expected and all(_same(values[k], sizes[k]) for k in values)


def check_ranges(values: dict, ranges: dict, *, width: int = 110) -> None:
    """Print each measured value beside its recorded range and fail if any falls outside.

    The notebooks' ``cpu`` preset records its outcome as ranges (derived from the 95% intervals over
    seeds, widened to hold across thread counts), asserted only when :func:`at_preset` is true, so
    that a change that moves a result fails loudly.

    Args:
        values: name → measured value (a float).
        ranges: name → (low, high), inclusive; every name of ``values`` must have one.

    Raises:
        KeyError: a value without a range. AssertionError: values outside their range, all named.
    """
    missing = [k for k in values if k not in ranges]
    if missing:
        raise KeyError(f"no recorded range for {missing[0]!r}")
    outside = []
    for name, v in values.items():
        low, high = ranges[name]
        ok = low <= v <= high
        print(f"{name} = {v:.4g} (recorded range [{low:g}, {high:g}]){'' if ok else ': OUTSIDE'}"[:width])
        if not ok:
            outside.append(f"{name} = {v:.4g} not in [{low:g}, {high:g}]")
    assert not outside, "; ".join(outside)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    return a == b


def preset(experiment: str, name: str) -> dict:
    """A copy of the sizes of ``experiment`` under preset ``name``.

    Raises:
        ValueError: unknown experiment or preset (named, with the allowed values).
    """
    if experiment not in PRESETS:
        raise ValueError(f"experiment must be one of {sorted(PRESETS)}; got {experiment!r}")
    if name not in PRESET_NAMES:
        raise ValueError(f"PRESET must be one of {PRESET_NAMES}; got {name!r}")
    return {k: (list(v) if isinstance(v, list) else v) for k, v in PRESETS[experiment][name].items()}


def estimate_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                     train_steps: int = 0, lockstep_steps: int = 0, hvps: int = 0,
                     hvp_points: int = 512, probe_steps: int = 3) -> dict:
    """A measured estimate of a run's wall time (printed before long runs).

    Times ``probe_steps`` SGD steps on a copy of ``model`` (after one warm-up step) and two
    Hessian-vector products on ``hvp_points`` points, then extrapolates: a lock-step step costs
    two plain steps (M and M′), distances and accuracies are ignored, and the caller guesses the
    HVP count: an order of magnitude, not a promise.

    Args:
        model: the network (not modified); x: (N, ...) inputs and y: (N,) labels on its device.
        batch_size: b of the steps timed. train_steps: plain steps planned (pretraining).
        lockstep_steps: lock-step steps planned. hvps: Hessian-vector products planned.
        hvp_points: points in each Hessian batch. probe_steps: steps timed, ≥ 1.

    Returns:
        dict: ``seconds_per_step``, ``seconds_per_hvp``, ``total_seconds``.
    """
    probe = copy.deepcopy(model)
    opt = make_optimizer(probe, 0.0)  # lr 0: the copy's weights stay w_0
    loss_fn = make_loss("ce")
    xb, yb = x[:batch_size], y[:batch_size]
    sgd_step(probe, opt, loss_fn, xb, yb)
    _sync(x)
    start = time.perf_counter()
    for _ in range(max(probe_steps, 1)):
        sgd_step(probe, opt, loss_fn, xb, yb)
    _sync(x)
    per_step = (time.perf_counter() - start) / max(probe_steps, 1)
    per_hvp = 0.0
    if hvps:
        op = hessian.HessianOperator(probe, loss_fn, x[:hvp_points], y[:hvp_points])
        v = torch.ones(op.numel, dtype=torch.float64, device=x.device)
        op.matvec(v)
        _sync(x)
        start = time.perf_counter()
        for _ in range(2):
            op.matvec(v)
        _sync(x)
        per_hvp = (time.perf_counter() - start) / 2
    total = per_step * (train_steps + 2 * lockstep_steps) + per_hvp * hvps
    return {"seconds_per_step": per_step, "seconds_per_hvp": per_hvp, "total_seconds": total}


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def run_correlations(table: pd.DataFrame, proxy: str = "unlearning_error", target: str = "ve") -> dict:
    """Pearson and Spearman correlation of a proxy (e) with VE over the rows of one run where
    both are finite (see :func:`unroll_utils.metrics.correlations`)."""
    c = correlations(table[proxy], table[target])
    return {"pearson": c["pearson"], "spearman": c["spearman"], "n_points": c["n"]}


#: The reference's fine-tuning transforms per dataset (``correlation_verification.py``,
#: ``checkpoint_version.py``): crop + flip for CIFAR-10, crop + flip + rotation in ±15° for CIFAR-100.
FINE_TUNING_AUGMENT = {"mnist": "none", "digits": "none", "cifar10": "crop_flip",
                       "cifar100": "crop_flip_rotate"}


def fine_tuning_augment(dataset: str) -> str:
    """The lock-step ``augment`` of the reference's fine-tuning on ``dataset`` (see
    :data:`FINE_TUNING_AUGMENT`). Raises ValueError naming ``DATASET`` for another dataset."""
    if dataset not in FINE_TUNING_AUGMENT:
        raise ValueError(f"DATASET must be one of {sorted(FINE_TUNING_AUGMENT)}; got {dataset!r}")
    return FINE_TUNING_AUGMENT[dataset]


def regime_map(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, forget: torch.Tensor,
               config: LockStepConfig, lrs: Sequence[float], steps: int, *,
               sigma_points: int = 512, propagated: PropagatedConfig | None = None,
               progress: bool = True) -> tuple[pd.DataFrame, float]:
    """Where single gradient unlearning helps: VE / ‖w_t − w′_t‖ against η·λ_max and t.

    A ratio below 1 means M″ is closer to the naively retrained M′ than M is (the undo helps); above
    1, the first-order correction overshoots and doing nothing would be better. λ_max is the top
    Hessian eigenvalue of the training loss at w_0 on the first ``sigma_points`` points (eval
    mode, as σ); η·λ_max is the step's curvature scale (gradient descent on a quadratic contracts
    the top direction by 1 − η·λ_max per step).

    Args:
        model: w_0. train_x, train_y, forget: as :func:`run_lockstep`.
        config: the lock-step configuration; ``lr`` is replaced by each of ``lrs``, σ is not
            measured, VE at every step.
        lrs: learning rates η > 0. steps: lock-step steps per η, ≥ 1.
        sigma_points: points of the Hessian batch for λ_max.
        propagated: also put the Hessian-propagated single gradient unlearning on the map
            (:class:`unroll_utils.propagated.PropagatedConfig`, the lock-step option, computed at
            t = 1, multiples of its ``every`` and the last step); None (default): SGU only.
        progress: progress bar over the learning rates.

    Returns:
        (table, λ_max): rows ``lr``, ``eta_lambda`` (η·λ_max), ``t``, ``ve``, ``dist_retrained``,
        ``ratio`` (VE / ‖w_t − w′_t‖); with ``propagated`` also ``ve_propagated``,
        ``propagated_hvps`` and ``ratio_propagated`` (ve_propagated / ‖w_t − w′_t‖, NaN at the
        steps where it was not computed). The SGU columns are the same with or without it.

    Raises:
        ValueError: a bad ``propagated`` (as ``LockStepConfig.validate``).
    """
    loss_fn = make_loss(config.loss, config.lam)
    top = hessian.top_hessian_eigenvalue(model, loss_fn, train_x[:sigma_points].to(_device(model)),
                                         train_y[:sigma_points].to(_device(model)), tol=1e-4,
                                         generator=torch.Generator().manual_seed(config.seed),
                                         micro_batch=config.sigma_micro_batch)
    frames = []
    for lr in tqdm(list(lrs), desc="regime map", disable=not progress, leave=False):
        cfg = replace(config, lr=float(lr), sigma_every=0, eval_every=1, accuracy_every=0,
                      propagated=propagated)
        res = run_lockstep(model, train_x, train_y, forget, cfg, stop_after=steps, progress=False)
        extra = ["ve_propagated", "propagated_hvps"] if propagated is not None else []
        tab = res.table[["t", "ve", "dist_retrained", *extra]].copy()
        tab.insert(0, "eta_lambda", float(lr) * top.eigenvalue)
        tab.insert(0, "lr", float(lr))
        tab["ratio"] = tab.ve / tab.dist_retrained
        if propagated is not None:
            tab["ratio_propagated"] = tab.ve_propagated / tab.dist_retrained
        frames.append(tab)
    return pd.concat(frames, ignore_index=True), top.eigenvalue


def first_crossing(table: pd.DataFrame, threshold: float = 1.0, column: str = "ratio") -> pd.DataFrame:
    """Per learning rate of a :func:`regime_map` table, the first step t at which ``column``
    (``"ratio"``, or ``"ratio_propagated"``) exceeds ``threshold`` (NaN if it never does within the
    run) and its value at the last step where it is defined (rows where it is NaN are skipped;
    ``ratio_last`` NaN and ``t_last`` −1 when it is defined nowhere)."""
    rows = []
    for lr, g in table.groupby("lr", sort=True):
        eta_lambda = float(g.eta_lambda.iloc[0])
        g = g[g[column].notna()]
        above = g[g[column] > threshold]
        rows.append({"lr": lr, "eta_lambda": eta_lambda,
                     "first_t_above": float(above.t.iloc[0]) if len(above) else math.nan,
                     "ratio_last": float(g[column].iloc[-1]) if len(g) else math.nan,
                     "t_last": int(g.t.iloc[-1]) if len(g) else -1})
    return pd.DataFrame(rows)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


SCHEDULES = ("epoch_positions", "global")


def epoch_positions(per_epoch: int, every: int, offset: int = 0) -> list[int]:
    """The in-epoch batch indices i (0-based) at which the reference measures: ``offset``,
    ``offset + every``, ... below ``per_epoch``.

    The reference scripts test ``i % eval_every == 0`` on the index i of ``enumerate(loader)``,
    which restarts at 0 every epoch (``Unlearning/Correlation_unlearning.py`` with
    ``eval_every=200``: i = 0, 200, 400, ... of every epoch; ``Unlearning/master_unlearning.py``
    with ``eval_every=400`` and 391 batches: i = 0 only). ``offset`` shifts the positions (Exp D
    here: 1, the first batch after x*, see :data:`PRESETS`).

    Args:
        per_epoch: batches per epoch, ≥ 1. every: ≥ 1. offset: in [0, per_epoch).

    Returns:
        The sorted positions, e.g. ``epoch_positions(450, 200) == [0, 200, 400]``.

    Raises:
        ValueError: a value out of range (named).
    """
    if per_epoch < 1:
        raise ValueError(f"per_epoch must be >= 1; got {per_epoch}")
    if every < 1:
        raise ValueError(f"eval_every must be >= 1; got {every}")
    if not 0 <= offset < per_epoch:
        raise ValueError(f"offset must be in [0, {per_epoch - 1}] (batches per epoch - 1); got {offset}")
    return list(range(offset, per_epoch, every))


def scheduled_steps(per_epoch: int, epochs: int, positions: Sequence[int]) -> list[int]:
    """The global step counts t (SGD steps of M done, 1-based as the table's ``t``) of in-epoch
    positions: the batch at position i of epoch k is step t = k·per_epoch + i + 1. The
    reference's e uses t − 1 = k·len(loader) + i second-order terms, as the table's e does.

    Example: 2 epochs of 450 steps, positions [0, 200, 400] → t = 1, 201, 401, 451, 651, 851.

    Raises:
        ValueError: ``epochs`` < 1 or a position outside [0, per_epoch).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if any(not 0 <= p < per_epoch for p in positions):
        raise ValueError(f"positions must lie in [0, {per_epoch - 1}]; got {list(positions)}")
    return [k * per_epoch + p + 1 for k in range(epochs) for p in sorted(set(positions))]


def run_scheduled(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, forget: torch.Tensor,
                  config: LockStepConfig, steps: Sequence[int], *, extra_steps: Sequence[int] = (),
                  test_x: torch.Tensor | None = None,
                  test_y: torch.Tensor | None = None, accuracy: bool = True,
                  on_measure=None, checkpoint_path: str | Path | None = None,
                  checkpoint_every: int = 100, progress: bool = True) -> LockStepResult:
    """A lock-step run (:class:`unroll_utils.lockstep.LockStep`) measured at the given steps
    and at the last step, instead of every ``eval_every`` global steps.

    This is the reference's schedule when ``steps`` comes from :func:`scheduled_steps`: VE,
    ‖w_t − w_0‖, σ (on ``config.sigma_batch``: ``"current"`` is the batch of step t, as the
    reference's ``hessian(M, loss, data=(inputs, targets))``), e and rolling e (the running mean
    over the σ of these measurements) at each of them. The last step is measured as well (its
    row has ``scheduled`` False when it is not in ``steps``), so that the final weights and
    accuracies are reported; the reference does not measure it.

    Args:
        model, train_x, train_y, forget, test_x, test_y: as :func:`run_lockstep`.
        config: the lock-step configuration; its ``eval_every``, ``sigma_every`` and
            ``accuracy_every`` are replaced (σ at every measurement; accuracies at every
            measurement when ``accuracy``, else at the last step).
        steps: global steps t (1-based) at which to measure, in [1, total steps].
        extra_steps: steps also measured but not part of the schedule (``scheduled`` False),
            e.g. t = 1, where single gradient unlearning is exact.
        accuracy: test/forget accuracies at every measurement (True) or at the last step only.
        on_measure: optional ``f(lockstep, row) -> dict`` called after each measurement; the
            fields it returns are added to the row (and so saved in the checkpoint: e.g.
            σ on another batch).
        checkpoint_path, checkpoint_every, progress: as :func:`run_lockstep` (a killed run
            resumes bit-identically from the checkpoint).

    Returns:
        :class:`LockStepResult`; its table has :func:`run_lockstep`'s columns plus
        ``in_epoch`` (the 0-based in-epoch position of step t's batch) and ``scheduled``.

    Raises:
        ValueError: a step outside [1, total steps], or as :func:`run_lockstep`.
    """
    cfg = replace(config, eval_every=1, sigma_every=1 if config.sigma_every else 0,
                  accuracy_every=1 if accuracy else 0)
    run = LockStep(model, train_x, train_y, forget, cfg, test_x=test_x, test_y=test_y)
    wanted_set = set(int(t) for t in steps)
    measured = wanted_set | set(int(t) for t in extra_steps)
    if measured and not (1 <= min(measured) and max(measured) <= run.total_steps):
        raise ValueError(f"steps must lie in [1, {run.total_steps}] (the run's steps); got "
                         f"{min(measured)}..{max(measured)}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        run.load_state_dict(results.load_checkpoint(checkpoint_path, map_location=run.device))
    with tqdm(total=run.total_steps, initial=run.t, desc="lock-step", disable=not progress,
              mininterval=1.0, leave=False) as bar:
        while not run.done:
            run.step()
            if run.t in measured or run.done:
                row = run.measure()
                row["in_epoch"] = (run.t - 1) % run.per_epoch
                row["scheduled"] = run.t in wanted_set
                if on_measure is not None:
                    row.update(on_measure(run, row))
            if checkpoint_path is not None and run.t % checkpoint_every == 0:
                results.save_checkpoint(run.state_dict(), checkpoint_path)
            bar.update(1)
    if checkpoint_path is not None:
        results.save_checkpoint(run.state_dict(), checkpoint_path)
    return run.result()
