"""Training text for a generative critic and the parser of its scores (EACO, spec §1.3 [inferred library decision]).

A critic is an MLLM fine-tuned with next-token cross-entropy on ``(image, question, response, rubric) ->
rationale + per-dimension scores + total``. Each scored candidate of a ``scored`` record (see
:mod:`jax_align.data.records`) becomes one SFT conversation; :func:`parse_critic_scores` reads a critic's output
with anchored patterns (``score: N``), never "the first integer in the text" (the draft code's bug, spec §1.2).
"""

from __future__ import annotations

import json
import os
import re

from jax_align.data.readers import open_records
from jax_align.data.records import parse_record

DIMENSIONS = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")  # VLFeedback's aspects, spec §1.1
RUBRIC = ("Rate the response for each aspect and give the total as 'score: N'. Prefer responses that only "
          "describe what the image shows.")
_TOTAL = re.compile(r"^\s*score:\s*(-?\d+(?:\.\d+)?)\s*$", re.IGNORECASE | re.MULTILINE)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


def critic_target(total: float, dimension_names=(), dimension_scores=(), critique: str | None = None) -> str:
    lines = [critique.strip()] if critique else []
    lines += [f"{name}: {_fmt(s)}" for name, s in zip(dimension_names, dimension_scores, strict=True)]
    lines.append(f"score: {_fmt(total)}")
    return "\n".join(lines)


def parse_critic_scores(text: str) -> dict:
    """``{"total": float | None, DIMENSION: float, ...}`` from a critic's output (anchored, per line)."""
    out: dict = {"total": None}
    m = _TOTAL.findall(text)
    if m:
        out["total"] = float(m[-1])
    for line in text.splitlines():
        if ":" in line and not line.lower().strip().startswith("score:"):
            name, _, value = line.partition(":")
            if re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*", value):
                out[name.strip()] = float(value)
    return out


def critic_sft_file(scored_path: str, out_path: str, *, rubric: str = RUBRIC, allow_absolute_paths: bool = True) -> int:
    """Write SFT conversations for a generative critic from a ``scored`` file; returns the number written.

    Bad records raise the data layer's error naming file, record and field.
    """
    source = open_records(scored_path)
    base_out = os.path.dirname(os.path.abspath(out_path))
    n = 0
    from jax_align.atomic import atomic_file

    with atomic_file(out_path) as dst:
        for raw in source:
            group, problems = parse_record(raw.data, "scored", base_dir=source.base_dir,
                                           allow_absolute_paths=allow_absolute_paths)
            if group is None:
                field, msg = problems[0]
                raise ValueError(f"{scored_path}:{raw.number}: {field}: {msg}")
            question = " ".join(m.content for m in group.prompt if m.role == "user").replace("<image>", "").strip()
            image = group.images[0].path if group.images and group.images[0].path else None
            for k, response in enumerate(group.responses):
                answer = " ".join(m.content for m in response if m.role == "assistant").strip()
                total = group.scores[k] if group.scores is not None else float(len(group.responses) - 1 - k)
                dims = group.dimension_scores[k] if group.dimension_scores is not None else ()
                critique = group.critiques[k] if group.critiques is not None else None
                record = {"conversations": [
                    {"from": "human", "value": f"<image>\nQuestion: {question}\nResponse: {answer}\n{rubric}"},
                    {"from": "gpt", "value": critic_target(total, group.dimension_names[:len(dims)], dims, critique)},
                ]}
                if image:
                    record["image"] = os.path.relpath(image, base_out)
                dst.write(json.dumps(record) + "\n")
                n += 1
    return n
