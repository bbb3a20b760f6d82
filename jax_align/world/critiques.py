"""Critique-annotated preference pairs from a world, for MM-RLHF's critique-based reward model (spec §4.2).

Every scored group of the world's ``reward.jsonl`` gives one pair (best vs worst candidate), and each answer
gets a critique written from the scene's truth in the world's own words (so the world tokenizer knows them):

* a correct answer: ``"Yes."``;
* a wrong yes/no answer: ``"No."``;
* a wrong caption: ``"No."``, then ``"There is no <object sentence>"`` for every described object the image
  does not hold, then the sentence of every object the answer left out.

The records use MM-RLHF's field names (``chosen_reason``, ``rejected_reason``, spec §4.6).
"""

from __future__ import annotations

import json
import os

from jax_align.atomic import atomic_file
from jax_align.world.datasets import read_jsonl
from jax_align.world.scenes import WorldObject
from jax_align.world.text import object_sentence


def _sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.split(".") if s.strip()]


def _negate(sentence: str) -> str:
    """``"There is a small red circle at ..."`` -> ``"There is no small red circle at ..."``."""
    for article in ("There is a ", "There is an "):
        if sentence.startswith(article):
            return "There is no " + sentence[len(article):]
    return sentence


def caption_critique(answer: str, truth: list[str]) -> str:
    """Critique of a caption against the truth's object sentences (``"There is a ... at the ...."``)."""
    said = _sentences(answer)
    wrong = [s for s in said if s not in truth]
    missing = [s for s in truth if s not in said]
    if not wrong and not missing:
        return "Yes."
    parts = ["No."] + [_negate(s) for s in wrong] + missing
    return " ".join(parts)


def critique_pairs(world_dir: str, out_path: str) -> int:
    """Write best-vs-worst pairs with critiques for every scored group of ``world_dir``; returns the count."""
    scenes = {s["image"]: s for s in read_jsonl(os.path.join(world_dir, "scenes.jsonl"))}
    base_out = os.path.dirname(os.path.abspath(out_path))
    n = 0
    with atomic_file(out_path) as dst:
        for rec in read_jsonl(os.path.join(world_dir, "reward.jsonl")):
            responses, scores = rec["responses"], rec["scores"]
            if len(responses) < 2 or scores[0] == scores[-1]:
                continue
            chosen, rejected = responses[0], responses[-1]
            if rec["image"] not in scenes:
                raise ValueError(f"{world_dir}/reward.jsonl: record {rec['id']}: image {rec['image']} has no scene")
            if rec["id"].endswith("-caption"):
                truth = [object_sentence(WorldObject(**o)) for o in scenes[rec["image"]]["objects"]]
                reasons = [caption_critique(chosen, truth), caption_critique(rejected, truth)]
            else:
                reasons = ["Yes.", "No."]  # yes/no groups: the best answer is right, the worst wrong
            image = os.path.relpath(os.path.join(os.path.abspath(world_dir), rec["image"]), base_out)
            dst.write(json.dumps({"image": image, "prompt": rec["prompt"], "chosen": chosen, "rejected": rejected,
                                  "chosen_reason": reasons[0], "rejected_reason": reasons[1]}) + "\n")
            n += 1
    return n


# ------------------------------------------------------------------ EACO's generative critic on the world (§1.3)
# The world's own ``reward.jsonl`` scores captions by Jaccard to the truth, so a caption that leaves an object
# out ranks like one that invents one, and 5 fixed variants per scene give a tiny critic few distinct targets.
# The critic's data below ties the score to hallucinated objects only (what CHAIR counts: a mentioned
# (colour, shape) the image does not hold) and draws fresh candidates per scene.
CRITIC_MAX_SCORE = 5


def faithfulness_score(hallucinated: int) -> int:
    """The critic's target total: ``5 - hallucinated objects``, at least 1 (a 1-5 scale as VLFeedback's, §1.1)."""
    return max(1, CRITIC_MAX_SCORE - int(hallucinated))


def candidate_captions(objects: list, config, rng, k: int) -> list[tuple[str, int, int]]:
    """Up to ``k`` distinct captions of a scene as ``(text, hallucinated, mentions)``.

    Each keeps a random non-empty subset of the true objects (all of them half of the time) and adds
    ``h ~ U{0..3}`` wrong objects, each a recoloured true object (a tiny captioner's usual slip) or an absent
    shape in a free cell (the companion of a present trigger first: the world's co-occurrence bias). Sentences
    follow the world's canonical order, as the world's captions do.
    """
    from jax_align.world.config import POSITIONS
    from jax_align.world.scenes import WorldObject, canonical_order
    from jax_align.world.text import caption_of

    truth = [WorldObject(**o) if isinstance(o, dict) else o for o in objects]
    pairs = {(o.color, o.shape) for o in truth}
    present = {o.shape for o in truth}
    preferred = [c for t, c in config.pairs if t in present and c not in present]
    seen, out = set(), []
    for _ in range(4 * k):
        if len(out) == k:
            break
        keep = truth if rng.random() < 0.5 else [o for o in truth if rng.random() < 0.6] or [truth[0]]
        objs = list(keep)
        used = {o.position for o in objs}
        for _ in range(int(rng.integers(0, 4))):
            free = [p for p in POSITIONS if p not in used]
            if rng.random() < 0.5 and objs:
                i = int(rng.integers(len(objs)))
                colors = [c for c in config.colors if (c, objs[i].shape) not in pairs]
                if colors:
                    o = objs[i]
                    objs[i] = WorldObject(o.shape, colors[int(rng.integers(len(colors)))], o.size, o.position)
            elif free:
                shapes = preferred if preferred and rng.random() < 0.5 else list(config.shapes)
                shape = shapes[int(rng.integers(len(shapes)))]
                colors = [c for c in config.colors if (c, shape) not in pairs]
                pos = free[int(rng.integers(len(free)))]
                objs.append(WorldObject(shape, colors[int(rng.integers(len(colors)))],
                                        config.sizes[int(rng.integers(len(config.sizes)))], pos))
                used.add(pos)
        text = caption_of(canonical_order(objs, config))
        if text not in seen:
            seen.add(text)
            out.append((text, sum((o.color, o.shape) not in pairs for o in objs), len(objs)))
    return out


