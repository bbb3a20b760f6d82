"""The methods' inputs drawn from the training world: BDHS prompts, caption prompts, Align²LLaVA's noisy pool.

Counts, sizes and the evaluation world are never used here: everything comes from the training world's files.
"""

from __future__ import annotations

import os

import numpy as np

from jax_align.world.datasets import read_jsonl


def take(items: list, n: int, rng: np.random.Generator) -> list:
    """``n`` items in file order; past ``len(items)``, every item again (an independent second draw of it)."""
    if not items:
        return []
    rounds = [sorted(rng.permutation(len(items))[: min(n - k, len(items))]) for k in range(0, n, len(items))]
    return [items[i] for idx in rounds for i in idx]


def captions(world_dir: str) -> list[dict]:
    return [r for r in read_jsonl(os.path.join(world_dir, "sft.jsonl")) if r["id"].endswith("-caption")]


def caption_subset(world_dir: str, n: int, seed: int) -> list[dict]:
    return take(captions(world_dir), n, np.random.default_rng(seed + 1))


def bdhs_prompts(world_dir: str, n: int, seed: int, existence_fraction: float, vqa_fraction: float) -> list[dict]:
    """``n`` BDHS inputs (ground-truth answers) from the training world.

    Detailed captions and attribute/position VQA come from the SFT set; existence questions are asked over the
    training scenes in the POPE style, half of them about the usual companions of present objects (co-occurrence
    negatives and positives), because that is the hallucination the bias teaches. Count questions are left out:
    the masked policy's answer ("One.") is also the most frequent truth, so BDHS would only keep pairs whose
    chosen count is larger and DPO would learn to over-count.
    """
    rng = np.random.default_rng(seed + 1)
    sft = read_jsonl(os.path.join(world_dir, "sft.jsonl"))
    pope = read_jsonl(os.path.join(world_dir, "pope.jsonl"))
    caps = [r for r in sft if r["id"].endswith("-caption")]
    vqa = [r for r in sft if "-vqa" in r["id"] and not r["conversations"][0]["value"].split("\n")[-1]
           .startswith("How many")]
    adversarial = [q for q in pope if q["split"] == "adversarial"]
    others = [q for q in pope if q["split"] != "adversarial"]

    def as_sft(q):
        answer = "Yes." if q["label"] == "yes" else "No."
        return {"image": q["image"], "conversations": [{"from": "human", "value": "<image>\n" + q["prompt"]},
                                                      {"from": "gpt", "value": answer}]}

    n_exist, n_vqa = round(n * existence_fraction), round(n * vqa_fraction)
    n_adv = n_exist // 2
    existence = [as_sft(q) for q in take(adversarial, n_adv, rng) + take(others, n_exist - n_adv, rng)]
    return take(caps, n - n_exist - n_vqa, rng) + existence + take(vqa, n_vqa, rng)


def _finer_type(record: dict) -> str:
    """The curation's instruction type: LLaVA's three (detail / conversation / complex_reasoning), with the world's
    short questions split by what they ask (:func:`jax_align.world.text.question_kind`), so that keeping 30% per
    type keeps every kind of question (with one ``complex_reasoning`` type the question RM kept position and count
    questions only and the curated model never learned colours, shapes or sizes)."""
    from jax_align.world.text import question_kind

    if record.get("type") != "complex_reasoning":
        return record.get("type", "all")
    kind = question_kind(record["conversations"][0]["value"])
    return f"vqa_{kind}" if kind not in (None, "exist") else "complex_reasoning"


def noisy_instruct(world_dir: str, noise: float, seed: int) -> tuple[list[dict], dict]:
    """Align²LLaVA's input: machine-generated instruction data, some of it wrong (spec §3.1). The world's SFT
    conversations with a ``type`` (detail / conversation / complex_reasoning, ``align2_instruct.jsonl``), a
    fraction ``noise`` of them corrupted the way a generator errs: a caption replaced by a hallucinated candidate
    of the world's scored captions (an extra or recoloured object), a yes/no answer flipped, another short answer
    replaced by a wrong one of its kind (a colour by another colour). Each record keeps ``truth`` (1 = correct,
    0 = corrupted) for the report; curation never reads it."""
    from jax_align.world.align2 import answer_vocabulary, write_align2_files

    path = os.path.join(world_dir, "align2_instruct.jsonl")
    if not os.path.isfile(path):
        write_align2_files(world_dir)
    rng = np.random.default_rng(seed + 7)
    wrong = {}
    for rec in read_jsonl(os.path.join(world_dir, "reward.jsonl")):
        if rec["id"].endswith("-caption") and len(rec["responses"]) > 1:
            wrong[rec["image"]] = rec["responses"][1:]
    instruct = read_jsonl(path)
    vocab = answer_vocabulary(instruct)
    out, counts = [], {"records": 0, "corrupted": 0}
    for rec in instruct:
        rec = {**rec, "truth": 1, "type": _finer_type(rec)}
        turns = rec["conversations"]
        answer = turns[1]["value"]
        if rng.random() < noise:
            bad = None
            if rec["type"] == "detail" and rec["image"] in wrong:
                choices = [c for c in wrong[rec["image"]] if len(c) >= len(answer)] or wrong[rec["image"]]
                bad = choices[int(rng.integers(len(choices)))]
            elif answer in ("Yes.", "No."):
                bad = "No." if answer == "Yes." else "Yes."
            elif rec["type"].startswith("vqa_"):
                others = [a for a in vocab.get(rec["type"][4:], ()) if a != answer]
                bad = others[int(rng.integers(len(others)))] if others else None
            if bad is not None:
                rec["conversations"] = [turns[0], {**turns[1], "value": bad}, *turns[2:]]
                rec["truth"] = 0
                counts["corrupted"] += 1
        out.append(rec)
        counts["records"] += 1
    return out, counts
