"""A notebook's parameters, as a grid file may set them: names, literal defaults, help, and the checks of the
notebook's validation cell; and the check of one grid value against them.

Source: papermill's parameter inspection (``papermill.inspect_notebook``) and the house rule of
:mod:`unroll_utils.params` (each parameter validated in the cell after ``parameters``).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

_NONLITERAL = object()


class GridError(ValueError):
    """A grid file is invalid; the message names the offending key."""


@dataclass(frozen=True)
class NotebookParameter:
    """One assignment of a notebook's ``parameters`` cell.

    ``source`` is the right-hand side as written; ``value`` its literal value (``_NONLITERAL`` when it is an
    expression such as ``os.environ.get(...)``, which accepts anything: the notebook validates it).
    """

    name: str
    source: str
    value: Any
    help: str = ""
    check: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def type_name(self) -> str:
        """The type of the literal default (``"any"`` for None or a non-literal default)."""
        return "any" if self.value is _NONLITERAL or self.value is None else type(self.value).__name__


def notebook_parameters(path: str | os.PathLike) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares, by name.

    Names come from ``papermill.inspect_notebook`` and, for lines its line parser skips (an assignment
    whose value contains ``==``, or a comment with ``=``), from parsing the ``parameters`` cell with
    :mod:`ast`; literal defaults are read with ``ast.literal_eval``.

    Args:
        path: the ``.ipynb`` file.

    Returns:
        dict from name to :class:`NotebookParameter`, in the cell's order.

    Raises:
        GridError: if the notebook does not exist, is not a notebook, or has no cell tagged ``parameters``.
    """
    import logging

    import nbformat
    import papermill

    path = Path(path)
    if not path.is_file():
        raise GridError(f"notebook: {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several types for a non-notebook
        raise GridError(f"notebook: {path} is not a Jupyter notebook ({exc})") from exc
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1 or cells[0].cell_type != "code":
        raise GridError(f"notebook: {path} needs exactly one code cell tagged 'parameters' (found {len(cells)})")
    found, lines = {}, cells[0].source.splitlines()
    for node in ast.parse(cells[0].source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None)
        if isinstance(target, ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = _NONLITERAL
            comment = lines[node.end_lineno - 1][node.end_col_offset:].strip()
            found[target.id] = NotebookParameter(target.id, ast.unparse(node.value), value,
                                                 comment[1:].strip() if comment.startswith("#") else "")
    logging.getLogger("papermill").setLevel(logging.ERROR)  # "Unable to parse line" for the ast-read lines
    for name, info in papermill.inspect_notebook(str(path)).items():
        found.setdefault(name, NotebookParameter(name, info["default"], _NONLITERAL, info.get("help") or ""))
    index = nb.cells.index(cells[0])
    following = nb.cells[index + 1] if index + 1 < len(nb.cells) else None
    if following is not None and following.cell_type == "code":
        for name, check in _validation_checks(following.source).items():
            if name in found:
                found[name] = dataclasses.replace(found[name], check=check)
    return found


_PARAMS_FUNCTIONS = ("flag", "integer", "real", "choice", "sequence", "folder")


def _validation_checks(source: str) -> dict[str, Callable[[Any], Any]]:
    """Checks read from a notebook's validation cell (the cell after ``parameters``), by parameter.

    The house rule (:mod:`unroll_utils.params`) validates each parameter there with a line such as
    ``N_SEEDS = params.integer("N_SEEDS", N_SEEDS, low=1, default=P["n_seeds"])``. Each such call is
    rebuilt here with the arguments that evaluate without running the notebook (literals, ``params``
    and ``unroll_utils`` modules, lambdas over them); an argument that needs the notebook's state
    (``default=P[...]``, ``high=N_TRAIN // 2``) is dropped, which only widens the check. ``None`` passes
    when the call has a ``default`` or ``optional`` argument (the notebook fills it in). A line that
    cannot be rebuilt gives no check (the notebook still validates the value when it runs).
    """
    import builtins
    import importlib

    from unroll_utils import params as params_mod

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    modules = {}
    for node in tree.body:  # `from unroll_utils import a, b` / `import unroll_utils.x as y`
        if isinstance(node, ast.ImportFrom) and node.module == "unroll_utils":
            for alias in node.names:
                with contextlib.suppress(ImportError):
                    modules[alias.asname or alias.name] = importlib.import_module(f"unroll_utils.{alias.name}")
    modules["params"] = params_mod
    scope = {**modules, "__builtins__": {n: getattr(builtins, n)
                                         for n in ("str", "int", "float", "bool", "len", "list", "tuple", "range",
                                                   "min", "max", "abs", "round", "sorted")}}

    def evaluate(expr: ast.expr):
        return eval(compile(ast.Expression(expr), "<validation cell>", "eval"), scope)  # noqa: S307

    checks = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, call = node.targets[0].id, node.value
        if (name in checks or not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute)
                or not isinstance(call.func.value, ast.Name) or call.func.value.id != "params"
                or call.func.attr not in _PARAMS_FUNCTIONS or len(call.args) < 2
                or not (isinstance(call.args[0], ast.Constant) and call.args[0].value == name)
                or not (isinstance(call.args[1], ast.Name) and call.args[1].id == name)):
            continue
        function = getattr(params_mod, call.func.attr)
        try:
            extra = [evaluate(a) for a in call.args[2:]]  # choice's choices, sequence's item check
        except Exception:
            if call.func.attr != "sequence":
                continue  # e.g. choices from the notebook's state: no check
            extra = [lambda n, x: x]  # a sequence whose item check needs the notebook: check the list only
        kwargs, none_ok = {}, call.func.attr == "folder"
        for kw in call.keywords:
            if kw.arg in ("default", "optional"):
                none_ok = True
                continue  # None is filled in by the notebook; a given value is checked without it
            with contextlib.suppress(Exception):
                kwargs[kw.arg] = evaluate(kw.value)

        def check(value, _f=function, _name=name, _extra=tuple(extra), _kw=kwargs, _none_ok=none_ok):
            if value is None and _none_ok:
                return value
            try:
                return _f(_name, value, *_extra, **_kw)
            except params_mod.ParameterError:
                raise
            except Exception:  # the line needs more of the notebook than was rebuilt: no check
                return value

        checks[name] = check
    return checks


def _type_ok(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of the notebook's literal ``default`` (None: anything)."""
    if default is _NONLITERAL or default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_value(key: str, value: Any, param: NotebookParameter, notebook: Path) -> Any:
    """Check a grid value for a notebook parameter.

    Two checks: the type of the notebook's literal default, then the notebook's own validation line
    (``params.integer(...)`` etc. in the cell after ``parameters``, see :func:`_validation_checks`),
    which also covers parameters whose default is ``None``.

    Args:
        key: where the value stands in the grid file (named in the error).
        value: the grid's value.
        param: the notebook's parameter.
        notebook: the notebook's path (named in the error).

    Returns:
        ``value`` (ints become floats for float parameters).

    Raises:
        GridError: naming ``key``, for a value of another type or one the validation line rejects.
    """
    if not _type_ok(value, param.value):
        raise GridError(f"{key}: parameter {param.name} of {notebook.name} is a {param.type_name} "
                        f"(default {param.source}); got {value!r} ({type(value).__name__})")
    if param.check is not None:
        try:
            param.check(value)
        except ValueError as exc:  # params.ParameterError
            raise GridError(f"{key}: {exc} (checked as {notebook.name}'s validation cell will)") from None
    if isinstance(param.value, float) and isinstance(value, int):
        return float(value)
    return value

