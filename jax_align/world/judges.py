"""A critic that knows the world's truth, and a policy that answers with the world's scored captions.

Stand-ins with exact ground truth for EACO's trained critic and policy (spec §1.2-1.3), so that the recipe's
selection can be checked against the truth on CPU in seconds:

* :class:`TruthCritic` reads the response quoted in the critic prompt (:func:`jax_align.recipes.eaco.critic_prompt`)
  and writes what a perfect generative critic would: per-dimension lines and ``score: N``
  (:func:`jax_align.data.critic_text.critic_target`), from the scene's objects with the pinned CHAIR parser:
  Visual Faithfulness = round(5 (1 - CHAIR_i)), Helpfulness = round(5 recall), total = 2 faithfulness +
  helpfulness.
* :class:`CandidatePolicy` samples each answer uniformly from the world's caption candidates of the image
  (``reward.jsonl``: the truth and its hallucinated, recoloured or shortened variants).

Both have :meth:`jax_align.generate.Generator.generate`'s call signature and return objects with ``texts``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jax_align.data.critic_text import critic_target
from jax_align.world.datasets import read_jsonl


@dataclass(frozen=True)
class _Generation:
    texts: list[str]


def _image_key(image, base_dir: str | None) -> str:
    return os.path.normpath(os.path.abspath(os.path.join(base_dir or ".", image)))


class TruthCritic:
    def __init__(self, world_dir: str):
        from jax_align.eval.evaluate import load_benchmarks

        self.bench = load_benchmarks(world_dir)
        root = os.path.abspath(world_dir)
        self.scenes = {os.path.normpath(os.path.join(root, k)): v for k, v in self.bench.scenes.items()}

    def judge(self, answer: str, image_key: str) -> str:
        from jax_align.eval.metrics import chair_metrics

        metrics, counts = chair_metrics([answer], [self.scenes[image_key]], self.bench.shape_words(),
                                        self.bench.config.colors)
        faithful = round(5 * (1 - metrics["chair_i"])) if counts["mentions"] else 0
        helpful = round(5 * metrics["recall"])
        return critic_target(2 * faithful + helpful, ("Helpfulness", "Visual Faithfulness"), (helpful, faithful))

    def generate(self, prompts: Sequence[dict], sampling=None, *, base_dir: str | None = None, **_) -> list:
        out = []
        for p in prompts:
            text = p["prompt"]
            answer = text.split("\nResponse: ", 1)[1].rsplit("\n", 1)[0]
            out.append(_Generation([self.judge(answer, _image_key(p["image"], base_dir))]))
        return out


class CandidatePolicy:
    def __init__(self, world_dir: str):
        root = os.path.abspath(world_dir)
        self.candidates = {os.path.normpath(os.path.join(root, r["image"])): r["responses"]
                           for r in read_jsonl(os.path.join(world_dir, "reward.jsonl"))
                           if str(r.get("id", "")).endswith("-caption")}

    def generate(self, prompts: Sequence[dict], sampling=None, *, seed: int = 0, base_dir: str | None = None,
                 **_) -> list:
        n = sampling.n_samples if sampling is not None else 1
        out = []
        for i, p in enumerate(prompts):
            pool = self.candidates[_image_key(p["image"], base_dir)]
            rng = np.random.default_rng([seed, i])
            out.append(_Generation([pool[int(k)] for k in rng.integers(len(pool), size=n)]))
        return out


# ---------------------------------------------------------------- trained judges of the world (EACO critic, §1.3)
def train_judge(stage: str, model: str, data: str, run_dir: str, *, steps: int, lr: float, batch_size: int,
                max_length: int, seed: int = 0, extra: dict | None = None) -> str:
    """One ``jax-align train`` run of ``stage`` from ``model`` on ``data`` (cosine schedule, one final checkpoint,
    the SFT model's vision tower trained too); returns the run's model directory."""
    from jax_align.data.buckets import even_buckets
    from jax_align.train.run_config import run_config, run_overrides
    from jax_align.train.trainer import Trainer

    cfg = run_config(run_overrides(run_dir, stage, data, steps=steps, lr=lr, batch_size=batch_size,
                                   max_length=max_length, buckets=even_buckets(max_length), seed=seed,
                                   extra={"model.path": model, "model.train_vision": True, **(extra or {})}))
    summary = Trainer(cfg).run()
    return summary.get("model") or os.path.join(run_dir, "model")


@dataclass(frozen=True)
class PolicySampling:
    """How a policy's own captions are drawn for a critic (:func:`policy_captions`): ``groups`` scenes from
    ``first`` on, ``k`` samples each at ``temperature``."""

    groups: int = 0
    first: int = 0
    k: int = 5
    temperature: float = 1.0
    max_new_tokens: int = 80
    batch_size: int = 64


def policy_captions(policy, world_dir: str, sampling: PolicySampling, *, seed: int = 0):
    """Per scene of ``world_dir`` (``sampling.first`` to ``first + groups``): the scene record, the caption prompt
    asked, and the policy's distinct sampled captions as ``(text, hallucinated, mentions)`` counted with the eval's
    parser (:meth:`jax_align.world.annotator.WorldAnnotator.hallucinations`). ``policy``: a model directory or an
    object with :meth:`jax_align.generate.Generator.generate`'s signature."""
    from jax_align.sampling import SamplingParams
    from jax_align.world.annotator import WorldAnnotator
    from jax_align.world.text import CAPTION_PROMPTS

    if isinstance(policy, str):
        from jax_align.generate import Generator

        policy = Generator.from_model_dir(policy)
    scenes = read_jsonl(os.path.join(world_dir, "scenes.jsonl"))[sampling.first: sampling.first + sampling.groups]
    rng = np.random.default_rng([seed, 2])
    prompts = [CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))] for _ in scenes]
    sp = SamplingParams(max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                        n_samples=sampling.k)
    gens = policy.generate([{"image": s["image"], "prompt": q} for s, q in zip(scenes, prompts, strict=True)], sp,
                           seed=seed, batch_size=sampling.batch_size, base_dir=os.path.abspath(world_dir))
    ann = WorldAnnotator(world_dir)
    out = []
    for scene, prompt, g in zip(scenes, prompts, gens, strict=True):
        texts = list(dict.fromkeys(t.strip() for t in g.texts if t.strip()))
        out.append((scene, prompt, [(t, *ann.hallucinations(scene, t)) for t in texts]))
    return out


