"""Song & Mittal's privacy risk score (notebook 12; USENIX Security 2021, §5.1).

PRS(z) = P(z is a member | m(z)), by Bayes' rule from the class-conditional histograms of the
modified entropy m (:func:`unroll_utils.privacy.modified_entropy`) on a shadow model's members and
non-members, with a prior of 0.5 (5 log-spaced bins per class by default, as in the authors' released
code, inspire-group/membership-inference-evaluation, ``privacy_risk_score_utils.py``).

- :class:`RiskHistograms` — the per-class histograms, fitted on shadow-model outputs
  (:meth:`RiskHistograms.fit`) or on any per-point value (:meth:`RiskHistograms.from_values`).
- :func:`privacy_risk_score` — the score of each target point from those histograms.

Like :mod:`unroll_utils.privacy`, everything works on **softmax probabilities** computed with the model
in **eval mode** (:func:`unroll_utils.privacy.predict_probs`); the reference
``Privacy_risk_score/calculate_PRS.py`` (cleverhans-lab/unrolling-sgd) fed raw logits to the modified
entropy. Shapes: ``probs`` (N, C) float, rows summing to 1; ``labels`` (N,) int64 in [0, C−1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .privacy import _check_probs, _np, modified_entropy

__all__ = ["LOG_BIN_FLOOR", "RiskHistograms", "privacy_risk_score"]

#: Modified entropies are clipped below at this value before log-spaced binning (Song & Mittal's code).
LOG_BIN_FLOOR = 1e-10


@dataclass
class RiskHistograms:
    """Per-class histograms of the modified entropy of a shadow model's members and non-members.

    Attributes:
        edges: (C, bins+1) bin edges per class, from the class's smallest to largest shadow value
            (pooled in and out; the outer edges are exactly those values), log-spaced (``log_bins``,
            values clipped below at 1e-10) or equal-width. A class with no shadow value has edges 0.
        p_in, p_out: (C, bins) fraction of the class's shadow members / non-members in each bin;
            each row sums to 1, or is all 0 where the class has no shadow member / non-member.
        log_bins: whether the edges are log-spaced.

    Bins are [e_j, e_{j+1}) and the last one is closed, as ``np.histogram``; a value is counted in
    the bin :meth:`bin_of` gives it, so every shadow value is counted once. (The authors' code takes
    the edges from ``np.logspace`` of the extremes, whose rounding can put the outer edges inside
    the data and silently drop the extreme point; here they are the extremes themselves.)

    A class with no shadow data (a convention: e.g. binary labels that are all 0 in the shadow
    sets): the classes present are scored as the authors' code does (it bins the labels present),
    and for the others the histograms are 0. :func:`privacy_risk_score` then gives, for a class with
    shadow members but no non-members, 1 (0 the other way round: the authors' in / (in + out)), and
    for a class with no shadow point at all the prior π (no evidence either way). Never NaN.

    Source: Song & Mittal 2021, §5.1; the defaults (5 log-spaced bins) and the rules for values
    outside the range and for empty bins follow their released code
    (inspire-group/membership-inference-evaluation, ``privacy_risk_score_utils.py``).
    """

    edges: np.ndarray
    p_in: np.ndarray
    p_out: np.ndarray
    log_bins: bool = True

    @classmethod
    def fit(cls, member_probs, member_labels, nonmember_probs, nonmember_labels,
            bins: int = 5, log_bins: bool = True) -> "RiskHistograms":
        """Histograms of the modified entropy from a shadow model's outputs.

        Args:
            member_probs, member_labels: (N_in, C) probabilities and (N_in,) labels of shadow members.
            nonmember_probs, nonmember_labels: (N_out, C) and (N_out,) of shadow non-members.
            bins: bins per class, ≥ 1.
            log_bins: log-spaced edges (Song & Mittal's default).

        Returns:
            :class:`RiskHistograms` with C classes.

        Raises:
            ValueError: bins not an integer >= 1, bad shapes, NaN or non-probability rows (naming
                ``member_probs`` or ``nonmember_probs``), or class counts that differ.
        """
        mp, my = _check_probs(member_probs, member_labels, "member_probs", "member_labels")
        np_, ny = _check_probs(nonmember_probs, nonmember_labels, "nonmember_probs", "nonmember_labels")
        if mp.shape[1] != np_.shape[1]:
            raise ValueError(f"member_probs has {mp.shape[1]} classes, nonmember_probs {np_.shape[1]}")
        return cls.from_values(modified_entropy(mp, my), my, modified_entropy(np_, ny), ny,
                               n_classes=mp.shape[1], bins=bins, log_bins=log_bins)

    @classmethod
    def from_values(cls, member_values, member_labels, nonmember_values, nonmember_labels, *,
                    n_classes: int, bins: int = 5, log_bins: bool = True) -> "RiskHistograms":
        """Histograms of any per-point value (modified entropy in :meth:`fit`; the authors' code also
        allows entropy or loss).

        Args:
            member_values, nonmember_values: (N_in,) and (N_out,) finite floats (≥ 0 with ``log_bins``;
                clipped below at 1e-10 there).
            member_labels, nonmember_labels: (N_in,) and (N_out,) integers in [0, n_classes − 1].
            n_classes: C ≥ 1.
            bins: bins per class, ≥ 1.
            log_bins: log-spaced edges.

        Returns:
            :class:`RiskHistograms` with ``n_classes`` classes.

        Raises:
            ValueError: bins or n_classes not an integer ≥ 1, mismatched shapes, non-finite or (with
                ``log_bins``) negative values, labels out of range.
        """
        for name, v in (("bins", bins), ("n_classes", n_classes)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
        sides = []
        for vname, lname, values, labels in (("member_values", "member_labels", member_values, member_labels),
                                             ("nonmember_values", "nonmember_labels", nonmember_values,
                                              nonmember_labels)):
            v, y = _np(values).astype(np.float64).ravel(), _np(labels)
            if y.shape != v.shape or (y.size and not np.issubdtype(y.dtype, np.integer)):
                raise ValueError(f"{lname} must be ({v.size},) integers; got shape {y.shape}")
            if not np.all(np.isfinite(v)) or (log_bins and v.size and v.min() < 0):
                raise ValueError(f"{vname} must be finite{' and >= 0 (log bins)' if log_bins else ''}")
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise ValueError(f"{lname} must be in [0, {n_classes - 1}]")
            sides.append((np.maximum(v, LOG_BIN_FLOOR) if log_bins else v, y.astype(np.int64)))
        (va, ya), (vb, yb) = sides
        edges = np.zeros((n_classes, bins + 1))
        out = cls(edges, np.zeros((n_classes, bins)), np.zeros((n_classes, bins)), bool(log_bins))
        for c in range(n_classes):
            a, b = va[ya == c], vb[yb == c]
            if a.size + b.size == 0:
                continue  # no shadow data: histograms 0, scored with the prior
            both = np.concatenate([a, b])
            lo, hi = both.min(), both.max()
            e = (np.logspace(np.log10(lo), np.log10(hi), bins + 1) if log_bins
                 else np.linspace(lo, hi, bins + 1))
            e[0], e[-1] = lo, hi  # the rounded outer edges may fall inside the data
            edges[c] = np.maximum.accumulate(e)  # (rounding must not make them decrease either)
            for hist, side in ((out.p_in, a), (out.p_out, b)):
                if side.size:
                    k = out.bin_of(side, np.full(side.size, c))
                    hist[c] = np.bincount(k, minlength=bins) / side.size
        return out

    def bin_of(self, values: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) bin index of each value in its class's histogram; values outside the shadow range
        go to the first or last bin."""
        bins = self.p_in.shape[1]
        values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels, dtype=np.int64)
        out = np.empty(len(values), dtype=np.int64)
        for c in np.unique(labels):
            rows = labels == c
            out[rows] = np.searchsorted(self.edges[c], values[rows], side="right") - 1
        return np.clip(out, 0, bins - 1)

    def informative_bin(self, c: int, k: int) -> int:
        """Bin k of class c if either histogram is non-zero there, else the nearest bin that is
        (the lower one first on ties, as Song & Mittal's code); k itself if all bins are empty."""
        filled = (self.p_in[c] + self.p_out[c]) > 0
        for d in range(len(filled)):
            for j in (k - d, k + d):
                if 0 <= j < len(filled) and filled[j]:
                    return j
        return k


def privacy_risk_score(histograms: RiskHistograms, probs, labels, prior: float = 0.5) -> np.ndarray:
    """Song & Mittal's privacy risk score of each target point (USENIX Security 2021, §5.1, eq. (6)):

        PRS(z) = P(in | m(z)) = π·P(m | in) / (π·P(m | in) + (1 − π)·P(m | out)),

    where m(z) is the modified entropy of the target model's softmax output on z = (x, y), the two
    conditional probabilities are the shadow histograms of class y read at m(z)'s bin (a bin empty
    under both histograms is replaced by the nearest non-empty one, as in their code), and π is the
    prior probability of membership (0.5 in the paper). This is the published definition, not the
    reference code's (``Privacy_risk_score/calculate_PRS.py`` in cleverhans-lab/unrolling-sgd fed
    raw logits to the modified entropy and could return 0/0).

    Args:
        histograms: from :meth:`RiskHistograms.fit` on shadow-model outputs.
        probs: (N, C) target-model softmax probabilities; labels: (N,) true labels.
        prior: π in (0, 1).

    Returns:
        (N,) float64 scores in [0, 1], in input order, never NaN: π where a class's histograms are
        all empty (no shadow point of that class), 1 (0) where the class had shadow members
        (non-members) only; see :class:`RiskHistograms`.

    Raises:
        ValueError: prior outside (0, 1); ``probs`` not probabilities (NaN, negative, rows not
            summing to 1: apply softmax to the logits first); a class count that differs from the
            histograms'.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1); got {prior}")
    p, y = _check_probs(probs, labels)
    if p.shape[1] != histograms.p_in.shape[0]:
        raise ValueError(f"probs has {p.shape[1]} classes, the histograms {histograms.p_in.shape[0]}")
    k = histograms.bin_of(modified_entropy(p, y), y)
    k = np.array([histograms.informative_bin(c, j) for c, j in zip(y, k)], dtype=np.int64)
    a, b = prior * histograms.p_in[y, k], (1.0 - prior) * histograms.p_out[y, k]
    total = a + b
    return np.where(total > 0, a / np.where(total > 0, total, 1.0), prior)
