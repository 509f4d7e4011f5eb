"""Membership-inference attacks and the entropies they read (notebook 12; Song & Mittal 2021).

A membership-inference attack guesses, from a model's output on a labelled point z = (x, y), whether z
was in the model's training set. Everything here works on **softmax probabilities** computed with the
model in **eval mode**. The reference ``Privacy_risk_score/calculate_PRS.py`` (cleverhans-lab/unrolling-sgd)
does neither: its ``Mentr`` is applied to raw logits and its models score in train mode.

- :func:`loss_attack_auc` — the ROC-AUC of the loss as a membership score (a lower loss means
  "member"): the threshold-free summary of the loss-threshold attack of Yeom et al. (CSF 2018), who
  report one threshold's membership advantage instead (scikit-learn ``roc_auc_score``).
- :func:`unroll_utils.membership.mia_cv_accuracy` and :func:`unroll_utils.membership.svc_mia_efficacy`
  — the membership-inference numbers forget benchmarks publish (their own module).
- :class:`MetricAttack` — the metric-based attacks of Song & Mittal (USENIX Security 2021, §3.2):
  correctness, confidence p_y, entropy and modified entropy, with one threshold per class chosen on
  shadow (or reference) data to maximise the balanced in/out accuracy.
- :func:`unroll_utils.risk_score.privacy_risk_score` — Song & Mittal's privacy risk score (§5.1 of
  their paper), from histograms of the :func:`modified_entropy` defined here (its own module).

Shapes: ``probs`` (N, C) float, rows summing to 1; ``labels`` (N,) int64 in [0, C−1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from .hessian import preserved_modes

__all__ = ["ATTACK_METRICS", "predict_probs", "per_example_loss", "entropy", "modified_entropy",
           "confidence", "correctness", "attack_values", "roc_auc", "loss_attack_auc",
           "best_threshold", "MetricAttack"]

#: Song & Mittal's metric-based attacks; a higher *attack value* always means "more likely a member"
#: (see :func:`attack_values`).
ATTACK_METRICS = ("correctness", "confidence", "entropy", "modified_entropy")
#: Probabilities are clipped to [LOG_FLOOR, 1] before a log, as Song & Mittal's code does (1e-30).
LOG_FLOOR = 1e-30


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_prob_rows(probs, name: str = "probs") -> np.ndarray:
    """(N, C) float64 probabilities, or ValueError naming the argument ``name``: not 2-D or empty,
    NaN/inf, a negative entry, or a row not summing to 1 (within 1e-4)."""
    p = _np(probs).astype(np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C) with N >= 1; got {p.shape}")
    hint = ("apply softmax to the logits first (the reference code, Privacy_risk_score/"
            "calculate_PRS.py, fed raw logits to the modified entropy)")
    bad = ~np.isfinite(p).all(1)
    if bad.any():
        raise ValueError(f"{name} must be probabilities, finite in [0, 1] with rows summing to 1; row "
                         f"{int(np.argmax(bad))} holds NaN or inf (a diverged model?): {hint}")
    if p.min() < 0:
        raise ValueError(f"{name} must be probabilities in [0, 1] with rows summing to 1; got the "
                         f"negative entry {p.min():.4g}: {hint}")
    sums = p.sum(1)
    off = np.abs(sums - 1.0) > 1e-4
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"{name} must be probabilities with rows summing to 1; row {i} sums to "
                         f"{sums[i]:.6g}: {hint}")
    return p


def _check_probs(probs, labels, name: str = "probs",
                 labels_name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 probabilities and (N,) int labels, or ValueError naming the argument."""
    p, y = _check_prob_rows(probs, name), _np(labels)
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{labels_name} must be ({p.shape[0]},) integers; got shape {y.shape} "
                         f"dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"{labels_name} must be in [0, {p.shape[1] - 1}]")
    return p, y.astype(np.int64)


