"""Notebook parameter coercion (unroll_utils.params): the papermill spellings users type."""

import math
from pathlib import Path

import pytest

from unroll_utils import params


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), ("false", False), ("False", False), ("TRUE", True), ("yes", True),
    ("no", False), ("1", True), ("0", False), ("", False), (1, True), (0, False), (1.0, True), ("on", True),
])
def test_flag_spellings(raw, expected):
    assert params.flag("SMOKE", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", 2, 0.5, None, [True]])
def test_flag_rejects_naming_the_parameter(raw):
    with pytest.raises(params.ParameterError, match=r"parameter SMOKE must be a boolean"):
        params.flag("SMOKE", raw)


def test_smoke_from_env(monkeypatch):
    monkeypatch.setenv("UNROLL_SMOKE", "1")
    assert params.smoke_from_env() is True
    monkeypatch.setenv("UNROLL_SMOKE", "false")
    assert params.smoke_from_env() is False
    monkeypatch.delenv("UNROLL_SMOKE")
    assert params.smoke_from_env() is False


@pytest.mark.parametrize("raw, expected", [(1000, 1000), (1000.0, 1000), (1e3, 1000), ("1e3", 1000),
                                           ("4000", 4000), ("4_000", 4000), (" 12 ", 12)])
def test_integer_coercions(raw, expected):
    v = params.integer("N_TRAIN", raw, low=1)
    assert v == expected and type(v) is int


@pytest.mark.parametrize("raw", [1000.5, "abc", True, math.nan, math.inf, None, "1.5"])
def test_integer_rejects(raw):
    with pytest.raises(params.ParameterError, match=r"parameter N_TRAIN must be an integer >= 1"):
        params.integer("N_TRAIN", raw, low=1)


def test_integer_range_and_default():
    assert params.integer("N", None, low=1, high=10, default=7) == 7
    assert params.integer("N", 3, low=1, high=10, default=7) == 3  # explicit value beats the default
    with pytest.raises(params.ParameterError, match=r"N must be an integer in \[1, 10\], got 11"):
        params.integer("N", 11, low=1, high=10)


@pytest.mark.parametrize("raw, expected", [("1e-3", 1e-3), (0.01, 0.01), (1, 1.0), ("0.5", 0.5)])
def test_real_coercions(raw, expected):
    v = params.real("LR", raw, low=0, low_open=True)
    assert v == expected and type(v) is float


@pytest.mark.parametrize("raw, pattern", [
    (0, r"LR must be a finite number > 0, got 0"), ("x", r"LR must be a finite number > 0, got 'x'"),
    (math.nan, r"finite number > 0"), (True, r"finite number > 0"),
])
def test_real_rejects(raw, pattern):
    with pytest.raises(params.ParameterError, match=pattern):
        params.real("LR", raw, low=0, low_open=True)


def test_real_half_open_interval():
    assert params.real("MOMENTUM", 0.0, low=0, high=1, high_open=True) == 0.0
    with pytest.raises(params.ParameterError, match=r"MOMENTUM must be a finite number in \[0, 1\)"):
        params.real("MOMENTUM", 1.0, low=0, high=1, high_open=True)


def test_choice():
    assert params.choice("PRESET", None, ["smoke", "small"], default="small") == "small"
    with pytest.raises(params.ParameterError, match=r"PRESET must be one of \['smoke', 'small'\], got 'big'"):
        params.choice("PRESET", "big", ["smoke", "small"])


def test_sequence():
    item = lambda n, x: params.real(n, x, low=0)  # noqa: E731
    assert params.sequence("LAMS", "0, 1, 5e-1", item) == [0.0, 1.0, 0.5]
    assert params.sequence("LAMS", "[0,2]", item) == [0.0, 2.0]
    assert params.sequence("LAMS", 3, item) == [3.0]
    assert params.sequence("LAMS", None, item, default=[1, 2]) == [1.0, 2.0]
    with pytest.raises(params.ParameterError, match=r"LAMS\[1\] must be a finite number >= 0"):
        params.sequence("LAMS", [1, -2], item)
    with pytest.raises(params.ParameterError, match=r"LAMS must be a list of at least 1"):
        params.sequence("LAMS", [], item)


def test_flag_default_fills_only_none():
    assert params.flag("ABLATIONS", None, default=True) is True
    assert params.flag("ABLATIONS", None, default=False) is False
    assert params.flag("ABLATIONS", "no", default=True) is False  # an explicit value beats the default
    with pytest.raises(params.ParameterError, match=r"parameter ABLATIONS must be a boolean"):
        params.flag("ABLATIONS", None)


def test_optional_integer_and_choice_keep_none():
    assert params.integer("N_TRAIN", None, low=100, optional=True) is None  # e.g. "the whole split"
    assert params.integer("N_TRAIN", None, low=100, default=500, optional=True) == 500
    assert params.integer("N_TRAIN", "2e3", low=100, optional=True) == 2000
    with pytest.raises(params.ParameterError, match=r"N_TRAIN must be an integer >= 100, got 50"):
        params.integer("N_TRAIN", 50, low=100, optional=True)
    assert params.choice("POOLING", None, ["cls", "mean"], optional=True) is None
    assert params.choice("POOLING", "cls", ["cls", "mean"], optional=True) == "cls"
    with pytest.raises(params.ParameterError, match=r"POOLING must be one of \['cls', 'mean'\], got 'max'"):
        params.choice("POOLING", "max", ["cls", "mean"], optional=True)
    with pytest.raises(params.ParameterError, match=r"POOLING must be one of"):
        params.choice("POOLING", None, ["cls", "mean"])  # not optional: None is an error


def test_folder(tmp_path):
    assert params.folder("RESULTS_DIR", None) is None
    assert params.folder("RESULTS_DIR", "out/run1") == Path("out/run1")
    assert type(params.folder("RESULTS_DIR", "out")) is type(Path("out"))
    assert params.folder("RESULTS_DIR", tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # validation creates nothing


@pytest.mark.parametrize("raw", ["", "   ", 3, 1.5, True, b"out", ["out"]])
def test_folder_rejects_naming_the_parameter(raw):
    with pytest.raises(params.ParameterError, match=r"parameter RESULTS_DIR must be None or a non-empty folder path"):
        params.folder("RESULTS_DIR", raw)


# --- unknown names (papermill adds any -p NAME without complaint) ---------------------------------------------

VALIDATION = ('from unroll_utils import params\n\nparams.check_names()\nSMOKE = params.flag("SMOKE", SMOKE)\n'
              'SEED = params.integer("SEED", SEED, low=0)\nBATCH = params.integer(\n    "BATCH", BATCH, low=1)\n'
              'T0 = time.time()\n')
PARAMETERS = 'import os\nSMOKE = os.environ.get("UNROLL_SMOKE", "0")  # tiny run\nSEED = 0  # seed\nBATCH = 32\n'


def test_validated_names_reads_the_validation_cell():
    assert params.validated_names(VALIDATION) == ["SMOKE", "SEED", "BATCH"]  # T0 is not a parameter


def test_unknown_names_with_close_matches():
    assert params.unknown_names(["SEED", "SEEED", "BATCH_SIZE", "XYZ"], ["SMOKE", "SEED", "BATCH"]) == {
        "SEEED": ["SEED"], "BATCH_SIZE": ["BATCH"], "XYZ": []}


def test_check_names_after_papermill_injection():
    injected = "# Parameters\nSEEED = 3\nBATCH_SIZE = 16\nSEED = 1\n"
    with pytest.raises(params.ParameterError) as err:
        params.check_names([PARAMETERS, injected, VALIDATION])
    assert str(err.value) == ("unknown parameters SEEED (did you mean SEED?), BATCH_SIZE (did you mean BATCH?); "
                              "this notebook's parameters: SMOKE, SEED, BATCH")
    with pytest.raises(params.ParameterError, match=r"^unknown parameter XYZ; "):
        params.check_names([PARAMETERS, "# Parameters\nXYZ = 1\n", VALIDATION])
    # known names, and papermill's own --inject-paths names, pass
    params.check_names([PARAMETERS, '# Parameters\nSEED = 3\nPAPERMILL_INPUT_PATH = "a.ipynb"\n', VALIDATION])


def test_check_names_after_the_parameters_cell():
    params.check_names(["", PARAMETERS, VALIDATION])  # nbval, or a reader running the cells in order
    with pytest.raises(params.ParameterError, match=r"unknown parameter SEEED \(did you mean SEED\?\)"):
        params.check_names(["", PARAMETERS + "SEEED = 3\n", VALIDATION])  # a typo typed into the cell


def test_check_names_after_any_other_cell_checks_nothing():
    # a reader re-running the validation cell later: the cell before it defines other upper-case names
    params.check_names([PARAMETERS, VALIDATION, "RESULTS = 1\nCONFIG = dict()\n", VALIDATION])
    params.check_names([VALIDATION])  # nothing before it
    params.check_names([PARAMETERS, "# Parameters\nSEEED = 3\n", "x = 1\n"])  # a cell that validates nothing


def test_check_names_outside_ipython_is_silent():
    params.check_names()  # no IPython shell in pytest: nothing to compare
