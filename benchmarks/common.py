"""Timing and memory helpers shared by the benchmark rows.

* :func:`timed_interleaved` runs several callables with warm-up runs and round-robin repeats
  (the median of the repeats is reported), synchronising CUDA around each repeat, and records the peak memory of each repeat:
  on CUDA ``torch.cuda.max_memory_allocated`` above the allocation at the start of the repeat (the
  peak counter is reset before each repeat); on CPU the process RSS, sampled every 5 ms by a
  background thread, above the RSS at the start of the repeat. Before the first repeat glibc is
  asked to return freed memory, so that repeat has a clean baseline; the reported peak is the
  maximum over repeats (later repeats reuse freed heap memory and may read lower).
* :func:`python_peak` runs a callable under ``tracemalloc`` (Python objects and NumPy arrays; torch
  CPU tensors are invisible to it), in a separate, untimed run because tracing slows Python down.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
try:  # glibc only; harmless elsewhere
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover
        return 0


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand freed memory back (glibc ``malloc_trim``, CUDA cache)."""
    gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:  # pragma: no cover
            pass
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Context manager: peak memory above the value at entry (bytes), CPU RSS or CUDA allocated."""

    def __init__(self, device: torch.device, interval: float = 0.005, trim: bool = True) -> None:
        self.device = device
        self.interval = interval
        self.trim = trim
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.trim:
            release_memory(self.device)
        else:
            gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = rss_bytes()
        self._max = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, rss_bytes())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, rss_bytes())
        self.peak = self._max - self._base


@dataclass
class Timing:
    """Result of :func:`timed`: per-repeat seconds, values returned, peak memory (bytes)."""

    seconds: list[float]
    values: list[Any]
    peak_mem: list[int]
    warmup: int
    extras: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def n(self) -> int:
        return len(self.seconds)

    @property
    def peak_mem_max(self) -> int:
        return max(self.peak_mem) if self.peak_mem else 0

    @property
    def spread(self) -> float:
        """(max − min) / median of the repeats, a noise indicator."""
        if len(self.seconds) < 2:
            return 0.0
        return (max(self.seconds) - min(self.seconds)) / self.median


@dataclass
class Case:
    """One thing to time: ``fn(state)`` with ``state = setup(i)`` prepared untimed (``i`` is the run
    index, negative for warm-ups); without ``setup`` the state is ``i`` itself."""

    fn: Callable[[Any], Any]
    setup: Callable[[int], Any] | None = None


def timed_interleaved(cases: dict[str, Case], device: torch.device, *, repeats: int = 3,
                      warmup: int = 1, budget_s: float | None = None,
                      min_repeats: int = 1) -> dict[str, Timing]:
    """Time several cases side by side: warm-ups, then repeats taken round-robin.

    Interleaving the repeats (A, B, C, A, B, C, ...) exposes every case to the same background
    load, so the *ratios* of the medians stay meaningful on a shared machine.

    Args:
        cases: name → :class:`Case`.
        device: for CUDA synchronisation and the memory counter.
        repeats: timed runs wanted per case (the median is reported).
        warmup: untimed runs of each case first.
        budget_s: per case, stop adding repeats once this many timed seconds are spent (at least
            ``min_repeats`` runs are always done); the number done is reported.
    """
    for w in range(warmup):
        for case in cases.values():
            state = case.setup(-1 - w) if case.setup is not None else -1 - w
            case.fn(state)
            del state
    out = {name: Timing([], [], [], warmup) for name in cases}
    for i in range(repeats):
        for name, case in cases.items():
            tm = out[name]
            if budget_s is not None and i >= min_repeats and sum(tm.seconds) >= budget_s:
                continue
            state = case.setup(i) if case.setup is not None else i
            # only the first repeat starts from trimmed memory (a clean RSS baseline); the others
            # reuse the allocator's free lists, as a training loop does
            with PeakMemory(device, trim=(i == 0)) as mem:
                sync(device)
                t0 = time.perf_counter()
                value = case.fn(state)
                sync(device)
                dt = time.perf_counter() - t0
            del state
            tm.seconds.append(dt)
            tm.values.append(value)
            tm.peak_mem.append(mem.peak)
    return out


def timed(fn: Callable[[Any], Any], device: torch.device, *, setup=None, **kwargs) -> Timing:
    """:func:`timed_interleaved` for a single case."""
    return timed_interleaved({"case": Case(fn, setup)}, device, **kwargs)["case"]


def python_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated through Python's allocators (objects, lists, NumPy) while ``fn`` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return max(peak - base, 0)


def mb(nbytes: float) -> float:
    return float(nbytes) / 2**20
