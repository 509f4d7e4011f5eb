"""Row 7: the cold top-Hessian-eigenvalue solve, ours against the real peer libraries.

Peers (benchmark-only dependencies, ``benchmarks/requirements.txt``):

* ``pyhessian`` 0.1 (PyPI): ``hessian(model, criterion, data=(x, y), cuda=...)`` then
  ``.eigenvalues(maxIter, tol)``: power iteration from a ``torch.randn`` start drawn from the
  *global* RNG, stopping when two consecutive Rayleigh quotients differ by < tol (relative) and
  returning the earlier one. The constructor puts the model in eval mode and runs the forward
  pass and ``loss.backward(create_graph=True)`` once; each HVP is one double-backward pass
  through that graph.
* ``curvlinops-for-pytorch`` 3.0.1: ``HessianLinearOperator(model, loss, params, [(x, y)])``
  exported with ``.to_scipy()`` (float64 vectors, converted to the model's float32 per product)
  and solved by ``scipy.sparse.linalg.eigsh(k=1, which="LA", tol, ncv, v0)`` (implicitly
  restarted Lanczos, ARPACK). Each HVP is ``torch.func`` forward-over-reverse (``jvp`` of
  ``jacrev``): the forward and backward passes are recomputed per HVP, no graph is kept. The
  model's mode is the caller's: we put it in eval mode. ``check_deterministic=False`` (the
  default ``True`` spends two extra gradient passes and HVPs on a safety check).
* ``hessian-eigenthings`` 1.0.0a5: ``HessianOperator(model, [(x, y)], supervised_loss(...),
  full_dataset=True)`` with ``lanczos(op, k=1, max_iter, which="LA", seed)`` (exactly
  ``max_iter`` Lanczos steps, full reorthogonalisation for ``max_iter`` ≤ 50, float32 basis) and
  ``power_iteration_one(op, max_iter, tol, seed)`` (stops when both the relative change of the
  Rayleigh quotient and the relative residual are < tol). Each HVP recomputes the forward pass
  and the create-graph backward. This version has no ``compute_hessian_eigenthings`` (the 0.x
  API); these are its documented entry points. The model's mode is the caller's: eval.

Ours: :class:`unroll_utils.hessian.HessianOperator` (eval-mode BatchNorm) +
:func:`unroll_utils.hessian.lanczos_top_eigen` (``which="LA"``), with ``stop="eigenvalue"`` and
``stop="residual"``.

**Equal accuracy, certified.** A tight reference (an independent Lanczos run,
``sigma.reference_extremes``, relative residual ≤ ``Settings.ref_tol`` on both ends of the
spectrum) gives λ_max. Every method's own accuracy knob is swept from loose to tight (a grid per
method, :data:`GRIDS`), each setting one real call, untimed, with the method's HVPs counted by a
wrapper around its HVP entry point; the cheapest setting whose relative error
|λ − λ_max| / |λ_max| is ≤ ``Settings.rel_acc`` is kept (the first passing one in each
loose-to-tight group; HVPs grow with tightness in every group; the fewest HVPs over groups).
A method that never gets there within ``budget`` HVPs per call is reported as such. The kept
settings are then timed side by side (round-robin repeats, each a whole call on a fresh copy of
the model, setup included) with the same start-vector seed as the sweep, so the timed calls make
the same HVPs and return the same value (checked).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unroll_utils.hessian import HessianOperator, lanczos_top_eigen

from .common import Case, mb, timed_interleaved
from .context import MODEL_LABEL, Context, data_label
from .report import Report, ratio_text
from .sigma import reference_extremes

INSTALL_HINT = "pip install -r benchmarks/requirements.txt"


class BudgetExceeded(RuntimeError):
    """Raised by :class:`HVPCounter` when a call asks for more HVPs than its budget."""


class HVPCounter:
    """Counts the Hessian-vector products a peer makes by wrapping its HVP entry point.

    ``wrap(fn)`` returns ``fn`` with a counter; ``columns(args) -> int`` says how many HVPs one
    call makes (a block product counts each column). Past ``budget`` HVPs the wrapper raises
    :class:`BudgetExceeded` before doing the work, so no call runs away.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.count = 0
        self.budget = budget

    def wrap(self, fn: Callable, columns: Callable[..., int] = lambda *a, **k: 1) -> Callable:
        def counted(*args, **kwargs):
            k = int(columns(*args, **kwargs))
            if self.budget is not None and self.count + k > self.budget:
                raise BudgetExceeded(f"more than {self.budget} HVPs")
            self.count += k
            return fn(*args, **kwargs)
        return counted


