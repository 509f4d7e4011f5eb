"""Weight distances: the cache-blocked distance kernel and the pairing of weights by name.

Weights are handled as lists of tensors in ``model.parameters()`` order (BatchNorm running buffers
excluded, as in the reference code, unless asked for). Two models (or name → tensor mappings such as
state dicts) are paired by parameter *name*, with the wrapper prefixes ``module.``
(``nn.DataParallel``/``DistributedDataParallel``) and ``_orig_mod.`` (``torch.compile``) stripped,
so a wrapped model, or one whose same-shaped layers are registered in another order, is compared
layer for layer; names that differ raise a ValueError naming the first one. Plain lists of tensors
are paired by position (:func:`model_weights` gives a model's list, e.g. to compare two differently
named models of the same architecture). Distances are computed on the weights'
device, with sums of squares added up in float64, so no flat copy of the model is ever built on the
host (the reference code, ``cleverhans-lab/unrolling-sgd``, flattened 11–20M weights through Python
lists): fused ``torch._foreach`` ops, except for CPU tensors larger than 2^16 elements, which go block
by block through one cache-resident scratch buffer (each block's sum of squares is one BLAS dot
product in the weights' own precision), so a distance over ResNet-18's 11M weights allocates no
model-sized temporary. :func:`lockstep_distances` gives the three distances of a lock-step
measurement (VE, ‖w_t − w_0‖, ‖w_t − w′_t‖) in one such pass, streaming each weight tensor from
memory once. The paper's metrics built on them (VE, the unlearning error) are in
:mod:`unroll_utils.metrics`.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch
from torch import nn

Weights = Sequence[torch.Tensor]


def model_weights(model: nn.Module, include_buffers: bool = False) -> list[torch.Tensor]:
    """The model's tensors that enter the distances, as live references (no copy).

    Args:
        model: the network.
        include_buffers: also include floating-point buffers (BatchNorm running mean/var);
            integer buffers such as ``num_batches_tracked`` are never included.

    Returns:
        List of tensors: ``model.parameters()`` order, then buffers.
    """
    ws = [p for p in model.parameters()]
    if include_buffers:
        ws += [b for b in model.buffers() if b.is_floating_point()]
    return ws


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def canonical_name(name: str) -> str:
    """A parameter name without leading wrapper prefixes (``module.``, ``_orig_mod.``, repeated).

    Args:
        name: e.g. ``"module._orig_mod.fc.weight"``.

    Returns:
        The name without them, e.g. ``"fc.weight"``.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def named_weights(weights, include_buffers: bool = False) -> dict[str, torch.Tensor]:
    """Canonical name → tensor (live references, no copy) of a model or a name → tensor mapping.

    Args:
        weights: an ``nn.Module`` (its parameters in ``named_parameters()`` order, then, with
            ``include_buffers``, its floating-point buffers) or a mapping such as a state dict
            (its floating-point tensors, in the mapping's order).
        include_buffers: for a model, also its floating-point buffers (BatchNorm running
            statistics); ``num_batches_tracked`` and other integer tensors are never included.

    Returns:
        dict from :func:`canonical_name` to tensor.

    Raises:
        ValueError: if two entries have the same name once the wrapper prefixes are stripped.
    """
    if isinstance(weights, nn.Module):
        items = list(weights.named_parameters())
        if include_buffers:
            items += [(n, b) for n, b in weights.named_buffers() if b.is_floating_point()]
    else:
        items = [(n, t) for n, t in weights.items()
                 if isinstance(t, torch.Tensor) and t.is_floating_point()]
    out: dict[str, torch.Tensor] = {}
    for name, t in items:
        key = canonical_name(name)
        if key in out:
            raise ValueError(f"two weights are both named {key!r} once the wrapper prefixes "
                             f"{WRAPPER_PREFIXES} are stripped; pass lists to pair them by position")
        out[key] = t
    return out


