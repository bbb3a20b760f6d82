#!/usr/bin/env python
"""Online-DPO loop benchmark (spec §2.1): where a round's wall time goes, and what sampling inside the loop costs.

On the built-in world with a tiny model on CPU: render a world, SFT a tiny-world model (the start policy), then
train ``run.stage=online_dpo`` with the world's ground truth as annotator for ``--rounds`` rounds of ``--every``
steps. Reported per round:

* the fraction of the round's wall time spent sampling, annotating and training (``online/seconds_*`` from the
  round's stats; training = the time from the end of the round's sampling + annotation to the start of the next
  round, i.e. its ``--every`` optimizer steps with logging; the last round, whose end includes the final save,
  is left out);
* samples/s of the in-loop sampler (the live, sharded train-state parameters) against the standalone
  :meth:`jax_align.generate.Generator.generate` (the library call behind ``jax-align generate``) run afterwards
  on the same prompts with the same parameters (a copy of that round's policy), the same sampling settings and
  the same seed: both produce the same samples, so the ratio is the loop's overhead. Round 0 of both includes
  compilation (a fresh Generator each); the ratio is also given over the later rounds (warm).

Example::

    JAX_PLATFORMS=cpu python tools/bench_online.py --out /tmp/bench_online --rounds 5 --every 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_online_out", help="work directory (world, models, runs)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--every", type=int, default=2, help="optimizer steps per round (online.every)")
    p.add_argument("--batch-size", type=int, default=8, help="data.batch_size (prompts per round = this x every)")
    p.add_argument("--samples", type=int, default=2, help="online.samples")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sft-steps", type=int, default=40, help="SFT steps of the start policy")
    p.add_argument("--world-size", type=int, default=12, help="scenes in the world")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def _setup(args) -> tuple[str, str]:
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.datasets import write_world
    from jax_align.world.train_inputs import resolve_world_inputs

    world = os.path.join(args.out, "world")
    model = os.path.join(args.out, "sft", "model")
    if not os.path.isfile(os.path.join(world, "sft.jsonl")):
        write_world(world, seed=args.seed, n=args.world_size)
    if not os.path.isdir(model):
        cfg = resolve_world_inputs(load_config(None, [
            f"run.dir={args.out}/sft", "run.stage=sft", "model.init=tiny-world", f"model.tokenizer={world}/tokenizer",
            f"data.train={world}/sft.jsonl", "data.max_length=160", f"train.steps={args.sft_steps}",
            "optim.lr=2e-3", "optim.schedule=constant", "train.progress=false", "checkpoint.every=100000"]))
        Trainer(cfg).run()
    return world, model


def run(args) -> dict:
    import shutil

    import jax
    import jax.numpy as jnp

    from jax_align.generate import Generator
    from jax_align.sampling import SamplingParams
    from jax_align.train.config import load_config
    from jax_align.train.online import OnlineRounds
    from jax_align.train.trainer import Trainer
    from jax_align.world.annotator import WorldAnnotator

    world, model = _setup(args)
    run_dir = os.path.join(args.out, "online")
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, [
        f"run.dir={run_dir}", "run.stage=online_dpo", f"model.path={model}", f"data.train={world}/sft.jsonl",
        "data.max_length=160", f"data.batch_size={args.batch_size}", f"train.steps={args.rounds * args.every}",
        "optim.lr=5e-4", "optim.schedule=constant", "train.progress=false", "checkpoint.every=100000",
        f"online.every={args.every}", f"online.samples={args.samples}", f"online.temperature={args.temperature}",
        f"online.max_new_tokens={args.max_new_tokens}", f"online.annotator=world:{world}",
        f"run.seed={args.seed}"])

    rounds: list[dict] = []
    original = OnlineRounds.write_round

    def timed(self, r, step):  # record when each round starts and ends, its prompts and its policy
        start = time.perf_counter()
        path = original(self, r, step)
        end = time.perf_counter()
        prompts = [self._prompt(self.records[i])[0] for i in self._round_indices(r)]
        params = jax.tree.map(lambda x: jnp.array(jax.device_get(x)), self.params_fn())  # a plain copy
        rounds.append({"round": r, "start": start, "end": end, "stats": self.stats_of(r), "prompts": prompts,
                       "params": params})
        return path

    OnlineRounds.write_round = timed
    try:
        t0 = time.perf_counter()
        Trainer(cfg, annotator=WorldAnnotator(world)).run()
        total = time.perf_counter() - t0
    finally:
        OnlineRounds.write_round = original

    # the standalone library call on the same prompts, parameters, settings and seed
    gen = Generator.from_model_dir(model)
    sp = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, n_samples=args.samples)
    rows = []
    for i, rd in enumerate(rounds):
        gen.sampler.params = rd["params"]
        t = time.perf_counter()
        outs = gen.generate(rd["prompts"], sp, batch_size=cfg.online.batch_size,
                            seed=int(cfg.run.seed) * 1_000_003 + rd["round"])
        standalone = time.perf_counter() - t
        n = sum(len(o.completions) for o in outs)
        st = rd["stats"]
        wall = rounds[i + 1]["start"] - rd["start"] if i + 1 < len(rounds) else None
        sampling, annotating = st["online/seconds_sampling"], st["online/seconds_annotating"]
        training = rounds[i + 1]["start"] - rd["end"] if i + 1 < len(rounds) else None
        rows.append({"round": rd["round"], "samples": n, "wall_s": wall, "sampling_s": sampling,
                     "annotating_s": annotating, "training_s": training,
                     "in_loop_samples_per_s": n / sampling, "standalone_samples_per_s": n / standalone,
                     "standalone_s": standalone})
    warm = rows[1:]
    ratio = lambda rs: (sum(r["samples"] for r in rs) / sum(r["sampling_s"] for r in rs)) / \
        (sum(r["samples"] for r in rs) / sum(r["standalone_s"] for r in rs))
    timed_rows = [r for r in rows if r["wall_s"] is not None]
    later = [r for r in timed_rows if r["round"] > 0]
    frac = lambda rs, k: sum(r[k] for r in rs) / sum(r["wall_s"] for r in rs)
    return {"config": {k: v for k, v in vars(args).items()}, "trainer_wall_s": total, "rounds": rows,
            "ratio_in_loop_vs_standalone_all": ratio(rows),
            "ratio_in_loop_vs_standalone_warm": ratio(warm) if warm else None,
            "fractions_rounds_1+": {k: frac(later, k + "_s") for k in ("sampling", "annotating", "training")}
            if later else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rounds < 2 or args.every < 1 or args.batch_size < 1 or args.samples < 2:
        print("bench_online: --rounds >= 2, --every >= 1, --batch-size >= 1, --samples >= 2", file=sys.stderr)
        return 2
    res = run(args)
    print(f"{'round':>5} {'samples':>7} {'wall s':>7} {'sample':>7} {'annot':>7} {'train':>7} "
          f"{'loop/s':>8} {'alone/s':>8} {'ratio':>6}")
    for r in res["rounds"]:
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.2f}"
        train = "-" if r["training_s"] is None else f"{r['training_s']:.2f}"
        print(f"{r['round']:>5} {r['samples']:>7} {wall:>7} {r['sampling_s']:>7.2f} {r['annotating_s']:>7.3f} "
              f"{train:>7} {r['in_loop_samples_per_s']:>8.1f} {r['standalone_samples_per_s']:>8.1f} "
              f"{r['in_loop_samples_per_s'] / r['standalone_samples_per_s']:>6.2f}")
    f = res["fractions_rounds_1+"]
    if f:
        print(f"rounds 1+ (the last one left out): sampling {f['sampling']:.1%}, annotating {f['annotating']:.1%}, "
              f"training {f['training']:.1%} of the round's wall time")
    print(f"in-loop vs standalone samples/s: {res['ratio_in_loop_vs_standalone_all']:.2f}x over all rounds "
          f"(round 0 compiles in both), {res['ratio_in_loop_vs_standalone_warm']:.2f}x over rounds 1+")
    if args.json:
        from jax_align.atomic import atomic_file

        with atomic_file(args.json) as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
