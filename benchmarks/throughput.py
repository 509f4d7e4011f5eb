"""Row 3: lock-step throughput vs plain training; row 4: single gradient unlearning vs retraining.

Row 3 times whole calls, end to end: ``run_lockstep`` (M and M′ trained side by side, single
gradient unlearning bookkeeping, VE/‖w_t − w_0‖/‖w_t − w′_t‖ every ``eval_every`` steps, no σ,
no accuracies) against ``train_sgd`` on one model, same data size, batch size and number of steps.
A lock-step run trains two models (M′ skips x*'s batch), so steps/(2·steps − 1) ≈ 0.5× is the
ceiling set by the work itself.

Row 4 times one ``forget_gradient`` at w_0 on the 32-point x* batch plus the
``single_gradient_unlearning`` update, against naive retraining of M′ for the protocol's steps
(x* is batch 0 and M′ skips it, paper §1.1): measured for real on the MNIST small CNN, and
extrapolated for ResNet-18 on CIFAR-10 from the measured time of a training step at b=32
(1,563 steps per epoch, paper §2.2; M′ takes 1,562 of them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unroll_utils.data import select_forget_set
from unroll_utils.training import batch_order, make_optimizer, sgd_step, train_sgd
from unroll_utils.trajectory import LockStepConfig, run_lockstep
from unroll_utils.unlearning import forget_gradient, single_gradient_unlearning

from .common import Case, Timing, mb, timed, timed_interleaved
from .context import CIFAR10_STEPS_PER_EPOCH, MODEL_LABEL, Context
from .report import Report, ratio_text, status


def _data(ctx: Context, name: str, n: int):
    if name == "small_cnn":
        return ctx.cnn_batch(0, n)
    return ctx.cifar_batch(n, 7)


def run_lockstep_row(ctx: Context, report: Report, models=("small_cnn", "resnet18")) -> None:
    s = ctx.settings
    dev = ctx.device
    for name in models:
        resnet = name == "resnet18"
        if resnet and not s.resnet_lockstep:
            report.notes.append("Row 3, ResNet-18 lock-step: skipped in --quick mode (run --full).")
            continue
        n = s.resnet_lockstep_n if resnet else s.lockstep_n
        x, y = _data(ctx, name, n)
        forget = select_forget_set(n, "batch", batch_size=32)
        steps = math.ceil(n / 32)
        steps_retrain = steps - 1  # x* is exactly batch 0 of every epoch
        base = dict(lr=s.step_lr, batch_size=32, epochs=1, sigma_every=0, accuracy_every=0,
                    seed=s.seed)

        def lockstep(every):
            cfg = LockStepConfig(eval_every=every, **base)
            return Case(lambda m: run_lockstep(m, x, y, forget, cfg, progress=False),
                        lambda i: ctx.model(name))

        cases = {
            "plain training (train_sgd, one model)": Case(
                lambda m: train_sgd(m, x, y, lr=s.step_lr, epochs=1, batch_size=32, seed=s.seed,
                                    progress=False), lambda i: ctx.model(name)),
            "run_lockstep, eval_every=1": lockstep(1),
            "run_lockstep, eval_every=10": lockstep(10),
        }
        # (ResNet-18 in --quick mode: no warm-up round; rows 1-2 already ran its kernels)
        res = timed_interleaved(cases, dev, repeats=s.repeats if resnet else max(s.repeats, 5),
                                warmup=0 if (resnet and s.quick) else 1,
                                budget_s=s.resnet_budget_s if resnet else None)
        setting = f"{MODEL_LABEL[name]}, {n} {'MNIST' if not resnet else 'synthetic'} points, b=32, {steps} steps"
        plain = res["plain training (train_sgd, one model)"]
        for case, tm in res.items():
            report.detail(row=3, setting=setting, case=case, n=tm.n, seconds=tm.median,
                          spread=tm.spread, peak_mem_mb=mb(tm.peak_mem_max),
                          notes=f"{steps / tm.median:.3g} steps/s")
        for case in ("run_lockstep, eval_every=1", "run_lockstep, eval_every=10"):
            tm = res[case]
            ratio = plain.median / tm.median
            report.add(row=3, benchmark="lock-step / plain throughput", setting=setting,
                       ours=case + " (σ off)", baseline="train_sgd", quantity="steps/s",
                       ours_value=steps / tm.median, baseline_value=steps / plain.median,
                       ratio=f"{ratio:.3g}×", target="≥0.45×", status=status(ratio >= 0.45),
                       notes=(f"M takes {steps} steps and M′ {steps_retrain} (it skips x*'s batch): "
                              f"ceiling {steps / (steps + steps_retrain):.3g}×"))
        ls = res["run_lockstep, eval_every=1"]
        report.add(row=5, benchmark="peak memory of a training run", setting=setting,
                   ours="run_lockstep, eval_every=1", baseline="train_sgd",
                   quantity="MB" + (" (RSS)" if dev.type == "cpu" else " (CUDA allocated)"),
                   ours_value=mb(ls.peak_mem_max), baseline_value=mb(plain.peak_mem_max),
                   ratio=(f"{ls.peak_mem_max / plain.peak_mem_max:.3g}× (ours/plain)"
                          if plain.peak_mem_max > 0 else "n/a"), status="n/a",
                   notes="lock-step holds M, M′, w_0 and u: ≈3–4× the weights of one model")


def step_time(ctx: Context, name: str) -> Timing:
    """Median time of one ``sgd_step`` at b=32 (row 2 measures it too; used when row 2 is skipped)."""
    m = ctx.model(name)
    opt = make_optimizer(m, ctx.settings.step_lr)
    x, y = ctx.batch(name, 32 if name == "small_cnn" else 1, 32)
    return timed(lambda i: sgd_step(m, opt, F.cross_entropy, x, y), ctx.device,
                 repeats=max(ctx.settings.repeats, 5), warmup=1)


def run_unlearning_row(ctx: Context, report: Report, step_times: dict[str, Timing]) -> None:
    s = ctx.settings
    dev = ctx.device
    loss_fn = F.cross_entropy
    # --- the unlearning operation, both models, side by side --------------------------------
    states = {}
    for name in ("small_cnn", "resnet18"):
        initial = ctx.model(name).requires_grad_(False)
        m = ctx.model(name)
        xf, yf = ctx.batch(name, 0, 32)
        states[name] = (initial, list(m.parameters()), xf, yf)

    def unlearn(name):
        initial, w_t, xf, yf = states[name]

        def fn(i):
            g = forget_gradient(initial, loss_fn, xf, yf, bn_mode="train")
            return single_gradient_unlearning(w_t, g, s.step_lr, times_seen=s.finetune_epochs)
        return Case(fn)

    ucases = {f"single gradient unlearning ({MODEL_LABEL[n]})": unlearn(n) for n in states}

    # --- naive retraining of M′ on the MNIST fine-tuning protocol, for real ----------------
    n = 4000
    x, y = ctx.cnn_batch(0, n)
    forget = select_forget_set(n, "batch", batch_size=32)
    retrain_batches = [b for e in range(s.finetune_epochs)
                       for b in batch_order(n, forget, 32, "forget_first", e, s.seed)[1:]]

    def retrain(m):
        opt = make_optimizer(m, s.step_lr)
        for idx in retrain_batches:
            sgd_step(m, opt, loss_fn, x[idx.to(dev)], y[idx.to(dev)])
        return m

    ucases["naive retraining of M′ (small CNN, MNIST)"] = Case(retrain, lambda i: ctx.model("small_cnn"))
    res = timed_interleaved(ucases, dev, repeats=max(s.repeats, 5), warmup=1)
    for case, tm in res.items():
        report.detail(row=4, setting="fine-tuning protocol, x* = batch 0 (32 points)", case=case,
                      n=tm.n, seconds=tm.median, spread=tm.spread, peak_mem_mb=mb(tm.peak_mem_max),
                      notes=(f"{len(retrain_batches)} SGD steps (4,000 MNIST points, b=32, "
                             f"{s.finetune_epochs} epoch, x*'s batch skipped)") if "retraining" in case else
                      "forget_gradient at w_0 (BN train mode) + the weight update")
    t_cnn = res[f"single gradient unlearning ({MODEL_LABEL['small_cnn']})"].median
    t_retrain = res["naive retraining of M′ (small CNN, MNIST)"].median
    report.add(row=4, benchmark="unlearning vs naive retraining", setting="small CNN, MNIST fine-tuning "
               f"({n} points, b=32, {s.finetune_epochs} epoch)", ours="single gradient unlearning",
               baseline=f"retrain M′ ({len(retrain_batches)} steps, measured)", quantity="seconds",
               ours_value=t_cnn, baseline_value=t_retrain, ratio=ratio_text(t_retrain / t_cnn),
               target="", status="n/a", notes="real retraining run")
    t_res = res[f"single gradient unlearning ({MODEL_LABEL['resnet18']})"].median
    step = step_times["resnet18"]
    steps = (CIFAR10_STEPS_PER_EPOCH - 1) * s.finetune_epochs
    t_cifar = steps * step.median
    ratio = t_cifar / t_res
    report.add(row=4, benchmark="unlearning vs naive retraining", setting="ResNet-18, CIFAR-10 "
               f"fine-tuning (50,000 points, b=32, {s.finetune_epochs} epoch)",
               ours="single gradient unlearning (measured, synthetic x*)",
               baseline=f"retrain M′: {steps} steps × measured step time (extrapolated)",
               quantity="seconds", ours_value=t_res, baseline_value=t_cifar, ratio=ratio_text(ratio),
               target="≥1000×", status=status(ratio >= 1000),
               notes=(f"step time {step.median:.3g} s (median of {step.n}, row 2); "
                      f"ratio ≈ {steps} × step/unlearn = {steps} × {step.median / t_res:.3g}; "
                      "scales with the number of fine-tuning epochs"))
