"""Command line: ``python -m unroll_utils`` runs the main job (see :mod:`unroll_utils.experiment`).

Errors name the command-line flags (``--forget-class``), never internal argument names; options
that another option makes unused (``--forget-class`` without ``--forget class``) are errors; the
output folder is created only once every input is valid; Ctrl-C stops with one line saying how to
resume (exit code 130).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields

from . import data, device, hessian, models, training, unlearning
from .experiment import FORGET_KINDS, MainJobConfig, format_table, main_job

CHOICES = {"dataset": data.DATASETS, "model": models.IMAGE_MODEL_NAMES,
           "loss": training.LOSSES, "order": training.ORDERS, "augment": training.ALL_AUGMENTS, "undo_at": unlearning.UNDO_POINTS,
           "forget": FORGET_KINDS, "sigma_convention": hessian.SIGMA_CONVENTIONS,
           "device": device.DEVICES}
CONFIG_FIELDS = tuple(f.name for f in fields(MainJobConfig))
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


def cli_flag(name: str) -> str:
    """The command-line flag of a :class:`MainJobConfig` field, e.g. ``forget_class`` → ``--forget-class``."""
    return "--" + name.replace("_", "-")


def in_flags(message: str) -> str:
    """An error message about config fields, spoken in flags: a leading ``forget_class`` becomes
    ``--forget-class``, ``loss='sd'`` becomes ``--loss sd`` and ``sigma_every > 0``
    ``--sigma-every > 0``."""
    message = re.sub(r"^([a-z_]+)(?= must | is used only|=)",
                     lambda m: cli_flag(m.group(1)) if m.group(1) in CONFIG_FIELDS else m.group(1), message)
    message = re.sub(r"\b([a-z_]+)=(?:'([^']*)'|([^\s,;)]+))",
                     lambda m: (f"{cli_flag(m.group(1))} {m.group(2) if m.group(2) is not None else m.group(3)}"
                                if m.group(1) in CONFIG_FIELDS else m.group(0)), message)
    return re.sub(r"\b([a-z_]+)(?= [<>]=? )",
                  lambda m: cli_flag(m.group(1)) if m.group(1) in CONFIG_FIELDS else m.group(1), message)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m unroll_utils",
        description="Unrolling SGD main job: pretrain, fine-tune M and M' in lock-step with x* in the "
                    "first batch, apply single gradient unlearning, and report verification error "
                    "against the unlearning error.")
    p.add_argument("--out", default="results/main", help="output folder (default: results/main)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="SGD steps between checkpoints, >= 1 (default: 50)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for f in fields(MainJobConfig):
        # SUPPRESS: an option the user did not give is absent, so contradictions can be told apart
        # --help: the field's one-line description, declared with the field (training.option)
        p.add_argument(cli_flag(f.name), dest=f.name, type=type(f.default), default=argparse.SUPPRESS,
                       choices=CHOICES.get(f.name),
                       help=f"{training.field_help(MainJobConfig, f.name)} (default: {f.default})")
    return p


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MainJobConfig:
    """The validated config; a bad or contradictory option exits through ``parser.error``."""
    given = [name for name in CONFIG_FIELDS if hasattr(args, name)]
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every must be >= 1; got {args.checkpoint_every}")
    cfg = MainJobConfig(**{name: getattr(args, name) for name in given})
    try:
        cfg.validate()
        cfg.check_dependencies(explicit=given)
    except ValueError as err:
        parser.error(in_flags(str(err)))
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    cfg = _config(parser, args)
    try:
        summary = main_job(cfg, args.out, progress=not args.quiet, resume=not args.no_resume,
                           checkpoint_every=args.checkpoint_every)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {in_flags(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume from the last checkpoint in "
              f"{args.out} (--no-resume starts over)", file=sys.stderr)
        return EXIT_INTERRUPTED
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
