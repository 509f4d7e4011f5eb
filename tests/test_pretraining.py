"""Pretraining of w_0 (paper §2.1): cache, keys, bit-identical resume, the cosine schedule."""

import math
import re
from dataclasses import replace

import pytest
import torch

from unroll_utils import models, training
from unroll_utils import pretraining as P
from unroll_utils.pretraining import PretrainConfig


@pytest.fixture(scope="module")
def pretrain_data():
    return P.load_data("digits", n_train=300, n_test=100, seed=0)


def cfg(**kw):
    base = dict(dataset="digits", model="small_cnn", width=4, n_train=300, n_test=100, epochs=3,
                lr=0.1, batch_size=64, t_max=4, augment="crop_flip", seed=0)
    return PretrainConfig(**{**base, **kw})


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_hit_returns_the_same_weights(pretrain_data, tmp_path):
    first = P.pretrain(cfg(), pretrain_data, device="cpu", cache_dir=tmp_path, progress=False)
    assert first.complete and not first.cached and first.path.exists()
    assert len(first.history) == 3 and 0 <= first.test_acc <= 1
    second = P.pretrain(cfg(), pretrain_data, device="cpu", cache_dir=tmp_path, progress=False)
    assert second.cached and second.key == first.key
    assert same_state(first.model, second.model)
    assert second.history.equals(first.history) and second.test_acc == first.test_acc


@pytest.mark.parametrize("change", [dict(lr=0.05), dict(seed=1), dict(lam=1.0, loss="sd"),
                                    dict(epochs=4), dict(augment="none"), dict(weight_decay=0.0),
                                    dict(schedule="constant"), dict(width=8), dict(init="torchvision")])
def test_every_config_field_changes_the_key(pretrain_data, change):
    assert P.pretrain_key(cfg(**change), pretrain_data, torch.device("cpu")) != \
        P.pretrain_key(cfg(), pretrain_data, torch.device("cpu"))


def test_data_changes_the_key(pretrain_data):
    other = P.load_data("digits", n_train=300, n_test=100, seed=1)
    cpu = torch.device("cpu")
    assert P.pretrain_key(cfg(), other, cpu) != P.pretrain_key(cfg(), pretrain_data, cpu)


@pytest.mark.parametrize("augment", ["crop_flip", "crop_flip_rotate"])
def test_resume_is_bit_identical(pretrain_data, tmp_path, augment):
    c = cfg(augment=augment, momentum=0.9)  # momentum: the optimiser state must be restored too
    straight = P.pretrain(c, pretrain_data, device="cpu", cache_dir=tmp_path / "a", progress=False)
    part = P.pretrain(c, pretrain_data, device="cpu", cache_dir=tmp_path / "b", progress=False,
                      stop_after_epochs=1)
    assert not part.complete and part.path.name.endswith(".partial.pt") and len(part.history) == 1
    assert not same_state(part.model, straight.model)
    resumed = P.pretrain(c, pretrain_data, device="cpu", cache_dir=tmp_path / "b", progress=False)
    assert resumed.complete and resumed.resumed_from == 1
    assert same_state(resumed.model, straight.model)
    assert resumed.history.equals(straight.history)
    assert not part.path.exists()  # the partial checkpoint is removed once w_0 is cached


def test_cosine_schedule_matches_the_closed_form(pretrain_data, tmp_path):
    res = P.pretrain(cfg(epochs=5, t_max=4), pretrain_data, device="cpu", cache_dir=tmp_path, progress=False)
    expected = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    assert res.history.lr.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert [P.cosine_lr(0.1, e, 4) for e in range(5)] == pytest.approx(expected, rel=1e-15)
    # the reference: T_max=200 over 50 epochs only falls to ~0.085 (paper §2.1)
    assert P.cosine_lr(0.1, 50, 200) == pytest.approx(0.0854, abs=1e-4)


def test_constant_schedule_and_zero_epochs(pretrain_data, tmp_path):
    res = P.pretrain(cfg(schedule="constant", epochs=2), pretrain_data, device="cpu", cache_dir=tmp_path,
                     progress=False)
    assert res.history.lr.tolist() == [0.1, 0.1]
    init = P.pretrain(cfg(epochs=0), pretrain_data, device="cpu", cache_dir=tmp_path, progress=False)
    assert len(init.history) == 0 and 0 <= init.test_acc <= 1
    fresh = P.Pretrainer(cfg(epochs=0), pretrain_data, torch.device("cpu")).model
    assert same_state(init.model, fresh)