def snapshot(weights: Weights) -> list[torch.Tensor]:
    """Detached copies of a list of weight tensors (e.g. w_0), on the same device.

    Args:
        weights: tensors, e.g. :func:`model_weights` of a model.

    Returns:
        A list of new tensors, same shapes, dtypes and devices.
    """
    return [w.detach().clone() for w in weights]


def _as_list(x) -> list[torch.Tensor]:
    if isinstance(x, nn.Module):
        return model_weights(x)
    if isinstance(x, Mapping):
        return list(named_weights(x).values())
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x)


def _is_named(x) -> bool:
    return isinstance(x, (nn.Module, Mapping))


def _aligned(sides: dict[str, object]) -> list[list[torch.Tensor]]:
    """Each side as a list of tensors, named sides paired by canonical name.

    ``sides`` maps the caller's argument names to models, mappings, tensors or lists. With two or
    more named sides (models, mappings), every named side is put in the order of the first one's
    names, which must be the same set of names with the same shapes; lists and tensors are taken
    position by position (a single model among lists: its ``parameters()`` order).

    Raises:
        ValueError: naming the first name that one named side has and another lacks, or the first
            name whose shapes differ.
    """
    if sum(_is_named(x) for x in sides.values()) < 2:
        return [_as_list(x) for x in sides.values()]
    named = {label: named_weights(x) for label, x in sides.items() if _is_named(x)}
    (ref_label, ref), *others = named.items()
    for label, other in others:
        missing = next((n for n in ref if n not in other), None)
        extra = next((n for n in other if n not in ref), None)
        if missing is not None or extra is not None:
            name, has, lacks = (missing, ref_label, label) if missing is not None else (extra, label, ref_label)
            raise ValueError(f"{ref_label} and {label} name different parameters: {name!r} is in "
                             f"{has} but not in {lacks} (weights are paired by name, without the "
                             f"prefixes {WRAPPER_PREFIXES}; pass lists, e.g. distances.model_weights, "
                             "to pair them by position)")
        bad = next((n for n in ref if ref[n].shape != other[n].shape), None)
        if bad is not None:
            raise ValueError(f"{ref_label} and {label} disagree in the shape of {bad!r}: "
                             f"{tuple(ref[bad].shape)} vs {tuple(other[bad].shape)}")
    return [[named[label][n] for n in ref] if label in named else _as_list(x)
            for label, x in sides.items()]


def _check_matching(ref: list[torch.Tensor], other: list[torch.Tensor], message: str) -> None:
    """Raise ``ValueError(message)`` unless ``other`` has as many tensors as ``ref``, shape for shape."""
    if len(ref) != len(other) or any(x.shape != y.shape for x, y in zip(ref, other)):
        raise ValueError(message)


def weight_distance(a, b, offset=None) -> float:
    """‖a − b (+ offset)‖₂ over all tensors: per-tensor (or per-block, see the module docstring)
    sums of squares added up in float64.

    Args:
        a, b: models or name → tensor mappings (paired by name, wrapper prefixes stripped; see
            :func:`named_weights`), single (P,) tensors, or lists of tensors with matching shapes
            (paired by position).
        offset: optional list of tensors added to the difference (e.g. the single gradient
            unlearning correction, so that ‖(w_t + u) − w′_t‖ needs no copy of w″), in the order of
            ``a``'s parameters (or a model/mapping, paired by name).

    Returns:
        The L2 distance in weight units (not normalised by the parameter count).

    Raises:
        ValueError: two named sides with different parameter names (naming the first) or shapes,
            or lists that do not have the same number and shapes of tensors.
    """
    return labelled_distance({"a": a, "b": b, **({"offset": offset} if offset is not None else {})})


