"""``jax-align prefs eaco`` (critic-scored self-generated pairs) and ``jax-align prefs describe``
(description-infused SFT data): EACO, spec §1.2-1.3, :mod:`jax_align.recipes.eaco`."""

from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    e = sub.add_parser("eaco", help="EACO pairs: N policy samples per image judged by a generative critic (§1.2)")
    e.add_argument("--policy", required=True, help="policy: Hugging Face or jax-align model directory")
    e.add_argument("--critic", required=True, help="generative critic (run.dir/model of a `critic` stage run)")
    e.add_argument("--input", required=True, help="prompt records with an image (and optionally a question)")
    e.add_argument("--output", required=True,
                   help="EACO records: output_list, score_list, per-dimension scores, critiques, chosen, rejected")
    e.add_argument("--n-samples", type=int, default=5, help="answers sampled per image (code: 5)")
    e.add_argument("--temperature", type=float, default=0.2, help="policy sampling temperature (code: 0.2)")
    e.add_argument("--max-new-tokens", type=int, default=1024, help="answer length limit (code: 1024)")
    e.add_argument("--critic-max-new-tokens", type=int, default=256, help="critic output length limit")
    e.add_argument("--prompts", default="default",
                   help="default: the 8 description prompts of §1.2 (seeded); question: each record's own "
                        "question; or a file with one prompt per line")
    e.add_argument("--drop-ties", action="store_true",
                   help="drop groups whose judged scores are all equal (default: §1.2's chosen = argmax + 1 rule)")
    e.add_argument("--seed", type=int, default=42, help="prompt choice and sampling seed (code: random.seed(42))")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=int, default=0, help="use only the first N records (0 = all)")
    e.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")
    e.set_defaults(_recipe_run=run_eaco)
    d = sub.add_parser("describe", help="description-infused SFT data (EACO §1.2 step 7)")
    d.add_argument("--model", required=True, help="the model that describes (EACO: the DPO model)")
    d.add_argument("--input", required=True, help="SFT records (LLaVA conversations or messages)")
    d.add_argument("--output", required=True, help="the records with 'Image description:' in the first turn")
    d.add_argument("--temperature", type=float, default=0.2)
    d.add_argument("--max-new-tokens", type=int, default=1024)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--limit", type=int, default=0, help="use only the first N records (0 = all)")
    d.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")
    d.set_defaults(_recipe_run=run_describe)


def _records(args, *, need_image: bool, need_question: bool) -> list[dict]:
    """The input records, checked before any model loads: one line ``FILE:RECORD: FIELD: message``."""
    from jax_align.cli.errors import CommandError
    from jax_align.cli.prefs import check_image_paths, read_jsonl
    from jax_align.data.records import parse_record
    from jax_align.recipes.eaco import record_question

    records = read_jsonl(args.input)
    if args.limit:
        records = records[: args.limit]
    check_image_paths(args.input, records, args.allow_absolute_paths)
    base = os.path.dirname(os.path.abspath(args.input))
    for n, rec in enumerate(records, 1):
        image = rec.get("image")
        if need_image and not image:
            raise CommandError("missing field: EACO judges answers about an image", file=args.input, record=n,
                               field="image")
        if isinstance(image, str) and not os.path.isfile(os.path.join(base, image)):
            raise CommandError(f"no such file: {image}", file=args.input, record=n, field="image")
        if need_question:
            if "prompt" not in rec:
                _, problems = parse_record(rec, "sft", base_dir=base, require_images=need_image)
                if problems:
                    field, msg = problems[0]
                    raise CommandError(msg, file=args.input, record=n, field=field)
            try:
                question = record_question(rec)
            except (KeyError, StopIteration, TypeError, AttributeError):
                raise CommandError("no question (a prompt or a first human turn)", file=args.input, record=n,
                                   field="prompt") from None
            if not question:
                raise CommandError("empty question", file=args.input, record=n, field="prompt")
    return records


def _generator(path: str, flag: str):
    from jax_align.cli.errors import CommandError, located
    from jax_align.generate import Generator

    if not os.path.isdir(path):
        raise CommandError("no such model directory", file=path, field=flag)
    with located(path, flag):
        return Generator.from_model_dir(path)


def run_eaco(args) -> int:
    from jax_align.cli.errors import CommandError
    from jax_align.recipes.bdhs import write_pairs
    from jax_align.recipes.eaco import EACOConfig, build_pairs

    if args.prompts not in ("default", "question") and not os.path.isfile(args.prompts):
        raise CommandError("no such file (or use default | question)", file=args.prompts, field="--prompts")
    if args.n_samples < 2:
        raise CommandError(f"at least 2 samples make a pair, got {args.n_samples}", field="--n-samples")
    records = _records(args, need_image=True, need_question=args.prompts == "question")
    cfg = EACOConfig(n_samples=args.n_samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                     critic_max_new_tokens=args.critic_max_new_tokens, prompts=args.prompts,
                     drop_ties=args.drop_ties, seed=args.seed, batch_size=args.batch_size)
    policy = _generator(args.policy, "--policy")
    critic = policy if os.path.abspath(args.critic) == os.path.abspath(args.policy) else _generator(args.critic,
                                                                                                   "--critic")
    base = os.path.dirname(os.path.abspath(args.input))
    pairs, stats = build_pairs(policy, critic, records, base_dir=base, cfg=cfg,
                               provenance={"policy": os.path.abspath(args.policy),
                                           "critic": os.path.abspath(args.critic)}, progress=print)
    summary = {k: v for k, v in stats.items() if k != "config"}
    print(json.dumps(summary))
    if stats["unparsable"]:
        print(f"jax-align prefs eaco: {stats['unparsable']} critic outputs had no parsable score (not read as 0); "
              f"records: {', '.join(stats['unparsable_ids'][:20])}"
              f"{' ...' if len(stats['unparsable_ids']) > 20 else ''}", file=sys.stderr)
    if not pairs:
        raise CommandError(f"no pairs: {stats['skipped_failed']} groups had fewer than two judged answers, "
                           f"{stats['skipped_ties']} all tied, {stats['skipped_identical']} identical",
                           file=args.output, field="--output")
    write_pairs(pairs, base, args.output)
    return 0


def run_describe(args) -> int:
    from jax_align.recipes.bdhs import write_pairs
    from jax_align.recipes.eaco import describe_records

    records = _records(args, need_image=False, need_question=True)
    model = _generator(args.model, "--model")
    base = os.path.dirname(os.path.abspath(args.input))
    out, stats = describe_records(model, records, base_dir=base, seed=args.seed, temperature=args.temperature,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    write_pairs(out, base, args.output)
    print(json.dumps(stats))
    return 0
