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
from dataclasses import dataclass, field
from typing import Any

import grain
import numpy as np

from jax_align.data.buckets import bucket_for, normalize_buckets
from jax_align.data.images import ImageProcessorConfig, preprocess_image
from jax_align.data.layouts import (
    RowBuilder,
    assemble_rows,
    naive_rows,
    pack_first_fit,
    prefix_shared_row,
)
from jax_align.data.problems import DataError, Problem
from jax_align.data.readers import RawRecord, open_records
from jax_align.data.records import FORMATS, PreferenceGroup
from jax_align.data.tokenize import LAYOUTS, ChatTokenizer, TokenizedGroup
from jax_align.data.validate import RecordChecker
from jax_align.preference import ABSENT

log = logging.getLogger(__name__)

ON_ERROR = ("strict", "skip")
REQUIRED_FIELD_HELP = {
    "margin": "missing field: MM-DPO's reward-margin beta needs each pair's reward margin (spec §4.3); write them "
              "with `jax-align prefs margins`, or set loss.mmdpo_beta=fixed|batch_implicit",
}


@dataclass(frozen=True)
class DataConfig:
    """What the pipeline reads and how it batches.

    ``batch_size``: groups per batch (SFT without packing: examples = rows; SFT with ``pack``: rows).
    ``num_responses``: K, the static responses per group (default: 2 pairwise, 1 SFT, 4 ranked/scored);
    groups with fewer are padded (``response_mask``), records with more are bad records.
    ``max_images``: image slots per row (``pixel_values`` [B, max_images, C, H, W]).
    ``buckets``: row lengths; ``max_length`` (default: the largest bucket) is the truncation limit.
    ``round_weight``: AMP per-round token weight increment (spec 5.2; 0 = all targets weigh 1).
    ``critique_prompt``: judge each response in MM-RLHF's critic prompt with its critique as the target
    (:mod:`jax_align.data.critique`); batches then also carry ``critique_mask`` [G, K] and ``is_tie`` [G].
    """

    path: str
    format: str
    model_dir: str
    batch_size: int
    buckets: tuple[int, ...] = (512, 1024, 2048)
    max_length: int | None = None
    layout: str = "prefix_shared"
    pack: bool = False
    pack_window: int = 64
    num_responses: int | None = None
    max_images: int = 1
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    shard_index: int = 0
    shard_count: int = 1
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    on_error: str = "strict"
    round_weight: float = 0.0
    image_aspect_ratio: str | None = None
    min_response_tokens: int = 1
    max_prompt_cut: float = 0.5
    require_images: bool | None = None
    drop_remainder: bool = False
    image_root: str | None = None
    split: str | None = None
    critique_prompt: bool = False
    # on_error="skip" stops once more than this fraction of an epoch's records is bad (or none is good)
    max_skip_fraction: float = 0.5
    # image paths outside the data file's directory (absolute or ../): refused when False
    allow_absolute_paths: bool = True
    max_image_pixels: int | None = None  # image decode limits (None: ImageLimits.default())
    max_image_aspect_ratio: float | None = None
    required_fields: tuple[str, ...] = ()  # optional record fields the consumer cannot do without (mmdpo: margin)
    # ranked/scored records (K >= 2 scored responses) are cut to their best/worst pair (EACO, spec §1.2 step 5;
    # jax_align.data.pairing.reduce_to_pair) so a pairwise stage (dpo) trains on them
    pair_from_ranked: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {self.format!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.pack and self.format != "sft":
            raise ValueError("data.pack is for SFT data; preference groups use the prefix-shared layout")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} not in [0, {self.shard_count})")
        if self.batch_size <= 0:
            raise ValueError("data.batch_size must be positive")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")

    @property
    def image_limits(self):
        from jax_align.data.images import ImageLimits

        d = ImageLimits.default()
        return ImageLimits(
            max_pixels=d.max_pixels if self.max_image_pixels is None else int(self.max_image_pixels),
            max_aspect_ratio=d.max_aspect_ratio if self.max_image_aspect_ratio is None
            else float(self.max_image_aspect_ratio),
        )

    @property
    def responses_per_group(self) -> int:
        if self.num_responses is not None:
            return int(self.num_responses)
        return {"sft": 1, "pairwise": 2}.get(self.format, 4)

    @property
    def row_length_limit(self) -> int:
        return int(self.max_length or max(self.buckets))

    def with_shard_options(self, options: grain.sharding.ShardOptions) -> DataConfig:
        """This config sharded as a Grain ``ShardOptions`` (e.g. ``ShardByJaxProcess()``) says."""
        from dataclasses import replace

        return replace(self, shard_index=options.shard_index, shard_count=options.shard_count)


