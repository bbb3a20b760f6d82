"""``jax-align data validate PATH --format {sft,pairwise,ranked,scored,align2_questions,align2_answers}``: name
every bad record (``align2_*``: Align²LLaVA's raw question / answer preference records, spec §3.6).

Prints ``PATH:RECORD: FIELD: MESSAGE`` for each bad record (RECORD: 1-based line number for JSONL, row
index + 1 otherwise; a record with several problems gets one line listing them all, or one line per problem
with ``--each-problem``) and exits 1 if there is any, else 0. An empty file is a bad file (``PATH:0: file:
empty``); records repeating an earlier ``id`` are named; image paths must stay inside the data file's directory
(``--allow-absolute-paths``) and images within the decode limits (``--max-image-pixels``, ``--max-image-aspect``).
``--model DIR`` (a Hugging Face LLaVA directory with tokenizer, chat template and config), or just ``--tokenizer
DIR`` (with ``--image-tokens N`` when it has no config.json), enables the "too long even after truncation" check
against ``--max-length`` (default: the model's ``max_position_embeddings``). A file that cannot be read at all
is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jax_align.data.records import VALIDATE_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser("validate", help="check a data file and name every bad record")
    p.add_argument("path", help="JSONL / JSON / Parquet file or a datasets directory saved with save_to_disk")
    p.add_argument("--format", required=True, choices=VALIDATE_FORMATS,
                   help="record format (align2_questions: {image, questions: [[q, ...]], score}; align2_answers: "
                   "conversations whose gpt value is a list of answers with a score list, spec §3.6)")
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
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory for the --max-length check when there is no model directory "
        "(image tokens per image from its config.json, else --image-tokens)",
    )
    p.add_argument("--image-tokens", type=int, default=None, help="tokens one image expands to (with --tokenizer)")
    p.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="accept image paths outside the data file's directory (absolute or ../)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="largest image canvas after padding, in pixels (default 36000000 or $JAX_ALIGN_MAX_IMAGE_PIXELS)",
    )
    p.add_argument(
        "--max-image-aspect",
        type=float,
        default=None,
        help="largest long/short side ratio of an image (default 20 or $JAX_ALIGN_MAX_IMAGE_ASPECT)",
    )
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
        print("usage: jax-align data validate PATH --format {" + ",".join(VALIDATE_FORMATS) + "}", file=sys.stderr)
        return 2
    return validate_command(args)


def validate_command(args: argparse.Namespace) -> int:
    from jax_align.cli.errors import CommandError, located
    from jax_align.data.images import ImageLimits
    from jax_align.data.readers import open_records
    from jax_align.data.validate import RecordChecker, iter_problems

    if args.max_length is not None and args.max_length < 1:
        raise CommandError(f"must be a positive number of tokens, got {args.max_length}", field="--max-length")
    if not os.path.exists(args.path):
        raise CommandError("no such data file or directory", file=args.path, field="file")
    if not (os.path.isfile(args.path) or os.path.isdir(args.path)):  # a FIFO or device would block or never end
        raise CommandError("not a regular file or a datasets directory", file=args.path, field="file")
    tokenizer = None
    max_length = args.max_length
    if args.model is not None:
        from jax_align.data.tokenize import ChatTokenizer
        from jax_align.data.vision_tokens import load_model_config, max_position_embeddings

        with located(args.model, "--model"):
            tokenizer = ChatTokenizer.from_model_dir(args.model)
            if max_length is None:
                max_length = max_position_embeddings(load_model_config(args.model))
    elif args.tokenizer is not None and args.max_length is not None:
        with located(args.tokenizer, "--tokenizer"):
            tokenizer = _tokenizer_only(args.tokenizer, args.image_tokens)
    elif args.max_length is not None:
        print(
            "jax-align data validate: --max-length needs --model DIR or --tokenizer DIR (tokens and image-token "
            "count); length check skipped",
            file=sys.stderr,
        )
    try:
        with located(args.path, "file"):
            source = open_records(args.path, image_root=args.image_root, split=args.split)
    except json.JSONDecodeError as e:  # a JSON array file that does not parse: the whole file is unusable
        raise CommandError(f"invalid JSON: {e.msg} (column {e.colno})", file=args.path, record=e.lineno,
                           field="file") from None
    except (OSError, ValueError) as e:  # unreadable, not a data file, corrupt Parquet, not a datasets directory
        message = " ".join(str(e).split())
        if message.startswith(f"{args.path}: "):
            message = message[len(args.path) + 2:]
        raise CommandError(message, file=args.path, field="file") from None
    if len(source) == 0:
        print(f"{args.path}:0: file: empty: no records")
        if not args.quiet:
            print(f"{args.path}: 0 records, 1 bad records", file=sys.stderr)
        return 1
    defaults = ImageLimits.default()
    limits = ImageLimits(
        max_pixels=defaults.max_pixels if args.max_image_pixels is None else args.max_image_pixels,
        max_aspect_ratio=defaults.max_aspect_ratio if args.max_image_aspect is None else args.max_image_aspect,
    )
    checker = RecordChecker(
        fmt=args.format,
        require_images=args.require_images,
        tokenizer=tokenizer,
        max_length=max_length if tokenizer is not None else None,
        layout=args.layout,
        min_response_tokens=args.min_response_tokens,
        max_prompt_cut=args.max_prompt_cut,
        allow_absolute_paths=args.allow_absolute_paths,
        image_limits=limits,
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


def _tokenizer_only(path: str, image_tokens: int | None):
    """A :class:`ChatTokenizer` from a tokenizer directory alone (no weights, no model config needed)."""
    from jax_align.cli.errors import CommandError
    from jax_align.data.tokenize import ChatTokenizer

    if os.path.isfile(os.path.join(path, "config.json")):
        return ChatTokenizer.from_model_dir(path)
    if image_tokens is None or image_tokens < 1:
        raise CommandError("no config.json here: give the tokens per image with --image-tokens N", file=path,
                           field="--tokenizer")
    from transformers import AutoTokenizer

    from jax_align.data.chat_template import read_processor_template

    tok = AutoTokenizer.from_pretrained(path)
    image_id = tok.convert_tokens_to_ids("<image>")
    if image_id is None or image_id == tok.unk_token_id:
        raise CommandError("the tokenizer has no <image> token", file=path, field="--tokenizer")
    template = getattr(tok, "chat_template", None) or read_processor_template(path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return ChatTokenizer(tok, image_token_id=image_id, image_seq_len=image_tokens, chat_template=template,
                         pad_id=pad)
