"""The costs of the notebooks' ``small`` preset on one device: ``python -m benchmarks.cifar_small
[--device auto] [--n-train 10000] [--steps 50] [--fake-data] [--out benchmarks/out/cifar_small.json]``.

Measures, for CIFAR-10 + ResNet-18 (paper §2.0) with the deterministic settings of
:func:`unroll_utils.device.make_deterministic`: seconds per plain training step (b=128, the §2.1 recipe),
per pretraining epoch on ``--n-train`` points, per lock-step step (M and M′ at b=32, the Exp A
optimiser, VE and ‖w_t − w_0‖ measured every step), per σ solve (512 fixed points, Lanczos to 1e-3),
and the VE between two identical lock-step runs (0 when the device is deterministic; otherwise the
noise floor of every VE measured there). ``--fake-data`` writes random images in CIFAR-10's on-disk
format to a temporary folder (for a machine without the dataset or internet): the costs are those of
real data, the accuracies are not.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unroll_utils import data, device, hessian, results
from unroll_utils.losses import make_loss
from unroll_utils.pretraining import PretrainConfig, Pretrainer, load_data
from unroll_utils.trajectory import LockStepConfig, run_lockstep


def write_fake_cifar10(root: Path, n_per_batch: int = 10000, seed: int = 0) -> None:
    """Random uint8 images in the layout torchvision reads (``cifar-10-batches-py``: five training
    pickles and a test pickle, each a dict with ``data`` (n, 3072) and ``labels``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def _timed(fn, dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.perf_counter() - start


def measure(dev: torch.device, ds: data.TensorData, steps: int) -> dict:
    """The table's numbers (seconds and the determinism floor) for one device and dataset."""
    trainer = Pretrainer(PretrainConfig(dataset="cifar10", model="resnet18", epochs=2), ds, dev)
    epoch = lambda: trainer.run(stop_after=trainer.steps_per_epoch, progress=False)
    _, epoch_s = _timed(epoch, dev)  # the first epoch includes the warm-up
    _, second_s = _timed(epoch, dev)
    forget = data.select_forget_set(ds.train_x.shape[0], "batch", batch_size=32, batch_index=2)
    cfg = LockStepConfig(lr=0.1, batch_size=32, momentum=0.9, weight_decay=5e-4, sigma_every=0, eval_every=1)
    run = lambda: run_lockstep(trainer.model, ds.train_x, ds.train_y, forget, cfg, stop_after=steps,
                               progress=False)
    first, lock_s = _timed(run, dev)
    x512, y512 = ds.train_x[:512].to(dev), ds.train_y[:512].to(dev)
    (sigma, eig), sigma_s = _timed(lambda: hessian.estimate_sigma(
        first.model, make_loss("ce"), x512, y512, tol=1e-3, generator=torch.Generator().manual_seed(0)), dev)
    floor = device.repeat_distance(lambda: run().unlearned_model())
    return {"seconds_per_plain_step": second_s / trainer.steps_per_epoch, "seconds_per_epoch": second_s,
            "seconds_first_epoch": epoch_s, "seconds_per_lockstep_step": lock_s / steps,
            "seconds_per_sigma_solve": sigma_s, "sigma_hvps": eig.n_hvp, "sigma": sigma,
            "ve_of_two_identical_runs": floor, "lockstep_steps": steps, "n_train": ds.train_x.shape[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cifar_small", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=list(device.DEVICES))
    p.add_argument("--n-train", type=int, default=10000, help="training points (the small preset: 10,000)")
    p.add_argument("--steps", type=int, default=50, help="lock-step steps timed, >= 2")
    p.add_argument("--fake-data", action="store_true", help="random images in CIFAR-10's on-disk format")
    p.add_argument("--out", default="benchmarks/out/cifar_small.json")
    args = p.parse_args(argv)
    if args.n_train < 512 or args.steps < 2:
        p.error("--n-train must be >= 512 and --steps >= 2")
    dev = device.resolve_device(args.device)
    settings = device.make_deterministic(dev)
    with tempfile.TemporaryDirectory() as tmp:
        if args.fake_data:
            write_fake_cifar10(Path(tmp), n_per_batch=max(args.n_train // 5, 1000))
            ds = data.load_cifar("cifar10", root=tmp, verify=False)
            ds = data.TensorData(ds.train_x[:args.n_train], ds.train_y[:args.n_train], ds.test_x[:2000],
                                 ds.test_y[:2000], 10, "cifar10")
        else:
            ds = load_data("cifar10", args.n_train, 2000)
        table = measure(dev, ds, args.steps)
    table.update(environment=device.environment(dev), deterministic=settings, fake_data=args.fake_data)
    for k, v in table.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    results.atomic_write(args.out, lambda f: json.dump(table, f, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
