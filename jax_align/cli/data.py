"""``jax-align data validate PATH --format {sft,pairwise,ranked,scored}``: name every bad record.

Prints ``PATH:RECORD: FIELD: MESSAGE`` for each bad record (RECORD: 1-based line number for JSONL, row
index + 1 otherwise; a record with several problems gets one line listing them all, or one line per problem
with ``--each-problem``) and exits 1 if there is any, else 0. ``--model DIR`` (a Hugging Face LLaVA directory
with tokenizer, chat template and config) enables the "too long even after truncation" check against
``--max-length`` (default: the model's ``max_position_embeddings``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jax_align.data.records import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser("validate", help="check a data file and name every bad record")
    p.add_argument("path", help="JSONL / JSON / Parquet file or a datasets directory saved with save_to_disk")
    p.add_argument("--format", required=True, choices=FORMATS, help="record format")
    p.add_argument(
        "--model", default=None, help="checkpoint directory (tokenizer, chat template, config.json)"
    )
    p.add_argument("--max-length", type=int, default=None, help="row length limit for the length check")
    p.add_argument(
        "--layout",
        default="prefix_shared",
        choices=("prefix_shared", "naive"),
        help="preference row layout that must fit --max-length (default: prefix_shared)",
    )
    p.add_argument(
        "--min-response-tokens", type=int, default=1, help="tokens of each response truncation keeps"
    )
    p.add_argument(
        "--max-prompt-cut",
        type=float,
        default=0.5,
        help="largest fraction of the prompt text truncation may drop (default 0.5)",
    )
    p.add_argument(
        "--image-root",
        default=None,
        help="resolve relative image paths here (default: the data file's directory)",
    )
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    images = p.add_mutually_exclusive_group()
    images.add_argument(
        "--require-images",
        dest="require_images",
        action="store_true",
        default=None,
        help="a record without an image is an error (default for preference formats)",
    )
    images.add_argument(
        "--allow-text-only",
        dest="require_images",
        action="store_false",
        help="records without images are fine (default for sft)",
    )
    p.add_argument("--each-problem", action="store_true", help="one line per problem instead of per record")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "validate":
        print("usage: jax-align data validate PATH --format {" + ",".join(FORMATS) + "}", file=sys.stderr)
        return 2
    return validate_command(args)


def validate_command(args: argparse.Namespace) -> int:
    from jax_align.data.readers import open_records
    from jax_align.data.validate import RecordChecker, iter_problems

    tokenizer = None
    max_length = args.max_length
    if args.model is not None:
        from jax_align.data.tokenize import ChatTokenizer
        from jax_align.data.vision_tokens import load_model_config, max_position_embeddings

        tokenizer = ChatTokenizer.from_model_dir(args.model)
        if max_length is None:
            max_length = max_position_embeddings(load_model_config(args.model))
    elif args.max_length is not None:
        print(
            "jax-align data validate: --max-length needs --model DIR (tokenizer and image-token count); "
            "length check skipped",
            file=sys.stderr,
        )
    try:
        source = open_records(args.path, image_root=args.image_root, split=args.split)
    except json.JSONDecodeError as e:
        print(f"{args.path}:{e.lineno}: record: invalid JSON: {e.msg} (column {e.colno})")
        return 1
    except (OSError, ValueError) as e:
        print(f"{args.path}:0: file: {e}")
        return 1
    checker = RecordChecker(
        fmt=args.format,
        require_images=args.require_images,
        tokenizer=tokenizer,
        max_length=max_length if tokenizer is not None else None,
        layout=args.layout,
        min_response_tokens=args.min_response_tokens,
        max_prompt_cut=args.max_prompt_cut,
    )
    bad = 0
    try:
        for problem in iter_problems(source, checker, per_record=not args.each_problem):
            print(problem)
            bad += 1
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, still report failure
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    if not args.quiet:
        what = "problems" if args.each_problem else "bad records"
        print(f"{args.path}: {len(source)} records, {bad} {what}", file=sys.stderr)
    return 1 if bad else 0
