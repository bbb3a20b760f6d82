"""Align²LLaVA curation pieces (arXiv 2409.18541, spec §3): reward-model pairs and augmentation, keep-top per
instruction type.

* :func:`rm_pairs`: every ``(i, j)`` with ``score_i > score_j`` inside a group, ties dropped (§3.2,
  ``llava_trainer.py::compute_loss``), through :mod:`jax_align.data.pairing`.
* :func:`augment_answer` / :func:`augment_questions`: the corrupted side of an augmentation pair (§3.2,
  ``augment_rate = 0.25``): answers are word-shuffled or cropped to a random word subset (1/2 each); question
  sets get a question shuffled or cropped, or random questions duplicated (1/3 each). They return strings (the
  code's ``' '.join`` over a string spaced out characters; not replicated).
* :func:`augmentation_groups`: per candidate, with probability ``rate``, a scored group (original ≻ corrupted).
* :func:`pairwise_accuracy`: the fraction of ``score_i > score_j`` pairs a model orders the same way (§3.2 eval).
* :func:`keep_top`: per instruction type, the indices of the best ``keep`` fraction (§3.1 steps 3-4,
  ``post_process/rank_{questions,answers}.py``: keep_ratio 0.3, separately for complex_reasoning /
  conversation / detail).
* :func:`question_text` / :func:`answer_turns`: what the two reward models read from a LLaVA conversation: all
  human turns, one per line (question RM), and each (question, answer) turn pair (answer RM).
* :func:`rm_groups`: Align²LLaVA preference records (§3.6) as ``scored`` groups the ``reward`` stage trains on:
  a question record ``{id, image, questions: [[q, ...], ...], score}`` becomes one group whose responses are the
  question sets (one question per line) after the prompt ``<image>``; an answer record's every human/gpt turn
  pair (gpt ``value`` a list of answers with a ``score`` list) becomes one group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jax_align.data.pairing import all_pairs

AUGMENT_RATE = 0.25  # spec §3.2
KEEP_RATIO = 0.3  # spec §3.1 steps 3-4
TYPES = ("complex_reasoning", "conversation", "detail")


def rm_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    return all_pairs(scores)


def augment_answer(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    if rng.random() < 0.5:  # word shuffle
        order = rng.permutation(len(words))
        return " ".join(words[int(i)] for i in order)
    k = int(rng.integers(1, len(words)))  # random word-subset crop (order kept)
    keep = sorted(int(i) for i in rng.choice(len(words), size=k, replace=False))
    return " ".join(words[i] for i in keep)


def augment_questions(questions: Sequence[str], rng: np.random.Generator) -> list[str]:
    qs = list(questions)
    if not qs:
        return qs
    mode = int(rng.integers(3))
    if mode == 2 or all(len(q.split()) < 2 for q in qs):  # duplicate random questions
        extra = [qs[int(i)] for i in rng.integers(len(qs), size=max(1, len(qs) // 2))]
        return qs + extra
    candidates = [i for i, q in enumerate(qs) if len(q.split()) >= 2]
    i = candidates[int(rng.integers(len(candidates)))]
    words = qs[i].split()
    if mode == 0:
        qs[i] = " ".join(words[int(j)] for j in rng.permutation(len(words)))
    else:
        k = int(rng.integers(1, len(words)))
        qs[i] = " ".join(words[j] for j in sorted(int(j) for j in rng.choice(len(words), size=k, replace=False)))
    return qs


def augmentation_groups(groups: Sequence[dict], *, rate: float = AUGMENT_RATE, seed: int = 1234,
                        questions: bool = False) -> list[dict]:
    """Extra scored groups ``{..., responses: [original, corrupted], scores: [1, 0], augmented: kind}``.

    ``groups``: scored records (``responses`` + ``scores``; for question sets each response is the set joined
    by newlines). Each candidate gets a pair with probability ``rate``; a corruption equal to the original is
    dropped.
    """
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        for k, response in enumerate(g["responses"]):
            if rng.random() >= rate:
                continue
            if questions:
                bad = "\n".join(augment_questions(response.split("\n"), rng))
            else:
                bad = augment_answer(response, rng)
            if bad != response:
                extra = {key: v for key, v in g.items() if key not in ("responses", "scores", "critiques")}
                if "id" in extra:  # ids stay unique (data validate reports duplicates)
                    extra["id"] = f"{extra['id']}-aug{k}"
                out.append({**extra, "responses": [response, bad], "scores": [1.0, 0.0], "augmented": True})
    return out


def pairwise_accuracy(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[float, int]:
    """(accuracy, pairs) over every ``score_i > score_j`` pair of each ``(truth, predicted)`` group."""
    right = total = 0
    for truth, predicted in groups:
        for i, j in rm_pairs(truth):
            total += 1
            right += predicted[i] > predicted[j]
    return (right / total if total else float("nan")), total


def keep_top(scores: Sequence[float], types: Sequence[str], keep: float = KEEP_RATIO) -> list[int]:
    """Indices kept: per type, the ``round(keep * n_type)`` highest scores (stable for ties), in input order."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    kept: list[int] = []
    for t in dict.fromkeys(types):
        idx = [i for i, x in enumerate(types) if x == t]
        n = int(round(keep * len(idx)))
        kept.extend(sorted(idx, key=lambda i: -float(scores[i]))[:n])
    return sorted(kept)


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return ""


