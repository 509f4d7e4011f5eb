"""The fine-tuning runs of Exp A and Exp B (the reference's `Unlearning/correlation_verification.py` and
`Unlearning/checkpoint_version.py`; notebook 07): one cached, resumable run
per configuration (:func:`fine_tuning_run`), and Exp B's single gradient unlearning at the last
checkpoint with the checkpointed unlearning error at every step (:class:`CheckpointedRun`,
:func:`checkpointed_errors`; reference ``Unlearning/checkpoint_version.py``). The presets and the
other protocols are in :mod:`unroll_utils.protocols`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import results
from .trajectory import LockStepConfig, run_lockstep

__all__ = ["EXP_B_ROWS", "CheckpointedRun", "checkpointed_errors", "fine_tuning_run"]

#: how notebook 07 shows Exp B: a row at every step, or only the rows where the reference reported it
EXP_B_ROWS = ("every_step", "checkpoint_rows")


class CheckpointedRun:
    """Exp B (``Unlearning/checkpoint_version.py``): M, M′ in lock-step, single gradient
    unlearning at the last checkpoint, and the checkpointed unlearning error at every step.

    With checkpoint frequency c, the checkpoint moves before step t + 1 whenever t is a positive
    multiple of c (see :class:`unroll_utils.unlearning.UndoAccumulator`), so after step t the
    undo gradient is taken at w_ckpt = w_{c·⌊(t−1)/c⌋}, and the reference's error, logged at
    every step (:func:`checkpointed_errors`), is

        e_t = e_ckpt + η²·t_loc·‖w_t − w_ckpt‖·mean(σ over the last t_loc steps),
        t_loc = (t − 1) mod c,

    **without** the ½ of the non-checkpointed error; e_1 = 0, and at t_loc = 0 (t = kc + 1, the
    step after a checkpoint) e_t = e_{t−1}, which becomes the new e_ckpt. The reference also
    resets its checkpoint and e_ckpt to w_0 and 0 at each epoch start; here they continue
    across epochs (identical for the one epoch of the reference grid).

    Args:
        model: w_0. train_x (N, ...), train_y (N,), forget: as :func:`run_lockstep`.
        config: a :class:`LockStepConfig` with ``undo_at="checkpoint"`` (``eval_every`` is set
            to 1: the error needs every step).
        path: the lock-step checkpoint file, so a killed run resumes.
        test_x, test_y: optional test set (accuracies at the last step).

    Raises:
        ValueError: ``config.undo_at`` is not ``"checkpoint"`` (and as :func:`run_lockstep`).
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                 forget: torch.Tensor, config: LockStepConfig, path: str | Path,
                 test_x: torch.Tensor | None = None, test_y: torch.Tensor | None = None):
        if config.undo_at != "checkpoint":
            raise ValueError(f"undo_at must be 'checkpoint' for Exp B; got {config.undo_at!r}")
        self.model, self.x, self.y, self.forget = model, train_x, train_y, forget
        self.config = replace(config, eval_every=1).validate()
        self.path = Path(path)
        self.test = {"test_x": test_x, "test_y": test_y}

    def run(self, progress: bool = True):
        """Run (or resume) to the end; returns the :class:`LockStepResult` with the columns
        ``checkpointed_error`` (e_t above, every row) and ``checkpoint_row`` (True at
        t = kc + 1, k ≥ 0: the rows at which the error was reported before it was logged at
        every step; see :func:`checkpointed_errors`)."""
        c = self.config.checkpoint_freq
        res = run_lockstep(self.model, self.x, self.y, self.forget, self.config,
                           checkpoint_path=self.path, checkpoint_every=500, progress=progress,
                           **self.test)
        res.table["checkpointed_error"] = checkpointed_errors(res.table, self.config.lr, c)
        res.table["checkpoint_row"] = (res.table["t"].to_numpy() - 1) % c == 0
        return res


