"""Run the notebooks in SMOKE mode and store them, outputs kept, in docs/executed/ (what `make executed` runs).

    python docs/execute.py            # every notebooks/NN_*.ipynb, in reading order
    python docs/execute.py 03 07      # only those (by number or file name)
    python docs/execute.py --check    # which copies no longer match their notebook's cells (runs nothing)

Each notebook runs through papermill from ``notebooks/`` (as a reader runs it) with ``UNROLL_SMOKE=1``, one
intra-op thread, progress bars off, figures as PNG (``UNROLL_FIGURE_FORMAT=png``, see ``unroll_utils.plot``) and
one cache folder that starts empty for the whole run, so the copies do not depend on what an earlier run left in
``notebooks/cache``. The executed copy is then cleaned of what differs from run to run or machine to machine
(absolute paths, papermill's timing metadata and random cell ids, memory addresses, how prints were split into
messages), its interactive panels are replaced by the figures they showed at their first values (from the saved
widget state, which is then dropped), and it is written atomically to ``docs/executed/<name>.ipynb`` with
``"keep_output": true`` in its metadata (nbstripout keeps the outputs of such a notebook). A notebook that
fails leaves its previous copy untouched; the command then exits with status 1 and names it. Running every
notebook also removes copies whose source notebook is gone. Printed timings stay: they are what the run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "docs" / "executed"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_NOTE = ("[An interactive panel: it works in a running notebook (JupyterLab, or Binder from the badge at "
               "the top), not on this static page.]")
PANEL_NOTE = ("[An interactive panel, shown below at its first values: move its sliders in a running notebook "
              "(JupyterLab, or Binder from the badge at the top).]")
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json")


def select(names: list[str]) -> list[Path]:
    """The notebooks to run: all ``notebooks/NN_*.ipynb`` in reading order, or those named by number or file
    name. Raises SystemExit naming an unknown one and listing the notebooks."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    chosen = []
    for name in names:
        hits = [p for p in every if p.name == name or p.stem == name or p.name.split("_")[0] == name.zfill(2)]
        if len(hits) != 1:
            raise SystemExit(f"execute.py: notebook {name!r} not found; choose from: "
                             + ", ".join(p.name for p in every))
        chosen.append(hits[0])
    return chosen


class Cleaner:
    """Replaces what differs between machines in the text of outputs: absolute paths, addresses."""

    def __init__(self, cache: Path):
        pairs = [(str(cache), "cache"), (str(NOTEBOOKS) + os.sep, ""), (str(ROOT) + os.sep, ""),
                 (str(ROOT), "."), (sys.prefix, ".venv"), (os.path.realpath(sys.prefix), ".venv"),
                 (str(Path.home()), "~"), (tempfile.gettempdir() + os.sep, "<tmp>/")]
        self.pairs = sorted({a: b for a, b in pairs if len(a) > 1}.items(), key=lambda ab: -len(ab[0]))

    def __call__(self, text: str) -> str:
        for old, new in self.pairs:
            text = text.replace(old, new)
        return re.sub(r"\b0x[0-9a-fA-F]{6,}\b", "0x…", text)


def _clean_text(value, clean: Cleaner):
    if isinstance(value, list):
        return [clean(v) if isinstance(v, str) else v for v in value]
    return clean(value) if isinstance(value, str) else value


def _widget_tree(model_id: str, state: dict) -> list[dict]:
    """The models of widget ``model_id`` and of all its children, in display order, from the saved ``state``."""
    found, todo, seen = [], [model_id], set()
    while todo:
        mid = todo.pop(0)
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        found.append(state[mid])
        children = state[mid].get("state", {}).get("children", [])
        todo += [c[len("IPY_MODEL_"):] for c in children if isinstance(c, str) and c.startswith("IPY_MODEL_")]
    return found


def widget_outputs(model_id: str, state: dict) -> list[dict] | None:
    """What a static page shows for widget ``model_id``, from the saved widget ``state`` (nbclient records it,
    with the outputs of Output widgets): nothing for a progress bar or a widget closed by the end of the run
    (a running notebook no longer shows it either); for an ``interact`` panel, a note and the outputs of its
    Output widgets at its first values; for any other widget, None (a note saying it needs a running
    notebook)."""
    tree = _widget_tree(model_id, state)
    if not tree or any(m.get("model_name", "").endswith("ProgressModel") for m in tree):
        return []
    shown = [dict(o) for m in tree if m.get("model_name") == "OutputModel"
             for o in m.get("state", {}).get("outputs", [])]
    if not shown:
        return None
    return [{"output_type": "stream", "name": "stdout", "text": [PANEL_NOTE + "\n"]}, *shown]


