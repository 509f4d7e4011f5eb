"""Run the benchmark suite: ``python -m benchmarks.run [--quick|--full] [--device cpu|cuda|auto]
[--out benchmarks/out] [--threads N] [--rows 1,2,3,4,6,7]``.

Prints the table of targets and ratios and writes ``results.csv`` (targets/ratios),
``measurements.csv`` (every timed case) and ``results.md`` (both tables) to ``--out``, atomically.
See benchmarks/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

import numpy as np
import torch

from unroll_utils.device import DEVICES, resolve_device

from . import exp_a, metrics_cost, peers, sigma, throughput
from .context import Context, Settings
from .report import Report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small ResNet-18 batches and budgets "
                      "(default on CPU)")
    mode.add_argument("--full", action="store_true", help="128-image ResNet-18 batch, full budgets "
                      "(default on CUDA)")
    p.add_argument("--device", default="cpu", choices=list(DEVICES))
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch.set_num_threads, >= 1 (default: torch's own choice)")
    p.add_argument("--rows", type=_rows, default="1,2,3,4,6,7", help="comma-separated rows to run, "
                   "from 1,2,3,4,6,7 (row 5, memory, is collected by every row)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"--device: {err}")
    quick = args.quick or (not args.full and device.type == "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    rows = args.rows
    t_suite = time.perf_counter()

    settings = Settings.make(device, quick, args.seed)
    report = Report()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report.header.update({
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if quick else "full",
        "device": f"{device.type} ({dev_name})",
        "torch": torch.__version__,
        "threads": f"{torch.get_num_threads()} (of {os.cpu_count()} CPUs)",
        "load average at start": (f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}" if load else "n/a"),
        "seed": args.seed,
    })
    print(f"benchmarks: mode={'quick' if quick else 'full'} device={device} "
          f"threads={torch.get_num_threads()}", flush=True)
    ctx = Context(settings).build()
    print(f"  setup (data, small-CNN pretraining): {ctx.info['setup_seconds']:.1f} s", flush=True)

    step_times = {}
    stages = [
        (1, "σ: Lanczos/power vs PyHessian", lambda: sigma.run(ctx, report)),
        (1, "σ along a trajectory", lambda: sigma.run_trajectory(ctx, report)),
        (1, "HVP forms", lambda: sigma.run_hvp_forms(ctx, report)),
        (2, "per-step metric cost", lambda: step_times.update(metrics_cost.run(ctx, report))),
        (3, "lock-step throughput", lambda: throughput.run_lockstep_row(ctx, report)),
        (4, "unlearning vs retraining", lambda: throughput.run_unlearning_row(ctx, report, step_times)),
        (6, "Exp A end to end: σ every step", lambda: exp_a.run(ctx, report)),
        (7, "cold λ_max vs the real peer libraries", lambda: peers.run(ctx, report)),
    ]
    for num, label, fn in stages:
        if num not in rows:
            continue
        if num == 4 and "resnet18" not in step_times:  # row 4 needs a ResNet-18 step time
            step_times["resnet18"] = throughput.step_time(ctx, "resnet18")
        t0 = time.perf_counter()
        print(f"  row {num}: {label} ...", flush=True)
        try:
            fn()
        except Exception as exc:  # keep the other rows; the failure goes into the table
            traceback.print_exc()
            report.add(row=num, benchmark=label, status="ERROR", notes=f"{type(exc).__name__}: {exc}")
        print(f"  row {num}: {time.perf_counter() - t0:.1f} s", flush=True)

    wall = time.perf_counter() - t_suite
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report.header["load average at end"] = f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}" if load else "n/a"
    report.header["suite wall time"] = f"{wall:.0f} s"
    report.notes += _notes(ctx)
    paths = report.write(args.out)
    print()
    print(report.markdown())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if any(r["status"] == "ERROR" for r in report.summary) else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def _rows(text: str) -> set[int]:
    """``--rows``: a non-empty comma-separated subset of 1,2,3,4,6,7."""
    parts = [r.strip() for r in text.split(",") if r.strip()]
    if not parts or not all(r in ("1", "2", "3", "4", "6", "7") for r in parts):
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated subset of 1,2,3,4,6,7 (row 5, memory, comes with every row); "
            f"got {text!r}")
    return {int(r) for r in parts}


def _notes(ctx: Context) -> list[str]:
    s = ctx.settings
    n = [
        "Ratios compare cases timed side by side in this process with round-robin repeats, so "
        "they hold under background load; absolute seconds do not (see the load averages above).",
        f"Models: small CNN ({ctx.info['cnn_params']:,} parameters) at w_0 = 1 epoch of SGD "
        f"(lr {s.pretrain_lr}) on 4,000 MNIST images; ResNet-18 ({ctx.info['resnet_params']:,} "
        "parameters) at its seeded random initialisation. ResNet-18 data are SYNTHETIC: N(0, 1) "
        "CIFAR-shaped tensors with random labels (no CIFAR download); costs depend on shapes, not "
        "on pixel values, but the Hessian spectrum (row 1) is that of this synthetic problem.",
        f"Row 1: the SGD step between the two σ solves uses lr {s.step_lr} (LockStepConfig's "
        "default) in train mode, so BatchNorm running statistics move as in a lock-step run; σ is "
        "taken in eval mode (the reference code's choice). Ours count every HVP including the "
        "first; PyHessian's 'equal accuracy' cost uses an oracle stop (it favours PyHessian).",
        f"Row 1 reference: independent Lanczos, tol {s.ref_tol:g} on both spectrum ends, "
        f"budget {s.ref_max_iter} (ResNet-18: {s.resnet_ref_max_iter}); its relative residual "
        "is shown in the rel_err column and bounds its own error.",
    ]
    if s.quick:
        n.append(f"--quick: ResNet-18 Hessian batch {s.resnet_hessian_batch} (full: 128), "
                 f"PyHessian continuation and power budgets {s.resnet_pyhessian_cap} HVPs "
                 f"(full: 1000), ResNet-18 timings stop adding repeats after "
                 f"{s.resnet_budget_s:g} s per case (n column), MNIST lock-step on {s.lockstep_n} "
                 f"points (full: 4,000), ResNet-18 lock-step on {s.resnet_lockstep_n} points "
                 "(full: 512) without a warm-up round, no tracemalloc pass for ResNet-18.")
    return n


if __name__ == "__main__":
    raise SystemExit(main())
