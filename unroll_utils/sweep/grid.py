"""The grid file: reading and validating it before anything runs, and its points.

A grid file (YAML) names a notebook, the parameters every run shares, the axes whose product gives the
points, the seeds (replicates), an output root, the executor and the figures; the keys are in the README
("Sweeps") and in the package docstring (:mod:`unroll_utils.sweep`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from unroll_utils.sweep.notebook import GridError, NotebookParameter, check_value, notebook_parameters

if TYPE_CHECKING:
    from unroll_utils.sweep.run import Run

# local: submitit.LocalExecutor, `workers` runs at a time; debug: submitit.DebugExecutor, in this process;
# slurm: submitit.AutoExecutor on SLURM, one array job
KINDS = ("local", "debug", "slurm")
GRID_KEYS = ("notebook", "output", "parameters", "axes", "seeds", "env", "executor", "figures")
EXECUTOR_KEYS = ("kind", "workers", "time_min", "cell_timeout_s", "slurm")
# grid-file name -> submitit.AutoExecutor parameter ("extra" is passed through as it is)
SLURM_KEYS = {"partition": "slurm_partition", "gpus": "gpus_per_node", "cpus": "cpus_per_task",
              "mem_gb": "mem_gb", "array_parallelism": "slurm_array_parallelism", "extra": None}
FIGURE_KEYS = ("y", "x", "hue", "rows", "ci", "logx", "logy", "name")
RESERVED = ("RESULTS_DIR",)  # set by the runner, never by the grid
INHERITED = ("UNROLL_SMOKE",)  # environment variables of the caller that change results (part of the run hash)


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


@dataclass
class ExecutorOptions:
    """How the runs are executed.

    kind: ``local`` (submitit's LocalExecutor: each run in its own process on this machine, at most
        ``workers`` at a time), ``debug`` (submitit's DebugExecutor: the runs one after another in this
        process, for a first try or a debugger) or ``slurm`` (one SLURM array job through submitit).
    workers: ``local`` only: runs at a time.
    time_min: wall-clock limit of one run in minutes (``local`` and ``slurm``; a run that reaches it is
        stopped and started again, up to 3 times, resuming from its checkpoints).
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
        """The seed parameter's name, or None when the grid has no ``seeds``."""
        return next(iter(self.seeds), None)

    def points(self) -> list[dict[str, Any]]:
        """Every run's parameters: the shared ones plus one value per axis (seeds vary fastest)."""
        names = self.swept
        values = [*self.axes.values(), *self.seeds.values()]
        return [{**self.parameters, **dict(zip(names, combo))} for combo in itertools.product(*values)]

    def runs(self) -> list["Run"]:
        """One :class:`Run` per point, in :meth:`points` order."""
        from unroll_utils.sweep.run import Run  # run.py builds on this module

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
    checked = [check_value(f"{key}[{i}]", v, param, notebook) for i, v in enumerate(values)]
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
    fixed = {n: check_value(f"parameters.{n}", v, declared[n], notebook) for n, v in fixed.items()}
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
        merged = (" (local runs on submitit's LocalExecutor now: use local)" if kind == "submitit-local"
                  else "")
        raise GridError(f"executor.kind: must be one of {list(KINDS)}, got {kind!r}{merged}")
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


def check_figures(raw: Any) -> list[dict]:
    """Validate the ``figures`` entry of a grid.

    Args:
        raw: a list of mappings with ``y`` and ``x`` and optionally the other :data:`FIGURE_KEYS`
            (None or empty: no figure).

    Returns:
        The specs, copied.

    Raises:
        GridError: naming the entry (``figures[i]``) and the key: not a list of mappings, ``y`` or
            ``x`` missing, an unknown key, ``rows`` not auto/last/all, an unknown ``ci`` method.
    """
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
        if "ci" in spec:
            from unroll_utils.statistics import SUMMARY_METHODS  # imports scipy: only when a figure names one

            if spec["ci"] not in SUMMARY_METHODS:
                raise GridError(f"figures[{i}].ci: must be {' or '.join(SUMMARY_METHODS)}, "
                                f"got {spec['ci']!r}")
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

    Returns:
        The validated :class:`Grid`.

    Raises:
        GridError: naming the file, line and column for malformed YAML or a key given twice in one
            mapping; naming the key, for an unknown key or parameter, a value whose type differs from the
            notebook's default literal or that the notebook's validation line rejects, an empty axis, a
            duplicate value (duplicate points), a missing notebook or output, a bad executor or figure
            option.
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
                figures=check_figures(raw.get("figures")),
                writes_results="RESULTS_DIR" in declared)
    folders = [r.folder for r in grid.runs()]
    if len(set(folders)) != len(folders):
        raise GridError("axes: two points have the same parameters (duplicate points)")
    return grid
