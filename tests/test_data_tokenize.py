"""Chat-template tokenization: image expansion, label masks, round weights, image-aware truncation."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import PARTS_TEMPLATE, build_model_dir

from jax_align.data.records import parse_record
from jax_align.data.tokenize import ChatTokenizer, TooLongError, truncate_group


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "string": build_model_dir(str(root / "string")),
        "parts": build_model_dir(str(root / "parts"), template=PARTS_TEMPLATE),
        "no_image_token": build_model_dir(
            str(root / "noimg"), image_token_in_vocab=False, legacy_index_key=True
        ),
        "siglip": build_model_dir(
            str(root / "siglip"), vision="siglip", image_size=28, patch_size=7, strategy="full"
        ),
    }


def _tok(model_dirs, name, **kw):
    return ChatTokenizer.from_model_dir(model_dirs[name], **kw)


PAIR = {
    "prompt": "<image>\nwhat color is the cat ?",
    "chosen": "the cat is red .",
    "rejected": "blue .",
    "image": "i.png",
}


@pytest.mark.parametrize(
    "name, per_image", [("string", 4), ("parts", 4), ("no_image_token", 4), ("siglip", 16)]
)
def test_image_placeholder_expands_to_exact_count(model_dirs, name, per_image):
    tok = _tok(model_dirs, name)
    assert tok.image_seq_len == per_image
    ex, _ = parse_record(PAIR, "pairwise", base_dir="/d")
    g = tok.tokenize(ex)
    image_pos = np.flatnonzero(g.prefix == tok.image_token_id)
    assert image_pos.size == per_image
    assert np.all(np.diff(image_pos) == 1)  # one contiguous block
    for r in g.responses:
        assert not np.any(r.ids == tok.image_token_id)


def test_string_and_parts_templates_give_identical_tokens(model_dirs):
    a, b = _tok(model_dirs, "string"), _tok(model_dirs, "parts")
    ex, _ = parse_record(PAIR, "pairwise", base_dir="/d")
    ga, gb = a.tokenize(ex), b.tokenize(ex)
    words_a = a.tokenizer.convert_ids_to_tokens(ga.prefix.tolist())
    words_b = b.tokenizer.convert_ids_to_tokens(gb.prefix.tolist())
    assert words_a == words_b
    assert words_a[:3] == ["<s>", "USER", ":"] and words_a[-2:] == ["ASSISTANT", ":"]
    for ra, rb in zip(ga.responses, gb.responses, strict=True):
        np.testing.assert_array_equal(ra.ids, rb.ids)


def test_labels_only_on_assistant_tokens_and_eos(model_dirs):
    tok = _tok(model_dirs, "string")
    ex, _ = parse_record(PAIR, "pairwise", base_dir="/d")
    g = tok.tokenize(ex)
    chosen = g.responses[0]
    words = tok.tokenizer.convert_ids_to_tokens(chosen.ids.tolist())
    assert words == ["the", "cat", "is", "red", ".", "</s>"]
    assert chosen.trained.all()
    # cuttable prompt text = the user's words, never image or template tokens
    cut_words = tok.tokenizer.convert_ids_to_tokens(g.prefix[g.prefix_cuttable].tolist())
    assert cut_words == ["what", "color", "is", "the", "cat", "?"]


def test_multi_turn_sft_masks_user_turns_and_weights_rounds(model_dirs):
    tok = _tok(model_dirs, "string", round_weight=0.05)
    rec = {
        "image": "i.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is this ?"},
            {"from": "gpt", "value": "a cat ."},
            {"from": "human", "value": "what color ?"},
            {"from": "gpt", "value": "red ."},
            {"from": "human", "value": "where ?"},
            {"from": "gpt", "value": "on the mat ."},
        ],
    }
    ex, _ = parse_record(rec, "sft", base_dir="/d")
    g = tok.tokenize(ex)
    assert len(g.responses) == 1
    r = g.responses[0]
    words = tok.tokenizer.convert_ids_to_tokens(r.ids.tolist())
    trained_words = [w for w, t in zip(words, r.trained, strict=True) if t]
    assert trained_words == ["a", "cat", ".", "</s>", "red", ".", "</s>", "on", "the", "mat", ".", "</s>"]
    assert "USER" in words and "USER" not in trained_words
    weights = r.weights[r.trained]
    np.testing.assert_allclose(weights, [1.0] * 4 + [1.05] * 3 + [1.10] * 5, rtol=1e-6)
    assert np.all(r.weights[~r.trained] == 0)


def test_truncation_cuts_responses_first_then_prompt_never_images(model_dirs):
    tok = _tok(model_dirs, "string")
    ex, _ = parse_record(PAIR, "pairwise", base_dir="/d")
    g = tok.tokenize(ex)
    P = g.prefix.size
    lens = [len(r) for r in g.responses]
    full_shared = P + sum(lens)
    # 1. responses shrink first, keeping their start
    t = truncate_group(g, full_shared - 3, "prefix_shared")
    assert t.prefix.size == P
    assert sum(len(r) for r in t.responses) == sum(lens) - 3
    for r0, r1 in zip(g.responses, t.responses, strict=True):
        np.testing.assert_array_equal(r1.ids, r0.ids[: len(r1)])
    # naive layout only needs prefix + longest response
    t = truncate_group(g, P + max(lens) - 2, "naive")
    assert max(len(r) for r in t.responses) == max(lens) - 2
    # 2. then prompt text (earliest first); image and template tokens stay
    t = truncate_group(g, P + 2 - 2, "prefix_shared")
    assert [len(r) for r in t.responses] == [1, 1]
    assert t.prefix.size == P - 2
    assert np.sum(t.prefix == tok.image_token_id) == tok.image_seq_len
    kept = tok.tokenizer.convert_ids_to_tokens(t.prefix.tolist())
    assert kept == ["<s>", "USER", ":"] + ["<image>"] * 4 + ["is", "the", "cat", "?", "ASSISTANT", ":"]
    # 3. by default at most half the prompt text may go; beyond that the record is too long
    n_text = int(g.prefix_cuttable.sum())
    fixed = P - n_text
    with pytest.raises(TooLongError, match="max_length is"):
        truncate_group(g, P + 2 - n_text // 2 - 1, "prefix_shared")
    assert (
        truncate_group(g, P + 2 - n_text // 2, "prefix_shared").length("prefix_shared") == P + 2 - n_text // 2
    )
    # allowing the whole prompt text to go, only image + template tokens + 1 token per response must fit
    with pytest.raises(TooLongError, match="max_length is"):
        truncate_group(g, fixed + 1, "prefix_shared", max_prompt_cut=1.0)
    t = truncate_group(g, fixed + 2, "prefix_shared", max_prompt_cut=1.0)
    assert t.length("prefix_shared") == fixed + 2
    assert np.sum(t.prefix == tok.image_token_id) == tok.image_seq_len


def test_truncation_never_cuts_image_blocks_inside_responses(model_dirs):
    tok = _tok(model_dirs, "string")
    rec = {
        "images": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nwhat ?"},
            {"from": "gpt", "value": "a cat ."},
            {"from": "human", "value": "<image>\nand this ?"},
            {"from": "gpt", "value": "a dog on the mat ."},
        ],
    }
    ex, _ = parse_record(rec, "sft", base_dir="/d")
    g = tok.tokenize(ex)
    r = g.responses[0]
    assert g.num_prefix_images == 1 and g.num_response_images == (1,)
    assert r.min_keep > 0 and np.all(r.ids[r.min_keep - tok.image_seq_len : r.min_keep] == tok.image_token_id)
    t = truncate_group(g, g.prefix.size + r.min_keep, "naive")
    assert len(t.responses[0]) == r.min_keep
    assert np.sum(t.responses[0].ids == tok.image_token_id) == tok.image_seq_len


@pytest.mark.parametrize("name", ["string", "parts"])
def test_kept_prompt_renders_change_nothing(model_dirs, name):
    """ChatTokenizer.render keeps rendered prompts: records that share a prompt (and multi-turn records, whose
    earlier turns are rendered as prompts) tokenize exactly as a tokenizer that keeps nothing does."""
    import jax_align.data.tokenize as tokenize_mod

    records = [(dict(PAIR, chosen=f"the cat is {c} .", rejected=f"{c} ."), "pairwise") for c in ("red", "blue")]
    records += [({"image": "i.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat is this ?"}, {"from": "gpt", "value": a},
        {"from": "human", "value": "what color ?"}, {"from": "gpt", "value": "red ."}]}, "sft")
        for a in ("a cat .", "a dog .")]
    kept = _tok(model_dirs, name)
    groups = [kept.tokenize(parse_record(r, f, base_dir="/d")[0]) for r, f in records * 2]
    assert kept._rendered and all(isinstance(k, tuple) for k in kept._rendered)
    for g, (r, f) in zip(groups, records * 2, strict=True):
        fresh = _tok(model_dirs, name)  # nothing kept: every render is the template's
        want = fresh.tokenize(parse_record(r, f, base_dir="/d")[0])
        np.testing.assert_array_equal(g.prefix, want.prefix)
        np.testing.assert_array_equal(g.prefix_cuttable, want.prefix_cuttable)
        for a, b in zip(g.responses, want.responses, strict=True):
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.trained, b.trained)
            np.testing.assert_array_equal(a.weights, b.weights)
    # bounded: the store is emptied when full
    small = _tok(model_dirs, name)
    tokenize_mod_limit, tokenize_mod.RENDER_CACHE = tokenize_mod.RENDER_CACHE, 2
    try:
        for r, f in records:
            small.tokenize(parse_record(r, f, base_dir="/d")[0])
        assert len(small._rendered) <= 2
    finally:
        tokenize_mod.RENDER_CACHE = tokenize_mod_limit
