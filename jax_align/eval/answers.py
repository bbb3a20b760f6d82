"""Reading answer files and matching them to a world's questions.

An answer file is what ``jax-align generate`` writes: each line is an input record (``image``, ``prompt`` and
whatever else it had) plus ``response``, a string, or a list of strings when several samples were drawn (the
first one is scored).

Matching is by ``image`` + ``prompt``, whatever the order of the lines:

* the image is compared as written; failing that, as an absolute path (each record's path resolved against
  its own file's directory); failing that, by file name;
* when several questions share image and prompt (a POPE "yes" question can be in several splits), the
  answer whose ``split`` / ``object`` / ``label`` / ``answer`` / ``category`` fields agree with the question's
  (where both have the field) is taken first, each answer once; an answer is reused only when the file has
  fewer answers than questions for that image and prompt (identical questions get identical answers).

A question with no answer is an error that names the question and the answer file.
"""

from __future__ import annotations

import os
from typing import Any

from jax_align.world.datasets import read_jsonl

DISAMBIGUATING_FIELDS = ("split", "object", "label", "answer", "category")


def response_text(record: dict[str, Any], where: str) -> str:
    """The scored response of an answer record: ``response`` itself, or its first element if a list."""
    if "response" not in record:
        raise ValueError(f"{where}: response: missing")
    response = record["response"]
    if isinstance(response, list):
        if not response:
            raise ValueError(f"{where}: response: empty list")
        response = response[0]
    if not isinstance(response, str):
        raise ValueError(f"{where}: response: expected a string, got {type(response).__name__}")
    return response


def _image_keys(image: str, base_dir: str) -> list[str]:
    return [
        "raw:" + image,
        "abs:" + os.path.normpath(os.path.join(os.path.abspath(base_dir), image)),
        "name:" + os.path.basename(image),
    ]


def _fields_agree(question: dict[str, Any], answer: dict[str, Any]) -> bool:
    return all(question[f] == answer[f] for f in DISAMBIGUATING_FIELDS if f in question and f in answer)


def match_answers(
    questions: list[dict[str, Any]],
    question_dir: str,
    answers: list[dict[str, Any]],
    answer_path: str,
) -> list[str]:
    """The response to each question, in the questions' order."""
    answer_dir = os.path.dirname(os.path.abspath(answer_path))
    index: dict[tuple[str, str], list[int]] = {}
    texts: list[str] = []
    for i, record in enumerate(answers):
        where = f"{answer_path}:{i + 1}"
        for field in ("image", "prompt"):
            if not isinstance(record.get(field), str):
                raise ValueError(f"{where}: {field}: missing or not a string")
        texts.append(response_text(record, where))
        for key in _image_keys(record["image"], answer_dir):
            index.setdefault((key, record["prompt"].strip()), []).append(i)
    used = [False] * len(answers)
    out: list[str] = []
    for q in questions:
        candidates: list[int] = []
        for key in _image_keys(q["image"], question_dir):
            candidates = index.get((key, q["prompt"].strip()), [])
            if candidates:
                break
        if not candidates:
            raise ValueError(f"{answer_path}: no answer for image {q['image']!r} and prompt {q['prompt']!r}")
        pick = next((i for i in candidates if not used[i] and _fields_agree(q, answers[i])), None)
        if pick is None:
            pick = next((i for i in candidates if not used[i]), None)
        if pick is None:
            pick = next((i for i in candidates if _fields_agree(q, answers[i])), candidates[0])
        used[pick] = True
        out.append(texts[pick])
    return out


def load_answers(answers_dir: str, name: str) -> tuple[list[dict[str, Any]], str]:
    path = os.path.join(answers_dir, name)
    if not os.path.exists(path):
        raise ValueError(
            f"{path}: missing (the answers directory must hold pope.jsonl, captions.jsonl, vqa.jsonl)"
        )
    return read_jsonl(path), path
