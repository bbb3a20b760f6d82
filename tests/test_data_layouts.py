"""Row layouts: the prefix-shared row gives every target token exactly the context (tokens and positions)
it has in its naive row, so per-response log-probs cannot differ; masks, positions and label_src are
checked directly.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_align.data.buckets import bucket_for, normalize_buckets
from jax_align.data.layouts import (
    IGNORE_INDEX,
    RowBuilder,
    assemble_rows,
    attention_mask_from_segments,
    naive_rows,
    pack_first_fit,
    prefix_shared_row,
)
from jax_align.data.tokenize import TokenizedGroup, TokenizedResponse

IMG = (3, 2, 2)


def _group(rng: np.random.Generator, prefix_len: int, response_lens: list[int]) -> TokenizedGroup:
    prefix = rng.integers(5, 100, prefix_len).astype(np.int32)
    responses = []
    for n in response_lens:
        ids = rng.integers(5, 100, n).astype(np.int32)
        trained = rng.random(n) < 0.8
        trained[0] = True
        responses.append(TokenizedResponse(ids, trained, np.where(trained, 1.0, 0.0).astype(np.float32)))
    return TokenizedGroup(
        prefix, np.zeros(prefix_len, bool), tuple(responses), 0, tuple(0 for _ in response_lens)
    )


def _assemble(rows, T, G=1, K=None):
    return assemble_rows(
        rows,
        num_rows=len(rows),
        seq_len=T,
        max_images=1,
        image_shape=IMG,
        pad_id=0,
        num_groups=G,
        num_responses=K,
    )


def _context(batch, b, t, mask):
    """(position, token) pairs query t of row b attends to, by position."""
    keys = np.flatnonzero(mask[b, t])
    return sorted((int(batch["positions"][b, j]), int(batch["input_ids"][b, j])) for j in keys)


def _intended_shared_mask(P: int, lens: list[int], T: int) -> np.ndarray:
    m = np.zeros((T, T), bool)
    for q in range(P):
        m[q, : q + 1] = True
    start = P
    for n in lens:
        for i in range(n):
            q = start + i
            m[q, :P] = True
            m[q, start : q + 1] = True
        start += n
    return m


def test_attention_mask_formula_on_a_hand_built_row():
    seg = np.array([1, 1, 1, 2, 2, 3, 3, 3, 0, 0])
    pseg = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    m = attention_mask_from_segments(seg, pseg)[0]
    np.testing.assert_array_equal(m, _intended_shared_mask(3, [2, 3], 10))
    # packing: two ordinary segments see only themselves
    seg = np.array([1, 1, 2, 2, 2, 0])
    m = attention_mask_from_segments(seg, seg)[0]
    expected = np.zeros((6, 6), bool)
    expected[:2, :2] = np.tril(np.ones((2, 2), bool))
    expected[2:5, 2:5] = np.tril(np.ones((3, 3), bool))
    np.testing.assert_array_equal(m, expected)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    prefix_len=st.integers(1, 12),
    response_lens=st.lists(st.integers(1, 9), min_size=1, max_size=5),
)
def test_prefix_shared_row_equals_naive_rows(seed, prefix_len, response_lens):
    rng = np.random.default_rng(seed)
    g = _group(rng, prefix_len, response_lens)
    K = len(response_lens)
    T = prefix_len + sum(response_lens) + 3
    shared = _assemble([prefix_shared_row(g, 0, [])], T, K=K)
    naive = _assemble(naive_rows(g, 0, []), T, K=K)
    ms = attention_mask_from_segments(shared["segment_ids"], shared["prefix_segment_ids"])
    mn = attention_mask_from_segments(naive["segment_ids"], naive["prefix_segment_ids"])
    np.testing.assert_array_equal(ms[0], _intended_shared_mask(prefix_len, response_lens, T))

    # every response starts at the same position, right after the prefix
    for k in range(K):
        first = np.flatnonzero(shared["segment_ids"][0] == k + 2)[0]
        assert shared["positions"][0, first] == prefix_len
        assert shared["label_src"][0, first] == prefix_len - 1

    for k in range(K):
        t_shared = np.flatnonzero(shared["response_ids"][0] == k)
        t_naive = np.flatnonzero(naive["response_ids"][k] == k)
        # the same target tokens, in order, with the same weights
        np.testing.assert_array_equal(shared["labels"][0, t_shared], naive["labels"][k, t_naive])
        np.testing.assert_array_equal(
            shared["token_weights"][0, t_shared], naive["token_weights"][k, t_naive]
        )
        np.testing.assert_array_equal(
            shared["labels"][0, t_shared], g.responses[k].ids[g.responses[k].trained]
        )
        assert np.all(shared["group_ids"][0, t_shared] == 0) and np.all(naive["group_ids"][k, t_naive] == 0)
        for ts, tn in zip(t_shared, t_naive, strict=True):
            assert shared["positions"][0, ts] == naive["positions"][k, tn]
            src_s, src_n = shared["label_src"][0, ts], naive["label_src"][k, tn]
            assert src_n == tn - 1
            # the predicting position sees exactly the same (position, token) context in both layouts
            assert _context(shared, 0, src_s, ms) == _context(naive, k, src_n, mn)
            assert shared["positions"][0, src_s] == shared["positions"][0, ts] - 1
        # reward heads: last token of each response
        assert shared["response_row"][0, k] == 0 and naive["response_row"][0, k] == k
        end = shared["response_end"][0, k]
        assert shared["segment_ids"][0, end] == k + 2 and shared["segment_ids"][0, end + 1] != k + 2
    # labels are -100 exactly where no response target is
    assert np.all((shared["labels"] == IGNORE_INDEX) == (shared["response_ids"] == -1))


def test_packed_sft_rows_are_independent_segments():
    rng = np.random.default_rng(0)
    groups = [_group(rng, p, [r]) for p, r in [(3, 4), (2, 2), (5, 1)]]
    row = RowBuilder()
    for i, g in enumerate(groups):
        row.add_sequence(g, 0, i, [])
    batch = _assemble([row], 24, G=None)
    seg = batch["segment_ids"][0]
    assert list(seg[:18]) == [1] * 7 + [2] * 4 + [3] * 6 + [0]
    # positions restart in each segment; label_src never crosses segments
    starts = [0, 7, 11]
    for s, g in zip(starts, groups, strict=True):
        n = g.length("naive")
        np.testing.assert_array_equal(batch["positions"][0, s : s + n], np.arange(n))
    labeled = np.flatnonzero(batch["labels"][0] != IGNORE_INDEX)
    src = batch["label_src"][0, labeled]
    assert np.all(seg[src] == seg[labeled]) and np.all(src == labeled - 1)
    np.testing.assert_array_equal(np.unique(batch["group_ids"][0, labeled]), [0, 1, 2])
    m = attention_mask_from_segments(batch["segment_ids"], batch["prefix_segment_ids"])[0]
    assert not m[7:11, :7].any() and m[7:11, 7:11].any()


def test_first_fit_packing_respects_tokens_and_images():
    rows = pack_first_fit([5, 4, 3, 6, 2], [1, 1, 0, 1, 1], capacity=10, max_images=2)
    assert rows == [[0, 1], [2, 3], [4]]
    for r in rows:
        assert sum([5, 4, 3, 6, 2][i] for i in r) <= 10
        assert sum([1, 1, 0, 1, 1][i] for i in r) <= 2


def test_buckets():
    b = normalize_buckets([64, 16, 32, 16])
    assert b == (16, 32, 64)
    assert bucket_for(1, b) == 16 and bucket_for(16, b) == 16 and bucket_for(17, b) == 32
    try:
        bucket_for(65, b)
    except ValueError as e:
        assert "largest bucket 64" in str(e)
    else:
        raise AssertionError("expected an error")