@torch.no_grad()
def predict_probs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax probabilities of ``model`` in eval mode (mode flags restored).

    Args:
        model: a classifier returning logits (N, C).
        inputs: (N, ...) on the model's device.
        batch_size: rows per forward pass, >= 1.

    Returns:
        (N, C) float32 probabilities, rows summing to 1.

    Raises:
        ValueError: empty inputs or ``batch_size`` < 1.
    """
    if inputs.shape[0] == 0 or batch_size < 1:
        raise ValueError("inputs must be non-empty and batch_size >= 1")
    with preserved_modes(model, training=False):
        return torch.cat([model(inputs[i:i + batch_size]).float().softmax(1)
                          for i in range(0, inputs.shape[0], batch_size)])


def per_example_loss(probs, labels) -> np.ndarray:
    """Cross-entropy loss of each point, −log p_y (p_y clipped at 1e-30).

    Args:
        probs: (N, C) softmax probabilities.
        labels: (N,) int labels in [0, C−1].

    Returns:
        (N,) float64 losses in nats.

    Raises:
        ValueError: ``probs`` not (N, C) probabilities or ``labels`` out of range.
    """
    p, y = _check_probs(probs, labels)
    return -np.log(np.clip(p[np.arange(len(y)), y], LOG_FLOOR, 1.0))


def entropy(probs) -> np.ndarray:
    """Prediction entropy H(p) = −Σ_c p_c log p_c, in nats, in [0, log C].

    Args:
        probs: (N, C) softmax probabilities (rows summing to 1).

    Returns:
        (N,) float64.

    Raises:
        ValueError: ``probs`` not (N, C), holding NaN/inf or a negative entry, or a row not summing to 1
            (raw logits: apply softmax first).

    Source: Song & Mittal, USENIX Security 2021, eq. (3).
    """
    p = _check_prob_rows(probs)
    return -np.sum(p * np.log(np.clip(p, LOG_FLOOR, 1.0)), axis=1)


def modified_entropy(probs, labels) -> np.ndarray:
    """Song & Mittal's modified prediction entropy, in nats:

        Mentr(p, y) = −(1 − p_y)·log(p_y) − Σ_{c≠y} p_c·log(1 − p_c).

    It is 0 for a confident correct prediction (p_y = 1) and grows without bound for a confident
    wrong one, so members (fitted points) have small values. Logs clip their argument at 1e-30, as
    Song & Mittal's code does. Unlike the reference code (``Privacy_risk_score/calculate_PRS.py``,
    ``Mentr``, applied to raw logits), ``probs`` must be softmax probabilities (checked).

    Args:
        probs: (N, C) softmax probabilities.
        labels: (N,) int labels in [0, C−1].

    Returns:
        (N,) float64, ≥ 0.

    Raises:
        ValueError: ``probs`` not (N, C) probabilities or ``labels`` out of range.

    Source: Song & Mittal, USENIX Security 2021, eq. (4).
    """
    p, y = _check_probs(probs, labels)
    rows = np.arange(len(y))
    py = p[rows, y]
    log_p = np.log(np.clip(p, LOG_FLOOR, 1.0))
    log_1mp = np.log(np.clip(1.0 - p, LOG_FLOOR, 1.0))
    other = -(p * log_1mp)
    other[rows, y] = 0.0
    return -(1.0 - py) * log_p[rows, y] + other.sum(1)


def confidence(probs, labels) -> np.ndarray:
    """Confidence in the true class, p_y (Song & Mittal eq. (2)).

    Args:
        probs: (N, C) softmax probabilities.
        labels: (N,) int labels in [0, C−1].

    Returns:
        (N,) float64 in [0, 1].

    Raises:
        ValueError: as :func:`per_example_loss`.
    """
    p, y = _check_probs(probs, labels)
    return p[np.arange(len(y)), y]


def correctness(probs, labels) -> np.ndarray:
    """1.0 where argmax p = y, else 0.0 (Song & Mittal eq. (1); Yeom et al. 2018).

    Args:
        probs: (N, C) softmax probabilities.
        labels: (N,) int labels in [0, C−1].

    Returns:
        (N,) float64 of 0.0 and 1.0.

    Raises:
        ValueError: as :func:`per_example_loss`.
    """
    p, y = _check_probs(probs, labels)
    return (p.argmax(1) == y).astype(np.float64)


def attack_values(probs, labels, metric: str) -> np.ndarray:
    """The attack value of each point for one of Song & Mittal's metrics, higher meaning "member".

    Correctness and confidence as they are; entropy and modified entropy negated.

    Args:
        probs: (N, C) softmax probabilities.
        labels: (N,) int labels in [0, C−1].
        metric: one of :data:`ATTACK_METRICS`.

    Returns:
        (N,) float64.

    Raises:
        ValueError: an unknown ``metric``, or as :func:`per_example_loss`.
    """
    if metric == "correctness":
        return correctness(probs, labels)
    if metric == "confidence":
        return confidence(probs, labels)
    if metric == "entropy":
        _check_probs(probs, labels)
        return -entropy(probs)
    if metric == "modified_entropy":
        return -modified_entropy(probs, labels)
    raise ValueError(f"metric must be one of {list(ATTACK_METRICS)}; got {metric!r}")


def roc_auc(member_scores, nonmember_scores) -> float:
    """ROC-AUC of separating members from non-members by a score (higher = member), in [0, 1].

    0.5: the score tells nothing (e.g. identical distributions); 1: every member scores above every
    non-member. Computed by ``sklearn.metrics.roc_auc_score`` (ties count one half).

    Args:
        member_scores: (N_in,) scores of members.
        nonmember_scores: (N_out,) scores of non-members.

    Returns:
        The AUC as a float.

    Raises:
        ValueError: either side empty or non-finite scores.
    """
    a, b = _np(member_scores).astype(np.float64).ravel(), _np(nonmember_scores).astype(np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("member_scores and nonmember_scores must both be non-empty")
    s = np.concatenate([a, b])
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return float(roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], s))


def loss_attack_auc(member_losses, nonmember_losses) -> float:
    """ROC-AUC of the per-example loss as a membership score (lower loss = member), in [0, 1].

    This package's threshold-free summary of the loss-threshold attack of Yeom et al. (CSF 2018):
    Yeom et al. call a point a member when its loss is below one threshold (the average training
    loss) and report that attack's membership advantage (true- minus false-positive rate); the AUC
    sweeps every threshold instead, so no published table reports this number (see
    :func:`mia_cv_accuracy` and :func:`svc_mia_efficacy` for those that do).

    Args:
        member_losses: (N_in,) per-example losses of members (e.g. :func:`per_example_loss`).
        nonmember_losses: (N_out,) per-example losses of non-members.

    Returns:
        The AUC; 0.5 = no leakage.

    Raises:
        ValueError: as :func:`roc_auc`.
    """
    return roc_auc(-_np(member_losses).astype(np.float64), -_np(nonmember_losses).astype(np.float64))


def best_threshold(member_values, nonmember_values) -> tuple[float, float]:
    """Song & Mittal's threshold choice: the τ among the observed values that maximises the balanced
    accuracy ½·(P[v ≥ τ | member] + P[v < τ | non-member]).

    Args:
        member_values: (N_in,) attack values of members (higher = member).
        nonmember_values: (N_out,) attack values of non-members.

    Returns:
        (τ, balanced accuracy at τ). Ties keep the smallest τ.

    Raises:
        ValueError: either side empty.
    """
    a, b = np.sort(_np(member_values).astype(np.float64)), np.sort(_np(nonmember_values).astype(np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("member_values and nonmember_values must both be non-empty")
    cand = np.unique(np.concatenate([a, b]))
    hits = a.size - np.searchsorted(a, cand, side="left")   # members with v >= τ
    rejects = np.searchsorted(b, cand, side="left")         # non-members with v < τ
    score = hits * b.size + rejects * a.size                # exact integers: ties compare equal
    i = int(np.argmax(score))
    return float(cand[i]), float(score[i]) / (2.0 * a.size * b.size)


@dataclass
class MetricAttack:
    """Song & Mittal's metric-based membership-inference attack with per-class thresholds.

    ``fit`` chooses, for every class c, the threshold τ_c of :func:`best_threshold` on shadow (or
    reference) members and non-members of class c; ``predict`` calls z = (x, y) a member when its
    attack value is ≥ τ_y. Correctness needs no threshold (member iff correctly classified). A class
    with no shadow member or non-member falls back to the threshold fitted on all classes together.

    Attributes:
        metric: one of :data:`ATTACK_METRICS`.
        thresholds: (C,) float64 per-class thresholds after ``fit`` (empty for correctness).

    Source: L. Song, P. Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning Models",
    USENIX Security 2021, §3.2 (their code's ``_thre_setting`` / ``_mem_inf_thre``).
    """

    metric: str = "modified_entropy"
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        if self.metric not in ATTACK_METRICS:
            raise ValueError(f"metric must be one of {list(ATTACK_METRICS)}; got {self.metric!r}")

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels) -> "MetricAttack":
        """Choose the per-class thresholds on shadow (or reference) data.

        Args:
            member_probs, member_labels: (N_in, C) probabilities and (N_in,) labels of members.
            nonmember_probs, nonmember_labels: (N_out, C) and (N_out,) of non-members.

        Returns:
            self, with :attr:`thresholds` set ((C,); left empty for correctness).

        Raises:
            ValueError: non-probability rows, labels out of range, or class counts that differ.
        """
        if self.metric == "correctness":
            return self
        mp, my = _check_probs(member_probs, member_labels)
        np_, ny = _check_probs(nonmember_probs, nonmember_labels)
        if mp.shape[1] != np_.shape[1]:
            raise ValueError("member_probs and nonmember_probs must have the same number of classes")
        va, vb = attack_values(mp, my, self.metric), attack_values(np_, ny, self.metric)
        pooled, _ = best_threshold(va, vb)
        th = np.full(mp.shape[1], pooled)
        for c in range(mp.shape[1]):
            if (my == c).any() and (ny == c).any():
                th[c] = best_threshold(va[my == c], vb[ny == c])[0]
        self.thresholds = th
        return self

    def predict(self, probs, labels) -> np.ndarray:
        """Membership calls of the attack.

        Args:
            probs: (N, C) softmax probabilities.
            labels: (N,) int labels in [0, C−1].

        Returns:
            (N,) bool, True where the attack calls the point a member.

        Raises:
            ValueError: not fitted for C classes (call :meth:`fit` first), or as :func:`per_example_loss`.
        """
        p, y = _check_probs(probs, labels)
        v = attack_values(p, y, self.metric)
        if self.metric == "correctness":
            return v > 0.5
        if self.thresholds.size != p.shape[1]:
            raise ValueError(f"call fit first (thresholds for {p.shape[1]} classes needed)")
        return v >= self.thresholds[y]

    def balanced_accuracy(self, member_probs, member_labels, nonmember_probs, nonmember_labels) -> float:
        """½·(fraction of members flagged + fraction of non-members not flagged), in [0, 1]; 0.5 = chance.

        Song & Mittal's reported attack accuracy on a balanced evaluation set.

        Args:
            member_probs, member_labels: (N_in, C) and (N_in,) of members.
            nonmember_probs, nonmember_labels: (N_out, C) and (N_out,) of non-members.

        Returns:
            The balanced accuracy as a float.

        Raises:
            ValueError: as :meth:`predict`.
        """
        return 0.5 * (float(self.predict(member_probs, member_labels).mean())
                      + 1.0 - float(self.predict(nonmember_probs, nonmember_labels).mean()))

