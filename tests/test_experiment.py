"""The main job end to end on the embedded data (small settings), and its command line."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from unroll_utils.__main__ import main
from unroll_utils.experiment import MainJobConfig, main_job

SMALL = dict(dataset="digits", n_train=300, pretrain_epochs=1, epochs=1, batch_size=32,
             eval_every=2, sigma_every=4, sigma_points=32, width=8)


@pytest.mark.slow  # the whole main job, twice
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


@pytest.mark.parametrize("extra,message", [
    (["--forget", "class", "--forget-class", "12"], "error: --forget-class must be in [0, 9], got 12\n"),
    (["--forget", "random", "--forget-k", "300"], "error: --forget-k must be in [1, 299], got 300\n"),
    (["--forget-batch", "10"], "error: --forget-batch must be in [0, 9], got 10\n"),
])
def test_cli_reports_data_dependent_errors_by_flag_and_creates_no_folder(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    args = ["--out", str(out), "--quiet", "--dataset", "digits", "--n-train", "300"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == message and "Traceback" not in err and "cls" not in err
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--forget-class", "11"],
     "--forget-class is used only with --forget class; got --forget batch (so --forget-class 11 would be ignored)"),
    (["--forget-class", "0"],  # given explicitly, even at its default
     "--forget-class is used only with --forget class; got --forget batch (so --forget-class 0 would be ignored)"),
    (["--forget", "class", "--forget-k", "5"],
     "--forget-k is used only with --forget random; got --forget class (so --forget-k 5 would be ignored)"),
    (["--forget", "random", "--forget-batch", "1"],
     "--forget-batch is used only with --forget batch; got --forget random (so --forget-batch 1 would be ignored)"),
    (["--model", "resnet18", "--width", "8"],
     "--width is used only with --model small_cnn; got --model resnet18 (so --width 8 would be ignored)"),
    (["--dataset", "cifar10", "--n-train", "100"], "--n-train is used only with --dataset mnist or "
     "--dataset digits; got --dataset cifar10 (so --n-train 100 would be ignored)"),
    (["--pretrain-epochs", "0", "--pretrain-lr", "0.5"], "--pretrain-lr is used only with "
     "--pretrain-epochs > 0; got --pretrain-epochs 0 (so --pretrain-lr 0.5 would be ignored)"),
    (["--sigma-every", "0", "--sigma-convention", "abs_eig"], "--sigma-convention is used only with "
     "--sigma-every > 0; got --sigma-every 0 (so --sigma-convention abs_eig would be ignored)"),
    (["--lam", "0.5"], "--lam must be >= 0, and 0 unless --loss sd; got 0.5"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1; got 0"),
])
def test_cli_contradictory_options_are_errors_naming_the_flags(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["--out", str(out)] + args)
    assert err.value.code == 2
    assert capsys.readouterr().err.endswith(f"python -m unroll_utils: error: {message}\n")
    assert not out.exists()


def test_config_rejects_options_it_would_ignore():
    with pytest.raises(ValueError, match=r"^forget_class is used only with forget='class'; got "
                                         r"forget='batch' \(so forget_class=11 would be ignored\)$"):
        MainJobConfig(forget_class=11).validate()
    MainJobConfig(forget="class", forget_class=3).validate()
    MainJobConfig(forget_class=0).validate()  # a default value is not a contradiction ...
    with pytest.raises(ValueError, match="forget_class is used only"):  # ... unless given explicitly
        MainJobConfig().check_dependencies(explicit=["forget_class"])


class InterruptAt:
    """Patches ``torch.optim.SGD.step`` (both phases step through it) to raise KeyboardInterrupt
    at its ``at``-th call, as Ctrl-C during that SGD step would."""

    def __init__(self, monkeypatch, at):
        self.calls, self.at = 0, at
        original = torch.optim.SGD.step

        def step(opt, *args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return original(opt, *args, **kwargs)

        monkeypatch.setattr(torch.optim.SGD, "step", step)


def test_pretraining_matches_train_sgd_and_resumes_bit_identically(tmp_path, monkeypatch):
    from unroll_utils import data, models
    from unroll_utils.training import SGDConfig, SGDTraining, train_sgd

    ds = data.load_dataset("digits", n_train=200, seed=0)
    kwargs = dict(lr=0.05, epochs=2, batch_size=48, seed=3, momentum=0.9, weight_decay=1e-3,
                  augment="crop_flip")
    net = lambda: models.build_model("small_cnn", in_channels=1, num_classes=10, seed=0, width=4)
    ref = net()
    ref_losses = train_sgd(ref, ds.train_x, ds.train_y, progress=False, **kwargs)
    plain = net()
    config = SGDConfig(**kwargs)
    assert SGDTraining(plain, ds.train_x, ds.train_y, config).run(progress=False) == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ref.state_dict().values()))
    # Ctrl-C in the 7th of 10 steps (checkpoints every 3), then a fresh process resumes at step 6
    ckpt = tmp_path / "pretrain.pt"
    with monkeypatch.context() as m:
        InterruptAt(m, 7)
        with pytest.raises(KeyboardInterrupt):
            SGDTraining(net(), ds.train_x, ds.train_y, config).run(
                checkpoint_path=ckpt, checkpoint_every=3, progress=False)
    assert torch.load(ckpt, weights_only=False)["t"] == 6
    resumed_model = net()
    resumed = SGDTraining(resumed_model, ds.train_x, ds.train_y, config)
    assert resumed.run(checkpoint_path=ckpt, checkpoint_every=3, progress=False) == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(),
                                                 ref.state_dict().values()))
    # a checkpoint of another run is refused by name
    with pytest.raises(ValueError, match="training checkpoint was written by another configuration"):
        SGDTraining(net(), ds.train_x, ds.train_y, SGDConfig(**{**kwargs, "lr": 0.02})).run(
            checkpoint_path=ckpt)


def test_ctrl_c_stops_cleanly_and_the_resumed_run_is_bit_identical(tmp_path, monkeypatch, capsys):
    small = {**SMALL, "pretrain_epochs": 2}  # 10 pretraining steps, 10 lock-step steps
    reference = main_job(MainJobConfig(**small), tmp_path / "ref", progress=False, checkpoint_every=3)
    out = tmp_path / "run"
    args = ["--out", str(out), "--quiet", "--checkpoint-every", "3"]
    for k, v in small.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    line = (f"interrupted: run the same command again to resume from the last checkpoint in {out} "
            "(--no-resume starts over)\n")
    with monkeypatch.context() as m:
        InterruptAt(m, 8)  # pretraining step 8: its checkpoint holds step 6
        assert main(args) == 130
    assert capsys.readouterr().err == line
    (pretrain_ckpt,) = out.glob("pretrain-*.pt")
    assert torch.load(pretrain_ckpt, weights_only=False)["t"] == 6
    assert not (out / "results.csv").exists()
    with monkeypatch.context() as m:
        # resumed: pretraining steps 7-10 (4 SGD steps), then lock-step t=1 (M only, M′ skips x*)
        # and t=2..5 (M and M′): the 14th call is M's step t=6; the lock-step checkpoint holds t=3
        InterruptAt(m, 4 + 1 + 2 * 4 + 1)
        assert main(args) == 130
    assert capsys.readouterr().err == line
    assert not list(out.glob("pretrain-*.pt"))  # w_0 is cached now
    (lockstep_ckpt,) = out.glob("checkpoint-*.pt")
    assert torch.load(lockstep_ckpt, weights_only=False)["t"] == 3
    assert not (out / "results.csv").exists()
    assert main(args) == 0
    assert (out / "results.csv").read_bytes() == (tmp_path / "ref" / "results.csv").read_bytes()
    table = pd.read_csv(out / "results.csv")
    assert table.equals(pd.read_csv(tmp_path / "ref" / "results.csv"))
    assert len(table) == len(reference["table"])


def test_environment_records_the_cpu_model_and_keys_the_checkpoint(tmp_path, monkeypatch):
    from unroll_utils import device as experiment  # cpu_model lives in unroll_utils.device

    cpu = experiment.cpu_model()
    assert isinstance(cpu, str) and cpu and cpu != "unknown"
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        first = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        assert cpu == first.split(":", 1)[1].strip()
    cfg = MainJobConfig(**SMALL)
    s1 = main_job(cfg, tmp_path, progress=False)
    env = json.loads((tmp_path / "results.json").read_text())["summary"]["environment"]
    assert env == {"device": "cpu", "torch": torch.__version__,
                   "intra_op_threads": torch.get_num_threads(), "cpu": cpu}
    # another CPU model: a fresh w_0 and a fresh checkpoint, never the other CPU's
    monkeypatch.setattr(experiment, "cpu_model", lambda: "Another CPU @ 3.0GHz")
    main_job(cfg, tmp_path, progress=False)
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) == 2
    assert len(list((tmp_path / "cache").glob("w0_*.pt"))) == 2
    env = json.loads((tmp_path / "results.json").read_text())["summary"]["environment"]
    assert env["cpu"] == "Another CPU @ 3.0GHz"
    assert s1["environment"]["cpu"] == cpu


def test_cpu_model_fallbacks(monkeypatch):
    from unroll_utils import device as experiment  # cpu_model lives in unroll_utils.device

    def no_file(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(experiment, "open", no_file, raising=False)
    monkeypatch.setattr(experiment.platform, "processor", lambda: "Intel64 Family 6 Model 85")
    assert experiment.cpu_model() == "Intel64 Family 6 Model 85"
    monkeypatch.setattr(experiment.platform, "processor", lambda: "")
    monkeypatch.setattr(experiment.platform, "machine", lambda: "aarch64")
    assert experiment.cpu_model() == "aarch64"
    monkeypatch.setattr(experiment.platform, "machine", lambda: "")
    assert experiment.cpu_model() == "unknown"


def test_messages_speak_in_flags_only_where_they_name_an_option():
    from unroll_utils.__main__ import in_flags

    assert in_flags("forget_class=3 does not occur in labels") == "--forget-class=3 does not occur in labels"
    assert in_flags("lam must be >= 0, and 0 unless loss='sd'; got 1") == \
        "--lam must be >= 0, and 0 unless --loss sd; got 1"
    # a sentence that merely starts with a word that is also an option's name stays as it is
    same = "model is not at the checkpoint's w_0; pass the same initial model"
    assert in_flags(same) == same


@pytest.mark.parametrize("args,message", [
    (["--pretrain-lr", "0"], "--pretrain-lr must be a finite number > 0; got 0.0"),
    (["--pretrain-batch-size", "0"], "--pretrain-batch-size must be an integer >= 1; got 0"),
    (["--seed", "-1"], "--seed must be >= 0; got -1"),
    (["--augment", "crop_flip", "--lr", "nan"], "--lr must be a finite number > 0; got nan"),
])
def test_cli_sgd_options_are_checked_once_and_named_as_typed(tmp_path, capsys, args, message):
    """The pretraining's and the fine-tuning's SGD options go through SGDConfig's one validator,
    which names them as the user typed them (--pretrain-lr, not lr)."""
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run")] + args)
    assert capsys.readouterr().err.endswith(f"python -m unroll_utils: error: {message}\n")


def test_main_job_config_is_an_sgd_config_and_every_option_has_help():
    from dataclasses import fields

    from unroll_utils.training import SGDConfig, field_help
    from unroll_utils.trajectory import LockStepConfig

    cfg = MainJobConfig(augment="crop_flip_rotate", momentum=0.5, pretrain_epochs=2, pretrain_lr=0.3)
    assert isinstance(cfg.validate(), SGDConfig)
    lock = cfg.lockstep_config()  # every SGD field reaches the lock-step run, augment included
    assert isinstance(lock, LockStepConfig) and lock.augment == "crop_flip_rotate" and lock.momentum == 0.5
    assert lock.order == "forget_first" and lock.epochs == 2  # the main job's own defaults
    pre = cfg.pretrain_config()
    assert (pre.lr, pre.epochs, pre.batch_size, pre.order, pre.augment, pre.momentum) == \
        (0.3, 2, 64, "shuffle", "none", 0.0)
    assert all(field_help(MainJobConfig, f.name) for f in fields(MainJobConfig))
    assert field_help(MainJobConfig, "order") == field_help(SGDConfig, "order")  # declared once
    with pytest.raises(KeyError):
        field_help(LockStepConfig, "sigma_tol")
