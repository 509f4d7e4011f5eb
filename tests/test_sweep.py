"""The sweep runner: grid validation, execution through submitit (local, debug), resume, aggregation.

The runs execute tests/fixtures/sweep_fixture.ipynb (a notebook that follows the sweep contract in about a
second of compute): with A=2, B=0.5 its base value is A*B + SEED = 1 + SEED and its results table has
ve = base * t for t = 1, 2, 3.
"""

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from unroll_utils import results, sweep
from unroll_utils.sweep import GridError
from unroll_utils.sweep.grid import _Loader

FIXTURE = (Path(__file__).parent / "fixtures" / "sweep_fixture.ipynb").resolve()
# Student's t quantiles from a printed table (t_{0.975, df}), for intervals computed by hand
T975 = {1: 12.7062, 2: 4.3027}


def write_grid(folder, **changes):
    grid = {"notebook": str(FIXTURE), "output": "out", "parameters": {"A": 2, "B": 0.5},
            "seeds": {"SEED": [0, 1]}, "executor": {"kind": "local", "workers": 2},
            "figures": [{"y": "ve", "x": "t"}]}
    grid.update(changes)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    return path


def expected_ve(seed):
    return [(1 + seed) * t for t in (1, 2, 3)]


def check_complete(run, seed):
    """A complete run folder: parameters, executed notebook, the notebook's results, the done marker."""
    assert run.state == "done"
    assert run.name == results.fingerprint({"notebook": FIXTURE.name, "parameters": run.parameters,
                                                  "env": run.env})
    params = json.loads((run.path / "params.json").read_text())
    assert params["parameters"] == {"A": 2, "B": 0.5, "SEED": seed}
    assert (run.path / "notebook.ipynb").exists() and (run.path / "cache" / "stage_one.json").exists()
    table, config, summary = results.load_table(run.path / "results")
    assert table["ve"].tolist() == expected_ve(seed)
    assert config == {"A": 2, "B": 0.5, "SEED": seed, "TAG": "plain"} and summary == {"base": 1 + seed}
    return table


# ------------------------------------------------------------------------------------------------ validation

BAD_GRIDS = [
    ({"parameters": {"A": 2, "C": 1}}, "parameters.C: unknown parameter C"),
    ({"axes": {"LR": [0.1]}}, "axes.LR: unknown parameter LR"),
    ({"parameters": {"A": "two"}}, r"parameters.A: parameter A .* is a int"),
    ({"parameters": {"A": 1.5}}, "parameters.A: .* got 1.5"),
    ({"parameters": {"A": True}}, "parameters.A: .* got True"),
    ({"axes": {"TAG": ["x", 3]}}, r"axes.TAG\[1\]: parameter TAG .* is a str"),
    ({"axes": {"TAG": []}}, "axes.TAG: empty axis"),
    ({"axes": {"TAG": "x"}}, "axes.TAG: an axis must be a list"),
    ({"parameters": {"A": 2}, "axes": {"B": [0.5, 1, 1.0]}}, r"axes.B\[2\]: duplicate value"),
    ({"seeds": {"SEED": [0, 0]}}, r"seeds.SEED\[1\]: duplicate value"),
    ({"seeds": {"SEED": [0], "A": [1]}}, "seeds: name one seed parameter"),
    ({"axes": {"A": [1, 2]}}, "axes.A: A is also given in parameters.A"),
    ({"parameters": {"RESULTS_DIR": "/tmp"}}, "parameters.RESULTS_DIR: .* set by the runner"),
    ({"notebook": "missing.ipynb"}, "notebook: .*missing.ipynb does not exist"),
    ({"output": None}, "output: required"),
    ({"axis": {"A": [1]}}, "axis: unknown key"),
    ({"executor": {"kind": "pbs"}}, "executor.kind: must be one of"),
    ({"executor": {"workers": 0}}, "executor.workers: must be an integer >= 1"),
    ({"executor": {"kind": "slurm", "slurm": {"partitions": "gpu"}}}, "executor.slurm.partitions: unknown key"),
    ({"env": {"UNROLL_CACHE": "x"}}, "env.UNROLL_CACHE: set by the runner"),
    ({"figures": [{"y": "ve"}]}, r"figures\[0\]: needs at least y and x"),
    ({"figures": [{"y": "ve", "x": "t", "ci": "normal"}]}, r"figures\[0\].ci: must be t or bootstrap"),
]


