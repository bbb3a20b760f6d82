"""AMP's data recipes on the world (issue 15 items 2, 4, 5; spec §5.1-5.4), measured on model and data:

* the CLIP text encoder in JAX equals transformers' ``CLIPTextModel`` (pooled and last hidden states);
* the auto-check ranks held-out world captions with more ground-truth objects (the scenes' truth) above those with
  fewer, when hallucinated objects replace the missing ones (so every candidate has the same length);
* ``prefs amp-meg`` writes ranked files that ``data validate`` accepts, the standard answer on top and the experts
  ordered by parameter count; an expert that fails to load is one line naming its path (exit 2);
* an MDPO run through the trainer on AMP data from the world raises the standard response above the experts'
  (implicit rewards of ``jax_align.train.score.score_file`` against the start model).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from gen_fixtures import build_world_llava

from jax_align.cli.main import main

GOAL = 0.9


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def build_tiny_clip(out, words, seed=0, hidden=64, layers=1, heads=4, bag_of_words=True):
    """A tiny ``CLIPTextModel`` + CLIP BPE tokenizer (each word one token) written to ``out``, offline.

    ``bag_of_words``: weights set so the pooled state is close to a bag of the words (near-uniform causal
    attention, identity value/output maps, small position embeddings and MLP), as a trained CLIP's is for such
    short phrases, so different chunks stay below tau = 0.85 and equal ones match; else all weights random."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    os.makedirs(out, exist_ok=True)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def bpe(pieces):  # merges applied by rank, as the tokenizer does
        rank = {m: i for i, m in enumerate(merges)}
        while True:
            pairs = [(rank[p], i) for i, p in enumerate(zip(pieces, pieces[1:], strict=False)) if p in rank]
            if not pairs:
                return pieces
            _, i = min(pairs)
            pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]

    for w in sorted(set(words)):  # each word ends as one token: merge what the earlier merges leave, left to right
        pieces = bpe(list(w[:-1]) + [w[-1] + "</w>"])
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt"))
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         eos_token_id=eos, bos_token_id=bos, pad_token_id=eos)
    model = CLIPTextModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif not bag_of_words:
                p.copy_(0.5 * noise)
            elif "token_embedding" in name:
                p.copy_(noise)
            elif "position_embedding" in name:
                p.copy_(0.01 * noise)
            elif any(k in name for k in ("v_proj.weight", "out_proj.weight")):
                p.copy_(torch.eye(hidden) * (3.0 if "out_proj" in name else 1.0) + 0.05 * noise)
            else:  # q/k (near-uniform causal attention: a running mean of the words), MLP, biases: small
                p.copy_(0.02 * noise)
    model.save_pretrained(out)
    return model, tok


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A world; a start model (30 SFT steps from the tiny-world preset, also the bigger expert and the MDPO
    reference); a smaller random expert; a tiny bag-of-words CLIP; AMP-MEG groups from the world's captions."""
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.clip_text import write_world_clip
    from jax_align.world.datasets import write_world
    from jax_align.world.train_inputs import resolve_world_inputs

    root = str(tmp_path_factory.mktemp("amp"))
    world = os.path.join(root, "world")
    write_world(world, seed=17, n=12)
    cfg = resolve_world_inputs(load_config(None, [
        f"run.dir={root}/base", "run.stage=sft", "model.init=tiny-world", f"model.tokenizer={world}/tokenizer",
        f"data.train={world}/sft.jsonl", "data.max_length=160", "train.steps=30", "optim.lr=2e-3",
        "optim.schedule=constant", "train.progress=false", "checkpoint.every=1000"]))
    Trainer(cfg).run()
    small, _ = build_world_llava(os.path.join(root, "small_expert"), seed=3,
                                 text_overrides=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1))
    clip = write_world_clip(os.path.join(root, "clip"))  # the world's own tiny bag-of-words CLIP
    captions = [r for r in _read(os.path.join(world, "sft.jsonl")) if r["id"].endswith("-caption")]
    prompts = _write(os.path.join(world, "amp_prompts.jsonl"), captions)
    meg = os.path.join(world, "amp_meg.jsonl")  # image paths must stay inside a data file's directory
    base = os.path.join(root, "base", "model")
    assert main(["prefs", "amp-meg", "--experts", f"{small},{base}", "--input", prompts, "--output", meg,
                 "--max-new-tokens", "40", "--limit", "8"]) == 0
    return {"root": root, "world": world, "base": base, "small": small, "clip": clip, "prompts": prompts,
            "captions": captions, "meg": meg}


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("bag_of_words", [True, False])
def test_clip_text_encoder_equals_transformers(tmp_path, bag_of_words):
    import jax.numpy as jnp
    import torch

    from jax_align.embedders.clip_text import ClipTextEmbedder, clip_text_encode

    model, tok = build_tiny_clip(str(tmp_path / "clip"), ["small", "red", "circle", "top", "left", "there", "is"],
                                 layers=2, bag_of_words=bag_of_words)
    emb = ClipTextEmbedder.from_dir(str(tmp_path / "clip"))
    texts = ["small red circle", "top left", "There is a small red circle at the top left.", "red"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc)
    hidden, pooled = clip_text_encode(emb.params, jnp.asarray(enc["input_ids"].numpy()),
                                      jnp.asarray(enc["attention_mask"].numpy()), emb.config)
    np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=1e-4, rtol=1e-4)
    real = enc["attention_mask"].numpy()[..., None] > 0
    np.testing.assert_allclose(np.where(real, np.asarray(hidden), 0), np.where(real, ref.last_hidden_state.numpy(), 0),
                               atol=1e-4, rtol=1e-4)
    vecs = emb.embed(texts)  # bucketed batches: the same unit vectors
    want = ref.pooler_output.numpy() / np.linalg.norm(ref.pooler_output.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, want, atol=1e-4)


