"""Verification error, unlearning error and the other measurements of the paper (§1.2, §1.4).

Weights are handled as lists of tensors in ``model.parameters()`` order (BatchNorm running buffers
excluded, as in the reference code, unless asked for). Distances are computed on the weights'
device and accumulated in float64, so no flat copy of the model is ever built on the host (the
reference code flattened 11–20M weights through Python lists, §5 item 11): fused ``torch._foreach``
ops, except for CPU tensors larger than 2^16 elements, which go block by block through one
cache-resident scratch buffer, so a distance over ResNet-18's 11M weights allocates no model-sized
temporary.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from .hessian import preserved_modes

Weights = Sequence[torch.Tensor]


def model_weights(model: nn.Module, include_buffers: bool = False) -> list[torch.Tensor]:
    """The model's tensors that enter the distances, as live references (no copy).

    Args:
        model: the network.
        include_buffers: also include floating-point buffers (BatchNorm running mean/var);
            integer buffers such as ``num_batches_tracked`` are never included.

    Returns:
        List of tensors: ``model.parameters()`` order, then buffers.
    """
    ws = [p for p in model.parameters()]
    if include_buffers:
        ws += [b for b in model.buffers() if b.is_floating_point()]
    return ws


def snapshot(weights: Weights) -> list[torch.Tensor]:
    """Detached copies of a list of weight tensors (e.g. w_0), on the same device."""
    return [w.detach().clone() for w in weights]


def _as_list(x) -> list[torch.Tensor]:
    if isinstance(x, nn.Module):
        return model_weights(x)
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x)


def weight_distance(a, b, offset=None) -> float:
    """‖a − b (+ offset)‖₂ over all tensors, accumulated in float64.

    Args:
        a, b: models, single (P,) tensors, or lists of tensors with matching shapes.
        offset: optional list of tensors added to the difference (e.g. the single gradient
            unlearning correction, so that ‖(w_t + u) − w′_t‖ needs no copy of w″).

    Returns:
        The L2 distance in weight units (not normalised by the parameter count).

    Raises:
        ValueError: if the two sides do not have the same number and shapes of tensors.
    """
    la, lb = _as_list(a), _as_list(b)
    if len(la) != len(lb) or any(x.shape != y.shape for x, y in zip(la, lb)):
        raise ValueError("a and b must hold the same number of tensors with the same shapes")
    lo = None
    if offset is not None:
        lo = _as_list(offset)
        if len(lo) != len(la) or any(x.shape != y.shape for x, y in zip(la, lo)):
            raise ValueError("offset must match a and b in number and shapes of tensors")
    with torch.no_grad():
        # large CPU tensors go block by block; the rest (all tensors on accelerators) through
        # fused foreach ops, which are cheaper for many small tensors
        big = [i for i, x in enumerate(la) if x.numel() > _BLOCK]
        if big and not _cpu_blockwise(la, lb, lo, big):
            big = []
        small = [i for i in range(len(la)) if i not in set(big)] if big else range(len(la))
        norms: list[torch.Tensor] = []
        if small:
            diff = torch._foreach_sub([la[i].detach() for i in small], [lb[i].detach() for i in small])
            if lo is not None:
                torch._foreach_add_(diff, [lo[i].detach() for i in small])
            norms += list(torch._foreach_norm(diff, 2, dtype=torch.float64))
        if big:
            norms += _blockwise_norms([la[i] for i in big], [lb[i] for i in big],
                                      [lo[i] for i in big] if lo is not None else None)
        return float(torch.stack(norms).square().sum().sqrt())


_BLOCK = 1 << 16  # elements per CPU block (256 KiB in float32): the difference stays in cache


def _cpu_blockwise(la, lb, lo, idx) -> bool:
    """Tensors ``idx`` are CPU floats with matching dtypes: the blockwise path applies to them."""
    groups = ((la[i], lb[i]) + ((lo[i],) if lo is not None else ()) for i in idx)
    return all(t.device.type == "cpu" and t.is_floating_point() and t.dtype == g[0].dtype
               for g in groups for t in g)


def _blockwise_norms(la, lb, lo) -> list[torch.Tensor]:
    """Per-block float64 norms of (a − b + offset), computed through one reused scratch buffer.

    The foreach path materialises the whole difference (45 MB for ResNet-18, fresh pages at every
    call); here each block of ``_BLOCK`` elements is differenced into a cache-sized buffer and
    reduced at once. Same float64 accumulation, same result up to the summation order.
    """
    norms: list[torch.Tensor] = []
    scratch: dict[torch.dtype, torch.Tensor] = {}
    for i, (x, y) in enumerate(zip(la, lb)):
        x, y = x.detach().reshape(-1), y.detach().reshape(-1)
        o = lo[i].detach().reshape(-1) if lo is not None else None
        buf = scratch.get(x.dtype)
        if buf is None:
            buf = scratch[x.dtype] = torch.empty(_BLOCK, dtype=x.dtype)
        n = x.numel()
        for s in range(0, max(n, 1), _BLOCK):  # an empty tensor contributes one zero norm
            e = min(s + _BLOCK, n)
            d = buf[: e - s]
            torch.sub(x[s:e], y[s:e], out=d)
            if o is not None:
                d.add_(o[s:e])
            norms.append(torch.linalg.vector_norm(d, 2, dtype=torch.float64))
    return norms


def verification_error(w_unlearned, w_retrained) -> float:
    """Verification error VE = ‖w″ − w′‖₂ (paper §1.2).

    Args:
        w_unlearned: the approximately unlearned model M″ (or its weights).
        w_retrained: the naively retrained model M′ (or its weights).

    Returns:
        VE in weight units, float64 accumulation.

    Raises:
        ValueError: mismatched shapes.
    """
    return weight_distance(w_unlearned, w_retrained)


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value


def unlearning_error(lr: float, t: float, delta_w: float, sigma: float) -> float:
    """The unlearning error e = (η²/2)·t·‖w_t − w_0‖₂·σ (paper §1.4).

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
    """
    lr = float(lr)
    if not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0; got {lr}")
    t = _check_nonneg("t", t)
    delta_w = _check_nonneg("delta_w", delta_w)
    sigma = _check_nonneg("sigma", sigma)
    return 0.5 * lr * lr * t * delta_w * sigma


def rolling_mean(values: Sequence[float]) -> np.ndarray:
    """Running mean of σ over every measurement so far (the 'rolling' unlearning error's σ̄_t)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    return np.cumsum(v) / np.arange(1, v.size + 1)


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of two series (e.g. unlearning error vs VE over steps).

    Returns:
        dict with ``pearson_r``, ``pearson_p``, ``spearman_rho``, ``spearman_p``, ``n``
        (NaN correlations when fewer than 3 points or a constant series).

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
        return {"pearson_r": nan, "pearson_p": nan, "spearman_rho": nan, "spearman_p": nan,
                "n": int(xa.size)}
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    return {"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman_rho": float(sr.statistic), "spearman_p": float(sr.pvalue), "n": int(xa.size)}


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` in eval mode (its mode flags are restored).

    Args:
        inputs: (N, ...) on the model's device; targets: (N,) int64.

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
