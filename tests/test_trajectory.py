"""Lock-step trajectory and single gradient unlearning (paper §1.1–§1.3): invariants and exact cases."""

import copy
import math
import re

import pytest
import torch
from torch import nn

from unroll_utils import distances, lockstep, metrics, results
from unroll_utils.losses import make_loss
from unroll_utils.training import augmentation_draws, batch_order, crop_flip, make_optimizer, sgd_step
from unroll_utils.trajectory import LockStepConfig, run_lockstep
from unroll_utils.unlearning import forget_gradient, single_gradient_unlearning

N = 70  # 4 batches of 16 and a last batch of 6


def cfg(**kw):
    base = dict(lr=0.05, batch_size=16, epochs=2, eval_every=2, sigma_every=0)
    base.update(kw)
    return LockStepConfig(**base)


def replay(model, x, y, batches, c: LockStepConfig, augment_epochs=None):
    """Independent re-implementation: plain SGD over the given per-epoch batches."""
    m = copy.deepcopy(model)
    opt = make_optimizer(m, c.lr, c.momentum, c.weight_decay)
    loss_fn = make_loss(c.loss, c.lam)
    for epoch, epoch_batches in enumerate(batches):
        draws = augmentation_draws(x.shape[0], epoch, c.seed) if augment_epochs else None
        for idx in epoch_batches:
            if len(idx) == 0:
                continue
            xb = x[idx] if draws is None else crop_flip(x[idx], draws[0][idx], draws[1][idx])
            sgd_step(m, opt, loss_fn, xb, y[idx])
    return m


