"""Aggregating a sweep: every complete run's results in one tidy table, and figures over seeds.

The interval over seeds is the package's one policy, :func:`unroll_utils.statistics.seed_summary`: a
two-sided 95% Student-t interval, mean ± t_{0.975, n−1}·s/√n over the runs that differ only by seed
(exact for normal replicates and honest with the 2–5 seeds a sweep has), or with ``ci: bootstrap`` the
percentile bootstrap of the mean (9,999 resamples from ``numpy.random.default_rng(0)``); non-finite
values are left out of the interval and of ``n``; with fewer than two values the bounds are NaN.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from unroll_utils import results
from unroll_utils.sweep.grid import Grid, check_figures
from unroll_utils.sweep.notebook import GridError
from unroll_utils.sweep.run import status


def _cell(value: Any) -> Any:
    """A table cell for a parameter value (lists and mappings as JSON text, so they can be grouped on)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def collect(grid: Grid) -> pd.DataFrame:
    """Every complete run's results in one tidy table.

    Args:
        grid: the loaded grid (:func:`unroll_utils.sweep.grid.load_grid`).

    Returns:
        DataFrame with ``run``, the run's parameters (every shared and swept one; a parameter whose
        name is also a results column is called ``param_<NAME>``), then the notebook's results
        columns: one row per results row, runs in grid order.

    Raises:
        GridError: if the notebook writes no results table (it has no ``RESULTS_DIR`` parameter).
    """
    if not grid.writes_results:
        raise GridError(f"notebook: {grid.notebook.name} has no RESULTS_DIR parameter, so its runs write no "
                        "results table to aggregate (the executed notebooks are in the run folders)")
    frames = []
    for run in grid.runs():
        if run.state != "done":
            continue
        table, _, _ = results.load_table(run.path / "results")
        params = {(f"param_{k}" if k in table.columns else k): _cell(v) for k, v in run.parameters.items()}
        frames.append(pd.DataFrame({"run": run.name, **params}, index=table.index).join(table))
    if not frames:
        return pd.DataFrame(columns=["run", *grid.parameters, *grid.swept])
    return pd.concat(frames, ignore_index=True)


def _per_run(table: pd.DataFrame, y: str, keys: list[str], rows: str) -> pd.DataFrame:
    """One value of ``y`` per run and ``keys`` group: the run's last row, or the mean of its rows."""
    if rows == "last":
        table = table.groupby("run", sort=False).tail(1)
    return table.groupby(["run", *keys], sort=False, dropna=False)[y].mean().reset_index()


def summarize(table: pd.DataFrame, y: str, x: str, hue: str | None = None, facets: Sequence[str] = (),
              rows: str = "auto", ci: str = "t", level: float = 0.95) -> pd.DataFrame:
    """Mean and CI of ``y`` over runs (seeds) for each value of ``x`` (and ``hue`` and ``facets``).

    Each run first gives one value per group: with ``rows="last"`` its last results row (e.g. the end of
    training), with ``rows="all"`` the mean of its rows in the group (e.g. one row per t when x is t);
    ``"auto"`` is ``last`` when x is a run parameter and ``all`` when x is a results column. The runs
    that share x, hue and facets (they differ only by seed) are then summarised by
    :func:`unroll_utils.statistics.seed_summary` (the policy of the module docstring): ``ci="t"``
    (default) Student's t interval at ``level``, ``ci="bootstrap"`` the percentile bootstrap.

    Args:
        table: a tidy table as :func:`collect` gives it (a ``run`` column, parameters, results columns).
        y: the column summarised; x, hue, facets: the grouping columns.
        rows: ``"last"``, ``"all"`` or ``"auto"``. ci: ``"t"`` or ``"bootstrap"``. level: in (0, 1).

    Returns:
        Columns facets…, hue, x, mean, low, high, n (number of runs with a finite value), sorted; a
        group whose key is missing (an axis value ``None``) is kept.

    Raises:
        KeyError: naming a column that is not in ``table``.
        ValueError: ``ci`` not ``t`` or ``bootstrap``, or ``level`` outside (0, 1).
    """
    from unroll_utils.statistics import seed_summary  # imports scipy: only when intervals are drawn

    keys = [*facets, *([hue] if hue else []), x]
    for name in [y, *keys]:
        if name not in table.columns:
            raise KeyError(f"column {name!r} is not in the table (columns: {', '.join(map(str, table.columns))})")
    if rows == "auto":
        run_level = table.groupby("run")[x].nunique(dropna=False).max() <= 1 if len(table) else True
        rows = "last" if run_level else "all"
    per_run = _per_run(table, y, keys, rows)
    out = []
    for group, values in per_run.groupby(keys, sort=True, dropna=False):  # dropna=False: keep None keys
        interval = seed_summary(values, [], y, method=ci, level=level).iloc[0]
        out.append({**dict(zip(keys, group)), **{k: interval[k] for k in ("mean", "low", "high", "n")}})
    return pd.DataFrame(out, columns=[*keys, "mean", "low", "high", "n"])


