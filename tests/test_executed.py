"""The executed copies of the notebooks (docs/executed/, `make executed`) that the book and GitHub show: one per
notebook, outputs kept (also through nbstripout), no failed cell, figures as PNG, nothing machine-specific, small;
and the cleaning and writing steps of docs/execute.py."""

import copy
import importlib.util
import json
import re
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "docs" / "executed"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COPIES = sorted(EXECUTED.glob("*.ipynb"))
MAX_FILE_BYTES = 1_500_000
MAX_TOTAL_BYTES = 8_000_000
# where an absolute path of the machine that ran the copies would start: the checkout, temp files, home, packages
MACHINE_PATHS = re.compile("|".join([re.escape(str(d).rstrip("/") + "/")
                                     for d in (ROOT, tempfile.gettempdir(), Path.home())] + ["site-packages"]))


def _load_execute():
    spec = importlib.util.spec_from_file_location("docs_execute", ROOT / "docs" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_has_an_executed_copy_and_no_other():
    assert [p.name for p in COPIES] == [p.name for p in NOTEBOOKS], "run `make executed`"


@pytest.mark.parametrize("path", COPIES, ids=lambda p: p.name)
def test_executed_copy_has_outputs_and_nothing_machine_specific(path):
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    assert nb["metadata"]["keep_output"] is True
    assert "papermill" not in nb["metadata"] and "widgets" not in nb["metadata"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["execution_count"] is not None for c in code), "a cell was not run"
    outputs = [o for c in code for o in c["outputs"]]
    assert outputs, "no outputs stored"
    assert not [o for o in outputs if o["output_type"] == "error"], "a cell failed"
    for o in outputs:
        data = o.get("data", {})
        assert "image/svg+xml" not in data, "figures are stored as PNG (UNROLL_FIGURE_FORMAT=png)"
        assert "application/vnd.jupyter.widget-view+json" not in data
    assert not MACHINE_PATHS.search(text), "an absolute path is stored"
    assert path.stat().st_size <= MAX_FILE_BYTES, f"{path.name}: {path.stat().st_size / 1e6:.2f} MB"


def test_executed_copies_are_small_in_total():
    total = sum(p.stat().st_size for p in COPIES)
    assert total <= MAX_TOTAL_BYTES, f"docs/executed/ holds {total / 1e6:.1f} MB"


def test_nbstripout_keeps_the_outputs_of_an_executed_copy():
    nbformat = pytest.importorskip("nbformat")
    strip = pytest.importorskip("nbstripout._utils").strip_output
    assert COPIES, "run `make executed`"
    nb = nbformat.read(str(COPIES[1] if len(COPIES) > 1 else COPIES[0]), as_version=4)
    before = sum(len(c.get("outputs", [])) for c in nb.cells)
    stripped = strip(copy.deepcopy(nb), keep_output=None, keep_count=False, keep_id=True)
    assert before > 0 and sum(len(c.get("outputs", [])) for c in stripped.cells) == before
    nb.metadata.pop("keep_output")  # the same notebook without the flag loses them
    stripped = strip(nb, keep_output=None, keep_count=False, keep_id=True)
    assert sum(len(c.get("outputs", [])) for c in stripped.cells) == 0


def test_cleaning_replaces_paths_addresses_and_widgets(tmp_path):
    ex = _load_execute()
    cache = tmp_path / "unroll-executed-cache-x"
    clean = ex.Cleaner(cache)
    assert clean(f"wrote {cache}/w0_ab.pt") == "wrote cache/w0_ab.pt"
    assert clean(f"read {ex.NOTEBOOKS}/cache/x.pt and {ex.ROOT}/unroll_utils/data.py") == \
        "read cache/x.pt and unroll_utils/data.py"
    assert clean("<Figure at 0x7f3a2b1c9d50>") == "<Figure at 0x…>"
    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR", "text/plain": ["F"]}}
    state = {"1": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_s", "IPY_MODEL_o"]}},
             "s": {"model_name": "SelectionSliderModel", "state": {}},
             "o": {"model_name": "OutputModel", "state": {"outputs": [figure]}},
             "2": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_b"]}},  # a tqdm bar: dropped
             "b": {"model_name": "FloatProgressModel", "state": {}},
             "3": {"model_name": "IntSliderModel", "state": {}}}
    widgets = {"application/vnd.jupyter.widget-state+json": {"state": state, "version_major": 2}}
    nb = {"metadata": {"papermill": {"duration": 3.2}, "widgets": widgets, "kernelspec": {"name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5,
          "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["see [x](../README.md)"]},
                    {"cell_type": "code", "execution_count": 1,
                     "metadata": {"papermill": {"duration": 1.0}, "execution": {"a": 1}, "tags": ["t"]},
                     "source": ["f()"],
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": [f"{cache}/a\n"]},
                                 {"output_type": "display_data", "metadata": {},
                                  "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "1"},
                                           "text/plain": ["interactive(...)"]}},
                                 {"output_type": "display_data", "metadata": {},
                                  "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "2"}}},
                                 {"output_type": "display_data", "metadata": {},  # closed by the end: dropped
                                  "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "gone"}}}]}]}
    out = ex.clean_notebook(copy.deepcopy(nb), clean, "notebooks/x.ipynb")
    assert out["metadata"]["keep_output"] is True and set(out["metadata"]) == {"kernelspec", "keep_output",
                                                                                "unroll_executed"}
    md, code = out["cells"]
    assert md["source"] == ["see [x](../../README.md)"]  # docs/executed/ is two folders below the root
    assert code["metadata"] == {"tags": ["t"]}
    note = ex.PANEL_NOTE + "\n"  # merged into the cell's printed lines: one block per stream
    # then the panel's figure at its first values, from the saved widget state
    assert code["outputs"] == [{"output_type": "stream", "name": "stdout", "text": ["cache/a\n", note]}, figure]
    # a live widget without an Output widget (a slider alone): a note, once per cell
    slider = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "3"}}}
    nb["cells"][1]["outputs"] = [slider, slider]
    code = ex.clean_notebook(copy.deepcopy(nb), clean, "notebooks/x.ipynb")["cells"][1]
    assert code["outputs"] == [{"output_type": "stream", "name": "stdout", "text": [ex.WIDGET_NOTE + "\n"]}]


def test_write_is_atomic_and_idempotent(tmp_path, monkeypatch):
    ex = _load_execute()
    path = tmp_path / "sub" / "n.ipynb"
    nb = {"cells": [], "metadata": {"b": 1, "a": "é"}, "nbformat": 4, "nbformat_minor": 5}
    ex.write_atomically(nb, path)
    first = path.read_bytes()
    ex.write_atomically(nb, path)
    assert path.read_bytes() == first and first.endswith(b"\n") and json.loads(first) == nb
    assert [p.name for p in path.parent.iterdir()] == ["n.ipynb"], "a temporary file was left behind"

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(ex.json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        ex.write_atomically({"other": 1}, path)
    assert path.read_bytes() == first and [p.name for p in path.parent.iterdir()] == ["n.ipynb"]


def test_select_names_an_unknown_notebook():
    ex = _load_execute()
    assert [p.name for p in ex.select(["3"])] == [p.name for p in NOTEBOOKS if p.name.startswith("03_")]
    with pytest.raises(SystemExit, match=r"notebook '99' not found; choose from: 00_index.ipynb"):
        ex.select(["99"])


def test_check_names_a_copy_whose_notebook_changed(tmp_path, monkeypatch, capsys):
    ex = _load_execute()
    (tmp_path / "nb").mkdir()
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["see [r](../README.md)"]}
    src = tmp_path / "nb" / "01_a.ipynb"
    src.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(ex, "NOTEBOOKS", tmp_path / "nb")
    monkeypatch.setattr(ex, "EXECUTED", tmp_path / "ex")
    assert ex.main(["--check"]) == 1 and "01_a.ipynb (no copy)" in capsys.readouterr().out
    ex.write_atomically(ex.clean_notebook(json.loads(src.read_text()), ex.Cleaner(tmp_path), "x"),
                        tmp_path / "ex" / "01_a.ipynb")
    assert ex.main(["--check"]) == 0  # the link rewritten for docs/executed/ is not a change
    cell["source"] = ["new text"]
    src.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert ex.main(["--check"]) == 1 and "stale executed copies: 01_a.ipynb" in capsys.readouterr().out


def test_copies_keep_the_notebooks_cell_ids():
    ex = _load_execute()
    nb = {"cells": [{"id": "x1"}, {"id": "x2"}]}
    ex.keep_ids(nb, {"cells": [{"id": "a"}, {}]})  # a notebook without ids: the cell's position
    assert nb["cells"] == [{"id": "a"}, {"id": "1"}]
    for path in COPIES:  # the stored copies: a rerun rewrites no id (a copy of a since-edited notebook with
        # other cells is stale, which `docs/execute.py --check` reports, not an id problem)
        src = json.loads((ROOT / "notebooks" / path.name).read_text(encoding="utf-8"))["cells"]
        got = json.loads(path.read_text(encoding="utf-8"))["cells"]
        if len(got) != len(src):
            continue
        assert [c.get("id") for c in got] == [c.get("id", str(i)) for i, c in enumerate(src)], path.name


def test_consecutive_prints_are_one_block():
    # the kernel splits prints into stream messages by timing: the copy stores one block per stream
    ex = _load_execute()
    out = lambda name, text: {"output_type": "stream", "name": name, "text": text}
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "metadata": {}, "source": [], "execution_count": 1,
                                     "outputs": [out("stdout", ["a in 0.1 s"]), out("stdout", ["\n", "b\n"]),
                                                 out("stderr", ["w\n"]), out("stdout", ["c\n"])]}]}
    got = ex.clean_notebook(nb, ex.Cleaner(Path("/nonexistent")), "x")["cells"][0]["outputs"]
    assert got == [out("stdout", ["a in 0.1 s\n", "b\n"]), out("stderr", ["w\n"]), out("stdout", ["c\n"])]
