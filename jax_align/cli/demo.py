"""``jax-align demo [--out DIR] [--quick] [--seed S]``: the full alignment pipeline on the synthetic world."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="a miniature run (for tests; numbers meaningless)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training world and every stage")


def run(args) -> int:
    from jax_align.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    print(f"report: {args.out}/report.md")
    return 0
