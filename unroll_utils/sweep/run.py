"""Executing a grid: one papermill run per point, through submitit alone, with resume and atomic markers.

Executors (``executor.kind`` of the grid file), all submitit's:

- ``local``: :class:`submitit.LocalExecutor`, each run in its own process on this machine; this process
  keeps at most ``workers`` of them running (submitit's local executor starts every job it is given at
  once) and reports each as it finishes.
- ``debug``: :class:`submitit.DebugExecutor`, the runs one after another inside this process (a first
  try of a grid, or a debugger on the runner).
- ``slurm``: :class:`submitit.AutoExecutor` on a SLURM cluster, the runs as one array job
  (``array_parallelism`` at a time).

Every run executes in ``<output>/<fingerprint>/`` and leaves ``params.json``, ``started.json`` while it
runs, then ``done.json`` or ``failed.json`` (each written atomically through
:func:`unroll_utils.results.atomic_write`); a run with ``done.json`` is skipped, any other is executed
again and resumes from its checkpoints in ``cache/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pandas as pd
import submitit
import submitit.helpers

from unroll_utils import results
from unroll_utils.sweep.grid import SLURM_KEYS, Grid

KERNEL = "python3"
POLL_S = 0.5  # how often the local executor's running jobs are looked at, in seconds
GPU_VARIABLE = "CUDA_VISIBLE_DEVICES"


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
        """The run of one grid point; its folder is ``<output>/<hash of notebook, point and env>``."""
        key = results.fingerprint({"notebook": grid.notebook.name, "parameters": point, "env": grid.env})
        return cls(str(grid.notebook), str(grid.output / key), point, dict(grid.env),
                   grid.executor.cell_timeout_s, grid.writes_results)

    @property
    def path(self) -> Path:
        """The run folder."""
        return Path(self.folder)

    @property
    def name(self) -> str:
        """The run folder's name (the hash)."""
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
        """Execute the notebook into the run folder unless the run is complete.

        A failing notebook does not raise: its error goes to ``failed.json`` and the returned state is
        ``failed``.

        Returns:
            dict with ``run``, ``state`` (``skipped``, ``done`` or ``failed``) and ``wall_s`` or ``error``.

        Raises:
            RuntimeError: the run folder's ``params.json`` holds other parameters (no resume into it).
        """
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


class SubmititJob(submitit.helpers.Checkpointable):
    """The job body of every executor: ``job(run)`` executes ``run`` (:meth:`Run.execute`).

    Being ``Checkpointable``, a job stopped at its time limit (``time_min``: by SLURM, or by submitit's
    local controller) or preempted is started again by submitit, up to 3 times, with the same run, which
    resumes from the notebook's checkpoints.

    Args:
        environ: environment variables to set in the job's process before the run (``None``: unset).
            submitit's local executor gives each job ``CUDA_VISIBLE_DEVICES`` of the GPUs it was asked
            for (none); local jobs pass the caller's value here so that a run sees the GPUs ``run`` sees.
    """

    def __init__(self, environ: dict[str, str | None] | None = None) -> None:
        self.environ = dict(environ or {})

    def __call__(self, run: Run) -> dict:
        for name, value in self.environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return run.execute()


def _describe(run: Run, swept: Sequence[str]) -> str:
    return ", ".join(f"{k}={run.parameters[k]}" for k in swept) or "(no axes)"


def submitit_executor(grid: Grid, kind: str | None = None) -> submitit.AutoExecutor:
    """A ``submitit.AutoExecutor`` for ``kind`` (default the grid's ``executor.kind``: ``local``,
    ``debug`` or ``slurm``) with the grid's options.

    Logs and pickled jobs go to ``<output>/.submitit/<job id>``. ``time_min`` becomes ``timeout_min``
    (``debug`` runs have no limit); for ``slurm`` the grid's ``executor.slurm`` keys map to
    ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb`` and
    ``slurm_array_parallelism``, and ``extra`` is passed through.

    Args:
        grid: the loaded grid.
        kind: ``local``, ``debug`` or ``slurm`` (default: the grid's ``executor.kind``).

    Returns:
        The configured ``submitit.AutoExecutor``.
    """
    kind = kind or grid.executor.kind
    executor = submitit.AutoExecutor(folder=grid.output / ".submitit" / "%j", cluster=kind)
    options = {"timeout_min": grid.executor.time_min, "name": f"sweep-{grid.path.stem}"}
    if kind == "slurm":
        slurm = dict(grid.executor.slurm)
        options.update(slurm.pop("extra", None) or {})
        options.update({SLURM_KEYS[k]: v for k, v in slurm.items()})
    executor.update_parameters(**options)
    return executor


def _outcome(job, run: Run) -> dict:
    """The row of a finished job: its run's own report, or ``failed`` with the error when the job died
    outside the notebook (killed, out of memory, SLURM timeout after the last requeue)."""
    try:
        return job.result()
    except Exception as exc:
        return {"run": run.name, "state": "failed", "error": f"{type(exc).__name__}: {str(exc)[-300:]}"}


