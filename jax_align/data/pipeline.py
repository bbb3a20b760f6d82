"""Grain input pipelines for SFT, pairwise, ranked and scored data (issue 4, items 4-8).

Stages (all deterministic for a given config and seed):

1. ``MapDataset`` over the file's records -> shard (``shard_index::shard_count``, equal sizes) -> shuffle by
   seed (reshuffled every epoch) -> repeat ``num_epochs`` -> check, decode images, preprocess, tokenize,
   truncate (:class:`RecordProcessor`). Bad records become :class:`Skipped` markers, not exceptions.
2. Optional worker processes (``worker_count``; Grain ``mp_prefetch``). Everything order-dependent (skipping,
   packing, batching) runs after it, in the main process, so the batches do not depend on the worker count.
3. Skip filter: strict mode raises :class:`DataError` at the first bad record; ``on_error="skip"`` drops it
   and counts it per epoch (the counts are part of the iterator state).
4. Batching to static shapes: G groups per batch (naive layout: G*K rows; prefix-shared: G rows; SFT: G rows,
   or packed rows), padded to the smallest length bucket that fits.

:class:`BatchIterator` yields batch dicts (see :mod:`jax_align.data.layouts` for the contract) and has
``get_state``/``set_state`` so a run restored from a checkpoint sees exactly the next batch.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from jax_align.data.collate import Collator
from jax_align.data.data_config import ON_ERROR, REQUIRED_FIELD_HELP, DataConfig
from jax_align.data.images import ImageProcessorConfig
from jax_align.data.layouts import pack_first_fit
from jax_align.data.prepare import PreparedGroup, RecordProcessor, Skipped
from jax_align.data.problems import DataError, Problem
from jax_align.data.readers import RawRecord, open_records
from jax_align.data.tokenize import ChatTokenizer

# the names callers import from here (split into data_config / prepare / collate)
__all__ = ["ON_ERROR", "REQUIRED_FIELD_HELP", "BatchIterator", "Collator", "DataConfig", "DataPipeline",
           "PreparedGroup", "RecordProcessor", "Skipped", "TooManyBadRecords"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- skip filter
class TooManyBadRecords(DataError):
    """``on_error="skip"`` gave up: too much of an epoch is bad (one line, naming the first bad record)."""


class _SkipFilterIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, on_error: str, records_per_epoch: int = 0,
                 max_skip_fraction: float = 1.0):
        super().__init__(parent)
        self._on_error = on_error
        self._records_per_epoch = records_per_epoch
        self._max_skip_fraction = max_skip_fraction
        self.skipped: dict[str, int] = {}
        self.first_problem: dict[str, str] = {}
        self._first: dict[str, Problem] = {}
        self._good: dict[str, int] = {}

    def _give_up(self, key: str) -> None:
        """Stop instead of skipping forever: more than ``max_skip_fraction`` of the epoch is bad, or all of it."""
        n, bad = self._records_per_epoch, self.skipped[key]
        if n <= 0:
            return
        if bad >= n:
            why = f"all {n} records of epoch {key} are bad: no good record to train on"
        elif bad > self._max_skip_fraction * n:
            why = (f"{bad} bad and {self._good.get(key, 0)} good records so far of the {n} in epoch {key}: more "
                   f"than data.max_skip_fraction={self._max_skip_fraction:g} of the epoch is bad")
        else:
            return
        first = self._first[key]
        raise TooManyBadRecords([Problem(first.path, first.record, first.field,
                                         f"{first.message} [on_error=skip stopped: {why}]")])

    def __next__(self):
        while True:
            element = next(self._parent)
            if isinstance(element, Skipped):
                if self._on_error == "strict":
                    raise DataError(element.problems)
                key = str(element.epoch)
                self.skipped[key] = self.skipped.get(key, 0) + 1
                self.first_problem.setdefault(key, str(element.problems[0]))
                self._first.setdefault(key, element.problems[0])
                self._give_up(key)
                continue
            self._good[str(element.epoch)] = self._good.get(str(element.epoch), 0) + 1
            element.skipped_in_epoch = self.skipped.get(str(element.epoch), 0)
            element.skipped_per_epoch = dict(self.skipped)
            return element

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "skipped": dict(self.skipped)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.skipped = {str(k): int(v) for k, v in state["skipped"].items()}


class _SkipFilterIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, on_error: str, records_per_epoch: int = 0,
                 max_skip_fraction: float = 1.0):
        super().__init__(parent)
        self._on_error = on_error
        self._records_per_epoch = records_per_epoch
        self._max_skip_fraction = max_skip_fraction
        self.last_iterator: _SkipFilterIterator | None = None

    def __iter__(self) -> _SkipFilterIterator:
        it = _SkipFilterIterator(self._parent.__iter__(), self._on_error, self._records_per_epoch,
                                 self._max_skip_fraction)
        self.last_iterator = it
        return it


class _PackWindow(grain.experimental.FlatMapTransform):
    """A window of SFT examples -> packed rows (lists of examples), first fit in arrival order."""

    max_fan_out = 1 << 16

    def __init__(self, capacity: int, max_images: int, length_layout: str = "naive"):
        self.capacity = capacity
        self.max_images = max_images
        self.length_layout = length_layout

    def flat_map(self, window: Sequence[PreparedGroup]) -> list[list[PreparedGroup]]:
        lengths = [g.tokens.length(self.length_layout) for g in window]
        counts = [len(g.pixel_values) for g in window]
        return [
            [window[i] for i in row]
            for row in pack_first_fit(lengths, counts, self.capacity, self.max_images)
        ]


# ------------------------------------------------------------------------------------------------- pipeline
class BatchIterator:
    """Yields batch dicts; ``get_state``/``set_state`` round-trip through JSON (checkpoint with the model)."""

    def __init__(self, grain_iterator: grain.DatasetIterator, skip_filter: _SkipFilterIterDataset):
        self.grain_iterator = grain_iterator
        self._skip_filter = skip_filter
        self.last_meta: dict[str, Any] = {}
        self._epoch: int | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch, meta = next(self.grain_iterator)
        except StopIteration:
            if self._epoch is not None:
                self._report_epoch(self._epoch)
            raise
        if self._epoch is not None and meta["epoch"] != self._epoch:
            self._report_epoch(self._epoch)
        self._epoch = meta["epoch"]
        self.last_meta = meta
        return batch

    def _report_epoch(self, epoch: int) -> None:
        n = self.skipped_per_epoch().get(str(epoch), 0)
        if n:
            it = self._skip_filter.last_iterator
            first = it.first_problem.get(str(epoch), "") if it is not None else ""
            log.warning("data epoch %d: skipped %d bad records (first: %s)", epoch, n, first)

    def skipped_per_epoch(self) -> dict[str, int]:
        """Bad records skipped so far, by epoch (``on_error="skip"``)."""
        it = self._skip_filter.last_iterator
        return dict(it.skipped) if it is not None else {}

    def metrics(self) -> dict[str, float]:
        """Scalars for the training metrics: current epoch and bad records skipped in it."""
        epoch = self.last_meta.get("epoch", 0)
        return {
            "data/epoch": float(epoch),
            "data/skipped_records": float(self.skipped_per_epoch().get(str(epoch), 0)),
        }

    def get_state(self) -> dict[str, Any]:
        return self.grain_iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.grain_iterator.set_state(state)

    def close(self) -> None:
        close = getattr(self.grain_iterator, "close", None)
        if close is not None:
            close()


class DataPipeline:
    """The input pipeline for one data file.

    ``tokenizer`` defaults to the checkpoint's (:meth:`ChatTokenizer.from_model_dir`); ``reference_logps``
    (float32 [num_records, K], NaN = unknown, e.g. from :class:`~jax_align.data.ref_cache.ReferenceLogpCache`)
    fills ``reference_logps`` by record index.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        tokenizer: ChatTokenizer | None = None,
        reference_logps: np.ndarray | None = None,
    ):
        self.cfg = cfg
        self.source = open_records(cfg.path, image_root=cfg.image_root, split=cfg.split)
        self.tokenizer = tokenizer or ChatTokenizer.from_model_dir(
            cfg.model_dir, round_weight=cfg.round_weight
        )
        self.image_cfg = ImageProcessorConfig.from_model_dir(
            cfg.model_dir, aspect_ratio=cfg.image_aspect_ratio
        )
        if reference_logps is not None and reference_logps.shape[0] != len(self.source):
            raise ValueError(
                f"reference_logps has {reference_logps.shape[0]} rows for {len(self.source)} records"
            )
        self.processor = RecordProcessor(
            cfg, self.source.path, self.source.base_dir, self.tokenizer, self.image_cfg, reference_logps
        )
        H, W = self.image_cfg.output_size
        frontend = getattr(self.tokenizer, "frontend", None)
        if frontend is not None:
            H = W = frontend.tile
        self.collator = Collator(cfg, self.tokenizer.pad_id, (3, H, W), frontend)

    def preflight(self, n: int = 64) -> None:
        """Check the first ``n`` records of this shard (parse, images, tokenization) now, so that bad data stops
        a run in seconds, before any model is built: with ``on_error=strict`` the first fault raises
        :class:`DataError`; with ``skip``, ``n`` bad records in a row do."""
        if self.records_per_epoch == 0:
            raise ValueError(f"{self.cfg.path}: no records for shard {self.cfg.shard_index} of "
                             f"{self.cfg.shard_count}")
        problems = []
        count = min(n, self.records_per_epoch)
        for i in range(count):
            out = self.processor((0, self.source[self.cfg.shard_index + i * self.cfg.shard_count]))
            if isinstance(out, Skipped):
                if self.cfg.on_error == "strict":
                    raise DataError(out.problems)
                problems.append(out.problems[0])
        if count and len(problems) == count:
            first = problems[0]
            why = f"on_error=skip stopped: the first {count} records are all bad"
            raise DataError([Problem(first.path, first.record, first.field, f"{first.message} [{why}]")])

    @property
    def records_per_epoch(self) -> int:
        """Records this shard reads per epoch (shards are equal: the remainder is dropped)."""
        return len(self.source) // self.cfg.shard_count

    def record_dataset(self) -> grain.MapDataset:
        """Shard -> shuffle -> repeat -> process, as a ``MapDataset`` of PreparedGroup | Skipped."""
        cfg = self.cfg
        n = self.records_per_epoch
        if n == 0:
            raise ValueError(f"{cfg.path}: no records for shard {cfg.shard_index} of {cfg.shard_count}")
        ds = grain.MapDataset.source(self.source)
        ds = ds.slice(slice(cfg.shard_index, n * cfg.shard_count, cfg.shard_count))
        if cfg.shuffle:
            ds = ds.shuffle(seed=cfg.seed)
        ds = ds.repeat(cfg.num_epochs)
        ds = ds.map_with_index(_EpochTagger(n))
        return ds.map(self.processor)

    def dataset(self) -> tuple[grain.IterDataset, _SkipFilterIterDataset]:
        cfg = self.cfg
        ds = self.record_dataset().to_iter_dataset(
            grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=max(2 * cfg.read_threads, 1))
        )
        if cfg.worker_count > 0:
            _allow_unparsed_absl_flags()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
                )
            )
        skip = _SkipFilterIterDataset(ds, cfg.on_error, self.records_per_epoch, cfg.max_skip_fraction)
        ds = skip
        if cfg.pack:
            ds = ds.batch(cfg.pack_window, batch_fn=list)
            ds = grain.experimental.FlatMapIterDataset(ds, _PackWindow(cfg.row_length_limit, cfg.max_images))
            ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=self.collator.packed)
        else:
            ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=self.collator.groups)
        return ds, skip

    def iterator(self, state: dict[str, Any] | None = None) -> BatchIterator:
        """A fresh iterator, optionally restored to ``state`` (from :meth:`BatchIterator.get_state`)."""
        ds, skip = self.dataset()
        it = BatchIterator(iter(ds), skip)
        if state is not None:
            it.set_state(state)
        return it


def _allow_unparsed_absl_flags() -> None:
    """Grain's worker prefetch reads an absl flag; scripts that do not use ``absl.app`` never parse flags,
    which makes that read raise (google/grain#1355, fixed after grain 0.2.18). Mark them parsed (defaults).
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _EpochTagger:
    def __init__(self, records_per_epoch: int):
        self.records_per_epoch = records_per_epoch

    def __call__(self, index: int, raw: RawRecord) -> tuple[int, RawRecord]:
        return index // self.records_per_epoch, raw
