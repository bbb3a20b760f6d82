"""Record formats and the adapters that turn raw records (JSON objects / table rows) into typed examples.

Formats (issue 4, item 1; spec sections 1.7, 2.6, 3.6, 4.6, 5.4):

* ``sft``: LLaVA conversations ``{"image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}]}`` or TRL messages ``{"images", "messages": [{"role", "content"}]}`` where
  ``content`` is a string or a list of ``{"type": "text", "text"}`` / ``{"type": "image"}`` parts.
* ``pairwise``: TRL preference records ``prompt``, ``chosen``, ``rejected`` (strings or conversational
  messages, with or without the prompt repeated inside ``chosen``/``rejected`` as EACO writes them),
  ``images`` or ``image``; optional ``margin``, ``reference_chosen_logp``, ``reference_rejected_logp``,
  and MM-RLHF's critiques ``chosen_reason`` / ``rejected_reason`` and ``is_tie`` (spec 4.6).
* ``ranked``: ``prompt``, ``images``, ``responses`` best to worst, optional ``scores`` (ties allowed; when
  given, responses are ordered by score, best first). Adapters for AMP's ``output_1..K`` conversations
  (spec 5.4) and EACO's ``output_list`` + ``score_list`` (spec 1.7).
* ``scored``: candidates for reward and critic training: ``responses`` with ``scores`` that are numbers,
  per-dimension lists or ``{dimension: score}`` dicts (a ``total`` key, else the sum, orders them, spec 1.3),
  optional ``critiques``; also Align2LLaVA answer records (``conversations`` whose gpt ``value`` is a list of
  answers with a ``score`` list, spec 3.6).

Every adapter reports all independent faults of a record (missing field, wrong type, empty response, chosen
identical to rejected, fewer than two distinct ranked responses, image/placeholder mismatch) as
``(field, message)`` pairs and returns ``None`` for the example when there is any. Images are not opened here
(see :mod:`jax_align.data.images`).

Validation-only formats (``jax-align data validate --format``; not training formats): Align²LLaVA's raw
preference records (spec §3.6) ``align2_questions`` ``{id, image, questions: [[q, ...], ...], score}`` and
``align2_answers`` (LLaVA conversations, every gpt ``value`` a list of answers with a ``score`` list, every
human/gpt turn pair checked); ``jax-align curate rm-data`` turns them into ``scored`` groups.

Modules, by concern: :mod:`~jax_align.data.record_types` (the typed records, :class:`FieldProblems`),
:mod:`~jax_align.data.record_fields` (content, messages, responses, images), :mod:`~jax_align.data.record_groups`
(prompt/response/score assembly), :mod:`~jax_align.data.record_formats` (the adapters per format) and
:mod:`~jax_align.data.record_align2` (Align²LLaVA's raw formats); this module keeps :func:`parse_record` and
re-exports their names, so ``from jax_align.data.records import ...`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jax_align.data.record_align2 import RAW_FORMATS, parse_align2_answers, parse_align2_questions
from jax_align.data.record_fields import (  # noqa: F401  (re-exported: the old module's names)
    _DATA_URI,
    _check_response,
    _image_ref,
    _parse_content,
    _parse_messages,
    _parse_response,
    _reconcile_placeholders,
    _response_text,
    _split_at_first_assistant,
    parse_images,
)
from jax_align.data.record_formats import (  # noqa: F401
    _parse_align2llava,
    _parse_amp,
    _parse_critiques,
    _parse_eaco,
    _parse_pairwise,
    _parse_ranked,
    _parse_scored,
    _parse_sft,
)
from jax_align.data.record_groups import (  # noqa: F401
    _common_prefix_split,
    _finish_group,
    _optional_logps,
    _parse_response_list,
    _parse_scores,
    _prompt_from_field,
    _resolve_prompt,
)
from jax_align.data.record_types import (  # noqa: F401
    _ROLE_ALIASES,
    FORMATS,
    IMAGE_PLACEHOLDER,
    Example,
    FieldProblems,
    ImageRef,
    Message,
    PreferenceGroup,
    SFTExample,
    _is_list,
    _is_number,
    _optional_number,
    _optional_text,
    _type_name,
)

VALIDATE_FORMATS = FORMATS + RAW_FORMATS  # ``data validate --format`` choices


# ----------------------------------------------------------------------------------------------- adapters
def parse_record(
    data: Any, fmt: str, *, base_dir: str = ".", require_images: bool | None = None,
    allow_absolute_paths: bool = True,
) -> tuple[Example | None, list[tuple[str, str]]]:
    """Parse one raw record in format ``fmt``. Returns ``(example, problems)``; ``example`` is ``None`` iff
    ``problems`` is not empty. ``require_images`` defaults to True for preference formats, False for SFT.
    """
    if fmt not in FORMATS + RAW_FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS + RAW_FORMATS}")
    problems = FieldProblems()
    if not isinstance(data, Mapping):
        problems.add("record", f"wrong type: expected a JSON object, got {_type_name(data)}")
        return None, problems.items
    if require_images is None:
        require_images = fmt != "sft"
    images, image_field = parse_images(data, base_dir, problems, allow_absolute_paths)
    n_images = len(images) + sum(1 for f, _ in problems.items if f.startswith(image_field))
    parser = {
        "sft": _parse_sft,
        "pairwise": _parse_pairwise,
        "ranked": _parse_ranked,
        "scored": _parse_scored,
        "align2_questions": parse_align2_questions,
        "align2_answers": parse_align2_answers,
    }[fmt]
    example = parser(data, images, image_field, n_images, require_images, problems)
    if problems:
        return None, problems.items
    return example, []