def test_two_identical_runs_give_identical_results_and_ve_zero(toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    c = cfg(sigma_every=4, sigma_points=32)
    r1 = run_lockstep(net, x, y, torch.arange(16), c, progress=False)
    r2 = run_lockstep(net, x, y, torch.arange(16), c, progress=False)
    assert metrics.verification_error(r1.model, r2.model) == 0.0
    assert metrics.verification_error(r1.retrained, r2.retrained) == 0.0
    assert r1.table.equals(r2.table)
    assert metrics.verification_error(net, r1.initial) == 0.0  # caller's model untouched


@pytest.mark.parametrize("order,augment", [("forget_first", "none"), ("shuffle", "crop_flip"),
                                           ("index", "none")])
def test_retrained_model_sees_the_same_batches_minus_the_forget_set(order, augment, toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    forget = torch.tensor([3, 17, 40, 69])  # 69 is alone in... the last batch under "index"
    c = cfg(order=order, augment=augment, momentum=0.9, weight_decay=5e-4)
    res = run_lockstep(net, x, y, forget, c, progress=False)
    is_f = torch.zeros(N, dtype=torch.bool)
    is_f[forget] = True
    full = [batch_order(N, forget, 16, order, e, c.seed) for e in range(2)]
    retain = [[b[~is_f[b]] for b in epoch] for epoch in full]
    use_aug = augment == "crop_flip"
    assert distances.weight_distance(res.model, replay(net, x, y, full, c, use_aug)) == 0.0
    assert distances.weight_distance(res.retrained, replay(net, x, y, retain, c, use_aug)) == 0.0
    assert int(res.table["times_seen"].iloc[-1]) == sum(int(is_f[b].any()) for e in full for b in e)


def test_forget_first_puts_x_star_in_batch_zero_and_retrained_skips_it(toy_data):
    x, y = toy_data()
    forget = torch.arange(16, 32)
    batches = batch_order(N, forget, 16, "forget_first", 0, 0)
    assert torch.equal(batches[0], forget)
    assert [len(b) for b in batches] == [16, 16, 16, 16, 6]
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.arange(N))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_single_gradient_unlearning_is_exact_at_t1(dtype, tol, toy_data, tiny_net):
    x, y = toy_data(dtype=dtype)
    net = tiny_net(dtype)
    res = run_lockstep(net, x, y, torch.arange(16), cfg(epochs=1), progress=False)
    row = res.table.iloc[0]
    assert row["t"] == 1 and row["times_seen"] == 1
    assert row["dist_retrained"] > 1e-3  # M moved away from M' = w_0 ...
    assert row["ve"] < tol * row["dist_retrained"] * 100  # ... and the undo brings it back
    assert row["unlearning_error"] != row["unlearning_error"] or row["unlearning_error"] == 0.0


def test_variants_agree_at_t1_where_theory_says_so_and_differ_later(toy_data, tiny_net):
    x, y = toy_data(dtype=torch.float64)
    net = tiny_net(torch.float64)
    tables = {u: run_lockstep(net, x, y, torch.arange(16), cfg(undo_at=u, checkpoint_freq=1000),
                              progress=False).table for u in ("w0", "checkpoint", "current", "final")}
    # a checkpoint never refreshed is w_0
    assert tables["w0"]["ve"].tolist() == pytest.approx(tables["checkpoint"]["ve"].tolist(), rel=1e-9)
    assert tables["w0"]["ve"].iloc[0] < 1e-12
    assert tables["current"]["ve"].iloc[0] > 1e-6  # gradient at w_1, not w_0
    # with and without unlearning: unlearning helps right after x*
    assert (tables["w0"]["ve"] < tables["w0"]["dist_retrained"]).iloc[:2].all()


def test_forget_gradient_is_plain_autograd_and_mutates_nothing(toy_data, tiny_net):
    x, y = toy_data(dtype=torch.float64)
    net = tiny_net(torch.float64)
    net.eval()
    before = copy.deepcopy(net.state_dict())
    loss_fn = make_loss("sd", 1.0)
    g = forget_gradient(net, loss_fn, x[:16], y[:16], bn_mode="train")
    ref_net = copy.deepcopy(net).train()
    ref = torch.autograd.grad(loss_fn(ref_net(x[:16]), y[:16]), list(ref_net.parameters()))
    assert all(torch.allclose(a, b, atol=1e-14) for a, b in zip(g, ref))
    assert not net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # a partial mask weights the forget rows by 1/|B| inside the full batch
    mask = torch.zeros(16, dtype=torch.bool)
    mask[:4] = True
    gm = forget_gradient(net, make_loss("ce"), x[:16], y[:16], mask, bn_mode="eval")
    ref_eval = copy.deepcopy(net).eval()  # ref_net's train-mode forward moved its running stats
    per = torch.nn.functional.cross_entropy(ref_eval(x[:16]), y[:16], reduction="none")
    refm = torch.autograd.grad(per[:4].sum() / 16, list(ref_eval.parameters()))
    assert all(torch.allclose(a, b, atol=1e-14) for a, b in zip(gm, refm))
    w2 = single_gradient_unlearning(list(net.parameters()), g, lr=0.1, times_seen=3)
    assert all(torch.allclose(a, p + 0.3 * d) for a, p, d in zip(w2, net.parameters(), g))
    with pytest.raises(ValueError, match="forget_mask"):
        forget_gradient(net, loss_fn, x[:16], y[:16], torch.zeros(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="lr"):
        single_gradient_unlearning(list(net.parameters()), g, lr=0.0)


def test_last_batch_of_size_one_and_forget_point_alone(toy_data, tiny_net):
    x, y = toy_data(n=33)
    net = tiny_net()
    # batches of 16: [0..15], [16..31], [32]; forgetting 32 leaves M' nothing to do at step 3
    res = run_lockstep(net, x, y, torch.tensor([32]), cfg(order="index", eval_every=1), progress=False)
    tab = res.table
    assert tab["t"].tolist() == [1, 2, 3, 4, 5, 6]
    assert tab["times_seen"].tolist() == [0, 0, 1, 1, 1, 2]
    assert tab["ve"].iloc[1] == 0.0 and tab["dist_retrained"].iloc[1] == 0.0  # before x* is seen
    # x* was seen at w_2, the undo uses w_0: VE = η‖∇L(w_0; x*) − ∇L(w_2; x*)‖, second order
    assert 0.0 < tab["ve"].iloc[2] < 0.5 * tab["dist_retrained"].iloc[2]


def test_sigma_and_unlearning_error_columns(toy_data, tiny_net):
    x, y = toy_data()
    res = run_lockstep(tiny_net(), x, y, torch.arange(16), cfg(sigma_every=2, sigma_points=32,
                                                                sigma_batch="fixed"), progress=False)
    tab = res.table
    measured = tab[tab["eig_hvps"] > 0]
    assert len(measured) == len(tab)  # eval_every == sigma_every
    assert (measured["sigma"] == measured["eigenvalue"].clip(lower=0) ** 0.5).all()
    for _, row in tab.iterrows():
        assert row["unlearning_error"] == pytest.approx(
            0.5 * 0.05 ** 2 * (row["t"] - 1) * row["delta_w"] * row["sigma"], rel=1e-12)
    sig = measured["sigma"].tolist()
    assert tab["sigma_mean"].tolist() == pytest.approx(
        [sum(sig[: i + 1]) / (i + 1) for i in range(len(sig))])


def test_eigenvalue_stop_rule_gives_the_same_sigma_with_fewer_hvps(toy_data, tiny_net):
    x, y = toy_data(dtype=torch.float64)
    net = tiny_net(torch.float64)
    c = dict(sigma_every=2, sigma_points=32, sigma_tol=1e-4)
    res = run_lockstep(net, x, y, torch.arange(16), cfg(**c), progress=False).table
    eig = run_lockstep(net, x, y, torch.arange(16), cfg(sigma_stop="eigenvalue", **c),
                       progress=False).table
    assert eig["ve"].equals(res["ve"])  # σ never feeds back into training
    assert eig["eigenvalue"].tolist() == pytest.approx(res["eigenvalue"].tolist(), rel=1e-4)
    assert (eig["eig_error_bound"] <= 1e-4 * eig["eigenvalue"].abs()).all()
    assert eig["eig_hvps"].sum() < res["eig_hvps"].sum()
    with pytest.raises(ValueError, match="sigma_stop"):
        LockStepConfig(sigma_method="power", sigma_stop="eigenvalue").validate()


def test_accuracy_columns_and_unlearned_model(toy_data, tiny_net):
    x, y = toy_data()
    res = run_lockstep(tiny_net(), x, y, torch.arange(16), cfg(epochs=1), test_x=x[:20],
                       test_y=y[:20], progress=False)
    last = res.table.iloc[-1]
    for col in ("test_acc", "test_acc_retrained", "test_acc_unlearned", "forget_acc"):
        assert 0.0 <= last[col] <= 1.0
    m2 = res.unlearned_model()
    assert distances.weight_distance(m2, res.retrained) == pytest.approx(last["ve"], rel=1e-6)
    assert metrics.accuracy(m2, x[:20], y[:20]) == last["test_acc_unlearned"]


def test_checkpoint_resume_is_bit_identical(tmp_path, toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    c = cfg(order="shuffle", augment="crop_flip", momentum=0.9, sigma_every=2, sigma_points=32)
    full = run_lockstep(net, x, y, torch.tensor([1, 20, 50]), c, progress=False)
    ck = tmp_path / "run.pt"
    part = run_lockstep(net, x, y, torch.tensor([1, 20, 50]), c, checkpoint_path=ck,
                        checkpoint_every=3, stop_after=4, progress=False)
    assert not part.complete and part.steps_done == 4 and ck.exists()
    resumed = run_lockstep(net, x, y, torch.tensor([1, 20, 50]), c, checkpoint_path=ck,
                           checkpoint_every=3, progress=False)
    assert resumed.complete and resumed.steps_done == full.steps_done == 10
    assert resumed.table.equals(full.table)
    assert distances.weight_distance(resumed.model, full.model) == 0.0
    assert distances.weight_distance(resumed.retrained, full.retrained) == 0.0
    with pytest.raises(ValueError, match="another configuration"):
        run_lockstep(net, x, y, torch.tensor([1, 20, 50]), cfg(lr=0.01), checkpoint_path=ck,
                     progress=False)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[-1].weight.add_(1.0)
    with pytest.raises(ValueError, match="w_0"):
        run_lockstep(other, x, y, torch.tensor([1, 20, 50]), c, checkpoint_path=ck, progress=False)


def test_checkpoint_of_another_format_or_config_fields_is_refused(tmp_path, toy_data, tiny_net, monkeypatch):
    """A checkpoint written by another version of the package (checkpoint format 1 had no ``format``
    entry and left later fields out of its fingerprint) is refused naming the format, not resumed."""
    x, y = toy_data()
    net, forget, c = tiny_net(), torch.tensor([1, 20, 50]), cfg()
    ck = tmp_path / "run.pt"
    run_lockstep(net, x, y, forget, c, checkpoint_path=ck, stop_after=4, progress=False)
    state = results.load_checkpoint(ck)
    assert state["format"] == lockstep.CHECKPOINT_FORMAT == 2
    old = {k: v for k, v in state.items() if k not in ("format", "config_fields")}
    results.save_checkpoint(old, ck)
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(ck))}: the state is in checkpoint format 1, "
                                         r"written by an older version .* reads format 2; delete it to recompute"):
        run_lockstep(net, x, y, forget, c, checkpoint_path=ck, progress=False)
    # same format, but the config had another field: named
    results.save_checkpoint({**state, "config_fields": [f for f in state["config_fields"] if f != "sigma_track"]
                             + ["sigma_every_old"]}, ck)
    with pytest.raises(ValueError, match=r"lacked \['sigma_track'\] and had \['sigma_every_old'\]; delete it"):
        run_lockstep(net, x, y, forget, c, checkpoint_path=ck, progress=False)
    # the format number is part of the fingerprint, and every config field is, at any value
    base = LockStep(net, x, y, forget, c).fingerprint
    assert LockStep(net, x, y, forget, cfg(sigma_track=False, sigma_every=0)).fingerprint == base
    monkeypatch.setattr(lockstep, "CHECKPOINT_FORMAT", 3)
    assert LockStep(net, x, y, forget, c).fingerprint != base


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("batch_size", 0), ("epochs", 0),
                                         ("momentum", 1.0), ("loss", "mse"), ("lam", 1.0),
                                         ("order", "random"), ("undo_at", "w1"),
                                         ("sigma_tol", 2.0), ("eval_every", 0),
                                         ("sigma_convention", "sv"), ("augment", "mixup"),
                                         ("undo_form", "newton"), ("sigma_stop", "change")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LockStepConfig(**{field: value}).validate()


