"""The Tiny-ImageNet-200 loader on a generated folder of small JPEG files in the standard layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from unroll_utils import data as D

WNIDS = ["n02", "n01", "n03"]  # listed unsorted: class c is the c-th wnid in sorted order


def _write(path, colour, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (64, 64), colour).save(path, "JPEG", quality=100)


@pytest.fixture
def tiny(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for k, w in enumerate(sorted(WNIDS)):
        for j in range(2):
            _write(base / "train" / w / "images" / f"{w}_{j}.JPEG", (40 * k + 20 * j, 100, 200))
    _write(base / "train" / "n03" / "images" / "n03_2.JPEG", 128, mode="L")  # grayscale -> RGB
    rows = [("val_0.JPEG", "n03"), ("val_1.JPEG", "n01"), ("val_2.JPEG", "n02")]
    for i, (f, _) in enumerate(rows):
        _write(base / "val" / "images" / f, (10 * i, 50, 90))
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in rows))
    return tmp_path


def test_tiny_imagenet_layout_labels_and_values(tiny):
    ds = D.load_tiny_imagenet(tiny)
    assert ds.name == "tiny_imagenet" and ds.num_classes == 3
    assert ds.train_x.shape == (7, 3, 64, 64) and ds.test_x.shape == (3, 3, 64, 64)
    assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2, 2] and ds.test_y.tolist() == [2, 0, 1]
    mean, std = (np.array(s) for s in D.TINY_IMAGENET_STATS)
    # first image of class 1 (n02): colour (40, 100, 200); JPEG at quality 100 is within a few levels
    expected = (np.array([40, 100, 200]) / 255.0 - mean) / std
    got = ds.train_x[2].mean(dim=(1, 2)).numpy()
    assert np.allclose(got, expected, atol=3 / 255 / std.min())
    grey = (128 / 255.0 - mean) / std
    assert np.allclose(ds.train_x[6].mean(dim=(1, 2)).numpy(), grey, atol=3 / 255 / std.min())
    assert D.load_dataset("tiny_imagenet", root=tiny, max_per_class=1).train_y.tolist() == [0, 1, 2]


def test_tiny_imagenet_offline_error_names_the_folder(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        D.load_tiny_imagenet(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="max_per_class"):
        D.load_tiny_imagenet(tiny, max_per_class=0)
    ann = tiny / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99"):
        D.load_tiny_imagenet(tiny)
