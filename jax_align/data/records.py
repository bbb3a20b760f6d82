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
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jax_align.preference import QualityLevels

IMAGE_PLACEHOLDER = "<image>"
FORMATS = ("sft", "pairwise", "ranked", "scored")

_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class ImageRef:
    """An image of a record: a resolved file path or embedded encoded bytes (PNG, JPEG, ...)."""

    field: str
    path: str | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"<{len(self.data or b'')} embedded bytes>"


@dataclass(frozen=True)
class Message:
    """One chat turn; ``content`` is text in which each image sits as the ``<image>`` placeholder."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class SFTExample:
    images: tuple[ImageRef, ...]
    messages: tuple[Message, ...]
    text_field: str = "conversations"


@dataclass(frozen=True)
class PreferenceGroup:
    """An image + prompt with K >= 1 responses, best first.

    ``responses[k]`` is a tuple of messages starting with an assistant turn (several turns for AMP's
    multi-round levels; later user turns are context, not targets). ``scores`` are per-response totals
    (``None`` when the order is given without scores); ``dimension_scores[k][d]`` per dimension.
    """

    kind: str  # "pairwise" | "ranked" | "scored"
    images: tuple[ImageRef, ...]
    prompt: tuple[Message, ...]
    responses: tuple[tuple[Message, ...], ...]
    prompt_field: str = "prompt"
    response_fields: tuple[str, ...] = ()
    scores: tuple[float, ...] | None = None
    dimension_names: tuple[str, ...] = ()
    dimension_scores: tuple[tuple[float, ...], ...] | None = None
    critiques: tuple[str | None, ...] | None = None
    margin: float | None = None
    reference_logps: tuple[float | None, ...] | None = None
    is_tie: bool = False
    # Per-response context turns placed between ``prompt`` and ``responses[k]`` (a critic prompt that quotes
    # response k, see :mod:`jax_align.data.critique`); the tokenizer shares the longest common token prefix.
    response_prompts: tuple[tuple[Message, ...], ...] | None = None
    # ``source_order[k]``: the position in the record of ``responses[k]`` (responses are sorted best first by
    # score; ``jax-align score`` writes its per-response lists back in the record's own order).
    source_order: tuple[int, ...] | None = None

    @property
    def num_responses(self) -> int:
        return len(self.responses)

    def levels(self) -> QualityLevels:
        """Quality levels of the responses (:mod:`jax_align.preference`: higher = better, ties share a level);
        from the scores when the record has them, else from list order (best first)."""
        if self.scores is None:
            return QualityLevels.from_order(len(self.responses))
        return QualityLevels.from_scores(self.scores)


Example = SFTExample | PreferenceGroup


@dataclass
class FieldProblems:
    """``(field, message)`` pairs collected while parsing one record (duplicates dropped)."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, field_name: str, message: str) -> None:
        if (field_name, message) not in self.items:
            self.items.append((field_name, message))

    def __bool__(self) -> bool:
        return bool(self.items)


# ----------------------------------------------------------------------------------------------- helpers
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # numpy scalars from Parquet rows
        try:
            import numpy as np

            return isinstance(value, (np.integer, np.floating)) and math.isfinite(float(value))
        except Exception:  # pragma: no cover
            return False
    return math.isfinite(float(value))