def clean_notebook(nb: dict, clean: Cleaner, source: str) -> dict:
    """The executed notebook, made stable: papermill and timing metadata dropped, widget views replaced by what
    a static page can show (:func:`widget_outputs`), absolute paths and addresses replaced in every text
    output, ``keep_output`` set."""
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    meta = {k: v for k, v in nb["metadata"].items() if k not in ("papermill", "widgets")}
    meta["keep_output"] = True  # nbstripout leaves this notebook's outputs in place
    meta["unroll_executed"] = {"source": source, "preset": "smoke", "command": "make executed"}
    nb["metadata"] = meta
    for cell in nb["cells"]:
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items()
                            if k not in ("papermill", "execution", "ExecuteTime")}
        if cell["cell_type"] == "markdown":
            cell["source"] = _clean_text(cell["source"], lambda s: s.replace("](../", "](../../"))
        if cell["cell_type"] != "code":
            continue
        outputs, noted, raw = [], False, []
        for out in cell.get("outputs", []):  # a panel's outputs take its place
            data = out.get("data", {})
            if out.get("output_type") in ("display_data", "execute_result") and WIDGET_MIME in data:
                shown = widget_outputs(data[WIDGET_MIME].get("model_id", ""), state)
                if shown is not None:
                    raw += shown
                elif not noted:  # one note per cell, however many such widgets it displayed
                    raw.append({"output_type": "stream", "name": "stdout", "text": [WIDGET_NOTE + "\n"]})
                    noted = True
            else:
                raw.append(out)
        for out in raw:
            if out.get("output_type") == "stream":
                out["text"] = _clean_text(out["text"], clean)
            for mime in TEXT_MIMES:
                if mime in out.get("data", {}):
                    out["data"][mime] = _clean_text(out["data"][mime], clean)
            out.get("metadata", {}).pop("execution", None)
            if (out.get("output_type") == "stream" and outputs and outputs[-1].get("output_type") == "stream"
                    and outputs[-1].get("name") == out.get("name")):
                # one block per stream: how the kernel split the prints into messages depends on timing
                text = "".join(outputs[-1]["text"]) + "".join(out["text"])
                outputs[-1]["text"] = text.splitlines(keepends=True)
                continue
            outputs.append(out)
        cell["outputs"] = outputs
    return nb


def keep_ids(nb: dict, source: dict) -> None:
    """Give the executed cells the ids of the notebook's cells, or their positions where the notebook has none
    (papermill draws new random ones), so that a rerun does not rewrite every id."""
    if len(nb["cells"]) == len(source["cells"]):
        for i, (cell, src) in enumerate(zip(nb["cells"], source["cells"])):
            cell["id"] = src.get("id", str(i))


def write_atomically(nb: dict, path: Path) -> None:
    """Write ``nb`` as JSON (nbformat's layout: indent 1, sorted keys, a final newline) through a temporary
    file in the same folder and a rename, so a killed run never leaves half a notebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(nb, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale(chosen: list[Path]) -> list[str]:
    """Names of the notebooks whose executed copy is missing or whose cells (type and source) differ from the
    notebook's: these need `make executed`."""
    out = []
    for src in chosen:
        copy = EXECUTED / src.name
        if not copy.exists():
            out.append(f"{src.name} (no copy)")
            continue
        cells = lambda nb: [(c["cell_type"], "".join(c["source"]))
                            for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]]
        # the copy's markdown links point two folders further up (see clean_notebook)
        expected = [(kind, text.replace("](../", "](../../") if kind == "markdown" else text)
                    for kind, text in cells(src)]
        if expected != cells(copy):
            out.append(src.name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="numbers (03) or file names; default: all")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    parser.add_argument("--tries", type=int, default=2,
                        help="runs of a notebook before it counts as failed (default 2): a cell that displays "
                             "ipywidgets can wait forever for a kernel reply (jupyter/nbclient#312), and a "
                             "second run usually passes")
    parser.add_argument("--check", action="store_true", help="list stale copies and exit 1 if any; run nothing")
    args = parser.parse_args(argv)
    chosen = select(args.notebooks)
    if args.check:
        old = stale(chosen)
        print("stale executed copies: " + ", ".join(old) if old else "every executed copy matches its notebook")
        return 1 if old else 0
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.tries < 1:
        parser.error(f"--tries must be an integer >= 1, got {args.tries}")

    import papermill  # imported here so that --help and a wrong name answer at once

    cache = Path(tempfile.mkdtemp(prefix="unroll-executed-cache-"))
    os.environ.update({
        "UNROLL_SMOKE": "1", "UNROLL_CACHE": str(cache), "UNROLL_FIGURE_FORMAT": "png", "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    })
    clean, failed = Cleaner(cache), []
    try:
        for src in chosen:
            start = time.time()
            with tempfile.TemporaryDirectory(prefix="unroll-executed-") as tmp:
                raw = Path(tmp) / src.name
                error = None
                for attempt in range(1, args.tries + 1):
                    try:
                        papermill.execute_notebook(str(src), str(raw), cwd=str(NOTEBOOKS), kernel_name="python3",
                                                   progress_bar=False, log_output=False,
                                                   execution_timeout=args.timeout)
                        error = None
                        break
                    except Exception as err:  # PapermillExecutionError, a dead kernel, a timeout
                        error = err
                        if attempt < args.tries:
                            print(f"{src.name}: run {attempt} failed ({type(err).__name__}); running it again",
                                  flush=True)
                if error is not None:
                    failed.append(src.name)
                    first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                    print(f"{src.name}: FAILED after {time.time() - start:.0f} s ({first}); "
                          f"docs/executed/{src.name} left as it was", flush=True)
                    continue
                nb = clean_notebook(json.loads(raw.read_text(encoding="utf-8")), clean, f"notebooks/{src.name}")
            keep_ids(nb, json.loads(src.read_text(encoding="utf-8")))
            out = EXECUTED / src.name
            write_atomically(nb, out)
            print(f"{src.name}: {time.time() - start:.0f} s, {out.stat().st_size / 1e3:.0f} kB", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if not args.notebooks and not failed:
        names = {p.name for p in chosen}
        for old_copy in sorted(EXECUTED.glob("*.ipynb")):
            if old_copy.name not in names:
                old_copy.unlink()
                print(f"removed docs/executed/{old_copy.name} (no such notebook any more)")
    total = sum(p.stat().st_size for p in EXECUTED.glob("*.ipynb"))
    print(f"docs/executed: {len(list(EXECUTED.glob('*.ipynb')))} notebooks, {total / 1e6:.1f} MB")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