def write_critic_data(world_dir: str, out_path: str, *, k: int = 5, seed: int = 0, limit: int = 0) -> int:
    """A ``scored`` file for the ``critic`` stage: per scene ``k`` candidate captions (:func:`candidate_captions`)
    under one of EACO's description prompts (§1.2) or the world's caption prompts (what a world policy is asked
    with ``prompts: question``), scored :func:`faithfulness_score` (integers, so the critic's
    target is a short ``score: N``), best first. Returns the number of groups written."""
    import numpy as np

    from jax_align.recipes.eaco import DESCRIPTION_PROMPTS
    from jax_align.world.datasets import load_world_config
    from jax_align.world.text import CAPTION_PROMPTS

    prompts = (*DESCRIPTION_PROMPTS, *CAPTION_PROMPTS)

    config = load_world_config(world_dir)
    scenes = read_jsonl(os.path.join(world_dir, "scenes.jsonl"))[: limit or None]
    base_out = os.path.dirname(os.path.abspath(out_path))
    n = 0
    with atomic_file(out_path) as dst:
        for i, scene in enumerate(scenes):
            rng = np.random.default_rng([seed, i])
            cands = candidate_captions(scene["objects"], config, rng, k)
            scored = sorted(((faithfulness_score(h), t) for t, h, _ in cands), key=lambda x: -x[0])
            image = os.path.relpath(os.path.join(os.path.abspath(world_dir), scene["image"]), base_out)
            dst.write(json.dumps({"id": f"{scene.get('id', i)}-critic", "image": image,
                                  "prompt": prompts[int(rng.integers(len(prompts)))],
                                  "responses": [t for _, t in scored], "scores": [s for s, _ in scored]}) + "\n")
            n += 1
    return n


def critique_candidate_pairs(world_dir: str, out_path: str, *, seed: int = 0, limit: int = 0) -> int:
    """Critique-annotated pairs for MM-RLHF's reward model (§4.2, §4.6 field names) whose preference is about
    hallucination only: per scene, of fresh :func:`candidate_captions`, the one with the fewest hallucinated
    objects (more mentions on a tie) against the one with the most, each with its critique in the world's words;
    plus every yes/no group of ``reward.jsonl`` (the right answer against the wrong one). Scenes whose
    candidates hallucinate equally give no pair. Returns the number of pairs written."""
    import numpy as np

    from jax_align.world.datasets import load_world_config
    from jax_align.world.text import CAPTION_PROMPTS

    config = load_world_config(world_dir)
    scenes = read_jsonl(os.path.join(world_dir, "scenes.jsonl"))[: limit or None]
    base_out = os.path.dirname(os.path.abspath(out_path))
    rel = lambda image: os.path.relpath(os.path.join(os.path.abspath(world_dir), image), base_out)  # noqa: E731
    n = 0
    with atomic_file(out_path) as dst:
        for i, scene in enumerate(scenes):
            rng = np.random.default_rng([seed, 1, i])
            cands = candidate_captions(scene["objects"], config, rng, 5)
            best = min(cands, key=lambda c: (c[1], -c[2]))
            worst = max(cands, key=lambda c: (c[1], -c[2]))
            if best[1] == worst[1]:
                continue
            truth = [object_sentence(WorldObject(**o)) for o in scene["objects"]]
            dst.write(json.dumps({"image": rel(scene["image"]),
                                  "prompt": CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))],
                                  "chosen": best[0], "rejected": worst[0],
                                  "chosen_reason": caption_critique(best[0], truth),
                                  "rejected_reason": caption_critique(worst[0], truth)}) + "\n")
            n += 1
        images = {s["image"] for s in scenes}
        for rec in read_jsonl(os.path.join(world_dir, "reward.jsonl")):
            if rec["id"].endswith("-exist") and rec["image"] in images:
                dst.write(json.dumps({"image": rel(rec["image"]), "prompt": rec["prompt"],
                                      "chosen": rec["responses"][0], "rejected": rec["responses"][-1],
                                      "chosen_reason": "Yes.", "rejected_reason": "No."}) + "\n")
                n += 1
    return n
