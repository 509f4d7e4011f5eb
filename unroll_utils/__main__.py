"""Command line: ``python -m unroll_utils`` runs the main job (see :mod:`unroll_utils.experiment`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from . import data, hessian, trajectory, unlearning
from .experiment import FORGET_KINDS, MainJobConfig, format_table, main_job

CHOICES = {"dataset": data.DATASETS, "model": ("small_cnn", "resnet18", "vgg19"),
           "loss": ("ce", "sd"), "order": trajectory.ORDERS, "undo_at": unlearning.UNDO_POINTS,
           "forget": FORGET_KINDS, "sigma_convention": hessian.SIGMA_CONVENTIONS,
           "device": ("cpu", "cuda", "auto")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m unroll_utils",
        description="Unrolling SGD main job: pretrain, fine-tune M and M' in lock-step with x* in the "
                    "first batch, apply single gradient unlearning, and report verification error "
                    "against the unlearning error.")
    p.add_argument("--out", default="results/main", help="output folder (default: results/main)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for f in fields(MainJobConfig):
        allowed = CHOICES.get(f.name)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default),
                       default=f.default, choices=allowed, help=f"(default: {f.default})")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    cfg = MainJobConfig(**{f.name: getattr(args, f.name) for f in fields(MainJobConfig)})
    try:
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    try:
        summary = main_job(cfg, args.out, progress=not args.quiet, resume=not args.no_resume)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary["table"]))
    print()
    print(f"Pearson(e, VE) = {summary['pearson_e_ve']:.3f}   Spearman(e, VE) = "
          f"{summary['spearman_e_ve']:.3f}   Pearson(rolling e, VE) = {summary['pearson_rolling_e_ve']:.3f}")
    print(f"final VE = {summary['final_ve']:.4g} (without unlearning: "
          f"{summary['final_dist_retrained']:.4g}); test accuracy M/M'/M'' = {summary['test_acc']:.3f}/"
          f"{summary['test_acc_retrained']:.3f}/{summary['test_acc_unlearned']:.3f}")
    print(f"wrote {args.out}/results.csv, results.json, figure.png in {summary['wall_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
