"""``jax-align eval``: POPE, CHAIR and VQA metrics of a model (or of saved answers) on a synthetic world."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", required=True, help="world directory written by `jax-align world`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", help="model directory or checkpoint: generate the answers, then score them"
    )
    source.add_argument(
        "--answers", help="directory with pope.jsonl, captions.jsonl, vqa.jsonl from `jax-align generate`"
    )
    parser.add_argument("--json", dest="json_out", help="write the metrics as JSON to this path")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="caption budget with --model (default 96)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch size with --model")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed with --model")
    parser.add_argument("--save-answers", help="with --model: also write the generated answer files here")


def run(args: argparse.Namespace) -> int:
    from jax_align.eval.evaluate import (
        evaluate_answers,
        generate_answers,
        load_benchmarks,
        score,
        write_answers,
    )
    from jax_align.eval.report import format_table

    if args.json_out:
        from jax_align.atomic import check_writable
        from jax_align.cli.errors import located

        with located(args.json_out, "--json"):
            check_writable(args.json_out)
    try:
        if args.answers:
            if args.save_answers:
                print("jax-align eval: --save-answers applies only with --model", file=sys.stderr)
                return 2
            result = evaluate_answers(args.world, args.answers)
        else:
            bench = load_benchmarks(args.world)
            responses = generate_answers(
                bench,
                args.model,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                temperature=args.temperature,
                seed=args.seed,
            )
            if args.save_answers:
                write_answers(bench, responses, args.save_answers)
            result = score(bench, responses)
    except (ValueError, RuntimeError, OSError) as e:
        from jax_align.cli.errors import describe

        print(f"jax-align eval: {describe(e) or e}", file=sys.stderr)
        return 2
    print(format_table(result.metrics, result.counts))
    if args.json_out:
        from jax_align.atomic import write_json

        write_json(args.json_out, result.metrics)
    return 0
