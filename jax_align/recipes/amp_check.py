"""AMP's auto-check (spec §5.1, "Auto-check mechanism"): re-rank generated responses against the standard one.

For a group whose best response is the standard answer ``S`` and whose other responses ``G`` were generated:

1. noun chunks of each text, dropping chunks whose head noun is in the §5.1 stop lists (Fig. 5: unnecessary
   and abstract nouns); each noun expanded to its longest chunk ([inferred: spaCy] — spaCy's ``noun_chunks``
   when spaCy and an English model are installed, else :func:`rule_noun_chunks`, an offline rule-based
   chunker: maximal runs of content words between function words and punctuation, leading determiners
   dropped, the last word the head);
2. chunks embedded with a CLIP text encoder (:mod:`jax_align.embedders.clip_text`);
3. ``S[m, n] = cos(f_Sm, f_Gn)``, ``s[m] = max_n S[m, n]``, ``p[m] = 1[s[m] > tau]`` with ``tau = 0.85``,
   local ``Acc = sum(p) / M`` (M = the standard's chunks);
4. the same on the sentences that contain each chunk (global);
5. final ``Acc`` and ``score`` = the means of the local and global values (``score`` = mean of ``s``);
6. generated responses ranked by ``Acc``, ties by ``score`` (then by their incoming order), below ``S``.

The result is a ranked record (``responses`` best first, ``scores`` = integer quality levels, higher = better,
:mod:`jax_align.preference`) with ``amp_check`` holding the per-response ``acc``/``score`` and the chunks, so
``mdpo`` trains on the checked order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TAU = 0.85
UNNECESSARY_NOUNS = ("photo", "image", "photograph", "picture", "figure", "painting")
ABSTRACT_NOUNS = (
    "harmony", "beauty", "feel", "concentration", "life", "matter", "feature", "features", "effect", "skill",
    "detail", "emotion", "emotions", "nature", "time", "background", "placement", "perspective", "universality",
    "attention", "essence", "peace", "composition", "element", "foreground", "appreciation", "atmosphere",
    "artwork", "subject",
)
STOP_NOUNS = frozenset(UNNECESSARY_NOUNS + ABSTRACT_NOUNS)

# Words that never belong to a noun chunk in the rule-based chunker (they end one).
_FUNCTION = frozenset("""
a an the this that these those some any each every no its their his her our my your
at in on of with to from by for near under over above below behind beside besides between into onto across along
around through next against among within without toward towards beneath inside outside upon off up down out about
it they he she we i you there here them him us me which who whom whose what where when why how
and or but nor while as so because if than then also too very not only just even still yet both either neither
is are was were be been being am has have had do does did can could will would shall should may might must
appears appear appeared seems seem seemed shows show shown showing depicts depict depicted contains contain
include includes including looks look looking there's it's yes
""".split())
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*|[.!?;:,()\"]")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 3 else word


def _stopped(head: str) -> bool:
    head = head.lower()
    return head in STOP_NOUNS or _singular(head) in STOP_NOUNS


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def rule_noun_chunks(text: str) -> list[tuple[str, str]]:
    """``(chunk, sentence)`` pairs: maximal runs of content words, the last word the head; chunks whose head is
    a stop noun are dropped. Adverbs in ``-ly`` and ``-ing`` forms end a chunk (they are not nouns)."""
    out = []
    for sent in sentences(text):
        runs: list[list[str]] = [[]]
        for w in _WORD.findall(sent):
            low = w.lower()
            if low in _FUNCTION or not w[0].isalnum() or low.endswith("ly") or (low.endswith("ing") and len(low) > 5):
                runs.append([])
            else:
                runs[-1].append(w)
        out.extend((" ".join(run).lower(), sent) for run in runs if run and not _stopped(run[-1]))
    return out


def _spacy_chunker():
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm")
    except Exception:  # not installed, or no English model: the rule-based chunker
        return None

    def chunks(text: str) -> list[tuple[str, str]]:
        out = []
        for sent in nlp(text).sents:
            for nc in sent.noun_chunks:
                if nc.root.pos_ in ("NOUN", "PROPN") and not _stopped(nc.root.lemma_):
                    words = [t.text for t in nc if t.dep_ != "det"]
                    if words:
                        out.append((" ".join(words).lower(), sent.text.strip()))
        return out

    return chunks


def noun_chunker(prefer_spacy: bool = True):
    """spaCy's chunker when available (and ``prefer_spacy``), else :func:`rule_noun_chunks`; ``(fn, name)``."""
    fn = _spacy_chunker() if prefer_spacy else None
    return (fn, "spacy") if fn is not None else (rule_noun_chunks, "rules")


