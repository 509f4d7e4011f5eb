"""The device helper: device names, deterministic settings, the determinism floor."""

import pytest
import torch

from unroll_utils import device as D
from unroll_utils import models


def test_resolve_device():
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        D.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="without CUDA"):
            D.resolve_device("cuda")


def test_make_deterministic_sets_the_flags():
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.backends.cudnn.benchmark = True
        settings = D.make_deterministic("cpu")
        assert settings["cudnn_benchmark"] is False and settings["cudnn_deterministic"] is True
        assert settings["deterministic_algorithms"] is True
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


def test_environment_records_threads_and_device():
    env = D.environment("cpu")
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["intra_op_threads"] == torch.get_num_threads()


def _train(seed):
    net = models.build_model("small_cnn", in_channels=1, width=4, seed=0)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def test_repeat_distance_is_zero_for_identical_runs_and_positive_otherwise():
    assert D.repeat_distance(lambda: _train(0)) == 0.0
    seeds = iter([0, 1])
    assert D.repeat_distance(lambda: _train(next(seeds))) > 0.0
    a, b = [torch.zeros(2)], [torch.tensor([3.0, 4.0])]
    runs = iter([a, b])
    assert D.repeat_distance(lambda: next(runs)) == 5.0
