"""``jax-align prefs amp-meg`` / ``amp-check`` / ``amp-ig``: AMP's multi-level preference data (spec §5.1),
:mod:`jax_align.recipes.amp` and :mod:`jax_align.recipes.amp_check`.

* ``amp-meg --experts M1,M2,... --input PROMPTS --output RANKED``: one response per expert (beam 4, repetition
  penalty 1.1), the standard answer on top, experts ranked by parameter count;
* ``amp-check --clip CLIP_DIR --input RANKED --output RANKED2``: re-rank the generated responses by noun-chunk
  accuracy against the standard answer (CLIP text embeddings, tau 0.85, local + global);
* ``amp-ig --base M --sft SFT --parts N --input PROMPTS --output RANKED``: incremental generation (N = K - 2
  cumulative SFT runs through the trainer, then MEG-style answers, base model last).

Bad input is one line ``FILE:RECORD: FIELD: message`` and exit 2, checked before any model loads.
"""

from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    m = sub.add_parser("amp-meg", help="AMP multi-size expert generation: ranked groups (spec §5.1)")
    m.add_argument("--experts", required=True, help="comma-separated expert model directories (any order)")
    m.add_argument("--input", required=True,
                   help="SFT records with the standard answer (LLaVA conversations, messages, or prompt/response)")
    m.add_argument("--output", required=True, help="ranked JSONL: image, prompt, responses (best first), scores")
    _decoding_args(m)
    m.set_defaults(_recipe_run=run_meg)
    c = sub.add_parser("amp-check", help="AMP auto-check: re-rank generated responses against the standard (§5.1)")
    c.add_argument("--clip", required=True, help="Hugging Face CLIPTextModel (or CLIPModel) directory")
    c.add_argument("--input", required=True, help="ranked records (responses + scores, or AMP output_1..K)")
    c.add_argument("--output", required=True, help="ranked JSONL in the checked order, with amp_check details")
    c.add_argument("--tau", type=float, default=0.85, help="cosine threshold for a matched chunk (0.85)")
    c.add_argument("--chunker", choices=("auto", "rules", "spacy"), default="auto",
                   help="noun chunker: spaCy when installed with en_core_web_sm (auto), or the offline rules")
    c.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")
    c.set_defaults(_recipe_run=run_check)
    g = sub.add_parser("amp-ig", help="AMP incremental generation: SFT on cumulative parts, one answer each (§5.1)")
    g.add_argument("--base", required=True, help="base model directory (jax-align or Hugging Face)")
    g.add_argument("--sft", required=True, help="the fine-tuning set F (SFT JSONL), split into --parts parts")
    g.add_argument("--parts", type=int, default=2, help="K - 2 cumulative parts (K levels with standard + base)")
    g.add_argument("--config", default=None, help="SFT config YAML for each run (default: the trainer's defaults)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for each SFT run (repeatable), e.g. --set train.steps=100")
    g.add_argument("--work-dir", required=True, help="where the SFT runs go (work-dir/part_I)")
    g.add_argument("--input", required=True, help="SFT records with the standard answer (the prompts)")
    g.add_argument("--output", required=True, help="ranked JSONL: standard, most-trained ... base")
    _decoding_args(g)
    g.set_defaults(_recipe_run=run_ig)


def _decoding_args(p) -> None:
    p.add_argument("--num-beams", type=int, default=4, help="beam search beams (§5.1: 4)")
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="(§5.1: 1.1)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="(§5.1: 512)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="use only the first N records (0 = all)")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")


def _prompt_records(args) -> tuple[list[dict], str]:
    """Input records with a standard answer, checked before any model loads."""
    from jax_align.cli.errors import CommandError
    from jax_align.cli.prefs import check_image_paths, read_jsonl
    from jax_align.recipes.amp import prompt_and_standard

    records = read_jsonl(args.input)
    if args.limit:
        records = records[: args.limit]
    check_image_paths(args.input, records, args.allow_absolute_paths)
    for n, rec in enumerate(records, 1):
        try:
            prompt_and_standard(rec)
        except ValueError as e:
            field, _, msg = str(e).partition(": ")
            raise CommandError(msg or str(e), file=args.input, record=n, field=field) from None
    return records, os.path.dirname(os.path.abspath(args.input))


def _sampling(args):
    from jax_align.cli.errors import CommandError
    from jax_align.recipes.amp import expert_decoding

    try:
        return expert_decoding(args.max_new_tokens, args.num_beams, args.repetition_penalty)
    except ValueError as e:
        raise CommandError(str(e), field="--num-beams/--repetition-penalty/--max-new-tokens") from None