def _held_out_groups(seed: int, n_scenes: int):
    """Held-out scenes (a seed no world of this module uses): the truth caption as the standard answer, and for
    j = 0 .. n-1 a caption keeping j true objects, the others replaced by hallucinated ones (a shape and colour
    the scene does not have together), listed in a shuffled order."""
    from jax_align.world.config import POSITIONS, WorldConfig
    from jax_align.world.scenes import WorldObject, sample_scenes
    from jax_align.world.text import caption_of

    cfg = WorldConfig()
    rng = random.Random(seed)
    groups = []
    for scene in [s for s in sample_scenes(seed, 80, cfg) if len(s.objects) >= 2][:24]:
        def fake(scene=scene):
            while True:
                o = WorldObject(rng.choice(cfg.shapes), rng.choice(cfg.colors), rng.choice(cfg.sizes),
                                rng.choice(POSITIONS))
                if all(o.shape != t.shape or o.color != t.color for t in scene.objects):
                    return o
        cands = []
        for j in range(len(scene.objects)):
            objs = rng.sample(list(scene.objects), j) + [fake() for _ in range(len(scene.objects) - j)]
            rng.shuffle(objs)
            cands.append((caption_of(objs), j))
        rng.shuffle(cands)
        groups.append((scene, caption_of(scene.objects), cands))
    return groups


def test_auto_check_ranks_captions_by_ground_truth_objects(setup, tmp_path):
    world = setup["world"]
    image = "images/000000.png"  # any image: the auto-check reads only the texts
    records = []
    for scene, truth, cands in _held_out_groups(seed=2024, n_scenes=24):
        k = 1 + len(cands)
        # the incoming order (scores) is the shuffled one: the auto-check must find the truth order itself
        records.append({"id": f"scene{scene.index}", "image": image, "prompt": "Describe the image in detail.",
                        "responses": [truth] + [c for c, _ in cands], "scores": [float(k - i) for i in range(k)],
                        "true_objects": [len(scene.objects)] + [j for _, j in cands]})
    inp = _write(os.path.join(world, "held_out_groups.jsonl"), records)
    out = os.path.join(world, "held_out_checked.jsonl")
    assert main(["prefs", "amp-check", "--clip", setup["clip"], "--input", inp, "--output", out]) == 0
    assert main(["data", "validate", out, "--format", "ranked"]) == 0
    checked = _read(out)
    good = total = 0
    for rec, src in zip(checked, records, strict=True):
        count = {text: n for text, n in zip(src["responses"], src["true_objects"], strict=True)}
        assert rec["responses"][0] == src["responses"][0]  # the standard answer stays on top
        assert rec["scores"] == sorted(rec["scores"], reverse=True) and len(set(rec["scores"])) == len(rec["scores"])
        truth = [count[t] for t in rec["responses"]]  # ground-truth objects of each caption, in the checked order
        for i in range(len(truth)):
            for j in range(i + 1, len(truth)):
                if truth[i] != truth[j]:
                    total += 1
                    good += truth[i] > truth[j]
    print(f"auto-check: {good}/{total} candidate pairs ordered by true-object count")
    assert total >= 40
    assert good / total >= 0.85, (good, total)


