"""Issue 14, EACO (spec §1.2-1.5): pairing rules, critic-scored pairs on the world, unparsable critic outputs,
the dpo stage on 5-response records, `prefs eaco` / `prefs describe` and the resumable `pipeline eaco`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jax_align.data.pairing import all_pairs, best_worst, reduce_to_pair, tied_pairs
from jax_align.data.readers import open_records
from jax_align.data.validate import RecordChecker, iter_problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problems(path: str, fmt: str) -> list:
    return list(iter_problems(open_records(path), RecordChecker(fmt=fmt, allow_absolute_paths=True)))


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


# ------------------------------------------------------------------------------------------------ pairing
def test_best_worst_tie_rule_and_pairs():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scores = rng.integers(0, 4, size=int(rng.integers(2, 7))).tolist()
        c, r = best_worst(scores)
        if len(set(scores)) > 1:  # argmax / argmin, first occurrence (numpy's rule, the draft code's)
            assert (c, r) == (int(np.argmax(scores)), int(np.argmin(scores)))
            assert best_worst(scores, drop_ties=True) == (c, r)
        else:  # all equal: chosen = (argmax + 1) mod K (spec §1.2 step 5), or dropped
            assert (c, r) == (1 % len(scores), 0) and best_worst(scores, drop_ties=True) is None
        pairs = all_pairs(scores)
        assert all(scores[i] > scores[j] for i, j in pairs)
        assert len(pairs) + len(tied_pairs(scores)) == len(scores) * (len(scores) - 1) // 2
    assert best_worst([3.0]) is None
    assert tied_pairs([1, 2, 1, 2]) == [(0, 2), (1, 3)]


def test_reduce_to_pair_cuts_eaco_and_scored_records():
    eaco = {"image": "a.png", "prompt": "p", "output_list": ["a", "b", "c", "d", "e"],
            "score_list": [2, 5, 1, 5, 1], "critiques": ["ca", "cb", "cc", "cd", "ce"], "chosen": "b",
            "rejected": "c"}
    cut = reduce_to_pair(eaco)
    assert cut["output_list"] == ["b", "c"] and cut["score_list"] == [5, 1] and cut["critiques"] == ["cb", "cc"]
    assert "chosen" not in cut and eaco["output_list"] == ["a", "b", "c", "d", "e"]  # input untouched
    tied = reduce_to_pair({"prompt": "p", "responses": ["x", "y", "z"], "scores": [1, 1, 1]})
    assert tied["responses"] == ["y", "x"] and "scores" not in tied  # list order carries the tie rule's choice
    assert reduce_to_pair({"prompt": "p", "responses": ["x", "y", "z"], "scores": [1, 1, 1]},
                          drop_ties=True)["responses"] == ["x", "y", "z"]
    assert reduce_to_pair({"responses": ["x", "y", "z"], "scores": [1, 2]})["responses"] == ["x", "y", "z"]
    assert reduce_to_pair({"prompt": "p", "responses": ["x", "y"], "scores": [0, 1]})["responses"] == ["y", "x"]
    one = {"prompt": "p", "responses": ["x"], "scores": [0]}
    assert reduce_to_pair(one) is one


# ------------------------------------------------------------------------------------------------ world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from jax_align.world.datasets import write_world

    path = str(tmp_path_factory.mktemp("eaco") / "world")
    write_world(path, seed=3, n=24)
    return path


def _chair(world_dir: str, answers: list[str], images: list[str], base: str) -> list[float]:
    from jax_align.eval.evaluate import load_benchmarks
    from jax_align.eval.metrics import chair_metrics

    bench = load_benchmarks(world_dir)
    out = []
    for answer, image in zip(answers, images, strict=True):
        key = os.path.normpath(os.path.relpath(os.path.join(base, image), world_dir))
        out.append(chair_metrics([answer], [bench.scenes[key]], bench.shape_words(), bench.config.colors)[0]["chair_i"])
    return out


def test_eaco_pairs_on_world_chosen_hallucinate_less(world, tmp_path):
    from jax_align.recipes.bdhs import write_pairs
    from jax_align.recipes.eaco import DESCRIPTION_PROMPTS, EACOConfig, build_pairs
    from jax_align.world.judges import CandidatePolicy, TruthCritic

    records = _jsonl(os.path.join(world, "captions.jsonl"))
    pairs, stats = build_pairs(CandidatePolicy(world), TruthCritic(world), records, base_dir=world,
                               cfg=EACOConfig(n_samples=5))
    assert stats["unparsable"] == 0 and stats["pairs"] >= 15
    assert stats["pairs"] + stats["skipped_identical"] + stats["skipped_ties"] + stats["skipped_failed"] == 24
    out = str(tmp_path / "pairs.jsonl")
    write_pairs(pairs, world, out)
    assert _problems(out, "pairwise") == [] and _problems(out, "ranked") == []
    rows = _jsonl(out)
    for row in rows:  # the pair against the record's own scores: argmax / argmin, first occurrence
        s = row["score_list"]
        assert (row["eaco"]["chosen_index"], row["eaco"]["rejected_index"]) == best_worst(s)
        tie = len(set(s)) == 1  # all equal: chosen = (argmax + 1) mod K
        assert row["eaco"]["tie_rule"] == tie
        assert row["chosen"][1]["content"] == row["output_list"][(int(np.argmax(s)) + tie) % len(s)]
        assert row["rejected"][1]["content"] == row["output_list"][int(np.argmin(s))]
        assert row["prompt"] in DESCRIPTION_PROMPTS and len(row["critiques"]) == len(s)
        assert row["dimension_scores"][0].keys() == {"Helpfulness", "Visual Faithfulness"}
    # the direction EACO exists for, measured with the pinned CHAIR metric on the world's truth
    base = str(tmp_path)
    chosen = _chair(world, [r["chosen"][1]["content"] for r in rows], [r["image"] for r in rows], base)
    rejected = _chair(world, [r["rejected"][1]["content"] for r in rows], [r["image"] for r in rows], base)
    print("CHAIR_i chosen", np.mean(chosen), "rejected", np.mean(rejected))
    assert np.mean(chosen) < 0.5 * np.mean(rejected)
    worse = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    assert worse <= 0.1 * len(rows)  # a higher-recall caption may win with one wrong object more


class _ScoreCritic:
    """Writes ``score: f(h)`` from the truth's hallucination count of the response it is shown (or garbage)."""

    def __init__(self, world_dir, f):
        from jax_align.eval.evaluate import load_benchmarks

        self.bench, self.f = load_benchmarks(world_dir), f

    def generate(self, prompts, sampling=None, *, base_dir=None, **kw):
        from types import SimpleNamespace

        from jax_align.eval.metrics import chair_metrics

        out = []
        for p in prompts:
            answer = p["prompt"].split("\nResponse: ", 1)[1].rsplit("\n", 1)[0]
            key = os.path.normpath(os.path.relpath(os.path.join(base_dir, p["image"]), base_dir))
            _, counts = chair_metrics([answer], [self.bench.scenes[key]], self.bench.shape_words(),
                                      self.bench.config.colors)
            out.append(SimpleNamespace(texts=[self.f(counts["hallucinated"])]))
        return out


