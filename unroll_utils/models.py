"""Models used by the experiments of Thudi et al. (2022), plus a small CPU model.

Source: the reference repository's model files (cleverhans-lab/unrolling-sgd ``ResNet_CIFAR10.py``
``ResNet18``, ``VGG_model.py`` ``VGG('VGG19')``, kuangliu/pytorch-cifar style), trained from random
initialisation with no pretrained ImageNet weights, and the linear probe ``nn.Linear(768, 2)`` on
frozen IMDB features of ``BERT/no_bert_training_unlearning.py``. Counted from those files, the
parameters that the verification error runs over: ResNet-18 has 11,173,962 in 62 tensors
(10 classes) and VGG-19-BN has 20,040,522 in 66 tensors (10 classes). The builders here reproduce
those counts exactly.

The architectures reuse torchvision's building blocks (``torchvision.models.resnet18``,
the VGG layer factory ``torchvision.models.vgg.make_layers``,
``torchvision.ops.Conv2dNormActivation``) and never download weights.

Public API:

* :class:`SmallCNN`: a ~94k-parameter CNN for the package's CPU experiments (digits, MNIST,
  CIFAR).
* :func:`resnet18_cifar`: the CIFAR ResNet-18 of the paper.
* :func:`vgg19_cifar`: the CIFAR VGG-19 with BatchNorm of the paper.
* :class:`LinearHead`: the linear probe of the IMDB experiment.
* :func:`build_model`: builds any of the above by name, with a seeded, RNG-isolated initialisation.
* :func:`count_parameters`: number of trainable parameters.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn
from torchvision.ops import Conv2dNormActivation

__all__ = [
    "INITS",
    "MODEL_NAMES",
    "IMAGE_MODEL_NAMES",
    "LinearHead",
    "SmallCNN",
    "build_model",
    "count_parameters",
    "resnet18_cifar",
    "vgg19_cifar",
]

#: Names accepted by :func:`build_model`.
MODEL_NAMES: tuple[str, ...] = ("small_cnn", "resnet18", "vgg19", "linear")
#: The image classifiers among them (``linear`` is a head on frozen features).
IMAGE_MODEL_NAMES: tuple[str, ...] = tuple(n for n in MODEL_NAMES if n != "linear")
#: Initialisations of the CIFAR models: PyTorch's module defaults (the reference's) or torchvision's.
INITS: tuple[str, ...] = ("pytorch_default", "torchvision")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}; got {init!r}")


def reset_to_pytorch_default(model: nn.Module) -> nn.Module:
    """Re-initialise every ``Conv2d``, ``Linear`` and ``BatchNorm`` of ``model`` with PyTorch's own
    default (``module.reset_parameters()``), in place, in module order; returns ``model``.

    The defaults: a convolution or linear weight is ``kaiming_uniform_(a=√5)``, i.e. uniform in
    ±1/√fan_in (fan_in = in_channels·k·k or in_features), so its expected squared norm is
    numel/(3·fan_in) = out_channels/3; a bias is uniform in ±1/√fan_in; a BatchNorm weight is 1
    and its bias 0 (running mean 0, variance 1). This is what the reference models
    (kuangliu/pytorch-cifar's ``ResNet18`` in ``ResNet_CIFAR10.py`` and ``VGG`` in
    ``VGG_model.py``) get, as they call no initialiser.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            module.reset_parameters()
    return model

