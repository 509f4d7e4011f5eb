"""Intervals over seeds (unroll_utils.statistics): the t interval, the bootstrap and seed_summary."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from unroll_utils import statistics


def test_known_normal_case_matches_the_normal_interval():
    v = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    est, lo, hi = statistics.bootstrap_ci(v)
    half = 1.959964 * v.std(ddof=1) / math.sqrt(v.size)  # the CLT interval the bootstrap approximates
    assert est == pytest.approx(v.mean())
    assert lo == pytest.approx(v.mean() - half, abs=0.02) and hi == pytest.approx(v.mean() + half, abs=0.02)


def test_same_as_scipy_percentile_bootstrap_and_reproducible():
    v = [0.91, 0.95, 0.88, 0.97, 0.93]
    est, lo, hi = statistics.bootstrap_ci(v, seed=3)
    ref = stats.bootstrap((np.array(v),), np.mean, method="percentile", n_resamples=9999,
                          rng=np.random.default_rng(3)).confidence_interval
    assert (lo, hi) == (ref.low, ref.high)
    assert statistics.bootstrap_ci(v, seed=3) == (est, lo, hi)
    assert min(v) <= lo < est < hi <= max(v)


def test_degenerate_inputs():
    assert statistics.bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert statistics.bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2), rel=1e-15)
    assert all(math.isnan(x) for x in statistics.bootstrap_ci([float("nan")]))
    assert statistics.bootstrap_ci([1.0, float("nan"), 3.0], statistic=np.median)[0] == 2.0
    with pytest.raises(ValueError, match="confidence"):
        statistics.bootstrap_ci([1, 2], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        statistics.bootstrap_ci([1, 2], n_resamples=10)


def test_t_interval_closed_form():
    """mean ± t_{0.975, 2}·s/√3 for (1, 2, 3): s = 1, t = 4.302652729749464."""
    import math

    from unroll_utils.statistics import t_interval

    mean, low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert mean == 2.0 and math.isclose(low, 2 - half, rel_tol=1e-12) and math.isclose(high, 2 + half, rel_tol=1e-12)
    assert math.isnan(t_interval([5.0])[1])
    import pytest
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=1.0)


T_975_2 = 4.302652729749464  # t_{0.975, 2 degrees of freedom}


def test_seed_summary_t_interval_by_hand_per_group_and_column():
    runs = pd.DataFrame({"lam": [0.1, 0.1, 0.1, 1.0, 1.0, 2.0],
                         "ve": [1.0, 2.0, 3.0, 5.0, 7.0, 4.0],
                         "e": [10.0, 10.0, 10.0, 0.0, float("nan"), 3.0]})
    out = statistics.seed_summary(runs, "lam", ["ve", "e"])
    assert list(out.columns) == ["lam", "column", "mean", "low", "high", "n"]
    assert list(zip(out.lam, out.column)) == [(0.1, "ve"), (0.1, "e"), (1.0, "ve"), (1.0, "e"),
                                              (2.0, "ve"), (2.0, "e")]
    r = out.iloc[0]  # (1, 2, 3): s = 1, mean ± t·1/√3
    assert (r["mean"], r.n) == (2.0, 3)
    assert math.isclose(r.low, 2 - T_975_2 / math.sqrt(3), rel_tol=1e-12)
    assert math.isclose(r.high, 2 + T_975_2 / math.sqrt(3), rel_tol=1e-12)
    assert tuple(out.iloc[1][["mean", "low", "high"]]) == (10.0, 10.0, 10.0)  # zero spread
    # (5, 7): s = √2, half-width t_{0.975, 1}·√2/√2 = 12.706204736174698
    r = out.iloc[2]
    assert math.isclose(r.high - r["mean"], 12.706204736174698, rel_tol=1e-12) and r.n == 2
    # the same as scipy's t interval, independently
    lo, hi = stats.t.interval(0.95, 1, loc=6.0, scale=stats.sem([5.0, 7.0]))
    assert math.isclose(r.low, lo, rel_tol=1e-12) and math.isclose(r.high, hi, rel_tol=1e-12)
    # NaN dropped, one value left; and a single seed: NaN bounds, no error
    for i in (3, 4, 5):
        assert out.iloc[i].n == 1 and math.isnan(out.iloc[i].low) and math.isnan(out.iloc[i].high)
    assert out.iloc[3]["mean"] == 0.0 and out.iloc[5]["mean"] == 3.0


def test_seed_summary_level_no_groups_bootstrap_and_errors():
    runs = pd.DataFrame({"seed": range(5), "r": [0.91, 0.95, 0.88, 0.97, 0.93]})
    one = statistics.seed_summary(runs, [], "r", level=0.9)
    assert len(one) == 1 and one.n[0] == 5
    half = stats.t.ppf(0.95, 4) * np.std(runs.r, ddof=1) / math.sqrt(5)
    assert math.isclose(one.high[0] - one["mean"][0], half, rel_tol=1e-12)
    boot = statistics.seed_summary(runs, [], "r", method="bootstrap", seed=3)
    assert tuple(boot.iloc[0][["mean", "low", "high"]]) == statistics.bootstrap_ci(runs.r, seed=3)
    t95 = statistics.seed_summary(runs, [], "r")
    assert t95.low[0] < boot.low[0] and boot.high[0] < t95.high[0]  # the bootstrap is narrower with 5 seeds
    empty = statistics.seed_summary(runs.assign(r=float("nan")), [], "r")
    assert empty.n[0] == 0 and all(math.isnan(empty.iloc[0][c]) for c in ("mean", "low", "high"))
    with pytest.raises(ValueError, match="method must be one of"):
        statistics.seed_summary(runs, [], "r", method="normal")
    with pytest.raises(ValueError, match="level"):
        statistics.seed_summary(runs, [], "r", level=95)
    with pytest.raises(ValueError, match="no column 'lam'"):
        statistics.seed_summary(runs, "lam", "r")


def test_seed_summary_keeps_a_group_whose_key_is_missing():
    table = pd.DataFrame({"lam": [None, None, 1.0, 1.0], "ve": [1.0, 3.0, 2.0, 4.0]})
    out = statistics.seed_summary(table, "lam", "ve")
    assert len(out) == 2 and out.n.tolist() == [2, 2]
    assert sorted(out["mean"].tolist()) == [2.0, 3.0]


def test_wide_one_row_per_group_with_two_keys_by_hand():
    # the per-(kind, method) table of notebook 11 and the per-optimiser table of notebook 07
    table = pd.DataFrame({"kind": ["class"] * 3 + ["random1"] * 2, "method": ["m"] * 5,
                          "ve": [1.0, 2.0, 3.0, 5.0, float("nan")], "acc": [0.5, 0.5, 0.5, 0.9, 0.7]})
    out = statistics.wide(statistics.seed_summary(table, ["kind", "method"], ["ve", "acc"]))
    assert list(out.columns) == ["kind", "method", "n", "ve", "ve_low", "ve_high",
                                 "acc", "acc_low", "acc_high"]
    c = out.set_index("kind").loc["class"]
    assert (c.n, c.ve, c.acc, c.acc_low, c.acc_high) == (3, 2.0, 0.5, 0.5, 0.5)
    assert math.isclose(c.ve_low, 2 - T_975_2 / math.sqrt(3), rel_tol=1e-12)
    assert math.isclose(c.ve_high, 2 + T_975_2 / math.sqrt(3), rel_tol=1e-12)
    r = out.set_index("kind").loc["random1"]  # ve: one finite value, NaN bounds; n counts the seeds of acc
    assert r.n == 2 and r.ve == 5.0 and math.isnan(r.ve_low) and math.isnan(r.ve_high)
    assert math.isclose(r.acc_high - r.acc, 12.706204736174698 * 0.1, rel_tol=1e-12)  # s = 0.1·√2
    flat = statistics.wide(statistics.seed_summary(table, [], "acc"))
    assert list(flat.columns) == ["n", "acc", "acc_low", "acc_high"] and flat.n[0] == 5
    missing = statistics.wide(statistics.seed_summary(table.assign(kind=None), "kind", "acc"))
    assert len(missing) == 1 and missing.n[0] == 5
    with pytest.raises(ValueError, match="no column 'low'"):
        statistics.wide(pd.DataFrame({"column": ["ve"], "mean": [1.0]}))
