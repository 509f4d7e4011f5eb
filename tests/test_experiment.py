"""The main job end to end on the embedded data (small settings), and its command line."""

import json
import math

import pytest
import torch

from unroll_utils.__main__ import main
from unroll_utils.experiment import MainJobConfig, main_job

SMALL = dict(dataset="digits", n_train=300, pretrain_epochs=1, epochs=1, batch_size=32,
             eval_every=2, sigma_every=4, sigma_points=32, width=8)


def test_main_job_writes_results_and_resumes(tmp_path):
    cfg = MainJobConfig(**SMALL)
    s1 = main_job(cfg, tmp_path, progress=False)
    table = s1["table"]
    assert table["t"].iloc[0] == 1 and table["t"].iloc[-1] == math.ceil(300 / 32)
    assert table["ve"].iloc[0] < 1e-5 < table["dist_retrained"].iloc[0]  # exact undo at t = 1
    assert (table["unlearning_error"].iloc[1:] > 0).all()
    for name in ("results.csv", "results.json", "figure.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) == 1
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["config"]["dataset"] == "digits" and payload["summary"]["n_forget"] == 32
    assert -1.0 <= s1["pearson_e_ve"] <= 1.0
    s2 = main_job(cfg, tmp_path, progress=False)  # resumes from the finished checkpoint
    assert s2["table"].equals(table)
    # another option in the same folder starts a fresh run instead of refusing the checkpoint
    s3 = main_job(MainJobConfig(**{**SMALL, "lr": 0.02}), tmp_path, progress=False)
    assert not s3["table"]["ve"].equals(table["ve"])
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) == 2
    # another intra-op thread count changes the reduction order: it never reuses a checkpoint
    assert payload["summary"]["environment"]["intra_op_threads"] == torch.get_num_threads()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        main_job(cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) == 3


def test_cli_runs_and_prints_the_table(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--quiet"]
    for k, v in SMALL.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Pearson(e, VE)" in out and "rolling_e" in out and "VE_no_unlearn" in out


@pytest.mark.parametrize("flag,value,name", [("--lr", "-1", "lr"), ("--forget", "all", "forget"),
                                             ("--dataset", "imagenet", "dataset"),
                                             ("--epochs", "0", "epochs"), ("--device", "tpu", "device")])
def test_cli_rejects_bad_parameters_by_name(tmp_path, capsys, flag, value, name):
    with pytest.raises(SystemExit) as err:
        main(["--out", str(tmp_path), flag, value])
    assert err.value.code == 2
    assert name in capsys.readouterr().err


def test_cli_reports_data_dependent_errors_without_traceback(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--quiet", "--dataset", "digits", "--n-train", "300", "--forget", "class",
            "--forget-class", "12"]
    assert main(args) == 2
    assert "cls must be in [0, 9]" in capsys.readouterr().err
