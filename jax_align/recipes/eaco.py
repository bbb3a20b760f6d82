"""EACO: critic-scored self-generated preference pairs and description-infused SFT data (arXiv 2412.04903, spec §1).

Pairs (spec §1.2 steps 2-5, with the library decisions of §1.3):

1. per input record a prompt: one of the 8 description prompts of §1.2 drawn with ``random.Random(seed)``
   (the code's ``random.seed(42)``), the record's own question, or a line of a prompts file;
2. ``n_samples`` answers from the policy (code: 5 at T = 0.2, top_p off, one beam);
3. each answer judged in its own call by a generative critic (the prompt the ``critic`` stage trains on,
   :func:`critic_prompt`), greedy; the output is read with the anchored ``score: N`` parser
   (:func:`jax_align.data.critic_text.parse_critic_scores`), per-dimension scores kept; with no ``score:``
   line the sum of the dimension scores is used (§1.3); an output with neither is **unparsable**: counted,
   its record id reported, never read as 0;
4. ``chosen = argmax``, ``rejected = argmin`` over the judged answers with §1.2's tie rule
   (:func:`jax_align.data.pairing.best_worst`; ``drop_ties`` drops all-equal groups instead). A group with
   fewer than two judged answers is skipped and counted.

Each output record is EACO's preference format (§1.7: ``prompt``, ``score_list``, ``chosen``/``rejected`` as
conversations, ``output_list``) plus everything the draft code lost (§1.3): per-dimension scores, the critic's
raw outputs, the unparsable samples and the provenance under ``eaco``. It validates as ``ranked`` (``output_list``
+ ``score_list``) and as ``pairwise`` (``chosen``/``rejected``), so the ``dpo`` stage trains on it directly.

Description-infused SFT (§1.2 step 7, ``EACO/generate_des_stage2.py``, ``EACO/add_des_to_data.py``): the DPO
model describes each SFT image with a random description prompt (T = 0.2) and the description is prepended to
the first human turn as ``"<image>\\nImage description:\\n{desc}\\n\\n{question}"``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from jax_align.data.critic_text import DIMENSIONS, RUBRIC, parse_critic_scores
from jax_align.data.pairing import best_worst
from jax_align.recipes.bdhs import first_exchange
from jax_align.sampling import SamplingParams

# spec §1.2 step 2 (EACO/generate_pref_by_critic.py)
DESCRIPTION_PROMPTS = (
    "Illustrate the details of the picture.",
    "Summarize the visual content presented.",
    "Explain what is depicted in the photograph.",
    "Outline the key elements captured in the image.",
    "Detail the composition and subjects within the frame.",
    "Convey the atmosphere and mood represented in the snapshot.",
    "Interpret the scene shown in the image.",
    "Identify and describe the main focal points in the visual.",
)
DESCRIPTION_HEADER = "Image description:"  # spec §1.2 step 7.2


@dataclass(frozen=True)
class EACOConfig:
    n_samples: int = 5
    temperature: float = 0.2
    max_new_tokens: int = 1024
    critic_max_new_tokens: int = 256
    prompts: str = "default"  # default (the 8 description prompts) | question (the record's own) | FILE
    drop_ties: bool = False
    seed: int = 42
    batch_size: int = 8
    rubric: str = RUBRIC


def critic_prompt(question: str, response: str, rubric: str = RUBRIC) -> str:
    """The critic's user turn, exactly as :func:`jax_align.data.critic_text.critic_sft_file` trains it."""
    return f"<image>\nQuestion: {question}\nResponse: {response}\n{rubric}"


def judge_total(parsed: dict) -> float | None:
    """Selection key (spec §1.3): the ``score:`` total, else the sum of the rubric's dimension scores."""
    if parsed.get("total") is not None:
        return float(parsed["total"])
    dims = [parsed[d] for d in DIMENSIONS if d in parsed]
    return float(sum(dims)) if dims else None


def record_id(record: dict, index: int) -> str:
    return str(record.get("id", index + 1))


def record_question(record: dict) -> str:
    """The record's own question: a ``prompt`` record's prompt (no answer needed, e.g. the world's captions), else
    the first human turn; the image placeholder removed."""
    if "prompt" in record and "conversations" not in record and "messages" not in record:
        return str(record["prompt"]).replace("<image>\n", "").replace("<image>", "").strip()
    return first_exchange(record)[0]


def choose_prompts(records: Sequence[dict], source: str, seed: int) -> tuple[list[str], str]:
    """One prompt per record and the prompt source's name (``description`` | ``question`` | ``file``)."""
    if source == "question":
        return [record_question(r) for r in records], "question"
    if source == "default":
        pool, name = list(DESCRIPTION_PROMPTS), "description"
    else:
        with open(source, encoding="utf-8") as f:
            pool, name = [line.strip() for line in f if line.strip()], "file"
        if not pool:
            raise ValueError(f"{source}: --prompts: no prompts in the file")
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in records], name


