"""The world's language: detailed captions, questions and answers generated from scene records.

All text is built from a few templates, so the vocabulary is tiny and regular:

* caption sentence: ``"There is a small red circle at the top left."``, one per object in canonical order;
* existence: ``"Is there a circle in the image?"`` / ``"Is there a red circle in the image?"`` -> ``"Yes."`` /
  ``"No."``;
* attributes: ``"What color is the object at the top left?"`` -> ``"Red."`` (also ``shape`` and ``size``);
* count: ``"How many circles are there?"`` -> ``"Two."``;
* position: ``"Where is the red circle?"`` -> ``"Top left."`` (asked only when the description is unique).

Answers are one capitalised phrase ending with a period; the evaluator's VQA rule lowercases and strips
punctuation, so ``"Red."`` matches ``"red"``.
"""

from __future__ import annotations

from jax_align.world.config import NUMBER_WORDS, POSITIONS, WorldConfig
from jax_align.world.scenes import Scene, WorldObject

# The first prompt of each tuple is the one used by the benchmark files.
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
)
BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the image?",
    "Write a caption for the image.",
)
VQA_CATEGORIES: tuple[str, ...] = ("color", "shape", "size", "count", "position")
# what a short question asks, by its template's first words (the world's one classification of its questions)
QUESTION_KINDS: tuple[tuple[str, str], ...] = (("Is there", "exist"), ("What color", "color"), ("What shape", "shape"),
                                                ("What size", "size"), ("How many", "count"), ("Where is", "position"))


def question_kind(question: str) -> str | None:
    """``exist`` or a VQA category for one of the world's short questions (the ``<image>`` line is ignored);
    None for anything else (captions)."""
    line = question.split("\n")[-1]
    return next((kind for prefix, kind in QUESTION_KINDS if line.startswith(prefix)), None)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def short_answer(text: str) -> str:
    """``"top left"`` -> ``"Top left."``."""
    return capitalize(text) + "."


def object_sentence(obj: WorldObject) -> str:
    return f"There is {article(obj.size)} {obj.size} {obj.color} {obj.shape} at the {obj.position}."


def caption(scene: Scene) -> str:
    """The detailed caption: one sentence per object, in the scene's canonical order."""
    return " ".join(object_sentence(o) for o in scene.objects)


def caption_of(objects: list[WorldObject] | tuple[WorldObject, ...]) -> str:
    return " ".join(object_sentence(o) for o in objects)


def existence_question(shape: str, color: str | None = None) -> str:
    noun = f"{color} {shape}" if color else shape
    return f"Is there {article(noun)} {noun} in the image?"


def yes_no(value: bool) -> str:
    return "Yes." if value else "No."


def attribute_question(attribute: str, position: str) -> str:
    return f"What {attribute} is the object at the {position}?"


def count_question(plural: str) -> str:
    return f"How many {plural} are there?"


def count_answer(n: int) -> str:
    return short_answer(NUMBER_WORDS[n])


def position_question(description: str) -> str:
    return f"Where is the {description}?"


def unique_description(scene: Scene, obj: WorldObject) -> str | None:
    """The shortest of ``shape`` / ``color shape`` / ``size color shape`` naming only ``obj``, else None."""
    for keys in (("shape",), ("color", "shape"), ("size", "color", "shape")):
        matches = [o for o in scene.objects if all(getattr(o, k) == getattr(obj, k) for k in keys)]
        if len(matches) == 1:
            return " ".join(getattr(obj, k) for k in keys)
    return None


def vqa_for(scene: Scene, category: str, obj: WorldObject, config: WorldConfig) -> tuple[str, str] | None:
    """A (question, answer) pair of one category about ``obj``; None when the question would be ambiguous."""
    if category in ("color", "shape", "size"):
        return attribute_question(category, obj.position), short_answer(getattr(obj, category))
    if category == "count":
        return count_question(config.plural(obj.shape)), count_answer(scene.count(obj.shape))
    if category == "position":
        description = unique_description(scene, obj)
        if description is None:
            return None
        return position_question(description), short_answer(obj.position)
    raise ValueError(f"category: unknown VQA category {category!r}; choose from {VQA_CATEGORIES}")


def world_words(config: WorldConfig) -> list[str]:
    """Every lowercase word the world's templates can write (sorted), for the tokenizer and the report."""
    texts: list[str] = [*CAPTION_PROMPTS, *BRIEF_PROMPTS, "yes no", *NUMBER_WORDS]
    texts.append("there is a an at the in image what how many are where")
    texts.extend(config.shapes)
    texts.extend(config.plural(s) for s in config.shapes)
    texts.extend(config.colors)
    texts.extend(config.sizes)
    texts.extend(POSITIONS)
    texts.extend(attribute_question(a, "center") for a in ("color", "shape", "size"))
    words: set[str] = set()
    for text in texts:
        for w in text.lower().replace(".", " ").replace("?", " ").split():
            words.add(w)
    return sorted(words)
