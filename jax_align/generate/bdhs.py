"""BDHS: Bias-Driven Hallucination Sampling (Apple, arXiv 2407.02477; spec §2.2, Algorithm 1): the sampling.

The one implementation, in the generation layer so that the trainer can regenerate rejected answers with the
live policy (Online-BDHS, ``online.rejected=bdhs``, spec §2.2) and ``jax-align prefs bdhs``
(:mod:`jax_align.recipes.bdhs`, the offline recipe with the starting policy) share it.

Rejected answers come from the policy itself with almost all image tokens hidden (keep-mask
``m_j = 1[rho_j >= rho_th]``, rho_th = 0.99), so the language prior fills in what the image no longer shows.
Each attempt but the last is *guided*: for every sentence of the ground-truth answer, split it at a random word,
force the ground-truth text before it (all earlier ground-truth sentences plus the sentence's first words) and let
the masked policy finish the sentence (until the first full stop). Sentences that start with yes/no are first
flipped with probability 0.5. The last attempt is a free generation under the mask. Attempts stop as soon as the
rejected answer's sentence-embedding cosine to the ground truth falls below eps_s = 0.97.

Decisions marked [inferred] in the spec: the pivot is a word boundary; sentences split on ``. ! ?`` followed by
whitespace; the mask applies to every layer and every decode step (the sampler stores it in the KV cache). A
one-word sentence (``Yes.``) has no inner pivot: when flipped it is used as is, otherwise it is regenerated whole.
Only the first human/gpt exchange of a conversation is used. The first attempt decodes greedily (the prior's most
likely text); retries sample (``retry_temperature``), so that an answer the prior gets right still yields a
different rejected answer and short-answer pairs are not all "anti-prior". The similarity check uses
all-MiniLM-L6-v2 (the paper: all-mpnet-base-v2), whose cosines are on a somewhat different scale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from jax_align.sampling import SamplingParams

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_YES_NO = re.compile(r"^(\s*)(Yes|yes|No|no)\b")
_SWAP = {"Yes": "No", "yes": "no", "No": "Yes", "no": "yes"}


@dataclass(frozen=True)
class BDHSConfig:
    rho_th: float = 0.99  # image tokens kept visible with probability 1 - rho_th
    attempts: int = 5  # N_BDHS
    sim_threshold: float = 0.97  # eps_s
    swap_prob: float = 0.5
    temperature: float = 0.0  # first attempt (0 = greedy: the prior's most likely text)
    retry_temperature: float = 1.0  # later attempts sample, so a prior that agrees with the truth still yields
    top_p: float = 1.0  # a different answer instead of the same greedy text again
    # [library extension, off by default] probability of one more masked sentence after the ground truth's last
    # one: the "extra object" hallucination (an absent companion appended to a correct description)
    extend_prob: float = 0.0
    max_new_tokens: int = 48  # per guided sentence; free generations get 4x
    seed: int = 0
    batch_size: int = 64


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def swap_yes_no(sentence: str) -> str:
    return _YES_NO.sub(lambda m: m.group(1) + _SWAP[m.group(2)], sentence, count=1)


def first_exchange(record: dict) -> tuple[str, str]:
    """(prompt without the image placeholder, ground-truth answer) of an SFT record (LLaVA conversations,
    TRL messages, or prompt/response)."""
    if "conversations" in record:
        turns = record["conversations"]
        human = next(t["value"] for t in turns if t.get("from") == "human")
        gpt = next(t["value"] for t in turns if t.get("from") == "gpt")
    elif "messages" in record:
        turns = record["messages"]
        human = next(_text(t["content"]) for t in turns if t.get("role") == "user")
        gpt = next(_text(t["content"]) for t in turns if t.get("role") == "assistant")
    else:
        human, gpt = record["prompt"], record.get("response") or record["answer"]
    prompt = human.replace("<image>\n", "").replace("<image>", "").strip()
    return prompt, gpt.strip()


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


@dataclass
class _Job:
    record: int
    sentence: int
    prefix: str  # forced response prefix (ground truth before the pivot)
    kept: str  # the part of the sentence that is forced (after the earlier sentences)
    fixed: str | None = None  # a sentence used as is (flipped one-word answer)


def _plan_guided(answer: str, rng: np.random.Generator, swap_prob: float, record: int,
                 extend_prob: float = 0.0) -> list[_Job]:
    sentences = split_sentences(answer)
    jobs = []
    for k, sentence in enumerate(sentences):
        earlier = " ".join(sentences[:k])
        if _YES_NO.match(sentence) and rng.random() < swap_prob:
            sentence = swap_yes_no(sentence)
            swapped = True
        else:
            swapped = False
        words = sentence.split()
        if len(words) == 1:
            if swapped:
                jobs.append(_Job(record, k, "", "", fixed=sentence))
                continue
            pivot = 0
        else:
            pivot = int(rng.integers(1, len(words)))  # keep at least one word, generate at least one
        kept = " ".join(words[:pivot])
        prefix = (earlier + " " + kept).strip() if kept else earlier
        jobs.append(_Job(record, k, prefix, kept))
    if len(sentences) > 1 and extend_prob and rng.random() < extend_prob:
        # the extra sentence starts with the last sentence's first word ("There ...") so that the masked policy
        # writes a whole sentence instead of being forced past the end-of-sequence it would emit
        opener = sentences[-1].split()[0]
        jobs.append(_Job(record, len(sentences), " ".join(sentences) + " " + opener, opener))
    return jobs


@dataclass(frozen=True)
class BDHSResult:
    """One rejected answer and its provenance (spec §2.6: ``rho_th``, attempts used, similarity, guided)."""

    rejected: str
    rho_th: float
    attempts: int
    similarity: float
    guided: bool

    def provenance(self) -> dict:
        return {"rho_th": self.rho_th, "attempts": self.attempts, "similarity": round(float(self.similarity), 6),
                "guided": self.guided}


def bdhs_rejected(generator, prompts: list[dict], answers: list[str], *, embedder, cfg: BDHSConfig = BDHSConfig(),
                  base_dir: str | None = None, progress: Callable[[str], None] | None = None) -> list[BDHSResult]:
    """Algorithm 1 of spec §2.2 for each ``(prompt, ground-truth answer)``: the masked policy's rejected answer.

    ``generator`` is a :class:`jax_align.generate.Generator` (its current parameters are the policy: the
    starting policy offline, the live one in training); ``prompts`` are its prompt records (``image`` +
    ``prompt`` or ``messages``, image paths relative to ``base_dir``); ``embedder`` has ``cosine(a, b) -> [N]``.
    All randomness (masks, pivots, swaps, sampling) derives from ``cfg.seed``.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"bdhs_rejected: {len(prompts)} prompts for {len(answers)} answers")
    # image tokens per prompt, asked of the model's front end (AnyRes: size-dependent, newline tokens included)
    n_img = [generator.num_image_tokens({"image": p.get("image")}, base_dir) for p in prompts]
    rng = np.random.default_rng(cfg.seed)
    out: list[BDHSResult | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for attempt in range(1, cfg.attempts + 1):
        if not pending:
            break
        masks = {i: rng.random(n_img[i]) >= cfg.rho_th for i in pending}  # m_j = 1[rho_j >= rho_th]
        free = cfg.attempts > 1 and attempt == cfg.attempts  # the last try is unguided
        batch, prefixes, keeps, jobs = [], [], [], []
        for i in pending:
            plan = [_Job(i, 0, "", "")] if free else _plan_guided(answers[i], rng, cfg.swap_prob, i, cfg.extend_prob)
            for job in plan:
                jobs.append(job)
                if job.fixed is None:
                    batch.append(prompts[i])
                    prefixes.append(job.prefix or None)
                    keeps.append(masks[i])
        # a guided continuation runs to the sentence's full stop: end-of-sequence is not allowed before it
        sp = SamplingParams(max_new_tokens=cfg.max_new_tokens * (4 if free else 1),
                            temperature=cfg.temperature if attempt == 1 else cfg.retry_temperature,
                            top_p=cfg.top_p, banned_token_ids=() if free else generator.eos_ids)
        outs = generator.generate(batch, sp, seed=cfg.seed * 1000 + attempt, batch_size=cfg.batch_size,
                                  base_dir=base_dir, keep_masks=keeps, response_prefixes=prefixes,
                                  stop_strings=() if free else (".", "!", "?")) if batch else []
        pieces: dict[int, list[tuple[int, str]]] = {i: [] for i in pending}
        it = iter(outs)
        for job in jobs:
            if job.fixed is not None:
                pieces[job.record].append((job.sentence, job.fixed))
                continue
            cont = next(it).completions[0].continuation
            text = job.kept + cont if job.kept else cont.strip()
            pieces[job.record].append((job.sentence, " ".join(text.split())))
        candidates = {i: " ".join(t for _, t in sorted(pieces[i])).strip() for i in pending}
        sims = embedder.cosine([candidates[i] for i in pending], [answers[i] for i in pending])
        still = []
        for i, sim in zip(pending, sims, strict=True):
            out[i] = BDHSResult(candidates[i], cfg.rho_th, attempt, float(sim), not free)
            if sim >= cfg.sim_threshold and attempt < cfg.attempts:
                still.append(i)
        if progress is not None:
            progress(f"attempt {attempt}: {len(pending) - len(still)} accepted, {len(still)} retry")
        pending = still
    return out


def run_bdhs(generator, records: list[dict], *, base_dir: str, embedder, cfg: BDHSConfig = BDHSConfig(),
             progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """BDHS rejected answers for SFT ``records``: returns (preference records, statistics).

    ``generator`` is a :class:`jax_align.generate.Generator`; ``embedder`` has ``cosine(a, b) -> [N]``.
    Each output record is ``{image, prompt, chosen, rejected, bdhs: {rho_th, attempts, similarity, guided}}``
    with ``image`` as in the input (relative to ``base_dir``). Records whose final rejected answer equals the
    ground truth are dropped and counted.
    """
    exchanges = [first_exchange(r) for r in records]
    prompts = [{"image": r.get("image"), "prompt": q} for r, (q, _) in zip(records, exchanges, strict=True)]
    results = bdhs_rejected(generator, prompts, [a for _, a in exchanges], embedder=embedder, cfg=cfg,
                            base_dir=base_dir, progress=progress)
    out, identical = [], 0
    for rec, (prompt, chosen), res in zip(records, exchanges, results, strict=True):
        if res is None or not res.rejected or res.rejected == chosen:
            identical += 1
            continue
        out.append({"image": rec.get("image"), "prompt": prompt, "chosen": chosen, "rejected": res.rejected,
                    "bdhs": res.provenance()})
    sims = [r["bdhs"]["similarity"] for r in out]
    stats = {"records": len(records), "pairs": len(out), "dropped_identical": identical,
             "mean_similarity": float(np.mean(sims)) if sims else 0.0,
             "guided": sum(r["bdhs"]["guided"] for r in out), "config": asdict(cfg)}
    return out, stats