def run_at_most(executor, job: Callable[[Run], dict], runs: Sequence[Run], workers: int,
                report: Callable[[dict], None], poll_s: float = POLL_S) -> None:
    """Submit ``runs`` to a submitit ``executor`` one job at a time, keeping at most ``workers`` running,
    and ``report`` each job's row as it finishes (in finishing order).

    submitit's local executor starts every job it is given at once; this is the "N at a time" of
    ``executor.workers``. Jobs still running when this is interrupted (Ctrl-C) are cancelled.

    Args:
        executor: a submitit executor (:func:`submitit_executor`).
        job: the callable submitted for each run (it returns the run's row).
        runs: the runs to execute.
        workers: jobs running at once, ≥ 1.
        report: called with each finished job's row.
        poll_s: seconds between checks for finished jobs.

    Raises:
        ValueError: if ``workers`` < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    waiting, running = list(runs), []
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                run = waiting.pop(0)
                running.append((executor.submit(job, run), run))
            finished = [(j, r) for j, r in running if j.done()]
            running = [(j, r) for j, r in running if all(j is not f for f, _ in finished)]
            for j, r in finished:
                report(_outcome(j, r))
            if not finished:
                time.sleep(poll_s)
    finally:
        for j, _ in running:
            with contextlib.suppress(Exception):
                j.cancel(check=False)


def _run_array(runs: list[Run], grid: Grid, wait: bool, report: Callable[[dict], None]) -> list:
    """The runs as one SLURM array job; with ``wait``, report each in grid order."""
    jobs = submitit_executor(grid, "slurm").map_array(SubmititJob(), runs)
    if wait:
        for job, run in zip(jobs, runs):
            report(_outcome(job, run))
    return jobs


def run_grid(grid: Grid, wait: bool = True, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Execute every run of ``grid`` that is not complete (complete runs are skipped; started or failed
    ones run again and resume from their checkpoints), with the grid's executor.

    Args:
        grid: from :func:`load_grid` (validated).
        wait: ``slurm`` only: False submits the array job and returns (see :func:`status`). ``local`` and
            ``debug`` runs always finish before this returns (this process starts each next run).
        echo: where the one-line progress messages go.

    Returns:
        One row per run: run, state (``done``, ``failed``, ``skipped``, ``submitted``), wall_s, error
        (and job, the SLURM job id, without ``wait``).

    Raises:
        ValueError: ``wait=False`` with a ``local`` or ``debug`` executor.
    """
    kind = grid.executor.kind
    if not wait and kind != "slurm":
        raise ValueError(f"wait=False needs the slurm executor; {kind} runs are started by this process")
    grid.output.mkdir(parents=True, exist_ok=True)
    _write_json(grid.output / "grid.json", {"grid": str(grid.path), "notebook": str(grid.notebook),
                                             "runs": [r.name for r in grid.runs()]})
    runs = grid.runs()
    todo = [r for r in runs if r.state != "done"]
    rows = [{"run": r.name, "state": "skipped"} for r in runs if r.state == "done"]
    echo(f"{len(runs)} run(s): {len(rows)} complete (skipped), {len(todo)} to run with {kind}"
         + (f"; logs in {grid.output / '.submitit'}" if todo else ""))
    by_name = {r.name: r for r in runs}

    def report(row: dict) -> None:
        rows.append(row)
        wall = f" {row['wall_s']:.0f} s" if "wall_s" in row else ""
        err = f" ({row['error']})" if "error" in row else ""
        echo(f"[{len(rows)}/{len(runs)}] {row['state']:7s} {row['run']} "
             f"{_describe(by_name[row['run']], grid.swept)}{wall}{err}")

    if todo and kind == "slurm":
        jobs = _run_array(todo, grid, wait, report)
        if not wait:
            rows += [{"run": r.name, "state": "submitted", "job": j.job_id} for r, j in zip(todo, jobs)]
    elif todo:
        workers = min(grid.executor.workers, len(todo)) if kind == "local" else 1
        environ = {GPU_VARIABLE: os.environ.get(GPU_VARIABLE)} if kind == "local" else {}
        run_at_most(submitit_executor(grid), SubmititJob(environ), todo, workers, report)
    return pd.DataFrame(rows, columns=["run", "state", "wall_s", "error", *(["job"] if not wait else [])])


def status(grid: Grid) -> pd.DataFrame:
    """The state of every run of a grid.

    Args:
        grid: the loaded grid.

    Returns:
        DataFrame with one row per run: ``run``, ``state`` (done / failed / started / pending), the swept
        parameters, ``wall_s``, ``error``.
    """
    rows = []
    for run in grid.runs():
        row = {"run": run.name, "state": run.state, **{k: run.parameters[k] for k in grid.swept}}
        for marker, key in (("done.json", "wall_s"), ("failed.json", "error")):
            if (run.path / marker).exists():
                value = json.loads((run.path / marker).read_text(encoding="utf-8"))[key]
                row[key] = value.strip().splitlines()[-1][:120] if key == "error" else round(value, 1)
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "state", *grid.swept, "wall_s", "error"])
