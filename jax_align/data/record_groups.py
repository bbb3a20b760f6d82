"""Preference-group assembly shared by the format adapters (:mod:`jax_align.data.records`): the prompt from a
``prompt`` field or the responses' common prefix, score lists (numbers, per-dimension lists or dicts, spec §1.3),
response lists, optional log-prob lists, and :func:`_finish_group` (images, ordering by score, distinctness).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jax_align.data.record_fields import (
    _check_response,
    _parse_messages,
    _parse_response,
    _reconcile_placeholders,
    _response_text,
    _split_at_first_assistant,
)
from jax_align.data.record_types import FieldProblems, Message, PreferenceGroup, _is_list, _is_number, _type_name


def _prompt_from_field(data: Mapping, problems: FieldProblems) -> tuple[Message, ...] | None:
    if "prompt" not in data or data["prompt"] is None:
        problems.add("prompt", "missing field")
        return None
    value = data["prompt"]
    if isinstance(value, str):
        return (Message("user", value),)
    if not _is_list(value):
        problems.add(
            "prompt", f"wrong type: expected a string or a list of messages, got {_type_name(value)}"
        )
        return None
    messages = _parse_messages(value, "prompt", problems)
    if messages is not None and not any(m.role == "user" for m in messages):
        problems.add("prompt", "no user turn")
        return None
    return messages


def _resolve_prompt(
    data: Mapping,
    parsed: list[tuple[tuple[Message, ...], tuple[Message, ...]]],
    fields: Sequence[str],
    problems: FieldProblems,
) -> tuple[tuple[Message, ...] | None, list[tuple[Message, ...]]]:
    """Prompt and response turns for K parsed responses that may repeat the prompt inside themselves."""
    embedded = [p for p, _ in parsed if p]
    responses = [r for _, r in parsed]
    if not embedded:
        return _prompt_from_field(data, problems), responses
    # The prompt comes from the conversations; every response that repeats it must repeat the same turns.
    reference = embedded[0]
    for (p, _), name in zip(parsed, fields, strict=True):
        if p and p != reference:
            problems.add(name, "prompt turns differ from the other responses")
            return None, responses
    return reference, responses


def _finish_group(
    kind,
    data,
    images,
    image_field,
    n_images,
    require_images,
    prompt,
    responses,
    fields,
    problems,
    *,
    prompt_field="prompt",
    scores=None,
    dimension_names=(),
    dimension_scores=None,
    critiques=None,
    margin=None,
    reference_logps=None,
    distinct_field=None,
    is_tie=False,
) -> PreferenceGroup | None:
    if prompt is None:
        return None
    valid = [_check_response(r, f, problems) for r, f in zip(responses, fields, strict=True)]
    if not all(valid):
        return None
    texts = [_response_text(r) for r in responses]
    if kind == "pairwise" and texts[0] == texts[1]:
        problems.add(fields[1], "identical to chosen")
        return None
    if distinct_field is not None and len(set(texts)) < 2:
        problems.add(distinct_field, f"fewer than two distinct ranked responses ({len(responses)} given)")
        return None
    prompt_list = _reconcile_placeholders(list(prompt), (), n_images, image_field, require_images, problems)
    order = list(range(len(responses)))
    if scores is not None:
        order = sorted(range(len(responses)), key=lambda k: -scores[k])  # stable: ties keep their order
        responses = [responses[k] for k in order]
        fields = [fields[k] for k in order]
        scores = [scores[k] for k in order]
        dimension_scores = None if dimension_scores is None else [dimension_scores[k] for k in order]
        critiques = None if critiques is None else [critiques[k] for k in order]
        reference_logps = None if reference_logps is None else [reference_logps[k] for k in order]
    return PreferenceGroup(
        kind=kind,
        images=images,
        prompt=tuple(prompt_list),
        responses=tuple(tuple(r) for r in responses),
        prompt_field=prompt_field,
        response_fields=tuple(fields),
        scores=None if scores is None else tuple(float(s) for s in scores),
        dimension_names=tuple(dimension_names),
        dimension_scores=None if dimension_scores is None else tuple(tuple(d) for d in dimension_scores),
        critiques=None if critiques is None else tuple(critiques),
        margin=margin,
        reference_logps=None if reference_logps is None else tuple(reference_logps),
        is_tie=is_tie,
        source_order=tuple(order),
    )


def _common_prefix_split(a: tuple[Message, ...], b: tuple[Message, ...]):
    """TRL-style implicit prompt: the longest common run of turns that ends right before an assistant turn."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    while i > 0 and (i >= len(a) or a[i].role != "assistant" or i >= len(b) or b[i].role != "assistant"):
        i -= 1
    if i == 0:
        pa, ra = _split_at_first_assistant(a)
        _, rb = _split_at_first_assistant(b)
        return pa, [ra, rb]
    return a[:i], [a[i:], b[i:]]


def _parse_scores(value: Any, name: str, k: int, problems: FieldProblems):
    """Scores -> (totals, dimension names, per-dimension scores) or None on a fault."""
    if not _is_list(value):
        problems.add(name, f"wrong type: expected a list of scores, got {_type_name(value)}")
        return None
    value = list(value)
    if len(value) != k:
        problems.add(name, f"{len(value)} scores for {k} responses")
        return None
    if all(_is_number(v) for v in value):
        return [float(v) for v in value], (), None
    if all(isinstance(v, Mapping) for v in value):
        names = tuple(n for n in value[0].keys() if n != "total")
        dims, totals = [], []
        for j, v in enumerate(value):
            if tuple(n for n in v.keys() if n != "total") != names:
                problems.add(f"{name}[{j}]", f"dimensions {sorted(v)} differ from {sorted(value[0])}")
                return None
            if not all(_is_number(v[n]) for n in v):
                problems.add(f"{name}[{j}]", "wrong type: expected numbers")
                return None
            dims.append([float(v[n]) for n in names])
            totals.append(float(v["total"]) if "total" in v else float(sum(dims[-1])))
        return totals, names, dims
    if all(_is_list(v) for v in value):
        width = len(value[0])
        dims = []
        for j, v in enumerate(value):
            if len(v) != width or not all(_is_number(x) for x in v):
                problems.add(f"{name}[{j}]", f"wrong type: expected {width} numbers")
                return None
            dims.append([float(x) for x in v])
        return [float(sum(d)) for d in dims], tuple(f"dim{d}" for d in range(width)), dims
    bad = next(j for j, v in enumerate(value) if not _is_number(v))
    problems.add(f"{name}[{bad}]", f"wrong type: expected a number, got {_type_name(value[bad])}")
    return None


def _parse_response_list(data: Mapping, key: str, problems: FieldProblems):
    value = data[key]
    if not _is_list(value):
        problems.add(key, f"wrong type: expected a list of responses, got {_type_name(value)}")
        return None, None
    parsed, fields = [], []
    ok = True
    for k, item in enumerate(value):
        name = f"{key}[{k}]"
        p = _parse_response(item, name, problems)
        if p is None:
            ok = False
            continue
        parsed.append(p)
        fields.append(name)
    return (parsed, fields) if ok else (None, None)


def _optional_logps(data: Mapping, key: str, k: int | None, problems: FieldProblems):
    value = data.get(key)
    if value is None:
        return None
    if not _is_list(value) or not all(v is None or _is_number(v) for v in value):
        problems.add(key, "wrong type: expected a list of numbers")
        return None
    if k is not None and len(value) != k:
        problems.add(key, f"{len(value)} values for {k} responses")
        return None
    return [None if v is None else float(v) for v in value]
