"""The experiment protocols: Exp B's checkpointed error, the regime map, intervals over seeds."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from unroll_utils import data, models, protocols
from unroll_utils.propagated import PropagatedConfig
from unroll_utils.trajectory import LockStepConfig, run_lockstep


def net():
    return models.build_model("small_cnn", in_channels=1, width=4, seed=0)


def test_checkpointed_errors_hand_computed():
    # c = 3, η = 0.1: E_1 = η²·2·D_1·mean(σ at t=2,3), E_2 = E_1 + η²·2·D_2·(σ at t=6: the latest)
    table = pd.DataFrame({"t": [1, 2, 3, 4, 5, 6, 7],
                          "eig_hvps": [5, 5, 5, 0, 5, 0, 0],
                          "sigma": [9.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0]})
    out = protocols.checkpointed_errors(table, [1.5, 2.0], lr=0.1, c=3)
    e1 = 0.01 * 2 * 1.5 * 3.0
    e2 = e1 + 0.01 * 2 * 2.0 * 6.0  # window t in [5, 6]: only t=5 measured, σ = 6
    assert out[0] == 0.0 and out[3] == pytest.approx(e1) and out[6] == pytest.approx(e2)
    assert np.isnan(out[[1, 2, 4, 5]]).all()


def test_checkpointed_run_matches_the_engine_and_resumes(digits, tmp_path):
    forget = data.select_forget_set(300, "batch", batch_size=32, batch_index=2)
    cfg = LockStepConfig(lr=0.05, batch_size=32, epochs=2, undo_at="checkpoint", checkpoint_freq=3,
                         sigma_every=2, sigma_points=64, momentum=0.9, weight_decay=5e-4)
    run = protocols.CheckpointedRun(net(), digits.train_x, digits.train_y, forget, cfg, tmp_path / "b.pt")
    res = run.run(progress=False)
    plain = run_lockstep(net(), digits.train_x, digits.train_y, forget,
                         LockStepConfig(**{**cfg.__dict__, "eval_every": 1}), progress=False)
    pd.testing.assert_frame_equal(res.table.drop(columns="checkpointed_error"), plain.table)
    assert len(run.segment_distances) == 20 // 3  # 2 epochs of ceil(300 / 32) = 10 steps
    rows = res.table[res.table.t % 3 == 1]
    assert np.isfinite(rows.checkpointed_error).all() and rows.checkpointed_error.iloc[0] == 0
    assert (np.diff(rows.checkpointed_error) > 0).all()
    assert res.table[res.table.t % 3 != 1].checkpointed_error.isna().all()
    # resume: a fresh object on the same files reproduces the finished table
    again = protocols.CheckpointedRun(net(), digits.train_x, digits.train_y, forget, cfg, tmp_path / "b.pt")
    pd.testing.assert_frame_equal(again.run(progress=False).table, res.table)
    with pytest.raises(ValueError, match="undo_at"):
        protocols.CheckpointedRun(net(), digits.train_x, digits.train_y, forget,
                                  LockStepConfig(), tmp_path / "c.pt")


def test_regime_map_ratio_is_ve_over_distance(digits):
    forget = data.select_forget_set(300, "batch", batch_size=32)
    table, lam_max = protocols.regime_map(net(), digits.train_x, digits.train_y, forget,
                                          LockStepConfig(batch_size=32), [0.01, 0.1], steps=4,
                                          sigma_points=64, progress=False)
    assert lam_max > 0 and sorted(table.lr.unique()) == [0.01, 0.1]
    assert table.groupby("lr").t.apply(list).tolist() == [[1, 2, 3, 4]] * 2
    np.testing.assert_allclose(table.ratio, table.ve / table.dist_retrained)
    np.testing.assert_allclose(table.eta_lambda, table.lr * lam_max)
    assert (table[table.t == 1].ratio < 1e-3).all()  # exact to first order after the x* step
    cross = protocols.first_crossing(pd.DataFrame({"lr": [1, 1, 1, 2, 2], "eta_lambda": [5] * 5,
                                                   "t": [1, 2, 3, 1, 2], "ratio": [0.1, 1.5, 2, 0.2, 0.3]}))
    assert cross.first_t_above.iloc[0] == 2 and math.isnan(cross.first_t_above.iloc[1])


def test_regime_map_with_the_propagated_variant(digits):
    forget = data.select_forget_set(300, "batch", batch_size=32)
    args = (digits.train_x, digits.train_y, forget, LockStepConfig(batch_size=32), [0.01, 0.1])
    plain, lam_plain = protocols.regime_map(net(), *args, steps=4, sigma_points=64, progress=False)
    assert "ratio_propagated" not in plain.columns
    prop = PropagatedConfig(krylov=3, points=32, every=2)
    table, lam_max = protocols.regime_map(net(), *args, steps=4, sigma_points=64, propagated=prop,
                                          progress=False)
    assert lam_max == lam_plain  # SGU's map is unchanged: the variant never feeds back into training
    pd.testing.assert_frame_equal(table[plain.columns], plain)
    due = table.t.isin([1, 2, 4])  # t = 1, multiples of every = 2, the last step
    assert table.ratio_propagated[due].notna().all() and table.ratio_propagated[~due].isna().all()
    np.testing.assert_allclose(table.ratio_propagated[due], (table.ve_propagated / table.dist_retrained)[due])
    first = table[table.t == 1]  # one visit, no step after it: the propagated correction is SGU's
    np.testing.assert_allclose(first.ratio_propagated, first.ratio, rtol=1e-4, atol=1e-9)
    assert (table[table.t == 1].propagated_hvps == 0).all() and (table[table.t == 2].propagated_hvps == 3).all()
    # the same numbers as the lock-step option run directly at that learning rate
    direct = run_lockstep(net(), digits.train_x, digits.train_y, forget,
                          LockStepConfig(batch_size=32, lr=0.1, sigma_every=0, eval_every=1, accuracy_every=0,
                                         propagated=prop), stop_after=4, progress=False).table
    np.testing.assert_array_equal(table[table.lr == 0.1].ve_propagated.to_numpy(), direct.ve_propagated.to_numpy())
    # first crossing of the propagated column skips the steps where it was not computed
    cross = protocols.first_crossing(pd.DataFrame({"lr": [1] * 4, "eta_lambda": [5] * 4, "t": [1, 2, 3, 4],
                                                   "ratio": [0.1, 2, 2, 2],
                                                   "ratio_propagated": [0.1, math.nan, 1.5, math.nan]}),
                                     column="ratio_propagated")
    assert cross.first_t_above.iloc[0] == 3 and cross.ratio_last.iloc[0] == 1.5 and cross.t_last.iloc[0] == 3
    never = protocols.first_crossing(pd.DataFrame({"lr": [1, 1], "eta_lambda": [5, 5], "t": [1, 2],
                                                   "ratio": [math.nan, math.nan]}))
    assert math.isnan(never.ratio_last.iloc[0]) and never.t_last.iloc[0] == -1
    with pytest.raises(ValueError, match="propagated"):
        protocols.regime_map(net(), *args, steps=2, sigma_points=64, propagated={"krylov": 3}, progress=False)


def test_seed_intervals_and_presets():
    runs = pd.DataFrame({"opt": ["a", "a", "a", "b"], "r": [0.8, 0.9, 1.0, 0.5]})
    out = protocols.seed_intervals(runs, ["opt"], ["r"])
    a = out[out.opt == "a"].iloc[0]
    assert a.n_seeds == 3 and a.r == pytest.approx(0.9) and 0.8 <= a.r_low < 0.9 < a.r_high <= 1.0
    assert out[out.opt == "b"].iloc[0][["r", "r_low", "r_high"]].tolist() == [0.5, 0.5, 0.5]
    assert protocols.preset("sd_loss_sweep", "paper")["lams"][-1] == 250.0
    with pytest.raises(ValueError, match="PRESET"):
        protocols.preset("sd_loss_sweep", "huge")


def test_estimate_seconds_is_positive_and_leaves_the_model(digits):
    m = net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    est = protocols.estimate_seconds(m, digits.train_x, digits.train_y, batch_size=32,
                                     train_steps=10, lockstep_steps=5, hvps=4, hvp_points=32)
    assert est["seconds_per_step"] > 0 and est["seconds_per_hvp"] > 0
    assert est["total_seconds"] == pytest.approx(est["seconds_per_step"] * 20 + est["seconds_per_hvp"] * 4)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
