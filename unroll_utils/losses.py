"""Training objectives: cross-entropy and the SD loss (notebook 05, eqs. (1)–(3)).

The SD (standard-deviation) loss is the paper's regulariser that limits how far SGD moves the
weights, making later unlearning easier:

    L_SD = (1/N) Σ_n CE(z_n, y_n) + λ · (1/(N·C)) Σ_n std_unbiased(z_n)

with z the raw logits (N, C), the std over the class dimension with the (C−1) denominator.
λ is always passed explicitly (the reference code used a module-level global).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logit_std_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-example unbiased std of the logits, divided by the number of classes.

    Args:
        logits: (N, C) raw logits, C ≥ 2.

    Returns:
        Scalar tensor ``sum_n std(z_n) / (N·C)`` (same units as the logits).

    Raises:
        ValueError: if ``logits`` is not 2-D or C < 2 (the unbiased std of one value is undefined).

    Source: notebook 05, eq. (3); reference ``Unlearning/correlation_verification.py``, ``std_loss``:
    ``torch.sum(torch.std(x, dim=1))/(len(x.view(-1)))``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C); got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"logits must have C >= 2 classes for the SD loss (unbiased std over classes is undefined "
            f"for C={logits.shape[1]})"
        )
    return torch.std(logits, dim=1).sum() / logits.numel()


def sd_loss(logits: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """The SD loss: batch-mean cross-entropy plus ``lam`` times the logit-std penalty.

    Args:
        logits: (N, C) raw logits.
        targets: (N,) int64 class indices in [0, C).
        lam: λ ≥ 0, the regularisation strength (0 gives plain cross-entropy). Note the /(N·C)
            normalisation: for CIFAR-100 the penalty per unit λ is 10× weaker than for CIFAR-10.

    Returns:
        Scalar tensor (nats).

    Raises:
        ValueError: if ``lam`` < 0 or is not finite, or as :func:`logit_std_penalty`.

    Source: notebook 05, eq. (1); ``std_loss`` of the reference scripts (e.g.
    ``Unlearning/Correlation_unlearning.py``; the same in every script), with λ an argument
    instead of the global ``std_reg``.
    """
    lam = float(lam)
    if not (lam >= 0.0 and lam < float("inf")):
        raise ValueError(f"lam must be a finite number >= 0; got {lam}")
    ce = F.cross_entropy(logits, targets)
    if lam == 0.0:
        return ce
    return ce + lam * logit_std_penalty(logits)


def make_loss(name: str = "ce", lam: float = 0.0) -> LossFn:
    """Return ``loss(logits, targets) -> scalar`` by name.

    Args:
        name: ``"ce"`` (batch-mean cross-entropy) or ``"sd"`` (:func:`sd_loss` with ``lam``).
        lam: λ for ``"sd"``; must be 0 for ``"ce"``.

    Returns:
        A function of (N, C) logits and (N,) int64 targets giving a scalar tensor (nats).

    Raises:
        ValueError: unknown ``name``, ``lam`` < 0, or ``lam`` ≠ 0 with ``"ce"``.
    """
    if name == "ce":
        if lam != 0.0:
            raise ValueError(f"lam must be 0 with loss 'ce' (use loss 'sd' for λ>0); got {lam}")
        return F.cross_entropy
    if name == "sd":
        lam = float(lam)
        if not lam >= 0.0:
            raise ValueError(f"lam must be >= 0; got {lam}")

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return sd_loss(logits, targets, lam)

        loss.__name__ = f"sd_loss(lam={lam})"
        return loss
    raise ValueError(f"loss name must be one of 'ce', 'sd'; got {name!r}")
