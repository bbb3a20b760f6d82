"""``jax-align curate``: Align²LLaVA instruction curation with reward models (spec §3.1, :mod:`jax_align.recipes.
align2llava`).

* ``curate rank-questions --rm RMQ --input INSTRUCT.jsonl --output OUT.jsonl --keep 0.3``: each conversation's
  human turns, one per line, scored by the question reward model; the top ``keep`` per instruction type kept.
* ``curate rm-data --kind questions|answers --input PREF --output SCORED [--augment-rate 0.25]``: Align²LLaVA
  preference records (§3.6) as scored groups for the ``reward`` stage, plus augmentation pairs (§3.2);
  ``curate rm-eval --rm RM --input SCORED --output OUT``: pairwise accuracy (§3.2 eval).
* ``curate rewrite --model M --input SFT --output OUT [--review]``: the inner LLM rewrites free-form answers
  (:mod:`jax_align.recipes.align2llava_rewrite`, §3.5).
* ``curate rank-answers --rm RMA --input ... --keep 0.3 [--candidates N --sampler M]``: each (question, answer)
  turn scored by the answer reward model; a conversation scores the mean over its turns of the best candidate's
  reward (§3.1 step 4, the code's ``repeat_times``); the top ``keep`` per type kept. Candidates of a turn: its
  own answer (candidate 0) and, with ``--candidates N`` (N > 1), N - 1 answers sampled from ``--sampler`` for
  the turn's question and the record's image (``--temperature``, seeded with ``--seed``; each turn pair on its
  own, §3.6; empty samples dropped). The best candidate (the original on ties) replaces the turn's answer in
  the output, and ``curation.candidates`` keeps every candidate's text and reward and the chosen index.

The reward models are ``reward`` stage runs (``run.dir/model``, linear head without bias on the last token),
started from ``curate rm-base --model M --output BASE`` (a copy of M with §3.2's ``plain`` template, the default;
``--template chat`` keeps M's chat template): the stage trains with the template of the model it starts from and
saves it with the RM, so ``rm-eval`` and ``rank-*`` score with the same rendering. Output: the kept records
(valid ``sft`` records) with ``curation: {score, type, stage}``, shuffled with ``--seed`` as ``merge_final.py``
does (1234); a summary per type on stdout.
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="curate_command", metavar="STEP", required=True)
    for name, help_text in (("rank-questions", "keep the conversations whose questions the question RM ranks "
                             "highest, per instruction type (§3.1 step 3)"),
                            ("rank-answers", "keep the conversations whose answers the answer RM ranks highest, "
                             "per instruction type (§3.1 step 4)")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--rm", required=True, help="run.dir/model of a `reward` stage run")
        p.add_argument("--input", required=True, help="LLaVA conversations (e.g. LLaVA-Instruct records)")
        p.add_argument("--output", required=True, help="the kept records, each with curation: {score, type}")
        p.add_argument("--keep", type=float, default=0.3, help="fraction kept per instruction type (code: 0.3)")
        p.add_argument("--type-field", default="type",
                       help="record field naming the instruction type (complex_reasoning / conversation / detail); "
                            "records without it form one type")
        p.add_argument("--seed", type=int, default=1234, help="shuffle of the merged output (merge_final.py: 1234)")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--max-length", type=int, default=512, help="tokens per scored row (longer are truncated)")
        p.add_argument("--allow-absolute-paths", action="store_true",
                       help="accept image paths outside the input file's directory (absolute or ../)")
        if name == "rank-answers":
            p.add_argument("--candidates", type=int, default=1,
                           help="candidate answers per turn scored by the RM, the best kept (§3.1 step 4, the code's "
                                "repeat_times; default 1 = the record's own answer): the own answer plus N-1 "
                                "answers sampled from --sampler for the turn's question and image; the best (the "
                                "own answer on ties) replaces the turn's answer, every candidate and reward are "
                                "written under curation.candidates")
            p.add_argument("--sampler", default=None, help="model that samples the extra candidates (needed when "
                           "--candidates > 1; e.g. the SFT model being curated for)")
            p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the candidates")
            p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per sampled candidate")
    d = sub.add_parser("rm-data", help="Align²LLaVA preference records -> scored groups for the reward stage, "
                       "with augmentation pairs (§3.2)")
    d.add_argument("--kind", required=True, choices=("questions", "answers"),
                   help="questions: {image, questions: [[q, ...]], score}; answers: conversations whose gpt value "
                        "is a list of answers with a score list (§3.6)")
    d.add_argument("--input", required=True)
    d.add_argument("--output", required=True, help="scored records (train with run.stage=reward, "
                   "data.num_responses = the largest group)")
    d.add_argument("--augment-rate", type=float, default=0.25, help="per candidate, probability of an "
                   "(original > corrupted) pair (code: 0.25; 0 = none)")
    d.add_argument("--seed", type=int, default=1234)
    b = sub.add_parser("rm-base", help="a copy of a model whose chat template is §3.2's plain one, to train a "
                       "reward model from (model.path=OUTPUT)",
                       description="§3.2: the reward models read '<image>\\nQuestion: {q}\\nAnswer: {a}\\n' (answers) "
                       "and '<image>\\n' + the questions one per line (questions), no chat template; the score is "
                       "read on the last token by a linear head without bias. The reward stage trains with the "
                       "template of the model it starts from and saves it with the RM, so rm-eval and rank-* score "
                       "with it too.")
    b.add_argument("--model", required=True, help="the model the reward model starts from (jax-align directory)")
    b.add_argument("--output", required=True, help="the copy (train the RM with model.path=OUTPUT)")
    b.add_argument("--template", choices=("plain", "chat"), default="plain",
                   help="plain (§3.2, default) or chat (the model's own chat template)")
    e = sub.add_parser("rm-eval", help="pairwise accuracy of a reward model on scored groups (§3.2 eval)")
    e.add_argument("--rm", required=True, help="run.dir/model of a `reward` stage run")
    e.add_argument("--input", required=True, help="scored records (e.g. held-out groups from rm-data)")
    e.add_argument("--output", required=True, help="the records with the model's rewards beside each response")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-length", type=int, default=512)
    w = sub.add_parser("rewrite", help="the inner LLM rewrites free-form answers in its own manner (§3.5)",
                       description="the model's text decoder alone (no image) rewrites each free-form answer; "
                                   "--review keeps the original when the same model judges the meaning changed")
    w.add_argument("--model", required=True, help="the MLLM whose inner LLM rewrites (HF or jax-align directory)")
    w.add_argument("--input", required=True, help="SFT records (LLaVA conversations or messages)")
    w.add_argument("--output", required=True, help="the records with rewritten answers and a rewrite log per turn")
    w.add_argument("--review", action="store_true", help="keep the original unless the model says the rewrite "
                   "keeps the meaning")
    w.add_argument("--min-words", type=int, default=8, help="shorter answers are kept as they are")
    w.add_argument("--max-new-tokens", type=int, default=1024)
    w.add_argument("--batch-size", type=int, default=8)
    w.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept image paths outside the input file's directory (absolute or ../)")


def _check(args, records: list[dict]) -> None:
    from jax_align.cli.errors import CommandError
    from jax_align.cli.prefs import check_image_paths
    from jax_align.data.records import parse_record

    if not (0.0 < getattr(args, "keep", 1.0) <= 1.0):
        raise CommandError(f"must be in (0, 1], got {args.keep}", field="--keep")
    check_image_paths(args.input, records, args.allow_absolute_paths)
    base = os.path.dirname(os.path.abspath(args.input))
    for n, rec in enumerate(records, 1):
        _, problems = parse_record(rec, "sft", base_dir=base, allow_absolute_paths=True)
        if problems:
            field, msg = problems[0]
            raise CommandError(msg, file=args.input, record=n, field=field)


def score_groups(rm: str, groups: list[dict], base_dir: str, *, batch_size: int, max_length: int) -> list[float]:
    """The reward model's score of each one-response group (written to a hidden file beside the input)."""
    from jax_align.train.score import score_file

    tmp_in = os.path.join(base_dir, f".curate-{os.getpid()}.in.jsonl")
    tmp_out = os.path.join(base_dir, f".curate-{os.getpid()}.out.jsonl")
    try:
        with open(tmp_in, "w", encoding="utf-8") as f:
            for g in groups:
                f.write(json.dumps(g) + "\n")
        score_file(rm, tmp_in, tmp_out, fmt="scored", batch_size=batch_size, buckets=(max_length,),
                   max_length=max_length)
        with open(tmp_out, encoding="utf-8") as f:
            return [float(json.loads(line)["rewards"][0]) for line in f if line.strip()]
    finally:
        for p in (tmp_in, tmp_out):
            if os.path.exists(p):
                os.remove(p)