@dataclass(frozen=True)
class CheckResult:
    acc: float  # mean of local and global accuracy
    score: float  # mean of local and global mean similarity
    local_acc: float
    global_acc: float


def _match(std_vecs: np.ndarray, gen_vecs: np.ndarray, tau: float) -> tuple[float, float]:
    if len(std_vecs) == 0:
        return 0.0, 0.0
    if len(gen_vecs) == 0:
        return 0.0, 0.0
    s = (std_vecs @ gen_vecs.T).max(axis=1)  # s[m] = max_n cos(f_Sm, f_Gn)
    return float((s > tau).mean()), float(s.mean())


def check_group(standard: str, generated: Sequence[str], embed, chunker=rule_noun_chunks,
                tau: float = TAU) -> tuple[list[CheckResult], dict]:
    """Auto-check each of ``generated`` against ``standard`` (steps 1-7 of §5.1). ``embed(texts) -> [N, D]``
    unit vectors. Returns the results and the chunks (``{"standard": [...], "generated": [[...], ...]}``)."""
    std = chunker(standard)
    gens = [chunker(g) for g in generated]
    texts = sorted({t for pairs in [std, *gens] for c, s in pairs for t in (c, s)})
    vec = dict(zip(texts, embed(texts), strict=True)) if texts else {}

    def vecs(items):
        return np.stack([vec[t] for t in items]) if items else np.zeros((0, 1), np.float32)

    std_c, std_s = vecs([c for c, _ in std]), vecs([s for _, s in std])
    results = []
    for g in gens:
        local = _match(std_c, vecs([c for c, _ in g]), tau)
        glob = _match(std_s, vecs(sorted({s for _, s in g})), tau)
        results.append(CheckResult(acc=(local[0] + glob[0]) / 2, score=(local[1] + glob[1]) / 2,
                                   local_acc=local[0], global_acc=glob[0]))
    return results, {"standard": [c for c, _ in std], "generated": [[c for c, _ in g] for g in gens]}


def rerank(results: Sequence[CheckResult]) -> list[int]:
    """Indices of the generated responses, best first: by ``acc``, ties by ``score``, then incoming order."""
    return sorted(range(len(results)), key=lambda i: (-results[i].acc, -results[i].score, i))


def _text(response) -> str:
    """The assistant turns of a response (a tuple of messages), joined: what the auto-check reads."""
    return "\n".join(m.content for m in response if m.role == "assistant").strip()


def _as_record_value(messages, role: str):
    """A single ``role`` message as its text, else the messages as ``[{role, content}]``."""
    if len(messages) == 1 and messages[0].role == role:
        return messages[0].content
    return [{"role": m.role, "content": m.content} for m in messages]


def check_file(groups, embed, *, chunker=rule_noun_chunks, tau: float = TAU,
               out_dir: str) -> tuple[list[dict], dict]:
    """Auto-check parsed ranked groups ``[(raw_record, PreferenceGroup, base_dir)]``; returns the re-ranked
    records (ranked format with ``scores`` levels and ``amp_check``) and stats (``reordered`` groups, groups whose
    standard answer has ``no_chunks``)."""
    from jax_align.data.image_paths import rebase_images

    out, stats = [], {"groups": 0, "reordered": 0, "no_chunks": 0, "tau": tau}
    for data, group, base_dir in groups:
        texts = [_text(r) for r in group.responses]
        results, chunks = check_group(texts[0], texts[1:], embed, chunker=chunker, tau=tau)
        order = rerank(results)
        stats["groups"] += 1
        stats["reordered"] += order != sorted(order)
        stats["no_chunks"] += not chunks["standard"]
        new = [0] + [1 + i for i in order]
        k = len(new)
        rec = rebase_images({key: v for key, v in data.items() if key in ("id", "image", "images")}, base_dir, out_dir)
        rec["prompt"] = _as_record_value(group.prompt, "user")
        rec["responses"] = [_as_record_value(group.responses[j], "assistant") for j in new]
        rec["scores"] = [float(k - 1 - r) for r in range(k)]
        amp = data.get("amp")
        if isinstance(amp, dict) and isinstance(amp.get("sources"), list) and len(amp["sources"]) == k:
            src = group.source_order or tuple(range(k))
            rec["amp"] = {**amp, "sources": [amp["sources"][src[j]] for j in new], "checked": True}
        rec["amp_check"] = {
            "acc": [1.0] + [round(results[i].acc, 6) for i in order],
            "score": [1.0] + [round(results[i].score, 6) for i in order],
            "local_acc": [1.0] + [round(results[i].local_acc, 6) for i in order],
            "global_acc": [1.0] + [round(results[i].global_acc, 6) for i in order],
            "previous_rank": new,
            "standard_chunks": chunks["standard"],
        }
        out.append(rec)
    return out, stats
