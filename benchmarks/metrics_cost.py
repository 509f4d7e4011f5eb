"""Row 2: per-measurement cost of VE, ‖w_t − w_0‖ and ‖w_t − w′_t‖ vs one training step.

"Ours" is exactly what :func:`unroll_utils.trajectory.run_lockstep` does at a measurement step:
one :func:`unroll_utils.distances.lockstep_distances` call, a single pass that reads each weight
tensor once for all three distances (float64 accumulation; fused ``torch._foreach`` ops on GPUs,
cache-sized blocks on the CPU sharing w_t − w′_t between ‖w_t − w′_t‖ and VE; u added on the fly,
so w″ is never materialised). For comparison, the measurement step before that function: three
:func:`unroll_utils.distances.weight_distance` calls (VE through ``offset=u``), each a full pass.
The baseline re-implements the
reference code's way (``weights_to_list_fast``: every parameter to a Python list, concatenated with
``lst = lst + list_t``, then ``np.linalg.norm(np.array(a) - np.array(b))``), once per model per
step (M, M′ and the materialised M″; w_0's list is built once, as the reference code keeps it).
All three are checked to agree to 1e-5 relative. The training step is ``sgd_step`` (forward,
backward, optimiser step) on the same model with a batch of 32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from unroll_utils.distances import lockstep_distances, model_weights, weight_distance
from unroll_utils.training import make_optimizer, sgd_step
from unroll_utils.unlearning import forget_gradient

from .common import Case, mb, python_peak, timed_interleaved
from .context import MODEL_LABEL, Context
from .report import Report, ratio_text, status


def weights_to_list_fast(weights) -> list:
    """The reference code's flattening: a Python list of floats, grown by concatenation."""
    with torch.no_grad():
        lst = []
        for w in weights:
            list_t = w.detach().cpu().numpy().flatten().tolist()
            lst = lst + list_t
        return lst


def reference_metrics(m_orig, m_retr, undo, w0_list) -> tuple[float, float, float]:
    """VE, ‖w_t − w_0‖, ‖w_t − w′_t‖ the reference way (M″ materialised as w_t + u)."""
    with torch.no_grad():
        w_unl = [p + u for p, u in zip(m_orig.parameters(), undo)]
    a = weights_to_list_fast(list(m_orig.parameters()))
    r = weights_to_list_fast(list(m_retr.parameters()))
    un = weights_to_list_fast(w_unl)
    ve = np.linalg.norm(np.array(un) - np.array(r))
    dw = np.linalg.norm(np.array(a) - np.array(w0_list))
    dr = np.linalg.norm(np.array(a) - np.array(r))
    return float(ve), float(dw), float(dr)


def ours_metrics(m_orig, m_retr, initial, undo) -> tuple[float, float, float]:
    """``run_lockstep``'s measurement step: one ``lockstep_distances`` pass."""
    return tuple(lockstep_distances(model_weights(m_orig), model_weights(m_retr),
                                    model_weights(initial), undo=undo))


def three_calls_metrics(m_orig, m_retr, initial, undo) -> tuple[float, float, float]:
    """The measurement step before ``lockstep_distances``: three ``weight_distance`` calls."""
    w_m = model_weights(m_orig)
    w_r = model_weights(m_retr)
    ve = weight_distance(w_m, w_r, offset=undo)
    dw = weight_distance(w_m, model_weights(initial))
    dr = weight_distance(w_m, w_r)
    return ve, dw, dr


def _state(ctx: Context, name: str):
    """M and M′ a couple of steps into a lock-step run from w_0, and the undo correction u."""
    s = ctx.settings
    loss_fn = F.cross_entropy
    initial = ctx.model(name).requires_grad_(False)
    m_orig, m_retr = ctx.model(name), ctx.model(name)
    o1, o2 = make_optimizer(m_orig, s.step_lr), make_optimizer(m_retr, s.step_lr)
    xf, yf = ctx.batch(name, 0, 32)          # x*: batch 0
    x1, y1 = ctx.batch(name, 32 if name == "small_cnn" else 1, 32)
    sgd_step(m_orig, o1, loss_fn, xf, yf)    # M sees x*, M′ skips it
    sgd_step(m_orig, o1, loss_fn, x1, y1)
    sgd_step(m_retr, o2, loss_fn, x1, y1)
    g = forget_gradient(initial, loss_fn, xf, yf)
    undo = [s.step_lr * t for t in g]
    return m_orig, m_retr, initial, undo, (x1, y1)


STEP = "one SGD training step (batch 32)"
OURS = "ours: distances.lockstep_distances (one pass)"
THREE = "previous: 3 × distances.weight_distance"
REF = "reference: weights_to_list_fast + np.linalg.norm"


