"""The main job: align a tiny LLaVA trained from scratch on the synthetic world, and show hallucination falling.

Pipeline (``jax-align demo --out DIR``; ``make demo`` uses ``DIR=demo_out``):

1. render a training world and a held-out evaluation world (different seeds);
2. train a tiny LLaVA from scratch: a captioning stage, then SFT (captions, VQA, yes/no questions);
3. evaluate the SFT model (baseline);
4. BDHS preference pairs from the SFT data (spec §2.2), DPO, evaluate;
5. multi-level groups (truth, one and two hallucinated sentences), MDPO (spec §5.2), evaluate;
6. a reward model on the world's scored candidates, its margins on the BDHS pairs, MM-DPO (spec §4.3), evaluate;
7. ``report.md``, ``report.json``, PNG plots, and every model in ``DIR/models/NAME`` as a Hugging Face directory
   (which ``jax-align generate --model`` loads directly).

Deterministic for a seed. ``--quick`` runs a miniature version for tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPlan:
    train_scenes: int = 8000
    eval_scenes: int = 500
    caption_steps: int = 1000
    sft_steps: int = 600
    batch_size: int = 32
    caption_lr: float = 1e-3  # 3e-3 left the model binding wrong shapes/colours (CHAIR_i ~30%); 1e-3: ~5%
    sft_lr: float = 7e-4
    # BDHS prompts: detailed captions (all 8000, then 4000 again: a second, independent BDHS sample), existence
    # questions (half of them co-occurrence negatives/positives, the POPE-adversarial kind, over the *training*
    # scenes) and attribute/position VQA
    bdhs_captions: int = 12000
    bdhs_existence: int = 1500
    bdhs_vqa: int = 800
    bdhs_extend: float = 1.0  # one extra masked sentence after each caption (extra-object hallucinations)
    bdhs_rho_th: float = 0.99  # image tokens stay visible with probability 1 - rho_th (spec default 0.99)
    dpo_steps: int = 1400
    dpo_lr: float = 3e-4  # 4e-4 and 5e-4 cut CHAIR_i more but cost up to 6.7 VQA points (issue 7 notes)
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 1.0
    dpo_batch: int = 32
    mdpo_records: int = 1500
    mdpo_steps: int = 100
    mdpo_lr: float = 3e-4
    reward_steps: int = 80
    reward_lr: float = 5e-4
    mmdpo_steps: int = 150
    mmdpo_pairs: int = 4800  # BDHS pairs scored by the reward model for MM-DPO (steps x batch: each seen once)
    mmdpo_gamma: float = 1.0
    max_length: int = 128  # captions, SFT and pairs: a prefix-shared pair fits (99.9% of groups whole)
    buckets: tuple[int, ...] = (32, 64, 96, 128)  # one compile per bucket; short rows stop paying for long ones
    mdpo_max_length: int = 256  # three responses per row
    reward_max_length: int = 288  # five candidate captions per row: none truncated (the longest group is 271)
    eval_batch: int = 64
    caption_tokens: int = 80


QUICK = DemoPlan(train_scenes=24, eval_scenes=8, caption_steps=4, sft_steps=4, batch_size=8, bdhs_captions=6,
                 bdhs_existence=6, bdhs_vqa=4, dpo_steps=3, dpo_batch=4, mdpo_records=8, mdpo_steps=3, reward_steps=3,
                 mmdpo_steps=3, mmdpo_pairs=12, eval_batch=16, caption_tokens=32)


def _buckets_to(max_length: int) -> list[int]:
    """Four evenly spaced length buckets up to ``max_length`` (multiples of 32)."""
    step = max(32, -(-max_length // 4 // 32) * 32)
    return sorted({min(max_length, step * i) for i in range(1, 5)} | {max_length})


class Demo:
    def __init__(self, out_dir: str, plan: DemoPlan, seed: int = 0, log=print):
        self.out = os.path.abspath(out_dir)
        self.plan = plan
        self.seed = seed
        self.log = log
        self.timings: dict[str, float] = {}
        self.results: dict[str, dict] = {}
        self.data: dict[str, dict] = {}

    # ------------------------------------------------------------------------------------------ helpers
    def _path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def _timed(self, name, fn, *a, **kw):
        t0 = time.perf_counter()
        self.log(f"[demo] {name} ...")
        out = fn(*a, **kw)
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.log(f"[demo] {name} done in {self.timings[name]}s")
        return out

    def _train(self, name: str, stage: str, data: str, steps: int, lr: float, **extra) -> str:
        from jax_align.train.config import load_config
        from jax_align.train.trainer import Trainer
        from jax_align.world.train_inputs import resolve_world_inputs

        p = self.plan
        overrides = {
            "run.dir": self._path("runs", name), "run.stage": stage, "run.seed": self.seed, "data.train": data,
            "data.max_length": p.max_length, "data.buckets": list(p.buckets),
            "data.batch_size": extra.pop("batch", p.batch_size),
            "train.steps": steps, "optim.lr": lr, "optim.schedule": "cosine",
            "optim.warmup_steps": max(1, steps // 20), "checkpoint.every": steps, "checkpoint.keep": 1,
            "train.progress": True, "data.allow_absolute_paths": True,  # data files point into the world dirs
            **extra,
        }
        cfg = load_config(None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()])
        Trainer(resolve_world_inputs(cfg)).run()
        return self._path("runs", name, "model")

    def _export(self, name: str, run_model: str) -> str:
        from jax_align.atomic import atomic_dir
        from jax_align.model_store import load_model
        from jax_align.models import to_hf

        config, _, params = load_model(run_model)
        dst = self._path("models", name)
        with atomic_dir(dst) as work:  # an earlier export stays whole until the new one is complete
            to_hf(config, params, work, source_dir=run_model)
        return dst

    def _evaluate(self, name: str, model_dir: str) -> dict:
        from jax_align.eval.evaluate import evaluate_model, load_benchmarks, write_answers

        p = self.plan
        res = evaluate_model(self.eval_world, model_dir, max_new_tokens=p.caption_tokens, batch_size=p.eval_batch)
        write_answers(load_benchmarks(self.eval_world), res.responses, self._path("answers", name))
        self.results[name] = res.metrics
        m = res.metrics
        self.log(f"[demo] {name}: POPE-adv FPR {m['pope']['adversarial'].get('false_positive_rate', float('nan')):.3f} "
                 f"CHAIR_i {m['chair']['chair_i']:.3f} VQA {m['vqa']['accuracy']:.3f}")
        return m

    # ------------------------------------------------------------------------------------------ stages
    def run(self) -> dict:
        from jax_align.world.datasets import write_world

        p = self.plan
        os.makedirs(self.out, exist_ok=True)
        t_start = time.perf_counter()
        self.train_world = self._path("world", "train")
        self.eval_world = self._path("world", "eval")
        self._timed("world", write_world, self.train_world, seed=self.seed, n=p.train_scenes)
        write_world(self.eval_world, seed=self.seed + 10_000, n=p.eval_scenes)
        tok = os.path.join(self.train_world, "tokenizer")

        cap = self._timed("train captioning", self._train, "caption", "sft",
                          os.path.join(self.train_world, "pretrain.jsonl"), p.caption_steps, p.caption_lr,
                          **{"model.init": "tiny-world", "model.tokenizer": tok, "model.train_vision": True})
        sft = self._timed("train sft", self._train, "sft", "sft", os.path.join(self.train_world, "sft.jsonl"),
                          p.sft_steps, p.sft_lr, **{"model.path": cap, "model.train_vision": True})
        sft_hf = self._export("sft", sft)
        self._timed("eval sft", self._evaluate, "sft", sft_hf)

        pairs = self._timed("bdhs", self._bdhs, sft_hf)
        dpo = self._timed("train dpo", self._train, "dpo", "dpo", pairs, p.dpo_steps, p.dpo_lr,
                          **{"model.path": sft_hf, "loss.beta": p.dpo_beta, "loss.sft_weight": p.dpo_sft_weight,
                             "batch": p.dpo_batch, "ref.mode": "cached"})
        self._timed("eval dpo", self._evaluate, "dpo", self._export("dpo", dpo))

        ranked = self._timed("multi-level data", self._multilevel, sft_hf)
        mdpo = self._timed("train mdpo", self._train, "mdpo", "mdpo", ranked, p.mdpo_steps, p.mdpo_lr,
                           **{"model.path": sft_hf, "data.num_responses": 3, "batch": p.dpo_batch,
                              "loss.sft_weight": p.dpo_sft_weight, "ref.mode": "cached",
                              "data.max_length": p.mdpo_max_length,
                              "data.buckets": _buckets_to(p.mdpo_max_length)})
        self._timed("eval mdpo", self._evaluate, "mdpo", self._export("mdpo", mdpo))

        rm = self._timed("train reward", self._train, "reward", "reward",
                         os.path.join(self.train_world, "reward.jsonl"), p.reward_steps, p.reward_lr,
                         **{"model.path": sft_hf, "data.num_responses": 5, "loss.center_rewards": 0.01,
                            "data.max_length": p.reward_max_length,
                            "data.buckets": _buckets_to(p.reward_max_length)})
        margins = self._timed("reward margins", self._margins, rm, pairs)
        mmdpo = self._timed("train mmdpo", self._train, "mmdpo", "mmdpo", margins, p.mmdpo_steps, p.dpo_lr,
                            **{"model.path": sft_hf, "loss.beta": p.dpo_beta, "loss.sft_weight": p.mmdpo_gamma,
                               "batch": p.dpo_batch, "ref.mode": "cached"})
        self._timed("eval mmdpo", self._evaluate, "mmdpo", self._export("mmdpo", mmdpo))
        self.timings["total"] = round(time.perf_counter() - t_start, 1)
        from jax_align.demo_report import write_report

        return write_report(self)

    def _caption_subset(self, n: int) -> list[dict]:
        """n detailed-caption SFT records: multi-level groups (one and two hallucinated sentences) need answers
        of several sentences; one-word answers would only repeat DPO's pairs, and count answers teach
        over-counting (see :meth:`_bdhs_prompts`)."""
        import numpy as np

        from jax_align.world.datasets import read_jsonl

        records = [r for r in read_jsonl(os.path.join(self.train_world, "sft.jsonl")) if r["id"].endswith("-caption")]
        idx = np.random.default_rng(self.seed + 1).permutation(len(records))[:n]
        return [records[i] for i in sorted(idx)]

    def _bdhs_prompts(self) -> list[dict]:
        """BDHS inputs (ground-truth answers) from the training world only.

        Detailed captions and attribute/position VQA come from the SFT set; existence questions are asked over
        the training scenes in the POPE style, half of them about the usual companions of present objects
        (co-occurrence negatives and positives), because that is the hallucination the bias teaches. Count
        questions are left out: the masked policy's answer ("One.") is also the most frequent truth, so BDHS
        would only keep pairs whose chosen count is larger and DPO would learn to over-count.
        """
        import numpy as np

        from jax_align.world.datasets import read_jsonl

        p = self.plan
        rng = np.random.default_rng(self.seed + 1)
        sft = read_jsonl(os.path.join(self.train_world, "sft.jsonl"))
        pope = read_jsonl(os.path.join(self.train_world, "pope.jsonl"))
        captions = [r for r in sft if r["id"].endswith("-caption")]
        vqa = [r for r in sft if "-vqa" in r["id"] and not r["conversations"][0]["value"].split("\n")[-1]
               .startswith("How many")]
        adversarial = [q for q in pope if q["split"] == "adversarial"]
        others = [q for q in pope if q["split"] != "adversarial"]

        def take(items, n):
            """n items in file order; past len(items), every item again (a second BDHS sample of it)."""
            if not items:
                return []
            rounds = [sorted(rng.permutation(len(items))[: min(n - k, len(items))]) for k in range(0, n, len(items))]
            return [items[i] for idx in rounds for i in idx]

        def as_sft(q):
            answer = "Yes." if q["label"] == "yes" else "No."
            return {"image": q["image"], "conversations": [{"from": "human", "value": "<image>\n" + q["prompt"]},
                                                          {"from": "gpt", "value": answer}]}

        n_adv = p.bdhs_existence // 2
        existence = [as_sft(q) for q in take(adversarial, n_adv) + take(others, p.bdhs_existence - n_adv)]
        return take(captions, p.bdhs_captions) + existence + take(vqa, p.bdhs_vqa)

    def _bdhs(self, model_dir: str) -> str:
        from jax_align.embedders import SentenceEmbedder
        from jax_align.generate import get_generator
        from jax_align.recipes.bdhs import BDHSConfig, run_bdhs, write_pairs

        records = self._bdhs_prompts()
        cfg = BDHSConfig(seed=self.seed, batch_size=self.plan.eval_batch, extend_prob=self.plan.bdhs_extend,
                         rho_th=self.plan.bdhs_rho_th)
        pairs, stats = run_bdhs(get_generator(model_dir), records, base_dir=self.train_world,
                                embedder=SentenceEmbedder.from_path(None), cfg=cfg, progress=self.log)
        out = self._path("data", "bdhs_pairs.jsonl")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_pairs(pairs, self.train_world, out)
        self.data["bdhs"] = {k: v for k, v in stats.items()}
        return out

    def _multilevel(self, model_dir: str) -> str:
        from jax_align.generate import get_generator
        from jax_align.recipes.bdhs import BDHSConfig, write_pairs
        from jax_align.recipes.multilevel import build_multilevel

        records = self._caption_subset(self.plan.mdpo_records)
        groups = build_multilevel(get_generator(model_dir), records, base_dir=self.train_world,
                                  cfg=BDHSConfig(seed=self.seed, batch_size=self.plan.eval_batch))
        out = self._path("data", "multilevel.jsonl")
        write_pairs(groups, self.train_world, out)
        self.data["multilevel"] = {"records": len(records), "groups": len(groups),
                                   "three_levels": sum(len(g["responses"]) == 3 for g in groups)}
        return out

    def _margins(self, reward_model: str, pairs: str) -> str:
        """Reward-model margins on a random subset of the BDHS pairs (MM-DPO sees each once)."""
        import numpy as np

        from jax_align.recipes.reward_scoring import attach_margins, score_pairs

        with open(pairs) as f:
            lines = [line for line in f if line.strip()]
        keep = np.random.default_rng(self.seed + 2).permutation(len(lines))[: self.plan.mmdpo_pairs]
        subset = self._path("data", "mmdpo_pairs.jsonl")
        from jax_align.atomic import atomic_file

        with atomic_file(subset) as f:
            f.writelines(lines[i] for i in sorted(keep))
        pairs = subset
        rewards = score_pairs(reward_model, pairs, batch_size=self.plan.eval_batch // 2, buckets=self.plan.buckets)
        out = self._path("data", "bdhs_pairs_margins.jsonl")
        self.data["reward_margins"] = attach_margins(pairs, rewards, out)
        return out

    def settings(self) -> dict:
        return {"seed": self.seed, "plan": dataclasses.asdict(self.plan)}


def run_demo(out_dir: str, quick: bool = False, seed: int = 0) -> dict:
    return Demo(out_dir, QUICK if quick else DemoPlan(), seed=seed).run()
