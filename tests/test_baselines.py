"""Forget-benchmark methods: they change the weights, leave their inputs alone, and match closed forms."""

import copy

import pytest
import torch
import torch.nn.functional as F

from unroll_utils import baselines as B
from unroll_utils import unlearning_methods as UM
from unroll_utils import data, models, training
from unroll_utils.distances import weight_distance


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def task(digits):
    cfg = B.TrainingConfig(lr=0.1, epochs=2, batch_size=32, seed=0)
    initial = models.build_model("small_cnn", in_channels=1, width=4, seed=0)
    original = copy.deepcopy(initial)
    forget = data.select_forget_set(300, "random", k=15, seed=0)
    record = UM.train_recorded(original, digits.train_x, digits.train_y, cfg, watch=forget)
    return UM.UnlearningTask(original, initial, digits.train_x, digits.train_y, forget, cfg, record)


@pytest.mark.parametrize("name", list(B.METHODS))
def test_method_changes_weights_and_leaves_inputs_untouched(task, name):
    reference = UM.naive_retraining(task)
    before = {"original": _state(task.original), "initial": _state(task.initial), "reference": _state(reference)}
    fn, hp, default = B.METHODS[name]
    out = fn(task, **{hp: default})
    assert out is not task.original and out is not task.initial
    assert weight_distance(out, task.original) > 0
    after = {"original": _state(task.original), "initial": _state(task.initial), "reference": _state(reference)}
    assert all(_same(before[k], after[k]) for k in before), "a method modified its inputs"


def test_naive_retraining_deterministic(task):
    a, b = UM.naive_retraining(task), UM.naive_retraining(task)
    assert weight_distance(a, b) == 0.0


def test_amnesiac_removes_every_update_when_every_batch_held_forget_points(digits):
    # one full batch per epoch: every step saw the forget set, so subtracting all updates gives w_0
    cfg = B.TrainingConfig(lr=0.1, epochs=3, batch_size=300, seed=0)
    initial = models.build_model("linear", in_features=64, seed=1)
    original = copy.deepcopy(initial)
    forget = torch.tensor([3, 7])
    rec = UM.train_recorded(original, digits.train_x, digits.train_y, cfg, watch=forget)
    assert rec.steps == 3 and len(rec.updates) == 3
    t = UM.UnlearningTask(original, initial, digits.train_x, digits.train_y, forget, cfg, rec)
    assert weight_distance(UM.amnesiac(t), initial) < 1e-6
    assert weight_distance(UM.amnesiac(t), original) > 0.01
    with pytest.raises(ValueError, match="record"):
        UM.amnesiac(UM.UnlearningTask(original, initial, digits.train_x, digits.train_y, forget, cfg))


def test_sgu_closed_form_linear_model(digits):
    # w'' = w_T + eta * E * (m / b) * grad of the mean forget loss at w_0 (or at w_T), by hand
    cfg = B.TrainingConfig(lr=0.05, epochs=2, batch_size=50, seed=0)
    initial = models.build_model("linear", in_features=64, seed=2)
    original = copy.deepcopy(initial)
    UM.train_recorded(original, digits.train_x, digits.train_y, cfg)
    forget = torch.arange(0, 120, 3)  # 40 points (one gradient chunk of at most b = 50)
    t = UM.UnlearningTask(original, initial, digits.train_x, digits.train_y, forget, cfg)
    xf, yf = digits.train_x[forget].reshape(40, -1), digits.train_y[forget]
    for at, fn in ((initial, UM.sgu_at_w0), (original, UM.sgu_at_final)):
        W = at.linear.weight.detach().clone().requires_grad_(True)
        b = at.linear.bias.detach().clone().requires_grad_(True)
        gW, gb = torch.autograd.grad(F.cross_entropy(xf @ W.T + b, yf), (W, b))
        k = cfg.lr * cfg.epochs * 40 / 50
        out = fn(t)
        assert torch.allclose(out.linear.weight, original.linear.weight + k * gW, atol=1e-7)
        assert torch.allclose(out.linear.bias, original.linear.bias + k * gb, atol=1e-7)
    # scale multiplies the correction
    d1 = weight_distance(UM.sgu_at_w0(t, scale=1.0), original)
    d2 = weight_distance(UM.sgu_at_w0(t, scale=2.0), original)
    assert d2 == pytest.approx(2 * d1, rel=1e-5)