def test_meg_writes_valid_ranked_files_ordered_by_size(setup):
    from jax_align.generate import Generator
    from jax_align.recipes.amp import parameter_count

    meg = setup["meg"]
    assert main(["data", "validate", meg, "--format", "ranked"]) == 0
    groups = _read(meg)
    assert len(groups) >= 8 - 2  # only groups left without two distinct answers drop
    sizes = {p: parameter_count(Generator.from_model_dir(p)) for p in (setup["small"], setup["base"])}
    big_first = sorted(sizes, key=lambda p: -sizes[p])
    standards = {r["id"]: r["conversations"][1]["value"] for r in setup["captions"]}
    for g in groups:
        assert g["responses"][0] == standards[g["id"]] and g["amp"]["sources"][0] == "standard"
        experts = g["amp"]["sources"][1:]
        assert experts == [p for p in big_first if p in experts]  # S > bigger expert > smaller expert
        assert g["scores"] == sorted(g["scores"], reverse=True)
        assert os.path.isfile(os.path.join(os.path.dirname(meg), g["image"]))  # rebased to the output directory


def test_meg_bad_expert_names_its_path(setup, tmp_path, capsys):
    bad = tmp_path / "broken_expert"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    out = str(tmp_path / "never.jsonl")
    rc = main(["prefs", "amp-meg", "--experts", f"{setup['small']},{bad}", "--input", setup["prompts"],
               "--output", out, "--max-new-tokens", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad) in err[0], err
    assert not os.path.exists(out)
    bad_input = _write(str(tmp_path / "bad_prompts.jsonl"), [{"image": "x.png", "conversations": []}])
    rc = main(["prefs", "amp-meg", "--experts", setup["small"], "--input", bad_input, "--output", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{bad_input}:1:" in err[0], err


def test_mdpo_on_amp_data_raises_the_standard_response(setup, tmp_path):
    from jax_align.train.config import load_config
    from jax_align.train.score import score_file
    from jax_align.train.trainer import Trainer

    checked = os.path.join(os.path.dirname(setup["meg"]), "meg_checked.jsonl")
    assert main(["prefs", "amp-check", "--clip", setup["clip"], "--input", setup["meg"], "--output", checked]) == 0
    k = max(len(g["responses"]) for g in _read(checked))
    run = os.path.join(setup["root"], "mdpo")
    cfg = load_config(None, [f"run.dir={run}", "run.stage=mdpo", f"model.path={setup['base']}",
                             f"data.train={checked}", "data.max_length=160", f"data.num_responses={k}",
                             "data.batch_size=8", "train.steps=30", "optim.lr=1e-3", "optim.schedule=constant",
                             "train.progress=false", "checkpoint.every=1000"])
    Trainer(cfg).run()
    out = str(tmp_path / "scored.jsonl")
    score_file(os.path.join(run, "model"), checked, out, reference=setup["base"], buckets=(160,))
    wins = total = 0
    margin = 0.0
    for rec in _read(out):
        r = rec["implicit_rewards"]  # in the record's order: the standard answer is listed first
        assert rec["amp"]["sources"][0] == "standard"
        for j in range(1, len(r)):
            total += 1
            wins += r[0] > r[j]
            margin += r[0] - r[j]
    print(f"mdpo on AMP data: standard above expert in {wins}/{total} pairs, mean margin {margin / total:.3f}")
    assert total > 0
    # at the start every implicit reward is 0 (policy = reference): MDPO put the standard answer above the experts'
    assert wins / total >= GOAL, (wins, total)
    assert margin / total > 0


def test_ig_trains_on_cumulative_parts_and_answers_base_last(setup, tmp_path):
    from jax_align.recipes.amp import split_cumulative

    assert [len(p) for p in split_cumulative(list(range(10)), 3)] == [3, 7, 10]  # F_1, F_1..F_2, F_1..F_3
    out = os.path.join(setup["world"], "amp_ig.jsonl")
    work = str(tmp_path / "ig")
    assert main(["prefs", "amp-ig", "--base", setup["base"], "--sft", os.path.join(setup["world"], "sft.jsonl"),
                 "--parts", "1", "--work-dir", work, "--input", setup["prompts"], "--output", out, "--limit", "3",
                 "--num-beams", "2", "--max-new-tokens", "8", "--set", "train.steps=2", "--set", "data.max_length=160",
                 "--set", "train.progress=false", "--set", "checkpoint.every=1000", "--set", "optim.lr=1e-3"]) == 0
    assert main(["data", "validate", out, "--format", "ranked"]) == 0
    tuned = os.path.join(work, "part_1", "run", "model")
    assert os.path.isdir(tuned)
    for g in _read(out):
        assert g["amp"]["method"] == "ig" and g["amp"]["sources"][0] == "standard"
        assert g["amp"]["sources"][1:] == [p for p in (tuned, setup["base"]) if p in g["amp"]["sources"]]


def test_amp_check_reads_amp_output_k_conversations(setup):
    """AMP's own record format (§5.4): a JSON list of ``output_1..K`` multi-round conversations, best first."""
    turn = lambda a, b: [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": a},  # noqa: E731
                         {"from": "human", "value": "What else?"}, {"from": "gpt", "value": b}]
    record = {"image": "images/000000.png",
              "output_1": turn("There is a small blue circle at the bottom center.", "There is a red star at the top."),
              "output_2": turn("There is a large green square at the top left.", "There is a yellow cross."),
              "output_3": turn("There is a small blue circle at the bottom center.", "Nothing else.")}
    inp = os.path.join(setup["world"], "amp_format.json")
    with open(inp, "w") as f:
        json.dump([record], f)
    out = os.path.join(setup["world"], "amp_format_checked.jsonl")
    assert main(["prefs", "amp-check", "--clip", setup["clip"], "--input", inp, "--output", out]) == 0
    assert main(["data", "validate", out, "--format", "ranked"]) == 0
    (rec,) = _read(out)
    assert [r[-1]["content"] for r in rec["responses"]] == ["There is a red star at the top.", "Nothing else.",
                                                           "There is a yellow cross."]  # output_3 shares chunks
    assert rec["amp_check"]["previous_rank"] == [0, 2, 1] and rec["scores"] == [2.0, 1.0, 0.0]


def test_world_clip_is_a_transformers_model_and_separates_chunks(setup):
    """The world's tiny CLIP (``jax_align.world.clip_text``, written without torch) loads in transformers with the
    same embeddings, every world word is one token, and different chunks stay below tau while equal ones match."""
    import torch
    from transformers import AutoTokenizer, CLIPTextModel

    from jax_align.embedders.clip_text import ClipTextEmbedder

    model, tok = CLIPTextModel.from_pretrained(setup["clip"]).eval(), AutoTokenizer.from_pretrained(setup["clip"])
    texts = ["small red circle", "large blue square", "top left", "There is a small red circle at the top left."]
    assert len(tok(texts[3])["input_ids"]) == 2 + 11  # start, 10 words and ".", end
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).pooler_output.numpy()
    vecs = ClipTextEmbedder.from_dir(setup["clip"]).embed(texts + texts[:1])
    np.testing.assert_allclose(vecs[:4], ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 4] > 0.999 and sims[0, 1] < 0.85 and sims[0, 2] < 0.85