def _write(path: str, records: list[dict]) -> None:
    from jax_align.atomic import atomic_file

    with atomic_file(path, encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def run_meg(args) -> int:
    from jax_align.cli.errors import CommandError
    from jax_align.recipes.amp import run_meg as meg

    experts = [p.strip() for p in args.experts.split(",") if p.strip()]
    if not experts:
        raise CommandError("expected at least one expert directory", field="--experts")
    for path in experts:
        if not os.path.isdir(path):
            raise CommandError("expert model directory not found", file=path, field="--experts")
    sp = _sampling(args)
    records, base = _prompt_records(args)
    try:
        groups, stats = meg(experts, records, base_dir=base, out_dir=os.path.dirname(os.path.abspath(args.output)),
                            sp=sp, batch_size=args.batch_size, log=lambda s: print(s, file=sys.stderr))
    except ValueError as e:
        path, _, msg = str(e).partition(": ")
        if path in experts:  # an expert that fails to load names its path
            raise CommandError(msg, file=path, field="--experts") from None
        raise
    _write(args.output, groups)
    print(json.dumps(stats))
    return 0


def run_check(args) -> int:
    from jax_align.cli.errors import CommandError, located
    from jax_align.recipes.amp_check import check_file, noun_chunker

    if not 0.0 < args.tau <= 1.0:
        raise CommandError(f"must be in (0, 1], got {args.tau}", field="--tau")
    if not os.path.isdir(args.clip):
        raise CommandError("CLIP text model directory not found", file=args.clip, field="--clip")
    chunker, name = noun_chunker(prefer_spacy=args.chunker != "rules")
    if args.chunker == "spacy" and name != "spacy":
        raise CommandError("spaCy with en_core_web_sm is not installed", field="--chunker")
    from jax_align.embedders.clip_text import ClipTextEmbedder

    groups = _checked_groups(args)  # bad records are reported before the encoder loads
    with located(args.clip, "--clip"):
        embedder = ClipTextEmbedder.from_dir(args.clip)
    records, stats = check_file(groups, embedder.embed, chunker=chunker, tau=args.tau,
                                out_dir=os.path.dirname(os.path.abspath(args.output)))
    _write(args.output, records)
    stats["chunker"] = name
    print(json.dumps(stats))
    return 0


def _checked_groups(args):
    from jax_align.cli.errors import located
    from jax_align.data.problems import DataError, Problem
    from jax_align.data.readers import open_records
    from jax_align.data.records import parse_record

    if not os.path.isfile(args.input):
        from jax_align.cli.errors import CommandError

        raise CommandError("no such file", file=args.input, field="--input")
    with located(args.input, "--input"):
        source = open_records(args.input)
        groups, problems = [], []
        for raw in source:
            if raw.error is not None:
                problems.append(Problem(args.input, raw.number, "record", raw.error))
                continue
            group, found = parse_record(raw.data, "ranked", base_dir=source.base_dir,
                                        allow_absolute_paths=args.allow_absolute_paths)
            problems.extend(Problem(args.input, raw.number, f, m) for f, m in found)
            if group is not None:
                groups.append((raw.data, group, source.base_dir))
    if problems:
        raise DataError(problems)
    if not groups:
        from jax_align.cli.errors import CommandError

        raise CommandError("empty: no records", file=args.input, field="--input")
    return groups


def run_ig(args) -> int:
    from jax_align.cli.errors import CommandError
    from jax_align.recipes.amp import run_ig as ig

    if args.parts < 1:
        raise CommandError(f"must be >= 1, got {args.parts}", field="--parts")
    if not os.path.isdir(args.base):
        raise CommandError("base model directory not found", file=args.base, field="--base")
    if not os.path.isfile(args.sft):
        raise CommandError("no such file", file=args.sft, field="--sft")
    from jax_align.cli.prefs import check_image_paths, read_jsonl

    check_image_paths(args.sft, read_jsonl(args.sft), args.allow_absolute_paths)  # before any training
    sp = _sampling(args)
    records, base = _prompt_records(args)
    groups, stats = ig(args.base, args.sft, records, parts=args.parts, work_dir=args.work_dir,
                       config=args.config, overrides=args.set, base_dir=base,
                       out_dir=os.path.dirname(os.path.abspath(args.output)), sp=sp, batch_size=args.batch_size,
                       log=lambda s: print(s, file=sys.stderr))
    _write(args.output, groups)
    print(json.dumps(stats))
    return 0
