"""Sweeps: a grid file → one papermill run per point, locally or on SLURM, → one tidy table and figures.

A *grid file* (YAML) names a notebook, the parameters every run shares, the axes whose product gives the
points, the seeds (replicates), an output root and the executor::

    notebook: ../notebooks/05_sd_loss.ipynb   # relative paths: relative to the grid file's folder
    output: ../runs/smoke                     # one folder per run under here
    parameters: {SMOKE: true}                 # shared by every run
    axes: {LR: [0.01, 0.03]}                  # the product of the axes gives the points
    seeds: {SEED: [0, 1]}                     # one parameter: the replicates of each point
    env: {OMP_NUM_THREADS: "1"}               # environment variables of every run
    executor: {kind: local, workers: 2}       # local | submitit-local | slurm (+ slurm: {...})
    figures: [{y: ve, x: t, hue: LR}]         # what `aggregate` draws

Every point runs in ``<output>/<fingerprint of notebook name, parameters and env>/`` holding ``params.json``,
the executed ``notebook.ipynb``, the notebook's ``results.csv``/``results.json`` (the notebook writes them
when its ``RESULTS_DIR`` parameter is set; the runner sets it to the run folder), its checkpoints under
``cache/`` (``UNROLL_CACHE``) and, once complete, ``done.json``. A complete run is skipped; any other
existing run is executed again and resumes from its checkpoints. The contract with the notebooks is in the
README ("Sweeps").

Command line: ``python -m unroll_utils.sweep {check,run,status,aggregate,params} ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import submitit
import submitit.helpers
import yaml

from unroll_utils import results

__all__ = ["GridError", "Grid", "Run", "NotebookParameter", "notebook_parameters", "load_grid", "run_grid",
           "run_point", "status", "collect", "mean_ci", "summarize", "plot_summary", "aggregate", "main"]

KINDS = ("local", "submitit-local", "slurm")
GRID_KEYS = ("notebook", "output", "parameters", "axes", "seeds", "env", "executor", "figures")
EXECUTOR_KEYS = ("kind", "workers", "time_min", "cell_timeout_s", "slurm")
# grid-file name -> submitit.AutoExecutor parameter ("extra" is passed through as it is)
SLURM_KEYS = {"partition": "slurm_partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
              "mem_gb": "mem_gb", "array_parallelism": "slurm_array_parallelism", "extra": None}
FIGURE_KEYS = ("y", "x", "hue", "rows", "ci", "logx", "logy", "name")
RESERVED = ("RESULTS_DIR",)  # set by the runner, never by the grid
KERNEL = "python3"
INHERITED = ("UNROLL_SMOKE",)  # environment variables of the caller that change results (part of the run hash)
_NONLITERAL = object()


class GridError(ValueError):
    """A grid file is invalid; the message names the offending key."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 loader that also reads ``1e-3`` as a float (PyYAML's YAML 1.1 reads it as a string) and
    rejects a key given twice in one mapping (PyYAML keeps the last one silently: two ``axes:`` would
    drop the first axis)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor`; a key given after a merge overrides it, as YAML intends
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {key!r} (first given on line {first.line + 1}): "
                        f"give each key once (merge the two entries)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# ----------------------------------------------------------------------------------------------------------------
# The notebook's parameters


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
        return "any" if self.value is _NONLITERAL or self.value is None else type(self.value).__name__


def notebook_parameters(path: str | os.PathLike) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares, by name.

    Names come from ``papermill.inspect_notebook`` and, for lines its line parser skips (an assignment
    whose value contains ``==``, or a comment with ``=``), from parsing the ``parameters`` cell with
    :mod:`ast`; literal defaults are read with ``ast.literal_eval``.

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


def _check_value(key: str, value: Any, param: NotebookParameter, notebook: Path) -> Any:
    """``value`` for ``param`` (ints become floats for float parameters) or a GridError naming ``key``.

    Two checks: the type of the notebook's literal default, then the notebook's own validation line
    (``params.integer(...)`` etc. in the cell after ``parameters``, see :func:`_validation_checks`), which
    also covers parameters whose default is ``None``."""
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


# ----------------------------------------------------------------------------------------------------------------
# The grid


@dataclass
class ExecutorOptions:
    """How the runs are executed.

    kind: ``local`` (a pool of ``workers`` processes on this machine), ``submitit-local`` (submitit's
        LocalExecutor: the SLURM code path, on this machine) or ``slurm`` (one SLURM array job).
    time_min: wall-clock limit of one run in minutes (submitit executors).
    cell_timeout_s: papermill's per-cell execution timeout in seconds (default: ``time_min`` in seconds).
    slurm: ``partition``, ``gpus``, ``cpus``, ``mem_gb``, ``array_parallelism`` and ``extra`` (any other
        ``submitit.AutoExecutor`` parameter, e.g. ``{slurm_account: x, slurm_qos: y}``).
    """

    kind: str = "local"
    workers: int = 1
    time_min: int = 60
    cell_timeout_s: int = 3600
    slurm: dict = field(default_factory=dict)


@dataclass
class Grid:
    """A validated grid file (build it with :func:`load_grid`)."""

    path: Path
    notebook: Path
    output: Path
    parameters: dict[str, Any]
    axes: dict[str, list]
    seeds: dict[str, list]
    env: dict[str, str]
    executor: ExecutorOptions
    figures: list[dict]
    writes_results: bool

    @property
    def swept(self) -> list[str]:
        """The axis names, then the seed parameter (the columns that vary between runs)."""
        return [*self.axes, *self.seeds]

    @property
    def seed_name(self) -> str | None:
        return next(iter(self.seeds), None)

    def points(self) -> list[dict[str, Any]]:
        """Every run's parameters: the shared ones plus one value per axis (seeds vary fastest)."""
        names = self.swept
        values = [*self.axes.values(), *self.seeds.values()]
        return [{**self.parameters, **dict(zip(names, combo))} for combo in itertools.product(*values)]

    def runs(self) -> list["Run"]:
        """One :class:`Run` per point, in :meth:`points` order."""
        return [Run.for_point(self, p) for p in self.points()]


def _mapping(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise GridError(f"{key}: must be a mapping (name: value), got {type(value).__name__}")
    return value


def _check_keys(where: str, given: dict, allowed: Sequence[str]) -> None:
    for key in given:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise GridError(f"{prefix}{key}: unknown key (allowed: {', '.join(allowed)})")


def _check_axis(key: str, values: Any, param: NotebookParameter, notebook: Path) -> list:
    if not isinstance(values, list):
        raise GridError(f"{key}: an axis must be a list of values, got {values!r}")
    if not values:
        raise GridError(f"{key}: empty axis (give at least one value)")
    checked = [_check_value(f"{key}[{i}]", v, param, notebook) for i, v in enumerate(values)]
    seen = {}
    for i, v in enumerate(checked):
        blob = json.dumps(v, sort_keys=True, default=str)
        if blob in seen:
            raise GridError(f"{key}[{i}]: duplicate value {v!r} (also {key}[{seen[blob]}]): duplicate points")
        seen[blob] = i
    return checked


def _check_names(raw: dict, declared: dict[str, NotebookParameter], notebook: Path) -> tuple[dict, dict, dict]:
    """The shared parameters, axes and seeds, each checked against the notebook's declarations."""
    fixed, axes, seeds = (_mapping(raw, k) for k in ("parameters", "axes", "seeds"))
    if len(seeds) > 1:
        raise GridError(f"seeds: name one seed parameter, got {list(seeds)}")
    owner = {}
    for section, names in (("parameters", fixed), ("axes", axes), ("seeds", seeds)):
        for name in names:
            key = f"{section}.{name}"
            if name in RESERVED:
                raise GridError(f"{key}: {name} is set by the runner (each run's folder), not by the grid")
            if name not in declared:
                raise GridError(f"{key}: unknown parameter {name}; {notebook.name} declares "
                                f"{', '.join(declared) or 'none'}")
            if name in owner:
                raise GridError(f"{key}: {name} is also given in {owner[name]}.{name}")
            owner[name] = section
    fixed = {n: _check_value(f"parameters.{n}", v, declared[n], notebook) for n, v in fixed.items()}
    axes = {n: _check_axis(f"axes.{n}", v, declared[n], notebook) for n, v in axes.items()}
    seeds = {n: _check_axis(f"seeds.{n}", v, declared[n], notebook) for n, v in seeds.items()}
    return fixed, axes, seeds


def _positive_int(key: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GridError(f"{key}: must be an integer >= 1, got {value!r}")
    return value


def _check_executor(raw: Any) -> ExecutorOptions:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise GridError(f"executor: must be a mapping, got {type(raw).__name__}")
    _check_keys("executor", raw, EXECUTOR_KEYS)
    kind = raw.get("kind", "local")
    if kind not in KINDS:
        raise GridError(f"executor.kind: must be one of {list(KINDS)}, got {kind!r}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise GridError(f"executor.slurm: must be a mapping, got {type(slurm).__name__}")
    _check_keys("executor.slurm", slurm, list(SLURM_KEYS))
    if not isinstance(slurm.get("extra", {}), dict):
        raise GridError("executor.slurm.extra: must be a mapping of submitit parameters")
    for key in ("gpus", "cpus", "array_parallelism"):
        if key in slurm and not (key == "gpus" and slurm[key] == 0):
            _positive_int(f"executor.slurm.{key}", slurm[key])
    time_min = _positive_int("executor.time_min", raw.get("time_min", 60))
    cell_timeout_s = _positive_int("executor.cell_timeout_s", raw.get("cell_timeout_s"), True)
    return ExecutorOptions(kind=kind, workers=_positive_int("executor.workers", raw.get("workers", 1)),
                           time_min=time_min, cell_timeout_s=cell_timeout_s or 60 * time_min, slurm=dict(slurm))


def _check_figures(raw: Any) -> list[dict]:
    raw = raw or []
    if not isinstance(raw, list):
        raise GridError("figures: must be a list of mappings such as {y: ve, x: t, hue: LR}")
    figures = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or "y" not in spec or "x" not in spec:
            raise GridError(f"figures[{i}]: needs at least y and x (e.g. {{y: ve, x: t}})")
        _check_keys(f"figures[{i}]", spec, FIGURE_KEYS)
        if spec.get("rows", "auto") not in ("auto", "last", "all"):
            raise GridError(f"figures[{i}].rows: must be auto, last or all, got {spec['rows']!r}")
        if spec.get("ci", "t") not in ("t", "bootstrap"):
            raise GridError(f"figures[{i}].ci: must be t or bootstrap, got {spec['ci']!r}")
        figures.append(dict(spec))
    return figures


def _check_env(raw: dict) -> dict[str, str]:
    env = {}
    for name, value in _mapping(raw, "env").items():
        if isinstance(value, (dict, list)) or value is None:
            raise GridError(f"env.{name}: must be a string or a number, got {value!r}")
        env[str(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    if "UNROLL_CACHE" in env:
        raise GridError("env.UNROLL_CACHE: set by the runner (each run's cache folder), not by the grid")
    for name in INHERITED:  # the runs inherit it from the shell: make it part of each run's identity
        if name not in env and os.environ.get(name) is not None:
            env[name] = os.environ[name]
    return env


def load_grid(path: str | os.PathLike, kind: str | None = None, workers: int | None = None) -> Grid:
    """Read and validate a grid file before anything runs.

    Args:
        path: the YAML grid file; relative ``notebook``/``output`` paths are relative to its folder.
        kind: overrides ``executor.kind`` (the command line's ``--executor``).
        workers: overrides ``executor.workers``.

    Raises:
        GridError: naming the file, line and column for malformed YAML or a key given twice in one
            mapping; naming the key, for an unknown key or parameter, a value whose type differs from the
            notebook's default literal or that the notebook's validation line rejects, an empty axis, a duplicate value (duplicate points), a missing
            notebook or output, a bad executor or figure option.
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = ": ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
        raise GridError(f"grid file {where}: not valid YAML: {problem or exc}") from None
    if not isinstance(raw, dict):
        raise GridError(f"grid file {path} must be a YAML mapping with at least notebook and output")
    _check_keys("", raw, GRID_KEYS)
    for key in ("notebook", "output"):
        if not isinstance(raw.get(key), str):
            raise GridError(f"{key}: required, a path relative to the grid file's folder")
    notebook = (path.parent / raw["notebook"]).resolve()
    declared = notebook_parameters(notebook)
    fixed, axes, seeds = _check_names(raw, declared, notebook)
    executor = _check_executor({**(raw.get("executor") or {}), **({"kind": kind} if kind else {}),
                                **({"workers": workers} if workers is not None else {})})
    grid = Grid(path=path.resolve(), notebook=notebook, output=(path.parent / raw["output"]).resolve(),
                parameters=fixed, axes=axes, seeds=seeds, env=_check_env(raw), executor=executor,
                figures=_check_figures(raw.get("figures")),
                writes_results="RESULTS_DIR" in declared)
    folders = [r.folder for r in grid.runs()]
    if len(set(folders)) != len(folders):
        raise GridError("axes: two points have the same parameters (duplicate points)")
    return grid


# ----------------------------------------------------------------------------------------------------------------
# One run


def _write_json(path: Path, payload: dict) -> None:
    results.atomic_write(path, lambda f: json.dump(results._jsonable(payload), f, indent=1))


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by the notebook's kernel) and restore them afterwards."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Run:
    """One grid point: its folder, the notebook's parameters and environment (picklable: the job spec)."""

    notebook: str
    folder: str
    parameters: dict
    env: dict
    cell_timeout_s: int | None = None
    writes_results: bool = True

    @classmethod
    def for_point(cls, grid: Grid, point: dict) -> "Run":
        key = results.fingerprint({"notebook": grid.notebook.name, "parameters": point, "env": grid.env})
        return cls(str(grid.notebook), str(grid.output / key), point, dict(grid.env),
                   grid.executor.cell_timeout_s, grid.writes_results)

    @property
    def path(self) -> Path:
        return Path(self.folder)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        """``done`` (done.json), ``failed`` (failed.json), ``started`` (running, or stopped part-way:
        it resumes when run again) or ``pending`` (no folder yet)."""
        for state in ("done", "failed", "started"):
            if (self.path / f"{state}.json").exists():
                return state
        return "pending"

    def execute(self) -> dict:
        """Execute the notebook into the run folder unless the run is complete; never raises for a failing
        notebook (it writes ``failed.json`` with the error and returns state ``failed``)."""
        if self.state == "done":
            return {"run": self.name, "state": "skipped"}
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_params_file()
        (self.path / "failed.json").unlink(missing_ok=True)
        _write_json(self.path / "started.json", {"host": socket.gethostname(), "pid": os.getpid(),
                                                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        start = time.time()
        try:
            self._papermill()
            if self.writes_results and not (self.path / "results.csv").exists():
                raise RuntimeError("the notebook finished without writing results.csv into RESULTS_DIR")
        except Exception as exc:  # the notebook's error, recorded for `status`; the sweep goes on
            error = f"{type(exc).__name__}: {exc}"
            _write_json(self.path / "failed.json", {"error": error[-4000:], "wall_s": time.time() - start,
                                                    "traceback": traceback.format_exc()[-4000:]})
            return {"run": self.name, "state": "failed", "error": error.strip().splitlines()[-1][:300]}
        wall = time.time() - start
        _write_json(self.path / "done.json", {"wall_s": wall, "host": socket.gethostname(),
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        (self.path / "started.json").unlink(missing_ok=True)
        return {"run": self.name, "state": "done", "wall_s": wall}

    def _check_params_file(self) -> None:
        record = {"notebook": self.notebook, "parameters": self.parameters, "env": self.env}
        target = self.path / "params.json"
        if target.exists():
            old = json.loads(target.read_text(encoding="utf-8"))
            if {k: old.get(k) for k in ("parameters", "env")} != results._jsonable(
                    {k: record[k] for k in ("parameters", "env")}):
                raise RuntimeError(f"{target} holds other parameters; refusing to resume into it")
        _write_json(target, record)

    def _papermill(self) -> None:
        import logging

        import papermill

        logging.getLogger("papermill").setLevel(logging.ERROR)  # parameters were checked by load_grid

        params = dict(self.parameters)
        if self.writes_results:
            params["RESULTS_DIR"] = str(self.path)
        kwargs = {"execution_timeout": self.cell_timeout_s} if self.cell_timeout_s else {}
        with _environment({**self.env, "UNROLL_CACHE": str(self.path / "cache")}):
            papermill.execute_notebook(self.notebook, str(self.path / "notebook.ipynb"), parameters=params,
                                       kernel_name=KERNEL, cwd=str(Path(self.notebook).parent),
                                       progress_bar=False, log_output=False, **kwargs)


def run_point(run: Run) -> dict:
    """The job body (a module-level function so that process pools and submitit can pickle it)."""
    return run.execute()


class SubmititJob(submitit.helpers.Checkpointable):
    """The submitit job body. Being ``Checkpointable``, a job that SLURM stops at its time limit (or
    preempts) is requeued by submitit (up to 3 times) with the same run, which then resumes from the
    notebook's checkpoints."""

    def __call__(self, run: Run) -> dict:
        return run.execute()


# ----------------------------------------------------------------------------------------------------------------
# Executors


def _describe(run: Run, swept: Sequence[str]) -> str:
    return ", ".join(f"{k}={run.parameters[k]}" for k in swept) or "(no axes)"


def _run_local(runs: list[Run], workers: int, report: Callable[[dict], None]) -> None:
    """A pool of ``workers`` fresh processes ("spawn": no fork of a process that holds torch threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_point, r): r for r in runs}
        for future in as_completed(futures):
            try:
                report(future.result())
            except Exception as exc:  # the worker process itself died
                report({"run": futures[future].name, "state": "failed", "error": f"{type(exc).__name__}: {exc}"})


def submitit_executor(grid: Grid, kind: str):
    """A ``submitit.AutoExecutor`` for ``kind`` (``slurm`` or ``submitit-local``) with the grid's options.

    Logs and pickled jobs go to ``<output>/.submitit/<job id>``. ``time_min`` becomes ``timeout_min``; the
    grid's ``executor.slurm`` keys map to ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``,
    ``mem_gb`` and ``slurm_array_parallelism``, and ``extra`` is passed through.
    """
    cluster = "slurm" if kind == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=grid.output / ".submitit" / "%j", cluster=cluster)
    options = {"timeout_min": grid.executor.time_min, "name": f"sweep-{grid.path.stem}"}
    if kind == "slurm":
        slurm = dict(grid.executor.slurm)
        options.update(slurm.pop("extra", None) or {})
        options.update({SLURM_KEYS[k]: v for k, v in slurm.items()})
    executor.update_parameters(**options)
    return executor


def _run_submitit(runs: list[Run], grid: Grid, wait: bool, report: Callable[[dict], None],
                  echo: Callable[[str], None]) -> list:
    executor = submitit_executor(grid, grid.executor.kind)
    jobs = executor.map_array(SubmititJob(), runs)
    echo(f"submitted {len(jobs)} job(s) ({grid.executor.kind}); logs in {grid.output / '.submitit'}")
    if not wait:
        return jobs
    for job, run in zip(jobs, runs):
        try:
            report(job.result())
        except Exception as exc:  # the job was killed or crashed outside the notebook (e.g. SLURM timeout)
            report({"run": run.name, "state": "failed", "error": f"{type(exc).__name__}: {str(exc)[-300:]}"})
    return jobs


def run_grid(grid: Grid, wait: bool = True, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Execute every run of ``grid`` that is not complete (complete runs are skipped; started or failed
    ones run again and resume from their checkpoints).

    Args:
        grid: from :func:`load_grid` (validated).
        wait: for submitit executors, wait for the jobs (False: submit and return; see :func:`status`).
        echo: where the one-line progress messages go.

    Returns:
        One row per run: run, state (``done``, ``failed``, ``skipped``, ``submitted``), wall_s, error.
    """
    grid.output.mkdir(parents=True, exist_ok=True)
    _write_json(grid.output / "grid.json", {"grid": str(grid.path), "notebook": str(grid.notebook),
                                             "runs": [r.name for r in grid.runs()]})
    runs = grid.runs()
    todo = [r for r in runs if r.state != "done"]
    rows = [{"run": r.name, "state": "skipped"} for r in runs if r.state == "done"]
    echo(f"{len(runs)} run(s): {len(rows)} complete (skipped), {len(todo)} to run with {grid.executor.kind}")
    by_name = {r.name: r for r in runs}

    def report(row: dict) -> None:
        rows.append(row)
        wall = f" {row['wall_s']:.0f} s" if "wall_s" in row else ""
        err = f" ({row['error']})" if "error" in row else ""
        echo(f"[{len(rows)}/{len(runs)}] {row['state']:7s} {row['run']} "
             f"{_describe(by_name[row['run']], grid.swept)}{wall}{err}")

    if todo and grid.executor.kind == "local":
        _run_local(todo, min(grid.executor.workers, len(todo)), report)
    elif todo:
        jobs = _run_submitit(todo, grid, wait, report, echo)
        if not wait:
            rows += [{"run": r.name, "state": "submitted", "job": j.job_id} for r, j in zip(todo, jobs)]
    return pd.DataFrame(rows, columns=["run", "state", "wall_s", "error", *(["job"] if not wait else [])])


def status(grid: Grid) -> pd.DataFrame:
    """One row per run: run, state (done / failed / started / pending), the swept parameters, wall_s, error."""
    rows = []
    for run in grid.runs():
        row = {"run": run.name, "state": run.state, **{k: run.parameters[k] for k in grid.swept}}
        for marker, key in (("done.json", "wall_s"), ("failed.json", "error")):
            if (run.path / marker).exists():
                value = json.loads((run.path / marker).read_text(encoding="utf-8"))[key]
                row[key] = value.strip().splitlines()[-1][:120] if key == "error" else round(value, 1)
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "state", *grid.swept, "wall_s", "error"])


# ----------------------------------------------------------------------------------------------------------------
# Aggregation


def _cell(value: Any) -> Any:
    """A table cell for a parameter value (lists and mappings as JSON text, so they can be grouped on)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def collect(grid: Grid) -> pd.DataFrame:
    """Every complete run's results in one tidy table: ``run``, the run's parameters (every shared and
    swept one; a parameter whose name is also a results column is called ``param_<NAME>``), then the
    notebook's results columns, one row per results row, runs in grid order.

    Raises:
        GridError: if the notebook writes no results table (it has no ``RESULTS_DIR`` parameter).
    """
    if not grid.writes_results:
        raise GridError(f"notebook: {grid.notebook.name} has no RESULTS_DIR parameter, so its runs write no "
                        "results table to aggregate (the executed notebooks are in the run folders)")
    frames = []
    for run in grid.runs():
        if run.state != "done":
            continue
        table, _, _ = results.load_table(run.path / "results")
        params = {(f"param_{k}" if k in table.columns else k): _cell(v) for k, v in run.parameters.items()}
        frames.append(pd.DataFrame({"run": run.name, **params}, index=table.index).join(table))
    if not frames:
        return pd.DataFrame(columns=["run", *grid.parameters, *grid.swept])
    return pd.concat(frames, ignore_index=True)


def mean_ci(values: Sequence[float], level: float = 0.95, method: str = "t", seed: int = 0,
            resamples: int = 10_000) -> tuple[float, float, float]:
    """Mean and confidence interval of independent replicates (e.g. one value per seed).

    Args:
        values: n finite values.
        level: coverage of the interval.
        method: ``"t"`` — Student's t interval mean ± t_{(1+level)/2, n−1}·s/√n with the unbiased standard
            deviation s (the default: exact for normal replicates, and the few seeds of a sweep are too few
            for a bootstrap); ``"bootstrap"`` — the percentile interval of ``resamples`` bootstrap means
            drawn with ``numpy.random.default_rng(seed)``.
        seed, resamples: of the bootstrap.

    Returns:
        (mean, low, high); low = high = NaN when n < 2.

    Raises:
        ValueError: if ``values`` is empty, ``level`` is outside (0, 1) or ``method`` is unknown.
    """
    from unroll_utils.statistics import t_interval  # imports scipy: only when intervals are drawn

    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    mean, low, high = t_interval(values, level)
    if method == "t" or math.isnan(low):
        return mean, low, high
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(low), float(high)


def _per_run(table: pd.DataFrame, y: str, keys: list[str], rows: str) -> pd.DataFrame:
    """One value of ``y`` per run and ``keys`` group: the run's last row, or the mean of its rows."""
    if rows == "last":
        table = table.groupby("run", sort=False).tail(1)
    return table.groupby(["run", *keys], sort=False, dropna=False)[y].mean().reset_index()


def summarize(table: pd.DataFrame, y: str, x: str, hue: str | None = None, facets: Sequence[str] = (),
              rows: str = "auto", ci: str = "t", level: float = 0.95) -> pd.DataFrame:
    """Mean and CI of ``y`` over runs (seeds) for each value of ``x`` (and ``hue`` and ``facets``).

    Each run first gives one value per group: with ``rows="last"`` its last results row (e.g. the end of
    training), with ``rows="all"`` the mean of its rows in the group (e.g. one row per t when x is t);
    ``"auto"`` is ``last`` when x is a run parameter and ``all`` when x is a results column. The runs
    that share x, hue and facets (they differ only by seed) are then summarised by :func:`mean_ci`.

    Returns:
        Columns facets…, hue, x, mean, low, high, n (number of runs), sorted.

    Raises:
        KeyError: naming a column that is not in ``table``.
    """
    keys = [*facets, *([hue] if hue else []), x]
    for name in [y, *keys]:
        if name not in table.columns:
            raise KeyError(f"column {name!r} is not in the table (columns: {', '.join(map(str, table.columns))})")
    if rows == "auto":
        run_level = table.groupby("run")[x].nunique(dropna=False).max() <= 1 if len(table) else True
        rows = "last" if run_level else "all"
    per_run = _per_run(table, y, keys, rows)
    out = []
    for group, values in per_run.groupby(keys, sort=True, dropna=False):
        mean, low, high = mean_ci(values[y].to_numpy(), level=level, method=ci)
        out.append({**dict(zip(keys, group)), "mean": mean, "low": low, "high": high, "n": len(values)})
    return pd.DataFrame(out, columns=[*keys, "mean", "low", "high", "n"])


def plot_summary(summary: pd.DataFrame, y: str, x: str, hue: str | None = None, title: str | None = None,
                 logx: bool = False, logy: bool = False, save: str | os.PathLike | None = None):
    """Means (lines, through :func:`unroll_utils.plot.plot_curves`) with their CIs (shaded bands) of a
    :func:`summarize` table, one curve per ``hue`` value. Returns the matplotlib Figure."""
    from unroll_utils import plot

    groups = summary.groupby(hue, sort=True) if hue else [(None, summary)]
    xs, means, bands = {}, {}, []
    for value, part in groups:
        label = y if hue is None else f"{hue}={value}"
        part = part.sort_values(x)
        xs[label], means[label] = part[x].to_numpy(float), part["mean"].to_numpy(float)
        bands.append((part[x].to_numpy(float), part["low"].to_numpy(float), part["high"].to_numpy(float)))
    level = "95% CI over seeds" if summary["n"].max() > 1 else "one run per point"
    fig = plot.plot_curves(xs, means, xlabel=x, ylabel=f"{y} (mean, {level})", title=title, logx=logx, logy=logy)
    ax = fig.axes[0]
    for colour, (bx, low, high) in zip(plot.PALETTE, bands):
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            ax.fill_between(bx[ok], low[ok], high[ok], color=colour, alpha=0.2, linewidth=0)
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save)
    return fig


def _facets(grid: Grid, spec: dict) -> list[str]:
    """Axes with more than one value that the figure neither draws on x nor as curves: one figure each."""
    used = {spec["x"], spec.get("hue")}
    return [a for a, values in grid.axes.items() if len(values) > 1 and a not in used]


def _figure(grid: Grid, table: pd.DataFrame, spec: dict, folder: Path) -> list[Path]:
    """Draw one figure spec (one file per facet combination) and save its summary table next to it."""
    import matplotlib.pyplot as plt

    from unroll_utils import plot

    plot.setup(svg=False)
    facets = _facets(grid, spec)
    summary = summarize(table, spec["y"], spec["x"], spec.get("hue"), facets, spec.get("rows", "auto"),
                        spec.get("ci", "t"))
    name = spec.get("name") or "_".join([spec["y"], "vs", spec["x"], *(["by", spec["hue"]] if spec.get("hue")
                                                                        else [])])
    results.save_table(summary, folder / name, config={"figure": spec, "facets": facets})
    written = []
    for key, part in (summary.groupby(facets, sort=True) if facets else [((), summary)]):
        key = key if isinstance(key, tuple) else (key,)
        tag = "_".join(f"{f}={v}" for f, v in zip(facets, key))
        path = folder / (f"{name}_{re.sub(r'[^A-Za-z0-9._=-]+', '-', tag)}.png" if tag else f"{name}.png")
        fig = plot_summary(part, spec["y"], spec["x"], spec.get("hue"), title=tag.replace("_", ", ") or None,
                           logx=bool(spec.get("logx")), logy=bool(spec.get("logy")), save=path)
        plt.close(fig)
        written.append(path)
    return written


def aggregate(grid: Grid, figures: list[dict] | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Collect the complete runs into ``<output>/aggregate.csv`` (+ ``.json`` with the grid and the run
    states), then draw each figure spec (the grid's ``figures`` unless given) into ``<output>/figures/``
    as PNGs plus the summary table (mean, CI, n) of each.

    Returns:
        (the tidy table, the files written).
    """
    table = collect(grid)
    states = status(grid)["state"].value_counts().to_dict()
    written = list(results.save_table(table, grid.output / "aggregate", config={
        "grid": str(grid.path), "notebook": str(grid.notebook), "parameters": grid.parameters,
        "axes": grid.axes, "seeds": grid.seeds, "env": grid.env}, summary={"runs": states}))
    specs = _check_figures(grid.figures if figures is None else figures)
    if len(table):
        for spec in specs:
            written += _figure(grid, table, spec, grid.output / "figures")
    return table, written


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unroll_utils.sweep",
                                     description="Run a notebook over a parameter grid (papermill), locally or "
                                                 "on SLURM (submitit), and aggregate the results.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("check", "validate a grid file and list its runs; runs nothing"),
                       ("run", "execute every incomplete run (complete runs are skipped, others resume)"),
                       ("status", "the state of every run"),
                       ("aggregate", "one tidy table of every complete run, and the figures")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("grid", help="the grid file (YAML)")
        if name == "run":
            cmd.add_argument("--executor", choices=KINDS, help="overrides executor.kind of the grid file")
            cmd.add_argument("--workers", type=int, help="local executor: runs at a time (overrides the grid)")
            cmd.add_argument("--no-wait", action="store_true", help="submitit: submit and return")
        if name == "aggregate":
            cmd.add_argument("--y", help="draw this results column (instead of the grid's figures)")
            cmd.add_argument("--x", help="against this parameter or results column")
            cmd.add_argument("--hue", help="one curve per value of this parameter")
            cmd.add_argument("--rows", choices=("auto", "last", "all"), default="auto",
                             help="one value per run: its last row, or the mean of its rows (auto: by x)")
            cmd.add_argument("--ci", choices=("t", "bootstrap"), default="t", help="95%% CI over seeds")
    params = sub.add_parser("params", help="list a notebook's parameters (names, defaults, types)")
    params.add_argument("notebook")
    return parser


def _show(frame: pd.DataFrame, max_rows: int = 40) -> str:
    with pd.option_context("display.max_columns", 30, "display.width", 160):
        return frame.to_string(max_rows=max_rows, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for a bad grid, 1 if a run failed)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "params":
            rows = [{"name": p.name, "default": p.source, "type": p.type_name, "help": p.help}
                    for p in notebook_parameters(args.notebook).values()]
            print(_show(pd.DataFrame(rows), max_rows=500))
            return 0
        grid = load_grid(args.grid, kind=getattr(args, "executor", None), workers=getattr(args, "workers", None))
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.grid}: valid; {len(grid.runs())} run(s) of {grid.notebook} into {grid.output}")
        print(_show(status(grid)))
    elif args.command == "run":
        table = run_grid(grid, wait=not args.no_wait)
        return int((table["state"] == "failed").any())
    elif args.command == "status":
        table = status(grid)
        print(_show(table, max_rows=500))
        print(table["state"].value_counts().to_string())
    else:
        spec = None if args.y is None else [{"y": args.y, "x": args.x or "t", "hue": args.hue, "rows": args.rows,
                                             "ci": args.ci}]
        try:
            table, written = aggregate(grid, spec)
        except (GridError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        states = status(grid)["state"]
        print(f"{(states == 'done').sum()} of {len(states)} run(s) complete; {len(table)} result row(s)")
        print(_show(table, max_rows=20))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