@pytest.mark.parametrize("changes, message", BAD_GRIDS, ids=[m.split(":")[0] for _, m in BAD_GRIDS])
def test_bad_grid_is_rejected_naming_the_key_before_anything_runs(tmp_path, changes, message):
    path = write_grid(tmp_path, **changes)
    with pytest.raises(GridError, match=message):
        sweep.load_grid(path)
    assert sweep.main(["run", str(path)]) == 2  # the command line refuses it the same way
    assert not (tmp_path / "out").exists()


def test_grid_points_types_and_yaml_numbers(tmp_path, monkeypatch):
    monkeypatch.delenv("UNROLL_SMOKE", raising=False)
    path = tmp_path / "grid.yaml"
    # 1e-3 is a float here (plain YAML 1.1 would read a string); an int for a float parameter becomes a float
    path.write_text(f"notebook: {FIXTURE}\noutput: out\nparameters: {{A: 3}}\n"
                    "axes: {B: [1e-3, 2], TAG: [a, b]}\nseeds: {SEED: [0, 1]}\n"
                    "env: {OMP_NUM_THREADS: 1, FLAG: true}\n", encoding="utf-8")
    grid = sweep.load_grid(path)
    assert grid.axes == {"B": [0.001, 2.0], "TAG": ["a", "b"]} and grid.seeds == {"SEED": [0, 1]}
    assert grid.env == {"OMP_NUM_THREADS": "1", "FLAG": "true"}
    monkeypatch.setenv("UNROLL_SMOKE", "1")  # a smoke switch in the shell makes other runs, in other folders
    smoke = sweep.load_grid(path)
    assert smoke.env["UNROLL_SMOKE"] == "1" and not {r.name for r in smoke.runs()} & {r.name for r in grid.runs()}
    monkeypatch.delenv("UNROLL_SMOKE")
    assert grid.output == (tmp_path / "out").resolve() and grid.writes_results
    points = grid.points()
    assert len(points) == 8 and points[0] == {"A": 3, "B": 0.001, "TAG": "a", "SEED": 0}
    assert points[1]["SEED"] == 1 and points[-1] == {"A": 3, "B": 2.0, "TAG": "b", "SEED": 1}
    names = [r.name for r in grid.runs()]
    assert len(set(names)) == 8 and all(len(n) == 16 for n in names)
    assert sweep.status(grid)["state"].tolist() == ["pending"] * 8
    assert grid.executor.cell_timeout_s == 3600  # time_min (60) by default
    stopped = grid.runs()[1]  # a run killed part-way leaves its started marker: run executes it again
    stopped.path.mkdir(parents=True)
    (stopped.path / "started.json").write_text("{}")
    assert sweep.status(grid)["state"].tolist()[:3] == ["pending", "started", "pending"]


def test_notebook_parameters_read_lines_papermill_skips(tmp_path):
    declared = sweep.notebook_parameters(FIXTURE)
    assert list(declared) == ["SMOKE", "A", "B", "SEED", "TAG", "PRESET", "RESULTS_DIR"]
    assert (declared["A"].value, declared["B"].type_name, declared["SMOKE"].type_name) == (1, "float", "any")
    assert declared["A"].help == "an integer factor"
    assert sweep.main(["params", str(FIXTURE)]) == 0
    nb = json.loads(FIXTURE.read_text())
    nb["cells"][1]["source"] = ['SMOKE = os.environ.get("X", "0") == "1"  # a comparison: papermill skips it\n',
                                'N = 3  # comment with = sign\n']
    other = tmp_path / "other.ipynb"
    other.write_text(json.dumps(nb))
    assert list(sweep.notebook_parameters(other)) == ["SMOKE", "N"]


NB08 = (Path(__file__).parent.parent / "notebooks" / "08_sd_loss_sweep.ipynb").resolve()


