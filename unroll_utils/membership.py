"""The membership-inference numbers forget benchmarks publish, each as its source computes it:
the NeurIPS 2023 unlearning challenge kit's cross-validated logistic regression on losses
(:func:`mia_cv_accuracy`) and SalUn's SVC "MIA-Efficacy" (:func:`svc_mia_efficacy`).

They work on softmax probabilities / per-example losses from :mod:`unroll_utils.privacy`
(eval mode), which holds the attacks of the paper's privacy experiment (reference code
cleverhans-lab/unrolling-sgd ``Privacy_risk_score/``: Song & Mittal's metric-based attacks, the
loss-attack AUC; their privacy risk score is :mod:`unroll_utils.risk_score`). Shapes: ``probs``
(N, C) float, rows summing to 1; ``labels`` (N,) int64 in [0, C−1].
"""

from __future__ import annotations

import numpy as np

from .privacy import _check_probs, _np

__all__ = ["SVC_FEATURES", "mia_cv_accuracy", "svc_mia_efficacy"]

#: Features :func:`svc_mia_efficacy` can feed its SVC (SalUn's ``SVC_MIA`` computes these, among others).
SVC_FEATURES = ("confidence", "correctness", "prob")


def _balanced_subsample(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the larger of two 1-D arrays (seeded) and keep as many values as the smaller holds."""
    rng = np.random.default_rng(seed)
    if a.size > b.size:
        a = rng.permutation(a)[: b.size]
    elif b.size > a.size:
        b = rng.permutation(b)[: a.size]
    return a, b


def mia_cv_accuracy(member_losses, nonmember_losses, *, n_splits: int = 10, seed: int = 0) -> float:
    """The NeurIPS 2023 unlearning challenge's membership-inference score ("The MIA has an accuracy
    of ..."): the mean accuracy of a logistic regression predicting membership from the loss alone,
    over ``n_splits`` stratified shuffle splits (10% held out each, scikit-learn defaults).

    Follows ``simple_mia`` of the challenge's starting kit (unlearning-challenge/starting-kit,
    ``unlearning-CIFAR10.ipynb``): ``LogisticRegression()`` with default settings,
    ``StratifiedShuffleSplit(n_splits, random_state=seed)``, ``cross_val_score(scoring="accuracy")``,
    on a class-balanced sample: the larger side is shuffled (seeded) and cut to the smaller's size
    (the kit cuts its forget losses to the number of test losses, as its forget set is the larger).
    0.5 = the losses tell members from non-members no better than a coin; a retrained model's value
    on forget vs test points is the target for an unlearned one.

    Args:
        member_losses: (m,) per-example losses of the members (e.g. the forget set).
        nonmember_losses: (n,) losses of the non-members (e.g. the test set).
        n_splits: cross-validation splits (≥ 2). seed: the subsample and the splits, in [0, 2³² − 1].

    Returns:
        Mean held-out accuracy in [0, 1].

    Raises:
        ValueError: fewer than 6 points on the smaller side (a 10% fold then cannot hold both
            classes), non-finite losses, ``n_splits`` < 2 or ``seed`` outside [0, 2³² − 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2; got {n_splits!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1]; got {seed!r}")
    a = _np(member_losses).astype(np.float64).ravel()
    b = _np(nonmember_losses).astype(np.float64).ravel()
    if min(a.size, b.size) < 6:
        raise ValueError("member_losses and nonmember_losses need at least 6 points each "
                         f"(got {a.size} and {b.size})")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("losses must be finite")
    a, b = _balanced_subsample(a, b, seed)
    x = np.concatenate([b, a]).reshape(-1, 1)
    y = np.r_[np.zeros(b.size), np.ones(a.size)]
    cv = StratifiedShuffleSplit(n_splits=int(n_splits), random_state=int(seed))
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy").mean())


def _svc_feature(probs, labels, feature: str) -> np.ndarray:
    p, y = _check_probs(probs, labels)
    if feature == "confidence":
        return p[np.arange(len(y)), y].reshape(-1, 1)
    if feature == "correctness":
        return (p.argmax(1) == y).astype(np.float64).reshape(-1, 1)
    if feature == "prob":
        return p
    raise ValueError(f"feature must be one of {list(SVC_FEATURES)}; got {feature!r}")


def svc_mia_efficacy(shadow_member_probs, shadow_member_labels, shadow_nonmember_probs,
                     shadow_nonmember_labels, target_probs, target_labels, *,
                     feature: str = "confidence") -> float:
    """SalUn's "MIA-Efficacy": the fraction of target (forget) points that an SVC, trained to tell the
    same model's members from its non-members, calls **non-member**. Higher = more forgotten; a
    retrained model's value is the target for an unlearned one.

    Follows ``SVC_MIA`` / ``SVC_fit_predict`` of OPTML-Group/Unlearn-Saliency
    (``Classification/evaluation/SVC_MIA.py``, same file in OPTML-Group/Unlearn-Sparse) as
    ``main_forget.py`` calls it for ``SVC_MIA_forget_efficacy``: the SVC is
    ``SVC(C=3, gamma="auto", kernel="rbf")`` fitted on the evaluated model's outputs on shadow
    members (their first ``len(test)`` retain points) labelled 1 and shadow non-members (the test
    set) labelled 0; the efficacy is 1 − mean(prediction on the target points). The reported number
    is the ``"confidence"`` feature, p_y (the README: "MIA ... corresponds to
    SVC_MIA_forget_efficacy['confidence']").

    Args:
        shadow_member_probs, shadow_nonmember_probs: (N_in, C), (N_out, C) softmax probabilities of
            the evaluated model; the labels (N_in,), (N_out,).
        target_probs: (m, C) its probabilities on the forget set; target_labels: (m,).
        feature: one of :data:`SVC_FEATURES` ("confidence": p_y, as reported; "correctness": 1 if
            argmax = y; "prob": the whole probability vector).

    Returns:
        Fraction in [0, 1] of target points predicted non-member.

    Raises:
        ValueError: an unknown ``feature``, bad probabilities or labels, or a shadow side empty.
    """
    from sklearn.svm import SVC

    xa = _svc_feature(shadow_member_probs, shadow_member_labels, feature)
    xb = _svc_feature(shadow_nonmember_probs, shadow_nonmember_labels, feature)
    xt = _svc_feature(target_probs, target_labels, feature)
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(np.concatenate([xa, xb]), np.r_[np.ones(len(xa)), np.zeros(len(xb))])
    return float(1.0 - clf.predict(xt).mean())
