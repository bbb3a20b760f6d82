"""Issue 14, Align²LLaVA (spec §3): RM pairs and augmentation, keep-top per instruction type, `jax-align curate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jax_align.recipes.align2llava import (
    answer_turns,
    augment_answer,
    augment_questions,
    augmentation_groups,
    keep_top,
    pairwise_accuracy,
    question_text,
    rm_pairs,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rm_pairs_drop_ties_and_accuracy():
    assert sorted(rm_pairs([0.5, 1.0, 0.5, 0.0])) == [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]
    acc, n = pairwise_accuracy([([1.0, 0.5, 0.5], [3.0, 1.0, 2.0]), ([0.2, 0.8], [5.0, 1.0])])
    assert n == 3 and acc == pytest.approx(2 / 3)


def test_augmentation_returns_strings_at_rate():
    rng = np.random.default_rng(0)
    text = "There is a small red circle at the top left."
    for _ in range(50):
        bad = augment_answer(text, rng)
        assert isinstance(bad, str) and set(bad.split()) <= set(text.split())  # words, not spaced characters
        qs = augment_questions(["Where is the red circle?", "How many stars are there?"], rng)
        assert all(isinstance(q, str) and "  " not in q for q in qs) and len(qs) >= 2
    groups = [{"image": "a.png", "prompt": "p", "responses": [f"answer number {i} is here now" for i in range(4)],
               "scores": [0.1, 0.2, 0.3, 0.4]} for _ in range(500)]
    extra = augmentation_groups(groups, rate=0.25, seed=1)
    assert 0.2 < len(extra) / 2000 < 0.3  # one pair per candidate with probability 0.25 (spec §3.2)
    assert all(e["scores"] == [1.0, 0.0] and e["responses"][0] != e["responses"][1] for e in extra)


def test_keep_top_per_type_and_turns():
    scores = [5, 1, 4, 2, 3, 9, 8, 7, 6, 0]
    types = ["detail"] * 5 + ["conversation"] * 5
    assert keep_top(scores, types, 0.4) == [0, 2, 5, 6]
    conv = {"conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A star."},
                              {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "Top left."}]}
    assert question_text(conv) == "What is it?\nWhere?"
    assert answer_turns(conv) == [("What is it?", "A star."), ("Where?", "Top left.")]


def test_curate_rank_answers_keeps_top_fraction_per_type(tmp_path):
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.train_inputs import resolve_world_inputs

    cfg = load_config(os.path.join(ROOT, "configs", "tiny_reward.yaml"),
                      [f"run.dir={tmp_path / 'rm'}", "train.steps=2", "train.progress=false",
                       "data.world={seed: 1, n: 8}"])
    Trainer(resolve_world_inputs(cfg)).run()
    world = tmp_path / "rm" / "world"
    typed = world / "typed.jsonl"
    with open(typed, "w") as f:
        for line in open(world / "sft.jsonl"):
            r = json.loads(line)
            f.write(json.dumps({**r, "type": r["id"].split("-")[1].rstrip("0123456789")}) + "\n")

    def curate(keep, out):
        proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "curate", "rank-answers", "--rm",
                               str(tmp_path / "rm" / "model"), "--input", str(typed), "--output", str(out),
                               "--keep", str(keep), "--max-length", "160"], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [json.loads(line) for line in open(out)], json.loads(proc.stdout.splitlines()[-1])

    every, _ = curate(1.0, tmp_path / "all.jsonl")
    kept, summary = curate(0.3, tmp_path / "kept.jsonl")
    by_type: dict[str, list] = {}
    for r in every:
        by_type.setdefault(r["curation"]["type"], []).append(r)
    assert set(by_type) == {"caption", "vqa", "exist"}
    for t, rows in by_type.items():
        want = sorted(rows, key=lambda r: -r["curation"]["score"])[: round(0.3 * len(rows))]
        got = [r for r in kept if r["curation"]["type"] == t]
        assert sorted(r["curation"]["score"] for r in got) == sorted(r["curation"]["score"] for r in want)
        assert summary["types"][t] == {"records": len(rows), "kept": len(want)}
    proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "data", "validate", str(tmp_path / "kept.jsonl"),
                           "--format", "sft"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