def run_rm_data(args) -> int:
    from jax_align.cli.errors import CommandError
    from jax_align.cli.prefs import read_jsonl
    from jax_align.recipes.align2llava import RecordFault, augmentation_groups, rm_groups, rm_pairs
    from jax_align.recipes.bdhs import write_pairs

    if not 0.0 <= args.augment_rate <= 1.0:
        raise CommandError(f"must be in [0, 1], got {args.augment_rate}", field="--augment-rate")
    groups = []
    for n, rec in enumerate(read_jsonl(args.input), 1):
        try:
            groups.extend(rm_groups(rec, n, args.kind))
        except RecordFault as e:
            raise CommandError(e.message, file=args.input, record=e.record, field=e.field) from None
    extra = augmentation_groups(groups, rate=args.augment_rate, seed=args.seed, questions=args.kind == "questions")
    write_pairs(groups + extra, os.path.dirname(os.path.abspath(args.input)), args.output)
    print(json.dumps({"groups": len(groups), "pairs": sum(len(rm_pairs(g["scores"])) for g in groups),
                      "augmented": len(extra), "max_responses": max(len(g["responses"]) for g in groups)}))
    return 0


def run_rm_base(args) -> int:
    from jax_align.cli.errors import CommandError, located
    from jax_align.recipes.align2llava import with_template

    if not os.path.isdir(args.model):
        raise CommandError("no such model directory", file=args.model, field="--model")
    if not os.path.isfile(os.path.join(args.model, "tokenizer_config.json")):
        raise CommandError("no tokenizer_config.json (a jax-align or Hugging Face model directory)", file=args.model,
                           field="--model")
    with located(args.model, "--model"):
        with_template(args.model, args.output, args.template)
    print(json.dumps({"model": args.output, "template": args.template}))
    return 0