def _turns(record: dict) -> list[tuple[str, str]]:
    if "conversations" in record:
        return [(t.get("from", ""), _text(t.get("value"))) for t in record["conversations"]]
    return [({"user": "human", "assistant": "gpt"}.get(t.get("role"), t.get("role", "")), _text(t.get("content")))
            for t in record.get("messages", [])]


def _clean(q: str) -> str:
    return q.replace("<image>\n", "").replace("<image>", "").strip()


def question_text(record: dict) -> str:
    """All human turns, one per line, image placeholder removed (§3.1 step 3.1)."""
    return "\n".join(_clean(v) for who, v in _turns(record) if who == "human")


def answer_turns(record: dict) -> list[tuple[str, str]]:
    """Each (question, answer) turn pair of a conversation (§3.6: each turn pair is handled independently)."""
    turns = _turns(record)
    return [(_clean(turns[i][1]), turns[i + 1][1].strip()) for i in range(len(turns) - 1)
            if turns[i][0] == "human" and turns[i + 1][0] == "gpt"]


def answer_turn_indices(record: dict) -> list[int]:
    """Index (in ``conversations`` / ``messages``) of the answer turn of each pair of :func:`answer_turns`."""
    turns = _turns(record)
    return [i + 1 for i in range(len(turns) - 1) if turns[i][0] == "human" and turns[i + 1][0] == "gpt"]


def with_answers(record: dict, answers: dict[int, str]) -> dict:
    """A copy of ``record`` whose answer turns ``{turn index: text}`` are replaced (conversations or messages)."""
    new = dict(record)
    key, field = ("conversations", "value") if "conversations" in record else ("messages", "content")
    turns = [dict(t) for t in record[key]]
    for i, text in answers.items():
        turns[i][field] = text
    new[key] = turns
    return new


def best_candidates(rewards: Sequence[Sequence[float]]) -> list[int]:
    """Per turn, the index of the candidate with the highest reward (the first on ties, so the original answer,
    candidate 0, wins a tie; §3.1 step 4: keep the best per turn)."""
    return [int(np.argmax(r)) for r in rewards]


class RecordFault(ValueError):
    """A malformed preference record: ``record`` (1-based), ``field``, ``message``."""

    def __init__(self, record: int, field: str, message: str):
        super().__init__(f"record {record}: {field}: {message}")
        self.record, self.field, self.message = record, field, message


def _fault(n: int, field: str, message: str) -> RecordFault:
    return RecordFault(n, field, message)


