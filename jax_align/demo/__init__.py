"""The main job: a tiny LLaVA trained from scratch on the synthetic world, then aligned by every method the library
implements, each from the same SFT model under one budget, and compared on a held-out world.

``jax-align demo --out DIR [--seeds N] [--methods a,b] [--workers W] [--quick]`` (``make demo`` uses ``DIR=demo_out``):

1. a training world and a held-out evaluation world (different seeds);
2. the captioning model and the SFT model (once, whatever ``--seeds`` says);
3. per method and seed (:mod:`jax_align.demo.methods`): its data, its training, export to ``models/NAME``
   (``NAME_sS`` for seeds after the first) and evaluation: POPE per split, CHAIR, VQA per category; ``workers``
   of these jobs at once, each in its own process, in dependency order (:mod:`jax_align.demo.schedule`);
4. ``report.md``, ``report.json`` and PNG plots (:mod:`jax_align.demo.report`).

Deterministic for a seed. ``--quick`` runs a miniature version for tests (numbers meaningless).
"""

from __future__ import annotations

import dataclasses
import os
import time

from jax_align.demo.base import DemoContext, Progress
from jax_align.demo.plan import QUICK, DemoPlan

__all__ = ["DemoPlan", "QUICK", "run_demo"]

# wall seconds per stage measured on the 2-core CPU (full plan, one process; a method's includes its export, not
# its evaluation, "eval"): the progress line's estimate and the order of the method jobs read them
WEIGHTS = {"worlds": 6, "base models": 298, "eval": 11, "bdhs": 74, "dpo": 60, "online_dpo": 70, "mixed_dpo": 63,
           "eaco": 88, "mmdpo": 159, "mdpo_amp": 167, "align2": 146, "sft_random": 33}


def _model_name(method: str, seed: int, first_seed: int) -> str:
    return method if seed == first_seed else f"{method}_s{seed}"


# what a method reads that another job writes (see jax_align.demo.schedule)
NEEDS_BDHS = ("dpo", "mixed_dpo", "mmdpo")
AFTER = {"sft_random": "align2"}  # the control draws as many records as Align² kept


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _shared(ctx: DemoContext) -> dict:
    return {"timings": ctx.timings, "cpu": ctx.cpu, "data": ctx.data}


def bdhs_job(ctx: DemoContext, bases, seed: int) -> dict:
    """The BDHS pairs of ``seed`` (shared by DPO, Mixed-DPO and MM-DPO)."""
    from jax_align.demo.methods import bdhs_pairs

    bdhs_pairs(ctx, bases, seed)
    return _shared(ctx)


def method_job(ctx: DemoContext, bases, name: str, seed: int, model_name: str) -> dict:
    """One method for one seed: its data and training, export to ``models/NAME``, evaluation and cost."""
    from jax_align.demo.methods import methods as registry

    t, c0 = time.perf_counter(), time.process_time()
    res = registry()[name].run(ctx, bases, seed)
    hf = ctx.export(model_name, res.model)
    metrics = ctx.evaluate(model_name, hf)
    cost = {"records": res.records, "pref_steps": res.pref_steps, "sft_steps": res.sft_steps,
            "wall_minutes": round((time.perf_counter() - t) / 60, 2),
            "cpu_minutes": round((time.process_time() - c0) / 60, 2), **res.data}
    return {"metrics": metrics, "cost": cost, **_shared(ctx)}


def run_demo(out_dir: str, quick: bool = False, seed: int = 0, seeds: int = 1,
             methods: list[str] | None = None, log=print, workers: int = 2) -> dict:
    from jax_align.demo.methods import Bases
    from jax_align.demo.methods import methods as registry
    from jax_align.demo.report import write_report
    from jax_align.demo.schedule import Job, run_jobs

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
    children_start = _children_cpu()

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

    jobs = []
    for s in run_seeds:
        if any(n in NEEDS_BDHS for n in names):
            jobs.append(Job(f"bdhs pairs (seed {s})", bdhs_job, (bases, s), WEIGHTS["bdhs"], progress=False))
        for name in names:
            needs = [f"bdhs pairs (seed {s})"] if name in NEEDS_BDHS else []
            if AFTER.get(name) in names:
                needs.append(f"{AFTER[name]} (seed {s})")
            if s != run_seeds[0]:  # later seeds reuse what the first leaves (e.g. AMP's M_1 expert)
                needs.append(f"{name} (seed {run_seeds[0]})")
            jobs.append(Job(f"{name} (seed {s})", method_job, (bases, name, s, _model_name(name, s, run_seeds[0])),
                            WEIGHTS.get(name, 150), tuple(needs)))

    def on_done(job: Job) -> None:
        if job.fn is not method_job:
            return
        _, name, s, model_name = job.args
        entry = results.setdefault(name, {"seeds": {}, "model": f"models/{name}", "cost": {}})
        entry["seeds"][s] = job.result["metrics"]
        entry["cost"][s] = job.result["cost"]

    run_jobs(ctx, jobs, workers, progress, on_done)
    results = {"sft": results["sft"], **{n: results[n] for n in names}}  # the report's order: the plan's
    ctx.timings["total"] = round(time.perf_counter() - t_start, 1)
    # this process and its (finished) worker processes
    ctx.cpu["total"] = round(time.process_time() - c_start + _children_cpu() - children_start, 1)
    return write_report(ctx, results, table, run_seeds)