def checkpointed_errors(table: pd.DataFrame, lr: float, c: int) -> np.ndarray:
    """Exp B's checkpointed unlearning error at every step (``checkpoint_version.py``).

    With t_loc = (t − 1) mod c and e_ckpt the error at the last step before the current
    checkpoint (0 while the checkpoint is w_0):

        e_1 = 0;  e_t = e_{t−1} (and e_ckpt ← e_{t−1}) when t_loc = 0;
        e_t = e_ckpt + η²·t_loc·‖w_t − w_ckpt‖·mean(σ at steps t − t_loc + 1, …, t) otherwise,

    no ½. The σ mean is over the steps of that window where σ was measured (the reference
    measures it at every step); with none, the latest σ (NaN before the first measurement).

    Args:
        table: a lock-step table with a row at every step t = 1, 2, … (``eval_every=1``) and
            the columns ``t``, ``dist_ckpt`` (‖w_t − w_ckpt‖), ``sigma``, ``eig_hvps``.
        lr: η > 0. c: the checkpoint frequency, ≥ 1.

    Returns:
        (rows,) float64: e_t per row of ``table``.

    Raises:
        ValueError: rows missing (t is not 1, 2, …, len(table)) or c < 1.
    """
    if c < 1:
        raise ValueError(f"checkpoint_freq must be >= 1; got {c}")
    t = table["t"].to_numpy()
    if not np.array_equal(t, np.arange(1, len(t) + 1)):
        raise ValueError("the checkpointed error needs a row at every step t = 1, 2, ... (eval_every=1)")
    dist = table["dist_ckpt"].to_numpy(dtype=float)
    sigma = table["sigma"].to_numpy(dtype=float)
    measured = table["eig_hvps"].to_numpy() > 0
    out = np.zeros(len(t))
    e_ckpt = 0.0
    for i, ti in enumerate(t):
        loc = (ti - 1) % c
        if ti == 1:
            continue
        if loc == 0:  # the checkpoint moved to w_{t−1} before this step
            e_ckpt = out[i] = out[i - 1]
            continue
        window = measured[i - loc + 1: i + 1]
        s = float(np.mean(sigma[i - loc + 1: i + 1][window])) if window.any() else float(sigma[i])
        out[i] = e_ckpt + lr * lr * loc * dist[i] * s
    return out


def fine_tuning_run(experiment: str, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                    forget: torch.Tensor, config: LockStepConfig, *, cache_dir: str | Path,
                    key_extra: dict, test_x: torch.Tensor | None = None,
                    test_y: torch.Tensor | None = None, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """One Exp A or Exp B run of notebook 07, cached by its full configuration.

    Exp A is :func:`run_lockstep` with VE at every ``config.eval_every`` steps; Exp B is
    :class:`CheckpointedRun` (``config.undo_at`` must be ``"checkpoint"``). The cache key is
    ``nb07-<experiment>-<hash>`` of ``config``, ``key_extra`` (e.g. the w_0 cache key, the forget
    batch, the environment) and the checkpoint rule; a ``<key>.ckpt.pt`` lock-step checkpoint
    next to it lets a killed run resume.

    Args:
        experiment: ``"A"`` or ``"B"``. model: w_0. train_x (N, ...), train_y (N,), forget,
            config, test_x, test_y: as :func:`run_lockstep`.
        cache_dir: folder of the cache files. key_extra: JSON-able values that also change the
            result. progress: progress bar while computing.

    Returns:
        (table, info): the run's table and ``{"cached": bool, "seconds": float, "steps": int}``
        (wall time and steps of the computation; 0 and 0 when it came from the cache).

    Raises:
        ValueError: ``experiment`` not ``"A"``/``"B"`` (and as the run itself).
    """
    if experiment not in ("A", "B"):
        raise ValueError(f"experiment must be 'A' or 'B'; got {experiment!r}")
    key = f"nb07-{experiment}-" + results.fingerprint(
        {"cfg": config.__dict__, "rule": "checkpoint_before_step", **key_extra})
    info = {"cached": True, "seconds": 0.0, "steps": 0}

    def compute():
        path = Path(cache_dir) / f"{key}.ckpt.pt"
        start = time.time()
        if experiment == "A":
            res = run_lockstep(model, train_x, train_y, forget, config, test_x=test_x, test_y=test_y,
                               checkpoint_path=path, checkpoint_every=500, progress=progress)
        else:
            res = CheckpointedRun(model, train_x, train_y, forget, config, path, test_x=test_x,
                                  test_y=test_y).run(progress=progress)
        info.update(cached=False, seconds=time.time() - start, steps=res.steps_done)
        return res.table

    return results.load_or_run(key, compute, cache_dir), info
