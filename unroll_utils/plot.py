"""The package's one plotting helper: every figure in the notebooks and the main job goes through it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np

# Okabe–Ito colour-blind-safe palette.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
FIGSIZE = (6.0, 4.0)
# Widest figure in inches. SVG output is 72 pt per inch = 96 CSS px per inch, so 9.5 in is 912 px: it fits the
# notebook column of a 1366 x 768 JupyterLab window with the file browser open. Wider layouts stack panels.
MAX_WIDTH = 9.5
PANEL_SIZE = (4.6, 3.5)  # one panel of a multi-panel figure: two side by side fit MAX_WIDTH
# Inline figure format in Jupyter, from $UNROLL_FIGURE_FORMAT: SVG by default; PNG for the stored executed copies
# (docs/executed/, `make executed`), at 96 dpi, so a figure has the pixel width of its SVG (96 CSS px per inch).
FIGURE_FORMATS = ("svg", "png")
PNG_DPI = 96


def figure_format() -> str:
    """The inline figure format, from ``$UNROLL_FIGURE_FORMAT``.

    Returns:
        ``"svg"`` (the default, also for an unset or empty variable) or ``"png"``.

    Raises:
        ValueError: another value (naming the variable and the allowed values).
    """
    fmt = os.environ.get("UNROLL_FIGURE_FORMAT", "").strip().lower() or "svg"
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"UNROLL_FIGURE_FORMAT must be one of {FIGURE_FORMATS}, got "
                         f"{os.environ['UNROLL_FIGURE_FORMAT']!r}")
    return fmt


def setup(svg: bool = True) -> None:
    """House style: one figure size, gridded axes, the fixed palette.

    Args:
        svg: in Jupyter, also set the inline figure format to :func:`figure_format` (SVG unless
            ``$UNROLL_FIGURE_FORMAT=png``, then PNG at :data:`PNG_DPI`).

    Raises:
        ValueError: another ``$UNROLL_FIGURE_FORMAT``.
    """
    matplotlib.rcParams.update({
        "figure.figsize": FIGSIZE, "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 2.0,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "image.cmap": "cividis",
        "savefig.dpi": 150, "savefig.bbox": "tight", "axes.spines.top": False,
        "axes.spines.right": False,
    })
    if svg:
        fmt = figure_format()
        try:
            from matplotlib_inline.backend_inline import set_matplotlib_formats
            set_matplotlib_formats(fmt, **({"dpi": PNG_DPI} if fmt == "png" else {}))
        except Exception:  # not in a Jupyter kernel
            pass


def fit_width(fig, max_width: float = MAX_WIDTH):
    """Shrink ``fig`` in proportion so that it is at most ``max_width`` inches wide.

    Args:
        fig: a matplotlib Figure (narrower figures are left alone).
        max_width: the width limit in inches, > 0.

    Returns:
        The Figure.

    Raises:
        ValueError: ``max_width`` not positive.
    """
    if not max_width > 0:
        raise ValueError(f"max_width must be > 0 inches, got {max_width!r}")
    width, height = fig.get_size_inches()
    if width > max_width:
        fig.set_size_inches(max_width, height * max_width / width)
    return fig


def panels(n: int, *, ncols: int | None = None, panel_size: tuple[float, float] = PANEL_SIZE):
    """A figure with ``n`` panels in rows of ``ncols`` (default: as many ``panel_size`` panels as fit
    :data:`MAX_WIDTH`, so wide layouts are stacked), at most :data:`MAX_WIDTH` inches wide.

    Args:
        n: number of panels, ≥ 1.
        ncols: panels per row (default: as many as fit).
        panel_size: (width, height) of one panel in inches.

    Returns:
        (fig, axes): the Figure and a list of ``n`` Axes in reading order (unused grid cells are removed).

    Raises:
        ValueError: if ``n`` or ``ncols`` is not a positive integer.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer (number of panels), got {n!r}")
    fit = max(1, int(MAX_WIDTH // panel_size[0]))
    ncols = min(n, fit) if ncols is None else ncols
    if not (isinstance(ncols, int) and ncols >= 1):
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    nrows = -(-n // ncols)
    width = min(ncols * panel_size[0], MAX_WIDTH)
    fig, grid = plt.subplots(nrows, ncols, figsize=(width, nrows * panel_size[1]), squeeze=False)
    axes = list(grid.flat)
    for extra in axes[n:]:
        extra.remove()
    return fig, axes[:n]


def plot_curves(x: Sequence[float] | Mapping[str, Sequence[float]], curves: Mapping[str, Sequence[float]],
                *, xlabel: str, ylabel: str, title: str | None = None, ax=None,
                right: Mapping[str, Sequence[float]] | None = None, right_label: str | None = None,
                logx: bool = False, logy: bool = False, scatter: bool = False,
                save: str | Path | None = None):
    """Draw named curves against x (optionally a second y-axis), in the house style.

    Args:
        x: shared x values (length L), or a mapping name → x values per curve.
        curves: name → y values (length L) on the left axis.
        xlabel, ylabel, title: labels.
        ax: an existing Axes (default: a new figure).
        right: name → y values on a twin right axis (e.g. e next to VE: different scales).
        right_label: the right axis label.
        logx, logy: log scales (logy applies to both y axes).
        scatter: markers only (e.g. e against VE).
        save: also write the figure to this path (PNG/SVG/PDF by suffix), parents created.

    Returns:
        The matplotlib Figure, shrunk if needed to at most :data:`MAX_WIDTH` inches wide (:func:`fit_width`).

    Raises:
        ValueError: if a curve's length differs from its x values.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=FIGSIZE)
    else:
        fig = ax.figure
    drawn = [0]  # curves so far (both axes): past the palette, colours repeat with square markers, dashed

    def draw(axis, series):
        handles = []
        for name, ys in series.items():
            xs = np.asarray(x[name] if isinstance(x, Mapping) else x, dtype=float)
            ys = np.asarray(ys, dtype=float)
            if xs.shape != ys.shape:
                raise ValueError(f"curve {name!r} has {ys.size} values for {xs.size} x values")
            lap, slot = divmod(drawn[0], len(PALETTE))
            drawn[0] += 1
            colour, marker = PALETTE[slot], "os^D"[lap % 4]
            if scatter:
                handles.append(axis.scatter(xs, ys, s=14, color=colour, marker=marker, label=name))
            else:
                ok = np.isfinite(ys)
                handles += axis.plot(xs[ok], ys[ok], color=colour, label=name, marker=marker,
                                     markersize=3, linestyle="-" if lap == 0 else "--")
        return handles

    handles = draw(ax, curves)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if right:
        ax2 = ax.twinx()
        handles += draw(ax2, right)
        ax2.set_ylabel(right_label or "")
        ax2.grid(False)
        if logy:
            ax2.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], frameon=False)
    fit_width(fig)
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save)
    return fig
