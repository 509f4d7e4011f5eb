"""Exp A and Exp B of notebook 07 against the reference (``Unlearning/correlation_verification.py``,
``Unlearning/checkpoint_version.py``): the checkpointed error at every step, the checkpoint the
undo uses at each step, the CIFAR-100 rotation and σ's points as the augmented images M trains on."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from unroll_utils import distances, fine_tuning, protocols, training
from unroll_utils.losses import make_loss
from unroll_utils.lockstep import LockStep
from unroll_utils.training import make_optimizer, sgd_step
from unroll_utils.trajectory import LockStepConfig, run_lockstep
from unroll_utils.unlearning import forget_gradient

N = 70  # 4 batches of 16 and a last batch of 6


def tiny_net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).to(dtype)


def toy_data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (N,), generator=g)


def test_checkpointed_error_hand_computed_at_every_step():
    # c = 3, η = 0.1 (η² = 0.01); σ measured at t = 1, 2, 3, 5 (eig_hvps > 0), the column holds the latest
    table = pd.DataFrame({"t": [1, 2, 3, 4, 5, 6, 7, 8],
                          "dist_ckpt": [0.5, 1.0, 1.5, 0.7, 2.0, 2.5, 0.9, 1.0],
                          "sigma": [9.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 6.0],
                          "eig_hvps": [5, 5, 5, 0, 5, 0, 0, 0]})
    e = fine_tuning.checkpointed_errors(table, lr=0.1, c=3)
    expected = [0.0,
                0.01 * 1 * 1.0 * 2.0,  # t_loc 1, σ over t = 2
                0.01 * 2 * 1.5 * 3.0,  # t_loc 2, mean σ over t = 2, 3 (no ½)
                0.09,  # t_loc 0: the previous error carried (e_ckpt ← 0.09)
                0.09 + 0.01 * 1 * 2.0 * 6.0,
                0.09 + 0.01 * 2 * 2.5 * 6.0,  # window t = 5, 6: only t = 5 measured
                0.39,  # carried again (e_ckpt ← 0.39)
                0.39 + 0.01 * 1 * 1.0 * 6.0]  # nothing measured in the window: the latest σ
    np.testing.assert_allclose(e, expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="every step"):
        fine_tuning.checkpointed_errors(table.iloc[::2], lr=0.1, c=3)


def test_exp_b_undo_at_the_reference_checkpoint_and_error_at_every_step(tmp_path):
    # checkpoint_version.py, 0-based step a = t − 1: the undo gradient at step a is taken at
    # w_{c·⌊a/c⌋}; at t = kc that is still w_{(k−1)c} (the earlier rule here used w_{kc}).
    x, y = toy_data(torch.float64)
    net, forget, c, lr = tiny_net(torch.float64), torch.arange(16), 3, 0.05
    cfg = LockStepConfig(lr=lr, batch_size=16, epochs=1, undo_at="checkpoint", checkpoint_freq=c,
                         eval_every=1, sigma_every=1, sigma_points=32, sigma_tol=1e-8)
    res = fine_tuning.CheckpointedRun(net, x, y, forget, cfg, tmp_path / "b.pt").run(progress=False)
    tab = res.table
    assert tab.t.tolist() == [1, 2, 3, 4, 5]
    # replay M by hand, keeping every w_t
    m = copy.deepcopy(net)
    opt = make_optimizer(m, lr)
    loss_fn = make_loss("ce")
    batches = training.batch_order(N, forget, 16, "forget_first", 0, 0)
    ws = [distances.snapshot(m.parameters())]
    for idx in batches:
        sgd_step(m, opt, loss_fn, x[idx], y[idx])
        ws.append(distances.snapshot(m.parameters()))
    for t in range(1, 6):  # ‖w_t − w_ckpt‖ with w_ckpt = w_{c·⌊(t−1)/c⌋}
        k = c * ((t - 1) // c)
        assert tab.dist_ckpt.iloc[t - 1] == pytest.approx(distances.weight_distance(ws[t], ws[k]), rel=1e-12)
    # at t = kc = 3 the undo still uses w_0: VE equals Exp A's (undo at w_0) there, not at t = 4
    exp_a = run_lockstep(net, x, y, forget, LockStepConfig(**{**cfg.__dict__, "undo_at": "w0"}),
                         progress=False).table
    assert tab.ve.iloc[2] == pytest.approx(exp_a.ve.iloc[2], rel=1e-12)
    assert abs(tab.ve.iloc[3] - exp_a.ve.iloc[3]) > 1e-6 * exp_a.ve.iloc[3]
    # the error logged at every step follows the recursion (t_loc = (t − 1) mod 3, no ½)
    s, d, eta2 = tab.sigma.to_numpy(), tab.dist_ckpt.to_numpy(), lr * lr
    e2 = eta2 * 1 * d[1] * s[1]
    e3 = eta2 * 2 * d[2] * (s[1] + s[2]) / 2
    e5 = e3 + eta2 * 1 * d[4] * s[4]
    np.testing.assert_allclose(tab.checkpointed_error, [0.0, e2, e3, e3, e5], rtol=1e-12, atol=0)
    assert tab.checkpoint_row.tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match="undo_at"):
        fine_tuning.CheckpointedRun(net, x, y, forget, LockStepConfig(), tmp_path / "c.pt")


def test_exp_b_ve_matches_a_hand_made_m_double_prime():
    # VE_t = ‖w_t + η·∇L(w_ckpt; x*) − w′_t‖ with the reference's checkpoint, at every step
    x, y = toy_data(torch.float64)
    net, forget, c, lr = tiny_net(torch.float64), torch.arange(16), 2, 0.05
    cfg = LockStepConfig(lr=lr, batch_size=16, epochs=1, undo_at="checkpoint", checkpoint_freq=c,
                         eval_every=1, sigma_every=0)
    run = LockStep(net, x, y, forget, cfg)
    loss_fn = make_loss("ce")
    ws = [distances.snapshot(run.model.parameters())]
    while not run.done:
        run.step()
        ws.append(distances.snapshot(run.model.parameters()))
        row = run.measure()
        t = run.t
        g = forget_gradient(net, loss_fn, x[forget], y[forget], weights=ws[c * ((t - 1) // c)])
        ve = distances.weight_distance(ws[t], list(run.retrained.parameters()), offset=[lr * gi for gi in g])
        assert row["ve"] == pytest.approx(ve, rel=1e-10), t


def test_cifar100_fine_tuning_rotates_and_sigma_points_are_the_augmented_images():
    x, y = toy_data()
    net, forget = tiny_net(), torch.tensor([40, 41])
    cfg = LockStepConfig(lr=0.05, batch_size=16, epochs=1, order="index", augment="crop_flip_rotate",
                         sigma_every=1, sigma_points=32, eval_every=1)
    run = LockStep(net, x, y, forget, cfg)
    shifts, flips = training.augmentation_draws(N, 0, cfg.seed)
    angles = training.rotation_draws(N, 0, cfg.seed)
    assert angles.abs().max() <= math.radians(15) and angles.abs().max() > math.radians(10)
    first = torch.arange(32)
    by_hand = training.rotate(training.crop_flip(x[first], shifts[first], flips[first]), angles[first])
    assert torch.equal(run.sigma.fixed_x, by_hand)  # σ's points: the images M trains on
    assert not torch.equal(by_hand, training.crop_flip(x[first], shifts[first], flips[first]))
    run.step()
    xb = run._last[0]
    assert torch.equal(xb, run.sigma.fixed_x[:16])  # batch 0 under "index" = points 0..15
    # M's weights after one step: plain SGD on the rotated images
    m = copy.deepcopy(net)
    sgd_step(m, make_optimizer(m, 0.05), make_loss("ce"), by_hand[:16], y[:16])
    assert distances.weight_distance(m, run.model) == 0.0
    raw = LockStep(net, x, y, forget, LockStepConfig(**{**cfg.__dict__, "sigma_data": "raw"}))
    assert torch.equal(raw.sigma.fixed_x, x[:32])  # the named option: un-augmented points
    with pytest.raises(ValueError, match="sigma_data"):
        LockStepConfig(sigma_data="flipped").validate()


def test_fine_tuning_augment_follows_the_reference_per_dataset():
    assert protocols.fine_tuning_augment("cifar100") == "crop_flip_rotate"
    assert protocols.fine_tuning_augment("cifar10") == "crop_flip"
    assert protocols.fine_tuning_augment("mnist") == "none"
    with pytest.raises(ValueError, match="DATASET"):
        protocols.fine_tuning_augment("svhn")


def test_fine_tuning_run_is_cached(tmp_path):
    x, y = toy_data()
    cfg = LockStepConfig(lr=0.05, batch_size=16, epochs=1, undo_at="checkpoint", checkpoint_freq=2,
                         sigma_every=0)
    args = ("B", tiny_net(), x, y, torch.arange(16), cfg)
    first, info = fine_tuning.fine_tuning_run(*args, cache_dir=tmp_path, key_extra={"w0": "a"}, progress=False)
    again, info2 = fine_tuning.fine_tuning_run(*args, cache_dir=tmp_path, key_extra={"w0": "a"}, progress=False)
    assert not info["cached"] and info["steps"] == 5 and info2["cached"]
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(ValueError, match="experiment"):
        fine_tuning.fine_tuning_run("C", *args[1:], cache_dir=tmp_path, key_extra={}, progress=False)


def test_exp_ab_grid_is_the_references(monkeypatch):
    # misc/submit_checkpoint.py: model {vgg, resnet} × loss {regular, std} × dataset {cifar10, cifar100}
    from pathlib import Path

    from unroll_utils import sweep

    monkeypatch.delenv("UNROLL_SMOKE", raising=False)
    path = Path(__file__).resolve().parents[1] / "sweeps" / "paper_exp_ab.yaml"
    grid = sweep.load_grid(path)
    assert grid.axes == {"MODEL": ["resnet18", "vgg19"], "LOSS": ["ce", "sd"], "DATASET": ["cifar10", "cifar100"]}
    assert grid.parameters["LAM"] == 1.0 and grid.parameters["PRESET"] == "paper"
    points = grid.points()
    assert len({(p["MODEL"], p["LOSS"], p["DATASET"]) for p in points}) == 8
    assert len(points) == 8 * len(grid.seeds["SEED"]) == 24
    assert "= 8 configurations" in path.read_text() and "= 24 runs" in path.read_text()
