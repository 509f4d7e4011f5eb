"""The paper's measurements: verification error, unlearning error, its rolling variant, correlations
and accuracy (Thudi et al., arXiv 2109.13398; notebook 01 eq. (2), notebook 04 eq. (1)).

VE and the other weight distances are computed by :mod:`unroll_utils.distances` (weights paired by
parameter name, float64 accumulation, no model-sized temporary); seed intervals are in
:mod:`unroll_utils.statistics`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from .distances import labelled_distance
from .hessian import preserved_modes


def verification_error(w_unlearned, w_retrained) -> float:
    """Verification error VE = ‖w″ − w′‖₂ over all ``model.parameters()`` (BN running buffers excluded).

    Two models are compared parameter by parameter *name* (``module.`` and ``_orig_mod.``
    prefixes stripped), so M″ wrapped in ``nn.DataParallel`` or ``torch.compile`` against a plain
    M′ gives the true VE; lists of tensors are compared by position.

    Args:
        w_unlearned: the approximately unlearned model M″ (or its weights: a name → tensor mapping
            or a list in ``parameters()`` order).
        w_retrained: the naively retrained model M′ (or its weights, likewise).

    Returns:
        VE in weight units, float64 accumulation.

    Raises:
        ValueError: models with different parameter names (the message names the first one) or
            shapes; lists with mismatched numbers or shapes of tensors.

    Source: notebook 01, eq. (2); reference ``Unlearning/correlation_verification.py``
    (``weights_to_list_fast`` and ``np.linalg.norm`` of the difference).
    """
    return labelled_distance({"w_unlearned": w_unlearned, "w_retrained": w_retrained})


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value


def unlearning_error(lr: float, t: float, delta_w: float, sigma: float) -> float:
    """The unlearning error e = (η²/2)·t·‖w_t − w_0‖₂·σ.

    Args:
        lr: η > 0, the SGD learning rate.
        t: the number of second-order terms, i.e. SGD steps since w_0 minus one (the reference
            code's 0-based step index, so e = 0 right after the first step).
        delta_w: ‖w_t − w_0‖₂ over the same tensors as VE.
        sigma: σ (see :func:`unroll_utils.hessian.sigma_from_eigenvalue`), or the running mean of
            σ for the rolling variant.

    Returns:
        e (units of η²·weights·σ; compare with VE by correlation, not by value).

    Raises:
        ValueError: if lr ≤ 0 or any argument is negative or not finite.

    Source: notebook 02 eq. (9) and notebook 04 eq. (1); reference
    ``Unlearning/correlation_verification.py`` (``unl_error``, with t = ``len(data_loader)*ep + main_idx``).
    """
    lr = float(lr)
    if not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0; got {lr}")
    t = _check_nonneg("t", t)
    delta_w = _check_nonneg("delta_w", delta_w)
    sigma = _check_nonneg("sigma", sigma)
    return 0.5 * lr * lr * t * delta_w * sigma


def rolling_mean(values: Sequence[float]) -> np.ndarray:
    """Running mean of σ over every measurement so far: σ̄_k = (1/k)·Σ_{j≤k} σ_j, the σ of the
    rolling unlearning error (notebook 04, eq. (1)).

    Args:
        values: σ_1, ..., σ_n in measurement order.

    Returns:
        (n,) float64 array of σ̄_1, ..., σ̄_n (empty for no values; a NaN stays in every later mean).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    return np.cumsum(v) / np.arange(1, v.size + 1)


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of two series (e.g. unlearning error vs VE over steps).

    Pairs where either value is not finite are dropped first (``scipy.stats.pearsonr`` /
    ``spearmanr``).

    Args:
        x, y: equal-length series.

    Returns:
        dict with ``pearson`` (Pearson's r), ``pearson_p``, ``spearman`` (Spearman's ρ),
        ``spearman_p``, ``n`` (NaN correlations when fewer than 3 points or a constant series);
        the same names as the columns of :func:`unroll_utils.protocols.run_correlations`.

    Raises:
        ValueError: if the lengths differ.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    nan = float("nan")
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"pearson": nan, "pearson_p": nan, "spearman": nan, "spearman_p": nan,
                "n": int(xa.size)}
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    return {"pearson": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue), "n": int(xa.size)}


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` in eval mode (its mode flags are restored).

    Args:
        model: the classifier; its outputs are (N, C) logits.
        inputs: (N, ...) on the model's device.
        targets: (N,) int64 class indices.
        batch_size: forward passes of at most this many inputs.

    Returns:
        The fraction of inputs whose argmax logit is the target.

    Raises:
        ValueError: empty inputs or mismatched lengths.
    """
    if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError("inputs and targets must be non-empty with the same length")
    with preserved_modes(model, training=False):
        correct = 0
        for i in range(0, inputs.shape[0], batch_size):
            out = model(inputs[i:i + batch_size])
            correct += int((out.argmax(1) == targets[i:i + batch_size]).sum())
    return correct / inputs.shape[0]
