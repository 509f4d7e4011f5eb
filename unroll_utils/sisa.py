"""SISA training (Sharded, Isolated, Sliced, Aggregated): exact unlearning at a lower retraining cost.

Bourtoule et al., "Machine Unlearning", IEEE S&P 2021. The training set is split into S disjoint
shards; each shard trains its own model; a shard's data is further split into R slices that are added
one at a time (stage r trains on slices 0..r, then checkpoints). Unlearning a point retrains only the
shard that held it, from the checkpoint saved just before the slice that held it. Predictions aggregate
the S models: by default a vote of their predicted labels (Bourtoule's ``aggregation.py`` with the
``sisa.py`` default ``--output_type argmax`` and the ``uniform`` strategy), or the mean of their
softmax outputs (``"mean_softmax"``, their ``--output_type softmax``).

Epochs: by default the single model's E epochs are spread over the R stages as Bourtoule's ``sisa.py``
does (:func:`stage_epochs`), so each shard sees about E epochs' worth of its data; ``schedule=
"per_stage"`` gives every stage ``epochs_per_slice`` epochs instead.

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

__all__ = ["SISA", "UnlearnCost", "AGGREGATIONS", "SCHEDULES", "stage_epochs", "expected_retrain_fraction"]

#: How predictions are aggregated; the first is Bourtoule et al.'s default.
AGGREGATIONS = ("majority_vote", "mean_softmax")
#: How epochs are given to the slice stages; the first is Bourtoule et al.'s default.
SCHEDULES = ("spread", "per_stage")


def stage_epochs(epochs: int, n_slices: int) -> list[int]:
    """Epochs of each of the R slice stages when the single model's E epochs are spread over them:

        avg = 2R/(R+1) · E/R,    e_r = ⌊(r+1)·avg⌋ − ⌊r·avg⌋   (r = 0..R−1),

    so Σ_r e_r = ⌊2RE/(R+1)⌋ and, as stage r trains on r+1 of the R slices, the shard sees
    Σ_r e_r (r+1)/R ≈ E epochs of its data. A stage may get 0 epochs (then it only checkpoints).
    Example: E = 5, R = 4: avg = 2, e = [2, 2, 2, 2], 8 stage-epochs, 5 shard-epochs of data.

    Args:
        epochs: E ≥ 1, the single model's epochs.
        n_slices: R ≥ 1.

    Returns:
        [e_0, ..., e_{R−1}], integers ≥ 0.

    Raises:
        ValueError: ``epochs`` or ``n_slices`` not an integer ≥ 1.

    Source: Bourtoule et al.'s ``sisa.py`` (cleverhans-lab/machine-unlearning).
    """
    for name, v in (("epochs", epochs), ("n_slices", n_slices)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
    avg = 2 * n_slices / (n_slices + 1) * epochs / n_slices  # the reference's expression, same float order
    return [int((r + 1) * avg) - int(r * avg) for r in range(n_slices)]


def expected_retrain_fraction(epochs_per_stage) -> float:
    """Expected share of a shard's training work redone to unlearn one point that lies in a uniformly
    random slice j: stages j..R−1 are retrained, stage r costs e_r·(r+1) slice-epochs, so

        E_j[Σ_{r≥j} e_r (r+1)] / Σ_r e_r (r+1) = Σ_r e_r (r+1)² / (R·Σ_r e_r (r+1)),

    which is (2R+1)/(3R) when every stage has the same epochs (3/4 for R = 4; it tends to 2/3, not
    1/2, as R grows). Work counted in points seen (SGD steps up to the rounding of the last batch).

    Args:
        epochs_per_stage: e_0, ..., e_{R−1} (e.g. :func:`stage_epochs`).

    Returns:
        The fraction, in (0, 1].

    Raises:
        ValueError: an empty list or no epochs at all.
    """
    e = np.asarray(list(epochs_per_stage), dtype=np.float64)
    if e.size == 0 or e.sum() <= 0:
        raise ValueError("epochs_per_stage must hold at least one positive number of epochs")
    r1 = np.arange(1, e.size + 1)
    return float((e * r1 ** 2).sum() / (e.size * (e * r1).sum()))


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
        epochs: E ≥ 1, the single model's epochs, spread over the stages by :func:`stage_epochs`
            (``schedule="spread"``, Bourtoule et al.'s ``sisa.py``; required there).
        schedule: ``"spread"`` (default, the source's: each shard sees ≈ E epochs of its data) or
            ``"per_stage"``: every stage r (over slices 0..r) trains ``epochs_per_slice`` = k
            epochs, so a shard sees k·(R+1)/2 epochs of its data (k = 1, R = 4: 2.5 epochs).
        epochs_per_slice: epochs of each stage under ``"per_stage"`` (default 1), ≥ 1.
        seed: seeds the partition, every shard's initialisation and every stage's data order.

    State after :meth:`fit`: ``slices[s][r]`` (sorted int64 training indices), ``models[s]``,
    ``checkpoints[s][r]`` (state dict after stage r) and ``stage_epochs`` (epochs of each stage).

    Source: Bourtoule et al., IEEE S&P 2021, §IV; cleverhans-lab/machine-unlearning ``sisa.py``.

    Raises:
        ValueError: a count, ``schedule`` or epoch option out of range (named).
    """

    def __init__(self, build, n_shards: int, n_slices: int, *, lr: float, epochs: int | None = None,
                 schedule: str = "spread", epochs_per_slice: int | None = None, batch_size: int = 32,
                 loss: str = "ce", lam: float = 0.0, momentum: float = 0.0, seed: int = 0):
        for name, v in (("n_shards", n_shards), ("n_slices", n_slices), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}; got {schedule!r}")
        if schedule == "spread":
            if epochs is None:
                raise ValueError("epochs (the single model's E) is required with schedule='spread'")
            if epochs_per_slice is not None:
                raise ValueError("epochs_per_slice applies to schedule='per_stage' only")
            self.stage_epochs = stage_epochs(epochs, n_slices)
        else:
            per = 1 if epochs_per_slice is None else epochs_per_slice
            if isinstance(per, bool) or not isinstance(per, (int, np.integer)) or per < 1:
                raise ValueError(f"epochs_per_slice must be an integer >= 1; got {per!r}")
            if epochs is not None:
                raise ValueError("epochs applies to schedule='spread' only (use epochs_per_slice)")
            self.stage_epochs = [int(per)] * int(n_slices)
        self.build, self.n_shards, self.n_slices, self.schedule = build, int(n_shards), int(n_slices), schedule
        self.train_args = dict(lr=lr, batch_size=int(batch_size), loss=loss, lam=lam, momentum=momentum)
        self.seed = int(seed)
        self.slices: list[list[torch.Tensor]] = []
        self.models: list[nn.Module] = []
        self.checkpoints: list[list[dict]] = []
        self.x = self.y = None

    def _stage_steps(self, r: int, n_points: int) -> int:
        return self.stage_epochs[r] * math.ceil(n_points / self.train_args["batch_size"]) if n_points else 0

    def _train_shard(self, s: int, first: int) -> int:
        """Retrain shard s from the checkpoint before slice ``first`` (init if 0); returns SGD steps."""
        model = self.build(_seed(self.seed, 1, s))
        if first > 0:
            model.load_state_dict(self.checkpoints[s][first - 1])
        steps = 0
        for r in range(first, self.n_slices):
            idx = torch.cat(self.slices[s][: r + 1])
            if len(idx) and self.stage_epochs[r]:
                dev = idx.to(self.x.device)
                train_sgd(model, self.x[dev], self.y[dev], epochs=self.stage_epochs[r],
                          seed=_seed(self.seed, 2, s, r), progress=False, **self.train_args)
                steps += self._stage_steps(r, len(idx))
            self.checkpoints[s][r] = copy.deepcopy(model.state_dict())
        self.models[s] = model
        return steps

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> UnlearnCost:
        """Partition the training set by a seeded permutation and train every shard slice by slice.

        Args:
            x: (N, ...) inputs.
            y: (N,) int64 labels.

        Returns:
            :class:`UnlearnCost` of all shards (``retrained`` maps every shard to 0).

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
        """Remove training points and retrain each affected shard from its last clean slice checkpoint.

        Args:
            indices: indices into the ``x`` given to :meth:`fit`.
            from_scratch: retrain affected shards from the initialisation instead (for comparison; the
                result is the same model).

        Returns:
            :class:`UnlearnCost`; ``retrained`` maps each affected shard to the first slice retrained.

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
        """Mean of the S shard models' softmax probabilities, in eval mode.

        Args:
            x: (N, ...) inputs.

        Returns:
            (N, C) float32.
        """
        return torch.stack([predict_probs(m, x) for m in self.models]).mean(0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, aggregation: str = "majority_vote") -> torch.Tensor:
        """Aggregated labels of the shard models.

        Args:
            x: (N, ...) inputs.
            aggregation: ``"majority_vote"`` (default, Bourtoule et al.'s: ``np.argmax`` of the summed
                one-hot outputs, so ties go to the smallest label) or ``"mean_softmax"`` (the argmax of the
                mean softmax).

        Returns:
            (N,) int64 labels.

        Raises:
            ValueError: an unknown ``aggregation`` (the allowed names are listed).

        Source: cleverhans-lab/machine-unlearning ``aggregation.py`` (``uniform`` vote).
        """
        if aggregation == "mean_softmax":
            return self.predict_proba(x).argmax(1)
        if aggregation == "majority_vote":
            probs = [predict_probs(m, x) for m in self.models]
            votes = torch.stack([p.argmax(1) for p in probs])  # (S, N)
            counts = torch.nn.functional.one_hot(votes, probs[0].shape[1]).sum(0)  # (N, C)
            return counts.argmax(1)
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}; got {aggregation!r}")

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, aggregation: str = "majority_vote") -> float:
        """Top-1 accuracy in [0, 1] of the aggregated prediction.

        Args:
            x: (N, ...) inputs.
            y: (N,) labels.
            aggregation: as :meth:`predict`.

        Returns:
            The fraction of correct labels.
        """
        return float((self.predict(x, aggregation).cpu() == y.cpu()).double().mean())
