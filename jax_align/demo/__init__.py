"""The main job: a tiny LLaVA trained from scratch on the synthetic world, then aligned by every method the library
implements, each from the same SFT model under one budget, and compared on a held-out world.

``jax-align demo --out DIR [--seeds N] [--methods a,b] [--quick]`` (``make demo`` uses ``DIR=demo_out``):

1. a training world and a held-out evaluation world (different seeds);
2. the captioning model and the SFT model (once, whatever ``--seeds`` says);
3. per method and seed (:mod:`jax_align.demo.methods`): its data, its training, export to ``models/NAME``
   (``NAME_sS`` for seeds after the first) and evaluation: POPE per split, CHAIR, VQA per category;
4. ``report.md``, ``report.json`` and PNG plots (:mod:`jax_align.demo.report`).

Deterministic for a seed. ``--quick`` runs a miniature version for tests (numbers meaningless).
"""

from __future__ import annotations

import dataclasses
import time

from jax_align.demo.base import DemoContext, Progress
from jax_align.demo.plan import QUICK, DemoPlan

__all__ = ["DemoPlan", "QUICK", "run_demo"]

# wall seconds per top-level stage measured on a quiet 2-core CPU (full plan): only the progress line's estimate
# reads them
WEIGHTS = {"worlds": 8, "base models": 165, "eval": 6, "dpo": 125, "online_dpo": 80, "mixed_dpo": 65,
           "eaco": 110, "mmdpo": 170, "mdpo_amp": 150, "align2": 100, "sft_random": 40}


def _model_name(method: str, seed: int, first_seed: int) -> str:
    return method if seed == first_seed else f"{method}_s{seed}"


def run_demo(out_dir: str, quick: bool = False, seed: int = 0, seeds: int = 1,
             methods: list[str] | None = None, log=print) -> dict:
    from jax_align.demo.methods import Bases
    from jax_align.demo.methods import methods as registry
    from jax_align.demo.report import write_report

    plan = QUICK if quick else DemoPlan()
    table = registry()
    names = list(methods or plan.methods or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(table)}")
    plan = dataclasses.replace(plan, methods=tuple(names))
    run_seeds = [seed + k for k in range(max(1, seeds))]
    ctx = DemoContext(out_dir, plan, seed=seed, log=log)
    stages = [("worlds", WEIGHTS["worlds"]), ("base models", WEIGHTS["base models"]), ("eval sft", WEIGHTS["eval"])]
    stages += [(f"{n} (seed {s})", WEIGHTS.get(n, 150) + WEIGHTS["eval"]) for s in run_seeds for n in names]
    progress = Progress(stages, log)
    t_start, c_start = time.perf_counter(), time.process_time()

    t = progress.start("worlds")
    ctx.worlds()
    progress.finish("worlds", t)
    t = progress.start("base models")
    caption, sft = ctx.base_models()
    progress.finish("base models", t)
    bases = Bases(caption=caption, sft=sft)
    t = progress.start("eval sft")
    results: dict[str, dict] = {"sft": {"seeds": {seed: ctx.evaluate("sft", sft)}, "model": "models/sft"}}
    progress.finish("eval sft", t)
    for s in run_seeds:
        for name in names:
            stage = f"{name} (seed {s})"
            t, c0 = progress.start(stage), time.process_time()
            res = table[name].run(ctx, bases, s)
            model_name = _model_name(name, s, run_seeds[0])
            hf = ctx.export(model_name, res.model)
            metrics = ctx.evaluate(model_name, hf)
            entry = results.setdefault(name, {"seeds": {}, "model": f"models/{name}", "cost": {}})
            entry["seeds"][s] = metrics
            entry["cost"][s] = {"records": res.records, "pref_steps": res.pref_steps, "sft_steps": res.sft_steps,
                                "wall_minutes": round((time.perf_counter() - t) / 60, 2),
                                "cpu_minutes": round((time.process_time() - c0) / 60, 2), **res.data}
            progress.finish(stage, t)
    ctx.timings["total"] = round(time.perf_counter() - t_start, 1)
    ctx.cpu["total"] = round(time.process_time() - c_start, 1)
    return write_report(ctx, results, table, run_seeds)