def run_rm_eval(args) -> int:
    from jax_align.cli.errors import CommandError, located
    from jax_align.recipes.align2llava import pairwise_accuracy
    from jax_align.train.reward_head import has_head
    from jax_align.train.score import score_file

    if not os.path.isfile(args.input):
        raise CommandError("no such file", file=args.input, field="--input")
    if not os.path.isdir(args.rm) or not has_head(args.rm):
        raise CommandError("not a reward model (run.dir/model of a `reward` stage run)", file=args.rm, field="--rm")
    with located(args.rm, "--rm"):
        score_file(args.rm, args.input, args.output, fmt="scored", batch_size=args.batch_size,
                   buckets=(args.max_length,), max_length=args.max_length)
    with open(args.output, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    acc, pairs = pairwise_accuracy([(r["scores"], r["rewards"]) for r in rows if "rewards" in r])
    print(json.dumps({"pairwise_accuracy": acc, "pairs": pairs, "groups": len(rows)}))
    return 0


def run_rewrite(args) -> int:
    from jax_align.cli.errors import CommandError, located
    from jax_align.cli.prefs import read_jsonl
    from jax_align.generate import Generator
    from jax_align.recipes.align2llava_rewrite import RewriteConfig, rewrite_records
    from jax_align.recipes.bdhs import write_pairs

    records = read_jsonl(args.input)
    _check(args, records)
    if not os.path.isdir(args.model):
        raise CommandError("no such model directory", file=args.model, field="--model")
    with located(args.model, "--model"):
        model = Generator.from_model_dir(args.model)
    out, counts = rewrite_records(model, records, RewriteConfig(review=args.review, min_words=args.min_words,
                                                                max_new_tokens=args.max_new_tokens,
                                                                batch_size=args.batch_size))
    write_pairs(out, os.path.dirname(os.path.abspath(args.input)), args.output)
    print(json.dumps({"review": args.review, **counts}))
    return 0


def _add_candidates(args, turns: list, records: list[dict], base: str) -> None:
    """Append ``--candidates - 1`` answers sampled from ``--sampler`` to each turn's candidate list (in place)."""
    if getattr(args, "candidates", 1) <= 1:
        return
    from jax_align.cli.errors import located
    from jax_align.generate import Generator
    from jax_align.sampling import SamplingParams

    with located(args.sampler, "--sampler"):
        sampler = Generator.from_model_dir(args.sampler)
    sp = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        n_samples=args.candidates - 1)
    gens = sampler.generate([{"image": records[i].get("image"), "prompt": q} for i, _, q, _ in turns], sp,
                            seed=args.seed, batch_size=args.batch_size, base_dir=base)
    for (_, _, _, cands), g in zip(turns, gens, strict=True):
        cands.extend(t.strip() for t in g.texts if t.strip())


