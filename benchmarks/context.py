"""Shared settings, models and data of one benchmark run."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from unroll_utils.data import TensorData, load_mnist_subset
from unroll_utils.pretraining import PretrainConfig, pretrain
from unroll_utils.models import build_model, count_parameters
from unroll_utils.training import train_sgd

# CIFAR-10 at b=32: 50,000 / 32 → 1,563 steps per epoch (paper §2.2), x* is batch 0 and M′ skips it.
CIFAR10_TRAIN = 50_000
CIFAR10_STEPS_PER_EPOCH = -(-CIFAR10_TRAIN // 32)
DEFAULT_CACHE = Path(__file__).resolve().parent / "out" / "cache"   # gitignored with benchmarks/out


@dataclass
class Settings:
    """Sizes and budgets; ``quick`` shrinks what is expensive on a CPU (see README)."""

    device: torch.device
    quick: bool
    seed: int = 0
    repeats: int = 3
    rel_acc: float = 1e-3          # the accuracy every σ method must reach
    step_lr: float = 0.01          # lr of the SGD step between two σ solves (LockStepConfig default)
    pretrain_lr: float = 0.05      # small CNN pretraining (1 epoch) that produces w_0
    cnn_hessian_batch: int = 128   # brief: 128-image MNIST batch
    resnet_hessian_batch: int = 128
    ref_tol: float = 1e-8          # reference Lanczos (both spectrum ends)
    ref_max_iter: int = 300
    pyhessian_cap: int = 1000      # continue PyHessian's power iteration until 1e-3 or this many HVPs
    power_max_iter: int = 1000
    resnet_budget_s: float | None = None   # per-case timed-seconds budget for ResNet-18 (quick)
    resnet_ref_max_iter: int = 300
    resnet_pyhessian_cap: int = 1000
    resnet_power_max_iter: int = 1000
    lockstep_n: int = 4000         # MNIST points in the lock-step throughput run (125 steps at b=32)
    resnet_lockstep: bool = True
    resnet_lockstep_n: int = 512   # 16 steps at b=32 (one-time costs amortised over a few steps)
    resnet_tracemalloc: bool = True
    finetune_epochs: int = 1       # Exp A default (paper §2.2)
    trajectory_steps: int = 12     # σ at every step of a short trajectory (row 1, trajectory)
    resnet_trajectory_steps: int = 6
    exp_a_steps: int = 30          # row 6: Exp A end to end (σ every step), small CNN
    exp_a_points: int = 512        # row 6: the fixed Hessian batch (paper §2.2)
    resnet_exp_a_steps: int = 30   # row 6 on ResNet-18 (pretrained w_0, padded MNIST); 0 leaves it out
    resnet_exp_a_points: int = 512
    resnet_exp_a_settle: int = 20  # train-mode forward passes that settle BatchNorm statistics
    resnet_exp_a_stress: bool = True   # row 6 also on the synthetic random-init ResNet-18 (stress case)
    resnet_pretrain_n: int = 4000      # padded-MNIST points of the ResNet-18 w_0 (reference recipe)
    resnet_pretrain_epochs: int = 3
    peers_cnn_batch: int = 512     # row 7: small-CNN Hessian batch (paper's Exp A Hessian batch, §2.2)
    peers_budget: int = 200        # row 7: HVPs allowed per call before a setting counts as failed
    resnet_peers_budget: int = 100
    peers_budget_s: float | None = None   # row 7: per-case timed-seconds budget (quick)

    @classmethod
    def make(cls, device: torch.device, quick: bool, seed: int = 0) -> "Settings":
        s = cls(device=device, quick=quick, seed=seed)
        if quick:
            s.resnet_hessian_batch = 8
            s.resnet_budget_s = 45.0
            s.resnet_ref_max_iter = 60
            s.resnet_pyhessian_cap = 150
            s.resnet_power_max_iter = 150
            s.lockstep_n = 1024
            s.resnet_lockstep_n = 128   # 4 steps
            s.resnet_tracemalloc = False
            s.resnet_trajectory_steps = 0   # ~40 s per step for the reference alone on a CPU
            s.exp_a_steps = 20
            s.resnet_exp_a_steps = 8       # ~1 min per step on a CPU, most of it truth and reference
            s.resnet_exp_a_points = 16
            s.resnet_exp_a_stress = False
            s.resnet_pretrain_n = 1024     # 8 steps of b=128 per epoch
            s.resnet_pretrain_epochs = 2
            s.resnet_peers_budget = 60
            s.peers_budget_s = 12.0
        return s


@dataclass
class Context:
    """Models at w_0 and data, built once and shared by the rows (each row deep-copies)."""

    settings: Settings
    mnist: object = None
    cnn_w0: nn.Module | None = None
    resnet_w0: nn.Module | None = None
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.settings.device

    def build(self) -> "Context":
        s = self.settings
        torch.manual_seed(s.seed)
        t0 = time.perf_counter()
        self.mnist = load_mnist_subset(n_train=4000, seed=s.seed)
        cnn = build_model("small_cnn", in_channels=1, seed=s.seed).to(s.device)
        # w_0 = a briefly pretrained model (1 epoch of plain SGD), as in the fine-tuning protocol
        train_sgd(cnn, self.mnist.train_x.to(s.device), self.mnist.train_y.to(s.device),
                  lr=s.pretrain_lr, epochs=1, batch_size=32, seed=s.seed, progress=False)
        self.cnn_w0 = cnn
        self.resnet_w0 = build_model("resnet18", seed=s.seed).to(s.device)  # random init
        self.info.update(
            cnn_params=count_parameters(cnn), resnet_params=count_parameters(self.resnet_w0),
            setup_seconds=time.perf_counter() - t0)
        return self

    def model(self, name: str) -> nn.Module:
        """A fresh deep copy of the model at w_0."""
        return copy.deepcopy(self.cnn_w0 if name == "small_cnn" else self.resnet_w0)

    def cnn_batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.mnist.train_x[start:start + size], self.mnist.train_y[start:start + size]
        return x.to(self.device), y.to(self.device)

    def cifar_batch(self, size: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthetic CIFAR-shaped batch: N(0, 1) inputs (the scale of normalised CIFAR), random labels."""
        g = torch.Generator().manual_seed(self.settings.seed * 1000 + stream)
        x = torch.randn(size, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (size,), generator=g)
        return x.to(self.device), y.to(self.device)

    def padded_mnist(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """MNIST points [start, start + size) zero-padded to 32×32 (0 is the mean in the normalised
        space) and repeated over 3 channels: (size, 3, 32, 32), the input shape of the CIFAR
        ResNet-18."""
        x, y = self.cnn_batch(start, size)
        return nn.functional.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous(), y

    def resnet_pretrained(self, cache_dir: str | Path = DEFAULT_CACHE) -> tuple[nn.Module, float]:
        """ResNet-18 at a w_0 pretrained on padded MNIST by the reference recipe
        (:class:`unroll_utils.pretraining.PretrainConfig` defaults: SGD lr 0.1, no momentum, wd 5e-4,
        cosine T_max 200 per epoch, crop + flip, b=128) for ``resnet_pretrain_epochs`` epochs on
        the first ``resnet_pretrain_n`` points; cached by its configuration under ``cache_dir``.
        Returns (model, test accuracy on 500 padded MNIST test points)."""
        s = self.settings
        n = min(s.resnet_pretrain_n, self.mnist.train_x.shape[0])
        pad = lambda x: nn.functional.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()
        ds = TensorData(pad(self.mnist.train_x[:n]), self.mnist.train_y[:n],
                        pad(self.mnist.test_x[:500]), self.mnist.test_y[:500], 10, "mnist_padded_3x32")
        cfg = PretrainConfig(dataset="mnist", model="resnet18", epochs=s.resnet_pretrain_epochs,
                             seed=s.seed)
        res = pretrain(cfg, ds, device=s.device, cache_dir=cache_dir, progress=False)
        return res.model, float(res.test_acc)

    def batch(self, name: str, start_or_stream: int, size: int):
        if name == "small_cnn":
            return self.cnn_batch(start_or_stream, size)
        return self.cifar_batch(size, start_or_stream)


MODEL_LABEL = {"small_cnn": "small CNN", "resnet18": "ResNet-18"}


def data_label(name: str, n: int) -> str:
    if name == "small_cnn":
        return f"MNIST, {n} images"
    return f"synthetic CIFAR-shaped, {n} images"
