"""Membership inference and the privacy risk score on hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from unroll_utils import membership
from unroll_utils import privacy as P
from unroll_utils import risk_score as R


def test_modified_entropy_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    # y=0: -(1-0.7) ln 0.7 - 0.2 ln 0.8 - 0.1 ln 0.9 ; y=1: -(1-0.2) ln 0.2 - 0.7 ln 0.3 - 0.1 ln 0.9
    y0 = 0.3 * -math.log(0.7) + 0.2 * -math.log(0.8) + 0.1 * -math.log(0.9)
    y1 = 0.8 * -math.log(0.2) + 0.7 * -math.log(0.3) + 0.1 * -math.log(0.9)
    got = P.modified_entropy(p, np.array([0, 1]))
    assert got == pytest.approx([y0, y1], rel=1e-12)
    assert y0 == pytest.approx(0.1621672, abs=1e-7) and y1 == pytest.approx(2.1408673, abs=1e-7)
    # a confident correct prediction has Mentr 0, a confident wrong one is large (log floor 1e-30)
    assert P.modified_entropy(np.array([[1.0, 0.0]]), np.array([0]))[0] == 0.0
    assert P.modified_entropy(np.array([[1.0, 0.0]]), np.array([1]))[0] == pytest.approx(2 * 30 * math.log(10))


def test_entropy_confidence_correctness():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert P.entropy(p) == pytest.approx([math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))])
    assert P.confidence(p, np.array([1, 1])).tolist() == [0.5, 0.1]
    assert P.correctness(p, np.array([1, 0])).tolist() == [0.0, 1.0]  # argmax of a tie is class 0
    assert P.attack_values(p, np.array([0, 0]), "entropy") == pytest.approx(-P.entropy(p))
    with pytest.raises(ValueError, match="metric"):
        P.attack_values(p, np.array([0, 0]), "loss")


def test_raw_logits_rejected():
    with pytest.raises(ValueError, match="softmax"):
        P.modified_entropy(np.array([[2.0, -1.0, 0.5]]), np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        P.confidence(np.array([[0.5, 0.5]]), np.array([2]))


def test_auc_known_separations():
    assert P.roc_auc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0
    assert P.roc_auc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    assert P.roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    # one inversion out of 2x2 pairs: AUC = 3/4
    assert P.roc_auc([1.0, 3.0], [0.0, 2.0]) == 0.75
    # loss attack: members have the lower losses
    assert P.loss_attack_auc([0.01, 0.02], [1.0, 2.0, 3.0]) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        P.roc_auc([], [1.0])


def test_best_threshold_by_hand():
    tau, acc = P.best_threshold([3.0, 4.0, 5.0], [1.0, 2.0, 3.5])
    # tau=3: all members >= 3, 2/3 non-members below -> 5/6; tau=4 ties (2/3, 1); smallest kept
    assert tau == 3.0 and acc == pytest.approx(5 / 6)


def test_per_class_thresholds():
    def two(conf, cls):  # 2-class probabilities with confidence `conf` in class `cls`
        p = np.array([[1 - c, c] if cls == 1 else [c, 1 - c] for c in conf])
        return p, np.full(len(conf), cls)

    m0, m0y = two([0.9, 0.8], 0)
    m1, m1y = two([0.4, 0.45], 1)
    n0, n0y = two([0.5, 0.6], 0)
    n1, n1y = two([0.2, 0.3], 1)
    att = P.MetricAttack("confidence").fit(np.r_[m0, m1], np.r_[m0y, m1y], np.r_[n0, n1], np.r_[n0y, n1y])
    assert att.thresholds == pytest.approx([0.8, 0.4])
    assert att.balanced_accuracy(np.r_[m0, m1], np.r_[m0y, m1y], np.r_[n0, n1], np.r_[n0y, n1y]) == 1.0
    q, qy = two([0.42], 1)
    r, ry = two([0.7], 0)
    assert att.predict(q, qy).tolist() == [True] and att.predict(r, ry).tolist() == [False]
    # one pooled threshold cannot separate these shadow sets perfectly
    _, pooled_acc = P.best_threshold(P.confidence(np.r_[m0, m1], np.r_[m0y, m1y]),
                                     P.confidence(np.r_[n0, n1], np.r_[n0y, n1y]))
    assert pooled_acc < 1.0
    corr = P.MetricAttack("correctness").fit(m0, m0y, n0, n0y)
    assert corr.predict(np.array([[0.6, 0.4], [0.3, 0.7]]), np.array([0, 0])).tolist() == [True, False]
    with pytest.raises(ValueError, match="fit first"):
        P.MetricAttack("entropy").predict(m0, m0y)


def _binary(py, cls):
    """2-class probabilities with p_y = py for label cls; Mentr = -2(1-py) ln py."""
    py = np.asarray(py, dtype=np.float64)
    p = np.stack([py, 1 - py], 1) if cls == 0 else np.stack([1 - py, py], 1)
    return p, np.full(len(py), cls)


def test_prs_from_tiny_histograms():
    # class 0: members Mentr {0, 0, ln2}, non-members {0, ln2, ln2, ln2}; 2 bins on [0, ln2]
    mem, memy = _binary([1.0, 1.0, 0.5], 0)
    non, nony = _binary([1.0, 0.5, 0.5, 0.5], 0)
    m1, m1y = _binary([1.0, 0.5], 1)
    n1, n1y = _binary([0.5, 1.0], 1)
    h = R.RiskHistograms.fit(np.r_[mem, m1], np.r_[memy, m1y], np.r_[non, n1], np.r_[nony, n1y], bins=2,
                             log_bins=False)
    assert h.p_in[0] == pytest.approx([2 / 3, 1 / 3]) and h.p_out[0] == pytest.approx([1 / 4, 3 / 4])
    tgt, tgty = _binary([0.99, 0.5], 0)  # Mentr 0.0201 (bin 0) and ln 2 (bin 1)
    prs = R.privacy_risk_score(h, tgt, tgty)
    assert prs == pytest.approx([8 / 11, 4 / 13])
    # class 1: equal histograms -> no evidence, PRS = prior
    assert R.privacy_risk_score(h, *_binary([0.7], 1)) == pytest.approx([0.5])
    # another prior: pi*a / (pi*a + (1-pi)*b)
    pi = 0.2
    assert R.privacy_risk_score(h, tgt[:1], tgty[:1], prior=pi)[0] == pytest.approx(
        pi * 2 / 3 / (pi * 2 / 3 + (1 - pi) / 4))
    # outside the shadow range: clipped to the edge bins
    assert R.privacy_risk_score(h, *_binary([0.01], 0)) == pytest.approx([4 / 13])


def test_prs_empty_bin_uses_nearest_filled_bin():
    mem, memy = _binary([1.0, 0.5], 0)
    non, nony = _binary([0.5, 1.0, 1.0], 0)
    m1, m1y = _binary([1.0], 1)
    n1, n1y = _binary([0.5], 1)
    h = R.RiskHistograms.fit(np.r_[mem, m1], np.r_[memy, m1y], np.r_[non, n1], np.r_[nony, n1y], bins=3,
                             log_bins=False)
    # p_in = (1/2, 0, 1/2), p_out = (2/3, 0, 1/3); a Mentr in the empty middle third of [0, ln2] is read at
    # the nearest filled bin, the lower one first (Song & Mittal's code): 0.5 / (0.5 + 2/3) = 3/7
    py = optimize.brentq(lambda q: -2 * (1 - q) * math.log(q) - math.log(2) / 2, 0.5, 0.999)
    assert h.bin_of(P.modified_entropy(*_binary([py], 0)), np.array([0]))[0] == 1
    assert R.privacy_risk_score(h, *_binary([py], 0)) == pytest.approx([3 / 7])
    assert R.privacy_risk_score(h, *_binary([0.5], 0)) == pytest.approx([0.5 / (0.5 + 1 / 3)])
    with pytest.raises(ValueError, match="prior"):
        R.privacy_risk_score(h, mem, memy, prior=1.0)
    with pytest.raises(ValueError, match="bins"):
        R.RiskHistograms.fit(mem, memy, non, nony, bins=0)


def test_prs_log_bins_default():
    # members p_y = 1 (Mentr 0, clipped to 1e-10), non-members p_y = 0.5 (Mentr ln 2): 5 log-spaced bins
    mem, memy = _binary([1.0, 1.0], 0)
    non, nony = _binary([0.5, 0.5], 0)
    h = R.RiskHistograms.fit(np.r_[mem, mem], np.r_[memy, memy + 1], np.r_[non, non], np.r_[nony, nony + 1])
    assert h.log_bins and h.edges.shape == (2, 6)
    assert np.allclose(np.log10(h.edges[0]), np.linspace(-10, math.log10(math.log(2)), 6))
    assert h.p_in[0].tolist() == [1, 0, 0, 0, 0] and h.p_out[0].tolist() == [0, 0, 0, 0, 1]
    # Mentr(0.99) = 0.0201: log10 = -1.70, in the last bin (only non-members) -> 0
    # Mentr(1 - 1e-8) = 3.7e-7: log10 = -6.43, bin 1 (empty) -> nearest filled is bin 0 (members) -> 1
    prs = R.privacy_risk_score(h, *_binary([0.99, 1 - 1e-8], 0))
    assert prs.tolist() == [0.0, 1.0]


def test_predict_probs_eval_mode_and_restored():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))
    net.train()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    before = net[1].running_mean.clone()
    p = P.predict_probs(net, x, batch_size=2)
    assert net.training and torch.equal(net[1].running_mean, before)
    with torch.no_grad():
        net.eval()
        ref = net(x).softmax(1)
    assert torch.allclose(p, ref) and torch.allclose(p.sum(1), torch.ones(5))
    assert P.per_example_loss(p, torch.zeros(5, dtype=torch.long)) == pytest.approx(-np.log(p[:, 0].numpy()), rel=1e-6)


# --- the forget benchmarks' membership-inference metrics -----------------------------------------------------

def test_mia_cv_accuracy_known_answers_and_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    rng = np.random.default_rng(0)
    # separable: every member loss below every non-member loss, far apart -> every fold is right
    members, non = rng.uniform(0.0, 0.1, 50), rng.uniform(3.0, 4.0, 50)
    assert membership.mia_cv_accuracy(members, non) == 1.0
    # one loss value for everyone: the regression can only guess one class, and a stratified fold
    # holds as many members as non-members -> exactly 0.5
    assert membership.mia_cv_accuracy(np.full(50, 0.7), np.full(50, 0.7)) == 0.5
    # overlapping: the same pipeline written out with scikit-learn directly
    a, b = rng.normal(0.5, 1.0, 40), rng.normal(1.0, 1.0, 40)
    x = np.r_[b, a].reshape(-1, 1)
    y = np.r_[np.zeros(40), np.ones(40)]
    direct = cross_val_score(LogisticRegression(), x, y, cv=StratifiedShuffleSplit(n_splits=10, random_state=3),
                             scoring="accuracy").mean()
    assert membership.mia_cv_accuracy(a, b, seed=3) == pytest.approx(direct, abs=0)
    # class balance: 10 members against 200 non-members keeps 10 of the 200 (not a trivial 95%)
    lopsided = membership.mia_cv_accuracy(np.ones(10), np.ones(200))
    assert lopsided == 0.5
    with pytest.raises(ValueError, match="at least 6"):
        membership.mia_cv_accuracy(np.ones(5), np.ones(50))
    with pytest.raises(ValueError, match="n_splits"):
        membership.mia_cv_accuracy(members, non, n_splits=1)


def _conf(py, n_cls=3, label=0):
    """(N, n_cls) probabilities with p_y = py on label `label`, the rest spread evenly."""
    py = np.asarray(py, dtype=np.float64)
    p = np.repeat(((1 - py) / (n_cls - 1))[:, None], n_cls, 1)
    p[:, label] = py
    return p, np.full(len(py), label)


def test_svc_mia_efficacy_known_answers_and_sklearn():
    from sklearn.svm import SVC

    rng = np.random.default_rng(1)
    mem, memy = _conf(rng.uniform(0.95, 1.0, 60))      # shadow members: confident
    non, nony = _conf(rng.uniform(0.1, 0.5, 60))       # shadow non-members: not
    fitted, fy = _conf([0.99, 0.97, 0.98, 0.999])       # forget points still fitted -> called members
    forgot, gy = _conf([0.2, 0.3, 0.15, 0.4])           # forgotten -> called non-members
    assert membership.svc_mia_efficacy(mem, memy, non, nony, fitted, fy) == 0.0
    assert membership.svc_mia_efficacy(mem, memy, non, nony, forgot, gy) == 1.0
    assert membership.svc_mia_efficacy(mem, memy, non, nony, np.r_[fitted, forgot], np.r_[fy, gy]) == 0.5
    # overlapping shadow sets: the same SVC written out with scikit-learn directly
    m2, m2y = _conf(rng.uniform(0.3, 1.0, 50))
    n2, n2y = _conf(rng.uniform(0.1, 0.8, 50))
    t2, t2y = _conf(rng.uniform(0.1, 1.0, 30))
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(np.r_[m2[:, 0], n2[:, 0]].reshape(-1, 1),
                                                   np.r_[np.ones(50), np.zeros(50)])
    direct = 1 - clf.predict(t2[:, :1]).mean()
    assert membership.svc_mia_efficacy(m2, m2y, n2, n2y, t2, t2y) == pytest.approx(direct, abs=0)
    assert 0.0 < direct < 1.0
    with pytest.raises(ValueError, match="feature"):
        membership.svc_mia_efficacy(mem, memy, non, nony, fitted, fy, feature="m_entropy")


def _random_probs(rng, n, classes):
    logits = rng.normal(0.0, 3.0, (n, classes))
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), rng.integers(0, classes, n)


def test_risk_histograms_outer_edges_are_the_data_extremes():
    # extremes whose log-spaced edges round inward: 10**log10(lo) > lo and 10**log10(hi) < hi
    lo, hi = 0.08614360858335124, 0.23483989257423196
    rounded = np.logspace(np.log10(lo), np.log10(hi), 6)
    assert rounded[0] > lo and rounded[-1] < hi  # np.histogram on these edges drops both points
    members, non = np.array([lo, 0.1, 0.15]), np.array([0.12, 0.2, hi])
    zeros = np.zeros(3, dtype=np.int64)
    h = R.RiskHistograms.from_values(members, zeros, non, zeros, n_classes=1)
    assert h.edges[0, 0] == lo and h.edges[0, -1] == hi
    assert np.all(np.diff(h.edges[0]) > 0)
    assert h.p_in[0].sum() == pytest.approx(1.0, abs=1e-15)
    assert h.p_out[0].sum() == pytest.approx(1.0, abs=1e-15)
    # bin ratio (hi/lo)^(1/5) = 1.222: 0.1 -> bin 0, 0.15 -> bin 2, 0.12 -> bin 1, 0.2 -> bin 4
    assert h.p_in[0] == pytest.approx([2 / 3, 0, 1 / 3, 0, 0])
    assert h.p_out[0] == pytest.approx([0, 1 / 3, 0, 0, 2 / 3])
    lin = R.RiskHistograms.from_values(members, zeros, non, zeros, n_classes=1, log_bins=False)
    assert lin.edges[0, 0] == lo and lin.edges[0, -1] == hi and lin.p_out[0].sum() == pytest.approx(1.0)


def test_risk_histograms_from_shadow_probs_count_every_point():
    rng = np.random.default_rng(0)
    mp, my = _random_probs(rng, 24, 4)
    npp, ny = _random_probs(rng, 24, 4)
    # the authors' construction (np.logspace edges + np.histogram) loses points on this data
    va, vb = P.modified_entropy(mp, my), P.modified_entropy(npp, ny)
    lost = 0
    for c in range(4):
        a, b = np.maximum(va[my == c], 1e-10), np.maximum(vb[ny == c], 1e-10)
        e = np.logspace(np.log10(min(a.min(), b.min())), np.log10(max(a.max(), b.max())), 6)
        lost += a.size + b.size - np.histogram(a, e)[0].sum() - np.histogram(b, e)[0].sum()
    assert lost > 0
    h = R.RiskHistograms.fit(mp, my, npp, ny)
    for c in range(4):
        assert h.p_in[c].sum() == pytest.approx(1.0, abs=1e-12)
        assert h.p_out[c].sum() == pytest.approx(1.0, abs=1e-12)
        both = np.maximum(np.r_[va[my == c], vb[ny == c]], 1e-10)
        assert h.edges[c, 0] == both.min() and h.edges[c, -1] == both.max()
        counts = np.round(h.p_in[c] * (my == c).sum()).astype(int)
        assert counts.sum() == (my == c).sum()


def test_prs_class_without_shadow_data_is_scored_by_the_rule():
    # binary outputs where every shadow label is 0: class 1 has no shadow point at all
    rng = np.random.default_rng(1)
    mp, _ = _random_probs(rng, 10, 2)
    npp, _ = _random_probs(rng, 10, 2)
    zeros = np.zeros(10, dtype=np.int64)
    h = R.RiskHistograms.fit(mp, zeros, npp, zeros)
    assert h.p_in[1].sum() == 0 and h.p_out[1].sum() == 0 and h.p_in[0].sum() == pytest.approx(1.0)
    tp, _ = _random_probs(rng, 6, 2)
    ty = np.array([0, 1, 0, 1, 0, 1])
    prs = R.privacy_risk_score(h, tp, ty)
    assert np.all(np.isfinite(prs)) and prs[1::2].tolist() == [0.5] * 3  # no evidence: the prior
    assert R.privacy_risk_score(h, tp, ty, prior=0.3)[1::2] == pytest.approx([0.3] * 3)
    # class 0 is scored as with class 0 alone
    alone = R.RiskHistograms.fit(mp, zeros, npp, zeros)
    assert prs[0::2] == pytest.approx(R.privacy_risk_score(alone, tp[0::2], ty[0::2]))
    # members only in class 1 -> 1 (in / (in + 0)), non-members only in class 2 -> 0
    mp3, my3 = _random_probs(rng, 30, 3)
    np3, ny3 = _random_probs(rng, 30, 3)
    my3[my3 == 2], ny3[ny3 == 1] = 0, 0
    my3[:2], ny3[:2] = 1, 2
    h3 = R.RiskHistograms.fit(mp3, my3, np3, ny3)
    assert h3.p_out[1].sum() == 0 and h3.p_in[2].sum() == 0
    t3, _ = _random_probs(rng, 4, 3)
    assert R.privacy_risk_score(h3, t3, np.array([1, 2, 1, 2])).tolist() == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("bad,what", [
    (np.array([[np.nan, 0.5], [0.5, 0.5]]), "NaN"),
    (np.array([[2.0, -1.0], [0.5, 0.5]]), "negative"),
    (np.array([[2.0, 1.5], [0.5, 0.5]]), "sums to 3.5"),
])
def test_entropy_refuses_what_is_not_probabilities(bad, what):
    with pytest.raises(ValueError, match=rf"^probs must be probabilities.*{what}.*apply softmax"):
        P.entropy(bad)


def test_risk_score_refuses_nan_probabilities_naming_the_argument():
    mem, memy = _binary([1.0, 0.5], 0)
    non, nony = _binary([0.5, 0.9], 0)
    nan = mem.copy()
    nan[0, 0] = np.nan
    h = R.RiskHistograms.fit(mem, memy, non, nony)
    with pytest.raises(ValueError, match=r"^probs must be probabilities.*NaN.*apply softmax"):
        R.privacy_risk_score(h, nan, memy)
    with pytest.raises(ValueError, match=r"^member_probs must be probabilities.*NaN"):
        R.RiskHistograms.fit(nan, memy, non, nony)
    with pytest.raises(ValueError, match=r"^nonmember_probs must be probabilities.*NaN"):
        R.RiskHistograms.fit(mem, memy, nan, nony)
