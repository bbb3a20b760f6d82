"""Record adapters: every supported layout parses to the same typed example; every fault is named."""

from __future__ import annotations

import pytest

from jax_align.data.records import Message, PreferenceGroup, SFTExample, parse_record


def _ok(data, fmt, **kw):
    example, problems = parse_record(data, fmt, base_dir="/data", **kw)
    assert problems == [], problems
    return example


def _fields(data, fmt, **kw):
    example, problems = parse_record(data, fmt, base_dir="/data", **kw)
    assert example is None
    return [f for f, _ in problems], [m for _, m in problems]


def test_llava_and_trl_sft_formats_agree():
    llava = {
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is it ?"},
            {"from": "gpt", "value": "a cat ."},
            {"from": "human", "value": "color ?"},
            {"from": "gpt", "value": "red ."},
        ],
    }
    trl = {
        "images": ["a.png"],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]},
            {"role": "assistant", "content": "a cat ."},
            {"role": "user", "content": "color ?"},
            {"role": "assistant", "content": [{"type": "text", "text": "red ."}]},
        ],
    }
    a, b = _ok(llava, "sft"), _ok(trl, "sft")
    assert isinstance(a, SFTExample)
    assert a.messages == b.messages
    assert a.images[0].path == "/data/a.png" and b.images[0].path == "/data/a.png"
    assert a.messages[0] == Message("user", "<image>\nwhat is it ?")


