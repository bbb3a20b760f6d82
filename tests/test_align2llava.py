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


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A 2-step `reward` stage run on a small world (its model: a linear head on the last token)."""
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.train_inputs import resolve_world_inputs

    run_dir = tmp_path_factory.mktemp("a2l") / "rm"
    cfg = load_config(os.path.join(ROOT, "configs", "tiny_reward.yaml"),
                      [f"run.dir={run_dir}", "train.steps=2", "train.progress=false", "data.world={seed: 1, n: 8}"])
    Trainer(resolve_world_inputs(cfg)).run()
    return run_dir


def test_curate_rank_answers_keeps_top_fraction_per_type(tiny_rm, tmp_path):
    world = tiny_rm / "world"
    typed = world / f"typed-{tmp_path.name}.jsonl"
    with open(typed, "w") as f:
        for line in open(world / "sft.jsonl"):
            r = json.loads(line)
            f.write(json.dumps({**r, "type": r["id"].split("-")[1].rstrip("0123456789")}) + "\n")

    def curate(keep, out):
        proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "curate", "rank-answers", "--rm",
                               str(tiny_rm / "model"), "--input", str(typed), "--output", str(out),
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
    proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "data", "validate",
                           str(tmp_path / "kept.jsonl"), "--format", "sft", "--allow-absolute-paths"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class _FakeLLM:
    """Rewrites by reversing the answer's words; the review says yes only for answers mentioning a circle."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, sampling=None, **kw):
        from types import SimpleNamespace

        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            text = p["prompt"]
            if text.startswith("Does the rewritten"):
                reply = "Yes." if "circle" in text.split("Original: ")[1].split("\n")[0] else "No."
            else:
                reply = " ".join(reversed(text.split("\nAnswer: ")[1].split()))
            out.append(SimpleNamespace(texts=[reply]))
        return out


def test_rewrite_text_only_and_review_keeps_meaning():
    from jax_align.recipes.align2llava_rewrite import RewriteConfig, is_free_form, rewrite_records

    long_a = "There is a small red circle at the top left of the image."
    long_b = "There is a large blue square at the center of the image."
    recs = [{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                 {"from": "gpt", "value": long_a},
                                                 {"from": "human", "value": "Is it red?"},
                                                 {"from": "gpt", "value": "Yes."}]},
            {"image": "b.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                 {"from": "gpt", "value": long_b}]},
            {"image": "c.png", "conversations": [{"from": "human", "value": "List."},
                                                 {"from": "gpt", "value": "- one item here\n- two items here"}]}]
    assert not is_free_form("- a list item that is long enough to count\n- b") and is_free_form(long_a)
    llm = _FakeLLM()
    out, counts = rewrite_records(llm, recs, RewriteConfig(review=True))
    assert all(p["image"] is None and "<image>" not in p["prompt"] for p in llm.prompts)  # the text decoder alone
    assert counts == {"answers": 4, "rewritten": 1, "unchanged": 0, "rejected": 1, "untouched": 2}
    assert out[0]["conversations"][1]["value"] == " ".join(reversed(long_a.split()))
    assert out[1]["conversations"][1]["value"] == long_b  # the review said the meaning changed: original kept
    assert out[0]["conversations"][3]["value"] == "Yes." and out[2] == recs[2]
    assert recs[0]["conversations"][1]["value"] == long_a  # input untouched
    _, counts = rewrite_records(_FakeLLM(), recs, RewriteConfig(review=False))
    assert counts["rewritten"] == 2 and counts["rejected"] == 0


