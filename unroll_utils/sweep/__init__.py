"""Sweeps: a grid file → one papermill run per point, locally or on SLURM, → one tidy table and figures.

A *grid file* (YAML) names a notebook, the parameters every run shares, the axes whose product gives the
points, the seeds (replicates), an output root and the executor::

    notebook: ../notebooks/05_sd_loss.ipynb   # relative paths: relative to the grid file's folder
    output: ../runs/smoke                     # one folder per run under here
    parameters: {SMOKE: true}                 # shared by every run
    axes: {LR: [0.01, 0.03]}                  # the product of the axes gives the points
    seeds: {SEED: [0, 1]}                     # one parameter: the replicates of each point
    env: {OMP_NUM_THREADS: "1"}               # environment variables of every run
    executor: {kind: local, workers: 2}       # local | debug | slurm (+ slurm: {...}), all through submitit
    figures: [{y: ve, x: t, hue: LR}]         # what `aggregate` draws

Every point runs in ``<output>/<fingerprint of notebook name, parameters and env>/`` holding ``params.json``,
the executed ``notebook.ipynb``, the notebook's ``results.csv``/``results.json`` (the notebook writes them
when its ``RESULTS_DIR`` parameter is set; the runner sets it to the run folder), its checkpoints under
``cache/`` (``UNROLL_CACHE``) and, once complete, ``done.json``. A complete run is skipped; any other
existing run is executed again and resumes from its checkpoints. The contract with the notebooks is in the
README ("Sweeps").

Modules: :mod:`~unroll_utils.sweep.notebook` (a notebook's parameters and their checks),
:mod:`~unroll_utils.sweep.grid` (reading and validating a grid file), :mod:`~unroll_utils.sweep.run`
(executing the runs with submitit; resume), :mod:`~unroll_utils.sweep.aggregate` (the tidy table, and
figures with intervals over seeds from :func:`unroll_utils.statistics.seed_summary`) and
:mod:`~unroll_utils.sweep.cli` (the command line, also ``python -m unroll_utils.sweep`` and ``unroll-sweep``:
``{check,run,status,aggregate,params} ...``, ``--help``).
"""

from unroll_utils.sweep.aggregate import aggregate, collect, plot_summary, summarize
from unroll_utils.sweep.cli import main
from unroll_utils.sweep.grid import Grid, load_grid
from unroll_utils.sweep.notebook import GridError, NotebookParameter, notebook_parameters
from unroll_utils.sweep.run import Run, SubmititJob, run_at_most, run_grid, status, submitit_executor

__all__ = ["GridError", "Grid", "Run", "NotebookParameter", "notebook_parameters", "load_grid", "run_grid",
           "run_at_most", "SubmititJob", "submitit_executor", "status", "collect", "summarize",
           "plot_summary", "aggregate", "main"]
