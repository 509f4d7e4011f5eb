"""Validation of notebook parameters, as papermill and the environment deliver them.

A notebook's ``parameters`` cell holds literals; papermill may replace any of them with a value
of another type (``-p SMOKE false`` injects the *string* ``"false"``, ``-p N_TRAIN 1e3`` the float
``1000.0``, ``-y "LR: 1e-3"`` the string ``"1e-3"``). The cell right after it passes every
parameter through one of the functions below, which

- accept the value in the usual spellings (booleans from ``true/false/yes/no/on/off/1/0`` in any
  case, integral floats as ints, numeric strings as numbers),
- return it with the right Python type, and
- raise :class:`ParameterError` (a ``ValueError``) naming the parameter, the expected type and
  the allowed range otherwise.

Sizes that a preset changes (``smoke`` for CI) default to ``None`` in the parameters cell; the
preset fills in only those, so a size the user passed explicitly is never overridden::

    SMOKE = params.flag("SMOKE", SMOKE)
    N_TRAIN = params.integer("N_TRAIN", N_TRAIN, low=100, default=1000 if SMOKE else 4000)
    RESULTS_DIR = params.folder("RESULTS_DIR", RESULTS_DIR)  # None or a pathlib.Path

A name the notebook does not have is an error too: papermill runs ``-p SEEED 3`` without complaint (it
only adds an assignment), so the validation cell starts with :func:`check_names`, which compares the
names that the cell executed just before it assigned (papermill's injected cell, or the parameters cell
itself) with the names the validation cell validates, and raises :class:`ParameterError` naming the
unknown ones and their close matches.
"""

from __future__ import annotations

import ast
import difflib
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["ParameterError", "flag", "smoke_from_env", "integer", "real", "choice", "sequence", "folder",
           "check_names", "unknown_names", "validated_names", "INJECTED_HEADER"]

INJECTED_HEADER = "# Parameters"
"""First line of the cell papermill injects after the ``parameters`` cell (tag ``injected-parameters``)."""

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off", ""}


class ParameterError(ValueError):
    """A notebook parameter has the wrong type or lies outside its allowed range."""


def _fail(name: str, expected: str, value: Any) -> None:
    raise ParameterError(f"parameter {name} must be {expected}, got {value!r} ({type(value).__name__})")


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _check_range(name: str, kind: str, v, low, high, low_open: bool, high_open: bool):
    if ((low is not None and (v < low or (low_open and v == low)))
            or (high is not None and (v > high or (high_open and v == high)))):
        _fail(name, kind + _range_text(low, high, low_open, high_open), v)
    return v


def flag(name: str, value: Any, *, default: bool | None = None) -> bool:
    """A notebook parameter read as a bool.

    Args:
        name: the parameter's name as the notebook spells it (named in the error).
        value: ``True``/``False``, 0/1, or a string such as ``"false"``, ``"Yes"``, ``"1"``
            (case-insensitive; ``""`` is False).
        default: what ``None`` gives (when not None itself).

    Returns:
        The bool.

    Raises:
        ParameterError: any other value.
    """
    if value is None and default is not None:
        value = default
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    _fail(name, "a boolean (True/False, 1/0, 'true'/'false', 'yes'/'no')", value)


def smoke_from_env(variable: str = "UNROLL_SMOKE") -> bool:
    """The smoke-run switch: ``os.environ[variable]`` read as :func:`flag` (unset = False)."""
    return flag(variable, os.environ.get(variable, "0"))


def _number(name: str, value: Any, expected: str) -> float | int:
    if isinstance(value, bool):
        _fail(name, expected, value)
    if isinstance(value, numbers.Real):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            try:
                return float(value.strip())
            except ValueError:
                pass
    _fail(name, expected, value)


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None,
            default: int | None = None, optional: bool = False) -> int | None:
    """A notebook parameter read as an int in [low, high].

    Integral floats (``1000.0``, ``1e3``) and numeric strings are accepted; ``True``/``False``,
    fractions and NaN are not.

    Args:
        name: the parameter's name as the notebook spells it (named in the error).
        value: the value (papermill may deliver a string).
        low, high: the bounds, inclusive (either may be None).
        default: what ``None`` gives (when not None itself).
        optional: a ``None`` left over stays ``None`` (e.g. "all points").

    Returns:
        The int, or None (``optional``).

    Raises:
        ParameterError: a value of another kind or out of range (the message gives the range).
    """
    if value is None and default is not None:
        value = default
    if value is None and optional:
        return None
    expected = "an integer" + _range_text(low, high, False, False)
    v = _number(name, value, expected)
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            _fail(name, expected, value)
        v = int(v)
    return _check_range(name, "an integer", int(v), low, high, False, False)


def real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, default: float | None = None) -> float:
    """A notebook parameter read as a finite float in the interval given by ``low``/``high``.

    Numeric strings such as ``"1e-3"`` are accepted; booleans, NaN and infinities are not.

    Args:
        name: the parameter's name as the notebook spells it (named in the error).
        value: the value.
        low, high: the bounds (either may be None).
        low_open, high_open: exclude the bound.
        default: what ``None`` gives.

    Returns:
        The float.

    Raises:
        ParameterError: a value of another kind or out of range (the message gives the interval).
    """
    if value is None and default is not None:
        value = default
    expected = "a finite number" + _range_text(low, high, low_open, high_open)
    v = float(_number(name, value, expected))
    if not math.isfinite(v):
        _fail(name, expected, value)
    return _check_range(name, "a finite number", v, low, high, low_open, high_open)


