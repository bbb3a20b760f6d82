"""AMP's multi-level preference data (spec §5.1, §5.4): multi-size expert generation (MEG), incremental generation
(IG) and the ranked records they write; the auto-check that re-ranks them is :mod:`jax_align.recipes.amp_check`.

* **MEG**: each expert model answers every prompt once with AMP's decoding (A.3.1, read as beam search with 4
  beams, repetition penalty 1.1, no sampling, up to 512 tokens: :func:`expert_decoding`); the group is
  ``[standard, largest expert, ..., smallest expert]`` (the initial ranking ``S > 34B > 13B > 7B > 2B``: experts
  ordered by parameter count, descending).
* **IG**: the base model fine-tuned on cumulative parts ``F_1..F_i`` of the fine-tuning set (``K - 2`` parts)
  answers with the same decoding; the group is ``[standard, M_{K-2}, ..., M_1, base]``. §5.1's stated default
  (the paper's Algorithm 1 lists the least-trained model first; [inferred]): **order by training-set size,
  descending**, base last; the auto-check re-ranks anyway.

Records are the library's ranked format: ``image``, ``prompt``, ``responses`` best first and ``scores`` (integer
quality levels, higher = better, :mod:`jax_align.preference`), plus ``amp`` provenance (``sources``: which model
wrote each response). A generated response that is empty or repeats a better one is dropped (counted); a group
left with fewer than two distinct responses is dropped (counted).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from jax_align.sampling import SamplingParams

STANDARD = "standard"


def expert_decoding(max_new_tokens: int = 512, num_beams: int = 4, repetition_penalty: float = 1.1) -> SamplingParams:
    """§5.1 (A.3.1): "greedy, beams 4, temperature 0.7, repetition penalty 1.1, max tokens 512" read as beam
    search with 4 beams and no sampling (the temperature has no effect without sampling) [inferred]."""
    return SamplingParams(max_new_tokens=max_new_tokens, num_beams=num_beams, repetition_penalty=repetition_penalty)


def prompt_and_standard(record: dict) -> tuple[str, str]:
    """``(prompt without the image placeholder, standard answer)`` of an SFT-style record (LLaVA
    ``conversations``, TRL ``messages``, or ``prompt`` + ``response``/``answer``); ``ValueError(field: message)``
    when it has none."""
    from jax_align.recipes.bdhs import first_exchange

    try:
        prompt, answer = first_exchange(record)
    except (KeyError, StopIteration, TypeError, AttributeError):
        raise ValueError("conversations: expected a human prompt and a gpt answer (or prompt and response)") from None
    if not prompt:
        raise ValueError("prompt: empty")
    if not answer:
        raise ValueError("answer: the standard answer is empty")
    return prompt, answer


def parameter_count(generator) -> int:
    """The expert's size: its number of parameters (the MEG ranking key)."""
    import jax

    return int(sum(x.size for x in jax.tree.leaves(generator.sampler.params)))


def load_expert(path: str):
    """A :class:`~jax_align.generate.Generator` for an expert directory; any failure becomes one
    ``ValueError`` naming the path."""
    from jax_align.generate import Generator

    if not os.path.isdir(path):
        raise ValueError(f"{path}: expert model directory not found")
    try:
        return Generator.from_model_dir(path)
    except Exception as e:  # a broken expert: one line naming it
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: cannot load expert model: {detail}") from None


def check_expert(path: str) -> None:
    """Read an expert's config (cheap, no weights) so that a broken expert fails before any generation."""
    from jax_align.models import LlavaConfig

    if not os.path.isdir(path):
        raise ValueError(f"{path}: expert model directory not found")
    try:
        LlavaConfig.from_hf_dir(path)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: cannot load expert model: {detail}") from None


def answer_all(generator, records: Sequence[dict], prompts: Sequence[str], *, base_dir: str, sp: SamplingParams,
               batch_size: int) -> list[str]:
    """One response per record with ``sp``."""
    queries = [{"image": r.get("image"), "prompt": p} for r, p in zip(records, prompts, strict=True)]
    out = generator.generate(queries, sp, batch_size=batch_size, base_dir=base_dir)
    return [g.completions[0].text for g in out]


def build_groups(records: Sequence[dict], standards: Sequence[str], prompts: Sequence[str],
                 answers: Sequence[tuple[str, Sequence[str]]], *, method: str, base_dir: str,
                 out_dir: str) -> tuple[list[dict], dict]:
    """Ranked records from per-source answers given best source first: ``answers[j] = (source, texts)``."""
    from jax_align.data.image_paths import rebase_images

    stats = {"groups": 0, "dropped_groups": 0, "dropped_empty": 0, "dropped_duplicate": 0}
    out = []
    for i, record in enumerate(records):
        responses, sources = [standards[i]], [STANDARD]
        for source, texts in answers:
            text = texts[i].strip()
            if not text:
                stats["dropped_empty"] += 1
            elif text in responses:
                stats["dropped_duplicate"] += 1
            else:
                responses.append(text)
                sources.append(source)
        if len(responses) < 2:
            stats["dropped_groups"] += 1
            continue
        rec = {k: v for k, v in record.items() if k in ("id", "image", "images")}
        rec = rebase_images(rec, base_dir, out_dir)
        k = len(responses)
        rec.update(prompt=prompts[i], responses=responses, scores=[float(k - 1 - j) for j in range(k)],
                   amp={"method": method, "sources": sources})
        out.append(rec)
        stats["groups"] += 1
    return out, stats