def test_placeholder_inserted_when_absent_and_mismatch_reported():
    ex = _ok({"image": "a.png", "prompt": "what ?", "chosen": "x", "rejected": "y"}, "pairwise")
    assert ex.prompt[0].content == "<image>\nwhat ?"
    fields, msgs = _fields(
        {"images": ["a.png", "b.png"], "prompt": "<image>\nwhat ?", "chosen": "x", "rejected": "y"},
        "pairwise",
    )
    assert fields == ["images"] and "2 image(s) but 1" in msgs[0]
    fields, msgs = _fields(
        {"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}, "sft"
    )
    assert fields == ["image"] and "missing field" in msgs[0]


def test_pairwise_variants_parse_to_the_same_group():
    plain = {"prompt": "<image>\nq ?", "chosen": "good .", "rejected": "bad .", "image": "i.png"}
    conversational = {
        "prompt": [{"role": "user", "content": "<image>\nq ?"}],
        "chosen": [{"role": "assistant", "content": "good ."}],
        "rejected": [{"role": "assistant", "content": "bad ."}],
        "images": ["i.png"],
    }
    eaco = {
        "image": "i.png",
        "prompt": "q ?",
        "score_list": [5, 1],
        "chosen": [{"role": "user", "content": "<image>\nq ?"}, {"role": "assistant", "content": "good ."}],
        "rejected": [{"role": "user", "content": "<image>\nq ?"}, {"role": "assistant", "content": "bad ."}],
    }
    implicit = {
        "image": "i.png",
        "chosen": [{"role": "user", "content": "<image>\nq ?"}, {"role": "assistant", "content": "good ."}],
        "rejected": [{"role": "user", "content": "<image>\nq ?"}, {"role": "assistant", "content": "bad ."}],
    }
    groups = [_ok(r, "pairwise") for r in (plain, conversational, eaco, implicit)]
    for g in groups:
        assert isinstance(g, PreferenceGroup) and g.kind == "pairwise"
        assert g.prompt == groups[0].prompt and g.responses == groups[0].responses
    assert groups[0].responses[0] == (Message("assistant", "good ."),)


def test_pairwise_multi_turn_implicit_prompt_shares_common_turns():
    conv = [
        {"role": "user", "content": "<image>\nq1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    g = _ok(
        {
            "image": "i.png",
            "chosen": conv + [{"role": "assistant", "content": "good"}],
            "rejected": conv + [{"role": "assistant", "content": "bad"}],
        },
        "pairwise",
    )
    assert len(g.prompt) == 3 and g.responses == (
        (Message("assistant", "good"),),
        (Message("assistant", "bad"),),
    )


def test_mmrlhf_optional_fields():
    g = _ok(
        {
            "prompt": "q",
            "chosen": "a",
            "rejected": "b",
            "image": "i.png",
            "margin": 0.5,
            "reference_chosen_logp": -3.0,
            "reference_rejected_logp": -4.5,
        },
        "pairwise",
    )
    assert g.margin == 0.5 and g.reference_logps == (-3.0, -4.5)
    fields, _ = _fields(
        {"prompt": "q", "chosen": "a", "rejected": "b", "image": "i.png", "margin": "big"}, "pairwise"
    )
    assert fields == ["margin"]


def test_ranked_native_sorted_by_scores_with_ties():
    g = _ok(
        {
            "prompt": "q",
            "images": ["i.png"],
            "responses": ["mid", "best", "worst", "mid2"],
            "scores": [2, 3, 1, 2],
        },
        "ranked",
    )
    assert [r[0].content for r in g.responses] == ["best", "mid", "mid2", "worst"]
    assert g.scores == (3.0, 2.0, 2.0, 1.0)
    assert g.levels() == (2, 1, 1, 0)  # quality levels: higher = better (jax_align.preference)
    g2 = _ok({"prompt": "q", "images": ["i.png"], "responses": ["a", "b", "c"]}, "ranked")
    assert g2.scores is None and g2.levels() == (2, 1, 0)


def test_amp_and_eaco_adapters():
    human = {"from": "human", "value": "<image>\ndescribe"}
    amp = {
        "image": "/abs/x.jpg",
        **{f"output_{k}": [human, {"from": "gpt", "value": f"level {k}"}] for k in (1, 2, 3, 4)},
    }
    g = _ok(amp, "ranked")
    assert g.images[0].path == "/abs/x.jpg"
    assert g.prompt == (Message("user", "<image>\ndescribe"),)
    assert [r[0].content for r in g.responses] == ["level 1", "level 2", "level 3", "level 4"]
    eaco = {
        "image": "c.jpg",
        "prompt": "describe",
        "output_list": ["o0", "o1", "o2"],
        "score_list": [1, 9, 4],
    }
    g = _ok(eaco, "ranked")
    assert [r[0].content for r in g.responses] == ["o1", "o2", "o0"] and g.scores == (9.0, 4.0, 1.0)
    fields, _ = _fields({"image": "c.jpg", "prompt": "d", "output_list": ["a", "b"]}, "ranked")
    assert fields == ["score_list"]


def test_amp_multi_round_levels_keep_later_turns_in_responses():
    def conv(ans):
        return [
            {"from": "human", "value": "<image>\nq1"},
            {"from": "gpt", "value": ans + "1"},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": ans + "2"},
        ]

    g = _ok({"image": "x.png", "output_1": conv("a"), "output_2": conv("b")}, "ranked")
    assert len(g.prompt) == 1
    assert [m.role for m in g.responses[0]] == ["assistant", "user", "assistant"]


def test_scored_candidates_dimensions_and_critiques():
    rec = {
        "prompt": "q",
        "image": "i.png",
        "responses": ["r0", "r1"],
        "scores": [{"helpful": 2, "faithful": 1}, {"helpful": 4, "faithful": 5}],
        "critiques": ["meh", "great"],
    }
    g = _ok(rec, "scored")
    assert g.dimension_names == ("helpful", "faithful")
    assert [r[0].content for r in g.responses] == ["r1", "r0"]
    assert g.dimension_scores == ((4.0, 5.0), (2.0, 1.0)) and g.critiques == ("great", "meh")
    assert g.scores == (9.0, 3.0)
    a2l = {
        "image": "i.png",
        "conversations": [
            {"from": "human", "value": "<image>\nq"},
            {"from": "gpt", "value": ["x", "y", "z"], "score": [0.2, 0.9, 0.5]},
        ],
    }
    g = _ok(a2l, "scored")
    assert [r[0].content for r in g.responses] == ["y", "z", "x"]


@pytest.mark.parametrize(
    "fmt, record, field, needle",
    [
        ("pairwise", {"prompt": "q", "rejected": "b", "image": "i.png"}, "chosen", "missing field"),
        ("pairwise", {"prompt": "q", "chosen": 3, "rejected": "b", "image": "i.png"}, "chosen", "wrong type"),
        (
            "pairwise",
            {"prompt": "q", "chosen": "  ", "rejected": "b", "image": "i.png"},
            "chosen",
            "empty response",
        ),
        (
            "pairwise",
            {"prompt": "q", "chosen": "same", "rejected": " same ", "image": "i.png"},
            "rejected",
            "identical",
        ),
        ("pairwise", {"chosen": "a", "rejected": "b", "image": "i.png"}, "prompt", "missing field"),
        ("pairwise", {"prompt": "q", "chosen": "a", "rejected": "b"}, "image", "missing field"),
        ("pairwise", {"prompt": "q", "chosen": "a", "rejected": "b", "image": 7}, "image", "wrong type"),
        (
            "ranked",
            {"prompt": "q", "images": ["i.png"], "responses": ["a", "a "]},
            "responses",
            "fewer than two",
        ),
        ("ranked", {"prompt": "q", "images": ["i.png"], "responses": ["a"]}, "responses", "fewer than two"),
        ("ranked", {"prompt": "q", "images": ["i.png"], "responses": "a"}, "responses", "wrong type"),
        (
            "ranked",
            {"prompt": "q", "images": ["i.png"], "responses": ["a", ""]},
            "responses[1]",
            "empty response",
        ),
        (
            "ranked",
            {"prompt": "q", "images": ["i.png"], "responses": ["a", "b"], "scores": [1]},
            "scores",
            "1 scores",
        ),
        (
            "ranked",
            {"prompt": "q", "images": ["i.png"], "responses": ["a", "b"], "scores": [1, "x"]},
            "scores[1]",
            "wrong type",
        ),
        (
            "sft",
            {
                "image": "i.png",
                "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": ""}],
            },
            "conversations[1].value",
            "empty response",
        ),
        ("sft", {"image": "i.png", "conversations": "hello"}, "conversations", "wrong type"),
        ("sft", {"image": "i.png"}, "conversations", "missing field"),
        (
            "sft",
            {"image": "i.png", "conversations": [{"from": "human", "value": "<image>\nq"}]},
            "conversations",
            "no assistant",
        ),
        ("sft", [1, 2], "record", "wrong type"),
    ],
)
def test_faults_are_named(fmt, record, field, needle):
    fields, messages = _fields(record, fmt)
    assert fields[0] == field, (fields, messages)
    assert needle in messages[0]


def test_text_only_allowed_for_sft_and_optional_for_preference():
    _ok({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "sft")
    _ok({"prompt": "q", "chosen": "a", "rejected": "b"}, "pairwise", require_images=False)


def test_embedded_bytes_and_data_uri():
    g = _ok(
        {"prompt": "q", "chosen": "a", "rejected": "b", "image": {"bytes": b"\x89PNG", "path": None}},
        "pairwise",
    )
    assert g.images[0].data == b"\x89PNG" and g.images[0].path is None
    g = _ok(
        {"prompt": "q", "chosen": "a", "rejected": "b", "image": "data:image/png;base64,iVBORw=="}, "pairwise"
    )
    assert g.images[0].data.startswith(b"\x89PNG")