def test_world_critic_data_scores_hallucinated_objects_and_evaluator(world, tmp_path):
    """The critic's training data ties its `score: N` to CHAIR's count (N = 5 - hallucinated objects, pinned
    parser), and the critic evaluator tells a judge that reads the truth from a constant or unparsable one."""
    from jax_align.data.critic_text import critic_sft_file
    from jax_align.world.critiques import write_critic_data
    from jax_align.world.judges import evaluate_world_critic

    data = str(tmp_path / "critic.jsonl")
    assert write_critic_data(world, data, k=5, seed=0) == 24
    rows = _jsonl(data)
    assert _problems(data, "scored") == []
    spread = 0
    for row in rows:
        chair = _chair(world, row["responses"], [row["image"]] * len(row["responses"]), str(tmp_path))
        assert row["scores"] == sorted(row["scores"], reverse=True) and len(set(row["responses"])) >= 2
        for text, score, c in zip(row["responses"], row["scores"], chair, strict=True):
            mentions = text.count("There is")
            assert score == max(1, 5 - round(c * mentions))  # 5 - hallucinated objects
        spread += len(set(row["scores"])) > 1
    assert spread >= 0.8 * len(rows)  # most groups hold answers with different hallucination counts
    sft = str(tmp_path / "critic_sft.jsonl")
    critic_sft_file(data, sft)
    targets = [r["conversations"][1]["value"] for r in _jsonl(sft)]
    assert all(t.startswith("score: ") and len(t.split()) == 2 for t in targets)  # a short target
    truth = evaluate_world_critic(_ScoreCritic(world, lambda h: f"score: {5 - h}"), world, groups=24)
    assert truth["parsable"] == 1.0 and truth["argmax_agree"] == truth["argmin_agree"] == 1.0
    assert truth["groups"] >= 15 and truth["chance_argmax"] < 0.7
    constant = evaluate_world_critic(_ScoreCritic(world, lambda h: "score: 3"), world, groups=24)
    assert constant["argmax_agree"] < 0.8
    garbage = evaluate_world_critic(_ScoreCritic(world, lambda h: "three"), world, groups=24)
    assert garbage["parsable"] == 0.0 and garbage["groups"] == 0