def write_policy_critic_data(policy, world_dir: str, out_path: str, sampling: PolicySampling, *,
                             seed: int = 0) -> int:
    """A ``scored`` critic file like :func:`world.critiques.write_critic_data`, of the policy's own samples
    (:func:`policy_captions`): the captions the critic will judge in EACO's pair building (§1.2), whose mistakes
    are the policy's own (a critic that only saw the world's random candidates judged them at chance).
    Returns the number of groups written."""
    import json as _json

    from jax_align.atomic import atomic_file
    from jax_align.world.critiques import faithfulness_score

    base_out = os.path.dirname(os.path.abspath(out_path))
    n = 0
    with atomic_file(out_path) as dst:
        for scene, prompt, cands in policy_captions(policy, world_dir, sampling, seed=seed):
            if not cands:
                continue
            scored = sorted(((faithfulness_score(h), t) for t, h, _ in cands), key=lambda x: -x[0])
            image = os.path.relpath(os.path.join(os.path.abspath(world_dir), scene["image"]), base_out)
            dst.write(_json.dumps({"id": f"{scene.get('id', n)}-policy", "image": image, "prompt": prompt,
                                   "responses": [t for _, t in scored], "scores": [x for x, _ in scored]}) + "\n")
            n += 1
    return n


def train_world_critic(model: str, world_dir: str, run_dir: str, *, steps: int = 150, lr: float = 1e-3,
                       batch_size: int = 32, groups: int = 2000, seed: int = 0, policy=None,
                       policy_sampling: PolicySampling | None = None) -> str:
    """EACO's generative critic (§1.3) for a world, trained from a world SFT model ``model`` (it must see the
    images: a critic from random init cannot tell captions apart). Data: :func:`world.critiques.write_critic_data`
    (``groups`` scenes x 5 candidates, target ``score: N`` = 5 - hallucinated objects), and with ``policy`` also
    :func:`write_policy_critic_data` (its own samples of ``policy_sampling.groups`` further scenes, scored the
    same way). Returns the model dir."""
    from jax_align.atomic import atomic_file
    from jax_align.world.critiques import write_critic_data

    os.makedirs(run_dir, exist_ok=True)
    data = os.path.join(run_dir, "critic_data.jsonl")
    if not os.path.isfile(data):
        parts = [os.path.join(run_dir, "critic_candidates.jsonl")]
        write_critic_data(world_dir, parts[0], seed=seed, limit=groups)
        if policy is not None and policy_sampling is not None and policy_sampling.groups:
            parts.append(os.path.join(run_dir, "critic_policy.jsonl"))
            write_policy_critic_data(policy, world_dir, parts[1], policy_sampling, seed=seed)
        with atomic_file(data) as dst:  # the trainer shuffles the records
            for part in parts:
                with open(part) as src:
                    dst.writelines(src)
    return train_judge("critic", model, data, run_dir, steps=steps, lr=lr, batch_size=batch_size,
                       max_length=160, seed=seed)


