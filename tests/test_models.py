"""Tests for unroll_utils.models (paper digest sections 1.2, 2.0 and 2.6)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from unroll_utils.models import (
    IMAGE_MODEL_NAMES,
    MODEL_NAMES,
    LinearHead,
    SmallCNN,
    build_model,
    count_parameters,
    resnet18_cifar,
    vgg19_cifar,
)


@functools.lru_cache(maxsize=None)
def _built(name: str, num_classes: int) -> nn.Module:
    """Build each full-size model once (seed 0); tests must not modify the returned model."""
    return build_model(name, num_classes=num_classes, seed=0).eval()


def _n_tensors(model: nn.Module) -> int:
    return len(list(model.parameters()))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --- parameter counts from the paper digest, section 1.2 -------------------------------------


@pytest.mark.parametrize(
    ("name", "num_classes", "n_params", "n_tensors"),
    [
        ("resnet18", 10, 11_173_962, 62),
        ("resnet18", 100, 11_220_132, 62),
        ("vgg19", 10, 20_040_522, 66),
        ("vgg19", 100, 20_086_692, 66),
    ],
)
def test_paper_parameter_counts(name, num_classes, n_params, n_tensors):
    model = _built(name, num_classes)
    assert count_parameters(model) == n_params
    assert _n_tensors(model) == n_tensors


def test_resnet18_cifar_stem():
    model = _built("resnet18", 10)
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.in_features == 512 and model.fc.out_features == 10


def test_vgg19_cifar_layout():
    model = _built("vgg19", 100)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 16 and len(bns) == 16 and len(pools) == 5
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    # kuangliu layout: the last element of `features` is the 1x1 average pool (index 53).
    assert len(model.features) == 54 and isinstance(model.features[53], nn.AvgPool2d)
    assert model.classifier.in_features == 512 and model.classifier.out_features == 100


@pytest.mark.slow  # two full-size VGG-19s
def test_vgg19_features_match_torchvision_vgg19_bn():
    reference = torchvision.models.vgg19_bn(weights=None).features
    ours = _built("vgg19", 10).features
    assert len(ours) == len(reference) + 1
    for a, b in zip(ours, reference, strict=False):
        assert repr(a) == repr(b)


def test_small_cnn_parameter_count():
    assert count_parameters(SmallCNN(in_channels=1)) == 93_546
    assert count_parameters(SmallCNN(in_channels=3)) == 94_122
    assert count_parameters(SmallCNN(in_channels=1, batch_norm=False)) == 93_322
    assert not any(isinstance(m, nn.BatchNorm1d) for m in SmallCNN().modules())
    no_bn = SmallCNN(batch_norm=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in no_bn.modules())
    assert sum(isinstance(m, nn.Identity) for m in no_bn.modules()) == 4


def test_count_parameters_trainable_only():
    model = LinearHead(768, 2)
    assert count_parameters(model) == 768 * 2 + 2
    model.linear.bias.requires_grad_(False)
    assert count_parameters(model) == 768 * 2


# --- forward shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "vgg19"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_models_forward_shape(name, num_classes):
    model = _built(name, num_classes)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 1, 8, 8), (2, 3, 32, 32)])
def test_small_cnn_forward_shape(shape):
    model = SmallCNN(in_channels=shape[1], num_classes=10)
    assert model(torch.randn(*shape)).shape == (2, 10)


def test_small_cnn_batch_of_one_in_train_mode():
    model = SmallCNN(in_channels=1).train()
    out = model(torch.randn(1, 1, 28, 28))
    assert out.shape == (1, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_linear_head_forward_shape_and_flatten():
    model = LinearHead(768, 2)
    assert model(torch.randn(4, 768)).shape == (4, 2)
    x = torch.randn(4, 12, 64)
    assert torch.equal(model(x), model(x.reshape(4, 768)))


def test_in_channels_adapts_first_conv():
    resnet = build_model("resnet18", in_channels=1, num_classes=10)
    assert resnet.conv1.in_channels == 1
    assert count_parameters(resnet) == 11_173_962 - 64 * 2 * 9
    vgg = build_model("vgg19", in_channels=1, num_classes=10)
    assert vgg.features[0].in_channels == 1
    assert count_parameters(vgg) == 20_040_522 - 64 * 2 * 9


# --- seeding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "linear"])
def test_build_model_seed_is_deterministic_and_isolated(name):
    kwargs = {"in_features": 768} if name == "linear" else {}
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_model(name, seed=7, **kwargs)
    b = build_model(name, seed=7, **kwargs)
    c = build_model(name, seed=8, **kwargs)
    after = torch.get_rng_state()
    assert torch.equal(before, after)
    assert torch.equal(_flat(a), _flat(b))
    assert not torch.equal(_flat(a), _flat(c))


@pytest.mark.parametrize("name", ["resnet18", "vgg19"])
def test_build_model_full_size_seed_is_deterministic(name):
    a = _built(name, 10)
    b = build_model(name, seed=0)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = build_model(name, seed=1)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_build_model_seed_none_uses_global_rng():
    torch.manual_seed(5)
    a = build_model("small_cnn", seed=None)
    torch.manual_seed(5)
    b = build_model("small_cnn", seed=None)
    assert torch.equal(_flat(a), _flat(b))
    before = torch.get_rng_state()
    build_model("small_cnn", seed=None)
    assert not torch.equal(before, torch.get_rng_state())


def test_build_model_types_and_kwargs():
    assert isinstance(build_model("small_cnn", in_channels=1, width=8), SmallCNN)
    assert count_parameters(build_model("small_cnn", in_channels=1, width=8)) == (
        8 * 9 + 16 * 8 * 9 + 2 * 16 * 16 * 9 + 2 * (8 + 16 * 3) + 16 * 10 + 10
    )
    assert isinstance(build_model("linear", in_features=768, num_classes=2), LinearHead)
    assert set(MODEL_NAMES) == {"small_cnn", "resnet18", "vgg19", "linear"}
    assert IMAGE_MODEL_NAMES == ("small_cnn", "resnet18", "vgg19")


def test_configs_validate_models_and_devices_against_the_constants():
    from unroll_utils.device import DEVICES
    from unroll_utils.experiment import MainJobConfig
    from unroll_utils.pretraining import PretrainConfig

    for bad in (MainJobConfig(model="linear"), PretrainConfig(model="linear")):
        with pytest.raises(ValueError, match=r"model.*one of \('small_cnn', 'resnet18', 'vgg19'\)"):
            bad.validate()
    with pytest.raises(ValueError, match=r"device.*one of \('auto', 'cpu', 'cuda'\)"):
        MainJobConfig(device="tpu").validate()
    assert DEVICES == ("auto", "cpu", "cuda")


# --- training smoke test ----------------------------------------------------------------------


def test_resnet18_one_sgd_step_changes_weights():
    model = build_model("resnet18", seed=0).train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)


# --- errors -----------------------------------------------------------------------------------


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown model name") as info:
        build_model("resnet50")
    for name in MODEL_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"name": "small_cnn", "num_classes": 1}, "num_classes"),
        ({"name": "resnet18", "num_classes": 0}, "num_classes"),
        ({"name": "vgg19", "num_classes": 1}, "num_classes"),
        ({"name": "small_cnn", "in_channels": 0}, "in_channels"),
        ({"name": "resnet18", "in_channels": 0}, "in_channels"),
        ({"name": "linear", "num_classes": 2}, "in_features"),
        ({"name": "linear", "in_features": 0}, "in_features"),
        ({"name": "small_cnn", "width": 0}, "width"),
    ],
)
def test_build_model_bad_values_name_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=param):
        build_model(**kwargs)


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: SmallCNN(num_classes=1), "num_classes"),
        (lambda: SmallCNN(in_channels=0), "in_channels"),
        (lambda: resnet18_cifar(1), "num_classes"),
        (lambda: vgg19_cifar(1), "num_classes"),
        (lambda: LinearHead(0, 2), "in_features"),
        (lambda: LinearHead(768, 1), "num_classes"),
    ],
)
def test_constructors_bad_values_name_the_parameter(call, param):
    with pytest.raises(ValueError, match=param):
        call()


def test_build_model_type_errors():
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("resnet18", width=8)
    with pytest.raises(TypeError, match="seed"):
        build_model("small_cnn", seed=1.5)
    with pytest.raises(TypeError, match="num_classes"):
        build_model("small_cnn", num_classes=10.0)


@pytest.mark.parametrize("name", ["resnet18", "vgg19"])
def test_pytorch_default_init_matches_kaiming_uniform_formula(name):
    """init="pytorch_default" (the reference's): a conv/linear weight is uniform in ±1/sqrt(fan_in)
    (kaiming_uniform with a=sqrt(5)), so E‖W‖² = numel/(3·fan_in) = out/3; biases uniform in the
    same bound; BatchNorm weight 1, bias 0."""
    model = build_model(name, seed=0, init="pytorch_default")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            fan_in = w[0].numel()
            bound = 1.0 / fan_in ** 0.5
            assert float(w.abs().max()) <= bound
            expected = w.numel() / (3 * fan_in)  # = out_features / 3
            # relative sd of ‖W‖² for n iid uniforms: sqrt(4/(5n)); 5 sd as tolerance
            tol = 5 * (0.8 / w.numel()) ** 0.5
            assert abs(float(w.square().sum()) / expected - 1) < tol, (m, float(w.square().sum()), expected)
            if m.bias is not None:
                assert float(m.bias.detach().abs().max()) <= bound
        elif isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and bool((m.bias == 0).all())


def test_torchvision_init_is_the_named_option_and_larger():
    """init="torchvision" keeps torchvision's Kaiming-normal fan-out convolutions:
    E‖W‖² = numel·2/(out·k·k) = 2·in_channels, i.e. 6·in/out times the default's out/3."""
    tv = build_model("resnet18", seed=0, init="torchvision")
    conv = tv.layer1[0].conv1.weight.detach()  # 64 -> 64, 3x3
    assert abs(float(conv.square().sum()) / (2 * 64) - 1) < 0.05
    default = build_model("resnet18", seed=0)
    conv_d = default.layer1[0].conv1.weight.detach()
    assert abs(float(conv_d.square().sum()) / (64 / 3) - 1) < 0.05
    norm = lambda m: sum(float(c.weight.detach().square().sum()) for c in m.modules()
                         if isinstance(c, nn.Conv2d)) ** 0.5
    assert 2.0 < norm(tv) / norm(default) < 2.4  # the "about 2.2 times" of the docstring
    with pytest.raises(ValueError, match="init must be one of"):
        build_model("vgg19", seed=0, init="xavier")
    with pytest.raises(TypeError, match="init"):
        build_model("small_cnn", seed=0, init="torchvision")
