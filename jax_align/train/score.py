"""``jax-align score``: what a model says about every response of a data file.

For each record (sft, pairwise, ranked or scored) and each of its responses: the summed response log-prob
(``logps``) and its token count (``token_counts``); with a reference model also ``ref_logps`` and the implicit
reward ``implicit_rewards = logps - ref_logps`` (spec §0); for a ``reward`` or ``critique_reward`` run's model
the scalar reward (``rewards``), after the model has written its greedy critique of each response when its
stage judges with critiques (spec §4.2 inference). The output is the input's records with these lists added,
one entry per response **in the record's own order** (not the best-first order training uses), image paths
rebased to the output's directory, written atomically.

Batches are bucketed and jitted like training (one compile per bucket); bad records are handled as in
``train`` (``on_error``: raise names file, record and field; skip leaves the record without lists and counts it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_align.data.image_paths import rebase_images
from jax_align.data.readers import open_records
from jax_align.data.records import parse_record

from .forward import hidden_states, response_logps, response_rewards
from .reward_head import has_head, load_head, read_head_info

LISTS = ("logps", "token_counts", "ref_logps", "implicit_rewards", "rewards")
SCORE_MAX_LENGTH = 1024  # the truncation limit when neither max_length nor buckets is given


def detect_format(data: dict) -> str:
    """The record format of one raw record: pairwise, ranked, scored or sft."""
    if "chosen" in data or "rejected" in data:
        return "pairwise"
    if "output_1" in data or "output_list" in data:
        return "ranked"
    if "responses" in data:
        return "scored" if data.get("scores") is not None else "ranked"
    conv = data.get("conversations")
    if isinstance(conv, list) and len(conv) > 1 and isinstance(conv[1], dict) and isinstance(conv[1].get("value"),
                                                                                                list):
        return "scored"  # Align²LLaVA answer records (spec §3.6)
    return "sft"


@dataclass
class ScoreSummary:
    records: int = 0
    scored: int = 0
    skipped: int = 0
    first_problem: str = ""
    format: str = ""
    compilations: int = 0
    lists: tuple = ()
    critiques: str | None = None
    extra: dict = field(default_factory=dict)


def _max_responses(source, fmt: str) -> int:
    k = 1
    for raw in source:
        if raw.data is None:
            continue
        group, _ = parse_record(raw.data, fmt, base_dir=source.base_dir)
        if group is not None:
            k = max(k, getattr(group, "num_responses", 1))
    return k


def _forward_fn(graphdef, head, groups: int, responses: int, token_chunk: int):
    @jax.jit
    def fn(params, head_params, batch):
        model = nnx.merge(graphdef, params)
        hidden = hidden_states(model, batch)
        lp, n = response_logps(model, batch, groups=groups, responses=responses, token_chunk=token_chunk,
                               hidden=hidden)
        r = response_rewards(model, head_params, batch, hidden) if head_params is not None else None
        return lp, n, r

    return fn


def _pipeline(path, fmt, model_dir, *, batch_size, buckets, max_length, layout, on_error, k, critique_prompt):
    from jax_align.data.pipeline import DataConfig, DataPipeline

    cfg = DataConfig(path=path, format=fmt, model_dir=model_dir, batch_size=batch_size, buckets=tuple(buckets),
                     max_length=max_length, layout=layout, shuffle=False, num_epochs=1, num_responses=k,
                     on_error="strict" if on_error == "raise" else "skip", critique_prompt=critique_prompt)
    return DataPipeline(cfg)


def _run_model(model_dir, path, fmt, k, *, with_head, critique_prompt, batch_size, buckets, max_length, layout,
               on_error, token_chunk, progress, n_records):
    """``{record_index: (logps[K_rec], counts[K_rec], rewards[K_rec] | None)}`` in the record's own order."""
    from jax_align.model_store import load_model

    _, graphdef, params = load_model(model_dir)
    head = load_head(model_dir) if with_head else None
    pipeline = _pipeline(path, fmt, model_dir, batch_size=batch_size, buckets=buckets, max_length=max_length,
                         layout=layout, on_error=on_error, k=k, critique_prompt=critique_prompt)
    fn = _forward_fn(graphdef, head, batch_size, k, token_chunk)
    out: dict[int, tuple] = {}
    iterator = pipeline.iterator()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_records, desc=f"score {os.path.basename(model_dir.rstrip('/'))}", unit="rec")
    try:
        for batch in iterator:
            lp, n, r = fn(params, head, {key: jnp.asarray(v) for key, v in batch.items()})
            lp, n = np.asarray(lp), np.asarray(n)
            r = None if r is None else np.asarray(r)
            for g, idx in enumerate(batch["record_index"]):
                if idx < 0 or not batch["group_mask"][g]:
                    continue
                src = batch["response_source"][g]
                present = src >= 0
                order = np.argsort(src[present])  # back to the record's own order
                out[int(idx)] = (lp[g][present][order], n[g][present][order],
                                 None if r is None else r[g][present][order])
                if bar is not None:
                    bar.update(1)
        skipped = iterator.skipped_per_epoch() if hasattr(iterator, "skipped_per_epoch") else {}
    finally:
        iterator.close()
        if bar is not None:
            bar.close()
    return out, fn._cache_size() if hasattr(fn, "_cache_size") else 0, skipped


