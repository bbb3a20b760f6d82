"""``jax-align demo [--out DIR] [--seeds N] [--methods a,b] [--workers W] [--quick] [--seed S]``: every alignment
method on the synthetic world, compared on a held-out world (:mod:`jax_align.demo`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="a miniature run (for tests; numbers meaningless)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the worlds, the base models and the first run")
    parser.add_argument("--seeds", type=int, default=1, help="runs per method (seeds S, S+1, ...): the report gives "
                        "mean and standard deviation and marks changes within noise (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="method runs at once after the SFT model, each in "
                        "its own process (default 2: on 2 cores two runs finish in 75%% of the time of one after the "
                        "other; 1: everything in this process)")
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods (default: all: dpo, "
                        "online_dpo, mixed_dpo, eaco, mmdpo, mdpo_amp, align2, sft_random)")


def run(args) -> int:
    from jax_align.cli.errors import CommandError
    from jax_align.demo import run_demo

    if args.seeds < 1:
        raise CommandError(f"must be at least 1, got {args.seeds}", field="--seeds")
    if args.workers < 1:
        raise CommandError(f"must be at least 1, got {args.workers}", field="--workers")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    from jax_align.platforms import tiny_model_cpu_flags

    tiny_model_cpu_flags()  # before the first computation; the method workers inherit it
    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, seeds=args.seeds, methods=methods,
                 workers=args.workers)
    except ValueError as e:
        if str(e).startswith("--methods"):
            raise CommandError(str(e).split(": ", 1)[1], field="--methods") from None
        raise
    print(f"report: {args.out}/report.md")
    return 0