def run(args) -> int:
    import numpy as np

    from jax_align.atomic import check_writable
    from jax_align.cli.errors import CommandError, located
    from jax_align.cli.prefs import read_jsonl
    from jax_align.recipes.align2llava import (
        answer_turn_indices,
        answer_turns,
        best_candidates,
        keep_top,
        question_text,
        with_answers,
    )
    from jax_align.recipes.bdhs import write_pairs
    from jax_align.train.reward_head import has_head

    with located(args.output, "--output"):
        check_writable(args.output)
    if args.curate_command in ("rewrite", "rm-data", "rm-eval", "rm-base"):
        return {"rewrite": run_rewrite, "rm-data": run_rm_data, "rm-eval": run_rm_eval,
                "rm-base": run_rm_base}[args.curate_command](args)
    records = read_jsonl(args.input)
    _check(args, records)
    if getattr(args, "candidates", 1) < 1:
        raise CommandError(f"must be at least 1, got {args.candidates}", field="--candidates")
    if getattr(args, "candidates", 1) > 1 and not args.sampler:
        raise CommandError("--candidates > 1 needs --sampler MODEL (the model that samples the extra candidates)",
                           field="--sampler")
    if getattr(args, "sampler", None) and not os.path.isdir(args.sampler):
        raise CommandError("no such model directory", file=args.sampler, field="--sampler")
    if not os.path.isdir(args.rm) or not has_head(args.rm):
        raise CommandError("not a reward model (run.dir/model of a `reward` stage run)", file=args.rm, field="--rm")
    base = os.path.dirname(os.path.abspath(args.input))
    groups, owner, turns = [], [], []  # turns: (record, answer turn index, question, candidates)
    for i, rec in enumerate(records):
        image = rec.get("image")
        if args.curate_command == "rank-questions":
            groups.append({"image": image, "prompt": "<image>", "responses": [question_text(rec)], "scores": [0]})
            owner.append(i)
        else:
            for t, (q, a) in zip(answer_turn_indices(rec), answer_turns(rec), strict=True):
                turns.append((i, t, q, [a]))
    if turns:
        _add_candidates(args, turns, records, base)
        for i, _, q, cands in turns:
            groups += [{"image": records[i].get("image"), "prompt": q, "responses": [c], "scores": [0]} for c in cands]
            owner += [i] * len(cands)
    with located(args.rm, "--rm"):
        rewards = score_groups(args.rm, groups, base, batch_size=args.batch_size, max_length=args.max_length)
    if turns:  # the best candidate per turn (§3.1 step 4); a conversation scores the mean of its turns' bests
        rewards, cursor, chosen = list(rewards), 0, {}
        per_turn = []
        for _, _, _, cands in turns:
            per_turn.append(rewards[cursor:cursor + len(cands)])
            cursor += len(cands)
        best = best_candidates(per_turn)
        owner, rewards = [], []
        for (i, t, _, cands), r, b in zip(turns, per_turn, best, strict=True):
            owner.append(i)
            rewards.append(r[b])
            chosen.setdefault(i, []).append({"turn": t, "chosen": b, "candidates": cands, "rewards": r})
    per_record: dict[int, list[float]] = {}
    for i, r in zip(owner, rewards, strict=True):
        per_record.setdefault(i, []).append(r)
    scores = [float(np.mean(per_record[i])) if i in per_record else float("-inf") for i in range(len(records))]
    types = [str(rec.get(args.type_field) or "all") for rec in records]
    kept = keep_top(scores, types, args.keep)
    stage = "questions" if args.curate_command == "rank-questions" else "answers"
    out = []
    for i in kept:
        rec, info = records[i], {"score": scores[i], "type": types[i], "stage": stage}
        if turns and getattr(args, "candidates", 1) > 1:
            rec = with_answers(rec, {c["turn"]: c["candidates"][c["chosen"]] for c in chosen.get(i, [])})
            info["candidates"] = chosen.get(i, [])
        out.append({**rec, "curation": info})
    order = np.random.default_rng(args.seed).permutation(len(out))
    write_pairs([out[int(j)] for j in order], base, args.output)
    summary = {t: {"records": types.count(t), "kept": sum(types[i] == t for i in kept)} for t in dict.fromkeys(types)}
    print(json.dumps({"stage": stage, "keep": args.keep, "types": summary, "kept": len(kept),
                      "records": len(records)}))
    return 0