def test_forget_set_validation(digits, task):
    x, y = digits.train_x, digits.train_y
    for bad, msg in (([], "empty"), ([1, 1], "duplicates"), ([300], r"\[0, 299\]"), ([0.5], "integers")):
        with pytest.raises(ValueError, match=msg):
            UM.UnlearningTask(task.original, task.initial, x, y, bad, task.config)
    with pytest.raises(ValueError, match="retain set would be empty"):
        UM.UnlearningTask(task.original, task.initial, x, y, list(range(300)), task.config)
    with pytest.raises(ValueError, match="cls"):
        B.make_forget_sets(y, ["class"], seed=0, forget_class=10)
    with pytest.raises(ValueError, match="forget kind"):
        B.make_forget_sets(y, ["random0"], seed=0)
    sets = B.make_forget_sets(y, ["random1", "random10", "class"], seed=0, forget_class=3)
    assert len(sets["random1"]) == 3 and len(sets["random10"]) == 30
    assert torch.equal(sets["class"], torch.nonzero(y == 3).flatten())
    with pytest.raises(ValueError, match="lr"):
        B.TrainingConfig(lr=0.0)
    with pytest.raises(ValueError, match="lam"):
        B.TrainingConfig(loss="ce", lam=1.0)
    with pytest.raises(ValueError, match="alpha"):
        UM.neggrad_plus(task, alpha=1.0)
    with pytest.raises(ValueError, match="epochs"):
        UM.fine_tuning(task, epochs=0)
    with pytest.raises(ValueError, match="momentum"):
        UM.random_labels_salun(task, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        UM.gradient_ascent(task, lr=-1e-4)
    with pytest.raises(ValueError, match="no option 'epochs'"):
        B.budget("amnesiac", task.config, options={"epochs": 2})


def test_run_forget_benchmark_table(digits):
    tab = B.run_forget_benchmark(digits, lambda s: models.build_model("linear", in_features=64, seed=s),
                                 kinds=("random5", "class"), methods=("fine_tuning", "sgu_w0", "amnesiac"),
                                 seeds=(0, 1), config=B.TrainingConfig(lr=0.1, epochs=1), forget_class=2,
                                 progress=False)
    assert len(tab) == 2 * 2 * 5  # seeds x kinds x (original, naive_retraining, 3 methods)
    ref = tab[tab.method == "naive_retraining"]
    assert (ref.ve == 0).all() and (ref.time_rel == 1).all()
    for col in ("forget_acc", "retain_acc", "test_acc") + B.MIA_METRICS:
        assert tab[col].between(0, 1).all()
    assert (tab[tab.kind == "class"].n_forget == int((digits.train_y == 2).sum())).all()
    assert (tab[(tab.kind == "class") & (tab.method == "naive_retraining")].forget_acc == 0).all()
    with pytest.raises(ValueError, match="methods"):
        B.run_forget_benchmark(digits, lambda s: None, methods=("magic",))


def test_sgu_propagated_matches_dense_eigh_on_a_tiny_model():
    # H-bar is the exact Hessian (krylov >= P), so Lanczos is exact: compare with a dense
    # w_T + eta * sum_k (|x* ∩ B_k| / |B_k|) * V clamp((1 - eta (lambda + wd))^(T - tau_k)) V^T g(w_0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    initial = torch.nn.Linear(6, 3).double()
    original = copy.deepcopy(initial)
    cfg = B.TrainingConfig(lr=0.3, epochs=2, batch_size=10, weight_decay=0.01, seed=4)
    forget = torch.tensor([2, 11, 17, 30, 38])
    rec = UM.train_recorded(original, x, y, cfg, watch=forget)
    task = UM.UnlearningTask(original, initial, x, y, forget, cfg, rec)
    # the visits, enumerated independently from the seeded batch order (4 steps per epoch)
    none, visits = torch.empty(0, dtype=torch.long), []
    for epoch in range(2):
        for j, idx in enumerate(training.batch_order(40, none, 10, "shuffle", epoch, 4)):
            hits = int(torch.isin(idx, forget).sum())
            if hits:
                visits.append((4 * epoch + j + 1, hits / 10))
    assert rec.steps == 8 and len(visits) >= 3
    steps, weights = UM._forget_visits(task)
    assert list(zip(steps, weights)) == visits and sum(weights) == pytest.approx(2 * 5 / 10)  # E·m/b

    def loss_at(flat):
        return F.cross_entropy(x @ flat[:18].reshape(3, 6).T + flat[18:], y)

    w_t = torch.cat([original.weight.detach().reshape(-1), original.bias.detach()])
    lam, vec = torch.linalg.eigh(torch.autograd.functional.hessian(loss_at, w_t))
    w0 = torch.cat([initial.weight.detach().reshape(-1), initial.bias.detach()]).requires_grad_(True)
    g0 = torch.autograd.grad(F.cross_entropy(x[forget] @ w0[:18].reshape(3, 6).T + w0[18:], y[forget]), w0)[0]
    u = torch.zeros(21, dtype=torch.float64)
    for tau, w in visits:
        f = ((1 - 0.3 * (lam + 0.01)) ** (8 - tau)).clamp(-1, 1)
        u += 0.3 * w * (vec @ (f * (vec.T @ g0)))
    out = UM.sgu_propagated(task, krylov=21)
    got = torch.cat([out.weight.detach().reshape(-1), out.bias.detach()])
    assert torch.allclose(got, w_t + u, rtol=0, atol=1e-10)
    assert float(u.norm()) > 1e-3  # a real correction, not a no-op
    # it is not single gradient unlearning: the later steps' contraction shrank the correction
    assert weight_distance(out, UM.sgu_at_w0(task)) > 1e-3 * float(u.norm())


def test_sgu_propagated_needs_the_record_with_step_indices(digits, task):
    bare = UM.UnlearningTask(task.original, task.initial, digits.train_x, digits.train_y, task.forget, task.config)
    with pytest.raises(ValueError, match="record"):
        UM.sgu_propagated(bare)
    old = UM.TrainingRecord(steps=task.record.steps, batches=task.record.batches, updates=task.record.updates)
    with pytest.raises(ValueError, match="batch_steps"):
        UM.sgu_propagated(UM.UnlearningTask(task.original, task.initial, digits.train_x, digits.train_y,
                                          task.forget, task.config, old))
    with pytest.raises(ValueError, match="krylov"):
        UM.sgu_propagated(task, krylov=0)
    assert task.record.batch_steps == sorted(set(task.record.batch_steps))
    assert 1 <= task.record.batch_steps[0] and task.record.batch_steps[-1] <= task.record.steps


def test_random_forget_kind_that_takes_every_point_says_so_in_the_users_words():
    y = torch.arange(10) % 2
    with pytest.raises(ValueError) as e:
        B.make_forget_sets(y, ["random99"], seed=0)
    msg = str(e.value)
    assert "forget kind 'random99' takes ⌈99% · 10⌉ = 10 of the 10 training points" in msg, msg
    assert "randomK needs K <= 90 (at most 9 points)" in msg and "k must be" not in msg, msg
    assert len(B.make_forget_sets(y, ["random90"], seed=0)["random90"]) == 9  # the largest K that fits
    with pytest.raises(ValueError, match="randomK needs K <= 90"):
        B.make_forget_sets(y, ["random91"], seed=0)  # ⌈9.1⌉ = 10 points
    with pytest.raises(ValueError, match="1 training point"):
        B.make_forget_sets(torch.zeros(1, dtype=torch.int64), ["random1"], seed=0)
    # ⌈K% · N⌉ exactly: 7% of 100 is 7 points (7 / 100 * 100 is 7.000000000000001 in floats)
    assert len(B.make_forget_sets(torch.arange(100) % 2, ["random7"], seed=0)["random7"]) == 7


# --- the baselines' reference budgets and forms, checked by hand on a linear model (one batch = all points) --

@pytest.fixture(scope="module")
def full_batch(digits):
    """A linear model trained one full-batch epoch; every baseline's batch then holds its whole set."""
    cfg = B.TrainingConfig(lr=0.1, epochs=1, batch_size=300, seed=0)
    initial = models.build_model("linear", in_features=64, seed=2)
    original = copy.deepcopy(initial)
    UM.train_recorded(original, digits.train_x, digits.train_y, cfg)
    forget = data.select_forget_set(300, "random", k=15, seed=1)
    return UM.UnlearningTask(original, initial, digits.train_x, digits.train_y, forget, cfg)


def _vec(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).double()


def _hand_sgd(model, batches, lr, momentum=0.0, wd=0.0):
    """torch.optim.SGD written out: d = g + wd·w; buf = d (first step) else μ·buf + d; w -= lr·buf.
    ``batches``: list of loss closures of the model."""
    model = copy.deepcopy(model)
    params, buf = list(model.parameters()), None
    for loss_of in batches:
        grads = torch.autograd.grad(loss_of(model), params)
        d = [g + wd * p.detach() for g, p in zip(grads, params)]
        buf = d if buf is None else [momentum * b + di for b, di in zip(buf, d)]
        with torch.no_grad():
            for p, b in zip(params, buf):
                p -= lr * b
    return model


def test_reference_budgets_are_the_sources(task):
    cfg = task.config
    assert B.budget("fine_tuning", cfg) == dict(epochs=10, lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert B.budget("gradient_ascent", cfg) == dict(epochs=5, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    assert B.budget("neggrad_plus", cfg) == dict(epochs=10, lr=0.01, momentum=0.0, weight_decay=0.0)
    assert B.budget("random_labels_salun", cfg) == dict(epochs=10, lr=0.01, momentum=0.9, weight_decay=5e-4)
    # Graves: as many epochs as M's training, with M's optimiser settings
    assert B.budget("random_labels_graves", cfg) == dict(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0)
    assert B.budget("fine_tuning", cfg, 5, {"lr": 0.1}) == dict(epochs=5, lr=0.1, momentum=0.9, weight_decay=5e-4)
    assert set(B.SOURCES) == set(B.METHODS)


def test_fine_tuning_and_gradient_ascent_use_momentum_and_weight_decay(full_batch):
    t = full_batch
    xr, yr = t.subset(t.retain)
    xf, yf = t.subset(t.forget)
    ce = F.cross_entropy
    ft = UM.fine_tuning(t, 2, lr=0.05)  # 2 epochs of one retain batch each, momentum 0.9, wd 5e-4
    hand = _hand_sgd(t.original, [lambda m: ce(m(xr), yr)] * 2, 0.05, 0.9, 5e-4)
    assert torch.allclose(_vec(ft), _vec(hand), atol=1e-6)
    ga = UM.gradient_ascent(t, 0.05, epochs=3)  # ascent on the forget batch, 3 epochs
    hand = _hand_sgd(t.original, [lambda m: -ce(m(xf), yf)] * 3, 0.05, 0.9, 5e-4)
    assert torch.allclose(_vec(ga), _vec(hand), atol=1e-6)
    # the old one-epoch plain-SGD form lands elsewhere
    assert not torch.allclose(_vec(ga), _vec(_hand_sgd(t.original, [lambda m: -ce(m(xf), yf)], 0.05)), atol=1e-4)


def test_neggrad_plus_epochs_by_hand(full_batch):
    t = full_batch
    xr, yr = t.subset(t.retain)
    xf, yf = t.subset(t.forget)
    ce = F.cross_entropy
    out = UM.neggrad_plus(t, 0.9, epochs=2, lr=0.2)
    hand = _hand_sgd(t.original, [lambda m: 0.9 * ce(m(xr), yr) - 0.1 * ce(m(xf), yf)] * 2, 0.2)
    assert torch.allclose(_vec(out), _vec(hand), atol=1e-6)


def test_graves_relabel_touches_only_forget_points_and_never_keeps_the_label():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (3000,), generator=g)
    forget = torch.arange(0, 3000, 3)
    new = UM.graves_relabel(y, forget, 10, seed=5)
    rest = torch.ones(3000, dtype=torch.bool)
    rest[forget] = False
    assert torch.equal(new[rest], y[rest])                 # only forget points change
    assert bool((new[forget] != y[forget]).all())          # and every one of them changes
    assert bool(((new >= 0) & (new < 10)).all())
    # uniform over the 9 other classes: each (true, new) pair of a class appears, none dominates
    pairs = torch.bincount(y[forget] * 10 + new[forget], minlength=100).reshape(10, 10)
    assert bool((pairs.diagonal() == 0).all()) and int((pairs > 0).sum()) == 90
    # two classes: the only wrong label is the other one
    y2 = torch.tensor([0, 1, 1, 0, 1])
    assert UM.graves_relabel(y2, torch.tensor([0, 2, 4]), 2, seed=1).tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="num_classes"):
        UM.graves_relabel(y2, torch.tensor([0]), 1, seed=0)


def test_random_labels_graves_trains_on_the_whole_relabelled_set(full_batch):
    t = full_batch
    c = t.config
    relabelled = UM.graves_relabel(t.train_y, t.forget, 10, training.sub_seed(c.seed, 14))
    out = UM.random_labels_graves(t, 1)  # M's lr 0.1, one epoch = one full batch of all 300 points
    hand = _hand_sgd(t.original, [lambda m: F.cross_entropy(m(t.train_x), relabelled)], 0.1)
    assert torch.allclose(_vec(out), _vec(hand), atol=1e-6)
    # not the forget set alone (the form this package ran before)
    xf, _ = t.subset(t.forget)
    alone = _hand_sgd(t.original, [lambda m: F.cross_entropy(m(xf), relabelled[t.forget])], 0.1)
    assert not torch.allclose(_vec(out), _vec(alone), atol=1e-4)


def test_random_labels_salun_forget_pass_then_retain_pass(full_batch):
    t = full_batch
    c = t.config
    xr, yr = t.subset(t.retain)
    order = training.batch_order(len(t.forget), torch.empty(0, dtype=torch.long), 300, "shuffle", 0, training.sub_seed(c.seed, 17))
    xf, _ = t.subset(t.forget[order[0]])  # the forget pass's one batch, in its shuffled order
    drawn = torch.randint(0, 10, (len(t.forget),), generator=torch.Generator().manual_seed(training.sub_seed(c.seed, 16)))
    ce = F.cross_entropy
    out = UM.random_labels_salun(t, 1, lr=0.1)  # momentum 0.9 and wd 5e-4 carried from pass to pass
    hand = _hand_sgd(t.original, [lambda m: ce(m(xf), drawn), lambda m: ce(m(xr), yr)], 0.1, 0.9, 5e-4)
    assert torch.allclose(_vec(out), _vec(hand), atol=1e-6)
    swapped = _hand_sgd(t.original, [lambda m: ce(m(xr), yr), lambda m: ce(m(xf), drawn)], 0.1, 0.9, 5e-4)
    assert not torch.allclose(_vec(out), _vec(swapped), atol=1e-4)
