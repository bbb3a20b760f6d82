"""Align²LLaVA data from a world (spec §3.6 formats, scores from the scene's truth).

* ``align2_questions.jsonl``: question preference records ``{id, image, questions: [[q, ...]] * 7, score}``:
  each candidate set asks where 2 coloured shapes are; its score is the fraction asking about objects the image
  holds (answerable questions, §3.1 "visual relevance and answerability"), in [0, 1].
* ``align2_answers.jsonl``: answer preference records: per scene a caption question whose gpt ``value`` is the
  list of 7 candidate captions (:func:`jax_align.world.critiques.candidate_captions`: true objects kept or left
  out, 0-3 wrong objects added) with their ``score`` list ``1 - 0.25 x hallucinated objects`` (at least 0, steps
  of 0.05 as §3.1's annotations): a score difference is always a difference in hallucinated objects (CHAIR's
  count), so the answer RM has one learnable signal (the world's ``reward.jsonl`` Jaccard scores rank a
  caption that leaves an object out like one that invents one). Beside each caption group, groups for two of the
  scene's short questions (one yes/no, one attribute/count/position question of ``sft.jsonl``): the true answer
  (score 1) against up to 6 wrong answers of the same kind (score 0, :func:`answer_vocabulary`), so the answer RM
  judges every instruction type the curation ranks (with captions only, it scored VQA answers arbitrarily and
  ``rank-answers`` kept "Red." for 90% of the colour questions).
* ``align2_instruct.jsonl``: the world's SFT conversations with a ``type`` (detail = captions, conversation =
  yes/no, complex_reasoning = the other questions) for ``curate rank-*``.
"""

from __future__ import annotations

import os

import numpy as np

from jax_align.world.critiques import candidate_captions
from jax_align.world.datasets import load_world_config, read_jsonl, write_jsonl
from jax_align.world.text import CAPTION_PROMPTS, position_question, question_kind

CANDIDATES = 7  # question / answer candidates per image in the code's data (spec §3.1)


def _question_record(scene: dict, config, rng: np.random.Generator) -> dict:
    present = sorted({(o["color"], o["shape"]) for o in scene["objects"]})
    absent = [(c, s) for c in config.colors for s in config.shapes if (c, s) not in present]
    sets, scores = [], []
    for _ in range(CANDIDATES):
        k = int(rng.integers(0, 3))  # answerable questions in a set of 2
        picks = [present[int(i)] for i in rng.integers(len(present), size=k)]
        picks += [absent[int(i)] for i in rng.integers(len(absent), size=2 - k)]
        sets.append([position_question(f"{c} {s}") for c, s in picks])
        scores.append(k / 2)
    return {"id": f"{scene['id']}-questions" if "id" in scene else scene["image"], "image": scene["image"],
            "questions": sets, "score": scores}


def answer_score(hallucinated: int) -> float:
    """An answer's truth score in [0, 1]: 1 - 0.25 per hallucinated object."""
    return max(0.0, 1.0 - 0.25 * int(hallucinated))


def _instruction_type(record_id: str) -> str:
    kind = record_id.rsplit("-", 1)[-1]
    return "detail" if kind.startswith("caption") else "conversation" if kind.startswith("exist") \
        else "complex_reasoning"


def answer_vocabulary(records) -> dict[str, list[str]]:
    """Every answer the world gives to each kind of short question (:func:`question_kind`) in ``records``
    (LLaVA conversations), sorted: the wrong answers a generator could give."""
    vocab: dict[str, set] = {}
    for r in records:
        turns = r["conversations"]
        kind = question_kind(turns[0]["value"])
        if kind is not None and isinstance(turns[1]["value"], str):
            vocab.setdefault(kind, set()).add(turns[1]["value"])
    return {k: sorted(v) for k, v in vocab.items()}


def _qa_answer_records(sft: list[dict], vocab: dict[str, list[str]], rng: np.random.Generator) -> list[dict]:
    """Answer preference records for one yes/no and one other short question of a scene's SFT records."""
    out = []
    by_kind = {}
    for r in sft:
        kind = question_kind(r["conversations"][0]["value"])
        if kind is not None:
            by_kind.setdefault("exist" if kind == "exist" else "vqa", []).append((kind, r))
    for group in ("exist", "vqa"):
        if not by_kind.get(group):
            continue
        kind, rec = by_kind[group][int(rng.integers(len(by_kind[group])))]
        truth = rec["conversations"][1]["value"]
        wrong = [a for a in vocab.get(kind, ()) if a != truth]
        picks = [wrong[int(i)] for i in rng.permutation(len(wrong))[: CANDIDATES - 1]]
        if not picks:
            continue
        answers = [truth, *picks]
        order = rng.permutation(len(answers))  # the truth is not always first
        out.append({"id": f"{rec['id']}-answers", "image": rec["image"], "conversations": [
            rec["conversations"][0], {"from": "gpt", "value": [answers[int(i)] for i in order],
                                      "score": [1.0 if int(i) == 0 else 0.0 for i in order]}]})
    return out