def test_two_axes_keys_are_an_error_not_the_last_one_kept(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(f"notebook: {FIXTURE}\noutput: out\naxes: {{A: [1, 2]}}\nseeds: {{SEED: [0]}}\n"
                    "axes: {TAG: [a, b]}\n", encoding="utf-8")
    with pytest.raises(GridError) as e:
        sweep.load_grid(path)
    msg = str(e.value)
    assert f"{path}, line 5, column 1" in msg and "duplicate key 'axes' (first given on line 3)" in msg, msg
    assert sweep.main(["check", str(path)]) == 2
    nested = tmp_path / "nested.yaml"  # inside a mapping too, e.g. one axis given twice
    nested.write_text(f"notebook: {FIXTURE}\noutput: out\naxes:\n  TAG: [a]\n  TAG: [b]\n", encoding="utf-8")
    with pytest.raises(GridError, match=r"line 5, column 3: .*duplicate key 'TAG' \(first given on line 4\)"):
        sweep.load_grid(nested)
    merged = tmp_path / "merged.yaml"  # an explicit key after a YAML merge overrides it: allowed
    merged.write_text(f"notebook: {FIXTURE}\noutput: out\nbase: &b {{A: 1, B: 0.5}}\n", encoding="utf-8")
    loader = yaml.load(merged.read_text() + "parameters: {<<: *b, A: 3}\n", Loader=_Loader)
    assert loader["parameters"] == {"A": 3, "B": 0.5}


@pytest.mark.parametrize("text, line, column", [
    ("notebook: x\naxes: {A: [1, 2}\n", 2, 16),           # the "}" closes a "[": column of the "}"
    ("notebook: x\noutput: out\n  parameters: 1\n", 3, 13),  # a bad indentation
])
def test_malformed_yaml_names_file_line_and_column(tmp_path, text, line, column):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GridError) as e:
        sweep.load_grid(path)
    msg = str(e.value)
    assert msg.startswith(f"grid file {path}, line {line}, column {column}: not valid YAML"), msg
    assert "<unicode string>" not in msg
    assert sweep.main(["check", str(path)]) == 2


@pytest.mark.parametrize("parameters, message", [
    ({"N_SEEDS": "two"}, r"parameters.N_SEEDS: parameter N_SEEDS must be an integer >= 1, got 'two'"),
    ({"N_SEEDS": 0}, r"parameters.N_SEEDS: parameter N_SEEDS must be an integer >= 1, got 0"),
    ({"LAMS": [0.0, -1.0]}, r"parameters.LAMS: parameter LAMS\[1\] must be a finite number >= 0"),
    ({"MODEL": "resnet50"}, r"parameters.MODEL: parameter MODEL must be one of \['small_cnn', 'resnet18'"),
    ({"PRESET": "tiny"}, r"parameters.PRESET: parameter PRESET must be one of \['smoke', 'cpu', 'small', 'paper'\]"),
])
def test_none_default_parameters_are_checked_by_the_notebooks_validation_line(tmp_path, parameters, message):
    # notebook 08 declares these as None ("the preset's"): only its validation cell knows their type
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"notebook": str(NB08), "output": "out", "parameters": parameters}))
    with pytest.raises(GridError, match=message):
        sweep.load_grid(path)
    assert sweep.main(["check", str(path)]) == 2


def test_validation_line_accepts_what_the_notebook_accepts(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"notebook": str(NB08), "output": "out",
                                    "parameters": {"N_SEEDS": 2, "PRESET": None, "LAMS": "0,5", "EPOCHS": 3.0},
                                    "axes": {"MODEL": ["small_cnn", None]}}))
    grid = sweep.load_grid(path)  # None: the preset's; "0,5" and 3.0 are what params reads as [0, 5] and 3
    assert grid.parameters["N_SEEDS"] == 2 and grid.axes["MODEL"] == ["small_cnn", None]
    # a validation line with arguments that need the notebook's state is checked without them
    nb = json.loads(FIXTURE.read_text())
    nb["cells"][1]["source"] = ["N = None  # needs the notebook\n", "M = 4  # bounded by N\n"]
    nb["cells"][2]["source"] = ["from unroll_utils import params\n", "P = {'n': 3}\n",
                                'N = params.integer("N", N, low=1, default=P["n"])\n',
                                'M = params.integer("M", M, low=2, high=N // 2)\n']
    other = tmp_path / "other.ipynb"
    other.write_text(json.dumps(nb))
    declared = sweep.notebook_parameters(other)
    assert declared["N"].check(None) is None and declared["N"].check(7) == 7  # default dropped, None allowed
    assert declared["M"].check(100) == 100  # high=N // 2 dropped: only widens the check
    with pytest.raises(ValueError, match="parameter M must be an integer >= 2, got 1"):
        declared["M"].check(1)
    with pytest.raises(ValueError, match="parameter N must be an integer >= 1"):
        declared["N"].check("x")


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")  # submitit looks for srun only
    path = write_grid(tmp_path, executor={"kind": "slurm", "time_min": 600, "slurm": {
        "partition": "t4v2", "gpus": 1, "cpus": 4, "mem_gb": 32, "array_parallelism": 16,
        "extra": {"slurm_qos": "normal"}}})
    executor = sweep.submitit_executor(sweep.load_grid(path), "slurm")._executor
    script = executor._make_submission_file_text("COMMAND", "uid")
    for line in ("--partition=t4v2", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=32GB", "--time=600",
                 "--qos=normal", "--job-name=sweep-grid"):
        assert f"#SBATCH {line}\n" in script
    assert executor.parameters["array_parallelism"] == 16


