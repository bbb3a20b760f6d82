"""Beam search and repetition penalty (issue 15 item 1; spec §5.1 / §6.5, AMP's expert decoding): tokens equal
transformers' ``generate(num_beams=..., repetition_penalty=..., do_sample=False)`` on a tiny random LLaVA built
offline, with a frequent token made an extra EOS so that beams really finish early (finished-beam bookkeeping,
length penalty, the early-stopping heuristic and the candidate count all matter); beam 1 is greedy."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from gen_fixtures import build_world_llava, hf_processor

MAX_NEW = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from jax_align.cli.main import main

    out = str(tmp_path_factory.mktemp("world") / "w")
    assert main(["world", "--seed", "5", "--n", "2", "--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path, torch_model = build_world_llava(str(tmp_path_factory.mktemp("model") / "m"), seed=1)
    return path, torch_model, hf_processor(path)


@pytest.fixture(scope="module")
def generator(model):
    from jax_align.generate import Generator

    return Generator.from_model_dir(model[0])


def records(world):
    with open(os.path.join(world, "captions.jsonl")) as f:
        caps = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(world, "vqa.jsonl")) as f:
        vqa = [json.loads(line) for line in f if line.strip()]
    return [{"image": r["image"], "prompt": r["prompt"]} for r in (caps[0], vqa[0], caps[1])]


def hf_generate(model, world, record, **kw):
    import torch
    from PIL import Image

    _, torch_model, processor = model
    tok = processor.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "<image>\n" + record["prompt"]}],
                                   add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.open(os.path.join(world, record["image"]))], text=[text], return_tensors="pt")
    with torch.no_grad():
        out = torch_model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                                   **kw)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def trim(ids, pad, eos_ids):
    """transformers pads a shorter best beam to the batch's output length: cut after the first stop."""
    out = []
    for t in ids:
        out.append(t)
        if t in eos_ids:
            break
    while out and out[-1] == pad and pad not in eos_ids:
        out.pop()
    return out


@pytest.mark.parametrize("num_beams,rep,lp,early", [(4, 1.1, 1.0, False), (3, 1.0, 0.0, True),
                                                   (4, 1.3, 2.0, "never")])
def test_beam_search_equals_transformers(world, model, generator, num_beams, rep, lp, early):
    from jax_align.sampling import SamplingParams

    recs = records(world)
    tok = model[2].tokenizer
    free = generator.generate(recs, SamplingParams(max_new_tokens=MAX_NEW, num_beams=num_beams), base_dir=world,
                              batch_size=4)
    # an extra stop token that the beams like, so that beams really end early (finished-beam bookkeeping); the
    # stop set is data, so trying candidates does not recompile
    tried = [int(t) for g in free for t in g.completions[0].token_ids[1:-1]]
    for extra_eos in dict.fromkeys(tried):
        sp = SamplingParams(max_new_tokens=MAX_NEW, num_beams=num_beams, repetition_penalty=rep, length_penalty=lp,
                            early_stopping=early, stop_token_ids=(extra_eos,), n_samples=2)
        ours = generator.generate(recs, sp, base_dir=world, batch_size=4)
        if any(len(g.completions[0].token_ids) < MAX_NEW for g in ours):
            break
    else:
        assert lp > 1.0, "no stop token made a beam end early"  # (a length penalty > 1 favours long answers)
    eos = [tok.eos_token_id, extra_eos]
    for rec, res in zip(recs, ours, strict=True):
        ref = hf_generate(model, world, rec, num_beams=num_beams, repetition_penalty=rep, length_penalty=lp,
                          early_stopping=early, eos_token_id=eos)
        best = res.completions[0]
        assert best.token_ids.tolist() == trim(ref, tok.pad_token_id, eos)
        assert len(res.completions) == 2  # the two best finished beams
        # the reported log-probs are the model's own (unpenalised) log-probs of the emitted tokens
        assert np.all(best.logprobs <= 0) and np.isfinite(best.logprobs).all()


