"""The paper's CIFAR experiments as protocols: presets, Exp B's checkpointed error, the regime map,
per-run correlations with bootstrap intervals over seeds, and a run-time estimate (paper §2.1–§2.5).

Notebooks 06–09 are thin layers over this module, :mod:`unroll_utils.pretraining` and
:func:`unroll_utils.trajectory.run_lockstep`:

* :data:`PRESETS`: per experiment, the sizes of the ``smoke`` (CPU, CI: the embedded MNIST subset
  and ``small_cnn``), ``small`` (CIFAR-10 ResNet-18 on one GPU in minutes) and ``paper`` (the
  reference grids of §2.2–§2.5) presets.
* :class:`CheckpointedRun`: Exp B (§2.3, ``checkpoint_version.py``): single gradient unlearning
  at the last checkpoint and the checkpointed unlearning error.
* :func:`regime_map`: where single gradient unlearning (and, optionally, its Hessian-propagated
  variant) helps at all: VE / ‖w_t − w′_t‖ against η·λ_max and t.
* :func:`run_correlations`, :func:`seed_intervals`: Pearson and Spearman of e with VE per run,
  and bootstrap 95% intervals over seeds.
* :func:`estimate_seconds`: a measured estimate of a run's wall time, printed before long runs.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import hessian, results
from .losses import make_loss
from .distances import snapshot, weight_distance
from .metrics import correlations
from .propagated import PropagatedConfig
from .statistics import bootstrap_ci
from .training import make_optimizer, sgd_step
from .trajectory import LockStepConfig, run_lockstep

PRESET_NAMES = ("smoke", "small", "paper")

_SMOKE_DATA = {"dataset": "mnist", "model": "small_cnn", "width": 8, "n_train": 1000, "n_test": 500,
               "sigma_tol": 1e-2}
_SMALL_DATA = {"dataset": "cifar10", "model": "resnet18", "width": 16, "n_train": 10000, "n_test": 2000,
               "sigma_tol": 1e-3}
_PAPER_DATA = {"dataset": "cifar10", "model": "resnet18", "width": 16, "n_train": None, "n_test": None,
               "sigma_tol": 1e-3}

#: Sizes per experiment and preset; notebook parameters left at None take these values.
PRESETS: dict[str, dict[str, dict]] = {
    # §2.1: the reference recipe (lr 0.1, no momentum, wd 5e-4, cosine T_max=200, crop+flip, b=128)
    "pretraining": {
        "smoke": {**_SMOKE_DATA, "n_train": 2000, "epochs": 2, "determinism_steps": 10},
        "small": {**_SMALL_DATA, "n_train": None, "n_test": None, "epochs": 5, "determinism_steps": 20},
        "paper": {**_PAPER_DATA, "epochs": 50, "determinism_steps": 20},
    },
    # §2.2/§2.3: x* = batch 114 first, 1 epoch at b=32, σ on the first 512 points, undo at w_0
    "fine_tuning": {
        "smoke": {**_SMOKE_DATA, "forget_batch": 20, "pretrain_epochs": 2, "lr": 0.01, "eval_every": 4,
                  "sigma_every": 32, "sigma_points": 32, "n_seeds": 2,
                  "regime_lrs": [0.003, 0.01, 0.03, 0.1], "regime_steps": 30},
        "small": {**_SMALL_DATA, "forget_batch": 114, "pretrain_epochs": 5, "lr": 0.1, "eval_every": 1,
                  "sigma_every": 50,
                  "sigma_points": 512, "n_seeds": 2, "regime_lrs": [0.001, 0.01, 0.03, 0.1],
                  "regime_steps": 50},
        "paper": {**_PAPER_DATA, "forget_batch": 114, "pretrain_epochs": 50, "lr": 0.1, "eval_every": 1,
                  "sigma_every": 1,
                  "sigma_points": 512, "n_seeds": 3, "regime_lrs": [0.001, 0.003, 0.01, 0.03, 0.1],
                  "regime_steps": 200},
    },
    # §2.4: SD(λ) pretraining at lr 0.01 (no momentum, no wd, no augmentation), 5 epochs of
    # fine-tuning at b=32, undo at the current weights, σ on the current batch every 200 steps
    "sd_loss_sweep": {
        "smoke": {**_SMOKE_DATA, "pretrain_epochs": 2, "pretrain_lr": 0.1, "epochs": 1, "eval_every": 8,
                  "lams": [0.0, 20.0], "n_seeds": 2},
        "small": {**_SMALL_DATA, "pretrain_epochs": 5, "pretrain_lr": 0.01, "epochs": 2,
                  "eval_every": 100, "lams": [0.0, 1.0, 10.0, 100.0], "n_seeds": 2},
        "paper": {**_PAPER_DATA, "pretrain_epochs": 20, "pretrain_lr": 0.01, "epochs": 5,
                  "eval_every": 200, "n_seeds": 2,
                  "lams": [0.0, 0.1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 50.0, 100.0, 150.0, 200.0, 250.0]},
    },
    # §2.5: from the random initialisation, lr 0.1, b=128, SD(λ), no augmentation, σ once per epoch
    "from_scratch": {
        "smoke": {**_SMOKE_DATA, "n_train": 768, "epochs": 2, "lams": [0.0, 5.0], "n_seeds": 2},
        "small": {**_SMALL_DATA, "epochs": 5, "lams": [0.0, 5.0], "n_seeds": 2},
        "paper": {**_PAPER_DATA, "epochs": 50, "lams": [0.0, 5.0], "n_seeds": 2},
    },
}


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


def seed_intervals(runs: pd.DataFrame, by: Sequence[str], columns: Sequence[str], *,
                   seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap 95% interval over seeds of each column, per group.

    Args:
        runs: one row per run (e.g. per seed), with the group columns ``by`` and ``columns``.
        by: grouping columns (e.g. ``["optimizer"]`` or ``["lam"]``); may be empty.
        columns: the values to summarise (e.g. ``["pearson", "spearman", "ve"]``).
        seed: seed of the bootstrap resampling.

    Returns:
        One row per group: the group keys, ``n_seeds`` and for each column ``<col>``,
        ``<col>_low``, ``<col>_high`` (see :func:`unroll_utils.statistics.bootstrap_ci`).
    """
    groups = runs.groupby(list(by), sort=True) if by else [((), runs)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n_seeds"] = len(group)
        for col in columns:
            row[col], row[f"{col}_low"], row[f"{col}_high"] = bootstrap_ci(group[col].to_numpy(), seed=seed)
        rows.append(row)
    return pd.DataFrame(rows)


class CheckpointedRun:
    """Exp B (paper §2.3, ``checkpoint_version.py``): M, M′ in lock-step, single gradient
    unlearning at the last checkpoint, and the checkpointed unlearning error.

    With checkpoint frequency c and the reference's 0-based step index i = t − 1, the reference
    takes the undo gradient at w_ckpt = w_{kc} for k = ⌊i/c⌋ and logs

        e_i = E_k + η²·(i mod c)·‖w_t − w_{kc}‖·mean(σ over the last i mod c steps),

    **without** the ½ of the non-checkpointed error, where E_k (the value at i = kc − 1) is carried
    over at each checkpoint. At the checkpoint steps t = kc + 1 the error is exactly

        E_k = E_{k−1} + η²·(c − 1)·‖w_{kc} − w_{(k−1)c}‖·σ̄_k,   E_0 = 0,

    with σ̄_k the mean of the σ measured at t ∈ [(k−1)c + 2, kc] (the latest σ if none was).
    Those are the steps this class reports it at (column ``checkpointed_error``; NaN elsewhere),
    next to the VE of the same step; the run goes slice by slice (``run_lockstep`` with
    ``stop_after=c``) to read w_{kc}. The reference also resets its checkpoint to w_0 at each epoch
    start (§5 item 8); here checkpoints continue across epochs (identical for one epoch).

    Args:
        model: w_0. train_x (N, ...), train_y (N,), forget: as :func:`run_lockstep`.
        config: a :class:`LockStepConfig` with ``undo_at="checkpoint"`` (``eval_every`` is set
            to 1 so that every t = kc + 1 is measured).
        path: the lock-step checkpoint file; ``<path>.segments.pt`` holds the segment distances,
            so a killed run resumes.
        test_x, test_y: optional test set (accuracies at the last step).
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: LockStepConfig, path: str | Path,
                 test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None):
        if config.undo_at != "checkpoint":
            raise ValueError(f"undo_at must be 'checkpoint' for Exp B; got {config.undo_at!r}")
        self.model, self.x, self.y, self.forget = model, train_x, train_y, forget
        self.config = replace(config, eval_every=1).validate()
        self.path = Path(path)
        self.segments_path = self.path.with_name(self.path.name + ".segments.pt")
        self.test = {"test_x": test_x, "test_y": test_y}
        self.segment_distances: list[float] = []
        self.previous = snapshot(model.parameters())  # w_{kc} of the latest checkpoint
        if self.segments_path.exists():
            state = results.load_checkpoint(self.segments_path)
            self.segment_distances, self.previous = state["distances"], state["previous"]

    def run(self, progress: bool = True):
        """Run (or resume) to the end; returns the :class:`LockStepResult` with the
        ``checkpointed_error`` column added to its table."""
        c = self.config.checkpoint_freq
        res = None
        with tqdm(desc="Exp B lock-step", disable=not progress, mininterval=1.0, leave=False) as bar:
            while res is None or not res.complete:
                res = run_lockstep(self.model, self.x, self.y, self.forget, self.config,
                                   checkpoint_path=self.path, checkpoint_every=10**9, stop_after=c,
                                   progress=False, **self.test)
                bar.total = res.total_steps
                bar.n = res.steps_done
                bar.refresh()
                if res.steps_done % c == 0 and res.steps_done // c == len(self.segment_distances) + 1:
                    now = list(res.model.parameters())
                    self.segment_distances.append(weight_distance(now, self.previous))
                    self.previous = snapshot(now)
                    results.save_checkpoint({"distances": self.segment_distances,
                                             "previous": self.previous}, self.segments_path)
                elif res.steps_done // c != len(self.segment_distances):
                    raise ValueError(f"{self.segments_path} does not match {self.path}; delete both "
                                     "to start Exp B afresh")
        res.table["checkpointed_error"] = checkpointed_errors(res.table, self.segment_distances,
                                                              self.config.lr, c)
        return res


def checkpointed_errors(table: pd.DataFrame, segment_distances: Sequence[float], lr: float,
                        c: int) -> np.ndarray:
    """The checkpointed unlearning error E_k at the rows t = kc + 1 (NaN elsewhere); see
    :class:`CheckpointedRun` for the formula. ``segment_distances[k−1]`` = ‖w_{kc} − w_{(k−1)c}‖."""
    t = table["t"].to_numpy()
    measured = table["eig_hvps"].to_numpy() > 0
    sigma = table["sigma"].to_numpy()
    out = np.full(len(table), np.nan)
    e = 0.0
    for k in range(len(segment_distances) + 1):
        if k >= 1:
            window = measured & (t >= (k - 1) * c + 2) & (t <= k * c)
            if window.any():
                s = float(np.mean(sigma[window]))
            else:
                earlier = np.isfinite(sigma) & (t <= k * c)
                s = float(sigma[earlier][-1]) if earlier.any() else math.nan
            e += lr * lr * (c - 1) * segment_distances[k - 1] * s
        out[t == k * c + 1] = e
    return out


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
                                         generator=torch.Generator().manual_seed(config.seed))
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