@dataclass
class PreparedGroup:
    """A checked, tokenized, truncated record with its preprocessed images and per-response targets."""

    record_index: int
    number: int
    epoch: int
    kind: str
    tokens: TokenizedGroup
    pixel_values: np.ndarray  # float32 [n_images, C, H, W]; AnyRes: a tuple of frontends.ProcessedImage
    scores: np.ndarray  # float32 [K] (NaN: none)
    levels: np.ndarray  # int32 [K] quality levels (jax_align.preference: higher = better; ABSENT padding)
    dimension_scores: np.ndarray | None  # float32 [K, D]
    margin: float
    reference_logps: np.ndarray  # float32 [K] (NaN: unknown)
    critique_mask: np.ndarray | None = None  # bool [K]: response k has a critique (critique_prompt data)
    is_tie: bool = False
    source_order: np.ndarray | None = None  # int32 [K]: position of response k in its record (-1: padding)
    skipped_in_epoch: int = 0
    skipped_per_epoch: dict[str, int] = field(default_factory=dict)


@dataclass
class Skipped:
    """A bad record travelling through the pipeline to the skip filter."""

    epoch: int
    problems: tuple[Problem, ...]


class RecordProcessor:
    """``(epoch, RawRecord) -> PreparedGroup | Skipped`` (picklable: runs in Grain workers)."""

    def __init__(
        self,
        cfg: DataConfig,
        path: str,
        base_dir: str,
        tokenizer: ChatTokenizer,
        image_cfg: ImageProcessorConfig,
        reference_logps: np.ndarray | None = None,
    ):
        self.cfg = cfg
        self.path = path
        self.base_dir = base_dir
        self.image_cfg = image_cfg
        self.reference_logps = reference_logps
        self.checker = RecordChecker(
            fmt=cfg.format,
            require_images=cfg.require_images,
            tokenizer=tokenizer,
            max_length=cfg.row_length_limit,
            layout=cfg.layout,
            min_response_tokens=cfg.min_response_tokens,
            max_prompt_cut=cfg.max_prompt_cut,
            max_images=cfg.max_images,
            max_responses=cfg.responses_per_group,
            critique_prompt=cfg.critique_prompt,
            allow_absolute_paths=cfg.allow_absolute_paths,
            image_limits=cfg.image_limits,
        )

    def __call__(self, item: tuple[int, RawRecord]) -> PreparedGroup | Skipped:
        epoch, raw = item
        if self.cfg.pair_from_ranked:
            from dataclasses import replace

            from jax_align.data.pairing import reduce_to_pair

            raw = replace(raw, data=reduce_to_pair(raw.data))
        result = self.checker.check(raw, self.path, self.base_dir, keep_images=True)
        if not result.ok:
            return Skipped(epoch, tuple(result.problems))
        example, tokens = result.example, result.tokens
        missing = [f for f in self.cfg.required_fields if getattr(example, f, None) is None]
        if missing:
            return Skipped(epoch, tuple(Problem(self.path, raw.number, f, REQUIRED_FIELD_HELP.get(f, "missing field"))
                                        for f in missing))
        K = self.cfg.responses_per_group
        C = 3
        H, W = self.image_cfg.output_size
        frontend = getattr(self.checker.tokenizer, "frontend", None)
        if frontend is not None:  # AnyRes: per-image tiles + gather plan (models/frontends.py)
            pixels = tuple(frontend.preprocess(img) for img in result.images)
        else:
            pixels = np.zeros((len(result.images), C, H, W), np.float32)
            for i, img in enumerate(result.images):
                pixels[i] = preprocess_image(img, self.image_cfg)
        n = len(tokens.responses)
        scores = np.full((K,), np.nan, np.float32)
        levels = np.full((K,), ABSENT, np.int32)
        source = np.full((K,), -1, np.int32)
        source[: len(tokens.responses)] = np.arange(len(tokens.responses))
        refs = np.full((K,), np.nan, np.float32)
        dims = None
        margin = 0.0
        kind = "sft"
        critiques = None
        is_tie = False
        if isinstance(example, PreferenceGroup):
            is_tie = example.is_tie
            if self.cfg.critique_prompt:
                from jax_align.data.critique import critique_mask

                critiques = np.zeros((K,), bool)
                critiques[:n] = critique_mask(example)
            kind = example.kind
            levels[:n] = example.levels()
            if example.scores is not None:
                scores[:n] = example.scores
            if example.dimension_scores is not None:
                dims = np.asarray(example.dimension_scores, np.float32)
            if example.reference_logps is not None:
                refs[:n] = [np.nan if v is None else v for v in example.reference_logps]
            margin = 0.0 if example.margin is None else float(example.margin)
            if example.source_order is not None:
                source[:n] = example.source_order
        else:
            levels[:n] = 0
        if self.reference_logps is not None:
            cached = self.reference_logps[raw.index]
            refs[: cached.shape[0]] = np.where(np.isnan(cached), refs[: cached.shape[0]], cached)
        return PreparedGroup(
            record_index=raw.index,
            number=raw.number,
            epoch=epoch,
            kind=kind,
            tokens=tokens,
            pixel_values=pixels,
            scores=scores,
            levels=levels,
            dimension_scores=dims,
            margin=margin,
            reference_logps=refs,
            critique_mask=critiques,
            is_tie=is_tie,
            source_order=source,
        )


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