def plot_summary(summary: pd.DataFrame, y: str, x: str, hue: str | None = None, title: str | None = None,
                 logx: bool = False, logy: bool = False, save: str | os.PathLike | None = None):
    """Means (lines, through :func:`unroll_utils.plot.plot_curves`) with their CIs (shaded bands).

    Args:
        summary: a :func:`summarize` table (columns ``mean``, ``low``, ``high``, ``n``).
        y: the summarised column, named in the y label.
        x: the column on the x axis.
        hue: a column giving one curve per value (None: one curve).
        title: the axes title.
        logx, logy: log scales.
        save: also write the figure to this path.

    Returns:
        The matplotlib Figure.
    """
    from unroll_utils import plot

    groups = summary.groupby(hue, sort=True) if hue else [(None, summary)]
    xs, means, bands = {}, {}, []
    for value, part in groups:
        label = y if hue is None else f"{hue}={value}"
        part = part.sort_values(x)
        xs[label], means[label] = part[x].to_numpy(float), part["mean"].to_numpy(float)
        bands.append((part[x].to_numpy(float), part["low"].to_numpy(float), part["high"].to_numpy(float)))
    level = "95% CI over seeds" if summary["n"].max() > 1 else "one run per point"
    fig = plot.plot_curves(xs, means, xlabel=x, ylabel=f"{y} (mean, {level})", title=title, logx=logx, logy=logy)
    ax = fig.axes[0]
    for colour, (bx, low, high) in zip(plot.PALETTE, bands):
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            ax.fill_between(bx[ok], low[ok], high[ok], color=colour, alpha=0.2, linewidth=0)
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save)
    return fig


def _facets(grid: Grid, spec: dict) -> list[str]:
    """Axes with more than one value that the figure neither draws on x nor as curves: one figure each."""
    used = {spec["x"], spec.get("hue")}
    return [a for a, values in grid.axes.items() if len(values) > 1 and a not in used]


def _figure(grid: Grid, table: pd.DataFrame, spec: dict, folder: Path) -> list[Path]:
    """Draw one figure spec (one file per facet combination) and save its summary table next to it."""
    import matplotlib.pyplot as plt

    from unroll_utils import plot

    plot.setup(svg=False)
    facets = _facets(grid, spec)
    summary = summarize(table, spec["y"], spec["x"], spec.get("hue"), facets, spec.get("rows", "auto"),
                        spec.get("ci", "t"))
    name = spec.get("name") or "_".join([spec["y"], "vs", spec["x"], *(["by", spec["hue"]] if spec.get("hue")
                                                                        else [])])
    results.save_table(summary, folder / name, config={"figure": spec, "facets": facets})
    written = []
    for key, part in (summary.groupby(facets, sort=True) if facets else [((), summary)]):
        key = key if isinstance(key, tuple) else (key,)
        tag = "_".join(f"{f}={v}" for f, v in zip(facets, key))
        path = folder / (f"{name}_{re.sub(r'[^A-Za-z0-9._=-]+', '-', tag)}.png" if tag else f"{name}.png")
        fig = plot_summary(part, spec["y"], spec["x"], spec.get("hue"), title=tag.replace("_", ", ") or None,
                           logx=bool(spec.get("logx")), logy=bool(spec.get("logy")), save=path)
        plt.close(fig)
        written.append(path)
    return written


def aggregate(grid: Grid, figures: list[dict] | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Collect the complete runs into ``<output>/aggregate.csv`` (+ ``.json`` with the grid and the run
    states), then draw each figure spec (the grid's ``figures`` unless given) into ``<output>/figures/``
    as PNGs plus the summary table of each (columns mean, low, high, n: the mean over seeds and its 95%
    interval, Student's t by default, the percentile bootstrap with ``ci: bootstrap``; see
    :func:`summarize` and the module docstring).

    Args:
        grid: the loaded grid.
        figures: figure specs, mappings with ``y`` and ``x`` and optionally ``hue``, ``rows``,
            ``ci``, ``logx``, ``logy``, ``name`` (default: the grid's ``figures``).

    Returns:
        (the tidy table, the files written).
    """
    table = collect(grid)
    states = status(grid)["state"].value_counts().to_dict()
    written = list(results.save_table(table, grid.output / "aggregate", config={
        "grid": str(grid.path), "notebook": str(grid.notebook), "parameters": grid.parameters,
        "axes": grid.axes, "seeds": grid.seeds, "env": grid.env}, summary={"runs": states}))
    specs = check_figures(grid.figures if figures is None else figures)
    if len(table):
        for spec in specs:
            written += _figure(grid, table, spec, grid.output / "figures")
    return table, written
