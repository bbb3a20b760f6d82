"""Align²LLaVA's raw preference records (spec §3.6) as validation formats of ``jax-align data validate``.

* ``align2_questions``: ``{id, image, questions: [[q, ...], ...], score: [float] * len(questions)}``: each
  candidate a non-empty list of non-empty question strings (a bare string is one question), one number per set;
  parsed as one preference group whose prompt is ``<image>`` and whose responses are the question sets, one
  question per line (what the question reward model reads, §3.2).
* ``align2_answers``: LLaVA conversations (``image``, ``conversations``) where every gpt turn that follows a human
  turn has a ``value`` list of non-empty answers and a ``score`` list of as many numbers; every turn pair is
  checked (§3.6: multi-turn allowed, each pair handled independently); parsed as the first pair's group.

Problems name the field as ``questions[i]``, ``score``, ``conversations[i].value[k]``, ``conversations[i].score``.
Scores may tie (ties give no pair, §3.2); a group needs two distinct candidates.
"""

from __future__ import annotations

from collections.abc import Mapping

from jax_align.data.record_fields import _parse_content
from jax_align.data.record_groups import _finish_group, _parse_scores
from jax_align.data.record_types import IMAGE_PLACEHOLDER, FieldProblems, Message, _is_list, _type_name

RAW_FORMATS = ("align2_questions", "align2_answers")


def _strings(value, name: str, problems: FieldProblems, what: str) -> list[str] | None:
    if isinstance(value, str) and what == "question":  # a bare string is a set of one question
        value = [value]
    if not _is_list(value) or not value:
        problems.add(name, f"wrong type: expected a non-empty list of {what} strings, got {_type_name(value)}")
        return None
    bad = [k for k, v in enumerate(value) if not isinstance(v, str) or not v.strip()]
    for k in bad:
        problems.add(f"{name}[{k}]", f"expected a non-empty {what} string")
    return None if bad else [v.strip() for v in value]


def parse_align2_questions(data, images, image_field, n_images, require_images, problems):
    if data.get("questions") is None:
        problems.add("questions", "missing field")
        return None
    if not _is_list(data["questions"]) or not data["questions"]:
        problems.add("questions", f"wrong type: expected a list of question lists, got {_type_name(data['questions'])}")
        return None
    sets = [_strings(q, f"questions[{i}]", problems, "question") for i, q in enumerate(data["questions"])]
    if data.get("score") is None:
        problems.add("score", "missing field")
        return None
    if any(s is None for s in sets):
        return None
    scored = _parse_scores(data["score"], "score", len(sets), problems)
    if scored is None:
        return None
    totals, names, dims = scored
    return _finish_group("scored", data, images, image_field, n_images, require_images,
                         (Message("user", IMAGE_PLACEHOLDER),), [(Message("assistant", "\n".join(s)),) for s in sets],
                         [f"questions[{i}]" for i in range(len(sets))], problems, prompt_field="questions",
                         scores=totals, dimension_names=names, dimension_scores=dims)


def parse_align2_answers(data, images, image_field, n_images, require_images, problems):
    conv = data.get("conversations")
    if conv is None:
        problems.add("conversations", "missing field")
        return None
    if not _is_list(conv) or not all(isinstance(t, Mapping) for t in conv):
        problems.add("conversations", "wrong type: expected a list of {from, value} turns")
        return None
    groups = []
    for i in range(len(conv) - 1):
        human, gpt = conv[i], conv[i + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            continue
        question = _parse_content(human.get("value"), f"conversations[{i}].value", problems)
        answers = _strings(gpt.get("value"), f"conversations[{i + 1}].value", problems, "answer")
        if gpt.get("score") is None:
            problems.add(f"conversations[{i + 1}].score", "missing field")
            continue
        if answers is None or question is None:
            continue
        scored = _parse_scores(gpt["score"], f"conversations[{i + 1}].score", len(answers), problems)
        if scored is not None:
            groups.append((i, question, answers, scored))
    if not groups:
        if not problems:
            problems.add("conversations", "no human turn followed by a gpt turn with a list of scored answers")
        return None
    out = None
    for i, question, answers, (totals, names, dims) in groups:  # every pair is checked; the first is returned
        group = _finish_group("scored", data, images, image_field, n_images, require_images,
                              (Message("user", question),), [(Message("assistant", a),) for a in answers],
                              [f"conversations[{i + 1}].value[{k}]" for k in range(len(answers))], problems,
                              prompt_field=f"conversations[{i}].value", scores=totals, dimension_names=names,
                              dimension_scores=dims)
        out = out or group
    return out if not problems else None