def evaluate_world_critic(critic, world_dir: str, *, groups: int = 48, k: int = 5, seed: int = 777,
                          batch_size: int = 32, policy=None, sampling: PolicySampling | None = None) -> dict:
    """Quality of a critic (a model directory or any object with ``generate``) on ``groups`` scenes of
    ``world_dir`` (use a world it was not trained on), ``k`` fresh candidates each (:func:`candidate_captions`;
    with ``policy``, its own samples instead, :func:`policy_captions`): the fraction of outputs with a parsable
    score, and how often the critic's argmax (argmin) candidate has the lowest (highest) true hallucination count
    of its group (ties in the truth count as agreement), over groups with at least two parsed outputs and unequal
    truth."""
    import numpy as np

    from jax_align.data.critic_text import parse_critic_scores
    from jax_align.recipes.eaco import critic_prompt, judge_total
    from jax_align.sampling import SamplingParams
    from jax_align.world.critiques import candidate_captions
    from jax_align.world.datasets import load_world_config
    from jax_align.world.text import CAPTION_PROMPTS

    if isinstance(critic, str):
        from jax_align.generate import Generator

        critic = Generator.from_model_dir(critic)
    config = load_world_config(world_dir)
    if policy is not None:
        sampling = PolicySampling(**{**vars(sampling or PolicySampling()), "groups": groups, "k": k})
        sampled = policy_captions(policy, world_dir, sampling, seed=seed)
    else:
        sampled = []
        for i, scene in enumerate(read_jsonl(os.path.join(world_dir, "scenes.jsonl"))[:groups]):
            rng = np.random.default_rng([seed, i])
            prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]  # as the pipeline asks a world policy
            sampled.append((scene, prompt, candidate_captions(scene["objects"], config, rng, k)))
    jobs, truth = [], []
    for i, (scene, prompt, cands) in enumerate(sampled):
        truth.append([h for _, h, _ in cands])
        jobs += [(i, {"image": scene["image"], "prompt": critic_prompt(prompt, t)}) for t, _, _ in cands]
    gens = critic.generate([p for _, p in jobs], SamplingParams(max_new_tokens=6), seed=seed,
                           batch_size=batch_size, base_dir=os.path.abspath(world_dir))
    totals: dict[int, list] = {}
    for (i, _), g in zip(jobs, gens, strict=True):
        totals.setdefault(i, []).append(judge_total(parse_critic_scores(g.texts[0])))
    parsed = sum(t is not None for ts in totals.values() for t in ts)
    best = worst = n = 0
    chance_best = chance_worst = 0.0
    for i, ts in totals.items():
        idx = [j for j, t in enumerate(ts) if t is not None]
        hs = [truth[i][j] for j in idx]
        if len(idx) < 2 or min(hs) == max(hs):
            continue
        n += 1
        scores = [ts[j] for j in idx]
        best += hs[int(np.argmax(scores))] == min(hs)
        worst += hs[int(np.argmin(scores))] == max(hs)
        chance_best += hs.count(min(hs)) / len(hs)
        chance_worst += hs.count(max(hs)) / len(hs)
    return {"outputs": len(jobs), "parsable": parsed / max(1, len(jobs)), "groups": n,
            "argmax_agree": best / max(1, n), "argmin_agree": worst / max(1, n),
            "chance_argmax": chance_best / max(1, n), "chance_argmin": chance_worst / max(1, n)}


def pairs_chair(world_dir: str, pairs: Sequence[dict], base_dir: str) -> dict:
    """CHAIR_i of the chosen and of the rejected answers of EACO pair records (images relative to ``base_dir``,
    scenes of ``world_dir``), pooled over mentions, with the pinned parser: the direction check of §1.2."""
    from jax_align.eval.evaluate import load_benchmarks
    from jax_align.eval.metrics import chair_metrics

    bench = load_benchmarks(world_dir)
    root = os.path.abspath(world_dir)
    scenes = {os.path.normpath(os.path.join(root, k)): v for k, v in bench.scenes.items()}
    keys = [_image_key(p["image"], base_dir) for p in pairs]
    out = {"pairs": len(pairs)}
    for side in ("chosen", "rejected"):
        texts = [p[side][-1]["content"] if isinstance(p[side], list) else p[side] for p in pairs]
        m, _ = chair_metrics(texts, [scenes[k] for k in keys], bench.shape_words(), bench.config.colors)
        out[f"{side}_chair_i"] = m["chair_i"]
    return out
