"""Where the experiments run, and how to make a run repeat bit for bit there.

The reference code (cleverhans-lab/unrolling-sgd, e.g. ``Unlearning/correlation_verification.py``)
hard-codes ``.cuda()``, wraps every model in ``nn.DataParallel`` and sets ``cudnn.benchmark=True``
with no seeds, so two runs of the same job differ. Here a run picks one
device (:func:`resolve_device`, ``"auto"`` = CUDA when present), and :func:`make_deterministic`
switches PyTorch to its deterministic kernels (cuDNN autotuning off, deterministic cuDNN and
cuBLAS algorithms). Whether that is enough on a given machine is measured, not assumed:
:func:`repeat_distance` runs the same job twice and returns the weight distance of the two results
(0.0 when the run is bit-identical; otherwise that distance is the noise floor of any VE measured
there).
"""

from __future__ import annotations

import os
import platform
from typing import Callable

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a device name.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``torch.device``.

    Raises:
        ValueError: an unknown name, or ``"cuda"`` on a machine without CUDA (the message names
            the ``device`` parameter and the allowed values).
    """
    if not isinstance(name, str) or not (name in DEVICES or name.startswith("cuda:")):
        raise ValueError(f"device must be one of {DEVICES} (or 'cuda:N'); got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device must be 'cpu' or 'auto' on a machine without CUDA; got {name!r}")
    return torch.device(name)


def make_deterministic(device: torch.device | str = "cpu") -> dict:
    """Switch PyTorch to deterministic kernels for runs on ``device``; return the settings made.

    Sets ``torch.backends.cudnn.benchmark = False`` (no autotuning: the algorithm no longer
    depends on timing), ``torch.backends.cudnn.deterministic = True``,
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an operation without a
    deterministic implementation warns instead of failing) and, for CUDA, the cuBLAS workspace
    setting ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` that deterministic cuBLAS needs (only if it is not
    set already; it takes effect only if set before the first cuBLAS call of the process, so call
    this function before any CUDA work). These settings are global for the process.

    Args:
        device: the device the run will use (``torch.device`` or name).

    Returns:
        dict of what was set (to record next to results): ``cudnn_benchmark``,
        ``cudnn_deterministic``, ``deterministic_algorithms``, ``cublas_workspace_config``.

    Source: PyTorch "Reproducibility" notes (docs.pytorch.org/docs/stable/notes/randomness.html).
    """
    device = torch.device(device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")}


def cpu_model() -> str:
    """The CPU's model name: ``model name`` from /proc/cpuinfo (Linux), else
    ``platform.processor()``, else ``platform.machine()``, else ``"unknown"``.

    Returns:
        The name as a string (never empty).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: torch.device | str) -> dict:
    """What decides the floating-point results besides the configuration: device type, torch
    version, intra-op thread count, the CPU model (kernel paths differ between CPUs) and, on CUDA,
    the GPU name and the CUDA and cuDNN versions. Record it with results; :func:`key_environment`
    is the part that keys caches and checkpoints.

    Args:
        device: the device the run uses (``torch.device`` or name).

    Returns:
        dict with ``device``, ``torch``, ``intra_op_threads``, ``cpu`` and, on CUDA, ``gpu``,
        ``cuda``, ``cudnn``.
    """
    device = torch.device(device)
    env = {"device": device.type, "torch": torch.__version__,
           "intra_op_threads": torch.get_num_threads(), "cpu": cpu_model()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def key_environment(env: dict) -> dict:
    """The part of :func:`environment` that keys caches and checkpoints (a cache made under another
    environment is not reused).

    Args:
        env: a dict from :func:`environment`.

    Returns:
        ``env`` itself on the CPU; on a GPU, ``env`` without the host CPU's model.
    """
    return {k: v for k, v in env.items() if not (k == "cpu" and env["device"] == "cuda")}


def repeat_distance(run: Callable[[], nn.Module | list[torch.Tensor]]) -> float:
    """Run a job twice and return ‖w^(1) − w^(2)‖₂ of its two results: the determinism floor.

    Args:
        run: zero-argument function that trains from scratch (its own seeds) and returns a model
            or a list of weight tensors.

    Returns:
        The weight distance (float64 accumulation); 0.0 exactly when the runs are bit-identical.
        Any VE measured on this machine is only meaningful above this floor.

    Raises:
        ValueError: if the two results differ in number or shapes of tensors.
    """
    first, second = run(), run()
    a = list(first.parameters()) if isinstance(first, nn.Module) else list(first)
    b = list(second.parameters()) if isinstance(second, nn.Module) else list(second)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("run must return models (or weight lists) of the same shapes each time")
    with torch.no_grad():
        total = sum(float((x.detach().double() - y.detach().double()).square().sum())
                    for x, y in zip(a, b))
    return total ** 0.5