@dataclass
class Solve:
    """One call's answer: the eigenvalue it returned and the HVPs it made (counted)."""

    eigenvalue: float
    n_hvp: int
    note: str = ""


class Method:
    """A top-eigenvalue solver as a user calls it. ``solve`` is one whole call (operator setup,
    forward pass and create-graph backward included) on ``model`` (a fresh float32 copy)."""

    label = ""
    package = ""        # the module that must import, or "" for ours
    knob = ""           # what the sweep varies, for the report

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def grid(self) -> list[tuple[list[dict], int]]:
        """Groups of settings, each ordered loose → tight, with the index the sweep starts at
        (the method's default where it has a usable one)."""
        raise NotImplementedError

    def min_hvps(self, setting: dict) -> int:
        """A lower bound on the HVPs of any call with ``setting`` (prunes the sweep)."""
        return 1

    def solve(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: dict,
              seed: int) -> Solve:
        counter = HVPCounter(self.budget)
        try:
            value, note = self._call(model, x, y, setting, seed, counter)
        except BudgetExceeded:
            value, note = math.nan, f"stopped: more than {self.budget} HVPs"
        return Solve(float(value), counter.count, note)

    def _call(self, model, x, y, setting, seed, counter) -> tuple[float, str]:
        raise NotImplementedError


def start_vector(n: int, seed: int) -> torch.Tensor:
    """(n,) float32 N(0, 1) start vector, drawn exactly as hessian-eigenthings draws its own
    (``torch.randn(n, dtype=float32, generator=torch.Generator().manual_seed(seed))``), so ours,
    eigsh and hessian-eigenthings all start from the same vector. PyHessian draws one tensor per
    parameter from the global RNG and takes no start vector; it is seeded with the same seed."""
    return torch.randn(n, dtype=torch.float32, generator=torch.Generator().manual_seed(seed))


_TOLS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6]
_START = _TOLS.index(1e-3)  # the libraries' default tol and the target accuracy


class Ours(Method):
    """``lanczos_top_eigen`` on ``HessianOperator`` (eval BN), ``which="LA"``."""

    package = ""

    def __init__(self, budget: int, stop: str) -> None:
        super().__init__(budget)
        self.stop = stop
        self.label = f"ours: Lanczos, stop=\"{stop}\""
        self.knob = "tol"

    def grid(self):
        # the walk starts at the library default (1e-3) for the eigenvalue rule; the residual
        # rule over-solves the eigenvalue, so its walk starts looser (1e-2) to save calls
        return [([{"tol": t} for t in _TOLS], _TOLS.index(1e-3 if self.stop == "eigenvalue" else 1e-2))]

    def _call(self, model, x, y, setting, seed, counter):
        op = HessianOperator(model, F.cross_entropy, x, y, bn_mode="eval")
        res = lanczos_top_eigen(counter.wrap(op.matvec), op.numel, which="LA", tol=setting["tol"],
                                max_iter=self.budget, init=start_vector(op.numel, seed).to(op.device),
                                device=op.device, stop=self.stop)
        return res.eigenvalue, "" if res.converged else "not converged"