def labelled_distance(sides: dict[str, object]) -> float:
    """:func:`weight_distance` of ``sides`` = {label_a: a, label_b: b[, label_offset: offset]}, in
    that order; the labels (the caller's argument names) appear in the errors, e.g.
    ``labelled_distance({"w_unlearned": m2, "w_retrained": m1})``.

    Returns and raises as :func:`weight_distance`.
    """
    lists = _aligned(sides)
    la, lb = lists[0], lists[1]
    lo = lists[2] if len(lists) > 2 else None
    a_label, b_label, *o_label = sides
    _check_matching(la, lb, f"{a_label} and {b_label} must hold the same number of tensors with "
                            "the same shapes")
    if lo is not None:
        _check_matching(la, lo, f"{o_label[0]} must match {a_label} and {b_label} in number and "
                                "shapes of tensors")
    with torch.no_grad():
        big, small = _partition(lists)
        norms: list[torch.Tensor] = []
        if small:
            diff = torch._foreach_sub([la[i].detach() for i in small], [lb[i].detach() for i in small])
            if lo is not None:
                torch._foreach_add_(diff, [lo[i].detach() for i in small])
            norms += list(torch._foreach_norm(diff, 2, dtype=torch.float64))
        for d, (x, y, *o) in _blocks([[t[i] for i in big] for t in lists]):
            torch.sub(x, y, out=d)
            if o:
                d.add_(o[0])
            norms.append(_block_norm(d))
        return _total(norms)


class LockstepDistances(NamedTuple):
    """The weight distances of one lock-step measurement, in weight units (float64 accumulation).

    Fields are named as the columns of :func:`unroll_utils.trajectory.run_lockstep`'s table.
    """

    ve: float              # ‖(w_t + u) − w′_t‖₂, the verification error of M″ = M + u
    delta_w: float         # ‖w_t − w_0‖₂, the Δw of the unlearning error
    dist_retrained: float  # ‖w_t − w′_t‖₂, the VE of doing no unlearning at all


def lockstep_distances(w_orig, w_retrained, w_initial, undo=None) -> LockstepDistances:
    """VE, ‖w_t − w_0‖₂ and ‖w_t − w′_t‖₂ in one pass over the weights (notebook 04, eq. (1)).

    The values of ``weight_distance(w_orig, w_retrained, offset=undo)``,
    ``weight_distance(w_orig, w_initial)`` and ``weight_distance(w_orig, w_retrained)`` (bit for
    bit when all tensors of a position share one dtype, as a model's do), but each weight tensor is
    streamed from memory once instead of three times: per block of a large CPU tensor,
    d = w_t − w′_t gives ‖w_t − w′_t‖, d += u gives VE and d = w_t − w_0 gives Δw, all in one
    cache-resident scratch buffer; smaller tensors, and all tensors on accelerators, go through
    fused ``torch._foreach`` ops as in :func:`weight_distance`. Identical weights (and u = 0) give
    exactly 0.0.

    Args:
        w_orig: w_t, the weights of the original model M: a model or name → tensor mapping (models
            and mappings are paired by parameter name, wrapper prefixes stripped), a single (P,)
            tensor or a list of tensors (e.g. :func:`model_weights`; lists are paired by
            position, the fast path of the lock-step loop).
        w_retrained: w′_t, the naively retrained model M′, same number and shapes of tensors.
        w_initial: w_0, the weights both runs started from, same number and shapes of tensors.
        undo: u, the unlearning correction added to w_t (M″ = w_t + u, never materialised), same
            number and shapes of tensors; None means no correction (VE = ‖w_t − w′_t‖).

    Returns:
        :class:`LockstepDistances` ``(ve, delta_w, dist_retrained)``, floats in weight units (not
        normalised by the parameter count).

    Raises:
        ValueError: if ``w_retrained``, ``w_initial`` or ``undo`` do not have the same number and
            shapes of tensors as ``w_orig``, or (models, mappings) other parameter names, naming
            the first.
    """
    lists = _aligned({"w_orig": w_orig, "w_retrained": w_retrained, "w_initial": w_initial,
                      **({"undo": undo} if undo is not None else {})})
    lw, lr, l0 = lists[:3]
    lu = lists[3] if undo is not None else None
    _check_matching(lw, lr, "w_orig and w_retrained must hold the same number of tensors with the "
                            "same shapes")
    _check_matching(lw, l0, "w_initial must match w_orig in number and shapes of tensors")
    if lu is not None:
        _check_matching(lw, lu, "undo must match w_orig in number and shapes of tensors")
    n_ve: list[torch.Tensor] = []
    n_dw: list[torch.Tensor] = []
    n_dr: list[torch.Tensor] = []
    with torch.no_grad():
        big, small = _partition(lists)
        if small:  # same ops, in the same order, as the three weight_distance calls
            w = [lw[i].detach() for i in small]
            diff = torch._foreach_sub(w, [lr[i].detach() for i in small])
            n_dr += torch._foreach_norm(diff, 2, dtype=torch.float64)
            if lu is not None:
                torch._foreach_add_(diff, [lu[i].detach() for i in small])
                n_ve += torch._foreach_norm(diff, 2, dtype=torch.float64)
            del diff
            diff = torch._foreach_sub(w, [l0[i].detach() for i in small])
            n_dw += torch._foreach_norm(diff, 2, dtype=torch.float64)
            del diff
        for d, (x, y, z, *u) in _blocks([[t[i] for i in big] for t in lists]):
            torch.sub(x, y, out=d)
            n_dr.append(_block_norm(d))
            if u:
                d.add_(u[0])
                n_ve.append(_block_norm(d))
            torch.sub(x, z, out=d)
            n_dw.append(_block_norm(d))
        dist_retrained = _total(n_dr)
        return LockstepDistances(ve=_total(n_ve) if lu is not None else dist_retrained,
                                 delta_w=_total(n_dw), dist_retrained=dist_retrained)


