"""House rules for every notebook (style guide §4): checked statically; nbval executes them."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist_and_are_numbered_in_order():
    assert NOTEBOOKS, "no notebooks found"
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_house_rules(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = nb["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assert params[0]["cell_type"] == "code"
    assert "UNROLL_SMOKE" in "".join(params[0]["source"]), "the parameters cell reads UNROLL_SMOKE"
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# ")
    assert "mybinder.org" in first and path.name in first, "Binder badge pointing at this notebook"
    headings = [l.strip() for c in cells if c["cell_type"] == "markdown"
                for l in "".join(c["source"]).splitlines() if l.startswith("#")]
    assert any(re.match(r"#+ Summary", h) for h in headings)
    assert any(re.match(r"#+ References", h) for h in headings)
    # output policy: notebooks are committed stripped (nbval --nbval-lax runs them in CI)
    for i, c in enumerate(cells):
        if c["cell_type"] == "code":
            assert c.get("outputs") == [] and c.get("execution_count") is None, f"cell {i} has outputs"
    src = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "tqdm.auto" in src or "progress=" in src, "progress bars through tqdm.auto"
    assert "plot_curves" in src, "figures through unroll_utils.plot.plot_curves"
