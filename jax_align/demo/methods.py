"""The methods the demo compares, each from the same SFT model under the budget rule of :mod:`jax_align.demo.plan`.

A method is a function ``run(ctx, bases, seed) -> MethodResult`` plus what the report says about it: the paper
section, who judges its data, its settings and every departure from the paper. The DPO-family methods on BDHS
pairs live here; the judge-driven ones (EACO, Align²LLaVA, AMP) in :mod:`jax_align.demo.judged`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from jax_align.demo.base import DemoContext
from jax_align.demo.inputs import bdhs_prompts


@dataclass(frozen=True)
class Bases:
    caption: str  # the captioning model: Align²LLaVA's and AMP-IG's "base"
    sft: str  # the SFT model every preference method starts from


@dataclass
class MethodResult:
    model: str  # the trained model's directory (exported as models/NAME)
    records: int  # preference (or curated SFT) records generated for it
    pref_steps: int = 0
    sft_steps: int = 0
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    spec: str  # section of ../shared/spec/algorithms.md
    judge: str  # who decides what is better
    settings: str
    departures: tuple[str, ...]
    run: Callable[[DemoContext, Bases, int], MethodResult]
    hallucination: bool = True  # targets hallucination (the goal of issue 17 item 4 applies)
    baseline: str = "sft"  # what its goal is judged against


# ---------------------------------------------------------------------------------------------- shared data
def bdhs_pairs(ctx: DemoContext, bases: Bases, seed: int) -> str:
    """BDHS pairs (spec §2.2) of this seed from the SFT model, computed once and shared by DPO, Mixed-DPO and
    MM-DPO: ``pref_records`` training-world answers as chosen, the image-masked policy's answers as rejected."""
    out = ctx.data_file(f"bdhs_pairs_s{seed}.jsonl")
    if os.path.isfile(out):
        return out

    def make():
        from jax_align.embedders import SentenceEmbedder
        from jax_align.generate import get_generator
        from jax_align.recipes.bdhs import BDHSConfig, run_bdhs, write_pairs

        p = ctx.plan
        records = bdhs_prompts(ctx.train_world, p.pref_records, seed, p.bdhs_existence_fraction,
                               p.bdhs_vqa_fraction)
        cfg = BDHSConfig(seed=seed, batch_size=p.eval_batch, extend_prob=p.bdhs_extend, rho_th=p.bdhs_rho_th)
        pairs, stats = run_bdhs(get_generator(bases.sft), records, base_dir=ctx.train_world,
                                embedder=SentenceEmbedder.from_path(None), cfg=cfg)
        write_pairs(pairs, ctx.train_world, out)
        ctx.data[f"bdhs_s{seed}"] = dict(stats)

    ctx.timed(f"bdhs pairs (seed {seed})", make)
    return out