# The kuangliu/pytorch-cifar VGG-19 configuration (reference VGG_model.py): numbers are the output
# channels of conv3x3+BN+ReLU blocks, "M" is a 2x2 max-pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) that is at least ``minimum``.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value < minimum``; the message names the parameter ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class SmallCNN(nn.Module):
    """A small CPU-friendly CNN for 8x8 (digits), 28x28 (MNIST) and 32x32 (CIFAR) images.

    Not from the paper (which uses ResNet-18 / VGG-19 on GPUs): it stands in for
    them in the package's CPU experiments, so that verification and unlearning errors can be
    computed in seconds. Design (``w = width``; shapes for a 28x28 input), every block a
    ``torchvision.ops.Conv2dNormActivation`` (conv3x3 with padding 1, BatchNorm2d, ReLU):

    1. conv3x3(in_channels -> w) + BN + ReLU: (N, w, 28, 28)
    2. conv3x3(w -> 2w, stride 2) + BN + ReLU: (N, 2w, 14, 14)
    3. conv3x3(2w -> 2w) + BN + ReLU: (N, 2w, 14, 14)
    4. conv3x3(2w -> 2w, stride 2) + BN + ReLU: (N, 2w, 7, 7)
    5. AdaptiveAvgPool2d(1) + Flatten: (N, 2w)
    6. Linear(2w -> num_classes): (N, num_classes)

    With ``width=32`` and 10 classes it has 93,546 parameters for ``in_channels=1`` and 94,122 for
    ``in_channels=3`` (14 tensors). The adaptive average pool makes it accept any input of at least
    8x8 pixels (8x8 becomes 4x4 and then 2x2 before pooling). There is no BatchNorm1d, so a batch of
    one works in train mode. The convolutions have no bias when followed by BatchNorm (the BN shift
    plays that role); with ``batch_norm=False`` each BatchNorm2d is replaced by ``nn.Identity`` and
    the convolutions get a bias (93,322 parameters and 10 tensors for ``in_channels=1``). The
    module layout, and so the keys of the convolution weights, is the same in both cases. Its
    accuracy on the embedded MNIST subset is in benchmarks/README.md.

    Attributes:
        features: ``nn.Sequential`` of the four conv blocks, the average pool and the flatten;
            maps (N, in_channels, H, W) to (N, 2 * width).
        classifier: ``nn.Linear(2 * width, num_classes)``.

    Args:
        in_channels: number of input channels (1 for digits/MNIST, 3 for CIFAR).
        num_classes: number of output logits, at least 2.
        width: channels of the first block; later blocks have ``2 * width``.
        batch_norm: use BatchNorm2d after each convolution (else ``nn.Identity``).

    Raises:
        TypeError: an integer argument is not an ``int``.
        ValueError: ``in_channels < 1``, ``num_classes < 2`` or ``width < 1``; the message names
            the parameter.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("num_classes", num_classes, 2)
        _check_int("width", width, 1)
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        bias = not batch_norm

        def block(c_in: int, c_out: int, stride: int) -> Conv2dNormActivation:
            return Conv2dNormActivation(
                c_in, c_out, kernel_size=3, stride=stride, norm_layer=norm,
                activation_layer=nn.ReLU, inplace=False, bias=bias,
            )

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.batch_norm = bool(batch_norm)
        self.features = nn.Sequential(
            block(in_channels, width, 1),
            block(width, 2 * width, 2),
            block(2 * width, 2 * width, 1),
            block(2 * width, 2 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, in_channels, H, W), H and W >= 8, to logits (N, num_classes)."""
        return self.classifier(self.features(x))


def resnet18_cifar(num_classes: int = 10, *, in_channels: int = 3, init: str = "pytorch_default") -> nn.Module:
    """The CIFAR ResNet-18 of the paper (kuangliu/pytorch-cifar ``ResNet18``) from torchvision.

    Source: reference ``ResNet_CIFAR10.py``, ``ResNet18(num_classes)`` (3x3 stem, no max-pool,
    average pool, ``Linear(512, C)``; 11,173,962 parameters in 62 tensors at 10 classes,
    11,220,132 at 100).

    It is ``torchvision.models.resnet18(weights=None, num_classes=num_classes)`` with ``conv1``
    replaced by a 3x3, stride-1, padding-1 convolution without bias and ``maxpool`` replaced by
    ``nn.Identity()``. Differences from the reference code that do not change the function or the
    parameter count: torchvision's ``AdaptiveAvgPool2d(1)`` equals kuangliu's ``avg_pool2d(4)`` on
    32x32 inputs (the last feature map is 4x4); the module names differ (``fc`` for ``linear``,
    ``downsample`` for ``shortcut``).

    The initialisation *does* change every run from a random init and every w_0: by default
    (``init="pytorch_default"``) it is PyTorch's module default, as in the reference, whose
    ``ResNet18`` calls no initialiser (see :func:`reset_to_pytorch_default`);
    ``init="torchvision"`` keeps torchvision's (Kaiming-normal fan-out convolutions, BN weight 1
    and bias 0, the new ``conv1`` initialised the same way), whose convolution weights have
    2.2 times the norm of the default ones at initialisation (all convolutions together; √6 for
    a 3x3 convolution with as many input as output channels).

    Args:
        num_classes: number of output logits, at least 2.
        in_channels: input channels of the stem convolution (keyword only). The default 3 is the
            paper's model; other values only change ``conv1`` (1 for MNIST gives 11,172,810
            parameters at 10 classes).
        init: ``"pytorch_default"`` (the reference's) or ``"torchvision"`` (keyword only).

    Returns:
        An ``nn.Module`` mapping (N, in_channels, H, W) to logits (N, num_classes); any H, W >= 1
        works thanks to the adaptive pool, 32x32 is the paper's input.

    Raises:
        TypeError: an argument is not an ``int``.
        ValueError: ``num_classes < 2``, ``in_channels < 1`` or an unknown ``init``; the message
            names the parameter.
    """
    _check_int("num_classes", num_classes, 2)
    _check_int("in_channels", in_channels, 1)
    _check_init(init)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return reset_to_pytorch_default(model) if init == "pytorch_default" else model