def test_policy_critic_data_scores_the_policys_own_samples(world, tmp_path):
    """The critic's on-policy data (world.judges.write_policy_critic_data): each group holds the policy's distinct
    samples of one scene, scored 5 - hallucinated objects by the eval's parser; the evaluator judges a critic on
    the policy's samples the same way."""
    from jax_align.world.judges import CandidatePolicy, PolicySampling, evaluate_world_critic, write_policy_critic_data

    policy = CandidatePolicy(world)  # samples the world's caption candidates: different hallucination counts
    data = str(tmp_path / "critic_policy.jsonl")
    n = write_policy_critic_data(policy, world, data, PolicySampling(groups=12, first=6, k=5), seed=1)
    rows = _jsonl(data)
    assert n == len(rows) == 12 and _problems(data, "scored") == []
    scenes = [json.loads(line)["image"] for line in open(os.path.join(world, "scenes.jsonl"))][6:18]
    assert [os.path.normpath(os.path.relpath(os.path.join(tmp_path, r["image"]), world)) for r in rows] == scenes
    for row in rows:
        assert len(set(row["responses"])) == len(row["responses"])  # distinct samples only
        chair = _chair(world, row["responses"], [row["image"]] * len(row["responses"]), str(tmp_path))
        for text, score, c in zip(row["responses"], row["scores"], chair, strict=True):
            assert score == max(1, 5 - round(c * text.count("There is")))
    truth = evaluate_world_critic(_ScoreCritic(world, lambda h: f"score: {5 - h}"), world, groups=24,
                                  policy=policy)
    assert truth["groups"] >= 10 and truth["argmax_agree"] == truth["argmin_agree"] == 1.0
    reverse = evaluate_world_critic(_ScoreCritic(world, lambda h: f"score: {1 + h}"), world, groups=24,
                                    policy=policy)
    assert reverse["argmax_agree"] < 0.5 and reverse["groups"] == truth["groups"]


