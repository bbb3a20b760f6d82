"""Reference log-prob cache (issue 4, item 9).

One pass over a dataset computes the reference policy's per-response log-probs with a caller-supplied
``compute_fn(batch) -> float [G, K]`` (the lead wires the model in); the result is stored under a key that
hashes the dataset file content, a fingerprint of the reference weights, the tokenizer/processing files and
the max length (plus any ``extra`` settings that change the numbers, e.g. AMP round weights). Preference
training then loads ``[num_records, K]`` and the pipeline fills ``reference_logps`` by record index instead of
running the reference model. Multi-process passes write one part per shard; the cache is complete when all
parts are there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_PROCESSING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "config.json",
)


def _hash_file(h, path: str) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def fingerprint_path(path: str) -> str:
    """sha256 of a file's content, or of every file under a directory (relative names + content)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode() + b"\0")
                _hash_file(h, full)
    else:
        _hash_file(h, path)
    return h.hexdigest()


def fingerprint_arrays(arrays: Iterable[Any]) -> str:
    """sha256 over arrays (e.g. the reference parameters' leaves in a fixed order): dtype, shape, bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def processing_fingerprint(model_dir: str) -> str:
    """sha256 of the tokenizer, chat template, image preprocessor and config files of a checkpoint dir."""
    h = hashlib.sha256()
    for name in _PROCESSING_FILES:
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            h.update(name.encode() + b"\0")
            _hash_file(h, path)
    return h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    dataset: str
    weights: str
    tokenizer: str
    max_length: int
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def digest(self) -> str:
        payload = json.dumps(
            {
                "dataset": self.dataset,
                "weights": self.weights,
                "tokenizer": self.tokenizer,
                "max_length": int(self.max_length),
                "extra": [list(x) for x in self.extra],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ReferenceLogpCache:
    """Reference log-probs for one (dataset, weights, tokenizer, max length) key under ``cache_dir``."""

    def __init__(self, cache_dir: str, key: CacheKey):
        self.cache_dir = cache_dir
        self.key = key
        self.directory = os.path.join(cache_dir, key.digest())

    @classmethod
    def for_run(
        cls,
        cache_dir: str,
        *,
        dataset_path: str,
        weights_fingerprint: str,
        model_dir: str,
        max_length: int,
        extra: Mapping[str, Any] | None = None,
    ) -> ReferenceLogpCache:
        key = CacheKey(
            dataset=fingerprint_path(dataset_path),
            weights=str(weights_fingerprint),
            tokenizer=processing_fingerprint(model_dir),
            max_length=int(max_length),
            extra=tuple(
                sorted((str(k), json.dumps(v, sort_keys=True, default=str)) for k, v in (extra or {}).items())
            ),
        )
        return cls(cache_dir, key)

    # ------------------------------------------------------------------------------------------- storage
    @property
    def _final(self) -> str:
        return os.path.join(self.directory, "logps.npy")

    def _part(self, shard_index: int, shard_count: int) -> str:
        return os.path.join(self.directory, f"part-{shard_index:05d}-of-{shard_count:05d}.npz")

    def is_complete(self) -> bool:
        return os.path.exists(self._final)

    def load(self) -> np.ndarray:
        """float32 [num_records, K]; NaN where a record was skipped or a response is absent."""
        if not self.is_complete():
            raise FileNotFoundError(f"{self.directory}: reference log-prob cache not computed")
        return np.load(self._final)

    @staticmethod
    def _atomic_save(path: str, writer: Callable[[str], None]) -> None:
        from jax_align.atomic import atomic_save

        atomic_save(path, writer)

    # ------------------------------------------------------------------------------------------- compute
    def compute(
        self,
        batches: Iterable[Mapping[str, np.ndarray]],
        compute_fn: Callable[[Mapping[str, np.ndarray]], np.ndarray],
        *,
        num_records: int,
        num_responses: int,
        shard_index: int = 0,
        shard_count: int = 1,
    ) -> np.ndarray | None:
        """Run ``compute_fn`` over this shard's batches (which carry ``record_index``, ``group_mask`` and
        ``response_mask``), store the part, and merge when every shard's part exists. Returns the merged
        ``[num_records, K]`` array, or None while other shards are missing.
        """
        indices, values = [], []
        for batch in batches:
            out = np.asarray(compute_fn(batch), dtype=np.float32)
            mask = np.asarray(batch["group_mask"], bool)
            expected = np.asarray(batch["response_mask"]).shape
            if out.shape != expected:
                raise ValueError(f"compute_fn returned shape {out.shape}; expected [G, K] = {expected}")
            out = np.where(batch["response_mask"], out, np.nan)
            indices.append(np.asarray(batch["record_index"])[mask])
            values.append(out[mask])
        idx = np.concatenate(indices) if indices else np.zeros((0,), np.int32)
        val = np.concatenate(values) if values else np.zeros((0, num_responses), np.float32)
        self._atomic_save(
            self._part(shard_index, shard_count),
            lambda p: np.savez(
                p, indices=idx, values=val, num_records=num_records, num_responses=num_responses
            ),
        )
        return self._merge(shard_count, num_records, num_responses)

    def _merge(self, shard_count: int, num_records: int, num_responses: int) -> np.ndarray | None:
        parts = [self._part(i, shard_count) for i in range(shard_count)]
        if not all(os.path.exists(p) for p in parts):
            return None
        table = np.full((num_records, num_responses), np.nan, np.float32)
        for p in parts:
            with np.load(p) as z:
                table[z["indices"]] = z["values"]
        self._atomic_save(self._final, lambda p: np.save(p, table))
        meta = {
            "key": self.key.__dict__ | {"extra": [list(x) for x in self.key.extra]},
            "num_records": num_records,
            "num_responses": num_responses,
            "shards": shard_count,
        }
        self._atomic_save(os.path.join(self.directory, "meta.json"), lambda p: _write_json(p, meta))
        return table

    def get_or_compute(
        self,
        make_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
        compute_fn: Callable[[Mapping[str, np.ndarray]], np.ndarray],
        *,
        num_records: int,
        num_responses: int,
    ) -> np.ndarray:
        """The cached table, computing it (single process) only if this key has none."""
        if self.is_complete():
            return self.load()
        table = self.compute(make_batches(), compute_fn, num_records=num_records, num_responses=num_responses)
        assert table is not None
        return table


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def reference_pass_batches(cfg, *, tokenizer=None) -> tuple[Iterable[Mapping[str, np.ndarray]], int, int]:
    """Batches for a reference pass over ``cfg``'s shard: one epoch, file order, bad records skipped.

    Returns ``(batches, num_records, K)``.
    """
    from jax_align.data.pipeline import DataPipeline

    pass_cfg = replace(cfg, shuffle=False, num_epochs=1, on_error="skip", drop_remainder=False)
    pipeline = DataPipeline(pass_cfg, tokenizer=tokenizer)
    return pipeline.iterator(), len(pipeline.source), pass_cfg.responses_per_group
