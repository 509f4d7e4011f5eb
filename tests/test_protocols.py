"""The experiment protocols: the regime map, presets, and where intervals and citations come from
(Exp A/B: test_exp_ab.py)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from unroll_utils import baselines, data, models, protocols
from unroll_utils.propagated import PropagatedConfig
from unroll_utils.trajectory import LockStepConfig, run_lockstep


def net():
    return models.build_model("small_cnn", in_channels=1, width=4, seed=0)


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


def test_presets():
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


# ---------------------------------------------------------------- the reference's schedules and orders
def test_epoch_positions_and_scheduled_steps_hand_computed():
    # Correlation_unlearning.py: `main_idx % eval_every == 0` restarts every epoch
    pos = protocols.epoch_positions(450, 200)
    assert pos == [0, 200, 400]
    assert protocols.scheduled_steps(450, 2, pos) == [1, 201, 401, 451, 651, 851]
    # master_unlearning.py: eval_every 400 with 391 batches -> once per epoch (here shifted past x*)
    assert protocols.epoch_positions(391, 400) == [0]
    assert protocols.scheduled_steps(391, 3, protocols.epoch_positions(391, 400, 1)) == [2, 393, 784]
    # no_bert_training_unlearning.py: i == len(loader) - 3 only
    assert protocols.epoch_positions(40, 40, 37) == [37]
    with pytest.raises(ValueError, match="offset"):
        protocols.epoch_positions(10, 3, 10)
    with pytest.raises(ValueError, match="eval_every"):
        protocols.epoch_positions(10, 0)


def test_forget_first_shuffle_reshuffles_every_epoch_with_x_star_first():
    n, b = 50, 8
    forget = torch.arange(8)
    from unroll_utils.training import batch_order, sub_seed
    orders = [torch.cat(batch_order(n, forget, b, "forget_first_shuffle", ep, 7)) for ep in range(3)]
    for ep, perm in enumerate(orders):
        assert perm[:8].tolist() == list(range(8))  # x* first in every epoch
        rest = torch.arange(8, n)
        g = torch.Generator().manual_seed(sub_seed(7, 0, ep))
        assert perm[8:].tolist() == rest[torch.randperm(42, generator=g)].tolist()  # the seeded draw
        assert sorted(perm.tolist()) == list(range(n))
    assert orders[0][8:].tolist() != orders[1][8:].tolist() != orders[2][8:].tolist()
    again = torch.cat(batch_order(n, forget, b, "forget_first_shuffle", 1, 7))
    assert again.tolist() == orders[1].tolist()  # reproducible from the seed


def test_run_scheduled_same_batches_for_m_and_m_prime_and_positions(digits):
    """Per-epoch reshuffles with x* first: M′ equals plain SGD on the same batches minus x*; the
    rows sit at the in-epoch positions; σ on the current (full, random) batch."""
    from unroll_utils.training import batch_order, make_optimizer, sgd_step
    from unroll_utils.losses import make_loss
    x, y = digits.train_x[:120], digits.train_y[:120]
    forget = data.select_forget_set(120, "batch", batch_size=16)
    cfg = LockStepConfig(lr=0.05, batch_size=16, epochs=2, order="forget_first_shuffle",
                         sigma_batch="current", sigma_tol=1e-2, seed=3)
    per_epoch = 8
    steps = protocols.scheduled_steps(per_epoch, 2, protocols.epoch_positions(per_epoch, 3, 1))
    assert steps == [2, 5, 8, 10, 13, 16]
    seen = []

    def spy(run, row):
        epoch, i = divmod(run.t - 1, run.per_epoch)
        idx = run._plan(epoch)[1][i]
        seen.append(len(idx))
        return {"batch_size_seen": len(idx)}

    res = protocols.run_scheduled(net(), x, y, forget, cfg, steps, extra_steps=[1], on_measure=spy,
                                  progress=False)
    tab = res.table
    assert tab.t.tolist() == [1, 2, 5, 8, 10, 13, 16]
    assert tab.in_epoch.tolist() == [0, 1, 4, 7, 1, 4, 7]
    assert tab.scheduled.tolist() == [False, True, True, True, True, True, True]
    assert (tab.eig_hvps > 0).all()
    assert tab.batch_size_seen.tolist()[1:3] == [16, 16]  # σ on full batches of random points
    # M′ by hand: plain SGD on the same per-epoch batches without x*
    ref, ref_m = net(), net()
    opt, opt_m = make_optimizer(ref, 0.05), make_optimizer(ref_m, 0.05)
    loss = make_loss("ce")
    for ep in range(2):
        for idx in batch_order(120, forget, 16, "forget_first_shuffle", ep, 3):
            sgd_step(ref_m, opt_m, loss, x[idx], y[idx])
            keep = idx[~torch.isin(idx, forget)]
            if len(keep):
                sgd_step(ref, opt, loss, x[keep], y[keep])
    for mine, theirs in ((ref, res.retrained), (ref_m, res.model)):
        assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(mine.parameters(), theirs.parameters()))


def test_paper_presets_follow_the_reference_order_and_schedule():
    d, c = protocols.preset("from_scratch", "paper"), protocols.preset("sd_loss_sweep", "paper")
    assert d["order"] == "forget_first_shuffle" and d["schedule"] == c["schedule"] == "epoch_positions"
    per_epoch_d = -(-50000 // 128)  # 391 batches: master_unlearning.py measures once per epoch
    assert protocols.epoch_positions(per_epoch_d, d["eval_every"], protocols.FROM_SCRATCH_OFFSET) == [1]
    per_epoch_c = -(-50000 // 32)  # 1,563 batches: Correlation_unlearning.py, eval_every 200
    assert protocols.epoch_positions(per_epoch_c, c["eval_every"]) == [0, 200, 400, 600, 800, 1000, 1200, 1400]
    assert protocols.scheduled_steps(per_epoch_c, c["epochs"], [0, 200])[:4] == [1, 201, 1564, 1764]


def test_one_interval_policy_and_public_citations():
    # intervals over seeds come from statistics.seed_summary only; the module cites what a reader can open
    assert not hasattr(protocols, "seed_intervals") and not hasattr(baselines, "summarize")
    source = Path(protocols.__file__).read_text(encoding="utf-8")
    assert "§" not in source, "protocols.py cites a section number that is not a published paper's"
    for script in ("pretrain.py", "correlation_verification.py", "checkpoint_version.py",
                   "Correlation_unlearning.py", "master_unlearning.py"):
        assert script in source, script