def rm_groups(record: dict, n: int, kind: str) -> list[dict]:
    """``scored`` groups of one question (``kind="questions"``) or answer preference record; raises
    :class:`RecordFault` for a malformed one."""
    base = {k: record[k] for k in ("id", "image") if k in record}
    if kind == "questions":
        qs, scores = record.get("questions"), record.get("score")
        if not isinstance(qs, list) or not qs:
            raise _fault(n, "questions", "missing or not a list of question lists")
        sets = []
        for i, q in enumerate(qs):
            q = [q] if isinstance(q, str) else q
            if not isinstance(q, list) or not q or not all(isinstance(x, str) and x.strip() for x in q):
                raise _fault(n, f"questions[{i}]", "expected a non-empty list of question strings")
            sets.append("\n".join(x.strip() for x in q))
        if not isinstance(scores, list) or len(scores) != len(sets) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
            raise _fault(n, "score", f"expected {len(sets)} numbers, one per question set")
        return [{**base, "prompt": "<image>", "responses": sets, "scores": [float(x) for x in scores]}]
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise _fault(n, "conversations", "expected human and gpt turns")
    out = []
    for i in range(len(turns) - 1):
        human, gpt = turns[i], turns[i + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict) and human.get("from") == "human"
                and gpt.get("from") == "gpt"):
            continue
        answers, scores = gpt.get("value"), gpt.get("score")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise _fault(n, f"conversations[{i + 1}].value", "expected a list of answer strings")
        if not isinstance(scores, list) or len(scores) != len(answers) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
            raise _fault(n, f"conversations[{i + 1}].score", f"expected {len(answers)} numbers, one per answer")
        q = _clean(_text(human.get("value")))
        out.append({**base, "prompt": q, "responses": list(answers), "scores": [float(x) for x in scores]})
    if not out:
        raise _fault(n, "conversations", "no human/gpt turn pair with a list of scored answers")
    if len(out) > 1 and "id" in base:  # one group per turn pair, ids kept unique
        out = [{**g, "id": f"{base['id']}-t{t}"} for t, g in enumerate(out)]
    return out


# §3.2: the reward models read LLaVA's ``plain`` conversation (no system text, no roles, no chat template):
# answer RM ``"<image>\nQuestion: {q}\nAnswer: {a}\n"``, question RM ``"<image>\n" + "\n".join(questions)``
# (+ the separator "\n"), the score read on the last token by a linear head without bias. As a chat template:
# a user turn renders as ``<image>\n`` (when it holds the image) then ``Question: {q}\nAnswer: `` (when it has
# text), an assistant turn as its text and "\n". The tokenizer's BOS comes first, as LLaVA's tokenizer adds it.
PLAIN_TEMPLATE = (
    "{{- bos_token -}}{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if '<image>' in message['content'] -%}{{- '<image>\n' -}}{%- endif -%}"
    "{%- set q = message['content'] | replace('<image>', '') | trim -%}"
    "{%- if q -%}{{- 'Question: ' + q + '\nAnswer: ' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + '\n' -}}{%- endif -%}"
    "{%- endfor -%}")
TEMPLATES = ("plain", "chat")  # plain: §3.2 (default); chat: the base model's own chat template


def with_template(model_dir: str, out_dir: str, template: str = "plain") -> str:
    """A copy of the model directory ``model_dir`` whose chat template is ``template`` (``plain``: §3.2's
    :data:`PLAIN_TEMPLATE`; ``chat``: unchanged), written atomically to ``out_dir``; returns ``out_dir``.

    The ``reward`` stage trains with the template of the directory it starts from and saves it beside the
    model, so a reward model trained from this copy scores with the same template in ``rm-eval`` and
    ``rank-*``. An existing ``out_dir`` is replaced."""
    import json
    import shutil

    from jax_align.atomic import atomic_dir

    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    with atomic_dir(out_dir) as work:
        shutil.copytree(model_dir, work, dirs_exist_ok=True)
        if template == "plain":
            cfg_path = os.path.join(work, "tokenizer_config.json")
            if not os.path.isfile(cfg_path):
                raise ValueError(f"{model_dir}: no tokenizer_config.json to carry the plain template")
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            cfg["chat_template"] = PLAIN_TEMPLATE
            with open(cfg_path, "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent=2)
            for name in ("chat_template.jinja", "chat_template.json"):  # newer transformers read these first
                if os.path.exists(os.path.join(work, name)):
                    os.remove(os.path.join(work, name))
            with open(os.path.join(work, "align2llava_template.json"), "w", encoding="utf-8") as f:
                json.dump({"template": "plain", "spec": "§3.2"}, f)
    return out_dir