def test_training_uses_train_mode_batches_and_learns(pretrain_data, tmp_path):
    res = P.pretrain(cfg(epochs=3, augment="none"), pretrain_data, device="cpu", cache_dir=tmp_path,
                     progress=False)
    steps = 3 * math.ceil(300 / 64)
    bn = [m for m in res.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(int(m.num_batches_tracked) == steps for m in bn)
    assert res.history.train_loss.iloc[-1] < res.history.train_loss.iloc[0]


def test_rotation_is_exact_for_quarter_turns():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = training.rotate(x, torch.tensor([0.0, math.pi / 2]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], torch.rot90(x[1], 1, dims=(1, 2)))
    angles = training.rotation_draws(1000, epoch=0, seed=0)
    assert angles.abs().max() <= math.radians(15) and torch.equal(angles, training.rotation_draws(1000, 0, 0))


@pytest.mark.parametrize("field,value", [("epochs", -1), ("lr", 0.0), ("momentum", 1.0),
                                         ("schedule", "step"), ("augment", "rotate"), ("t_max", 0),
                                         ("lam", 1.0), ("dataset", "imagenet"), ("batch_size", 0)])
def test_bad_config_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        replace(cfg(), **{field: value}).validate()


def test_stop_after_epochs_checked(pretrain_data, tmp_path):
    with pytest.raises(ValueError, match="stop_after_epochs"):
        P.pretrain(cfg(), pretrain_data, device="cpu", cache_dir=tmp_path, stop_after_epochs=0)


def test_load_data_reads_cifar_files_and_keeps_the_first_points(tmp_path, monkeypatch):
    from test_data import CIFAR10_SIZES, _write_cifar

    _write_cifar(tmp_path, "cifar10", CIFAR10_SIZES)
    monkeypatch.setenv("UNROLL_DATA", str(tmp_path))
    full = P.load_data("cifar10", verify=False)
    part = P.load_data("cifar10", n_train=4, n_test=2, verify=False)
    assert full.train_x.shape == (10, 3, 32, 32) and part.train_x.shape == (4, 3, 32, 32)
    assert torch.equal(part.train_x, full.train_x[:4]) and torch.equal(part.test_y, full.test_y[:2])
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        P.load_data("cifar10", n_train=4)  # generated files fail the md5 check: the message names the archive
    monkeypatch.setenv("UNROLL_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="empty"):
        P.load_data("cifar10", verify=False)  # offline and missing: the message names the folder


def test_init_reaches_the_cifar_model_and_is_validated():
    """PretrainConfig.init builds resnet18 with that initialisation (w_0 of Exp A–D)."""
    data = P.load_data("digits", n_train=100, n_test=20, seed=0)
    for init in ("pytorch_default", "torchvision"):
        trainer = P.Pretrainer(cfg(model="resnet18", init=init, n_train=100, n_test=20), data, torch.device("cpu"))
        ref = models.build_model("resnet18", in_channels=1, num_classes=10, seed=0, init=init)
        assert torch.equal(trainer.model.conv1.weight, ref.conv1.weight)
    with pytest.raises(ValueError, match="init must be one of"):
        cfg(init="xavier").validate()


def test_pretrainer_is_the_one_sgd_loop_and_resumes_mid_epoch(pretrain_data, tmp_path):
    """Pretrainer is training.SGDTraining with the cosine schedule: its weights equal those of
    an SGDTraining with t_max, and a checkpoint taken inside an epoch resumes bit-identically
    (learning rate schedule and test accuracies included)."""
    c = cfg(augment="crop_flip_rotate", momentum=0.9, epochs=2)
    cpu = torch.device("cpu")
    straight = P.Pretrainer(c, pretrain_data, cpu)
    straight.run(progress=False)
    plain_model = models.build_model("small_cnn", in_channels=1, num_classes=10, seed=0, width=4)
    plain = training.SGDTraining(plain_model, pretrain_data.train_x, pretrain_data.train_y, c, t_max=c.t_max)
    assert plain.run(progress=False) == straight.epoch_losses
    assert same_state(plain_model, straight.model)
    ckpt = tmp_path / "mid.pt"
    part = P.Pretrainer(c, pretrain_data, cpu)
    part.run(checkpoint_path=ckpt, checkpoint_every=2, stop_after=7, progress=False)  # 5 steps/epoch
    resumed = P.Pretrainer(c, pretrain_data, cpu)
    resumed.run(checkpoint_path=ckpt, progress=False)
    assert resumed.resumed_at == 7 and same_state(resumed.model, straight.model)
    assert resumed.history == straight.history
    assert [h["lr"] for h in resumed.history] == [0.1, pytest.approx(P.cosine_lr(0.1, 1, 4), rel=1e-12)]


def test_train_sgd_takes_sgd_config_fields_only():
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    net = models.build_model("small_cnn", in_channels=1, num_classes=10, seed=0, width=4)
    with pytest.raises(TypeError, match="epoch"):
        training.train_sgd(net, x, y, epoch=2, progress=False)
    with pytest.raises(ValueError, match="augment must be one of"):
        training.train_sgd(net, x, y, augment="rotate", progress=False)
    losses = training.train_sgd(net, x, y, epochs=2, batch_size=8, augment="crop_flip_rotate", progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("field,value,message", [
    ("weight_decay", float("inf"), "weight_decay must be a finite number >= 0; got inf"),
    ("epochs", 2.5, "epochs must be an integer >= 1; got 2.5"),
    ("batch_size", True, "batch_size must be an integer >= 1; got True"),
    ("momentum", "0.9", "momentum must be in [0, 1); got '0.9'"),
    ("seed", -1, "seed must be >= 0; got -1"),
])
def test_sgd_config_checks_types_and_ranges_by_name(field, value, message):
    """SGDConfig's one validator, shared by every training configuration (here the forget
    benchmark's budget options too); PretrainConfig only lowers the least epochs to 0."""
    from unroll_utils.unlearning_methods import _check_options

    with pytest.raises(ValueError, match=re.escape(message)):
        training.SGDConfig(**{field: value}).validate()
    if field in ("weight_decay", "epochs", "momentum"):
        options = {**dict(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0), field: value}
        with pytest.raises(ValueError, match=re.escape(message)):
            _check_options(**options)
    assert cfg(epochs=0).validate().epochs == 0