# ------------------------------------------------------------------------------------------------ aggregation


def one_group(values):
    """A tidy table of one point (x = LR = 0.1) with one run per value."""
    return pd.DataFrame({"run": [f"r{i}" for i in range(len(values))], "LR": 0.1, "ve": values})


def interval(values, **kwargs):
    row = sweep.summarize(one_group(values), "ve", "LR", **kwargs).iloc[0]
    return row["mean"], row["low"], row["high"]


def test_summary_interval_by_hand():
    # the interval is statistics.seed_summary's: Student's t by default, the percentile bootstrap as an option
    mean, low, high = interval([1.0, 2.0, 3.0])  # s = 1, n = 3
    assert mean == 2.0 and high - mean == pytest.approx(T975[2] / math.sqrt(3), abs=1e-4)
    assert mean - low == pytest.approx(high - mean)
    # bootstrap of two values: the resampled means are a, (a+b)/2, b; the 2.5% and 97.5% quantiles are a and b
    assert interval([1.0, 2.0], ci="bootstrap") == (1.5, 1.0, 2.0)
    assert interval([4.0])[0] == 4.0 and math.isnan(interval([4.0])[1])
    # a run without a finite value is not counted: n = 2 of 3 runs, the interval of the two others
    with_nan = sweep.summarize(one_group([1.0, math.nan, 3.0]), "ve", "LR").iloc[0]
    assert with_nan["n"] == 2 and with_nan["mean"] == 2.0
    assert with_nan["high"] - 2.0 == pytest.approx(T975[1] * math.sqrt(2) / math.sqrt(2), abs=1e-4)
    with pytest.raises(ValueError, match="method"):
        interval([1.0, 2.0], ci="normal")


def test_summary_keeps_a_none_axis_value():
    # an axis may hold None ("the preset's"): its runs form a group of their own, not dropped
    table = pd.DataFrame({"run": ["a", "b", "c", "d"], "MODEL": ["cnn", "cnn", None, None],
                          "SEED": [0, 1, 0, 1], "ve": [1.0, 3.0, 10.0, 20.0]})
    summary = sweep.summarize(table, "ve", "MODEL")
    assert summary["mean"].tolist() == [2.0, 15.0] and summary["n"].tolist() == [2, 2]
    assert summary["MODEL"].tolist()[0] == "cnn" and summary["MODEL"].isna().tolist() == [False, True]


def test_summarize_picks_one_value_per_run():
    table = pd.DataFrame({"run": ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["d"] * 2,
                          "LR": [0.1] * 4 + [0.2] * 4, "SEED": [0, 0, 1, 1] * 2,
                          "t": [1, 2] * 4, "ve": [1.0, 3.0, 2.0, 5.0, 10.0, 30.0, 20.0, 40.0]})
    last = sweep.summarize(table, "ve", "LR")  # x is a run parameter: each run's last row
    assert last["mean"].tolist() == [4.0, 35.0] and last["n"].tolist() == [2, 2]
    assert last["high"].iloc[0] - 4.0 == pytest.approx(T975[1] * 1.0, abs=1e-4)  # s/sqrt(2) = sqrt(2)/sqrt(2)
    by_t = sweep.summarize(table, "ve", "t", hue="LR")  # x is a results column: every row
    assert by_t["mean"].tolist() == [1.5, 4.0, 15.0, 35.0]
    assert sweep.summarize(table, "ve", "LR", rows="all")["mean"].tolist() == [2.75, 25.0]
    with pytest.raises(KeyError, match="'acc'"):
        sweep.summarize(table, "acc", "LR")


# ------------------------------------------------------------------------------------------------ execution