def test_repetition_penalty_greedy_equals_transformers(world, model, generator):
    from jax_align.sampling import SamplingParams

    tok = model[2].tokenizer
    plain_sp, pen_sp = SamplingParams(max_new_tokens=MAX_NEW), SamplingParams(max_new_tokens=MAX_NEW,
                                                                                repetition_penalty=1.5)
    first = generator.generate(records(world), plain_sp, base_dir=world, batch_size=4)
    # prompts that already contain the model's favourite words, so the penalty has something to act on
    recs = [{"image": r["image"], "prompt": r["prompt"] + " " + g.completions[0].text}
            for r, g in zip(records(world), first, strict=True)]
    ours = generator.generate(recs, pen_sp, base_dir=world, batch_size=4)
    plain = generator.generate(recs, plain_sp, base_dir=world, batch_size=4)
    reused = {"penalty": 0, "plain": 0}  # generated tokens already seen (in the prompt or generated before)
    for rec, res, p in zip(recs, ours, plain, strict=True):
        ref = hf_generate(model, world, rec, repetition_penalty=1.5, eos_token_id=tok.eos_token_id)
        ids = res.completions[0].token_ids.tolist()
        assert ids == trim(ref, tok.pad_token_id, [tok.eos_token_id])
        for name, g in (("penalty", res), ("plain", p)):
            seen = set(g.prompt_ids.tolist())
            for t in g.completions[0].token_ids.tolist():
                reused[name] += t in seen
                seen.add(t)
    # what the penalty exists for: fewer repeated tokens than plain greedy decoding
    assert reused["penalty"] < reused["plain"], reused


def test_repetition_penalty_equals_transformers_processor():
    import jax.numpy as jnp
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from jax_align.sampling import apply_repetition_penalty, prompt_seen

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 11)).astype(np.float32)
    ids = rng.integers(0, 11, (3, 6))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(ids), torch.tensor(scores)).numpy()
    seen = prompt_seen(jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), 11)
    np.testing.assert_allclose(np.asarray(apply_repetition_penalty(jnp.asarray(scores), seen, 1.3)), ref, rtol=1e-6)
    mask = np.ones(ids.shape, np.int32)
    mask[:, :2] = 0  # left padding is never "seen"
    seen = np.asarray(prompt_seen(jnp.asarray(ids), jnp.asarray(mask), 11))
    for r in range(3):
        assert set(np.flatnonzero(seen[r])) == set(ids[r, 2:].tolist())


def test_beam_one_is_greedy_and_validation(world, generator):
    from jax_align.sampling import SamplingParams

    recs = records(world)
    a = generator.generate(recs, SamplingParams(max_new_tokens=MAX_NEW), base_dir=world, batch_size=4)
    b = generator.generate(recs, SamplingParams(max_new_tokens=MAX_NEW, num_beams=1, length_penalty=3.0),
                           base_dir=world, batch_size=4)
    assert [r.texts for r in a] == [r.texts for r in b]
    for bad in (dict(num_beams=0), dict(num_beams=2, temperature=0.7), dict(num_beams=2, n_samples=3),
                dict(repetition_penalty=0.0), dict(num_beams=2, early_stopping="sometimes")):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_cli_num_beams(world, model, tmp_path):
    from jax_align.cli.main import main

    recs = records(world)
    inp = os.path.join(world, "beam_in.jsonl")
    with open(inp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    out = str(tmp_path / "beam.jsonl")
    assert main(["generate", "--model", model[0], "--input", inp, "--output", out, "--max-new-tokens", str(MAX_NEW),
                 "--num-beams", "4", "--repetition-penalty", "1.1", "--no-progress"]) == 0
    tok = model[2].tokenizer
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    for rec, row in zip(recs, rows, strict=True):
        ref = hf_generate(model, world, rec, num_beams=4, repetition_penalty=1.1, eos_token_id=tok.eos_token_id)
        assert row["response"] == tok.decode(ref, skip_special_tokens=True).strip()
    assert main(["generate", "--model", model[0], "--input", inp, "--output", out, "--num-beams", "2",
                 "--temperature", "0.5", "--no-progress"]) == 2
