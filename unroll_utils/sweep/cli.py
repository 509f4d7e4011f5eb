"""The command line: ``python -m unroll_utils.sweep {check,run,status,aggregate,params} ...`` (or
``unroll-sweep ...`` once the package is installed); ``--help`` lists the options."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import pandas as pd

from unroll_utils.sweep.aggregate import aggregate
from unroll_utils.sweep.grid import KINDS, load_grid
from unroll_utils.sweep.notebook import GridError, notebook_parameters
from unroll_utils.sweep.run import run_grid, status


def _parser() -> argparse.ArgumentParser:
    from unroll_utils.statistics import SUMMARY_METHODS  # imports scipy: only for the command line

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
            cmd.add_argument("--executor", choices=KINDS,
                             help="overrides executor.kind of the grid file: local (runs in processes here, "
                                  "--workers at a time), debug (one after another in this process) or slurm")
            cmd.add_argument("--workers", type=int, help="local executor: runs at a time (overrides the grid)")
            cmd.add_argument("--no-wait", action="store_true", help="slurm: submit the array job and return")
        if name == "aggregate":
            cmd.add_argument("--y", help="draw this results column (instead of the grid's figures)")
            cmd.add_argument("--x", help="against this parameter or results column")
            cmd.add_argument("--hue", help="one curve per value of this parameter")
            cmd.add_argument("--rows", choices=("auto", "last", "all"), default="auto",
                             help="one value per run: its last row, or the mean of its rows (auto: by x)")
            cmd.add_argument("--ci", choices=SUMMARY_METHODS, default="t",
                             help="95%% interval over seeds: Student's t, or the percentile bootstrap")
    params = sub.add_parser("params", help="list a notebook's parameters (names, defaults, types)")
    params.add_argument("notebook")
    return parser


def _show(frame: pd.DataFrame, max_rows: int = 40) -> str:
    with pd.option_context("display.max_columns", 30, "display.width", 160):
        return frame.to_string(max_rows=max_rows, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line ``python -m unroll_utils.sweep``.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for a bad grid, 1 if a run failed.
    """
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
        if args.no_wait and grid.executor.kind != "slurm":
            print(f"error: --no-wait needs --executor slurm; {grid.executor.kind} runs are started by this "
                  "command, workers at a time, so it waits for them", file=sys.stderr)
            return 2
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

