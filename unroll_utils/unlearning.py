"""Single gradient unlearning and its variants (notebook 02, eqs. (6)–(7); notebook 03, eq. (1)), and the
correction a lock-step run accumulates (:class:`UndoAccumulator`, :func:`with_undo`).

Unrolling SGD to first order around w_0, every step that saw the forget set x* moved the weights by
−η·(1/|B|)·Σ_{x∈x*∩B} ∇ℓ(w_0; x). Single gradient unlearning adds those terms back:

    w″_t = w_t + Σ_{occurrences of x*} η_i · (1/|B_i|) Σ_{x∈x*∩B_i} ∇ℓ(w; x)

which for the paper's protocol (x* is a whole batch of b points, seen m times at a constant η) is
the canonical w″ = w_t + m·η·∇L(w_0; x*). Where the gradient is taken is named by ``undo_at``:

====================  =======================================================  ==========================
``undo_at``           gradient taken at                                       reference script
====================  =======================================================  ==========================
``"w0"`` (default)    the initial weights w_0, computed once per distinct batch correlation_verification.py
``"current"``         M's weights right after each step on x* (amnesiac-style) Correlation_unlearning.py
``"final"``           the weights w_t being unlearned                           cumulative_verification.py
``"checkpoint"``      the last checkpoint of M (every ``checkpoint_freq`` steps) checkpoint_version.py
====================  =======================================================  ==========================

What is added back is named by ``undo_form``: ``"paper"`` (the forget points' share of M's batch loss,
above) or ``"batch_difference"``, ∇[L(w; B) − L(w; B∖x*)], the exact first-order difference between
M's step on B and M′'s step on B∖x*. The two coincide when x* fills whole batches (the paper's
protocol); when x* shares a batch with retained points, M′ averages over fewer points and only
``"batch_difference"`` is exact at t = 1.

The reference ``Unlearning/checkpoint_version.py`` also resets its checkpoint to w_0 at each epoch
start; here checkpoints are M's weights at every multiple of ``checkpoint_freq`` steps.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from .distances import snapshot
from .hessian import BN_MODES, preserved_modes

UNDO_POINTS = ("w0", "current", "final", "checkpoint")
UNDO_FORMS = ("paper", "batch_difference")


def forget_gradient(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor,
                    forget_mask: torch.Tensor | None = None, *,
                    weights: Sequence[torch.Tensor] | None = None,
                    bn_mode: str = "train", form: str = "paper") -> list[torch.Tensor]:
    """∇_w of the forget points' share of a batch loss, (1/|B|)·Σ_{x∈x*∩B} ℓ(w; x).

    The forward pass runs on the whole batch B as M saw it (so BatchNorm in ``"train"`` mode uses
    B's statistics, as in the reference code where B = x*). Nothing is mutated: weights are read
    through detached copies, buffers are cloned, ``.grad`` is untouched, mode flags are restored.

    Args:
        model: the network (its architecture and buffers are used).
        loss_fn: batch-mean ``loss(logits, targets)`` that is additive over examples (CE, SD loss).
        inputs: (|B|, ...) the batch as M saw it (augmented if M's was).
        targets: (|B|,) labels.
        forget_mask: (|B|,) bool, True for the forget points; None means the whole batch is x*.
        weights: tensors in ``model.parameters()`` order to evaluate at (e.g. a snapshot of w_0);
            default the model's current parameters.
        bn_mode: ``"train"`` (batch statistics; the reference code) or ``"eval"``.
        form: ``"paper"`` (the forget points' share, above) or ``"batch_difference"``:
            ∇L(w; B) − ∇L(w; B∖x*), each batch forwarded on its own (as M and M′ saw them).

    Returns:
        List of gradient tensors shaped like ``model.parameters()`` (the weights' dtype).

    Raises:
        ValueError: bad ``bn_mode``/``form``, mask of the wrong shape, or a mask with no forget point.

    Source: notebook 03, eq. (1); reference ``Unlearning/correlation_verification.py`` (the undo
    gradient of ``M_pretrain`` in train mode). The reference calls ``backward(retain_graph=True)``
    and then ``autograd.grad(create_graph=True)``, which accumulates into ``M_pretrain``'s
    ``.grad`` and updates its BatchNorm buffers; here one ``autograd.grad`` on copies does neither.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}; got {bn_mode!r}")
    if form not in UNDO_FORMS:
        raise ValueError(f"form must be one of {UNDO_FORMS}; got {form!r}")
    n = inputs.shape[0]
    if forget_mask is None:
        forget_mask = torch.ones(n, dtype=torch.bool, device=inputs.device)
    if forget_mask.shape != (n,) or forget_mask.dtype != torch.bool:
        raise ValueError(f"forget_mask must be a bool tensor of shape ({n},)")
    k = int(forget_mask.sum())
    if k == 0:
        raise ValueError("forget_mask selects no forget point")
    names = [name for name, _ in model.named_parameters()]
    src = list(weights) if weights is not None else [p for p in model.parameters()]
    if len(src) != len(names):
        raise ValueError(f"weights must hold {len(names)} tensors (model.parameters() order)")
    params = [w.detach().clone().requires_grad_(True) for w in src]
    state = {**dict(zip(names, params)),
             **{name: b.detach().clone() for name, b in model.named_buffers()}}
    with torch.enable_grad(), preserved_modes(model, training=(bn_mode == "train")):
        logits = functional_call(model, state, (inputs,))
        if form == "paper":
            loss = loss_fn(logits[forget_mask], targets[forget_mask]) * (k / n)
        else:
            loss = loss_fn(logits, targets)
            if k < n:
                keep = ~forget_mask
                loss = loss - loss_fn(functional_call(model, state, (inputs[keep],)), targets[keep])
        grads = torch.autograd.grad(loss, params)
    return [g.detach() for g in grads]


def single_gradient_unlearning(weights_t: Sequence[torch.Tensor], forget_grad: Sequence[torch.Tensor],
                               lr: float, times_seen: int | float = 1) -> list[torch.Tensor]:
    """The canonical update w″ = w_t + m·η·∇L(w_0; x*).

    Args:
        weights_t: M's weights w_t (``model.parameters()`` order).
        forget_grad: ∇L(w_0; x*) from :func:`forget_gradient`, same shapes.
        lr: η > 0.
        times_seen: m ≥ 0, how many SGD steps used x* (epochs, for the paper's protocol).

    Returns:
        New tensors w″ (inputs are not modified).

    Raises:
        ValueError: lr ≤ 0, m < 0, or mismatched shapes.

    Source: notebook 03, eq. (1); reference ``Unlearning/correlation_verification.py``
    (``old_params[name] += (ep+1) * args.lr * grads[i]``).
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr}")
    if not times_seen >= 0:
        raise ValueError(f"times_seen must be >= 0; got {times_seen}")
    wt, g = list(weights_t), list(forget_grad)
    if len(wt) != len(g) or any(a.shape != b.shape for a, b in zip(wt, g)):
        raise ValueError("weights_t and forget_grad must match in number and shapes of tensors")
    with torch.no_grad():
        return torch._foreach_add([w.detach() for w in wt], g, alpha=float(lr) * float(times_seen))


def with_undo(model: nn.Module, undo: list[torch.Tensor]) -> nn.Module:
    """M″: a copy of ``model`` with the single gradient unlearning correction added (w″ = w + u)."""
    unlearned = copy.deepcopy(model)
    with torch.no_grad():
        torch._foreach_add_(list(unlearned.parameters()), undo)
    return unlearned


class UndoAccumulator:
    """The single gradient unlearning correction u (w″ = w_t + u) of a lock-step run, for every
    ``undo_at`` point of :mod:`unroll_utils.unlearning` (notebook 03, eq. (1)).

    ``"w0"`` adds η·∇L(w_0; x*∩B) (cached per distinct batch) at every step that saw forget points;
    ``"current"`` adds η·∇L(w_t; x*∩B) right after M's step; ``"final"`` and ``"checkpoint"``
    remember each distinct forget-holding batch with its summed η and evaluate the gradients when u
    is asked for (at the current weights, or at the last checkpoint).

    The checkpoint follows ``Unlearning/checkpoint_version.py``: before step t + 1 with t a
    positive multiple of c = ``checkpoint_freq`` it moves to the weights w_t, so the measurement
    after step t uses w_ckpt = w_{c·⌊(t−1)/c⌋} (w_0 for t ≤ c): at t = kc it is still
    w_{(k−1)c}, and w_{kc} is first used at t = kc + 1.

    Args:
        config: the run's validated :class:`unroll_utils.trajectory.LockStepConfig` (``undo_at``,
            ``undo_bn_mode``, ``undo_form``, ``checkpoint_freq``, ``lr``).
        loss_fn: the training objective. params: M's parameters (the correction's layout).
    """

    def __init__(self, config, loss_fn, params: list[torch.Tensor]) -> None:
        self.config, self.loss_fn, self.params = config, loss_fn, params
        self.undo = [torch.zeros_like(p) for p in params]
        self.at_w0: dict[bytes, list[torch.Tensor]] = {}
        self.occurrences: dict[bytes, dict] = {}  # "final"/"checkpoint": batch tensors and Σ η
        self.ckpt_weights = snapshot(params)

    def record(self, key: bytes, xb: torch.Tensor, yb: torch.Tensor, fmask: torch.Tensor,
               model: nn.Module, initial: nn.Module) -> None:
        """Account for one step of M on batch (xb, yb) whose forget points are ``fmask``."""
        cfg = self.config
        if cfg.undo_at == "w0":
            if key not in self.at_w0:
                self.at_w0[key] = forget_gradient(initial, self.loss_fn, xb, yb, fmask,
                                                  bn_mode=cfg.undo_bn_mode, form=cfg.undo_form)
            torch._foreach_add_(self.undo, self.at_w0[key], alpha=cfg.lr)
        elif cfg.undo_at == "current":
            g = forget_gradient(model, self.loss_fn, xb, yb, fmask, bn_mode=cfg.undo_bn_mode,
                                form=cfg.undo_form)
            torch._foreach_add_(self.undo, g, alpha=cfg.lr)
        else:
            occ = self.occurrences.setdefault(key, {"x": xb, "y": yb, "mask": fmask, "eta": 0.0})
            occ["eta"] += cfg.lr

    def before_step(self, t: int) -> None:
        """Before step t + 1 (``t`` steps done): move the checkpoint to the current weights w_t
        when t is a positive multiple of ``checkpoint_freq``."""
        if self.config.undo_at == "checkpoint" and t > 0 and t % self.config.checkpoint_freq == 0:
            with torch.no_grad():
                torch._foreach_copy_(self.ckpt_weights, self.params)

    def current(self, model: nn.Module) -> list[torch.Tensor]:
        """u for M (``model``) now, in ``model.parameters()`` order."""
        cfg = self.config
        if cfg.undo_at in ("w0", "current"):
            return self.undo
        at = None if cfg.undo_at == "final" else self.ckpt_weights
        u = [torch.zeros_like(p) for p in self.params]
        for occ in self.occurrences.values():
            g = forget_gradient(model, self.loss_fn, occ["x"], occ["y"], occ["mask"], weights=at,
                                bn_mode=cfg.undo_bn_mode, form=cfg.undo_form)
            torch._foreach_add_(u, g, alpha=occ["eta"])
        return u

    def state_dict(self) -> dict:
        return {"undo": self.undo, "ckpt_weights": self.ckpt_weights, "undo_at_w0": self.at_w0,
                "occurrences": self.occurrences}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.undo, state["undo"])
            torch._foreach_copy_(self.ckpt_weights, state["ckpt_weights"])
        self.at_w0, self.occurrences = state["undo_at_w0"], state["occurrences"]
