"""Align²LLaVA's LLM preference alignment: the inner LLM rewrites answers in its own manner, then reviews them
(spec §3.1 step 6, §3.5; mechanics from the sister paper 2503.18320, prompts [inferred]: not retrieved).

* Only free-form ("soft-format") answers are rewritten: at least ``min_words`` words and no structure (list
  items, numbered lines, tables, code). Short or structured answers are kept as they are.
* Rewrite: the model's **text decoder alone** (no image: the prompt carries no image, so no image tokens) is
  asked to restate the answer in its own manner without changing its meaning, or to return it unchanged if it
  already fits (:data:`REWRITE_PROMPT`); greedy decoding.
* Review (optional): the same model judges whether the rewrite keeps the original meaning
  (:data:`REVIEW_PROMPT`); unless it answers yes, the original answer is kept. An empty rewrite is rejected too.

Counts: ``rewritten`` (new text kept), ``unchanged`` (the model returned the answer as it was), ``rejected``
(review said no, or empty), ``untouched`` (short or structured).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jax_align.sampling import SamplingParams

REWRITE_PROMPT = ("Rewrite the answer below in your own words and manner. Do not change its meaning. If it already "
                  "reads the way you would write it, return it unchanged.\nQuestion: {question}\nAnswer: {answer}")
REVIEW_PROMPT = ("Does the rewritten answer keep the meaning of the original answer? Reply Yes or No.\n"
                 "Original: {answer}\nRewritten: {rewrite}")
_STRUCTURED = re.compile(r"(^\s*([-*•]|\d+[.)])\s)|(\|.*\|)|(```)", re.MULTILINE)


@dataclass(frozen=True)
class RewriteConfig:
    review: bool = False
    min_words: int = 8
    max_new_tokens: int = 1024
    batch_size: int = 8


def is_free_form(answer: str, min_words: int = 8) -> bool:
    """A soft-format answer: long enough and without list, table or code structure (§3.5)."""
    return len(answer.split()) >= min_words and not _STRUCTURED.search(answer)


def _said_yes(text: str) -> bool:
    words = text.strip().lower().split()
    return bool(words) and words[0].strip(".,!:;") == "yes"


def _turn_slots(record: dict) -> list[tuple[str, int, int]]:
    """(field, question index, answer index) of every human -> assistant turn pair."""
    if "conversations" in record:
        turns, who, key = record["conversations"], "from", ("human", "gpt")
        field = "conversations"
    else:
        turns, who, key = record.get("messages", []), "role", ("user", "assistant")
        field = "messages"
    return [(field, i, i + 1) for i in range(len(turns) - 1)
            if turns[i].get(who) == key[0] and turns[i + 1].get(who) == key[1]]


def _value(turn: dict) -> str:
    v = turn.get("value", turn.get("content"))
    return v if isinstance(v, str) else ""


def rewrite_records(model, records: Sequence[dict], cfg: RewriteConfig = RewriteConfig()) -> tuple[list[dict], dict]:
    """Records with their free-form answers rewritten by ``model``'s text decoder (and reviewed)."""
    jobs = []  # (record, field, answer index, question, answer)
    untouched = 0
    for r, rec in enumerate(records):
        for field, qi, ai in _turn_slots(rec):
            q = _value(rec[field][qi]).replace("<image>\n", "").replace("<image>", "").strip()
            a = _value(rec[field][ai]).strip()
            if is_free_form(a, cfg.min_words):
                jobs.append((r, field, ai, q, a))
            else:
                untouched += 1
    sp = SamplingParams(max_new_tokens=cfg.max_new_tokens)
    outs = model.generate([{"prompt": REWRITE_PROMPT.format(question=q, answer=a), "image": None}
                           for _, _, _, q, a in jobs], sp, batch_size=cfg.batch_size) if jobs else []
    rewrites = [o.texts[0].strip() for o in outs]
    verdicts = [True] * len(jobs)
    if cfg.review and jobs:
        reviews = model.generate([{"prompt": REVIEW_PROMPT.format(answer=a, rewrite=w), "image": None}
                                  for (_, _, _, _, a), w in zip(jobs, rewrites, strict=True)],
                                 SamplingParams(max_new_tokens=8), batch_size=cfg.batch_size)
        verdicts = [_said_yes(o.texts[0]) for o in reviews]
    out = [dict(rec) for rec in records]
    for rec in out:
        for field in ("conversations", "messages"):
            if field in rec:
                rec[field] = [dict(t) for t in rec[field]]
    counts = {"answers": len(jobs) + untouched, "rewritten": 0, "unchanged": 0, "rejected": 0,
              "untouched": untouched}
    for (r, field, ai, _, a), w, ok in zip(jobs, rewrites, verdicts, strict=True):
        if not w or not ok:
            status = "rejected"
        elif w == a:
            status = "unchanged"
        else:
            status = "rewritten"
            turn = out[r][field][ai]
            turn["value" if "value" in turn else "content"] = w
        counts[status] += 1
        out[r].setdefault("rewrite", []).append({"turn": ai, "status": status, "original": a,
                                                 **({"rewrite": w} if status == "rejected" and w else {})})
    return out, counts