@pytest.mark.slow  # papermill runs in subprocesses
def test_local_runs_skip_complete_resume_partial_and_aggregate(tmp_path, monkeypatch):
    grid = sweep.load_grid(write_grid(tmp_path))
    first = sweep.run_grid(grid, echo=lambda _: None)
    assert sorted(first["state"]) == ["done", "done"]
    assert any((grid.output / ".submitit").rglob("*_log.out"))  # local runs are submitit jobs: their logs
    runs = grid.runs()
    for run, seed in zip(runs, (0, 1)):
        check_complete(run, seed)
    stamps = [(r.path / "done.json").stat().st_mtime_ns for r in runs]

    # a third seed, stopped part-way (after its checkpoint) ...
    grid = sweep.load_grid(write_grid(tmp_path, seeds={"SEED": [0, 1, 2]}))
    monkeypatch.setenv("SWEEP_FIXTURE_FAIL", "1")
    second = sweep.run_grid(grid, echo=lambda _: None)
    assert sorted(second["state"]) == ["failed", "skipped", "skipped"]
    stopped = grid.runs()[2]
    assert stopped.state == "failed" and "stopped on purpose" in (stopped.path / "failed.json").read_text()
    assert (stopped.path / "cache" / "stage_one.json").exists()
    # ... is run again and resumes from the checkpoint; the complete runs are skipped, untouched
    monkeypatch.delenv("SWEEP_FIXTURE_FAIL")
    third = sweep.run_grid(grid, echo=lambda _: None)
    assert sorted(third["state"]) == ["done", "skipped", "skipped"]
    table = check_complete(stopped, 2)
    assert table["computed"].tolist() == [1, 1, 1]  # stage one was computed once: the rerun loaded it
    assert not (stopped.path / "failed.json").exists()
    assert [(r.path / "done.json").stat().st_mtime_ns for r in runs] == stamps

    tidy, written = sweep.aggregate(grid)
    assert list(tidy.columns) == ["run", "A", "B", "SEED", "t", "ve", "computed"]
    assert tidy["ve"].tolist() == expected_ve(0) + expected_ve(1) + expected_ve(2)
    assert tidy.groupby("SEED")["run"].nunique().tolist() == [1, 1, 1]
    saved, _, summary = results.load_table(grid.output / "aggregate")
    assert saved["ve"].tolist() == tidy["ve"].tolist() and summary == {"runs": {"done": 3}}
    # seeds 0, 1, 2 give ve = t, 2t, 3t: mean 2t, s = t, CI 2t -+ t_{0.975,2} * t / sqrt(3)
    summary_table, _, _ = results.load_table(grid.output / "figures" / "ve_vs_t")
    assert summary_table["mean"].tolist() == [2.0, 4.0, 6.0] and summary_table["n"].tolist() == [3, 3, 3]
    for t, low, high in zip((1, 2, 3), summary_table["low"], summary_table["high"]):
        assert high - 2 * t == pytest.approx(T975[2] * t / math.sqrt(3), abs=1e-3) and low == pytest.approx(
            4 * t - high)
    assert (grid.output / "figures" / "ve_vs_t.png").stat().st_size > 1000
    assert {p.name for p in written} >= {"aggregate.csv", "aggregate.json", "ve_vs_t.png"}
    # the command line: another figure, and a column that does not exist named in the error
    assert sweep.main(["aggregate", str(tmp_path / "grid.yaml"), "--y", "ve", "--x", "t", "--ci", "bootstrap"]) == 0
    boot, _, _ = results.load_table(grid.output / "figures" / "ve_vs_t")
    assert boot["low"].tolist() == [1.0, 2.0, 3.0] and boot["high"].tolist() == [3.0, 6.0, 9.0]  # min, max of 3
    assert sweep.main(["aggregate", str(tmp_path / "grid.yaml"), "--y", "acc"]) == 2


@pytest.mark.slow  # papermill runs inside this process (submitit's DebugExecutor)
def test_debug_executor_runs_the_same_jobs_in_this_process(tmp_path):
    grid = sweep.load_grid(write_grid(tmp_path, executor={"kind": "debug", "time_min": 10}))
    states = sweep.run_grid(grid, echo=lambda _: None)
    assert sorted(states["state"]) == ["done", "done"]
    for run, seed in zip(grid.runs(), (0, 1)):
        check_complete(run, seed)
    assert any((grid.output / ".submitit").rglob("*_log.out"))  # submitit's own job logs
    assert sweep.main(["status", str(tmp_path / "grid.yaml")]) == 0
    tidy, _ = sweep.aggregate(grid, figures=[])
    assert tidy.groupby("SEED")["ve"].sum().tolist() == [6, 12]


# ------------------------------------------------------------------------------------------------ scheduling