def generate_critiques(model_dir: str, in_path: str, out_path: str, *, max_new_tokens: int = 256,
                       batch_size: int = 16) -> int:
    """Copy a pairwise or scored file with each response's critique (``chosen_reason`` / ``rejected_reason``,
    or ``critiques``) replaced by the one a critique-based reward model writes greedily (spec §4.2 inference:
    one greedy critique per answer)."""
    from jax_align.atomic import atomic_file
    from jax_align.data.critique import critique_group
    from jax_align.generate import Generator
    from jax_align.sampling import SamplingParams

    source = open_records(in_path)
    rows, prompts, counts = [], [], []
    for raw in source:
        fmt = detect_format(raw.data)
        if fmt not in ("pairwise", "scored"):
            raise ValueError(f"{in_path}:{raw.number}: format: critique-based scoring reads pairwise or scored "
                             f"records, got {fmt}")
        group, problems = parse_record(raw.data, fmt, base_dir=source.base_dir)
        if group is None:
            field_name, message = problems[0]
            raise ValueError(f"{in_path}:{raw.number}: {field_name}: {message}")
        images = [ref.path if ref.path is not None else ref.data for ref in group.images]
        contexts = critique_group(group).response_prompts
        order = group.source_order or tuple(range(len(contexts)))
        by_source = [None] * len(contexts)
        for k, context in enumerate(contexts):
            by_source[order[k]] = context
        for context in by_source:
            prompts.append({"messages": [{"role": m.role, "content": m.content} for m in context], "image": images})
        rows.append((raw.data, fmt))
        counts.append(len(contexts))
    generator = Generator.from_model_dir(model_dir)
    outs = generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens), batch_size=batch_size)
    base_out = os.path.dirname(os.path.abspath(out_path))
    i = 0
    with atomic_file(out_path) as dst:
        for (rec, fmt), n in zip(rows, counts, strict=True):
            texts = [outs[i + j].texts[0] for j in range(n)]
            i += n
            rec = rebase_images(rec, source.base_dir, base_out)
            if fmt == "pairwise":
                rec["chosen_reason"], rec["rejected_reason"] = texts
            else:
                rec["critiques"] = texts
            dst.write(json.dumps(rec) + "\n")
    return len(rows)


def score_file(model: str, input_path: str, output_path: str, *, reference: str | None = None,
               fmt: str | None = None, batch_size: int = 8, buckets=None, max_length: int | None = None,
               layout: str = "prefix_shared", on_error: str = "raise", token_chunk: int = 256,
               max_new_tokens: int = 256, progress: bool = False, critiques: str = "generate") -> ScoreSummary:
    """Score every response of ``input_path`` with ``model`` (and ``reference``); write ``output_path``.

    ``critiques`` (critique-based reward models only): ``generate`` (the model writes its greedy critique of
    each response first, the paper's inference, spec §4.2) or ``given`` (teacher forcing: the records' own
    critiques, as in training)."""
    if critiques not in ("generate", "given"):
        raise ValueError(f"critiques must be generate|given, got {critiques!r}")
    from jax_align.data.buckets import resolve_buckets

    # no buckets: the default ladder up to max_length (default SCORE_MAX_LENGTH); buckets only: up to the largest
    buckets = resolve_buckets(buckets, max_length or SCORE_MAX_LENGTH)
    from jax_align.atomic import atomic_file

    source = open_records(input_path)
    first = next((raw.data for raw in source if isinstance(raw.data, dict)), None)
    if first is None:
        raise ValueError(f"{input_path}: no records")
    fmt = fmt or detect_format(first)
    summary = ScoreSummary(records=len(source), format=fmt)
    k = _max_responses(source, fmt)
    with_head = has_head(model)
    info = read_head_info(model) if with_head else {}
    path, critique_prompt = input_path, bool(info.get("critique_prompt"))
    if critique_prompt and critiques == "generate":  # the model's greedy critiques, then answer + critique
        path = output_path + ".critiques.jsonl"
        generate_critiques(model, input_path, path, max_new_tokens=max_new_tokens)
        summary.critiques = path
    common = dict(batch_size=batch_size, buckets=buckets, max_length=max_length, layout=layout, on_error=on_error,
                  token_chunk=token_chunk, progress=progress, n_records=summary.records)
    policy, compiles, skipped = _run_model(model, path, fmt, k, with_head=with_head,
                                           critique_prompt=critique_prompt, **common)
    ref = None
    if reference:
        ref, c2, _ = _run_model(reference, input_path, fmt, k, with_head=False, critique_prompt=False, **common)
        compiles += c2
    summary.compilations = compiles
    summary.skipped = summary.records - len(policy)
    summary.scored = len(policy)
    summary.extra["skipped_per_epoch"] = skipped
    base_out = os.path.dirname(os.path.abspath(output_path))
    lists = ["logps", "token_counts"] + (["ref_logps", "implicit_rewards"] if reference else []) + (
        ["rewards"] if with_head else [])
    summary.lists = tuple(lists)
    with atomic_file(output_path) as dst:
        for raw in open_records(input_path):
            rec = rebase_images(raw.data, source.base_dir, base_out) if isinstance(raw.data, dict) else raw.data
            got = policy.get(raw.index)
            if got is not None and isinstance(rec, dict):
                lp, n, r = got
                rec["logps"] = [float(x) for x in lp]
                rec["token_counts"] = [int(x) for x in n]
                if reference:
                    rl = ref[raw.index][0]
                    rec["ref_logps"] = [float(x) for x in rl]
                    rec["implicit_rewards"] = [float(a - b) for a, b in zip(lp, rl, strict=True)]
                if r is not None:
                    rec["rewards"] = [float(x) for x in r]
            dst.write(json.dumps(rec) + "\n")
    return summary