def test_curate_rewrite_cli_with_review(tiny_rm, tmp_path):
    world = tiny_rm / "world"
    out = tmp_path / "rewritten.jsonl"
    src = [json.loads(line) for line in open(world / "sft.jsonl")][:6]
    (world / "six.jsonl").write_text("".join(json.dumps(r) + "\n" for r in src))
    proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "curate", "rewrite", "--model",
                           str(tiny_rm / "model"), "--input", str(world / "six.jsonl"), "--output", str(out),
                           "--review", "--max-new-tokens", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.splitlines()[-1])
    assert counts["answers"] == 6 and counts["untouched"] >= 1
    assert counts["rewritten"] + counts["unchanged"] + counts["rejected"] + counts["untouched"] == 6
    rows = [json.loads(line) for line in open(out)]
    for new, old in zip(rows, src, strict=True):  # a 2-step model never says "Yes": every original kept
        if counts["rewritten"] == 0:
            assert new["conversations"] == old["conversations"]


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "jax_align.cli.main", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_rm_data_formats_augmentation_and_eval(tiny_rm, tmp_path):
    world = tiny_rm / "world"
    groups = [json.loads(line) for line in open(world / "reward.jsonl")]
    answers, questions = world / f"answers-{tmp_path.name}.jsonl", world / f"questions-{tmp_path.name}.jsonl"
    with open(answers, "w") as f:  # Align²LLaVA answer preference records (spec §3.6)
        for g in groups:
            f.write(json.dumps({"id": g["id"], "image": g["image"], "conversations": [
                {"from": "human", "value": "<image>\n" + g["prompt"]},
                {"from": "gpt", "value": g["responses"], "score": g["scores"]}]}) + "\n")
    with open(questions, "w") as f:  # question preference records: sets of questions with one score each
        for g in groups[:4]:
            f.write(json.dumps({"id": g["id"], "image": g["image"], "questions": [[g["prompt"]], [
                g["prompt"], "Where is the circle?"]], "score": [0.5, 0.8]}) + "\n")
    out = tmp_path / "answers_scored.jsonl"
    proc = _cli("curate", "rm-data", "--kind", "answers", "--input", str(answers), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["groups"] == len(groups) and summary["pairs"] == sum(len(rm_pairs(g["scores"])) for g in groups)
    n_candidates = sum(len(g["responses"]) for g in groups)
    assert 0 < summary["augmented"] < 0.5 * n_candidates
    qout = tmp_path / "questions_scored.jsonl"
    proc = _cli("curate", "rm-data", "--kind", "questions", "--input", str(questions), "--output", str(qout))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in (out, qout):
        proc = _cli("data", "validate", str(path), "--format", "scored", "--allow-absolute-paths")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.png", "questions": [["q"]], "score": [0.5, 1.0]}) + "\n")
    proc = _cli("curate", "rm-data", "--kind", "questions", "--input", str(bad), "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        f"{bad}:1: score: expected 1 numbers, one per question set")
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(line for line in open(out).readlines()[: len(groups)]))
    proc = _cli("curate", "rm-eval", "--rm", str(tiny_rm / "model"), "--input", str(held_out), "--output",
                str(tmp_path / "eval.jsonl"), "--max-length", "160")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["pairs"] == summary["pairs"] and 0.0 <= result["pairwise_accuracy"] <= 1.0


def test_world_supplies_align2_preference_data(tmp_path):
    from jax_align.recipes.align2llava import rm_groups
    from jax_align.world.align2 import write_align2_files
    from jax_align.world.datasets import write_world

    world = str(tmp_path / "world")
    write_world(world, seed=6, n=6)
    counts = write_align2_files(world)
    scenes = {s["image"]: {(o["color"], o["shape"]) for o in s["objects"]}
              for s in map(json.loads, open(os.path.join(world, "scenes.jsonl")))}
    questions = [json.loads(line) for line in open(os.path.join(world, "align2_questions.jsonl"))]
    assert counts["align2_questions"] == len(questions) == 6
    for n, rec in enumerate(questions, 1):
        assert len(rec["questions"]) == 7 and rm_groups(rec, n, "questions")[0]["scores"] == rec["score"]
        for qs, score in zip(rec["questions"], rec["score"], strict=True):  # score = answerable fraction (truth)
            asked = [tuple(q[len("Where is the "):-1].split()) for q in qs]
            assert score == sum(a in scenes[rec["image"]] for a in asked) / len(qs)
    answers = [json.loads(line) for line in open(os.path.join(world, "align2_answers.jsonl"))]
    assert answers and all(rm_groups(r, n, "answers") for n, r in enumerate(answers, 1))
    from jax_align.eval.evaluate import load_benchmarks
    from jax_align.eval.metrics import chair_metrics
    from jax_align.world.align2 import answer_vocabulary
    from jax_align.world.text import question_kind

    bench = load_benchmarks(world)
    sft = {r["id"]: r for r in map(json.loads, open(os.path.join(world, "sft.jsonl")))}
    vocab = answer_vocabulary(sft.values())
    captions = [r for r in answers if question_kind(r["conversations"][0]["value"]) is None]
    short = [r for r in answers if r not in captions]
    # short questions: the record's SFT question, its true answer scored 1, wrong answers of its kind scored 0
    assert {question_kind(r["conversations"][0]["value"]) == "exist" for r in short} == {True, False}
    for rec in short:
        src = sft[rec["id"].removesuffix("-answers")]
        gpt, kind = rec["conversations"][1], question_kind(rec["conversations"][0]["value"])
        assert rec["conversations"][0] == src["conversations"][0] and sorted(gpt["score"])[-2:] == [0.0, 1.0]
        assert gpt["value"][gpt["score"].index(1.0)] == src["conversations"][1]["value"] and sum(gpt["score"]) == 1
        assert set(gpt["value"]) <= set(vocab[kind]) and len(set(gpt["value"])) == len(gpt["value"])
    for rec in captions:  # the score is tied to CHAIR's count: 1 - 0.25 x hallucinated objects (pinned parser)
        gpt = rec["conversations"][1]
        assert len(gpt["value"]) >= 5 and len(set(gpt["score"])) >= 2
        for text, score in zip(gpt["value"], gpt["score"], strict=True):
            _, counts = chair_metrics([text], [bench.scenes[rec["image"]]], bench.shape_words(), bench.config.colors)
            assert score == max(0.0, 1.0 - 0.25 * counts["hallucinated"])
    types = {json.loads(line)["type"] for line in open(os.path.join(world, "align2_instruct.jsonl"))}
    assert types == {"detail", "conversation", "complex_reasoning"}


def test_plain_template_is_the_rm_default_and_renders_spec_text(tiny_rm, tmp_path):
    """§3.2: the RMs read "<image>\\nQuestion: {q}\\nAnswer: {a}\\n" / "<image>\\n" + questions, no chat template;
    `curate rm-base` writes the copy the reward stage starts from (plain by default, chat on request)."""
    from jax_align.data.records import Message
    from jax_align.data.tokenize import ChatTokenizer

    plain, chat = tmp_path / "plain", tmp_path / "chat"
    proc = _cli("curate", "rm-base", "--model", str(tiny_rm / "model"), "--output", str(plain))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _cli("curate", "rm-base", "--model", str(tiny_rm / "model"), "--output", str(chat), "--template",
                "chat").returncode == 0
    tok, own = ChatTokenizer.from_model_dir(str(plain)), ChatTokenizer.from_model_dir(str(chat))
    answer = [Message("user", "<image>\nIs there a red circle?"), Message("assistant", "Yes.")]
    assert tok.render(answer, False) == "<s><image>\nQuestion: Is there a red circle?\nAnswer: Yes.\n"
    assert tok.render(answer[:1], True) == "<s><image>\nQuestion: Is there a red circle?\nAnswer: "
    questions = [Message("user", "<image>"), Message("assistant", "Where is the red circle?\nWhat colour?")]
    assert tok.render(questions, False) == "<s><image>\nWhere is the red circle?\nWhat colour?\n"
    assert "ASSISTANT" in own.render(answer, False)  # chat: the model's own template, unchanged
    group = tok.tokenize_group(answer[:1], [answer[1:], [Message("assistant", "No.")]])
    ids = tok.tokenizer.convert_ids_to_tokens(list(group.responses[0].ids))
    assert ids and "ASSISTANT" not in "".join(ids)
    bad = _cli("curate", "rm-base", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip().endswith(f"{tmp_path / 'nowhere'}: --model: no such model "
                                                               "directory")


def test_rank_answers_candidates_keep_the_best_per_turn(tiny_rm, tmp_path):
    """`--candidates 3 --sampler M`: the own answer + 2 samples per turn scored by the RM; the best replaces the
    turn's answer and the conversation scores the mean of its turns' best rewards (§3.1 step 4)."""
    world = tiny_rm / "world"
    src = world / f"cand-{tmp_path.name}.jsonl"
    with open(src, "w") as f:
        for line in list(open(world / "sft.jsonl"))[:6]:
            f.write(line)
    out = tmp_path / "kept.jsonl"
    args = ["curate", "rank-answers", "--rm", str(tiny_rm / "model"), "--input", str(src), "--output", str(out),
            "--keep", "1.0", "--max-length", "160", "--candidates", "3", "--max-new-tokens", "8"]
    proc = _cli(*args)
    assert proc.returncode == 2 and "--sampler" in proc.stderr.strip().splitlines()[-1]
    proc = _cli(*args, "--sampler", str(tiny_rm / "model"), "--temperature", "1.0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in open(out)]
    originals = {json.loads(line)["id"]: json.loads(line) for line in open(src)}
    assert len(rows) == 6
    replaced = 0
    for row in rows:
        cands = row["curation"]["candidates"]
        assert cands and all(c["candidates"][0] == originals[row["id"]]["conversations"][c["turn"]]["value"]
                             for c in cands)
        for c in cands:
            assert 2 <= len(c["candidates"]) <= 3 and len(c["rewards"]) == len(c["candidates"])
            assert c["chosen"] == int(np.argmax(c["rewards"]))
            assert row["conversations"][c["turn"]]["value"] == c["candidates"][c["chosen"]]
            replaced += c["chosen"] != 0
        assert row["curation"]["score"] == pytest.approx(np.mean([max(c["rewards"]) for c in cands]))
    print("turns answered by a sampled candidate:", replaced)
    proc = _cli("data", "validate", str(out), "--format", "sft", "--allow-absolute-paths")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_curation_with_a_truth_judge_keeps_higher_truth_than_random(tmp_path):
    """The keep-top step with the world's truth as the answer judge: the kept 30% per type hold fewer
    hallucinated objects than random selections of the same size (the trained RM's measurement is in the
    README: held-out pairwise accuracy, `world.align2.evaluate_world_rm`)."""
    from jax_align.world.align2 import write_align2_files
    from jax_align.world.datasets import write_world

    world = str(tmp_path / "world")
    write_world(world, seed=8, n=40)
    write_align2_files(world)
    rng = np.random.default_rng(0)
    pool, truth = [], []
    for rec in map(json.loads, open(os.path.join(world, "align2_answers.jsonl"))):
        gpt = rec["conversations"][1]
        k = int(rng.integers(len(gpt["value"])))  # one candidate answer per instruction: a noisy pool
        pool.append({**rec, "conversations": [rec["conversations"][0], {"from": "gpt", "value": gpt["value"][k]}]})
        truth.append(gpt["score"][k])
    types = ["detail" if i % 2 else "conversation" for i in range(len(pool))]
    kept = keep_top(truth, types, 0.3)
    random_means = [np.mean([truth[i] for i in rng.choice(len(pool), size=len(kept), replace=False)])
                    for _ in range(200)]
    assert np.mean([truth[i] for i in kept]) > np.percentile(random_means, 99)


def test_train_world_rm_entry_point_plain_template(tiny_rm, tmp_path):
    """The demo's entry point: `world.align2.train_world_rm` (2 steps here) starts from the plain copy of the
    model, so the reward model it returns scores with §3.2's template; `evaluate_world_rm` counts held-out pairs."""
    import shutil

    from jax_align.recipes.align2llava import PLAIN_TEMPLATE
    from jax_align.world.align2 import evaluate_world_rm, train_world_rm

    world = str(tmp_path / "world")
    shutil.copytree(tiny_rm / "world", world)
    model = train_world_rm(str(tiny_rm / "model"), world, str(tmp_path / "rm"), "answers", steps=2, groups=6)
    with open(os.path.join(model, "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == PLAIN_TEMPLATE
    result = evaluate_world_rm(model, world, "answers", groups=4, out_dir=str(tmp_path))
    assert result["groups"] == 4 and result["pairs"] > 4 and 0.0 <= result["pairwise_accuracy"] <= 1.0
