"""Row layouts for tokenized groups and the batch arrays built from them (issue 4, items 4 and 6).

Batch contract (numpy, static shapes; one row per sequence):

* ``input_ids`` int32 [B,T] (pad id on padding); ``positions`` int32 [B,T];
* ``segment_ids`` int32 [B,T] (0 = padding); ``prefix_segment_ids`` int32 [B,T]. Query q may attend key k iff
  ``k <= q`` and ``segment_ids[k] != 0`` and (``segment_ids[k] == segment_ids[q]`` or
  ``segment_ids[k] == prefix_segment_ids[q]``); see :func:`attention_mask_from_segments`;
* ``labels`` int32 [B,T]: the token at t if it is a target, else -100 (unshifted); ``label_src`` int32 [B,T]:
  the position whose hidden state predicts ``labels[t]``; ``token_weights`` float32 [B,T];
* ``response_ids`` int32 [B,T]: response index 0..K-1 of each target, -1 elsewhere; ``group_ids`` int32 [B,T]:
  the group (0..G-1 within the batch) of each target, -1 elsewhere. Per-response sums are a scatter-add over
  ``group_ids * K + response_ids`` and reshape to [G, K] in either layout;
* ``pixel_values`` float32 [B, N_img, C, H, W]: the row's images in the order of its image-token blocks;
  ``num_images`` int32 [B];
* ``response_row``, ``response_end`` int32 [G, K]: row and position of each response's last token (-1 if
  absent), for reward heads.

Layouts of a group (prefix + K responses):

* ``naive``: K rows, row k = prefix + response k (each row carries the group's images);
* ``prefix_shared``: one row: the prefix (segment s), then each response with its own segment id and
  ``prefix_segment_ids = s``; each response's positions continue from the end of the prefix and the first
  token of each response is predicted from the last prefix position (``label_src``). The images are in the
  row once.

Several groups (SFT examples) can be packed into one row as separate segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from jax_align.data.tokenize import TokenizedGroup, TokenizedResponse

IGNORE_INDEX = -100


def attention_mask_from_segments(segment_ids: np.ndarray, prefix_segment_ids: np.ndarray) -> np.ndarray:
    """bool [B, T, T]: ``mask[b, q, k]`` is True iff query q may attend key k (see module docstring)."""
    seg = np.asarray(segment_ids)
    pseg = np.asarray(prefix_segment_ids)
    if seg.ndim == 1:
        seg, pseg = seg[None], pseg[None]
    T = seg.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))
    key = seg[:, None, :]
    same = key == seg[:, :, None]
    prefix = key == pseg[:, :, None]
    return causal[None] & (key != 0) & (same | prefix)


@dataclass
class RowBuilder:
    """Accumulates the segments of one row."""

    ids: list[np.ndarray] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    segment_ids: list[np.ndarray] = field(default_factory=list)
    prefix_segment_ids: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    label_src: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    response_ids: list[np.ndarray] = field(default_factory=list)
    group_ids: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    # (group, response k, absolute index of the response's last token)
    response_ends: list[tuple[int, int, int]] = field(default_factory=list)
    length: int = 0
    next_segment: int = 1

    def _append_prefix(self, prefix: np.ndarray, segment: int) -> int:
        n = int(prefix.shape[0])
        start = self.length
        self.ids.append(prefix.astype(np.int32))
        self.positions.append(np.arange(n, dtype=np.int32))
        self.segment_ids.append(np.full(n, segment, np.int32))
        self.prefix_segment_ids.append(np.full(n, segment, np.int32))
        self.labels.append(np.full(n, IGNORE_INDEX, np.int32))
        src = np.arange(start - 1, start + n - 1, dtype=np.int32)
        src[0] = start  # the first token of a segment predicts nothing
        self.label_src.append(src)
        self.weights.append(np.zeros(n, np.float32))
        self.response_ids.append(np.full(n, -1, np.int32))
        self.group_ids.append(np.full(n, -1, np.int32))
        self.length += n
        return start + n - 1

    def _append_response(
        self,
        r: TokenizedResponse,
        *,
        segment: int,
        prefix_segment: int,
        position0: int,
        src0: int,
        group: int,
        k: int,
    ) -> None:
        n = len(r)
        start = self.length
        self.ids.append(r.ids.astype(np.int32))
        self.positions.append(np.arange(position0, position0 + n, dtype=np.int32))
        self.segment_ids.append(np.full(n, segment, np.int32))
        self.prefix_segment_ids.append(np.full(n, prefix_segment, np.int32))
        self.labels.append(np.where(r.trained, r.ids, IGNORE_INDEX).astype(np.int32))
        src = np.arange(start - 1, start + n - 1, dtype=np.int32)
        if n:
            src[0] = src0
        self.label_src.append(src)
        self.weights.append(np.where(r.trained, r.weights, 0.0).astype(np.float32))
        self.response_ids.append(np.where(r.trained, k, -1).astype(np.int32))
        self.group_ids.append(np.where(r.trained, group, -1).astype(np.int32))
        self.length += n
        if n:
            self.response_ends.append((group, k, start + n - 1))

    def add_sequence(
        self, group: TokenizedGroup, k: int, group_index: int, images: Sequence[np.ndarray]
    ) -> None:
        """An ordinary causal segment: prefix + response k (naive layout, SFT, packing)."""
        seg = self.next_segment
        self.next_segment += 1
        last = self._append_prefix(group.prefix, seg)
        self._append_response(
            group.responses[k],
            segment=seg,
            prefix_segment=seg,
            position0=int(group.prefix.shape[0]),
            src0=last,
            group=group_index,
            k=k,
        )
        self.images.extend(images)

    def add_shared(self, group: TokenizedGroup, group_index: int, images: Sequence[np.ndarray]) -> None:
        """A prefix-shared group: prefix once, then every response attending to the prefix and itself."""
        prefix_seg = self.next_segment
        self.next_segment += 1
        last = self._append_prefix(group.prefix, prefix_seg)
        P = int(group.prefix.shape[0])
        for k, r in enumerate(group.responses):
            seg = self.next_segment
            self.next_segment += 1
            self._append_response(
                r, segment=seg, prefix_segment=prefix_seg, position0=P, src0=last, group=group_index, k=k
            )
        self.images.extend(images)


def naive_rows(group: TokenizedGroup, group_index: int, images: Sequence[np.ndarray]) -> list[RowBuilder]:
    rows = []
    for k in range(len(group.responses)):
        row = RowBuilder()
        row.add_sequence(group, k, group_index, images)
        rows.append(row)
    return rows


def prefix_shared_row(group: TokenizedGroup, group_index: int, images: Sequence[np.ndarray]) -> RowBuilder:
    row = RowBuilder()
    row.add_shared(group, group_index, images)
    return row


def pack_first_fit(
    lengths: Sequence[int], image_counts: Sequence[int], capacity: int, max_images: int
) -> list[list[int]]:
    """Assign items (in order) to rows: each goes to the first open row with room for its tokens
    and images."""
    rows: list[list[int]] = []
    used: list[tuple[int, int]] = []
    for i, (n, m) in enumerate(zip(lengths, image_counts, strict=True)):
        if n > capacity or m > max_images:
            raise ValueError(
                f"item {i} ({n} tokens, {m} images) exceeds a row ({capacity} tokens, {max_images} images)"
            )
        for r, (t, im) in enumerate(used):
            if t + n <= capacity and im + m <= max_images:
                rows[r].append(i)
                used[r] = (t + n, im + m)
                break
        else:
            rows.append([i])
            used.append((n, m))
    return rows


def assemble_rows(
    rows: Sequence[RowBuilder],
    *,
    num_rows: int,
    seq_len: int,
    max_images: int,
    image_shape: tuple[int, int, int],
    pad_id: int,
    num_groups: int | None = None,
    num_responses: int | None = None,
    frontend=None,
) -> dict[str, np.ndarray]:
    """Stack row builders into the batch arrays, padding to ``[num_rows, seq_len]`` and ``max_images``.

    With an AnyRes ``frontend`` (LLaVA-NeXT / OneVision) row images are ``ProcessedImage`` tiles:
    ``pixel_values`` is ``[B, max_images, max_tiles, C, H, W]`` (``image_shape = (C, H, W)``, tiles padded
    with zeros to the front end's maximum, so a bucket compiles once whatever the aspect ratios) and the batch
    also holds the rows' gather plans ``image_index``/``image_weight`` ``[B, T, K]`` and ``image_newline``
    ``[B, T]`` (zero weight on padding; :func:`jax_align.models.anyres.batch_images`)."""
    anyres = frontend is not None and getattr(frontend, "anyres", False)
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {num_rows}")
    B, T = num_rows, seq_len
    out = {
        "input_ids": np.full((B, T), pad_id, np.int32),
        "positions": np.zeros((B, T), np.int32),
        "segment_ids": np.zeros((B, T), np.int32),
        "prefix_segment_ids": np.zeros((B, T), np.int32),
        "labels": np.full((B, T), IGNORE_INDEX, np.int32),
        "label_src": np.tile(np.maximum(np.arange(T, dtype=np.int32) - 1, 0), (B, 1)),
        "token_weights": np.zeros((B, T), np.float32),
        "response_ids": np.full((B, T), -1, np.int32),
        "group_ids": np.full((B, T), -1, np.int32),
        "pixel_values": None if anyres else np.zeros((B, max_images, *image_shape), np.float32),
        "num_images": np.zeros((B,), np.int32),
    }
    if anyres:
        from jax_align.models.frontends import stack_row_images

        out.update(stack_row_images([r.images for r in rows] + [[] for _ in range(B - len(rows))],
                                    max_images=max_images, max_tiles=frontend.max_tiles, max_tokens=T,
                                    tile_shape=image_shape, taps=frontend.taps))
    if num_groups is not None:
        out["response_row"] = np.full((num_groups, num_responses), -1, np.int32)
        out["response_end"] = np.full((num_groups, num_responses), -1, np.int32)
    for b, row in enumerate(rows):
        n = row.length
        if n > T:
            raise ValueError(f"row of {n} tokens does not fit seq_len {T}")
        if len(row.images) > max_images:
            raise ValueError(f"row has {len(row.images)} images; the batch holds {max_images} per row")
        if n:
            for key, parts in (
                ("input_ids", row.ids),
                ("positions", row.positions),
                ("segment_ids", row.segment_ids),
                ("prefix_segment_ids", row.prefix_segment_ids),
                ("labels", row.labels),
                ("label_src", row.label_src),
                ("token_weights", row.weights),
                ("response_ids", row.response_ids),
                ("group_ids", row.group_ids),
            ):
                out[key][b, :n] = np.concatenate(parts)
        for i, img in enumerate(row.images if not anyres else ()):
            out["pixel_values"][b, i] = img
        out["num_images"][b] = len(row.images)
        if num_groups is not None:
            for g, k, end in row.response_ends:
                out["response_row"][g, k] = b
                out["response_end"][g, k] = end
    return out