def _count(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _dpo_overrides(ctx: DemoContext, bases: Bases, seed: int, **extra) -> dict:
    p = ctx.plan
    return {"model.path": bases.sft, "loss.beta": p.beta, "loss.sft_weight": p.sft_weight, "batch": p.pref_batch,
            "seed": seed, **extra}


# ---------------------------------------------------------------------------------------------- methods
def run_dpo(ctx: DemoContext, bases: Bases, seed: int) -> MethodResult:
    p = ctx.plan
    pairs = bdhs_pairs(ctx, bases, seed)
    model = ctx.train(f"dpo_s{seed}", "dpo", pairs, p.pref_steps, p.pref_lr,
                      **_dpo_overrides(ctx, bases, seed, **{"ref.mode": "cached"}))
    return MethodResult(model, _count(pairs), pref_steps=p.pref_steps)


def _online(stage: str):
    def run(ctx: DemoContext, bases: Bases, seed: int) -> MethodResult:
        from jax_align.recipes.bdhs import write_pairs

        p = ctx.plan
        if stage == "mixed_dpo":
            data = bdhs_pairs(ctx, bases, seed)  # the offline pairs Mixed-DPO mixes in
        else:
            data = ctx.data_file(f"online_prompts_s{seed}.jsonl")
            write_pairs(bdhs_prompts(ctx.train_world, p.pref_records, seed, p.bdhs_existence_fraction,
                                     p.bdhs_vqa_fraction), ctx.train_world, data)
        name = f"{stage}_s{seed}"
        lr = p.mixed_lr if stage == "mixed_dpo" else p.pref_lr
        samples = p.mixed_samples if stage == "mixed_dpo" else p.online_samples
        model = ctx.train(name, stage, data, p.pref_steps, lr, **_dpo_overrides(
            ctx, bases, seed, **{"online.every": p.online_every, "online.samples": samples,
                                 "online.temperature": p.online_temperature,
                                 "online.max_new_tokens": p.online_max_new_tokens,
                                 "online.batch_size": p.eval_batch, "online.annotator": f"world:{ctx.train_world}",
                                 **({"loss.sft_weight": p.online_sft_weight} if stage == "online_dpo" else {})}))
        rounds = ctx.path("runs", name, "online")
        sampled = sum(_count(os.path.join(rounds, f)) for f in os.listdir(rounds)) if os.path.isdir(rounds) else 0
        return MethodResult(model, sampled, pref_steps=p.pref_steps, data={"online_pairs": sampled})

    return run


def run_mmdpo(ctx: DemoContext, bases: Bases, seed: int) -> MethodResult:
    """MM-RLHF (spec §4): a critique-based reward model (§4.2) trained on the world's critique-annotated pairs
    writes its critique of each BDHS answer and scores it; MM-DPO (§4.3) turns the margins into per-pair betas."""
    from jax_align.recipes.reward_scoring import attach_margins, score_pairs_with_critiques
    from jax_align.world.critiques import critique_candidate_pairs

    p = ctx.plan
    pairs = bdhs_pairs(ctx, bases, seed)
    train = ctx.data_file(f"critique_pairs_s{seed}.jsonl")
    if not os.path.isfile(train):  # hallucination-only preferences with critiques (world.critiques)
        critique_candidate_pairs(ctx.train_world, train, seed=seed)
    rm = ctx.timed(f"train critique reward model (seed {seed})", ctx.train, f"critique_rm_s{seed}", "critique_reward",
                   train, p.critique_rm_steps, p.critique_rm_lr, **{"model.path": bases.sft, "seed": seed,
                                                           "batch": p.pref_batch,  # a judge, as EACO's critic
                                                           "data.max_length": p.group_max_length,
                                                           "data.buckets": [p.group_max_length]})
    work = ctx.data_file(f"mmdpo_critiques_s{seed}.jsonl")
    rewards = ctx.timed(f"reward margins (seed {seed})", score_pairs_with_critiques, rm, pairs, work,
                        batch_size=p.eval_batch, buckets=(p.group_max_length,), max_new_tokens=p.critique_tokens)
    margins = ctx.data_file(f"mmdpo_pairs_s{seed}.jsonl")
    stats = attach_margins(pairs, rewards, margins)
    model = ctx.train(f"mmdpo_s{seed}", "mmdpo", margins, p.pref_steps, p.pref_lr,
                      **_dpo_overrides(ctx, bases, seed, **{"ref.mode": "cached"}))
    return MethodResult(model, stats["pairs"], pref_steps=p.pref_steps, data={"reward_margins": stats})


def methods() -> dict[str, Method]:
    from jax_align.demo.judged import run_align2, run_eaco, run_mdpo_amp, run_sft_random

    budget = "pref_steps x pref_batch from the SFT model"
    full = "full fine-tuning instead of LoRA (every method alike, so the comparison is of data and loss)"
    four = ("4 samples per prompt, best vs worst, instead of 2 (two samples of the tiny policy tied on 70% of the "
            "prompts, on nearly every existence question)")
    nll = "the chosen answer's NLL (weight 1) beside the preference loss (RPO; without it DPO degenerates here)"
    return {m.name: m for m in (
        Method("dpo", "DPO on BDHS pairs (offline)", "§2.1-2.2", "none: the dataset answer is chosen, the "
               "image-masked policy's answer rejected", f"sigmoid DPO, beta 0.1, {budget}, cached reference",
               (nll,), run_dpo),
        Method("online_dpo", "Online-DPO", "§2.1", "the world's ground truth ranks 4 live-policy samples",
               "sigmoid DPO, beta 0.1, fresh pairs every online_every steps, no NLL term (§2.1)", (four,),
               _online("online_dpo")),
        Method("mixed_dpo", "Mixed-DPO", "§2.1 eq. 4", "offline: BDHS; online: the world's ground truth",
               "alpha ~ Bernoulli(0.5) per prompt between the BDHS pair and a fresh online pair, lr 1e-4", (nll,),
               _online("mixed_dpo")),
        Method("eaco", "EACO", "§1", "a generative critic trained from the SFT model on the world's scored "
               "captions", "5 samples, critic argmax/argmin, DPO beta 0.1, then description-infused SFT",
               (full, nll, "the world's caption prompts instead of §1.2's 8 description prompts (the tiny "
                "policy never saw those)", "sampling temperature 1.0 instead of 0.2 (identical samples)"),
               run_eaco),
        Method("mmdpo", "MM-DPO (MM-RLHF)", "§4.2-4.3", "a critique-based reward model trained from the SFT "
               "model on the world's critique-annotated pairs", "beta from the reward margin, gamma = NLL weight 1",
               (full,), run_mmdpo),
        Method("mdpo_amp", "MDPO on AMP data", "§5.1-5.2", "AMP's initial ranking (standard > more SFT data > "
               "less > base), re-ranked by the auto-check (CLIP text encoder of the world)",
               "incremental generation with 2 parts, auto-check tau 0.85, MDPO; prompts: the BDHS mix of captions "
               "and short questions", (full, nll), run_mdpo_amp),
        Method("align2", "Align²LLaVA curation", "§3.1-3.3", "question and answer reward models trained from the "
               "SFT model on the world's scored candidates", "keep 30% per instruction type, SFT from the base",
               ("the pool is the world's SFT data with a fraction of machine-style errors (no GPT data here)",
                "no inner-LLM rewrite (the world's answers are already in the model's manner)",
                "instruction types: detail, conversation, and the world's short questions by kind (colour, shape, "
                "size, count, position) instead of one complex_reasoning type"), run_align2,
               baseline="sft_random"),
        Method("sft_random", "SFT on as many uncurated records (Align² control)", "§3.3", "none",
               "the same number of records as align2, drawn at random from the same pool, same SFT", (),
               run_sft_random, hallucination=False),
    )}
