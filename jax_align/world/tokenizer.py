"""A word-level Hugging Face tokenizer for the world's language, built offline and deterministically.

Design:

* Pre-tokenization is GPT-2's byte-level split (``ByteLevel(add_prefix_space=False)``): a word carries its
  leading space (``" circle"`` -> ``"Ġcircle"``), punctuation is its own piece, and the ``ByteLevel`` decoder
  maps pieces back to bytes, so ``decode(encode(text)) == text`` exactly for any text whose pieces are known
  (spaces before punctuation included, ``clean_up_tokenization_spaces`` is off).
* The model is ``WordLevel``: one token per piece. The vocabulary ("training") is every piece of an exhaustive
  enumeration of the world's texts (all caption sentences, questions, answers and prompts, rendered through
  the chat template), plus, for robustness, each world word in four forms (``w``, ``Ġw``, ``W``, ``ĠW``),
  digits and common punctuation with and without a leading space. Anything else encodes to ``<unk>``.
* Special tokens: ``<pad>`` (0), ``<s>`` (1), ``</s>`` (2), ``<unk>`` (3), ``<image>`` (4). ``encode`` adds no
  special tokens by itself; the chat template writes ``<s>`` and ends each assistant turn with ``</s>``.
* Chat template (LLaVA-1.5 style): ``<s>USER: <image>\\nQUESTION ASSISTANT: ANSWER</s>``; with
  ``add_generation_prompt`` it ends in ``ASSISTANT:`` and the answer's first token carries the space
  (``"ĠThere"``), exactly as in training, so a decoded answer starts with one space (strip it).
  ``content`` may be a string or a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts.

The files are written directly (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``),
byte-identical on every run, and load with ``transformers.AutoTokenizer.from_pretrained(dir)``.
"""

from __future__ import annotations

import os
import string
from itertools import product

from jax_align.world.config import NUMBER_WORDS, POSITIONS, WorldConfig
from jax_align.world.text import (
    BRIEF_PROMPTS,
    CAPTION_PROMPTS,
    attribute_question,
    count_answer,
    count_question,
    existence_question,
    position_question,
    short_answer,
    world_words,
)

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE)
ROLE_WORDS: tuple[str, ...] = ("USER", "ASSISTANT")

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set content = ns.text -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- content + ' ' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'USER: ' + content + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + content + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def render_chat(question: str, answer: str | None = None) -> str:
    """The chat template's output for one user turn (and optionally the answer), as plain Python.

    Equal to ``apply_chat_template([{"role": "user", "content": question}, ...], tokenize=False)`` with
    ``add_generation_prompt`` when ``answer`` is None.
    """
    text = f"{BOS}USER: {question} "
    return text + ("ASSISTANT:" if answer is None else f"ASSISTANT: {answer}{EOS}")


def world_corpus(config: WorldConfig) -> list[str]:
    """Every kind of text the world writes (each template with each filler), as chat-formatted strings."""
    answers: list[str] = ["Yes.", "No."]
    sentences: list[str] = []
    for size, color, shape, position in product(config.sizes, config.colors, config.shapes, POSITIONS):
        sentences.append(f"There is a {size} {color} {shape} at the {position}.")
    caption = " ".join(sentences)
    questions: list[str] = [*CAPTION_PROMPTS, *BRIEF_PROMPTS]
    for shape in config.shapes:
        questions.append(existence_question(shape))
        questions.append(count_question(config.plural(shape)))
        for color in config.colors:
            questions.append(existence_question(shape, color))
            questions.append(position_question(f"{color} {shape}"))
            for size in config.sizes:
                questions.append(position_question(f"{size} {color} {shape}"))
        questions.append(position_question(shape))
        answers.append(short_answer(shape))
    for position in POSITIONS:
        for attribute in ("color", "shape", "size"):
            questions.append(attribute_question(attribute, position))
        answers.append(short_answer(position))
    answers.extend(short_answer(c) for c in config.colors)
    answers.extend(short_answer(s) for s in config.sizes)
    answers.extend(count_answer(i) for i in range(len(NUMBER_WORDS)))
    corpus = [render_chat(f"{IMAGE}\n{q}") for q in questions]
    corpus.extend(render_chat(f"{IMAGE}\n{questions[0]}", a) for a in [*answers, caption])
    corpus.extend(judge_texts())
    return corpus


def judge_texts() -> list[str]:
    """The words judges write and read: the generative critic's prompt and its ``score: N`` lines (EACO, spec
    §1.3), MM-RLHF's critic instruction (spec §4.2), and the numbers 0-100, so that the world's models can
    be trained as critics and their scores parsed."""
    from jax_align.data.critic_text import DIMENSIONS, RUBRIC, critic_target
    from jax_align.data.critique import critic_user_turn
    from jax_align.recipes.align2llava_rewrite import REVIEW_PROMPT, REWRITE_PROMPT
    from jax_align.recipes.eaco import DESCRIPTION_HEADER, DESCRIPTION_PROMPTS

    numbers = [str(i) for i in range(101)]
    texts = [f"Question: q\nResponse: a\n{RUBRIC}", critic_target(7.5, DIMENSIONS, (1, 2, 3)),
             critic_user_turn("q", "a"), " ".join(numbers),
             " ".join(DESCRIPTION_PROMPTS), f"{DESCRIPTION_HEADER}\nd",  # EACO's prompts, spec §1.2
             REWRITE_PROMPT.format(question="q", answer="a"), REVIEW_PROMPT.format(answer="a", rewrite="r")]  # §3.5
    # each word both at the start of a line and after a space (byte-level pieces differ)
    return texts + [" " + " ".join(t.split()) for t in texts] + ["\n".join(" ".join(texts).split())]


def vocabulary(config: WorldConfig) -> list[str]:
    """Byte-level pieces of the tokenizer, specials first (ids 0-4), then sorted."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pieces: set[str] = set()

    def add(text: str) -> None:
        for special in SPECIAL_TOKENS:
            text = text.replace(special, "\x00")
        for chunk in text.split("\x00"):
            if chunk:
                pieces.update(p for p, _ in pre.pre_tokenize_str(chunk))

    for text in world_corpus(config):
        add(text)
    for word in [*world_words(config), *ROLE_WORDS]:
        for form in {word, word.lower(), word.capitalize()}:
            add(form)
            add(" " + form)
    for ch in string.digits + ".,?!:;'\"-()":
        add(ch)
        add(" " + ch)
    for ws in (" ", "\n", "\n\n", " \n"):
        add(ws)
    pieces -= set(SPECIAL_TOKENS)
    return [*SPECIAL_TOKENS, *sorted(pieces)]


def build_backend(config: WorldConfig | None = None):
    """The ``tokenizers.Tokenizer`` object (WordLevel over byte-level pieces, specials registered)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    config = config or WorldConfig()
    vocab = {piece: i for i, piece in enumerate(vocabulary(config))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    return tok


def build_tokenizer(out_dir: str | os.PathLike[str], config: WorldConfig | None = None) -> str:
    """Write the world's tokenizer to ``out_dir`` (created if needed) and return the directory path.

    Files: ``tokenizer.json``, ``tokenizer_config.json`` (with ``chat_template``) and
    ``special_tokens_map.json``.
    Load with ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    tok = build_backend(config)
    tok.save(os.path.join(out, "tokenizer.json"), pretty=True)
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "image_token": IMAGE,
        "extra_special_tokens": {"image_token": IMAGE},
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "image_token": IMAGE,
    }
    for name, payload in (
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", special_map),
    ):
        from jax_align.atomic import write_json

        write_json(os.path.join(out, name), payload)
    return out
