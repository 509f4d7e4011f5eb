"""Rebuild the numbers and figures of docs/results.md from the saved tables of the `cpu` runs.

Each notebook run writes ``results.csv``/``results.json`` into its ``RESULTS_DIR``; this script reads them from
``runs/`` (the folders named in ``RUNS`` below, as the commands of docs/results.md write them), prints every
number the report quotes as ``mean [low, high]`` (Student-t 95% intervals over seeds,
:func:`unroll_utils.statistics.seed_summary`) and saves the figures beside the report, in ``docs/figures/``.
A row whose run is missing is skipped with a message.

    OMP_NUM_THREADS=1 .venv/bin/python docs/figures/make_figures.py [RUNS_ROOT]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unroll_utils import metrics, plot  # noqa: E402
from unroll_utils.statistics import seed_summary  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "runs"
NB01 = ["01_full_s0.ipynb", "01_full_s1.ipynb", "01_full_s2.ipynb"]  # notebook 01 saves no table: its output
RUNS = {"07": "07_cpu", "08": "08_cpu", "09": "09_cpu", "06": ["06_cpu_s0", "06_cpu_s1", "06_cpu_s2"],
        "11": "11_cpu", "12": ["12_cpu_s0", "12_cpu_s1", "12_cpu_s2"], "13": "13_cpu", "01": "01_full", "10": "10_full",
        "14": "14_full"}
SIZE = (7.0, 3.2)  # inches at 110 dpi: 770 x 352 px, fits a laptop screen


def load(key):
    names = RUNS[key] if isinstance(RUNS[key], list) else [RUNS[key]]
    frames = []
    for i, name in enumerate(names):
        path = ROOT / name / "results.csv"
        if not path.exists():
            print(f"[{key}] missing {path}: row skipped")
            return None
        frame = pd.read_csv(path)
        frames.append(frame if len(names) == 1 else frame.assign(seed=i))  # one run per seed: 0, 1, 2
    return pd.concat(frames, ignore_index=True)


def summary(key, name):
    return json.loads((ROOT / name / "results.json").read_text())["summary"]


def fmt(row):
    return f"{row['mean']:.3g} [{row['low']:.3g}, {row['high']:.3g}] (n={int(row['n'])})"


def show(title, table, by, columns):
    s = seed_summary(table, by, columns)
    print(f"--- {title}")
    for _, r in s.iterrows():
        keys = ", ".join(f"{b}={r[b]}" for b in ([by] if isinstance(by, str) else by))
        print(f"  {keys} {r['column']}: {fmt(r)}")
    return s


def save(fig, name):
    fig.set_size_inches(*SIZE)
    fig.tight_layout()
    fig.savefig(HERE / name, dpi=110)
    plt.close(fig)
    print(f"  figure docs/figures/{name}")


def per_run_corr(table, proxy, keys):
    rows = []
    for k, g in table.groupby(keys):
        c = metrics.correlations(g[proxy], g.ve)
        rows.append({**dict(zip(keys, k)), "pearson": c["pearson"], "spearman": c["spearman"]})
    return pd.DataFrame(rows)


def exp_ab():
    t = load("07")
    if t is None:
        return
    a = t[t.experiment == "A"].copy()
    corr = per_run_corr(a, "unlearning_error", ["optimizer", "seed"])
    show("claim 1, Exp A: per-run correlation of e with VE", corr, "optimizer", ["pearson", "spearman"])
    b = t[t.experiment == "B"].copy()
    corr_b = per_run_corr(b, "checkpointed_error", ["optimizer", "seed"])
    show("claim 1, Exp B: per-run correlation of the checkpointed error with VE", corr_b, "optimizer",
         ["pearson", "spearman"])
    a["ratio"] = a.ve / a.dist_retrained
    last = a.t.max()
    at = a[a.t.isin([1, 2, 10, last])]
    show("claim 2 / momentum gap: VE / ||w_t - w'_t|| at t = 1, 2, 10 and the last step", at,
         ["optimizer", "t"], ["ratio", "ve", "dist_retrained"])
    fig, axes = plt.subplots(1, 2)
    for opt in ("plain", "reference"):
        g = a[a.optimizer == opt]
        m = g.groupby("t").ratio.agg(["mean", "min", "max"])
        axes[0].plot(m.index, m["mean"], label=f"{opt} SGD (mean of 3 seeds)")
        axes[0].fill_between(m.index, m["min"], m["max"], alpha=0.25)
    axes[0].axhline(1.0, color="k", lw=1, ls="--")
    axes[0].set(xlabel="step t", ylabel="VE / ‖w_t − w′_t‖", title="what single gradient unlearning leaves")
    axes[0].legend(frameon=False, fontsize=8)
    for opt in ("plain", "reference"):
        g = a[a.optimizer == opt]
        axes[1].scatter(g.unlearning_error, g.ve, s=6, label=f"{opt} SGD")
    axes[1].set(xlabel="unlearning error e", ylabel="VE", title="e against VE, all steps and seeds")
    axes[1].legend(frameon=False, fontsize=8)
    save(fig, "claim1_claim2_exp_a.png")
    regimes = [t[t.experiment == "regime"].assign(seed=0)]
    for seed in (1, 2):  # notebook 07 with -p SEED s -p N_SEEDS 1 (its own split of the subset)
        path = ROOT / f"07_cpu_s{seed}" / "results.csv"
        if path.exists():
            extra = pd.read_csv(path)
            regimes.append(extra[extra.experiment == "regime"].assign(seed=seed))
    r = pd.concat(regimes, ignore_index=True)
    if len(r):
        rows = []
        for (seed, lr), g in r.groupby(["seed", "lr"]):
            above = g[g.ratio > 1]
            rows.append({"seed": seed, "lr": lr, "eta_lambda": float(g.eta_lambda.iloc[0]),
                         "first_t_above": float(above.t.min()) if len(above) else math.nan,
                         "never_within": int(len(above) == 0), "ratio_end": float(g.ratio.iloc[-1]),
                         "ratio_t5": float(g[g.t == 5].ratio.iloc[0])})
        cross = pd.DataFrame(rows)
        print(f"--- regime map, seeds {sorted(cross.seed.unique())}: first t with VE > ||w_t - w'_t|| "
              "(NaN: not within the run)")
        print(cross.to_string(index=False))
        show("regime map over seeds", cross, "lr", ["eta_lambda", "first_t_above", "never_within", "ratio_t5",
                                                      "ratio_end"])
        fig, ax = plt.subplots()
        for i, (lr, g) in enumerate(r.groupby("lr")):
            m = g.groupby("t").ratio.agg(["mean", "min", "max"])
            ax.plot(m.index, m["mean"], color=plot.PALETTE[i],
                    label=f"η = {lr:g} (ηλ_max ≈ {g.eta_lambda.mean():.2g})")
            ax.fill_between(m.index, m["min"], m["max"], color=plot.PALETTE[i], alpha=0.2)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set(yscale="log", xlabel="step t", ylabel="VE / ‖w_t − w′_t‖",
               title=f"where single gradient unlearning helps (plain SGD, {r.seed.nunique()} seeds)")
        ax.legend(frameon=False, fontsize=7)
        save(fig, "finding_regime_map.png")


def forget_rows():
    t = load("11")
    if t is None:
        return
    keep = ["original", "naive_retraining", "sgu_w0", "sgu_final", "sgu_propagated", "amnesiac", "fine_tuning"]
    t = t[t.method.isin(keep)]
    cols = [c for c in ("ve", "forget_acc", "test_acc", "time_rel") if c in t.columns]
    show("findings, notebook 11: forget benchmark", t, ["kind", "method"], cols)
    fig, ax = plt.subplots()
    kinds = sorted(t.kind.unique())
    methods = [m for m in keep if m in set(t.method) and m != "naive_retraining"]
    for i, m in enumerate(methods):
        v = [t[(t.kind == k) & (t.method == m)].ve.mean() for k in kinds]
        ax.bar(np.arange(len(kinds)) + (i - len(methods) / 2 + 0.5) * 0.8 / len(methods), v,
               width=0.8 / len(methods), label=m.replace("original", "original (no unlearning)"))
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set(yscale="log", ylabel="VE to naive retraining", title="forget benchmark (mean of 3 seeds)")
    ax.legend(frameon=False, fontsize=6, ncol=2)
    save(fig, "finding_forget_benchmark.png")


def exp_c():
    t = load("08")
    if t is None:
        return
    rows = []
    for (lam, seed), g in t.groupby(["lam", "seed"]):
        last = g.iloc[-1]
        sched = g[g.scheduled.astype(bool)]
        c = metrics.correlations(sched.unlearning_error, sched.ve)
        rows.append({"lam": lam, "seed": seed, "ve": last.ve, "e": last.unlearning_error,
                     "delta_w": last.delta_w, "test_acc": last.test_acc, "acc_w0": last.acc_w0,
                     "pearson": c["pearson"]})
    runs = pd.DataFrame(rows)
    s = show("claim 3, Exp C: last step per lambda", runs, "lam", ["ve", "e", "delta_w", "test_acc", "pearson"])
    fig, axes = plt.subplots(1, 2)
    for col, ax, label in (("ve", axes[0], "VE"), ("e", axes[0], "e"), ("test_acc", axes[1], "test accuracy")):
        q = s[s.column == col]
        x = q.lam.to_numpy() + 0.3
        ax.errorbar(x, q["mean"], yerr=[q["mean"] - q.low, q.high - q["mean"]], marker="o", capsize=3,
                    label=label)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("λ + 0.3 (log)")
        ax.legend(frameon=False, fontsize=8)
    axes[0].set(ylabel="after 5 epochs", title="SD loss: VE and e (95% t-intervals)")
    axes[1].set(ylabel="test accuracy of M", title="accuracy cost")
    save(fig, "claim3_sd_loss.png")


def exp_d():
    t = load("09")
    if t is None:
        return
    rows = []
    for (lam, seed), g in t.groupby(["lam", "seed"]):
        sched = g[g.scheduled.astype(bool)]
        c = metrics.correlations(sched.unlearning_error, sched.ve)
        grow = metrics.correlations(sched.t, sched.unlearning_error)
        last = g.iloc[-1]
        rows.append({"lam": lam, "seed": seed, "pearson": c["pearson"], "spearman_e_t": grow["spearman"],
                     "ve": last.ve, "e": last.unlearning_error, "test_acc": last.test_acc})
    runs = pd.DataFrame(rows)
    show("Exp D: from scratch", runs, "lam", ["pearson", "spearman_e_t", "ve", "e", "test_acc"])
    fig, axes = plt.subplots(1, 2)
    for lam, g in t[t.scheduled.astype(bool)].groupby("lam"):
        m = g.groupby("t")[["unlearning_error", "ve"]].mean()
        axes[0].plot(m.index, m.unlearning_error, label=f"λ = {lam:g}")
        axes[1].plot(m.index, m.ve, label=f"λ = {lam:g}")
    axes[0].set(yscale="log", xlabel="step t", ylabel="e (mean of 3 seeds)", title="e from the random init")
    axes[1].set(xlabel="step t", ylabel="VE (mean of 3 seeds)", title="VE from the random init")
    for ax in axes:
        ax.legend(frameon=False, fontsize=8)
    save(fig, "exp_d_from_scratch.png")


def privacy_rows():
    t = load("12")
    if t is None:
        return
    rows = []
    for seed, g in t.groupby("seed"):
        c = metrics.correlations(g.ve, g.prs_gap)
        # M and M'' pooled: the PRS gap to M' of a model against that model's weight distance to M'
        dist = np.concatenate([g.dist_retrained, g.ve])
        gap = np.concatenate([g.prs_gap_none, g.prs_gap])
        pooled = metrics.correlations(dist, gap)
        end = g.groupby("lam").tail(1)
        rows.append({"seed": seed, "pearson_gap_ve": c["pearson"], "spearman_gap_ve": c["spearman"],
                     "pearson_pooled": pooled["pearson"], "spearman_pooled": pooled["spearman"],
                     "ve_end": end.ve.mean(), "dist_end": end.dist_retrained.mean(),
                     "gap_Mpp_end": end.prs_gap.mean(), "gap_M_end": end.prs_gap_none.mean(),
                     "flag_M_end": end.flag_M.mean(), "flag_Mp_end": end.flag_Mp.mean(),
                     "flag_Mpp_end": end.flag_Mpp.mean()})
    runs = pd.DataFrame(rows).assign(all=0)
    show("claims 4 and 5, notebook 12: PRS gap of x* against VE", runs, "all",
         ["pearson_gap_ve", "spearman_gap_ve", "pearson_pooled", "spearman_pooled", "ve_end", "dist_end",
          "gap_Mpp_end", "gap_M_end", "flag_M_end", "flag_Mp_end", "flag_Mpp_end"])
    fig, axes = plt.subplots(1, 2)
    axes[0].scatter(t.dist_retrained, t.prs_gap_none, s=8, label="M (no unlearning): ‖w − w′‖")
    axes[0].scatter(t.ve, t.prs_gap, s=8, label="M″ (single gradient unlearning): VE")
    axes[0].set(xlabel="weight distance to the retrained M′", ylabel="|PRS(x*) − PRS_M′(x*)|",
                title="PRS gap against weight distance")
    axes[0].legend(frameon=False, fontsize=7)
    end = t.groupby(["seed", "lam"]).tail(1)
    for col, label in (("flag_M", "M"), ("flag_Mp", "M′ (retrained)"), ("flag_Mpp", "M″ (unlearned)")):
        m = end.groupby("lam")[col].mean()
        axes[1].plot(m.index, m.values, marker="o", label=label)
    axes[1].set(xlabel="λ", ylabel="share of x* called member",
                title="membership attack on x* (mean of 3 seeds)")
    axes[1].legend(frameon=False, fontsize=7)
    save(fig, "claim4_claim5_privacy.png")


def sisa_rows():
    t = load("13")
    if t is None:
        return
    t = t.assign(method_k=t.method + ", k=" + t.k.astype(str))
    show("claim 5, notebook 13: cost of one request relative to naive retraining", t, ["k", "method"],
         ["steps_rel", "time_rel", "acc_before", "acc_after"])
    show("claim 5, notebook 13: initial training steps", t[t.k == t.k.min()], "method", ["train_steps"])
    fig, ax = plt.subplots()
    for k, g in t.groupby("k"):
        m = g.groupby("method").steps_rel.mean().sort_values()
        ax.scatter(m.values, [g[g.method == n].acc_after.mean() for n in m.index], label=f"k = {k}")
        for n, v in m.items():
            ax.annotate(n.replace("naive_retraining", "retrain"), (v, g[g.method == n].acc_after.mean()),
                        fontsize=6)
    ax.set(xscale="log", xlabel="SGD steps to unlearn / naive retraining's (log)", ylabel="test accuracy after",
           title="one unlearning request: cost and accuracy (mean of 3 seeds)")
    ax.legend(frameon=False, fontsize=7)
    save(fig, "claim5_sisa_cost.png")


def pretraining_rows():
    t = load("06")
    if t is None:
        return
    runs = pd.DataFrame([{**{k: summary("06", name)[k] for k in ("test_acc", "determinism_floor",
                                                                 "wall_seconds")}, "all": 0}
                         for name in RUNS["06"]])
    show("notebook 06: w_0 by the reference recipe (40 epochs), 3 seeds", runs, "all",
         ["test_acc", "determinism_floor", "wall_seconds"])
    fig, ax = plt.subplots()
    for seed, g in t.groupby("seed"):
        ax.plot(g.epoch, g.test_acc, label=f"seed {seed}")
    ax.set(xlabel="epoch", ylabel="test accuracy of w_0", title="the reference pretraining on the MNIST subset")
    ax.legend(frameon=False, fontsize=8)
    save(fig, "pretraining_w0.png")


def noise_floor_rows():
    """Notebook 01 (SMOKE False, SEED 0, 1, 2) writes no table: its printed lines are parsed."""
    import re
    rows = []
    for name in NB01:
        path = ROOT / name
        if not path.exists():
            print(f"[01] missing {path}: row skipped")
            return
        text = "".join("".join(o.get("text", "")) for c in json.loads(path.read_text())["cells"]
                       for o in c.get("outputs", []))
        number = r"([-+0-9.e]+)"
        grab = lambda pattern: float(re.search(pattern, text).group(1))
        rows.append({"all": 0, "same_seed": grab(r"same seed\s+: largest VE over all \d+ steps = " + number),
                     "other_order": grab(r"retrain, other seed \(smallest\)\s+" + number),
                     "sgu": grab(r"single gradient unlearning\s+" + number),
                     "no_unlearning": grab(r"no unlearning\s+" + number),
                     "slope": grab(r"slope of max \|d softmax\| against VE for small VE: " + number),
                     "permuted_ve": grab(r"channel-permuted copy of M': VE = " + number)})
    runs = pd.DataFrame(rows)
    show("claim 4 and the noise floor, notebook 01 (full run), VE at the end of training", runs, "all",
         ["same_seed", "other_order", "sgu", "no_unlearning", "slope", "permuted_ve"])
    fig, ax = plt.subplots()
    labels = {"other_order": "retrain, another data order", "sgu": "single gradient unlearning (VE)",
              "no_unlearning": "no unlearning, ‖w − w′‖"}
    for i, (col, label) in enumerate(labels.items()):
        ax.bar(np.arange(3) + 0.27 * (i - 1), runs[col], width=0.27, label=label)
    ax.set_xticks(range(3), [f"seed {s}" for s in range(3)])
    ax.set(ylabel="distance to M′ at the end", title="the noise floor of VE (notebook 01; same seed: 0 exactly)")
    ax.legend(frameon=False, fontsize=7)
    save(fig, "finding_noise_floor.png")


def text_rows():
    t = load("10")
    if t is None:
        return
    rows = []
    for (lam, seed), g in t.groupby(["lam", "seed"]):
        c = metrics.correlations(g.unlearning_error, g.ve)
        rows.append({"lam": lam, "seed": seed, "pearson": c["pearson"], "spearman": c["spearman"]})
    runs = pd.DataFrame(rows)
    per_seed = runs.groupby("seed")[["pearson", "spearman"]].mean().reset_index().assign(all=0)
    show("claim 1 on text, notebook 10 (small preset): mean over lambda of the per-run correlation, per seed",
         per_seed, "all", ["pearson", "spearman"])
    show("claim 1 on text, per lambda", runs, "lam", ["pearson"])
    fig, ax = plt.subplots()
    for lam in (0.0, 1.0, 10.0, 50.0):
        g = t[(t.lam == lam) & (t.seed == 0)]
        if len(g):
            ax.plot(g.unlearning_error, g.ve, marker="o", markersize=3, label=f"λ = {lam:g}")
    ax.set(xscale="log", yscale="log", xlabel="unlearning error e", ylabel="VE",
           title="text (Rotten Tomatoes, MiniLM features, linear head), seed 0")
    ax.legend(frameon=False, fontsize=7)
    save(fig, "claim1_text.png")


def main():
    plot.setup(svg=False)
    for part in (noise_floor_rows, pretraining_rows, exp_ab, exp_c, exp_d, privacy_rows, sisa_rows,
                 forget_rows, text_rows):
        part()


if __name__ == "__main__":
    main()
