"""Field parsers of the record adapters (:mod:`jax_align.data.records`): message content, message lists,
responses, image references (paths, data URIs, bytes; kept inside the data directory unless allowed) and the
``<image>`` placeholder reconciliation.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jax_align.data.record_types import (
    _ROLE_ALIASES,
    IMAGE_PLACEHOLDER,
    FieldProblems,
    ImageRef,
    Message,
    _is_list,
    _type_name,
)


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
