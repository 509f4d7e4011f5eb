"""papermill parameters reach the notebooks with the right types (issue: ``-p SMOKE false`` is the string
"false", ``-p N_TRAIN 1e3`` the float 1000.0, ``-y "LR: abc"`` a string), through papermill itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
pytestmark = pytest.mark.slow  # each test starts a notebook kernel

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_unlearning_and_verification_error.ipynb"
PROBE = ('import json\nprint("PARAMS=" + json.dumps({"SMOKE": SMOKE, "N_TRAIN": N_TRAIN, "EPOCHS": EPOCHS, '
         '"LR": LR, "types": [type(v).__name__ for v in (SMOKE, N_TRAIN, EPOCHS, LR)]}))')


@pytest.fixture
def head_notebook(tmp_path):
    """Notebook 01 up to its validation cell, then a cell printing the validated values (cheap to execute)."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    i = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c["metadata"].get("tags", []))
    probe = {"cell_type": "code", "id": "probe", "metadata": {}, "execution_count": None, "outputs": [],
             "source": PROBE}
    nb["cells"] = nb["cells"][:i + 2] + [probe]
    path = tmp_path / "head.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def _run(path, out, parameters, monkeypatch, smoke_env):
    monkeypatch.setenv("UNROLL_SMOKE", smoke_env)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(path.parent), progress_bar=False)
    nb = json.loads(out.read_text(encoding="utf-8"))
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c["outputs"])
    line = next(l for l in text.splitlines() if l.startswith("PARAMS="))
    return json.loads(line[len("PARAMS="):])


def test_string_false_and_float_size_in_the_smoke_environment(head_notebook, tmp_path, monkeypatch):
    # -p SMOKE false -p N_TRAIN 1e3 -p LR 1e-3 while CI's UNROLL_SMOKE=1 is set
    got = _run(head_notebook, tmp_path / "a.ipynb", {"SMOKE": "false", "N_TRAIN": 1e3, "LR": "1e-3"},
               monkeypatch, "1")
    assert got["SMOKE"] is False
    assert got["N_TRAIN"] == 1000 and got["EPOCHS"] == 3 and got["LR"] == 0.001
    assert got["types"] == ["bool", "int", "int", "float"]


def test_explicit_size_survives_the_smoke_preset(head_notebook, tmp_path, monkeypatch):
    got = _run(head_notebook, tmp_path / "b.ipynb", {"N_TRAIN": 1e3}, monkeypatch, "1")
    assert got["SMOKE"] is True
    assert got["N_TRAIN"] == 1000, "smoke sets only the defaults, never an explicit value"
    assert got["EPOCHS"] == 1, "the smoke default of an unset size"


def test_bad_value_from_the_command_line_names_the_parameter(tmp_path):
    # the real CLI on the whole notebook: it stops in the validation cell, before any training
    env = dict(os.environ, UNROLL_SMOKE="1",
               PYTHONPATH=os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOK), str(tmp_path / "bad.ipynb"),
                           "-k", "python3", "--cwd", str(tmp_path), "--no-progress-bar", "-y", "LR: abc"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "ParameterError" in out and "parameter LR must be a finite number > 0" in out, out[-2000:]