def write_align2_files(world_dir: str, seed: int = 0) -> dict[str, int]:
    """Write the three files into ``world_dir``; returns their record counts."""
    config = load_world_config(world_dir)
    scenes = read_jsonl(os.path.join(world_dir, "scenes.jsonl"))
    sft = read_jsonl(os.path.join(world_dir, "sft.jsonl"))
    vocab = answer_vocabulary(sft)
    sft_by_image: dict[str, list[dict]] = {}
    for r in sft:
        sft_by_image.setdefault(r["image"], []).append(r)
    counts = {"align2_questions": write_jsonl(
        os.path.join(world_dir, "align2_questions.jsonl"),
        (_question_record(s, config, np.random.default_rng([seed, i])) for i, s in enumerate(scenes)))}
    answers = []
    for i, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, 1, i])
        cands = candidate_captions(scene["objects"], config, rng, CANDIDATES)
        if len(cands) > 1:
            answers.append({"id": f"{scene.get('id', i)}-answers", "image": scene["image"], "conversations": [
                {"from": "human", "value": "<image>\n" + CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]},
                {"from": "gpt", "value": [t for t, _, _ in cands], "score": [answer_score(h) for _, h, _ in cands]}]})
        answers += _qa_answer_records(sft_by_image.get(scene["image"], []), vocab, rng)
    counts["align2_answers"] = write_jsonl(os.path.join(world_dir, "align2_answers.jsonl"), answers)
    counts["align2_instruct"] = write_jsonl(
        os.path.join(world_dir, "align2_instruct.jsonl"),
        ({**r, "type": _instruction_type(r["id"])} for r in sft))
    return counts


# ------------------------------------------------------------------------ trained reward models (§3.2) on a world
def rm_data_file(world_dir: str, out_path: str, kind: str, *, groups: int = 0, augment_rate: float = 0.25,
                 seed: int = 1234) -> int:
    """``curate rm-data`` as a function: the world's ``align2_{kind}.jsonl`` (written when missing), its first
    ``groups`` records (0 = all) as scored groups plus augmentation pairs (§3.2); returns the largest group."""
    from jax_align.recipes.align2llava import augmentation_groups, rm_groups
    from jax_align.recipes.bdhs import write_pairs

    src = os.path.join(world_dir, f"align2_{kind}.jsonl")
    if not os.path.isfile(src):
        write_align2_files(world_dir)
    recs = read_jsonl(src)[: groups or None]
    out = [g for n, r in enumerate(recs, 1) for g in rm_groups(r, n, kind)]
    out += augmentation_groups(out, rate=augment_rate, seed=seed, questions=kind == "questions")
    write_pairs(out, os.path.abspath(world_dir), out_path)
    return max(len(g["responses"]) for g in out)


RM_DEFAULTS = {"answers": {"steps": 80, "lr": 1e-3}, "questions": {"steps": 160, "lr": 1e-3}}  # tiny world RMs


def train_world_rm(model: str, world_dir: str, run_dir: str, kind: str, *, steps: int | None = None,
                   lr: float | None = None, batch_size: int = 8, groups: int = 0, template: str = "plain",
                   seed: int = 0) -> str:
    """An Align²LLaVA reward model (§3.2: Bradley-Terry over every ``score_i > score_j`` pair, augmentation 0.25,
    linear head without bias on the last token, the ``plain`` template by default) for the world, trained from a
    world SFT model ``model`` (the RM must see the image). ``kind``: ``questions`` | ``answers``. Returns the
    model directory (``rank-questions`` / ``rank-answers`` / ``rm-eval`` read it)."""
    from jax_align.recipes.align2llava import with_template
    from jax_align.world.judges import train_judge

    os.makedirs(run_dir, exist_ok=True)
    data = os.path.join(run_dir, f"rm_{kind}.jsonl")
    k = rm_data_file(world_dir, data, kind, groups=groups, seed=seed + 1234)
    base = with_template(model, os.path.join(run_dir, f"base_{template}"), template)
    steps = RM_DEFAULTS[kind]["steps"] if steps is None else steps
    lr = RM_DEFAULTS[kind]["lr"] if lr is None else lr
    return train_judge("reward", base, data, run_dir, steps=steps, lr=lr, batch_size=batch_size,
                       max_length=448 if kind == "answers" else 160, seed=seed,
                       extra={"data.num_responses": k})


def evaluate_world_rm(rm: str, world_dir: str, kind: str, *, groups: int = 64, out_dir: str | None = None) -> dict:
    """Held-out pairwise accuracy (§3.2 eval) of ``rm`` on the first ``groups`` preference records of
    ``world_dir`` (use a world it was not trained on; no augmentation pairs): ``{pairwise_accuracy, pairs}``."""
    import tempfile

    from jax_align.recipes.align2llava import pairwise_accuracy
    from jax_align.train.score import score_file

    work = out_dir or tempfile.mkdtemp(prefix="align2-rm-eval-")
    scored, out = os.path.join(work, f"eval_{kind}.jsonl"), os.path.join(work, f"eval_{kind}.scored.jsonl")
    rm_data_file(world_dir, scored, kind, groups=groups, augment_rate=0.0)
    score_file(rm, scored, out, fmt="scored", batch_size=8, buckets=(448,), max_length=448)
    rows = read_jsonl(out)
    acc, pairs = pairwise_accuracy([(r["scores"], r["rewards"]) for r in rows if "rewards" in r])
    return {"pairwise_accuracy": acc, "pairs": pairs, "groups": len(rows)}
