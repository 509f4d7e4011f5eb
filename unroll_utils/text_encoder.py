"""The frozen text encoder: a Hugging Face transformer that maps texts to pooled feature vectors.

The paper's IMDB experiment trains a linear head on frozen ``distilbert-base-uncased`` features (max
length 512; reference ``BERT/no_bert_training_unlearning.py`` reads them from
``imdb_bert_{train,test}_pooled.pt``). The reference repository has no extraction script, so its
pooling is unknown; here it is named and selectable (:func:`pool`): ``"cls"`` (the [CLS] vector of the
last hidden state, the default) or ``"mean"`` (the attention-mask-weighted mean of the last hidden
state, the pooling all-MiniLM-L6-v2 was trained with).

:class:`TextEncoder` turns texts into (N, D) float32 features in batches (tqdm.auto bar, GPU when
present), loading the weights only at the first encode; :mod:`unroll_utils.text` holds the text
sources, their splits and the feature cache that call it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import _int

__all__ = ["POOLINGS", "pool", "TextEncoder"]

POOLINGS = ("cls", "mean")


def _hf_cache_hint() -> str:
    home = os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())
    return f"the Hugging Face cache ({home}; set HF_HOME to use another folder)"


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
    """Pool token vectors into one vector per text.

    Args:
        hidden: (N, L, D) last hidden state of the encoder.
        attention_mask: (N, L) 1 for real tokens, 0 for padding.
        pooling: ``"cls"`` (``hidden[:, 0]``, the [CLS] token) or ``"mean"`` (the mean over the
            real tokens only: Σ_l m_l h_l / Σ_l m_l).

    Returns:
        (N, D) tensor in ``hidden``'s dtype.

    Raises:
        ValueError: unknown ``pooling``, or shapes that do not match.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (N, L, D) and attention_mask (N, L); got "
                         f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    if pooling == "cls":
        return hidden[:, 0]
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class TextEncoder:
    """A frozen Hugging Face encoder that maps texts to pooled feature vectors.

    Args:
        model: a ``transformers`` encoder module (``DistilBertModel``, ``BertModel``, ...) whose
            output has ``last_hidden_state``; it is put in eval mode and never trained.
        tokenizer: the matching ``transformers`` tokenizer.
        name: the model's name in cache keys (default: ``model.config.name_or_path``).
        pooling: ``"cls"`` or ``"mean"`` (:func:`pool`).
        max_length: tokens per text after truncation, in [1, the model's position limit] (512 for
            DistilBERT and MiniLM, as the paper's IMDB features).
        batch_size: texts per forward pass, ≥ 1.
        device: ``None`` picks CUDA when present, else CPU.

    :meth:`from_pretrained` defers loading the weights until the first :meth:`encode`, so cached
    features never load the encoder.

    Raises:
        ValueError: bad ``pooling``/``max_length``/``batch_size``, no ``name`` available, or a
            tokenizer whose vocabulary holds only its special tokens (every word would become
            [UNK]: the folder it was read from lacks ``vocab.txt``/``tokenizer.json``).
    """

    def __init__(self, model, tokenizer, *, name: str | None = None, pooling: str = "cls",
                 max_length: int = 512, batch_size: int = 32, device=None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        _int("max_length", max_length, 1)
        _int("batch_size", batch_size, 1)
        if model is not None:
            name = name or getattr(model.config, "name_or_path", "") or ""
        if not name:
            raise ValueError("name is required for a model without config.name_or_path "
                             "(it is part of the feature cache key)")
        self.device = torch.device(device if device is not None else
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        self.name, self.pooling, self.max_length, self.batch_size = name, pooling, max_length, batch_size
        self.source: str | None = None  # hub name or folder, for a deferred load
        self._model, self.tokenizer = None, tokenizer
        self._local = False  # source is a local folder (set by from_pretrained)
        if tokenizer is not None:
            self._check_tokenizer(tokenizer, "the tokenizer passed")
        if model is not None:
            self._set_model(model)

    @staticmethod
    def _check_tokenizer(tokenizer, where: str) -> None:
        """ValueError if the tokenizer's vocabulary is only its special tokens ([PAD], [UNK], ...):
        ``transformers`` builds such a tokenizer, without an error, from a folder that has a
        ``tokenizer_config.json`` but neither ``vocab.txt`` nor ``tokenizer.json``; it maps every
        word to [UNK], so every text would get the same features."""
        get_vocab = getattr(tokenizer, "get_vocab", None)
        if get_vocab is None:
            return
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        if not set(get_vocab().values()) - special:
            names = sorted(getattr(tokenizer, "all_special_tokens", []) or [])
            raise ValueError(
                f"{where} has no vocabulary: only its special tokens {names}, so every word would be "
                f"encoded as {getattr(tokenizer, 'unk_token', '[UNK]')} and every text would get the same "
                f"features. The vocabulary file (vocab.txt for WordPiece models such as DistilBERT and "
                f"MiniLM, or tokenizer.json) is missing: copy the files that tokenizer.save_pretrained() "
                f"writes into the folder.")

    def _set_model(self, model) -> None:
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ValueError(f"max_length must be in [1, {limit}] for {self.name}; got {self.max_length}")
        self._model = model.to(self.device).eval().requires_grad_(False)

    @property
    def model(self):
        """The encoder module (loaded on first use after :meth:`from_pretrained`)."""
        if self._model is None:
            self._load()
        return self._model

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, name: str | None = None,
                        **kwargs) -> "TextEncoder":
        """An encoder read with ``AutoTokenizer``/``AutoModel``, loaded at the first :meth:`encode`.

        Args:
            name_or_path: a local folder (written by ``save_pretrained``) or a Hugging Face hub name
                such as ``"distilbert-base-uncased"`` (from the local cache; downloaded only with
                internet).
            name: the name in the feature cache key (default: the hub name, or the folder's name).
            **kwargs: ``pooling``, ``max_length``, ``batch_size``, ``device`` of the constructor.

        Returns:
            :class:`TextEncoder`.

        Raises:
            FileNotFoundError: a local folder that does not exist (here), or, at the first encode, a hub
                model that is neither cached nor downloadable; the message says where to put it.
        """
        text = str(name_or_path)
        local = Path(text).expanduser()
        looks_local = local.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1
        if looks_local and not local.is_dir():
            raise FileNotFoundError(f"encoder folder {local} does not exist: pass a folder written by "
                                    f"model.save_pretrained() and tokenizer.save_pretrained()")
        enc = cls(None, None, name=name or (local.name if looks_local else text), **kwargs)
        enc.source = str(local) if looks_local else text
        enc._local = looks_local
        return enc

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        if self._local:
            self._load_local(AutoModel, AutoTokenizer)
            return
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
            model = AutoModel.from_pretrained(self.source)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"could not load the encoder {self.source!r}: it is not in {_hf_cache_hint()} and "
                f"could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                f"Run once on a machine with internet (it is then cached), copy that cache here, "
                f"or pass a local folder written by save_pretrained().") from e
        self._check_tokenizer(self.tokenizer, f"the tokenizer of {self.source!r}")
        self._set_model(model)

    def _load_local(self, AutoModel, AutoTokenizer) -> None:
        """Load from a local folder; errors name the folder and what is missing in it (never the
        Hugging Face cache, which a local folder does not use)."""
        folder = Path(self.source)
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        fix = "pass a folder written by model.save_pretrained() and tokenizer.save_pretrained()"
        if "config.json" not in present:
            what = "is empty" if not present else f"has no config.json (it holds {present})"
            raise FileNotFoundError(f"encoder folder {folder} {what}: {fix}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModel.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"could not load the encoder from folder {folder} (it holds {present}; "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): {fix}") from e
        self._check_tokenizer(self.tokenizer, f"the tokenizer in {folder}")
        self._set_model(model)

    @torch.no_grad()  # not inference_mode: the features are later used in autograd (Hessians)
    def encode(self, texts: Sequence[str], *, progress: bool = True) -> torch.Tensor:
        """Features of ``texts``, row i for ``texts[i]``.

        Texts are truncated to ``max_length`` tokens and encoded in batches of similar length
        (sorted by character length, so that little padding is computed; padding does not
        enter the pooled vector). A tqdm.auto bar counts texts.

        Args:
            texts: a non-empty list of strings.
            progress: show the progress bar.

        Returns:
            (N, D) float32 on the CPU (D: the encoder's hidden size).

        Raises:
            TypeError: ``texts`` is a single string (it would be read as one text per character:
                pass ``[text]``), or an item is not a string (naming its index).
            ValueError: ``texts`` is empty.
        """
        from tqdm.auto import tqdm

        if isinstance(texts, (str, bytes)):
            raise TypeError(f"texts must be a list of strings, got one {type(texts).__name__} "
                            f"({texts[:40]!r}{'...' if len(texts) > 40 else ''}): pass [text] to encode one text")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts must be a list of strings; texts[{bad}] is "
                            f"{type(texts[bad]).__name__} {texts[bad]!r}")
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), self.model.config.hidden_size, dtype=torch.float32)
        with tqdm(total=len(texts), desc=f"encoding ({self.name})", disable=not progress,
                  mininterval=1.0, leave=False) as bar:
            for start in range(0, len(texts), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()
                         if k in ("input_ids", "attention_mask")}
                hidden = self.model(**batch).last_hidden_state
                out[torch.from_numpy(idx)] = pool(hidden, batch["attention_mask"],
                                                  self.pooling).float().cpu()
                bar.update(len(idx))
        return out