class PyHessianPower(Method):
    """Real ``pyhessian.hessian(...).eigenvalues(maxIter, tol)``; its HVPs are counted through
    ``hessian_vector_product`` as ``pyhessian/hessian.py`` references it."""

    label = "pyhessian 0.1: hessian(...).eigenvalues (power iteration)"
    package = "pyhessian"
    knob = "tol (maxIter = budget)"

    def grid(self):
        return [([{"tol": t, "maxIter": self.budget} for t in _TOLS], _START)]

    def _call(self, model, x, y, setting, seed, counter):
        import pyhessian

        module = sys.modules["pyhessian.hessian"]  # the package attribute is the class
        original = module.hessian_vector_product
        module.hessian_vector_product = counter.wrap(original)
        try:
            torch.manual_seed(seed)  # PyHessian draws its start vector from the global RNG
            h = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
            values, _ = h.eigenvalues(maxIter=setting["maxIter"], tol=setting["tol"])
        finally:
            module.hessian_vector_product = original
            for p in model.parameters():  # PyHessian leaves create-graph gradients in .grad
                p.grad = None
        return values[0], ""


class CurvlinopsEigsh(Method):
    """``curvlinops.HessianLinearOperator(...).to_scipy()`` + ``scipy.sparse.linalg.eigsh``."""

    label = "curvlinops 3.0.1 + scipy eigsh (ARPACK Lanczos)"
    package = "curvlinops"
    knob = "tol × ncv"
    ncvs = (3, 8, 20)  # 20 = eigsh's default Krylov dimension for k=1

    def grid(self):
        # ncv = 20 is eigsh's default for k=1; a smaller Krylov space restarts sooner
        tols = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
        return [([{"tol": t, "ncv": ncv} for t in tols], tols.index(1e-2)) for ncv in self.ncvs]

    def min_hvps(self, setting):
        return setting["ncv"]  # ARPACK builds the whole ncv-step factorisation before it checks

    def solve(self, model, x, y, setting, seed):
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return super().solve(model, x, y, {**setting, "ncv": min(setting["ncv"], n)}, seed)

    def _call(self, model, x, y, setting, seed, counter):
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        hess = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)],
                                     check_deterministic=False).to_scipy()
        op = LinearOperator(hess.shape, dtype=hess.dtype, matvec=counter.wrap(hess.matvec),
                            matmat=counter.wrap(hess.matmat, columns=lambda m: m.shape[1]))
        v0 = start_vector(hess.shape[0], seed).double().numpy()
        try:
            vals = eigsh(op, k=1, which="LA", tol=setting["tol"], ncv=setting["ncv"], v0=v0,
                         return_eigenvectors=False)
        except ArpackNoConvergence as err:
            return (err.eigenvalues[0] if len(err.eigenvalues) else math.nan), "ARPACK: no convergence"
        return vals[0], ""


def _eigenthings_operator(model, x, y, counter):
    import hessian_eigenthings as he

    model.eval()
    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(nn.CrossEntropyLoss()),
                            full_dataset=True)
    op.matvec = counter.wrap(op.matvec)  # the algorithms call operator.matvec
    return op


class EigenthingsLanczos(Method):
    label = "hessian-eigenthings 1.0.0a5: lanczos"
    package = "hessian_eigenthings"
    knob = "max_iter (Lanczos steps)"

    def grid(self):
        steps = list(range(2, min(self.budget, 50) + 1))  # > 50 steps turns reorthogonalisation off
        return [([{"max_iter": m} for m in steps], steps.index(min(5, steps[-1])))]

    def _call(self, model, x, y, setting, seed, counter):
        import hessian_eigenthings as he

        op = _eigenthings_operator(model, x, y, counter)
        res = he.lanczos(op, k=1, max_iter=min(setting["max_iter"], op.size - 1), which="LA",
                         seed=seed)
        return float(res.eigenvalues[0]), ""