def test_bad_forget_sets_raise(toy_data, tiny_net):
    x, y = toy_data()
    for bad in (torch.tensor([], dtype=torch.long), torch.arange(N), torch.tensor([3, 1]),
                torch.tensor([N])):
        with pytest.raises(ValueError, match="forget"):
            run_lockstep(tiny_net(), x, y, bad, cfg(), progress=False)


def test_batch_difference_undo_is_exact_at_t1_for_a_point_sharing_its_batch(toy_data, tiny_net):
    x, y = toy_data(dtype=torch.float64)
    net = tiny_net(torch.float64)
    one = torch.tensor([5])  # shares batch 0 with 15 retained points under "index" order
    c = dict(order="index", epochs=1)
    paper = run_lockstep(net, x, y, one, cfg(**c), progress=False).table.iloc[0]
    exact = run_lockstep(net, x, y, one, cfg(undo_form="batch_difference", **c), progress=False).table.iloc[0]
    assert exact["ve"] < 1e-12 * exact["dist_retrained"] * 1e3
    assert paper["ve"] > 1e-3 * paper["dist_retrained"]  # M' averages over 15 points, not 16
    # whole batches: both forms are the same update
    whole = [run_lockstep(net, x, y, torch.arange(16), cfg(undo_form=f, epochs=1),
                          progress=False).table["ve"] for f in ("paper", "batch_difference")]
    assert whole[0].tolist() == pytest.approx(whole[1].tolist(), rel=1e-9, abs=1e-15)


