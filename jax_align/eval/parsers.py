"""The pinned answer parsers of ``jax-align eval`` (issue 6). Change nothing here without a new issue.

One normalisation serves all three benchmarks:

    normalize(text) = text.lower(), every character of ``string.punctuation`` deleted (not replaced by a
                      space), then whitespace runs collapsed to one space and both ends stripped.

* POPE: the first word of ``normalize(response)``: ``"yes"`` -> yes, ``"no"`` -> no, anything else (another
  word, or an empty response) -> ``"neither"``. ``"Yes."``, ``" yes, there is"`` and ``"YES"`` are yes;
  ``"Yes/no"`` normalises to ``"yesno"`` and is neither.
* VQA: correct when ``normalize(response) == normalize(answer)`` or ``normalize(response)`` starts with
  ``normalize(answer) + " "``. ``"Top left."`` answers ``"top left"``; ``"Top"`` does not.
* CHAIR mentions: the words of ``normalize(caption)`` are scanned left to right; every word that is one of the
  world's shape words, singular or plural, is a mention of that shape, and the word directly before it, when
  it is one of the world's colour words, is the mention's colour (otherwise the mention has no colour).
  ``"There is a small red circle."`` mentions (red, circle); ``"two red circles"`` mentions (red, circle);
  ``"a red small circle"`` mentions (None, circle). Negations are not understood (``"no square"`` mentions a
  square), as in the original CHAIR. Because punctuation is deleted, a missing space after a period
  (``"circle.There"``) joins two words and hides the mention, and a colour ending one sentence attaches to a
  shape starting the next (``"red. Circle"``); well-formed text has neither.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lowercase, delete ``string.punctuation``, collapse whitespace and strip."""
    return " ".join(text.lower().translate(_DELETE_PUNCTUATION).split())


def parse_yes_no(response: str) -> str:
    """``"yes"``, ``"no"`` or ``"neither"`` from the first word of the normalised response."""
    words = normalize(response).split(" ")
    first = words[0] if words else ""
    return first if first in ("yes", "no") else "neither"


def vqa_correct(response: str, answer: str) -> bool:
    """The pinned VQA rule: equal after normalisation, or the answer plus a space starts the response."""
    r, a = normalize(response), normalize(answer)
    return r == a or r.startswith(a + " ")


@dataclass(frozen=True)
class Mention:
    """An object mention in a caption: a shape, with the colour written directly before it (or None)."""

    shape: str
    color: str | None


def extract_mentions(caption: str, shape_words: dict[str, str], colors: Iterable[str]) -> list[Mention]:
    """All object mentions of a caption, in order.

    Args:
        caption: the generated text.
        shape_words: every shape word (singular and plural, lowercase) -> its singular shape name.
        colors: the world's colour words (lowercase).
    """
    color_set = set(colors)
    words = normalize(caption).split(" ")
    mentions = []
    for i, word in enumerate(words):
        shape = shape_words.get(word)
        if shape is None:
            continue
        color = words[i - 1] if i > 0 and words[i - 1] in color_set else None
        mentions.append(Mention(shape, color))
    return mentions
