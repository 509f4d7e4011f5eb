"""The plotting helper keeps every figure within plot.MAX_WIDTH inches (a 1366-px JupyterLab window)."""

import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from unroll_utils import plot  # noqa: E402


def _svg_width_inches(fig):
    # what the notebook shows: the inline backend writes SVG with bbox_inches="tight"; SVG units are points
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    width = re.search(r'<svg[^>]*\swidth="([0-9.]+)pt"', buf.getvalue()).group(1)
    return float(width) / 72.0


def test_max_width_fits_a_laptop_jupyterlab_window():
    # 96 CSS px per inch; 1366 px minus the activity bar, a 250-px file browser, prompts and padding
    assert plot.MAX_WIDTH * 96 <= 1366 - 33 - 250 - 120


def test_plot_curves_shrinks_a_too_wide_figure():
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for ax in axes:
        plot.plot_curves([1, 2, 3], {"a": [1, 4, 9]}, xlabel="x", ylabel="y", ax=ax)
    w, h = fig.get_size_inches()
    assert w == pytest.approx(plot.MAX_WIDTH) and h == pytest.approx(4.3 * plot.MAX_WIDTH / 16)
    assert _svg_width_inches(fig) <= plot.MAX_WIDTH + 1e-6
    plt.close(fig)


def test_plot_curves_leaves_a_narrow_figure_alone():
    fig = plot.plot_curves([1, 2], {"a": [1, 2]}, xlabel="x", ylabel="y")
    assert tuple(fig.get_size_inches()) == pytest.approx(plot.FIGSIZE)
    plt.close(fig)


@pytest.mark.parametrize("n, rows, cols", [(1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 2, 2), (5, 3, 2)])
def test_panels_stack_what_does_not_fit(n, rows, cols):
    fig, axes = plot.panels(n)
    assert len(axes) == n and len(fig.axes) == n
    assert axes[0].get_subplotspec().get_gridspec().get_geometry() == (rows, cols)
    assert fig.get_size_inches()[0] <= plot.MAX_WIDTH
    for ax in axes:
        plot.plot_curves([1, 2], {"a": [1, 2]}, xlabel="x", ylabel="y", ax=ax)
    assert _svg_width_inches(fig) <= plot.MAX_WIDTH + 1e-6
    plt.close(fig)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n must be"):
        plot.panels(0)
    with pytest.raises(ValueError, match="ncols"):
        plot.panels(2, ncols=0)
    with pytest.raises(ValueError, match="max_width"):
        plot.fit_width(plt.figure(), max_width=0)


def test_more_curves_than_colours_stay_distinguishable():
    n = len(plot.PALETTE) + 2
    fig = plot.plot_curves([0, 1], {f"c{i}": [i, i + 1] for i in range(n)}, xlabel="x", ylabel="y")
    lines = fig.axes[0].get_lines()
    styles = [(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in lines]
    assert len(lines) == n and len(set(styles)) == n  # no two curves look alike
    assert lines[0].get_color() == lines[len(plot.PALETTE)].get_color()  # colours repeat, shapes differ
    plt.close(fig)
    fig = plot.plot_curves([0, 1], {f"c{i}": [i, i + 1] for i in range(n)}, xlabel="x", ylabel="y", scatter=True)
    assert len(fig.axes[0].collections) == n
    plt.close(fig)


@pytest.mark.parametrize("env, expected", [(None, (("svg",), {})), ("png", (("png",), {"dpi": 96})),
                                           (" PNG ", (("png",), {"dpi": 96})), ("svg", (("svg",), {}))])
def test_setup_picks_the_inline_format_from_the_environment(monkeypatch, env, expected):
    # the executed copies of docs/executed/ are run with UNROLL_FIGURE_FORMAT=png; notebooks default to SVG
    import matplotlib_inline.backend_inline as inline

    calls = []
    monkeypatch.setattr(inline, "set_matplotlib_formats", lambda *f, **kw: calls.append((f, kw)))
    if env is None:
        monkeypatch.delenv("UNROLL_FIGURE_FORMAT", raising=False)
    else:
        monkeypatch.setenv("UNROLL_FIGURE_FORMAT", env)
    plot.setup()
    assert calls == [expected]
    assert plot.PNG_DPI * plot.MAX_WIDTH <= 1366 - 33 - 250 - 120  # a PNG figure is as wide as its SVG


def test_setup_rejects_an_unknown_figure_format(monkeypatch):
    monkeypatch.setenv("UNROLL_FIGURE_FORMAT", "jpeg")
    with pytest.raises(ValueError, match=r"UNROLL_FIGURE_FORMAT must be one of \('svg', 'png'\), got 'jpeg'"):
        plot.setup()