# --- the LockStep class: explicit state, step-by-step driving, in-memory state round trip ---

from unroll_utils.lockstep import LockStep  # noqa: E402
from unroll_utils.sigma import SigmaTracker  # noqa: E402


def _tables_and_weights_equal(a, b):
    assert a.table.equals(b.table)
    for ma, mb in ((a.model, b.model), (a.retrained, b.retrained)):
        assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))
    assert all(torch.equal(u, v) for u, v in zip(a.undo, b.undo))


@pytest.mark.parametrize("undo_at", ["w0", "current", "checkpoint"])
def test_lockstep_class_driven_by_hand_matches_run_lockstep(undo_at, toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    c = cfg(undo_at=undo_at, checkpoint_freq=3, sigma_every=3, sigma_points=32, eval_every=1)
    expected = run_lockstep(net, x, y, torch.arange(16), c, progress=False)
    run = LockStep(net, x, y, torch.arange(16), c)
    losses = []
    while not run.done:
        losses.append(run.step())
        if run.measurement_due():
            run.measure()
    _tables_and_weights_equal(run.result(), expected)
    assert losses[0] == expected.table["loss"].iloc[0] and run.t == expected.total_steps == 10
    with pytest.raises(RuntimeError, match="done"):
        run.step()


def test_lockstep_state_dict_round_trip_is_bit_identical(toy_data, tiny_net):
    x, y = toy_data()
    net = tiny_net()
    c = cfg(undo_at="final", sigma_every=2, sigma_points=32, augment="crop_flip", momentum=0.9)
    expected = run_lockstep(net, x, y, torch.arange(16), c, progress=False)
    first = LockStep(net, x, y, torch.arange(16), c)
    first.run(progress=False, stop_after=6)
    state = copy.deepcopy(first.state_dict())
    second = LockStep(net, x, y, torch.arange(16), c)
    second.load_state_dict(state)
    assert second.t == 6
    _tables_and_weights_equal(second.run(progress=False), expected)
    other = LockStep(net, x, y, torch.arange(16), cfg(lr=0.01))
    with pytest.raises(ValueError, match="another configuration"):
        other.load_state_dict(state)


def test_lockstep_measure_needs_a_step(toy_data, tiny_net):
    x, y = toy_data()
    with pytest.raises(RuntimeError, match="step"):
        LockStep(tiny_net(), x, y, torch.arange(16), cfg()).measure()


def test_sigma_tracker_schedule_and_errors():
    c = cfg(sigma_every=4, lr=0.1)
    tracker = SigmaTracker(c, make_loss("ce"), None, None)
    assert [t for t in range(1, 11) if tracker.due(t, last=(t == 10))] == [1, 4, 8, 10]
    assert math.isnan(tracker.errors(3, 2.0)["unlearning_error"])
    tracker.sigmas = [2.0, 4.0]
    e = tracker.errors(5, 3.0)
    # e = (η²/2)·(t − 1)·‖w_t − w_0‖·σ with the latest σ, rolling e with the mean σ (paper §1.4)
    assert e["unlearning_error"] == pytest.approx(0.01 / 2 * 4 * 3.0 * 4.0)
    assert e["rolling_unlearning_error"] == pytest.approx(0.01 / 2 * 4 * 3.0 * 3.0)
    assert not SigmaTracker(cfg(sigma_every=0), make_loss("ce"), None, None).due(1, last=True)


# --- a batch of one point and BatchNorm (refused up front, never a crash mid-run) ---

from unroll_utils.models import trains_on_one_point  # noqa: E402
from unroll_utils.training import find_lone_point_batch, train_sgd  # noqa: E402


def bn1d_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_one_point_probe(toy_data, tiny_net):
    x, _ = toy_data(4)
    assert not trains_on_one_point(bn1d_net(), x[:1])
    assert trains_on_one_point(tiny_net(), x[:1])  # BatchNorm2d on 6x6 maps trains on one point
    net = bn1d_net()
    before = copy.deepcopy(net.state_dict())
    trains_on_one_point(net, x[:1])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # buffers untouched


def test_lone_last_batch_with_batchnorm1d_is_refused_naming_batch_size(toy_data):
    x, y = toy_data(9)
    with pytest.raises(ValueError, match=r"batch_size=8 with 9 training points leaves a last batch"):
        run_lockstep(bn1d_net(), x, y, torch.arange(8), cfg(batch_size=8, epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"batch_size=8 with 9 training points"):
        train_sgd(bn1d_net(), x, y, lr=0.1, epochs=1, batch_size=8, progress=False)


def test_lone_retained_point_for_m_prime_is_refused(toy_data):
    x, y = toy_data(16)
    # batch 0 = x* (8 points), batch 1 = 7 forget points + 1 retained point: M′ would see one point
    with pytest.raises(ValueError, match=r"M′ would train on one retained point in batch 1 of epoch 0"):
        run_lockstep(bn1d_net(), x, y, torch.arange(15), cfg(batch_size=8, epochs=1), progress=False)


def test_lone_point_batches_still_run_where_batchnorm_allows_them(toy_data, tiny_net):
    x, y = toy_data(9)
    r = run_lockstep(tiny_net(), x, y, torch.arange(8), cfg(batch_size=8, epochs=1), progress=False)
    assert r.complete and r.steps_done == 2
    assert find_lone_point_batch(9, torch.arange(8), 8, "forget_first", 1, 0) is not None
    assert find_lone_point_batch(10, torch.arange(8), 8, "forget_first", 1, 0) is None


def test_sigma_with_weight_decay_adds_wd_to_the_top_eigenvalue(toy_data, tiny_net):
    """sigma_weight_decay=True: λ_max of L + ½·wd·‖w‖² = λ_max(H) + wd at every σ measurement."""
    x, y = toy_data()
    net = tiny_net(torch.float64)
    x = x.double()
    base = dict(weight_decay=0.05, sigma_every=3, sigma_points=32, sigma_tol=1e-10,
                sigma_max_iter=300, epochs=1)
    plain = run_lockstep(net, x, y, torch.arange(16), cfg(**base), progress=False).table
    with_wd = run_lockstep(net, x, y, torch.arange(16), cfg(**base, sigma_weight_decay=True),
                           progress=False).table
    measured = plain["eigenvalue"].notna()
    assert measured.sum() >= 2
    assert torch.allclose(torch.tensor(with_wd["eigenvalue"][measured].to_numpy()),
                          torch.tensor(plain["eigenvalue"][measured].to_numpy()) + 0.05, rtol=0, atol=1e-7)
    assert plain["ve"].equals(with_wd["ve"])  # σ changes, the trajectory does not
    with pytest.raises(ValueError, match="sigma_weight_decay"):
        cfg(sigma_weight_decay="yes").validate()


def test_sigma_micro_batch_gives_the_one_pass_sigma_in_eval_mode(toy_data, tiny_net):
    """sigma_micro_batch: the fixed Hessian batch (32 points) in micro-batches of 10 (10, 10, 10, 2);
    BatchNorm in eval mode, so every σ is the one-pass σ (float64: to the solver's tolerance)."""
    x, y = toy_data()
    net = tiny_net(torch.float64)
    x = x.double()
    base = dict(sigma_every=3, sigma_points=32, sigma_tol=1e-10, sigma_max_iter=300, epochs=1)
    one = run_lockstep(net, x, y, torch.arange(16), cfg(**base), progress=False).table
    split = run_lockstep(net, x, y, torch.arange(16), cfg(**base, sigma_micro_batch=10), progress=False).table
    measured = one["eigenvalue"].notna()
    assert measured.sum() >= 2
    assert split["eigenvalue"][measured].to_numpy() == pytest.approx(one["eigenvalue"][measured].to_numpy(),
                                                                     rel=1e-9)
    assert one["ve"].equals(split["ve"])
    track = dict(base, sigma_every=1, sigma_track=True, sigma_stop="eigenvalue", sigma_tol=1e-2)
    one_t = run_lockstep(net, x, y, torch.arange(16), cfg(**track), progress=False).table
    split_t = run_lockstep(net, x, y, torch.arange(16), cfg(**track, sigma_micro_batch=7), progress=False).table
    assert split_t["eigenvalue"].to_numpy() == pytest.approx(one_t["eigenvalue"].to_numpy(), rel=1e-9)
    # the micro-batch size is part of the run's checkpoint fingerprint (checkpoint format 2: every field)
    fingerprint = lambda c: LockStep(net, x, y, torch.arange(16), c).fingerprint
    assert fingerprint(cfg(**base)) != fingerprint(cfg(**base, sigma_micro_batch=10))
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(ValueError, match=r"sigma_micro_batch must be None \(one forward pass\) or an integer"):
            cfg(sigma_micro_batch=bad).validate()
