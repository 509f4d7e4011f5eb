"""Results tables and checkpoints, written atomically (a crash never leaves a half-written file)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write a file through a temporary sibling and ``os.replace`` it into place.

    Args:
        path: destination; parent folders are created.
        write: called with the open temporary file object.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return _jsonable(x.item())
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def save_table(table: pd.DataFrame, path: str | os.PathLike, config: dict | None = None,
               summary: dict | None = None) -> tuple[Path, Path]:
    """Save a tidy results table as ``<path>.csv`` and ``<path>.json`` (with config and summary).

    Args:
        table: one row per measurement.
        path: destination without suffix (a ``.csv``/``.json`` suffix is stripped).
        config: the full configuration of the run (JSON-serialisable values).
        summary: scalar results (e.g. correlations).

    Returns:
        (csv_path, json_path).
    """
    base = Path(path)
    if base.suffix in (".csv", ".json"):
        base = base.with_suffix("")
    csv_path = atomic_write(base.with_suffix(".csv"), lambda f: table.to_csv(f, index=False))
    payload = {"config": _jsonable(config or {}), "summary": _jsonable(summary or {}),
               "rows": _jsonable(table.to_dict(orient="records"))}
    json_path = atomic_write(base.with_suffix(".json"),
                             lambda f: json.dump(payload, f, indent=1, allow_nan=False))
    return csv_path, json_path


def load_table(path: str | os.PathLike) -> tuple[pd.DataFrame, dict, dict]:
    """Read back what :func:`save_table` wrote.

    Args:
        path: the table's path, with or without ``.csv``/``.json``.

    Returns:
        (table, config, summary): the DataFrame and the two dicts of the ``.json``.

    Raises:
        FileNotFoundError: either file missing.
    """
    base = Path(path)
    if base.suffix in (".csv", ".json"):
        base = base.with_suffix("")
    payload = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
    return pd.read_csv(base.with_suffix(".csv")), payload["config"], payload["summary"]


def fingerprint(config: dict) -> str:
    """A short stable hash of a configuration (to refuse resuming a run with another config).

    Args:
        config: a dict; what JSON lacks is converted (0-d arrays and tensors to numbers, non-finite
            floats to null, other objects to their ``str``).

    Returns:
        The first 16 hex digits of the SHA-256 of its sorted-key JSON.
    """
    blob = json.dumps(_jsonable(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` a state dict atomically.

    Args:
        state: any picklable object.
        path: the file to write (its folder is created).

    Returns:
        The path written.
    """
    import torch  # here, so that tables and the sweep runner do not pay for importing torch

    return atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=False``: load only files
    you wrote).

    Args:
        path: the file.
        map_location: as ``torch.load``'s (default: tensors onto the CPU).

    Returns:
        The saved object.
    """
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


def load_or_run(key: str, fn: Callable[[], Any], cache_dir: str | os.PathLike,
                overwrite: bool = False) -> Any:
    """Return the cached result of ``fn()`` under ``key``, computing and caching it if absent.

    The cache is a ``torch.save`` file ``<cache_dir>/<key>.pt`` written atomically, so notebooks
    re-run instantly and a killed computation never leaves a corrupt cache entry. Put every
    parameter that changes the result into ``key`` (e.g. ``f"sd_sweep_smoke={SMOKE}_seed={SEED}"``).

    Args:
        key: file-name-safe identifier (letters, digits, ``._-=``).
        fn: zero-argument function whose result is picklable (tensors, DataFrames, dicts...).
        cache_dir: folder for the cache files (created).
        overwrite: recompute even if cached.

    Returns:
        ``fn()``'s result, or the cached one.

    Raises:
        ValueError: if ``key`` has characters outside ``[A-Za-z0-9._=-]``.
    """
    import re

    if not re.fullmatch(r"[A-Za-z0-9._=-]+", key):
        raise ValueError(f"key must match [A-Za-z0-9._=-]+; got {key!r}")
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists() and not overwrite:
        return load_checkpoint(path, map_location=None)
    value = fn()
    save_checkpoint(value, path)
    return value
