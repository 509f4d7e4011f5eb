"""The bootstrap confidence interval over seeds (metrics.bootstrap_ci)."""

import math

import numpy as np
import pytest
from scipy import stats

from unroll_utils import metrics


def test_known_normal_case_matches_the_normal_interval():
    v = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    est, lo, hi = metrics.bootstrap_ci(v)
    half = 1.959964 * v.std(ddof=1) / math.sqrt(v.size)  # the CLT interval the bootstrap approximates
    assert est == pytest.approx(v.mean())
    assert lo == pytest.approx(v.mean() - half, abs=0.02) and hi == pytest.approx(v.mean() + half, abs=0.02)


def test_same_as_scipy_percentile_bootstrap_and_reproducible():
    v = [0.91, 0.95, 0.88, 0.97, 0.93]
    est, lo, hi = metrics.bootstrap_ci(v, seed=3)
    ref = stats.bootstrap((np.array(v),), np.mean, method="percentile", n_resamples=9999,
                          rng=np.random.default_rng(3)).confidence_interval
    assert (lo, hi) == (ref.low, ref.high)
    assert metrics.bootstrap_ci(v, seed=3) == (est, lo, hi)
    assert min(v) <= lo < est < hi <= max(v)


def test_degenerate_inputs():
    assert metrics.bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert metrics.bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2), rel=1e-15)
    assert all(math.isnan(x) for x in metrics.bootstrap_ci([float("nan")]))
    assert metrics.bootstrap_ci([1.0, float("nan"), 3.0], statistic=np.median)[0] == 2.0
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_ci([1, 2], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        metrics.bootstrap_ci([1, 2], n_resamples=10)


def test_t_interval_closed_form():
    """mean ± t_{0.975, 2}·s/√3 for (1, 2, 3): s = 1, t = 4.302652729749464."""
    import math

    from unroll_utils.metrics import t_interval

    mean, low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert mean == 2.0 and math.isclose(low, 2 - half, rel_tol=1e-12) and math.isclose(high, 2 + half, rel_tol=1e-12)
    assert math.isnan(t_interval([5.0])[1])
    import pytest
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=1.0)