def run_meg(expert_paths: Sequence[str], records: Sequence[dict], *, base_dir: str, out_dir: str,
            sp: SamplingParams | None = None, batch_size: int = 8,
            log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """MEG (§5.1): every expert answers every record; groups ``[standard, experts by size descending]``.

    Experts are loaded one at a time (each is released before the next loads). Returns the ranked records and
    stats (``experts``: path, parameter count and rank of each)."""
    sp = sp or expert_decoding()
    for path in expert_paths:  # every expert's config first: a broken one fails before any generation
        check_expert(path)
    pairs = [prompt_and_standard(r) for r in records]
    prompts, standards = [p for p, _ in pairs], [a for _, a in pairs]
    answers, sizes = [], {}
    for path in expert_paths:
        gen = load_expert(path)
        sizes[path] = parameter_count(gen)
        if log:
            log(f"amp-meg: {path}: {sizes[path]} parameters, answering {len(records)} prompts")
        answers.append((path, answer_all(gen, records, prompts, base_dir=base_dir, sp=sp, batch_size=batch_size)))
        del gen
    order = sorted(range(len(answers)), key=lambda j: -sizes[answers[j][0]])  # stable: equal sizes keep order
    ranked = [answers[j] for j in order]
    groups, stats = build_groups(records, standards, prompts, ranked, method="meg", base_dir=base_dir,
                                 out_dir=out_dir)
    stats["experts"] = [{"path": p, "parameters": sizes[p], "rank": r + 1} for r, (p, _) in enumerate(ranked)]
    stats["decoding"] = {"num_beams": sp.num_beams, "repetition_penalty": sp.repetition_penalty,
                         "max_new_tokens": sp.max_new_tokens}
    return groups, stats


def _absolute_images(record: dict, base_dir: str) -> dict:
    """``record`` with relative ``image``/``images`` paths made absolute against ``base_dir`` (URLs kept)."""

    def absolute(v):
        if isinstance(v, str) and not v.startswith(("http:", "https:", "data:")):
            return os.path.normpath(os.path.join(base_dir, v))
        return v

    out = dict(record)
    for key in ("image", "images"):
        if key in out:
            out[key] = [absolute(x) for x in out[key]] if isinstance(out[key], list) else absolute(out[key])
    return out


def split_cumulative(records: Sequence, parts: int) -> list[list]:
    """The cumulative subsets ``S_i = F_1 .. F_i`` of ``records`` cut into ``parts`` equal parts (§5.1 IG)."""
    if parts < 1 or parts > len(records):
        raise ValueError(f"parts: must be in [1, {len(records)}] (one record per part at least), got {parts}")
    bounds = [round(len(records) * (i + 1) / parts) for i in range(parts)]
    return [list(records[:b]) for b in bounds]


def run_ig(base_model: str, sft_path: str, records: Sequence[dict], *, parts: int, work_dir: str,
           config: str | None = None, overrides: Sequence[str] = (), base_dir: str, out_dir: str,
           sp: SamplingParams | None = None, batch_size: int = 8,
           log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """IG (§5.1): fine-tune ``base_model`` on each cumulative part of ``sft_path`` (one ``sft`` run per part through
    the trainer's public API, ``work_dir/part_I/run``), answer ``records`` with each fine-tuned model and with the
    base; groups ``[standard, M_parts (most data), ..., M_1, base]`` (the stated default order)."""
    import json

    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer

    sp = sp or expert_decoding()
    with open(sft_path, encoding="utf-8") as f:
        sft = [json.loads(line) for line in f if line.strip()]
    sft_dir = os.path.dirname(os.path.abspath(sft_path))
    models = []
    for i, subset in enumerate(split_cumulative(sft, parts), 1):
        part_dir = os.path.join(os.path.abspath(work_dir), f"part_{i}")
        os.makedirs(part_dir, exist_ok=True)
        train = os.path.join(part_dir, "train.jsonl")
        with open(train, "w", encoding="utf-8") as f:
            for r in subset:  # absolute image paths (checked against the SFT file's directory by the caller)
                f.write(json.dumps(_absolute_images(r, sft_dir), ensure_ascii=False) + "\n")
        run_dir = os.path.join(part_dir, "run")
        cfg = load_config(config, [f"run.dir={run_dir}", "run.stage=sft", f"model.path={base_model}",
                                   f"data.train={train}", "data.allow_absolute_paths=true", *overrides])
        if log:
            log(f"amp-ig: part {i}/{parts}: SFT on {len(subset)} records -> {run_dir}")
        Trainer(cfg).run()
        models.append((os.path.join(run_dir, "model"), len(subset)))
    pairs = [prompt_and_standard(r) for r in records]
    prompts, standards = [p for p, _ in pairs], [a for _, a in pairs]
    answers = []
    for path, _ in sorted(models, key=lambda m: -m[1]) + [(base_model, 0)]:  # most data first, base last
        gen = load_expert(path)
        answers.append((path, answer_all(gen, records, prompts, base_dir=base_dir, sp=sp, batch_size=batch_size)))
        del gen
    groups, stats = build_groups(records, standards, prompts, answers, method="ig", base_dir=base_dir,
                                 out_dir=out_dir)
    stats["models"] = [{"path": p, "sft_records": n} for p, n in sorted(models, key=lambda m: -m[1])]
    stats["models"].append({"path": base_model, "sft_records": 0})
    return groups, stats
