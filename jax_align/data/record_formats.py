"""The format adapters behind :func:`jax_align.data.records.parse_record`: ``sft``, ``pairwise``, ``ranked``
(with AMP's ``output_1..K``, spec §5.4, and EACO's ``output_list`` + ``score_list``, spec §1.7) and ``scored``
(with Align²LLaVA answer records, spec §3.6).
"""

from __future__ import annotations

from collections.abc import Mapping

from jax_align.data.record_fields import _parse_content, _parse_messages, _parse_response, _reconcile_placeholders
from jax_align.data.record_groups import (
    _common_prefix_split,
    _finish_group,
    _optional_logps,
    _parse_response_list,
    _parse_scores,
    _prompt_from_field,
    _resolve_prompt,
)
from jax_align.data.record_types import (
    IMAGE_PLACEHOLDER,
    FieldProblems,
    Message,
    PreferenceGroup,
    SFTExample,
    _is_list,
    _optional_number,
    _optional_text,
    _type_name,
)


def _parse_sft(data, images, image_field, n_images, require_images, problems) -> SFTExample | None:
    if "conversations" in data:
        text_field = "conversations"
    elif "messages" in data:
        text_field = "messages"
    else:
        problems.add("conversations", "missing field")
        return None
    messages = _parse_messages(data[text_field], text_field, problems)
    if messages is None:
        return None
    if not messages:
        problems.add(text_field, "empty conversation")
        return None
    first = next((i for i, m in enumerate(messages) if m.role != "system"), None)
    if first is None or messages[first].role != "user":
        problems.add(f"{text_field}[{first or 0}]", "the conversation must start with a user (human) turn")
        return None
    assistants = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if not assistants:
        problems.add(text_field, "empty response: no assistant (gpt) turn")
        return None
    key = "value" if text_field == "conversations" else "content"
    for i in assistants:
        if not messages[i].content.replace(IMAGE_PLACEHOLDER, "").strip():
            problems.add(f"{text_field}[{i}].{key}", "empty response")
    msgs = list(messages)
    msgs = _reconcile_placeholders(msgs, (), n_images, image_field, require_images, problems)
    return SFTExample(images, tuple(msgs), text_field)


def _parse_pairwise(data, images, image_field, n_images, require_images, problems) -> PreferenceGroup | None:
    fields = ["chosen", "rejected"]
    parsed = []
    for name in fields:
        if name not in data or data[name] is None:
            problems.add(name, "missing field")
            continue
        p = _parse_response(data[name], name, problems)
        if p is not None:
            parsed.append(p)
    margin = _optional_number(data, "margin", problems)
    ref_c = _optional_number(data, "reference_chosen_logp", problems)
    ref_r = _optional_number(data, "reference_rejected_logp", problems)
    reasons = [_optional_text(data, f"{name}_reason", problems) for name in fields]  # MM-RLHF critiques (4.6)
    is_tie = False if data.get("is_tie") is None else data["is_tie"]
    if not isinstance(is_tie, bool):
        problems.add("is_tie", f"wrong type: expected true or false, got {_type_name(is_tie)}")
    if len(parsed) != 2:
        if not any(f == "prompt" for f, _ in problems.items) and data.get("prompt") is None:
            # report a missing prompt too unless the surviving response carries it
            if not (parsed and parsed[0][0]):
                _prompt_from_field(data, problems)
        return None
    prompt, responses = _resolve_prompt(data, parsed, fields, problems)
    if prompt is not None and parsed[0][0] and parsed[1][0] and len(prompt) > 0:
        # both responses repeat the conversation: share the longest common prefix of whole turns
        prompt, responses = _common_prefix_split(parsed[0][0] + parsed[0][1], parsed[1][0] + parsed[1][1])
    refs = None if ref_c is None and ref_r is None else [ref_c, ref_r]
    return _finish_group(
        "pairwise",
        data,
        images,
        image_field,
        n_images,
        require_images,
        prompt,
        responses,
        fields,
        problems,
        margin=margin,
        reference_logps=refs,
        critiques=None if all(r is None for r in reasons) else reasons,
        is_tie=is_tie is True,
    )


def _parse_ranked(data, images, image_field, n_images, require_images, problems) -> PreferenceGroup | None:
    if "output_1" in data:
        return _parse_amp(data, images, image_field, n_images, require_images, problems)
    if "output_list" in data:
        return _parse_eaco(data, images, image_field, n_images, require_images, problems)
    if "responses" not in data or data["responses"] is None:
        problems.add("responses", "missing field")
        if data.get("prompt") is None:
            problems.add("prompt", "missing field")
        return None
    parsed, fields = _parse_response_list(data, "responses", problems)
    scored = None
    if parsed is not None and data.get("scores") is not None:
        scored = _parse_scores(data["scores"], "scores", len(parsed), problems)
        if scored is None:
            return None
    refs = _optional_logps(data, "reference_logps", None if parsed is None else len(parsed), problems)
    if parsed is None:
        if data.get("prompt") is None:
            problems.add("prompt", "missing field")
        return None
    if not parsed:
        problems.add("responses", "fewer than two distinct ranked responses (0 given)")
        return None
    prompt, responses = _resolve_prompt(data, parsed, fields, problems)
    totals, names, dims = scored if scored is not None else (None, (), None)
    return _finish_group(
        "ranked",
        data,
        images,
        image_field,
        n_images,
        require_images,
        prompt,
        responses,
        fields,
        problems,
        scores=totals,
        dimension_names=names,
        dimension_scores=dims,
        reference_logps=refs,
        distinct_field="responses",
    )