# ------------------------------------------------------------------------------------------------ collation
class Collator:
    """Builds the batch dict (+ metadata) from groups or packed rows; picklable."""

    def __init__(self, cfg: DataConfig, pad_id: int, image_shape: tuple[int, int, int], frontend=None):
        self.cfg = cfg
        self.buckets = normalize_buckets(cfg.buckets)
        self.pad_id = pad_id
        self.image_shape = image_shape
        self.frontend = frontend  # AnyRes front end: tiles padded to its maximum, plans in the batch

    def _meta(self, groups: Sequence[PreparedGroup]) -> dict[str, Any]:
        last = groups[-1]
        return {
            "epoch": last.epoch,
            "skipped_in_epoch": last.skipped_in_epoch,
            "skipped_per_epoch": dict(last.skipped_per_epoch),
            "num_groups": len(groups),
            "records": [g.number for g in groups],
            "group_epochs": [g.epoch for g in groups],
        }

    def groups(self, groups: Sequence[PreparedGroup]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        cfg = self.cfg
        G, K = cfg.batch_size, cfg.responses_per_group
        sft = cfg.format == "sft"
        rows: list[RowBuilder] = []
        if sft:
            for g, grp in enumerate(groups):
                row = RowBuilder()
                row.add_sequence(grp.tokens, 0, g, list(grp.pixel_values))
                rows.append(row)
            num_rows = G
        elif cfg.layout == "naive":
            for g, grp in enumerate(groups):
                built = naive_rows(grp.tokens, g, list(grp.pixel_values))
                rows.extend(built + [RowBuilder() for _ in range(K - len(built))])
            num_rows = G * K
        else:
            rows = [prefix_shared_row(grp.tokens, g, list(grp.pixel_values)) for g, grp in enumerate(groups)]
            num_rows = G
        batch = self._assemble(rows, num_rows, None if sft else (G, K))
        if sft:  # which record each row holds (``jax-align score``), as preference batches have
            batch.update({k: v for k, v in self._group_arrays(groups, G, 1).items()
                          if k in ("group_mask", "record_index", "response_source")})
        else:
            batch.update(self._group_arrays(groups, G, K))
        return batch, self._meta(groups)

    def packed(
        self, packed_rows: Sequence[Sequence[PreparedGroup]]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        rows = []
        example = 0
        flat = []
        for members in packed_rows:
            row = RowBuilder()
            for grp in members:
                row.add_sequence(grp.tokens, 0, example, list(grp.pixel_values))
                example += 1
                flat.append(grp)
            rows.append(row)
        return self._assemble(rows, self.cfg.batch_size, None), self._meta(flat)

    def _assemble(self, rows, num_rows, groups_shape):
        longest = max((r.length for r in rows), default=1)
        seq_len = bucket_for(max(longest, 1), self.buckets)
        return assemble_rows(
            rows,
            num_rows=num_rows,
            seq_len=seq_len,
            max_images=self.cfg.max_images,
            image_shape=self.image_shape,
            pad_id=self.pad_id,
            num_groups=None if groups_shape is None else groups_shape[0],
            num_responses=None if groups_shape is None else groups_shape[1],
            frontend=self.frontend,
        )

    def _group_arrays(self, groups: Sequence[PreparedGroup], G: int, K: int) -> dict[str, np.ndarray]:
        out = {
            "group_mask": np.zeros((G,), bool),
            "record_index": np.full((G,), -1, np.int32),
            "response_mask": np.zeros((G, K), bool),
            "scores": np.full((G, K), np.nan, np.float32),
            "levels": np.full((G, K), ABSENT, np.int32),
            "margin": np.zeros((G,), np.float32),
            "reference_logps": np.full((G, K), np.nan, np.float32),
            "response_source": np.full((G, K), -1, np.int32),
        }
        dims = max((g.dimension_scores.shape[1] for g in groups if g.dimension_scores is not None), default=0)
        if self.cfg.format == "scored":
            out["dimension_scores"] = np.full((G, K, dims), np.nan, np.float32)
        if self.cfg.critique_prompt:
            out["critique_mask"] = np.zeros((G, K), bool)
            out["is_tie"] = np.zeros((G,), bool)
        for g, grp in enumerate(groups):
            n = len(grp.tokens.responses)
            out["group_mask"][g] = True
            out["record_index"][g] = grp.record_index
            out["response_mask"][g, :n] = True
            out["scores"][g] = grp.scores
            out["levels"][g] = grp.levels
            out["margin"][g] = grp.margin
            out["reference_logps"][g] = grp.reference_logps
            out["response_source"][g] = grp.source_order
            if "critique_mask" in out:
                out["critique_mask"][g] = grp.critique_mask
                out["is_tie"][g] = grp.is_tie
            if "dimension_scores" in out and grp.dimension_scores is not None:
                d = grp.dimension_scores
                out["dimension_scores"][g, : d.shape[0], : d.shape[1]] = d
        if self.cfg.format == "pairwise":
            out["reference_chosen_logp"] = out["reference_logps"][:, 0].copy()
            out["reference_rejected_logp"] = out["reference_logps"][:, 1].copy()
        return out


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