def _turns(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def build_pairs(policy, critic, records: Sequence[dict], *, base_dir: str, cfg: EACOConfig = EACOConfig(),
                provenance: dict | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """EACO preference records for ``records`` (each with an ``image`` relative to ``base_dir``).

    ``policy`` and ``critic`` have :meth:`jax_align.generate.Generator.generate`'s signature (the critic may be
    any judge that writes ``score: N`` text). Returns (records, statistics); output ``image`` paths are as in
    the input (relative to ``base_dir``).
    """
    prompts, source = choose_prompts(records, cfg.prompts, cfg.seed)
    sp = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        n_samples=cfg.n_samples)
    gens = policy.generate([{"image": r.get("image"), "prompt": p} for r, p in zip(records, prompts, strict=True)],
                           sp, seed=cfg.seed, batch_size=cfg.batch_size, base_dir=base_dir)
    samples = [list(g.texts) for g in gens]
    if progress is not None:
        progress(f"sampled {sum(len(s) for s in samples)} answers for {len(records)} prompts")
    jobs = [(i, k) for i, s in enumerate(samples) for k in range(len(s))]
    judge_inputs = [{"image": records[i].get("image"),
                     "prompt": critic_prompt(prompts[i], samples[i][k], cfg.rubric)} for i, k in jobs]
    judged = critic.generate(judge_inputs, SamplingParams(max_new_tokens=cfg.critic_max_new_tokens),
                             seed=cfg.seed, batch_size=cfg.batch_size, base_dir=base_dir) if jobs else []
    outputs: dict[tuple[int, int], str] = {}
    for job, g in zip(jobs, judged, strict=True):
        outputs[job] = g.texts[0]
    out: list[dict] = []
    unparsable: list[dict] = []
    stats = {"records": len(records), "samples": len(jobs), "pairs": 0, "unparsable": 0, "skipped_failed": 0,
             "skipped_ties": 0, "skipped_identical": 0, "tie_rule": 0}
    for i, rec in enumerate(records):
        rid = record_id(rec, i)
        texts, totals, dims, critiques, failed = [], [], [], [], []
        for k, text in enumerate(samples[i]):
            raw = outputs[(i, k)]
            parsed = parse_critic_scores(raw)
            total = judge_total(parsed)
            if total is None or not text.strip():
                failed.append({"sample": k, "response": text, "critic_output": raw})
                unparsable.append({"id": rid, "sample": k})
                continue
            texts.append(text)
            totals.append(total)
            dims.append({name: v for name, v in parsed.items() if name != "total"})
            critiques.append(raw)
        stats["unparsable"] += len(failed)
        pair = best_worst(totals, drop_ties=cfg.drop_ties) if len(totals) >= 2 else None
        if len(totals) < 2:
            stats["skipped_failed"] += 1
            continue
        if pair is None:
            stats["skipped_ties"] += 1
            continue
        c, r = pair
        if texts[c] == texts[r]:
            stats["skipped_identical"] += 1
            continue
        tie = totals[c] == totals[r]
        stats["tie_rule"] += tie
        record = {
            "id": rid, "image": rec.get("image"), "prompt": prompts[i],
            "output_list": texts, "score_list": totals, "dimension_scores": dims, "critiques": critiques,
            "chosen": _turns(prompts[i], texts[c]), "rejected": _turns(prompts[i], texts[r]),
            "eaco": {"chosen_index": c, "rejected_index": r, "tie_rule": bool(tie), "prompt_source": source,
                     "unparsable": failed, **(provenance or {}),
                     "n_samples": cfg.n_samples, "temperature": cfg.temperature, "seed": cfg.seed},
        }
        out.append(record)
    stats["pairs"] = len(out)
    stats["unparsable_ids"] = sorted({u["id"] for u in unparsable})
    stats["config"] = asdict(cfg)
    return out, stats


def describe_records(model, records: Sequence[dict], *, base_dir: str, seed: int = 42, temperature: float = 0.2,
                     max_new_tokens: int = 1024, batch_size: int = 8) -> tuple[list[dict], dict]:
    """Description-infused SFT records (spec §1.2 step 7): the first human turn of each record with an image
    becomes ``"<image>\\nImage description:\\n{desc}\\n\\n{question}"``. Records without an image are kept as
    they are (counted)."""
    with_image = [i for i, r in enumerate(records) if r.get("image") or r.get("images")]
    prompts, _ = choose_prompts([records[i] for i in with_image], "default", seed)
    sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    gens = model.generate([{"image": records[i].get("image") or records[i].get("images"), "prompt": p}
                           for i, p in zip(with_image, prompts, strict=True)], sp, seed=seed,
                          batch_size=batch_size, base_dir=base_dir) if with_image else []
    descriptions = {i: g.texts[0] for i, g in zip(with_image, gens, strict=True)}
    out, empty = [], 0
    for i, rec in enumerate(records):
        if i not in descriptions:
            out.append(dict(rec))
            continue
        desc = descriptions[i].strip()
        empty += not desc
        question = record_question(rec)
        value = f"<image>\n{DESCRIPTION_HEADER}\n{desc}\n\n{question}"
        new = dict(rec)
        if "conversations" in rec:
            turns = [dict(t) for t in rec["conversations"]]
            first = next(j for j, t in enumerate(turns) if t.get("from") == "human")
            turns[first]["value"] = value
            new["conversations"] = turns
        elif "messages" in rec:
            turns = [dict(t) for t in rec["messages"]]
            first = next(j for j, t in enumerate(turns) if t.get("role") == "user")
            turns[first]["content"] = value
            new["messages"] = turns
        else:
            new["prompt"] = value
        new["description"] = {"text": desc, "prompt": prompts[with_image.index(i)]}
        out.append(new)
    return out, {"records": len(records), "described": len(descriptions), "empty_descriptions": empty,
                 "without_image": len(records) - len(descriptions)}


def image_base(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))