def choice(name: str, value: Any, choices: Sequence[str], *, default: str | None = None,
           optional: bool = False) -> str | None:
    """A notebook parameter read as one of ``choices`` (strings, matched exactly).

    Args:
        name: the parameter's name as the notebook spells it (named in the error).
        value: the value.
        choices: the allowed strings.
        default: what ``None`` gives.
        optional: a ``None`` left over stays ``None`` (the notebook decides later).

    Returns:
        The string, or None (``optional``).

    Raises:
        ParameterError: any other value (the message lists the choices).
    """
    if value is None and default is not None:
        value = default
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in choices:
        _fail(name, f"one of {list(choices)}", value)
    return value


def sequence(name: str, value: Any, item: Callable[[str, Any], Any], *, min_len: int = 1,
             default: Sequence | None = None) -> list:
    """A notebook parameter read as a list whose items pass ``item(name, x)``.

    A comma-separated string (``"0,1,5"``) or a single number is accepted.

    Args:
        name: the parameter's name as the notebook spells it.
        value: the value.
        item: the check of one item, e.g. ``lambda n, x: real(n, x, low=0)``; called with ``NAME[i]``.
        min_len: the fewest items allowed.
        default: what ``None`` gives.

    Returns:
        The list of checked items.

    Raises:
        ParameterError: naming the item (``LAMS[2]``) or the length.
    """
    if value is None and default is not None:
        value = default
    if isinstance(value, str):
        value = [s for s in value.replace("[", "").replace("]", "").split(",") if s.strip()]
    elif isinstance(value, (numbers.Number, bool)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        _fail(name, "a list", value)
    if len(value) < min_len:
        _fail(name, f"a list of at least {min_len} item(s)", value)
    return [item(f"{name}[{i}]", x) for i, x in enumerate(value)]


def folder(name: str, value: Any) -> Path | None:
    """A notebook parameter read as a folder path (nothing is created or checked on disk).

    Args:
        name: the parameter's name as the notebook spells it (named in the error).
        value: None (e.g. "write nothing"), or a non-empty ``str`` or ``os.PathLike`` (``~`` is not
            expanded).

    Returns:
        A :class:`pathlib.Path`, or None.

    Raises:
        ParameterError: another type, or ``""``.
    """
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, str) and text.strip():
            return Path(text)
    _fail(name, "None or a non-empty folder path (str or os.PathLike)", value)


_VALIDATED = re.compile(r"^([A-Za-z_]\w*)\s*=\s*params\.\w+\(\s*[\"']\1[\"']", re.M)


def validated_names(source: str) -> list[str]:
    """The names a validation cell validates: every line ``NAME = params.<function>("NAME", ...`` of
    ``source`` (a cell's code), in order of appearance."""
    return list(dict.fromkeys(_VALIDATED.findall(source)))


def _assigned_names(source: str) -> list[str]:
    """Upper-case names assigned at the top level of ``source`` (a parameters cell or papermill's
    injected cell); ``[]`` when it does not parse. papermill's own ``PAPERMILL_*`` names are left out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            if isinstance(t, ast.Name) and t.id.isupper() and not t.id.startswith("PAPERMILL_"):
                names.append(t.id)
    return list(dict.fromkeys(names))


def unknown_names(given: Sequence[str], declared: Sequence[str]) -> dict[str, list[str]]:
    """The names of ``given`` that are not in ``declared``, each with its close matches among
    ``declared`` (:func:`difflib.get_close_matches`, at most 3, best first; ``BATCH_SIZE`` against
    ``BATCH`` is one, so is ``SEEED`` against ``SEED``)."""
    declared = list(declared)
    return {name: difflib.get_close_matches(name, declared, n=3, cutoff=0.6)
            for name in given if name not in declared}


def check_names(history: Sequence[str] | None = None) -> None:
    """Raise :class:`ParameterError` if the cell executed just before this one assigned a parameter
    that this notebook does not have.

    ``history`` is the kernel's input history, oldest first, ending with the cell being executed (the
    validation cell); by default IPython's (``In``), and outside IPython nothing is checked. The
    declared names are those the current cell validates (:func:`validated_names`). The previous cell
    is checked when it is papermill's injected cell (first line ``# Parameters``) or the parameters
    cell (it reads ``UNROLL_SMOKE``): so ``papermill -p SEEED 3`` and a misspelt name typed into the
    parameters cell both stop here, while re-running the validation cell after any other cell (a
    reader in JupyterLab) checks nothing. Names papermill adds itself (``PAPERMILL_*``) are allowed.

    Raises:
        ParameterError: ``unknown parameter SEEED (did you mean SEED?); this notebook's parameters:
            SMOKE, SEED, ...``, listing every unknown name.
    """
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:  # plain Python: no cells, nothing to compare
            return
        shell = get_ipython()
        if shell is None:
            return
        history = shell.user_ns.get("In") or []
    history = [h for h in history if isinstance(h, str)]
    if len(history) < 2:
        return
    current, previous = history[-1], history[-2]
    if not (previous.lstrip().startswith(INJECTED_HEADER) or "UNROLL_SMOKE" in previous):
        return
    declared = validated_names(current)
    if not declared:
        return
    unknown = unknown_names(_assigned_names(previous), declared)
    if unknown:
        parts = [name + (f" (did you mean {' or '.join(m)}?)" if m else "") for name, m in unknown.items()]
        raise ParameterError(f"unknown parameter{'s' if len(parts) > 1 else ''} {', '.join(parts)}; this "
                             f"notebook's parameters: {', '.join(declared)}")