def _parse_amp(data, images, image_field, n_images, require_images, problems) -> PreferenceGroup | None:
    """AMP (spec 5.4): ``output_1`` (best) .. ``output_K`` (worst), conversations sharing human turns."""
    keys = []
    while f"output_{len(keys) + 1}" in data:
        keys.append(f"output_{len(keys) + 1}")
    parsed, fields = [], []
    for key in keys:
        value = data[key]
        if value is None:
            problems.add(key, "missing field")
            continue
        if isinstance(value, str):
            p = ((), (Message("assistant", value),))
        else:
            p = _parse_response(value, key, problems)
        if p is not None:
            parsed.append(p)
            fields.append(key)
    if len(parsed) != len(keys):
        return None
    prompt, responses = _resolve_prompt(data, parsed, fields, problems)
    return _finish_group(
        "ranked",
        data,
        images,
        image_field,
        n_images,
        require_images,
        prompt,
        responses,
        fields,
        problems,
        prompt_field="output_1",
        distinct_field="output_1" if len(keys) < 2 else "output_2",
    )


def _parse_eaco(data, images, image_field, n_images, require_images, problems) -> PreferenceGroup | None:
    """EACO (spec 1.7): ``output_list`` of sampled responses with the critic's ``score_list``."""
    parsed, fields = _parse_response_list(data, "output_list", problems)
    if "score_list" not in data or data["score_list"] is None:
        problems.add("score_list", "missing field")
        scored = None
    elif parsed is not None:
        scored = _parse_scores(data["score_list"], "score_list", len(parsed), problems)
    else:
        scored = None
    if parsed is None or scored is None:
        if data.get("prompt") is None:
            problems.add("prompt", "missing field")
        return None
    prompt, responses = _resolve_prompt(data, parsed, fields, problems)
    totals, names, dims = scored
    return _finish_group(
        "ranked",
        data,
        images,
        image_field,
        n_images,
        require_images,
        prompt,
        responses,
        fields,
        problems,
        scores=totals,
        dimension_names=names,
        dimension_scores=dims,
        distinct_field="output_list",
    )


def _parse_scored(data, images, image_field, n_images, require_images, problems) -> PreferenceGroup | None:
    if "responses" not in data and "conversations" in data:
        return _parse_align2llava(data, images, image_field, n_images, require_images, problems)
    if "responses" not in data or data["responses"] is None:
        problems.add("responses", "missing field")
        return None
    parsed, fields = _parse_response_list(data, "responses", problems)
    if "scores" not in data or data["scores"] is None:
        problems.add("scores", "missing field")
        return None
    if parsed is None:
        return None
    if not parsed:
        problems.add("responses", "no responses")
        return None
    scored = _parse_scores(data["scores"], "scores", len(parsed), problems)
    critiques = _parse_critiques(data, len(parsed), problems)
    if scored is None or critiques is False:
        return None
    prompt, responses = _resolve_prompt(data, parsed, fields, problems)
    totals, names, dims = scored
    return _finish_group(
        "scored",
        data,
        images,
        image_field,
        n_images,
        require_images,
        prompt,
        responses,
        fields,
        problems,
        scores=totals,
        dimension_names=names,
        dimension_scores=dims,
        critiques=critiques,
    )


def _parse_critiques(data: Mapping, k: int, problems: FieldProblems):
    key = "critiques" if "critiques" in data else "critique"
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str) and k == 1:
        return [value]
    if not _is_list(value) or not all(v is None or isinstance(v, str) for v in value):
        problems.add(key, "wrong type: expected a list of strings")
        return False
    if len(value) != k:
        problems.add(key, f"{len(value)} critiques for {k} responses")
        return False
    return list(value)


def _parse_align2llava(data, images, image_field, n_images, require_images, problems):
    """Align2LLaVA answer preference (spec 3.6): human turn + gpt turn with a list of answers + scores."""
    conv = data["conversations"]
    if not _is_list(conv) or len(conv) < 2 or not all(isinstance(t, Mapping) for t in conv[:2]):
        problems.add("conversations", "wrong type: expected [human turn, gpt turn with a list of answers]")
        return None
    human, gpt = conv[0], conv[1]
    question = _parse_content(human.get("value"), "conversations[0].value", problems)
    answers = gpt.get("value")
    if question is None:
        return None
    if not _is_list(answers) or not all(isinstance(a, str) for a in answers):
        problems.add("conversations[1].value", "wrong type: expected a list of answer strings")
        return None
    if gpt.get("score") is None:
        problems.add("conversations[1].score", "missing field")
        return None
    scored = _parse_scores(gpt["score"], "conversations[1].score", len(answers), problems)
    if scored is None:
        return None
    responses = [(Message("assistant", a),) for a in answers]
    fields = [f"conversations[1].value[{k}]" for k in range(len(answers))]
    totals, names, dims = scored
    return _finish_group(
        "scored",
        data,
        images,
        image_field,
        n_images,
        require_images,
        (Message("user", question),),
        responses,
        fields,
        problems,
        prompt_field="conversations[0].value",
        scores=totals,
        dimension_names=names,
        dimension_scores=dims,
    )