class EigenthingsPower(Method):
    label = "hessian-eigenthings 1.0.0a5: power_iteration_one"
    package = "hessian_eigenthings"
    knob = "tol (max_iter = budget)"

    def grid(self):
        # its rule also needs the relative residual below tol, which over-solves the eigenvalue:
        # the walk starts looser (1e-2) to save calls
        return [([{"tol": t, "max_iter": self.budget} for t in _TOLS], _TOLS.index(1e-2))]

    def _call(self, model, x, y, setting, seed, counter):
        import hessian_eigenthings as he

        op = _eigenthings_operator(model, x, y, counter)
        lam, _, _, _, converged = he.power_iteration_one(op, max_iter=setting["max_iter"],
                                                         tol=setting["tol"], seed=seed)
        return lam, "" if converged else "not converged"


def methods(budget: int) -> list[Method]:
    """Ours (two stopping rules) and every peer, in the report's order."""
    return [Ours(budget, "eigenvalue"), Ours(budget, "residual"), PyHessianPower(budget),
            CurvlinopsEigsh(budget), EigenthingsLanczos(budget), EigenthingsPower(budget)]


def available(method: Method) -> str | None:
    """None if the method's package imports, else the reason."""
    if not method.package:
        return None
    try:
        __import__(method.package)
    except Exception as exc:  # noqa: BLE001 - any import failure disqualifies the peer
        return f"{method.package} does not import ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    return None