_BLOCK = 1 << 16  # elements per CPU block (256 KiB in float32): the difference stays in cache


def _partition(lists: list[list[torch.Tensor]]) -> tuple[list[int], list[int]]:
    """Indices for the blockwise CPU path and for the foreach path, tensor by tensor.

    Tensors larger than ``_BLOCK`` go blockwise if, in every list, they are CPU floats with the
    dtype of the first list's tensor; otherwise every tensor goes through the foreach path.
    """
    ref = lists[0]
    big = [i for i, x in enumerate(ref) if x.numel() > _BLOCK]
    if not all(t[i].device.type == "cpu" and t[i].is_floating_point() and t[i].dtype == ref[i].dtype
               for i in big for t in lists):
        big = []
    taken = set(big)
    return big, [i for i in range(len(ref)) if i not in taken]


def _blocks(lists: list[list[torch.Tensor]]):
    """Walk matching CPU tensors block by block through one reused scratch buffer per dtype.

    The foreach path materialises the whole difference (45 MB for ResNet-18, fresh pages at every
    call); here each block of ``_BLOCK`` elements is differenced into a cache-sized buffer and
    reduced at once. Same float64 accumulation, same result up to the summation order.

    Yields:
        ``(d, slices)``: ``d`` an uninitialised scratch view of the block's length (first list's
        dtype), ``slices`` the block of every list's tensor, flattened and detached.
    """
    scratch: dict[torch.dtype, torch.Tensor] = {}
    for tensors in zip(*lists):
        flat = [t.detach().reshape(-1) for t in tensors]
        dtype, n = flat[0].dtype, flat[0].numel()
        buf = scratch.get(dtype)
        if buf is None:
            buf = scratch[dtype] = torch.empty(_BLOCK, dtype=dtype)
        for s in range(0, max(n, 1), _BLOCK):  # an empty tensor contributes one zero norm
            e = min(s + _BLOCK, n)
            yield buf[: e - s], [f[s:e] for f in flat]


def _block_norm(d: torch.Tensor) -> torch.Tensor:
    """‖d‖₂ of one cache-resident block as a float64 scalar: one BLAS dot product in d's dtype
    (cheaper on the CPU than a float64-accumulating norm, see benchmarks/README.md; its rounding,
    ~1e-7 relative for float32, is that of the float32 differences themselves)."""
    return torch.dot(d, d).to(torch.float64).sqrt()


def _total(norms: list[torch.Tensor]) -> float:
    """√(Σ norm²) of per-tensor or per-block float64 norms."""
    return float(torch.stack(norms).square().sum().sqrt())
