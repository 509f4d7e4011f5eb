"""Intervals over seeds: the one place where a mean over replicates gets its uncertainty.

The few-seed policy, the same everywhere: a two-sided Student-t interval by default (exact for
normal replicates, and honest with 3–5 seeds, where a bootstrap's percentile interval is too
narrow: with n values it cannot reach past the smallest and largest); the percentile bootstrap as an
option; with fewer than two finite values the bounds are NaN, not an error, so a table of a partly
finished sweep still prints. :func:`seed_summary` applies it to a table, per group and column;
:func:`wide` turns its long table into one row per group for printing;
:func:`t_interval` and :func:`bootstrap_ci` are its two intervals for one list of values.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_METHODS = ("t", "bootstrap")


def seed_summary(table: pd.DataFrame, by: str | Sequence[str], columns: str | Sequence[str],
                 method: str = "t", level: float = 0.95, *, seed: int = 0,
                 n_resamples: int = 9999) -> pd.DataFrame:
    """Mean and confidence interval over seeds of each column, per group: one row per group and
    column.

    The few-seed policy (see the module docstring): ``method="t"`` (default) gives
    mean ± t_{(1+level)/2, n−1}·s/√n (:func:`t_interval`); ``method="bootstrap"`` the percentile
    bootstrap of the mean with ``n_resamples`` resamples drawn from ``numpy.random.default_rng(seed)``
    (:func:`bootstrap_ci`). Non-finite values are dropped first; ``n`` counts the values left.
    With n < 2 the bounds are NaN (and with n = 0 the mean too): no error, so a partial table
    still summarises.

    Args:
        table: one row per run (e.g. per seed), with the columns ``by`` and ``columns``.
        by: grouping column(s) (e.g. ``"lam"`` or ``["optimizer", "lr"]``); ``[]`` for one group.
        columns: the numeric column(s) to summarise (e.g. ``["pearson", "ve"]``).
        method: ``"t"`` or ``"bootstrap"``.
        level: the interval's coverage, in (0, 1).
        seed, n_resamples: of the bootstrap (``n_resamples`` ≥ 100); unused by ``"t"``.

    Returns:
        DataFrame with the ``by`` columns, then ``column`` (the summarised column's name),
        ``mean``, ``low``, ``high`` and ``n``; groups in sorted order (a missing key, NaN or None, is a
        group of its own), columns in the given order.

    Raises:
        ValueError: ``method`` not in ``SUMMARY_METHODS``, ``level`` outside (0, 1),
            ``n_resamples`` < 100, or a name in ``by``/``columns`` that is not a column of ``table``.

    Source: Student-t interval, e.g. Casella & Berger, *Statistical Inference* (2002), §9.2;
    bootstrap, Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13.
    """
    by = [by] if isinstance(by, str) else list(by)
    columns = [columns] if isinstance(columns, str) else list(columns)
    if method not in SUMMARY_METHODS:
        raise ValueError(f"method must be one of {SUMMARY_METHODS}; got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100; got {n_resamples}")
    missing = [c for c in by + columns if c not in table.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r} in the table (columns: {list(table.columns)})")
    groups = table.groupby(by, sort=True, dropna=False) if by else [((), table)]  # a None key is a group
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for col in columns:
            v = group[col].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size < 2:
                mean, low, high = (float(v.mean()) if v.size else math.nan), math.nan, math.nan
            elif method == "t":
                mean, low, high = t_interval(v, level)
            else:
                mean, low, high = bootstrap_ci(v, confidence=level, n_resamples=n_resamples, seed=seed)
            rows.append({**dict(zip(by, key)), "column": col, "mean": mean, "low": low, "high": high,
                         "n": int(v.size)})
    return pd.DataFrame(rows, columns=[*by, "column", "mean", "low", "high", "n"])


def wide(summary: pd.DataFrame) -> pd.DataFrame:
    """A :func:`seed_summary` table with one row per group: ``<col>``, ``<col>_low``, ``<col>_high``.

    Args:
        summary: the long table of :func:`seed_summary` (the ``by`` columns, then ``column``, ``mean``,
            ``low``, ``high``, ``n``).

    Returns:
        DataFrame with the ``by`` columns, ``n`` (the largest count of finite values over the
        summarised columns of the group: the number of seeds when none failed), then for each
        summarised column, in its order, ``<col>`` (the mean), ``<col>_low`` and ``<col>_high``;
        groups in the summary's order.

    Raises:
        ValueError: ``summary`` lacks one of ``column``, ``mean``, ``low``, ``high``, ``n``.
    """
    need = ["column", "mean", "low", "high", "n"]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise ValueError(f"summary must be a seed_summary table; it has no column {missing[0]!r}")
    by = list(summary.columns[:list(summary.columns).index("column")])
    columns = list(dict.fromkeys(summary["column"]))
    keys = summary[by].drop_duplicates() if by else pd.DataFrame(index=[0])
    rows = []
    for key in keys.itertuples(index=False):
        mask = np.ones(len(summary), dtype=bool)
        for name, value in zip(by, key):
            mask &= (summary[name].isna() if pd.isna(value) else summary[name] == value).to_numpy()
        group = summary[mask].set_index("column")
        row = {**dict(zip(by, key)), "n": int(group["n"].max())}
        for col in columns:
            row[col], row[f"{col}_low"], row[f"{col}_high"] = group.loc[col, ["mean", "low", "high"]]
        rows.append(row)
    names = [f"{c}{suffix}" for c in columns for suffix in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=[*by, "n", *names])


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of independent replicates (one value per
    seed): mean ± t_{(1+level)/2, n−1}·s/√n with s the unbiased standard deviation.

    Args:
        values: (n,) finite values. level: coverage in (0, 1).

    Returns:
        (mean, low, high); low = high = NaN when n < 2.

    Raises:
        ValueError: ``values`` empty or ``level`` outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("values must hold at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def bootstrap_ci(values: Sequence[float], statistic=np.mean, *, confidence: float = 0.95,
                 n_resamples: int = 9999, seed: int = 0) -> tuple[float, float, float]:
    """A statistic of per-seed values and its percentile-bootstrap confidence interval.

    Used for results over seeds (e.g. the mean Pearson correlation of e with VE over 5 seeds).
    The resampling is :func:`scipy.stats.bootstrap` (percentile method, seeded), so the interval
    is reproducible. Non-finite values are dropped first.

    Args:
        values: (S,) one value per seed/run.
        statistic: a numpy reduction with an ``axis`` argument (default the mean).
        confidence: the interval's level in (0, 1).
        n_resamples: bootstrap resamples, ≥ 100.
        seed: seed of the resampling.

    Returns:
        ``(estimate, low, high)``: the statistic of ``values`` and the interval's bounds; with a
        single finite value the bounds are that value's statistic (a zero-width interval says
        nothing: report the number of seeds beside it); with none, three NaNs.

    Raises:
        ValueError: ``confidence`` not in (0, 1) or ``n_resamples`` < 100.

    Source: B. Efron and R. Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100; got {n_resamples}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    estimate = float(statistic(v, axis=0))
    if v.size == 1 or np.ptp(v) == 0:
        return (estimate, estimate, estimate)
    res = stats.bootstrap((v,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return (estimate, float(res.confidence_interval.low), float(res.confidence_interval.high))
