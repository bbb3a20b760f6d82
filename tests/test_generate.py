"""The generation engine end to end: `jax-align generate` vs transformers, the recipe hooks, `eval --model`.

One tiny random LLaVA that speaks the world tokenizer (tests/gen_fixtures.py) and a 3-scene world are shared
by the module; tests reuse the same sampling settings and batch shapes so that compiles are shared too.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from gen_fixtures import build_world_llava, hf_processor

MAX_NEW = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from jax_align.cli.main import main

    out = str(tmp_path_factory.mktemp("world") / "w")
    assert main(["world", "--seed", "3", "--n", "3", "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path, torch_model = build_world_llava(str(tmp_path_factory.mktemp("model") / "m"))
    return path, torch_model, hf_processor(path)


@pytest.fixture(scope="module")
def generator(model):
    from jax_align.generate import get_generator

    return get_generator(model[0])  # the instance generate_records (and so `eval --model`) uses too


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mixed_records(world):
    """Four prompts of different lengths over two images (pope, vqa and caption questions)."""
    pope, vqa, caps = (
        read_jsonl(os.path.join(world, f)) for f in ("pope.jsonl", "vqa.jsonl", "captions.jsonl")
    )
    picked = [pope[0], vqa[0], caps[1], pope[-1]]
    return [{"image": r["image"], "prompt": r["prompt"]} for r in picked]


def hf_greedy(model, world, record, max_new=MAX_NEW, prefix=None):
    """transformers' own pipeline: chat template, LlavaProcessor (image, token expansion), greedy decoding."""
    import torch
    from PIL import Image

    _, torch_model, processor = model
    tok = processor.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "<image>\n" + record["prompt"]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    if prefix:
        text += " " + prefix  # the world template puts one space between "ASSISTANT:" and the answer
    inputs = processor(
        images=[Image.open(os.path.join(world, record["image"]))], text=[text], return_tensors="pt"
    )
    with torch.no_grad():
        out = torch_model.generate(
            **inputs,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    return ids, inputs


def test_cli_greedy_equals_transformers(world, model, tmp_path):
    from jax_align.cli.main import main

    records = mixed_records(world)
    records[0]["extra"] = {"kept": True}
    inp = os.path.join(world, "gen_in.jsonl")
    with open(inp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    out = str(tmp_path / "out" / "answers.jsonl")
    rc = main(
        [
            "generate",
            "--model",
            model[0],
            "--input",
            inp,
            "--output",
            out,
            "--max-new-tokens",
            str(MAX_NEW),
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = read_jsonl(out)
    assert len(rows) == len(records)
    tok = model[2].tokenizer
    for rec, row in zip(records, rows, strict=True):
        assert {k: v for k, v in row.items() if k != "response"} == rec  # the input is repeated unchanged
        ids, _ = hf_greedy(model, world, rec)
        expected = tok.decode(ids, skip_special_tokens=True).strip()
        assert expected, "the reference answer should not be empty"
        assert row["response"] == expected


def test_token_ids_and_logprobs_match_transformers(world, model, generator):
    import torch

    from jax_align.sampling import SamplingParams

    records = mixed_records(world)
    results = generator.generate(
        records, SamplingParams(max_new_tokens=MAX_NEW), base_dir=world, batch_size=4
    )
    for rec, res in zip(records, results, strict=True):
        ids, inputs = hf_greedy(model, world, rec)
        comp = res.completions[0]
        assert comp.token_ids.tolist() == ids
        np.testing.assert_array_equal(res.prompt_ids, inputs["input_ids"][0].numpy())
        # log-probs of the emitted tokens = teacher-forced log-softmax of the full sequence
        full = torch.tensor([res.prompt_ids.tolist() + ids])
        with torch.no_grad():
            logits = model[1](input_ids=full, pixel_values=inputs["pixel_values"]).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(res.prompt_ids) - 1 : -1].gather(
            1, torch.tensor(ids)[:, None]
        )[:, 0]
        np.testing.assert_allclose(comp.logprobs, logp.numpy(), atol=2e-4)


def test_keep_mask_acts_only_through_image_tokens(world, generator):
    from jax_align.sampling import SamplingParams

    sp = SamplingParams(max_new_tokens=MAX_NEW)
    caps = read_jsonl(os.path.join(world, "captions.jsonl"))
    # the same question about four different images (3 distinct scenes + a blank one)
    blank = np.zeros((3, 16, 16), np.float32)
    records = [{"image": c["image"], "prompt": c["prompt"]} for c in caps] + [
        {"image": blank, "prompt": caps[0]["prompt"]}
    ]
    free = generator.generate(records, sp, base_dir=world, batch_size=4)
    n_img = int((free[0].prompt_ids == generator.tokenizer.image_token_id).sum())
    assert n_img == 16
    all_visible = generator.generate(
        records, sp, base_dir=world, batch_size=4, keep_masks=[np.ones(n_img, bool)] * len(records)
    )
    for a, b in zip(free, all_visible, strict=True):
        assert a.completions[0].token_ids.tolist() == b.completions[0].token_ids.tolist()
        np.testing.assert_allclose(a.completions[0].logprobs, b.completions[0].logprobs, atol=1e-6)
    # the pixels matter without a mask ...
    assert len({tuple(np.round(r.completions[0].logprobs, 4)) for r in free}) > 1
    # ... and not at all when every image token is hidden
    hidden = generator.generate(records, sp, base_dir=world, batch_size=4, image_keep_fraction=0.0)
    assert all(not r.keep_mask.any() for r in hidden)
    first = hidden[0].completions[0]
    for r in hidden[1:]:
        assert r.completions[0].token_ids.tolist() == first.token_ids.tolist()
        np.testing.assert_allclose(r.completions[0].logprobs, first.logprobs, atol=1e-5)
    # a BDHS-style mask keeps about the requested fraction, reproducibly by seed
    a = generator.generate(records[:1] * 4, sp, base_dir=world, batch_size=4, image_keep_fraction=0.5, seed=7)
    b = generator.generate(records[:1] * 4, sp, base_dir=world, batch_size=4, image_keep_fraction=0.5, seed=7)
    masks = np.stack([r.keep_mask for r in a])
    assert 0 < masks.sum() < masks.size
    np.testing.assert_array_equal(masks, np.stack([r.keep_mask for r in b]))


def test_forced_prefix_continuation(world, model, generator):
    from jax_align.sampling import SamplingParams

    records = mixed_records(world)
    prefixes = ["There is a red", None, "There is a large blue", "No"]
    results = generator.generate(
        records,
        SamplingParams(max_new_tokens=MAX_NEW),
        base_dir=world,
        batch_size=4,
        response_prefixes=prefixes,
    )
    tok = model[2].tokenizer
    for rec, prefix, res in zip(records, prefixes, results, strict=True):
        ids, _ = hf_greedy(model, world, rec, prefix=prefix)
        comp = res.completions[0]
        assert comp.token_ids.tolist() == ids
        if prefix:
            assert tok.decode(res.prefix_ids.tolist()) == " " + prefix
            assert comp.text.startswith(prefix)
            assert comp.text == (prefix + comp.continuation).strip()
        else:
            assert res.prefix_ids.size == 0


def test_stop_tokens_and_stop_strings(world, generator):
    from jax_align.sampling import SamplingParams

    records = mixed_records(world)[:1]
    free = generator.generate(records, SamplingParams(max_new_tokens=MAX_NEW), base_dir=world, batch_size=4)
    toks = free[0].completions[0].token_ids.tolist()
    assert len(toks) == MAX_NEW and not free[0].completions[0].stopped
    k = next(i for i in range(1, len(toks)) if toks[i] not in toks[:i])  # a token first seen at step k
    stopped = generator.generate(
        records,
        SamplingParams(max_new_tokens=MAX_NEW, stop_token_ids=(toks[k],)),
        base_dir=world,
        batch_size=4,
    )[0].completions[0]
    assert stopped.stopped and stopped.token_ids.tolist() == toks[: k + 1]
    np.testing.assert_allclose(stopped.logprobs, free[0].completions[0].logprobs[: k + 1], atol=1e-6)
    # stop strings map to every token containing them, special tokens excluded
    hf = generator.tokenizer.tokenizer
    ids = generator.stop_ids_for(["."])
    assert hf.convert_tokens_to_ids(".") in ids and hf.eos_token_id not in ids
    assert all("." in hf.decode([i]) for i in ids)
    word = hf.decode([toks[k]])
    cut = generator.generate(
        records, SamplingParams(max_new_tokens=MAX_NEW), base_dir=world, batch_size=4, stop_strings=[word]
    )[0].completions[0]
    assert cut.stopped and cut.token_ids.tolist() == toks[: k + 1]
    assert cut.continuation.endswith(word)


def test_samples_lists_seeds_and_batch_independence(world, generator, model, tmp_path):
    from jax_align.generate import generate_records
    from jax_align.sampling import SamplingParams

    records = mixed_records(world)
    sp = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, top_k=50, n_samples=3)
    a = generator.generate(records, sp, base_dir=world, batch_size=4, seed=1)
    b = generator.generate(records, sp, base_dir=world, batch_size=2, seed=1)
    for res in a:
        assert len(res.completions) == 3
        assert len({c.token_ids.tobytes() for c in res.completions}) > 1  # samples differ
    # prompt i draws from fold_in(key(seed), i): the batch size (and batch order) does not matter
    assert [r.texts for r in a] == [r.texts for r in b]
    # the log-probs of the same tokens differ only by fp32 reassociation across batch shapes (tests/tolerances.py:
    # sums of decoder_terms() terms of magnitude up to the largest |log-prob| or logit involved)
    from tolerances import decoder_terms, fp32_reassociation_tol

    scale = max(float(np.max(np.abs(c.logprobs))) for r in a for c in r.completions) + 10.0  # logits ~ |lp| + 10
    tol = fp32_reassociation_tol(decoder_terms(generator.config), scale)
    for x, y in zip(a, b, strict=True):
        for cx, cy in zip(x.completions, y.completions, strict=True):
            np.testing.assert_allclose(cx.logprobs, cy.logprobs, rtol=0, atol=tol)
    d = generator.generate(records, sp, base_dir=world, batch_size=4, seed=2)
    assert [r.texts for r in a] != [r.texts for r in d]
    # the records API returns lists for n_samples > 1, strings otherwise
    texts = generate_records(
        model[0],
        records,
        base_dir=world,
        max_new_tokens=MAX_NEW,
        batch_size=4,
        temperature=1.0,
        top_k=50,
        n_samples=3,
        seed=1,
    )
    assert all(isinstance(t, list) and len(t) == 3 for t in texts)
    assert texts == [r.texts for r in a]  # same engine, same seeding


def test_compiles_once_per_bucket_and_images_once_per_prompt(world, generator):
    from jax_align.sampling import SamplingParams

    sp = SamplingParams(max_new_tokens=MAX_NEW)
    pope = read_jsonl(os.path.join(world, "pope.jsonl"))
    caps = read_jsonl(os.path.join(world, "captions.jsonl"))
    records = [{"image": r["image"], "prompt": r["prompt"]} for r in pope[:6] + caps[:1]]
    generator._images.clear()
    loaded = generator.images_loaded
    before = generator.num_compilations
    first = generator.generate(records, sp, base_dir=world, batch_size=4)
    distinct_images = len({r["image"] for r in records})
    assert generator.images_loaded - loaded == distinct_images
    # buckets: batches of 4 in length order, rows rounded to a power of two, lengths to a multiple of 32
    lengths = sorted((len(r.prompt_ids) for r in first), reverse=True)
    buckets = {
        (min(4, 1 << (len(lengths[i : i + 4]) - 1).bit_length()), -(-lengths[i] // 32) * 32)
        for i in range(0, len(lengths), 4)
    }
    assert generator.num_compilations - before <= len(buckets)
    after_first = generator.num_compilations
    again = generator.generate(records, sp, base_dir=world, batch_size=4)
    assert generator.num_compilations == after_first
    assert [r.texts for r in again] == [r.texts for r in first]
    assert generator.images_loaded - loaded == distinct_images  # served from the cache


def test_cli_reports_bad_input_by_line(world, model, tmp_path, capsys):
    from jax_align.cli.main import main

    good = json.dumps({"image": read_jsonl(os.path.join(world, "pope.jsonl"))[0]["image"], "prompt": "Hi?"})
    cases = {
        "bad_json": (good + "\n{not json\n", ":2: invalid JSON"),
        "no_prompt": (
            good + "\n\n" + json.dumps({"image": "images/000000.png"}) + "\n",
            ":3: prompt: missing",
        ),
        "no_file": (
            json.dumps({"image": "images/nope.png", "prompt": "Hi?"}) + "\n",
            ":1: image: file not found",
        ),
        "not_object": ("[1, 2]\n", ":1: expected a JSON object"),
    }
    for name, (text, message) in cases.items():
        inp = os.path.join(world, f"bad_{name}.jsonl")
        with open(inp, "w") as f:
            f.write(text)
        rc = main(
            [
                "generate",
                "--model",
                model[0],
                "--input",
                inp,
                "--output",
                str(tmp_path / "o.jsonl"),
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2, name
        assert inp + message in err, (name, err)
    rc = main(
        [
            "generate",
            "--model",
            model[0],
            "--input",
            inp,
            "--output",
            str(tmp_path / "o.jsonl"),
            "--top-p",
            "0",
        ]
    )
    assert rc == 2 and "top_p" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_eval_with_model_end_to_end(world, model, tmp_path):
    from jax_align.cli.main import main
    from jax_align.generate import generate_records

    metrics_path, answers = str(tmp_path / "m.json"), str(tmp_path / "answers")
    rc = main(
        [
            "eval",
            "--world",
            world,
            "--model",
            model[0],
            "--json",
            metrics_path,
            "--save-answers",
            answers,
            "--max-new-tokens",
            "6",
            "--batch-size",
            "16",
        ]
    )
    assert rc == 0
    with open(metrics_path) as f:
        metrics = json.load(f)
    assert set(metrics) >= {"pope", "chair", "vqa"}
    assert set(metrics["pope"]) == {"random", "popular", "adversarial"}
    for value in (
        metrics["chair"]["chair_i"],
        metrics["vqa"]["accuracy"],
        metrics["pope"]["random"]["accuracy"],
    ):
        assert 0.0 <= value <= 1.0
    # the saved answers are the engine's greedy answers, and scoring them again gives the same metrics
    pope = read_jsonl(os.path.join(world, "pope.jsonl"))
    saved = read_jsonl(os.path.join(answers, "pope.jsonl"))
    again = generate_records(
        model[0],
        [{"image": r["image"], "prompt": r["prompt"]} for r in pope],
        base_dir=world,
        max_new_tokens=6,
        batch_size=16,
    )
    assert [r["response"] for r in saved] == again
    metrics2 = str(tmp_path / "m2.json")
    assert main(["eval", "--world", world, "--answers", answers, "--json", metrics2]) == 0
    with open(metrics2) as f:
        assert json.load(f) == metrics
