"""Issue 7 item 1: BDHS (spec §2.2) — sentence planning, yes/no swap, masked guided continuation, provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jax_align.recipes.bdhs import BDHSConfig, _plan_guided, first_exchange, run_bdhs, split_sentences, swap_yes_no

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sentences_and_swap():
    assert split_sentences("There is a red circle. There is a cross!  Is it? ") == [
        "There is a red circle.", "There is a cross!", "Is it?"]
    assert swap_yes_no("Yes.") == "No." and swap_yes_no("no, there is none.") == "yes, there is none."
    assert swap_yes_no("Yesterday.") == "Yesterday."


def test_guided_plan_forces_ground_truth_prefixes():
    answer = "There is a small red circle at the top left. There is a large blue square at the center."
    rng = np.random.default_rng(0)
    for _ in range(20):
        jobs = _plan_guided(answer, rng, 0.5, 0, extend_prob=0.0)
        assert len(jobs) == 2
        first, second = jobs
        assert answer.startswith(first.prefix) and first.kept and first.prefix == first.kept
        assert second.prefix.startswith("There is a small red circle at the top left. ")
        assert 1 <= len(second.kept.split()) < len(split_sentences(answer)[1].split())
    extended = _plan_guided(answer, np.random.default_rng(1), 0.5, 0, extend_prob=1.0)
    assert len(extended) == 3 and extended[-1].prefix == answer + " There" and extended[-1].kept == "There"
    flips = [_plan_guided("Yes.", np.random.default_rng(s), 0.5, 0)[0] for s in range(200)]
    fixed = [j.fixed for j in flips if j.fixed is not None]
    assert set(fixed) == {"No."} and 60 < len(fixed) < 140  # swapped with probability 0.5


def test_first_exchange_formats():
    conv = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                {"from": "gpt", "value": "A circle."}]}
    assert first_exchange(conv) == ("What is it?", "A circle.")
    msgs = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
                         {"role": "assistant", "content": "A."}]}
    assert first_exchange(msgs) == ("Q?", "A.")


class _FakeEmbedder:
    """Cosine 1.0 for identical texts, else 0.5: every differing candidate is accepted at once."""

    def cosine(self, a, b):
        return np.array([1.0 if x == y else 0.5 for x, y in zip(a, b, strict=False)])


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    from gen_fixtures import build_world_llava

    from jax_align.world.datasets import write_world

    root = tmp_path_factory.mktemp("bdhs")
    world = str(root / "world")
    write_world(world, seed=2, n=6)
    model_dir, _ = build_world_llava(str(root / "model"))
    return world, model_dir


def test_run_bdhs_masks_images_and_records_provenance(world_model):
    from jax_align.generate import Generator

    world, model_dir = world_model
    records = [json.loads(line) for line in open(os.path.join(world, "sft.jsonl"))][:8]
    gen = Generator.from_model_dir(model_dir)
    seen = []
    original = gen.generate

    def spy(prompts, sampling=None, **kw):
        seen.append(kw)
        return original(prompts, sampling, **kw)

    gen.generate = spy
    pairs, stats = run_bdhs(gen, records, base_dir=world, embedder=_FakeEmbedder(),
                            cfg=BDHSConfig(attempts=2, max_new_tokens=8, batch_size=8))
    assert stats["records"] == 8 and stats["pairs"] + stats["dropped_identical"] == 8
    keeps = [k for call in seen for k in call["keep_masks"]]
    n_img = gen.config.num_image_tokens
    assert all(k.shape == (n_img,) for k in keeps)
    assert np.mean([k.mean() for k in keeps]) < 0.2  # rho_th = 0.99: almost every image token hidden
    for p in pairs:
        assert p["chosen"] != p["rejected"]
        assert set(p["bdhs"]) == {"rho_th", "attempts", "similarity", "guided"}
        assert p["bdhs"]["rho_th"] == 0.99 and p["bdhs"]["similarity"] == 0.5


def test_prefs_bdhs_cli(world_model, tmp_path):
    world, model_dir = world_model
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "prefs", "bdhs", "--model", model_dir,
                           "--input", os.path.join(world, "sft.jsonl"), "--output", str(out), "--limit", "6",
                           "--attempts", "2", "--max-new-tokens", "8"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(set(r) >= {"image", "prompt", "chosen", "rejected", "bdhs"} for r in rows)
    assert all(os.path.isfile(tmp_path / r["image"]) for r in rows)  # image paths relative to the output
