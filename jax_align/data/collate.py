"""Prepared groups (or packed SFT rows) -> the batch dict of static shape, padded to a length bucket
(:class:`Collator`; the contract of the arrays is in :mod:`jax_align.data.layouts`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jax_align.data.buckets import bucket_for, normalize_buckets
from jax_align.data.data_config import DataConfig
from jax_align.data.layouts import RowBuilder, assemble_rows, naive_rows, prefix_shared_row
from jax_align.data.prepare import PreparedGroup
from jax_align.preference import ABSENT


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

    def empty_batch(self, seq_len: int) -> dict[str, np.ndarray]:
        """The arrays of a batch padded to ``seq_len`` tokens with no group in it: exactly the keys, shapes and
        dtypes that :meth:`groups` (or :meth:`packed` with ``cfg.pack``) gives every batch of that length bucket
        (``jax-align plan`` compiles the train step for them)."""
        cfg = self.cfg
        G, K = cfg.batch_size, cfg.responses_per_group
        sft = cfg.format == "sft"
        num_rows = G * K if (not sft and cfg.layout == "naive") else G
        batch = assemble_rows([], num_rows=num_rows, seq_len=seq_len, max_images=cfg.max_images,
                              image_shape=self.image_shape, pad_id=self.pad_id,
                              num_groups=None if sft else G, num_responses=None if sft else K,
                              frontend=self.frontend)
        if cfg.pack:
            return batch
        if sft:
            batch.update({k: v for k, v in self._group_arrays([], G, 1).items()
                          if k in ("group_mask", "record_index", "response_source")})
        else:
            batch.update(self._group_arrays([], G, K))
        return batch

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