def _is_list(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    try:
        import numpy as np

        return isinstance(value, np.ndarray) and value.ndim == 1
    except Exception:  # pragma: no cover
        return False


def _optional_number(data: Mapping, key: str, problems: FieldProblems) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        problems.add(key, f"wrong type: expected a finite number, got {_type_name(value)}")
        return None
    return float(value)


def _optional_text(data: Mapping, key: str, problems: FieldProblems) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(key, f"wrong type: expected a string, got {_type_name(value)}")
        return None
    return value


def _parse_content(value: Any, field_name: str, problems: FieldProblems) -> str | None:
    """Message content -> text with ``<image>`` placeholders (typed image parts become placeholders)."""
    if isinstance(value, str):
        return value
    if _is_list(value):
        pieces: list[str] = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                pieces.append(part)
                continue
            if not isinstance(part, Mapping):
                problems.add(
                    f"{field_name}[{j}]",
                    f"wrong type: expected a content part object, got {_type_name(part)}",
                )
                return None
            kind = part.get("type")
            if kind in ("image", "image_url") or (kind is None and "image" in part):
                pieces.append(IMAGE_PLACEHOLDER)
            elif kind == "text" or (kind is None and "text" in part):
                text = part.get("text")
                if not isinstance(text, str):
                    problems.add(
                        f"{field_name}[{j}].text", f"wrong type: expected a string, got {_type_name(text)}"
                    )
                    return None
                pieces.append(text)
            else:
                problems.add(f"{field_name}[{j}].type", f"unknown content part type {kind!r}")
                return None
        return "\n".join(pieces)
    problems.add(
        field_name, f"wrong type: expected a string or a list of content parts, got {_type_name(value)}"
    )
    return None


def _parse_messages(value: Any, field_name: str, problems: FieldProblems) -> tuple[Message, ...] | None:
    """A list of LLaVA (``from``/``value``) or TRL (``role``/``content``) turns."""
    if not _is_list(value):
        problems.add(field_name, f"wrong type: expected a list of messages, got {_type_name(value)}")
        return None
    out: list[Message] = []
    ok = True
    for i, turn in enumerate(value):
        where = f"{field_name}[{i}]"
        if not isinstance(turn, Mapping):
            problems.add(where, f"wrong type: expected a message object, got {_type_name(turn)}")
            ok = False
            continue
        role_key, content_key = (
            ("from", "value") if "from" in turn or "value" in turn else ("role", "content")
        )
        if role_key not in turn:
            problems.add(f"{where}.{role_key}", "missing field")
            ok = False
            continue
        if content_key not in turn:
            problems.add(f"{where}.{content_key}", "missing field")
            ok = False
            continue
        role_raw = turn[role_key]
        if not isinstance(role_raw, str):
            problems.add(f"{where}.{role_key}", f"wrong type: expected a string, got {_type_name(role_raw)}")
            ok = False
            continue
        role = _ROLE_ALIASES.get(role_raw.lower())
        if role is None:
            problems.add(f"{where}.{role_key}", f"unknown role {role_raw!r}")
            ok = False
            continue
        content = _parse_content(turn[content_key], f"{where}.{content_key}", problems)
        if content is None:
            ok = False
            continue
        out.append(Message(role, content))
    return tuple(out) if ok else None


def _split_at_first_assistant(
    messages: tuple[Message, ...],
) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    for i, m in enumerate(messages):
        if m.role == "assistant":
            return messages[:i], messages[i:]
    return messages, ()


def _response_text(messages: tuple[Message, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((m.role, m.content.strip()) for m in messages)


def _check_response(
    messages: tuple[Message, ...], field_name: str, problems: FieldProblems, *, allow_images: bool = False
) -> bool:
    """A response must start with an assistant turn and no assistant turn may be empty."""
    if not messages or messages[0].role != "assistant":
        problems.add(field_name, "empty response: no assistant turn")
        return False
    ok = True
    for m in messages:
        if m.role == "assistant" and not m.content.replace(IMAGE_PLACEHOLDER, "").strip():
            problems.add(field_name, "empty response")
            ok = False
            break
    if not allow_images and any(IMAGE_PLACEHOLDER in m.content for m in messages):
        problems.add(field_name, "an <image> placeholder inside a response is not supported")
        ok = False
    return ok


def _parse_response(value: Any, field_name: str, problems: FieldProblems):
    """A response value -> (prompt turns found inside it, response turns) or None.

    Strings are one assistant turn. Message lists may repeat the prompt before the first assistant turn
    (EACO, TRL implicit prompt, AMP levels).
    """
    if isinstance(value, str):
        return (), (Message("assistant", value),)
    if not _is_list(value):
        problems.add(
            field_name, f"wrong type: expected a string or a list of messages, got {_type_name(value)}"
        )
        return None
    messages = _parse_messages(value, field_name, problems)
    if messages is None:
        return None
    return _split_at_first_assistant(messages)


# ----------------------------------------------------------------------------------------------- images
def parse_images(
    data: Mapping, base_dir: str, problems: FieldProblems, allow_absolute_paths: bool = True
) -> tuple[tuple[ImageRef, ...], str]:
    """The record's images (``images`` list or ``image``) as :class:`ImageRef`, and the field name used.

    ``allow_absolute_paths=False``: a path must resolve inside ``base_dir`` (no absolute path, no ``..`` out)."""
    key = "images" if data.get("images") is not None else "image"
    value = data.get(key)
    if value is None:
        return (), key
    items = list(value) if _is_list(value) else [value]
    refs: list[ImageRef] = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]" if _is_list(value) else key
        ref = _image_ref(item, where, base_dir, problems, allow_absolute_paths)
        if ref is not None:
            refs.append(ref)
    return tuple(refs), key


_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.S)


def _image_ref(
    item: Any, where: str, base_dir: str, problems: FieldProblems, allow_absolute_paths: bool = True
) -> ImageRef | None:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return ImageRef(where, data=bytes(item))
    if isinstance(item, str):
        if not item.strip():
            problems.add(where, "missing image: empty path")
            return None
        m = _DATA_URI.match(item)
        if m:
            try:
                return ImageRef(where, data=base64.b64decode(m.group(1), validate=True))
            except ValueError:
                problems.add(where, "unreadable image: invalid base64 data URI")
                return None
        from jax_align.data.safe_paths import resolve_image_path

        path, error = resolve_image_path(item, base_dir, allow_absolute_paths)
        if error:
            problems.add(where, error)
            return None
        return ImageRef(where, path=path)
    if isinstance(item, Mapping):
        raw = item.get("bytes")
        if raw is not None and not isinstance(raw, (bytes, bytearray, memoryview)):
            problems.add(f"{where}.bytes", f"wrong type: expected bytes, got {_type_name(raw)}")
            return None
        if raw:  # embedded bytes win; empty bytes count as absent when a path is given
            return ImageRef(where, data=bytes(raw))
        path = item.get("path")
        if isinstance(path, str) and path.strip():
            return _image_ref(path, where, base_dir, problems, allow_absolute_paths)
        if raw is not None:
            return ImageRef(where, data=b"")
        problems.add(where, "missing image: neither bytes nor path given")
        return None
    problems.add(
        where, f"wrong type: expected an image path, bytes or {{bytes, path}}, got {_type_name(item)}"
    )
    return None


def _reconcile_placeholders(
    prompt: list[Message],
    other_messages: Sequence[Message],
    n_images: int,
    image_field: str,
    require_images: bool,
    problems: FieldProblems,
) -> list[Message]:
    """Match ``<image>`` placeholders to images; insert them at the start of the first user turn if absent."""
    count = sum(m.content.count(IMAGE_PLACEHOLDER) for m in list(prompt) + list(other_messages))
    if n_images == 0:
        if count:
            problems.add(
                image_field, f"missing field: the text has {count} <image> placeholder(s) but no image"
            )
        elif require_images:
            problems.add(image_field, "missing field")
        return prompt
    if count == 0:
        for i, m in enumerate(prompt):
            if m.role == "user":
                prompt[i] = Message(m.role, (IMAGE_PLACEHOLDER + "\n") * n_images + m.content)
                return prompt
        problems.add(image_field, "no user turn to place the image in")
        return prompt
    if count != n_images:
        problems.add(image_field, f"{n_images} image(s) but {count} <image> placeholder(s) in the text")
    return prompt


# ----------------------------------------------------------------------------------------------- adapters
def parse_record(
    data: Any, fmt: str, *, base_dir: str = ".", require_images: bool | None = None,
    allow_absolute_paths: bool = True,
) -> tuple[Example | None, list[tuple[str, str]]]:
    """Parse one raw record in format ``fmt``. Returns ``(example, problems)``; ``example`` is ``None`` iff
    ``problems`` is not empty. ``require_images`` defaults to True for preference formats, False for SFT.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
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
    }[fmt]
    example = parser(data, images, image_field, n_images, require_images, problems)
    if problems:
        return None, problems.items
    return example, []


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