@dataclass
class Swept:
    """Outcome of a method's sweep: the kept setting (None if none reached the accuracy)."""

    setting: dict | None
    solve: Solve | None
    error: float
    tried: list[tuple[dict, Solve, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sweep_seconds: float = 0.0


def rel_error(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference) if math.isfinite(value) else math.inf


def sweep(method: Method, make_model: Callable[[], nn.Module], x, y, *, seed: int,
          lam_max: float, rel_acc: float) -> Swept:
    """The cheapest setting within ``rel_acc`` of ``lam_max``, each probe one real call.

    In each group (settings ordered loose → tight, HVPs growing with tightness) the walk starts
    at the group's start index: from a passing setting it steps looser while the next one still
    passes, from a failing one tighter until one passes (or a call hits the HVP budget). Over
    groups the passing setting with the fewest HVPs is kept. When pass/fail is monotone in the
    knob (it is in the runs reported) this is the first passing setting of a full loose → tight
    sweep, for a fraction of its calls. A group whose every call needs at least as many HVPs
    as the best setting found so far (:meth:`Method.min_hvps`) is skipped.
    """
    t0 = time.perf_counter()
    out = Swept(None, None, math.inf)
    for settings, start in method.grid():
        lower = min(method.min_hvps(st) for st in settings)
        if out.solve is not None and lower >= out.solve.n_hvp:
            out.skipped.append(f"{describe(settings[start])} and its group (≥ {lower} HVPs per call)")
            continue
        probed: dict[int, tuple[Solve, float]] = {}

        def probe(k: int) -> bool:
            res = method.solve(make_model(), x, y, settings[k], seed)
            err = rel_error(res.eigenvalue, lam_max)
            probed[k] = (res, err)
            out.tried.append((settings[k], res, err))
            return err <= rel_acc

        k = start
        if probe(k):
            while k > 0 and probe(k - 1):
                k -= 1
        else:
            while True:
                res = probed[k][0]
                if k + 1 == len(settings) or res.n_hvp >= method.budget or res.note.startswith("stopped"):
                    k = None
                    break
                k += 1
                if probe(k):
                    break
        if k is not None and (out.solve is None or probed[k][0].n_hvp < out.solve.n_hvp):
            out.setting, (out.solve, out.error) = settings[k], probed[k]
    out.sweep_seconds = time.perf_counter() - t0
    return out


def describe(setting: dict | None) -> str:
    if setting is None:
        return "none within the budget"
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


# ---- the benchmark row ---------------------------------------------------------------------------

def run(ctx: Context, report: Report, models=("small_cnn", "resnet18")) -> None:
    """Row 7 on each model: reference, sweeps, side-by-side timing, report lines."""
    s = ctx.settings
    report.notes.append(
        f"Row 7: cold solves of the algebraically largest Hessian eigenvalue, eval-mode BatchNorm, "
        f"float32 models, every method at its cheapest swept setting whose relative error against "
        f"the reference is ≤ {s.rel_acc:g} (certified on every timed call); HVPs counted by "
        f"wrapping each package's HVP entry point; start vectors seeded ({s.seed + 700}); each "
        f"timed call is whole (operator setup, forward pass, create-graph backward included). "
        f"Small-CNN batch: {s.peers_cnn_batch} MNIST images (the paper's Exp A Hessian batch); "
        f"HVP budget per call {s.peers_budget} (ResNet-18: {s.resnet_peers_budget}).")
    for name in models:
        resnet = name == "resnet18"
        n = s.resnet_hessian_batch if resnet else s.peers_cnn_batch
        x, y = ctx.batch(name, 0, n)
        label = f"{MODEL_LABEL[name]}, {data_label(name, n)}, eval-mode BN, cold start"
        budget = s.resnet_peers_budget if resnet else s.peers_budget
        _run_model(ctx, report, name, x, y, label, budget)


def _reference(ctx: Context, name: str, x, y, resnet: bool) -> tuple[dict, float]:
    s = ctx.settings
    t0 = time.perf_counter()
    op = HessianOperator(ctx.model(name), F.cross_entropy, x, y, bn_mode="eval")
    ref = reference_extremes(op.matvec, op.numel, tol=s.ref_tol,
                             max_iter=s.resnet_ref_max_iter if resnet else s.ref_max_iter,
                             device=op.device, generator=torch.Generator().manual_seed(12345))
    return ref, time.perf_counter() - t0


def _run_model(ctx: Context, report: Report, name: str, x, y, label: str, budget: int) -> None:
    s = ctx.settings
    seed = s.seed + 700  # the start-vector seed of every method, in the sweep and when timed
    ref, ref_s = _reference(ctx, name, x, y, name == "resnet18")
    lam = ref["lam_max"]
    report.detail(row=7, setting=label, case="reference: Lanczos, both spectrum ends", n=1,
                  seconds=ref_s, hvps=ref["n_hvp"], rel_err=ref["res_max"],
                  notes=(f"λ_max={lam:.7g}, λ_min={ref['lam_min']:.4g}, λ_2/λ_max="
                         f"{ref['lam_2'] / lam:.3f}; rel_err column = relative residual (bounds its "
                         f"error); converged={ref['converged']} (tol {s.ref_tol:g})"))
    swept: dict[str, tuple[Method, Swept]] = {}
    not_run = []
    for method in methods(budget):
        reason = available(method)
        if reason is not None:
            report.detail(row=7, setting=label, case=method.label, notes="NOT RUN: " + reason)
            not_run.append(method.label)
            continue
        print(f"    {MODEL_LABEL[name]}: sweeping {method.label}", flush=True)
        swept[method.label] = (method, sweep(method, lambda: ctx.model(name), x, y, seed=seed,
                                             lam_max=lam, rel_acc=s.rel_acc))
    cases = {lab: Case(lambda model, m=m, st=sw.setting: m.solve(model, x, y, st, seed),
                       lambda i: ctx.model(name))
             for lab, (m, sw) in swept.items() if sw.setting is not None}
    timings = timed_interleaved(cases, ctx.device, repeats=s.repeats, warmup=0,
                                budget_s=s.peers_budget_s)
    rows = {}
    for lab, (method, sw) in swept.items():
        rows[lab] = _detail(report, label, method, sw, timings.get(lab), lam, s.rel_acc)
    _targets(report, label, rows, s.rel_acc, not_run)


def _detail(report: Report, label: str, method: Method, sw: Swept, tm, lam: float,
            rel_acc: float) -> dict | None:
    """One measurements line; returns {hvps, seconds, error} at equal accuracy, or None."""
    probes = "; ".join(f"{describe(st)}: {r.n_hvp} HVPs, err {e:.1e}{' (' + r.note + ')' if r.note else ''}"
                       for st, r, e in sw.tried)
    sweep_note = f"sweep ({len(sw.tried)} calls, {sw.sweep_seconds:.0f} s, knob {method.knob}): {probes}"
    if sw.skipped:
        sweep_note += "; not probed, no cheaper: " + "; ".join(sw.skipped)
    if tm is None:
        report.detail(row=7, setting=label, case=method.label, hvps=None, rel_err=None,
                      notes=f"did NOT reach {rel_acc:g} within {method.budget} HVPs per call; "
                            + sweep_note)
        return None
    hvps = [r.n_hvp for r in tm.values]
    errs = [rel_error(r.eigenvalue, lam) for r in tm.values]
    same = all(h == sw.solve.n_hvp for h in hvps)
    report.detail(row=7, setting=label, case=method.label, n=tm.n, seconds=tm.median,
                  spread=tm.spread, hvps=statistics.median(hvps), rel_err=max(errs),
                  peak_mem_mb=mb(tm.peak_mem_max),
                  notes=(f"kept {describe(sw.setting)}; λ = {tm.values[0].eigenvalue:.7g}, signed "
                         f"error {(tm.values[0].eigenvalue - lam) / lam:+.1e} (a Ritz or Rayleigh "
                         f"value above λ_max is rounding: exact arithmetic forbids it)"
                         + ("" if same else f"; timed calls made {hvps} HVPs (sweep: {sw.solve.n_hvp})")
                         + "; " + sweep_note))
    return {"hvps": statistics.median(hvps), "seconds": tm.median, "error": max(errs),
            "spread": tm.spread}


def _targets(report: Report, label: str, rows: dict, rel_acc: float, not_run: list[str]) -> None:
    """"ours fewest HVPs" and "ours least wall time" against the best peer, per stop rule."""
    peers = {k: v for k, v in rows.items() if not k.startswith("ours") and v is not None
             and v["error"] <= rel_acc}
    missing = [k for k, v in rows.items() if not k.startswith("ours") and k not in peers]
    missing += [f"{k} (not installed: {INSTALL_HINT})" for k in not_run]
    for ours in [k for k in rows if k.startswith("ours")]:
        mine = rows[ours]
        for quantity, key, bench in (("HVPs", "hvps", "fewest HVPs"), ("seconds", "seconds",
                                                                        "least wall time")):
            best = min(peers, key=lambda k: peers[k][key]) if peers else None
            base = peers[best][key] if best else None
            if mine is None or mine["error"] > rel_acc:
                status, ratio = "FAIL (ours not at equal accuracy)", None
            elif best is None:
                status, ratio = "n/a (no peer ran and reached the accuracy)", None
            else:
                ratio = ratio_text(base / mine[key])
                status = "PASS" if mine[key] < base else ("TIE" if mine[key] == base else "FAIL")
                noise = max(mine["spread"], peers[best]["spread"])
                if key == "seconds" and abs(base / mine[key] - 1) <= noise:
                    status += f" (within the repeats' spread, {noise:.0%})"
            report.add(row=7, benchmark=f"cold λ_max: ours {bench} at equal accuracy", setting=label,
                       ours=ours, baseline=(f"best peer: {best}" if best else "best peer"),
                       quantity=quantity, ours_value=None if mine is None else mine[key],
                       baseline_value=base, ratio=ratio, target=f"ours {bench} of all", status=status,
                       notes=(f"relative error ≤ {rel_acc:g} against the reference for all; "
                              f"ours {mine['error']:.1e}" if mine else "")
                       + (f"; peers without a result: {', '.join(missing)}" if missing else ""))