def run(ctx: Context, report: Report, models=("small_cnn", "resnet18")) -> dict:
    s = ctx.settings
    dev = ctx.device
    step_times = {}
    for name in models:
        resnet = name == "resnet18"
        m_orig, m_retr, initial, undo, (xb, yb) = _state(ctx, name)
        w0_list = weights_to_list_fast(list(initial.parameters()))
        m_step = ctx.model(name)
        opt = make_optimizer(m_step, s.step_lr)
        vals = {OURS: ours_metrics(m_orig, m_retr, initial, undo),
                THREE: three_calls_metrics(m_orig, m_retr, initial, undo),
                REF: reference_metrics(m_orig, m_retr, undo, w0_list)}
        agree = {k: max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(vals[k], vals[REF]))
                 for k in (OURS, THREE)}
        cases = {
            STEP: Case(lambda i: sgd_step(m_step, opt, F.cross_entropy, xb, yb)),
            OURS: Case(lambda i: ours_metrics(m_orig, m_retr, initial, undo)),
            THREE: Case(lambda i: three_calls_metrics(m_orig, m_retr, initial, undo)),
        }
        quick_res = timed_interleaved(cases, dev, repeats=max(s.repeats, 7), warmup=1)
        ref_cases = {REF: Case(lambda i: reference_metrics(m_orig, m_retr, undo, w0_list))}
        ref_res = timed_interleaved(ref_cases, dev, repeats=s.repeats,
                                    warmup=0 if (resnet and s.quick) else 1,
                                    budget_s=s.resnet_budget_s if resnet else None)
        res = {**quick_res, **ref_res}
        py = {}
        if not resnet or s.resnet_tracemalloc:
            py[OURS] = python_peak(lambda: ours_metrics(m_orig, m_retr, initial, undo))
            py[REF] = python_peak(lambda: reference_metrics(m_orig, m_retr, undo, w0_list))
        setting = f"{MODEL_LABEL[name]}, batch 32 ({'MNIST' if not resnet else 'synthetic CIFAR-shaped'})"
        for case, tm in res.items():
            report.detail(row=2, setting=setting, case=case, n=tm.n, seconds=tm.median,
                          spread=tm.spread, peak_mem_mb=mb(tm.peak_mem_max),
                          py_peak_mb=mb(py[case]) if case in py else None,
                          notes=(f"values agree with the reference to {agree[case]:.1e} (relative)"
                                 if case in agree else None))
        step = res[STEP].median
        step_times[name] = res[STEP]
        t_ours = res[OURS].median
        t_three = res[THREE].median
        t_ref = res[REF].median
        report.add(row=2, benchmark="per-step metrics / training step", setting=setting,
                   ours="lockstep_distances (as run_lockstep)", baseline="one SGD step",
                   quantity="seconds", ours_value=t_ours, baseline_value=step,
                   ratio=f"{100 * t_ours / step:.3g}%", target="≤5%", status=status(t_ours / step <= 0.05),
                   notes=(f"previous measurement step, 3 × weight_distance: {100 * t_three / step:.3g}% "
                          f"of a step ({t_three / t_ours:.3g}× the one-pass time)"))
        report.add(row=2, benchmark="per-step metrics vs reference code", setting=setting,
                   ours="lockstep_distances (as run_lockstep)",
                   baseline="weights_to_list_fast + np.linalg.norm", quantity="seconds",
                   ours_value=t_ours, baseline_value=t_ref, ratio=ratio_text(t_ref / t_ours),
                   target="", status="n/a",
                   notes=f"reference = {t_ref / step:.3g} training steps per measurement")
        ours_tm = res[OURS]
        ref_tm = res[REF]
        cpu = dev.type == "cpu"
        report.add(row=5, benchmark="peak memory of the per-step metrics", setting=setting,
                   ours="lockstep_distances", baseline="weights_to_list_fast + np.linalg.norm",
                   quantity="MB" + (" (RSS)" if cpu else " (CUDA allocated)"),
                   ours_value=mb(ours_tm.peak_mem_max), baseline_value=mb(ref_tm.peak_mem_max),
                   ratio=(f"{ref_tm.peak_mem_max / ours_tm.peak_mem_max:.3g}×"
                          if ours_tm.peak_mem_max > 0 else "ours ≈ 0"), status="n/a",
                   notes=("Python-side (tracemalloc): "
                          f"{mb(py[OURS]):.3g} MB vs {mb(py[REF]):.3g} MB"
                          if py else "no tracemalloc pass in --quick mode")
                   + ("" if cpu else "; the reference's Python lists live in host memory, "
                      "not counted by the CUDA counter"))
    return step_times
