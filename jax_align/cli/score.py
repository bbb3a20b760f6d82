"""``jax-align score --model M --input IN --output OUT [--reference R]``: per-response log-probs, token counts,
implicit rewards and reward-model scores of every record, written beside the records (see
:mod:`jax_align.train.score`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (jax-align or Hugging Face); a reward or "
                        "critique_reward run's model also gives `rewards`")
    parser.add_argument("--input", required=True, help="data file: sft, pairwise, ranked or scored records")
    parser.add_argument("--output", required=True, help="output JSONL: the input records with lists added")
    parser.add_argument("--reference", default=None, help="reference model: adds ref_logps and implicit_rewards")
    parser.add_argument("--format", default=None, choices=("sft", "pairwise", "ranked", "scored"),
                        help="record format (default: detected from the first record)")
    parser.add_argument("--batch-size", type=int, default=8, help="groups per batch")
    parser.add_argument("--buckets", default="", help="sequence-length buckets, comma separated (default: powers "
                        "of two from 128 up to --max-length, then --max-length)")
    parser.add_argument("--max-length", type=int, default=None, help="truncation limit (default: the largest of "
                        "--buckets, else 1024)")
    parser.add_argument("--layout", default="prefix_shared", choices=("prefix_shared", "naive"))
    parser.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                        help="bad records: stop naming file, record and field (raise) or leave them unscored (skip)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="critique length for critique_reward models")
    parser.add_argument("--critiques", default="generate", choices=("generate", "given"),
                        help="critique_reward models: write greedy critiques first (generate, spec §4.2) or use the "
                             "records' own (given, teacher forcing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from jax_align.train.score import score_file

    buckets = tuple(int(b) for b in str(args.buckets).split(",") if b.strip()) or None  # None: the ladder
    s = score_file(args.model, args.input, args.output, reference=args.reference, fmt=args.format,
                   batch_size=args.batch_size, buckets=buckets, max_length=args.max_length, layout=args.layout,
                   on_error=args.on_error, max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                   critiques=args.critiques)
    line = (f"jax-align score: {s.scored}/{s.records} {s.format} records scored -> {args.output} "
            f"(lists: {', '.join(s.lists)})")
    if s.skipped:
        line += f"; {s.skipped} skipped"
    if s.critiques:
        line += f"; critiques in {s.critiques}"
    print(line)
    return 0
