"""Preference-data recipes.

* ``jax-align prefs bdhs --model MODEL --input SFT.jsonl --output PREFS.jsonl``: BDHS preference pairs;
* ``jax-align prefs margins --reward-model RM --input PAIRS.jsonl --output OUT.jsonl``: MM-DPO margins
  ``r(chosen) - r(rejected)`` from a trained reward model (``run.dir/model`` of a ``reward`` or
  ``critique_reward`` run; the critique-based one writes its critiques first, spec §4.2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    b = sub.add_parser("bdhs", help="rejected answers sampled with image attention masked (spec §2.2)")
    b.add_argument("--model", required=True, help="policy: Hugging Face or jax-align model directory")
    b.add_argument("--input", required=True, help="SFT records (LLaVA conversations, messages, or prompt/answer)")
    b.add_argument("--output", required=True, help="pairwise JSONL: image, prompt, chosen, rejected, bdhs")
    b.add_argument("--rho-th", type=float, default=0.99, help="mask threshold: keep an image token if rho >= this")
    b.add_argument("--attempts", type=int, default=5, help="N_BDHS attempts (the last one is unguided)")
    b.add_argument("--sim-threshold", type=float, default=0.97, help="accept when cosine to the truth is below")
    b.add_argument("--embedder", default=None, help="sentence embedder directory (default: packaged MiniLM)")
    b.add_argument("--temperature", type=float, default=0.0, help="masked policy decoding temperature (0 = greedy)")
    b.add_argument("--retry-temperature", type=float, default=1.0, help="temperature of attempts after the first")
    b.add_argument("--extend-prob", type=float, default=0.0,
                   help="probability of one extra masked sentence after a multi-sentence answer (extension)")
    b.add_argument("--max-new-tokens", type=int, default=48, help="tokens per guided sentence")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--limit", type=int, default=0, help="use only the first N records (0 = all)")
    b.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")
    m = sub.add_parser("margins", help="MM-DPO margins from a trained reward model (spec §4.3)")
    m.add_argument("--reward-model", required=True, help="run.dir/model of a reward or critique_reward run")
    m.add_argument("--input", required=True, help="pairwise JSONL (prompt, chosen, rejected, image)")
    m.add_argument("--output", required=True, help="the same records with margin = r(chosen) - r(rejected)")
    m.add_argument("--critiques", action="store_true",
                   help="critique-based reward model: write its greedy critiques (OUTPUT.critiques.jsonl), then "
                        "score each answer with its critique")
    m.add_argument("--max-critique-tokens", type=int, default=256)
    m.add_argument("--batch-size", type=int, default=16)
    m.add_argument("--buckets", default="", help="comma-separated sequence-length buckets (default: powers of two "
                   "from 128 up to 1024)")
    m.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")
    for module_name in RECIPE_MODULES:  # each recipe module adds its sub-commands (its own file, its own args)
        importlib.import_module(module_name).register(sub)


# Recipe modules with ``register(subparsers)``; each sub-parser sets ``_recipe_run`` (``run(args) -> int``).
RECIPE_MODULES: tuple[str, ...] = ("jax_align.cli.prefs_eaco", "jax_align.cli.prefs_amp")


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file; bad input raises a one-line :class:`CommandError` (exit 2)."""
    from jax_align.cli.errors import CommandError, located

    if not os.path.isfile(path):
        raise CommandError("no such file", file=path, field="--input")
    records = []
    with open(path, encoding="utf-8", errors="strict") as f, located(path, "--input"):
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CommandError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, record=n,
                                       field="record") from None
                except RecursionError:
                    raise CommandError("invalid JSON: nested too deeply", file=path, record=n,
                                       field="record") from None
                if not isinstance(record, dict):
                    raise CommandError("expected a JSON object", file=path, record=n, field="record")
                records.append(record)
    if not records:
        raise CommandError("empty: no records", file=path, field="--input")
    return records


def check_image_paths(path: str, records: list[dict], allow_absolute_paths: bool) -> None:
    """Image paths stay inside the input file's directory (unless allowed): checked before any model loads."""
    from jax_align.data.problems import DataError, Problem
    from jax_align.data.records import FieldProblems, parse_images

    base = os.path.dirname(os.path.abspath(path))
    problems = []
    for n, record in enumerate(records, 1):
        found = FieldProblems()
        parse_images(record, base, found, allow_absolute_paths)
        problems.extend(Problem(path, n, f, m) for f, m in found.items)
    if problems:
        raise DataError(problems)


def run(args) -> int:
    from jax_align.atomic import check_writable
    from jax_align.cli.errors import located

    with located(args.output, "--output"):
        check_writable(args.output)
    if getattr(args, "_recipe_run", None) is not None:
        return args._recipe_run(args)
    return run_margins(args) if args.recipe == "margins" else run_bdhs_cli(args)


def run_margins(args) -> int:
    from jax_align.cli.errors import CommandError, located

    try:
        buckets = tuple(int(b) for b in args.buckets.split(",") if b.strip()) or None  # None: the ladder
    except ValueError:
        raise CommandError(f"expected comma-separated integers, got {args.buckets!r}", field="--buckets") from None
    check_image_paths(args.input, read_jsonl(args.input), args.allow_absolute_paths)  # before any model is built
    if not os.path.isdir(args.reward_model):
        raise CommandError("no such model directory", file=args.reward_model, field="--reward-model")
    from jax_align.recipes.reward_scoring import attach_margins, score_pairs, score_pairs_with_critiques

    with located(args.reward_model, "--reward-model"):
        if args.critiques:
            rewards = score_pairs_with_critiques(args.reward_model, args.input, args.output + ".critiques.jsonl",
                                                 batch_size=args.batch_size, buckets=buckets,
                                                 max_new_tokens=args.max_critique_tokens)
        else:
            rewards = score_pairs(args.reward_model, args.input, batch_size=args.batch_size, buckets=buckets)
    print(json.dumps(attach_margins(args.input, rewards, args.output)))
    return 0


def run_bdhs_cli(args) -> int:
    from jax_align.embedders import SentenceEmbedder
    from jax_align.generate import Generator
    from jax_align.recipes.bdhs import BDHSConfig, run_bdhs, write_pairs

    records = read_jsonl(args.input)
    check_image_paths(args.input, records, args.allow_absolute_paths)
    if args.limit:
        records = records[: args.limit]
    cfg = BDHSConfig(rho_th=args.rho_th, attempts=args.attempts, sim_threshold=args.sim_threshold,
                     temperature=args.temperature, retry_temperature=args.retry_temperature,
                     extend_prob=args.extend_prob, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     batch_size=args.batch_size)
    base = os.path.dirname(os.path.abspath(args.input))
    from jax_align.cli.errors import located

    with located(args.model, "--model"):
        generator = Generator.from_model_dir(args.model)
    pairs, stats = run_bdhs(generator, records, base_dir=base,
                            embedder=SentenceEmbedder.from_path(args.embedder), cfg=cfg, progress=print)
    write_pairs(pairs, base, args.output)
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}))
    return 0
