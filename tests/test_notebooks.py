"""House rules for every notebook (style guide §4): checked statically; nbval executes them."""

import ast
import json
import re
from pathlib import Path

import pytest

from unroll_utils import plot

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
INDEX = NOTEBOOK_DIR / "00_index.ipynb"  # the reading-order overview: markdown only, no parameters
NOTEBOOKS = [p for p in ALL if p != INDEX]


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _src(cell):
    return "".join(cell["source"])


def test_notebooks_exist_and_are_numbered_in_order():
    assert NOTEBOOKS, "no notebooks found"
    numbers = [int(p.name[:2]) for p in ALL]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_common_rules(path):
    """Title and Binder badge, Python language metadata, committed without outputs (index notebook included)."""
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    lang = nb["metadata"].get("language_info", {})
    assert lang.get("name") == "python" and lang.get("file_extension") == ".py", \
        "language_info (nbconvert --to script needs name and file_extension)"
    cells = nb["cells"]
    first = _src(cells[0])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# ")
    assert "mybinder.org" in first and path.name in first, "Binder badge pointing at this notebook"
    # output policy: notebooks are committed stripped (nbval --nbval-lax runs them in CI)
    for i, c in enumerate(cells):
        if c["cell_type"] == "code":
            assert c.get("outputs") == [] and c.get("execution_count") is None, f"cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_house_rules(path):
    cells = _load(path)["cells"]
    params = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assert cells[params[0]]["cell_type"] == "code"
    assert "UNROLL_SMOKE" in _src(cells[params[0]]), "the parameters cell reads UNROLL_SMOKE"
    headings = [l.strip() for c in cells if c["cell_type"] == "markdown"
                for l in _src(c).splitlines() if l.startswith("#")]
    assert any(re.match(r"#+ Summary", h) for h in headings)
    assert any(re.match(r"#+ References", h) for h in headings)
    src = "".join(_src(c) for c in cells if c["cell_type"] == "code")
    assert "tqdm.auto" in src or "progress=" in src, "progress bars through tqdm.auto"
    assert "plot_curves" in src, "figures through unroll_utils.plot.plot_curves"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_validated_right_after_the_parameters_cell(path):
    """Issue: papermill injects strings and floats (``-p SMOKE false``, ``-p N_TRAIN 1e3``). Every name of the
    parameters cell is passed through ``unroll_utils.params`` in the very next cell, under its own name."""
    cells = _load(path)["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse(_src(cells[i]))
    names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)]
    for node in tree.body:  # literals only (the UNROLL_SMOKE read is the one exception)
        if isinstance(node, ast.Assign) and not isinstance(node.value, ast.Call):
            ast.literal_eval(node.value)
    assert "SMOKE" in names
    nxt = _src(cells[i + 1])
    assert cells[i + 1]["cell_type"] == "code"
    for name in names:
        assert re.search(rf'^{name}\s*=\s*params\.\w+\(\s*"{name}"\s*,\s*{name}\b', nxt, re.M), \
            f"{name} is not validated with unroll_utils.params in the cell after the parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_fit_a_laptop_screen(path):
    """Every explicit figure size is at most plot.MAX_WIDTH inches wide (wider layouts: plot.panels stacks them);
    plot_curves also shrinks any figure it draws on, and tests/test_browser.py measures the rendered figures."""
    src = "".join(_src(c) for c in _load(path)["cells"] if c["cell_type"] == "code")
    widths = [float(w) for w in re.findall(r"figsize=\(\s*([0-9.]+)", src)]
    assert all(w <= plot.MAX_WIDTH for w in widths), f"figure wider than plot.MAX_WIDTH: {widths}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_names_no_material_outside_the_repository(path):
    """No internal notes reach the reader (a paper digest, reconstruction marks, citation warnings)."""
    text = "\n".join(_src(c) for c in _load(path)["cells"])
    for banned in ("paper digest", "our digest", "digest §", "[RECON]", "should not be cited"):
        assert banned not in text, banned
    if int(path.name[:2]) <= 5:  # the tutorials name the reference scripts instead of internal experiment labels
        assert not re.search(r"\bExp [A-F]\b", text), "unexplained experiment label"


def test_index_notebook_lists_every_notebook():
    if not INDEX.exists():
        pytest.skip("no index notebook")
    text = "\n".join(_src(c) for c in _load(INDEX)["cells"])
    for p in NOTEBOOKS:
        assert p.name in text, f"{p.name} missing from the reading-order table of {INDEX.name}"