class _FlakyCritic:
    """Every third judgement has no score; record 0's judgements all fail."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def generate(self, prompts, sampling=None, **kw):
        outs = self.inner.generate(prompts, sampling, **kw)
        broken = []
        for k, (p, o) in enumerate(zip(prompts, outs, strict=True)):
            if k % 3 == 0 or p["image"] == prompts[0]["image"]:
                o = type(o)(["I think it has 3 objects."])  # an integer, but no anchored score
            broken.append(o)
        return broken


def test_unparsable_critic_outputs_are_counted_not_zero(world):
    from jax_align.recipes.eaco import EACOConfig, build_pairs
    from jax_align.world.judges import CandidatePolicy, TruthCritic

    records = _jsonl(os.path.join(world, "captions.jsonl"))[:9]
    for i, r in enumerate(records):
        r["id"] = f"cap-{i}"
    pairs, stats = build_pairs(CandidatePolicy(world), _FlakyCritic(TruthCritic(world)), records, base_dir=world,
                               cfg=EACOConfig(n_samples=5))
    failed_jobs = sum(1 for k in range(45) if k % 3 == 0 or k < 5)
    assert stats["unparsable"] == failed_jobs
    assert stats["skipped_failed"] >= 1 and "cap-0" in stats["unparsable_ids"]
    assert all(p["id"] != "cap-0" for p in pairs)
    for p in pairs:
        assert len(p["output_list"]) + len(p["eaco"]["unparsable"]) == 5
        assert all(u["critic_output"] == "I think it has 3 objects." for u in p["eaco"]["unparsable"])


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "jax_align.cli.main", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


PRESET = os.path.join(ROOT, "configs", "presets", "eaco_tiny.yaml")


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """The tiny preset (fewer steps; its dpo stage reads the 5-response records as ``ranked``, cut to their
    best/worst pair by the data pipeline), stopped at `describe` by a missing input."""
    from jax_align.cli.errors import CommandError
    from jax_align.cli.pipeline import load_pipeline, run_eaco

    d = str(tmp_path_factory.mktemp("pipeline") / "run")
    common = [f"dir={d}", "world={seed: 5, n: 8}", "policy.train.train.steps=2", "dpo.train.train.steps=2",
              "sft.train.train.steps=2", "describe.limit=4", "pairs.max_new_tokens=16", "critic.train.train.steps=40",
              "policy.train.data.batch_size=8", "critic.train.data.batch_size=8", "policy.train.data.buckets=[128]",
              "critic.train.data.buckets=[160]", "pairs.drop_ties=false"]  # one compilation per training stage
    with pytest.raises(CommandError, match="no such file"):
        run_eaco(load_pipeline(PRESET, [*common, "describe.input=WORLD/missing.jsonl"]))
    return d, common


def test_pipeline_eaco_runs_and_resumes(half_run):
    from jax_align.cli.pipeline import load_pipeline, run_eaco

    d, common = half_run
    assert load_pipeline(PRESET)["dpo"]["train"]["data"]["format"] == "ranked"
    assert sorted(os.listdir(os.path.join(d, ".done"))) == ["critic", "dpo", "pairs", "policy"]
    pairs = os.path.join(d, "pairs.jsonl")
    assert _problems(pairs, "pairwise") == [] and _problems(pairs, "ranked") == []
    critic_data = _jsonl(os.path.join(d, "critic_data.jsonl"))  # critic.data: world (5 - hallucinated objects)
    assert len(critic_data) == 8 and all(1 <= x <= 5 for r in critic_data for x in r["scores"])
    metrics = _jsonl(os.path.join(d, "dpo", "metrics.jsonl"))
    assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)
    before = os.path.getmtime(os.path.join(d, "dpo", "model"))
    result = run_eaco(load_pipeline(PRESET, common))
    assert result["stages"] == {"policy": "done before", "critic": "done before", "pairs": "done before",
                                "dpo": "done before", "describe": "ran", "sft": "ran"}
    assert os.path.getmtime(os.path.join(d, "dpo", "model")) == before
    described = _jsonl(os.path.join(d, "described.jsonl"))
    assert len(described) == 4 and _problems(os.path.join(d, "described.jsonl"), "sft") == []
    source = _jsonl(os.path.join(d, "world", "sft.jsonl"))[:4]
    for new, old in zip(described, source, strict=True):
        question = old["conversations"][0]["value"].replace("<image>\n", "")
        assert new["conversations"][0]["value"] == (f"<image>\nImage description:\n{new['description']['text']}"
                                                    f"\n\n{question}")
    assert os.path.isfile(os.path.join(d, "sft", "model", "config.json"))
    import yaml  # the sft stage continues the DPO adapter on the DPO stage's base (spec §1.2 step 7.3, §1.5)

    sft_cfg = yaml.safe_load(open(os.path.join(d, "sft", "config.yaml")))
    dpo_adapter = json.load(open(os.path.join(d, "dpo", "model", "adapter", "adapter.json")))
    assert sft_cfg["lora"]["init_from"] == os.path.join(d, "dpo", "model")
    assert sft_cfg["model"]["path"] == dpo_adapter["base"]["model"] == os.path.join(d, "policy", "model")
    assert json.load(open(os.path.join(d, "sft", "model", "adapter", "adapter.json")))["init_from"] == \
        sft_cfg["lora"]["init_from"]
    proc = _cli("pipeline", "eaco", PRESET, *common, "--dry-run")  # the command line, as documented
    assert proc.returncode == 0 and [ln.split(":")[0] for ln in proc.stdout.splitlines()] == [
        "policy", "critic", "pairs", "dpo", "describe", "sft"]


def test_eaco_7b_preset_loads():
    from jax_align.cli.pipeline import _overrides, check_train_configs, load_pipeline
    from jax_align.train.config import load_config

    cfg = load_pipeline(os.path.join(ROOT, "configs", "presets", "eaco_7b.yaml"), ["policy.model=/ckpt"])
    check_train_configs(cfg)
    dpo = load_config(None, ["run.stage=dpo", *_overrides(cfg["dpo"]["train"])])
    assert (dpo.loss.beta, dpo.optim.lr, dpo.lora.rank, dpo.lora.alpha) == (0.1, 1e-7, 128, 256)
    assert (cfg["pairs"]["n_samples"], cfg["pairs"]["temperature"], cfg["pairs"]["seed"]) == (5, 0.2, 42)
    from jax_align.cli.errors import CommandError  # the sft stage continues the DPO adapter: same LoRA shape

    with pytest.raises(CommandError, match=r"lora.rank: dpo 128, sft 64"):
        check_train_configs(load_pipeline(os.path.join(ROOT, "configs", "presets", "eaco_7b.yaml"),
                                          ["policy.model=/ckpt", "sft.train.lora.rank=64"]))


def test_prefs_eaco_cli_bad_input_and_unparsable_critic(world, half_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Describe."}) + "\n")
    proc = _cli("prefs", "eaco", "--policy", "x", "--critic", "y", "--input", str(bad), "--output",
                str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"{bad}:1: image: missing field: EACO judges "
                                                                 "answers about an image")
    model = os.path.join(half_run[0], "policy", "model")  # 2 SFT steps: it has never seen a `score:` line
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", **r, "image": os.path.relpath(
        os.path.join(world, r["image"]), tmp_path)}) + "\n" for i, r in
        enumerate(_jsonl(os.path.join(world, "captions.jsonl"))[:3])))
    out = tmp_path / "pairs.jsonl"
    proc = _cli("prefs", "eaco", "--policy", model, "--critic", model, "--input", str(prompts), "--output", str(out),
                "--n-samples", "2", "--max-new-tokens", "6", "--critic-max-new-tokens", "6", "--allow-absolute-paths")
    # a random critic writes no `score:` line: every output counted as unparsable, nothing read as 0
    assert proc.returncode == 2, proc.stderr[-2000:]
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["unparsable"] == 6 and summary["skipped_failed"] == 3 and summary["pairs"] == 0
    assert summary["unparsable_ids"] == ["r0", "r1", "r2"]
    assert "no parsable score" in proc.stderr and "no pairs" in proc.stderr.splitlines()[-1]
    assert not out.exists()
