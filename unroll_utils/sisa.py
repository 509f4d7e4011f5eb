"""SISA training (Sharded, Isolated, Sliced, Aggregated): exact unlearning at a lower retraining cost.

Bourtoule et al., "Machine Unlearning", IEEE S&P 2021. The training set is split into S disjoint
shards; each shard trains its own model; a shard's data is further split into R slices that are added
one at a time (stage r trains on slices 0..r, then checkpoints). Unlearning a point retrains only the
shard that held it, from the checkpoint saved just before the slice that held it. Predictions aggregate
the S models (mean softmax, or majority vote of their labels).

The paper (Thudi et al. 2022) compares the cost of single gradient unlearning with SISA's; this small
implementation is the measuring stick (notebook 13). Costs are counted in SGD steps and wall seconds.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .privacy import predict_probs
from .training import train_sgd

__all__ = ["SISA", "UnlearnCost", "AGGREGATIONS"]

AGGREGATIONS = ("mean_softmax", "majority_vote")


def _seed(*parts: int) -> int:
    """An independent 63-bit seed for the tuple ``parts`` (numpy SeedSequence)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class UnlearnCost:
    """What one unlearning request cost: SGD steps, wall seconds, and which shards were retrained
    from which slice (shard → first retrained slice)."""

    steps: int
    seconds: float
    retrained: dict[int, int]


class SISA:
    """S shards × R slices of a training set, one model per shard, with slice checkpoints.

    Args:
        build: ``build(seed) -> nn.Module``, a fresh model (the same architecture for every shard).
        n_shards: S ≥ 1. n_slices: R ≥ 1.
        lr, batch_size, loss, lam, momentum: SGD settings of every stage (as
            :func:`unroll_utils.training.train_sgd`).
        epochs_per_slice: epochs of each stage r (over slices 0..r), ≥ 1.
        seed: seeds the partition, every shard's initialisation and every stage's data order.

    State after :meth:`fit`: ``slices[s][r]`` (sorted int64 training indices), ``models[s]`` and
    ``checkpoints[s][r]`` (state dict after stage r). Source: Bourtoule et al., IEEE S&P 2021, §IV.
    """

    def __init__(self, build, n_shards: int, n_slices: int, *, lr: float, epochs_per_slice: int = 1,
                 batch_size: int = 32, loss: str = "ce", lam: float = 0.0, momentum: float = 0.0,
                 seed: int = 0):
        for name, v in (("n_shards", n_shards), ("n_slices", n_slices), ("epochs_per_slice", epochs_per_slice),
                        ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
        self.build, self.n_shards, self.n_slices = build, int(n_shards), int(n_slices)
        self.train_args = dict(lr=lr, batch_size=int(batch_size), loss=loss, lam=lam, momentum=momentum)
        self.epochs_per_slice, self.seed = int(epochs_per_slice), int(seed)
        self.slices: list[list[torch.Tensor]] = []
        self.models: list[nn.Module] = []
        self.checkpoints: list[list[dict]] = []
        self.x = self.y = None

    def _stage_steps(self, n_points: int) -> int:
        return self.epochs_per_slice * math.ceil(n_points / self.train_args["batch_size"]) if n_points else 0

    def _train_shard(self, s: int, first: int) -> int:
        """Retrain shard s from the checkpoint before slice ``first`` (init if 0); returns SGD steps."""
        model = self.build(_seed(self.seed, 1, s))
        if first > 0:
            model.load_state_dict(self.checkpoints[s][first - 1])
        steps = 0
        for r in range(first, self.n_slices):
            idx = torch.cat(self.slices[s][: r + 1])
            if len(idx):
                dev = idx.to(self.x.device)
                train_sgd(model, self.x[dev], self.y[dev], epochs=self.epochs_per_slice,
                          seed=_seed(self.seed, 2, s, r), progress=False, **self.train_args)
                steps += self._stage_steps(len(idx))
            self.checkpoints[s][r] = copy.deepcopy(model.state_dict())
        self.models[s] = model
        return steps

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> UnlearnCost:
        """Partition (N, ...) inputs ``x`` and (N,) labels ``y`` by a seeded permutation and train every
        shard slice by slice. Returns the cost (all shards; ``retrained`` maps every shard to 0).

        Raises:
            ValueError: fewer than S·R points, or mismatched lengths.
        """
        n = x.shape[0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},); got {tuple(y.shape)}")
        if n < self.n_shards * self.n_slices:
            raise ValueError(f"n_shards * n_slices = {self.n_shards * self.n_slices} exceeds the {n} training points")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, 0)))
        self.x, self.y = x, y
        self.slices = [[part.sort().values for part in torch.tensor_split(shard, self.n_slices)]
                       for shard in torch.tensor_split(perm, self.n_shards)]
        self.models = [None] * self.n_shards
        self.checkpoints = [[None] * self.n_slices for _ in range(self.n_shards)]
        start = time.perf_counter()
        steps = sum(self._train_shard(s, 0) for s in range(self.n_shards))
        return UnlearnCost(steps, time.perf_counter() - start, {s: 0 for s in range(self.n_shards)})

    def unlearn(self, indices, *, from_scratch: bool = False) -> UnlearnCost:
        """Remove training points (indices into the ``x`` given to :meth:`fit`) and retrain each affected
        shard from its last clean slice checkpoint (``from_scratch=True``: from the initialisation,
        for comparison; the result is the same model).

        Raises:
            ValueError: before :meth:`fit`, empty or duplicate indices, or an index that is not (or no
                longer) in the training set.
        """
        if self.x is None:
            raise ValueError("call fit first")
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).flatten()
        if idx.numel() == 0 or len(torch.unique(idx)) != len(idx):
            raise ValueError("indices must be non-empty and without duplicates")
        first: dict[int, int] = {}
        found = torch.zeros(len(idx), dtype=torch.bool)
        for s, shard in enumerate(self.slices):
            for r, sl in enumerate(shard):
                hit = torch.isin(sl, idx)
                if hit.any():
                    found |= torch.isin(idx, sl)
                    first.setdefault(s, r)
                    shard[r] = sl[~hit]
        if not found.all():
            raise ValueError(f"indices not in the training set (or already unlearned): {idx[~found].tolist()[:5]}")
        start = time.perf_counter()
        steps = sum(self._train_shard(s, 0 if from_scratch else r) for s, r in first.items())
        return UnlearnCost(steps, time.perf_counter() - start, first)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the S shard models' softmax probabilities, (N, C), eval mode."""
        return torch.stack([predict_probs(m, x) for m in self.models]).mean(0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, aggregation: str = "mean_softmax") -> torch.Tensor:
        """(N,) predicted labels: argmax of the mean softmax, or the majority vote of the shard
        models' labels (ties → the smallest label)."""
        if aggregation == "mean_softmax":
            return self.predict_proba(x).argmax(1)
        if aggregation == "majority_vote":
            votes = torch.stack([predict_probs(m, x).argmax(1) for m in self.models])  # (S, N)
            n_cls = self.predict_proba(x[:1]).shape[1]
            counts = torch.nn.functional.one_hot(votes, n_cls).sum(0)  # (N, C)
            return counts.argmax(1)
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}; got {aggregation!r}")

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, aggregation: str = "mean_softmax") -> float:
        """Top-1 accuracy in [0, 1] of the aggregated prediction."""
        return float((self.predict(x, aggregation).cpu() == y.cpu()).double().mean())