class FakeJob:
    """A submitit-like job that finishes on its run's ``looks``-th look (``done()``); the run named crash
    raises from ``result()`` (its process died)."""

    def __init__(self, executor, run):
        self.executor, self.run, self.looks, self.cancelled = executor, run, 0, False

    def done(self):
        self.looks += 1
        if self.looks == self.run.looks:
            self.executor.running -= 1
        return self.looks >= self.run.looks

    def result(self):
        if self.run.name == "crash":
            raise RuntimeError("the job's process was killed")
        return {"run": self.run.name, "state": "done"}

    def cancel(self, check=True):
        self.cancelled = True


class FakeExecutor:
    """Records how many submitted jobs are running at each submission."""

    def __init__(self):
        self.running, self.most, self.jobs = 0, 0, []

    def submit(self, fn, run):
        assert fn == "job"
        self.running += 1
        self.most = max(self.most, self.running)
        self.jobs.append(FakeJob(self, run))
        return self.jobs[-1]


class Named:
    def __init__(self, name, looks=3):
        self.name, self.looks = name, looks


@pytest.mark.parametrize("workers, most", [(1, 1), (2, 2), (3, 3), (9, 5)])
def test_local_runs_at_most_workers_at_a_time(workers, most):
    executor, rows = FakeExecutor(), []
    runs = [Named(n, looks) for n, looks in (("a", 3), ("b", 1), ("crash", 4), ("d", 2), ("e", 3))]
    sweep.run_at_most(executor, "job", runs, workers, rows.append, poll_s=0)
    assert executor.most == most and len(executor.jobs) == 5
    assert sorted(r["run"] for r in rows) == ["a", "b", "crash", "d", "e"]  # each reported once
    crash = next(r for r in rows if r["run"] == "crash")
    assert crash["state"] == "failed" and "RuntimeError: the job's process was killed" in crash["error"]
    assert not any(j.cancelled for j in executor.jobs)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        sweep.run_at_most(executor, "job", runs, 0, rows.append)


def test_interrupted_local_runs_cancel_the_running_jobs():
    executor = FakeExecutor()

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_at_most(executor, "job", [Named("a", 1), *(Named(n, 5) for n in "bcd")], 2, stop,
                          poll_s=0)
    # the first job finished and was being reported; the second was running: cancelled; c, d never started
    assert [j.run.name for j in executor.jobs] == ["a", "b"]
    assert [j.cancelled for j in executor.jobs] == [False, True]


def test_local_jobs_see_the_callers_gpus(tmp_path, monkeypatch):
    # submitit's local executor sets CUDA_VISIBLE_DEVICES to the GPUs it was given (none); the job restores
    # the caller's value, or unsets it when the caller had none
    class Probe:
        name = "probe"

        def execute(self):
            return {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OTHER")}

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OTHER", "kept")
    assert sweep.SubmititJob({"CUDA_VISIBLE_DEVICES": "0,1"})(Probe()) == {"CUDA_VISIBLE_DEVICES": "0,1",
                                                                           "OTHER": "kept"}
    assert sweep.SubmititJob({"CUDA_VISIBLE_DEVICES": None})(Probe())["CUDA_VISIBLE_DEVICES"] is None
    # run_grid passes the caller's value to local jobs (and nothing to debug jobs, which run in this process)
    seen = {}
    monkeypatch.setattr(sweep.run, "run_at_most", lambda executor, job, runs, workers, report: seen.update(
        kind=type(executor._executor).__name__, environ=job.environ, workers=workers))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    sweep.run_grid(sweep.load_grid(write_grid(tmp_path)), echo=lambda _: None)
    assert seen == {"kind": "LocalExecutor", "environ": {"CUDA_VISIBLE_DEVICES": "3"}, "workers": 2}
    sweep.run_grid(sweep.load_grid(write_grid(tmp_path), kind="debug"), echo=lambda _: None)
    assert seen == {"kind": "DebugExecutor", "environ": {}, "workers": 1}


def test_no_wait_and_the_old_executor_name_are_errors(tmp_path, capsys):
    path = write_grid(tmp_path)
    assert sweep.main(["run", str(path), "--no-wait"]) == 2
    assert "--no-wait needs --executor slurm" in capsys.readouterr().err
    with pytest.raises(ValueError, match="wait=False needs the slurm executor"):
        sweep.run_grid(sweep.load_grid(path), wait=False)
    with pytest.raises(GridError, match="got 'submitit-local' .*use local"):
        sweep.load_grid(write_grid(tmp_path, executor={"kind": "submitit-local"}))
    assert not (tmp_path / "out").exists()