class _CifarVGG(nn.Module):
    """kuangliu/pytorch-cifar ``VGG``: ``features`` (convs + AvgPool2d(1)), flatten, ``classifier``.

    The attribute names and the layer indices of ``features`` (0..53, the last one being the
    1x1 average pool) match the reference model, so its state-dict keys match the reference
    checkpoints (after stripping any ``module.`` prefix of ``nn.DataParallel``).
    """

    def __init__(self, features: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, C_in, 32, 32) to logits (N, num_classes)."""
        return self.classifier(self.flatten(self.features(x)))


def vgg19_cifar(num_classes: int = 10, *, in_channels: int = 3, init: str = "pytorch_default") -> nn.Module:
    """The CIFAR VGG-19 with BatchNorm of the paper (kuangliu/pytorch-cifar ``VGG('VGG19')``).

    Source: reference ``VGG_model.py``, ``VGG('VGG19', C)`` (conv+BN+ReLU, 5 max-pools,
    ``Linear(512, C)``; 20,040,522 parameters in 66 tensors at 10 classes, 20,086,692 at 100).

    The convolutional part is built by torchvision's VGG layer factory
    (``torchvision.models.vgg.make_layers(cfg, batch_norm=True)``) from kuangliu's configuration
    ``[64, 64, M, 128, 128, M, 256 x4, M, 512 x4, M, 512 x4, M]``, which is torchvision's
    configuration "E": the result has the same layers as ``torchvision.models.vgg19_bn().features``
    (conv3x3 with bias, padding 1, BatchNorm2d, ReLU; 2x2 max-pools). Calling ``vgg19_bn`` itself
    is avoided because it would also allocate and initialise its 120M-parameter ImageNet
    classifier (about 0.5 GB in float32) only to throw it away. As in the reference code, an
    ``AvgPool2d(kernel_size=1, stride=1)`` (an identity) is appended to the conv part, then come
    ``nn.Flatten()`` and ``nn.Linear(512, num_classes)``. The initialisation is PyTorch's module
    default by default (``init="pytorch_default"``, as the reference's ``VGG_model.py``, which
    calls no initialiser; see :func:`reset_to_pytorch_default`); ``init="torchvision"`` gives
    torchvision's VGG scheme: Kaiming-normal fan-out convolutions with zero bias, BN weight 1 and
    bias 0, and normal(0, 0.01) classifier weights with zero bias; its convolution weights have
    2.3 times the norm of the default ones at initialisation (all convolutions together).

    Args:
        num_classes: number of output logits, at least 2.
        in_channels: input channels of the first convolution (keyword only). The default 3 is the
            paper's model; other values only change that convolution.
        init: ``"pytorch_default"`` (the reference's) or ``"torchvision"`` (keyword only).

    Returns:
        An ``nn.Module`` with attributes ``features`` and ``classifier`` mapping
        (N, in_channels, H, W) to logits (N, num_classes). The five max-pools must reduce the
        image to 1x1, so H and W must be in [32, 63]; 32x32 is the paper's input. Other sizes fail
        in the forward pass (a shape error from the linear layer or the pooling).

    Raises:
        TypeError: an argument is not an ``int``.
        ValueError: ``num_classes < 2`` or ``in_channels < 1``; the message names the parameter.
    """
    _check_int("num_classes", num_classes, 2)
    _check_int("in_channels", in_channels, 1)
    _check_init(init)
    features = torchvision.models.vgg.make_layers(list(_VGG19_CFG), batch_norm=True)
    if in_channels != 3:
        features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    features.append(nn.AvgPool2d(kernel_size=1, stride=1))
    model = _CifarVGG(features, num_classes)
    if init == "pytorch_default":
        return reset_to_pytorch_default(model)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
    return model


class LinearHead(nn.Module):
    """A linear probe on frozen features: the IMDB classifier of the paper, ``nn.Linear(768, 2)``.

    Source: reference ``BERT/no_bert_training_unlearning.py`` (a linear layer on 768-d pooled
    DistilBERT features).

    Attributes:
        linear: ``nn.Linear(in_features, num_classes)``.

    Args:
        in_features: size of the feature vector, at least 1.
        num_classes: number of output logits, at least 2.

    Raises:
        TypeError: an argument is not an ``int``.
        ValueError: ``in_features < 1`` or ``num_classes < 2``; the message names the parameter.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        _check_int("in_features", in_features, 1)
        _check_int("num_classes", num_classes, 2)
        self.in_features = in_features
        self.num_classes = num_classes
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, in_features) or (N, *dims) with prod(dims) == in_features to (N, num_classes).

        Dimensions after the first are flattened. A shape whose trailing size does not equal
        ``in_features`` raises ``RuntimeError`` from the linear layer.
        """
        return self.linear(torch.flatten(x, 1))


def build_model(
    name: str,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    seed: int | None = 0,
    **kwargs,
) -> nn.Module:
    """Build a model by name with a deterministic initialisation.

    Names (see :data:`MODEL_NAMES`):

    * ``"small_cnn"``: :class:`SmallCNN`; extra keyword arguments ``width`` and ``batch_norm``.
    * ``"resnet18"``: :func:`resnet18_cifar` (reference ``ResNet_CIFAR10.py``); extra keyword ``init``.
    * ``"vgg19"``: :func:`vgg19_cifar` (reference ``VGG_model.py``); extra keyword ``init``.
    * ``"linear"``: :class:`LinearHead` (the IMDB probe); the keyword ``in_features`` is
      required, ``in_channels`` is ignored.

    For ``"resnet18"`` and ``"vgg19"``, ``in_channels`` other than 3 adapts only the first
    convolution (the paper's models, and the parameter counts above, are for 3).

    The initialisation is a function of ``seed`` only: the model is built inside
    ``torch.random.fork_rng(devices=[])`` after ``torch.manual_seed(seed)``, so the same seed gives
    bit-identical parameters and buffers, and the caller's global CPU RNG state is left unchanged.
    With ``seed=None`` the model is built from the global RNG as it is (and advances it). The
    model is built on the CPU in float32.

    Args:
        name: one of ``"small_cnn"``, ``"resnet18"``, ``"vgg19"``, ``"linear"``.
        in_channels: input channels for the image models, at least 1.
        num_classes: number of output logits, at least 2.
        seed: integer seed of the initialisation, or None to use the global RNG.
        **kwargs: model-specific arguments listed above.

    Returns:
        The ``nn.Module``, in train mode.

    Raises:
        ValueError: unknown ``name`` (the message lists the allowed names); ``num_classes < 2``,
            ``in_channels < 1``, a missing or invalid ``in_features`` for ``"linear"``, or an
            invalid ``width`` (the message names the parameter).
        TypeError: an unexpected keyword argument for the chosen model, or an argument of the wrong
            type (e.g. a non-integer ``seed``).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model name {name!r}; allowed names: {', '.join(MODEL_NAMES)}")
    _check_int("num_classes", num_classes, 2)
    _check_int("in_channels", in_channels, 1)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    allowed = {"small_cnn": {"width", "batch_norm"}, "linear": {"in_features"},
               "resnet18": {"init"}, "vgg19": {"init"}}.get(name, set())
    unexpected = sorted(set(kwargs) - allowed)
    if unexpected:
        raise TypeError(
            f"build_model({name!r}) got unexpected keyword arguments {unexpected}; "
            f"allowed extra arguments: {sorted(allowed) or 'none'}"
        )
    if name == "linear" and "in_features" not in kwargs:
        raise ValueError("build_model('linear') requires the keyword argument in_features")

    def make() -> nn.Module:
        if name == "small_cnn":
            return SmallCNN(in_channels=in_channels, num_classes=num_classes, **kwargs)
        if name == "resnet18":
            return resnet18_cifar(num_classes, in_channels=in_channels, **kwargs)
        if name == "vgg19":
            return vgg19_cifar(num_classes, in_channels=in_channels, **kwargs)
        return LinearHead(kwargs["in_features"], num_classes)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters: sum of ``numel()`` over parameters with ``requires_grad``.

    This is the dimension of the space in which the verification error (notebook 01, eq. (2)) is
    measured: all ``model.parameters()`` (weights, biases, BN gamma/beta), not the BN running
    buffers. Shared parameters are counted once.

    Args:
        model: any ``nn.Module``.

    Returns:
        The count as a Python ``int`` (e.g. 11,173,962 for ``resnet18_cifar(10)``).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trains_on_one_point(model: nn.Module, x_one: torch.Tensor) -> bool:
    """Whether ``model`` can take a training-mode forward pass on a batch of one point.

    BatchNorm fails on one point when it sees one value per channel (``BatchNorm1d`` after a
    linear layer, ``BatchNorm2d`` on 1×1 maps); ``BatchNorm2d`` on larger maps works. The probe runs
    on a deep copy under ``no_grad``, so the model's buffers are untouched.

    Args:
        model: the network. x_one: (1, ...) one input on the model's device.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return True
    probe = copy.deepcopy(model).train()
    try:
        with torch.no_grad():
            probe(x_one)
    except ValueError as err:
        if "more than 1 value per channel" in str(err):
            return False
        raise
    return True
