"""Chat-template tokenization with image-token expansion, label masks, and image-aware truncation.

A group (an SFT conversation, or a prompt with K responses) becomes a :class:`TokenizedGroup`:

* ``prefix``: BOS, system/user turns, image tokens and the assistant header, rendered by the checkpoint's
  chat template with ``add_generation_prompt=True``; never a target. Every ``<image>`` placeholder becomes
  exactly as many copies of the image-token id as the model's vision front end gives that image (fixed for
  LLaVA-1.5, size-dependent for LLaVA-NeXT / OneVision; :mod:`jax_align.models.frontends`).
* ``responses[k]``: the rest of the conversation for response k: the tokens the template renders after the
  prefix. Tokens of assistant turns (content and the template's end-of-turn text) are targets; later user
  turns (multi-round AMP levels, multi-turn SFT) are context. Assistant round r (0-based over the whole
  conversation) has token weight ``1 + round_weight * r`` (AMP "loss_turbo", spec 5.2).

The prefix and each response are tokenized separately (as TRL does for DPO), so the prefix is token-identical
across responses and can be shared (issue 4, item 4).

:func:`truncate_group` implements item 5: image tokens are never cut; responses are shortened first (keeping
their start), then the prompt text (dropping its earliest tokens, at most half of them by default); if the
image tokens, template tokens, the rest of the prompt and the minimal responses still do not fit,
:class:`TooLongError` names the needed length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from jax_align.data.records import IMAGE_PLACEHOLDER, Message, PreferenceGroup, SFTExample
from jax_align.data.vision_tokens import image_token_id, load_model_config, pad_token_id

LAYOUTS = ("prefix_shared", "naive")
RENDER_CACHE = 4096  # rendered prompts a ChatTokenizer keeps (see ChatTokenizer.render)


class TemplateError(ValueError):
    """The chat template cannot be used to split prompt and responses."""


class TooLongError(ValueError):
    """A group does not fit ``max_length`` even after truncation."""


@dataclass(frozen=True)
class TokenizedResponse:
    ids: np.ndarray  # int32 [R]
    trained: np.ndarray  # bool [R]: this token is a target
    weights: np.ndarray  # float32 [R]: per-token loss weight (0 where not trained)
    min_keep: int = 0  # truncation keeps at least this many tokens (through the last image block)
    num_images: int = 0  # image blocks in this response

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class TokenizedGroup:
    prefix: np.ndarray  # int32 [P]
    prefix_cuttable: np.ndarray  # bool [P]: user text that truncation may drop
    responses: tuple[TokenizedResponse, ...]
    num_prefix_images: int
    num_response_images: tuple[int, ...]

    @property
    def num_images(self) -> int:
        return self.num_prefix_images + sum(self.num_response_images)

    def length(self, layout: str) -> int:
        """Tokens one row needs: ``naive`` = prefix + longest response; ``prefix_shared`` = prefix + all."""
        lengths = [len(r) for r in self.responses]
        return int(self.prefix.shape[0]) + (sum(lengths) if layout == "prefix_shared" else max(lengths))


def _group_length(prefix_len: int, lengths: Sequence[int], layout: str) -> int:
    return prefix_len + (sum(lengths) if layout == "prefix_shared" else max(lengths))


def truncate_group(
    group: TokenizedGroup,
    max_length: int,
    layout: str = "prefix_shared",
    *,
    min_response_tokens: int = 1,
    max_prompt_cut: float = 0.5,
) -> TokenizedGroup:
    """Fit ``group`` into rows of ``max_length`` tokens under ``layout`` (see module docstring).

    Responses keep at least ``min_response_tokens`` (and every image block they hold); at most the fraction
    ``max_prompt_cut`` of the prompt's text tokens may be dropped (a prompt cut further has lost its question:
    the record is too long). Raises :class:`TooLongError` when that is not enough.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    P = int(group.prefix.shape[0])
    lengths = [len(r) for r in group.responses]
    if _group_length(P, lengths, layout) <= max_length:
        return group
    floors = [
        max(min(n, min_response_tokens), r.min_keep) for n, r in zip(lengths, group.responses, strict=True)
    ]

    def capped(cap: int) -> list[int]:
        return [max(f, min(n, cap)) for f, n in zip(floors, lengths, strict=True)]

    # 1. responses: the largest common cap on response length that fits (water-filling), keep their start
    if _group_length(P, capped(0), layout) <= max_length:
        lo, hi = 0, max(lengths)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _group_length(P, capped(mid), layout) <= max_length:
                lo = mid
            else:
                hi = mid - 1
        return _cut(group, capped(lo), np.zeros(P, dtype=bool))
    # 2. then the prompt text, earliest tokens first (image and template tokens stay)
    new_lengths = capped(0)
    excess = _group_length(P, new_lengths, layout) - max_length
    cuttable = np.flatnonzero(group.prefix_cuttable)
    allowed = int(np.floor(max_prompt_cut * cuttable.size))
    if excess > allowed:
        fixed = P - allowed
        raise TooLongError(
            f"needs at least {fixed + _group_length(0, new_lengths, layout)} tokens "
            f"(prompt: {P - cuttable.size} image/template tokens + {cuttable.size} text tokens of which at "
            f"most {allowed} may be cut; {_group_length(0, new_lengths, layout)} response tokens) "
            f"but max_length is {max_length}"
        )
    drop = np.zeros(P, dtype=bool)
    drop[cuttable[:excess]] = True
    return _cut(group, new_lengths, drop)


def _cut(group: TokenizedGroup, lengths: Sequence[int], drop_prefix: np.ndarray) -> TokenizedGroup:
    keep = ~drop_prefix
    responses = tuple(
        TokenizedResponse(r.ids[:n], r.trained[:n], r.weights[:n], min(r.min_keep, n), r.num_images)
        for r, n in zip(group.responses, lengths, strict=True)
    )
    return replace(
        group, prefix=group.prefix[keep], prefix_cuttable=group.prefix_cuttable[keep], responses=responses
    )


# ------------------------------------------------------------------------------------------- tokenizer
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


def _content_parts(content: str) -> list[dict]:
    """String content with placeholders -> typed parts for templates that iterate over content parts."""
    parts: list[dict] = []
    for i, piece in enumerate(content.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image"})
            if piece.startswith("\n"):
                piece = piece[1:]
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


class ChatTokenizer:
    """A Hugging Face fast tokenizer + chat template + LLaVA image-token facts.

    ``image_seq_len``: image tokens per image (fixed-count families; AnyRes ones pass their ``frontend``, which
    counts each image's tokens from its size). ``round_weight``: AMP's per-round weight increment (0 disables it;
    the MDPO preset uses 0.05, spec 5.2).
    """

    def __init__(
        self,
        tokenizer,
        *,
        image_token_id: int,
        image_seq_len: int,
        chat_template: str | None = None,
        round_weight: float = 0.0,
        pad_id: int | None = None,
        frontend=None,
    ):
        if not getattr(tokenizer, "is_fast", True):
            raise TypeError("a fast (Rust) tokenizer is required: offsets map template text to tokens")
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        if not self.chat_template:
            raise TemplateError(
                "the tokenizer has no chat template (tokenizer_config.json / chat_template.jinja)"
            )
        self.image_token_id = int(image_token_id)
        self.image_seq_len = int(image_seq_len)
        # AnyRes families (LLaVA-NeXT, OneVision): the vision front end gives each image its own token count
        self.frontend = frontend if getattr(frontend, "anyres", False) else None
        self.round_weight = float(round_weight)
        if pad_id is None:
            pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad_id)
        added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
        self._image_token_in_vocab = IMAGE_PLACEHOLDER in added
        self._tokenizer_image_id = added.get(IMAGE_PLACEHOLDER)
        self._rendered: dict[tuple, str] = {}
        self._list_content = self._template_wants_parts()

    @classmethod
    def from_model_dir(cls, model_dir: str, *, round_weight: float = 0.0) -> ChatTokenizer:
        """Tokenizer, chat template and image-token facts from a Hugging Face LLaVA directory."""
        from transformers import AutoTokenizer

        from jax_align.data.chat_template import read_processor_template

        config = load_model_config(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            template = read_processor_template(model_dir)
        from jax_align.models.frontends import load_frontend

        frontend = load_frontend(model_dir)
        return cls(
            tokenizer,
            frontend=frontend,
            image_token_id=image_token_id(config),
            image_seq_len=frontend.num_tokens() if not frontend.anyres else 0,
            chat_template=template,
            round_weight=round_weight,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else pad_token_id(config),
        )

    # ---------------------------------------------------------------------------------------- rendering
    def _template_wants_parts(self) -> bool:
        probe = "\ue002probe\ue003"
        try:
            text = self._render_raw([{"role": "user", "content": probe}], True)
        except Exception:
            return True
        return probe not in text

    def _render_raw(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """The chat template's text for ``messages``; images appear as ``<image>``.

        Prompts repeat across records (one instruction for many images), and a record's prompt is rendered twice
        (as itself and with its user text marked): rendered prompts (``add_generation_prompt``) are kept, up to
        ``RENDER_CACHE`` of them (the template is a pure function of the turns; a dict is safe under the data
        threads). Whole conversations are mostly unique and are not kept."""
        key = tuple(messages) if add_generation_prompt else None
        text = None if key is None else self._rendered.get(key)
        if text is not None:
            return text
        if self._list_content:
            payload = [{"role": m.role, "content": _content_parts(m.content)} for m in messages]
        else:
            payload = [{"role": m.role, "content": m.content} for m in messages]
        text = self._render_raw(payload, add_generation_prompt)
        if key is not None:
            if len(self._rendered) >= RENDER_CACHE:
                self._rendered.clear()
            self._rendered[key] = text
        return text

    def _user_text_spans(self, messages: Sequence[Message], text: str) -> list[tuple[int, int]]:
        """Character spans of user-turn text (not placeholders) inside the rendered ``text``."""
        pieces: list[str] = []
        marked: list[Message] = []
        for m in messages:
            if m.role != "user":
                marked.append(m)
                continue
            out = []
            for i, piece in enumerate(m.content.split(IMAGE_PLACEHOLDER)):
                if i > 0:
                    out.append(IMAGE_PLACEHOLDER)
                if piece.strip():
                    lead = piece[: len(piece) - len(piece.lstrip())]
                    trail = piece[len(piece.rstrip()) :]
                    out.append(lead + _SENTINEL.format(len(pieces)) + trail)
                    pieces.append(piece.strip())
                else:
                    out.append(piece)
            marked.append(Message(m.role, "".join(out)))
        if not pieces:
            return []
        try:
            marked_text = self.render(marked, True)
        except Exception:
            return []
        spans, rebuilt, cursor = [], [], 0
        for match in _SENTINEL_RE.finditer(marked_text):
            rebuilt.append(marked_text[cursor : match.start()])
            start = sum(len(s) for s in rebuilt)
            piece = pieces[int(match.group(1))]
            rebuilt.append(piece)
            spans.append((start, start + len(piece)))
            cursor = match.end()
        rebuilt.append(marked_text[cursor:])
        if "".join(rebuilt) != text:  # the template transforms content: no safe cut points
            return []
        return spans

    # ----------------------------------------------------------------------------------------- encoding
    def image_counts(self, example) -> list[int] | None:
        """Image tokens of each image of ``example`` (AnyRes: asked of the front end with the image's size, read
        from the file header); None for fixed-count families."""
        if self.frontend is None:
            return None
        from jax_align.data.images import image_size

        return [self.frontend.num_tokens(*image_size(ref)) for ref in example.images]

    def encode(self, text: str, image_counts=None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``text`` with every ``<image>`` expanded to ``image_seq_len`` image tokens (the i-th to
        ``image_counts[i]`` when given), and the character offset where each token starts.
        """
        n_placeholders = text.count(IMAGE_PLACEHOLDER)
        if image_counts is None:
            if self.frontend is not None and n_placeholders:
                raise TemplateError("AnyRes models need each image's token count (pass the image sizes)")
            image_counts = [self.image_seq_len] * n_placeholders
        image_counts = list(image_counts)
        if len(image_counts) < n_placeholders:
            raise TemplateError(f"{n_placeholders} <image> placeholders but {len(image_counts)} images")
        ids: list[int] = []
        starts: list[int] = []
        seen = 0
        if self._image_token_in_vocab or n_placeholders == 0:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            for tok, (s, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
                if n_placeholders and tok == self._tokenizer_image_id:
                    n = image_counts[min(seen, len(image_counts) - 1)]
                    seen += 1
                    ids.extend([self.image_token_id] * n)
                    starts.extend([s] * n)
                else:
                    ids.append(tok)
                    starts.append(s)
        else:
            offset = 0
            for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
                if i > 0:
                    n = image_counts[i - 1]
                    seen += 1
                    ids.extend([self.image_token_id] * n)
                    starts.extend([offset - len(IMAGE_PLACEHOLDER)] * n)
                if chunk:
                    enc = self.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
                    ids.extend(enc["input_ids"])
                    starts.extend(s + offset for s, _ in enc["offset_mapping"])
                offset += len(chunk) + len(IMAGE_PLACEHOLDER)
        ids_arr = np.asarray(ids, dtype=np.int32)
        n_image = int(np.sum(ids_arr == self.image_token_id))
        if seen != n_placeholders or n_image != sum(image_counts[:n_placeholders]):
            raise TemplateError(f"{n_placeholders} <image> placeholders became {n_image} image tokens in {seen} "
                                "blocks")
        return ids_arr, np.asarray(starts, dtype=np.int64)

    # --------------------------------------------------------------------------------------- tokenizing
    def tokenize(self, example: SFTExample | PreferenceGroup) -> TokenizedGroup:
        """Tokenize an SFT conversation (K = 1) or a preference group (K responses, best first)."""
        counts = self.image_counts(example)
        if isinstance(example, SFTExample):
            messages = example.messages
            first = next(i for i, m in enumerate(messages) if m.role == "assistant")
            return self.tokenize_group(messages[:first], [messages[first:]], image_counts=counts)
        if example.response_prompts is not None:
            return self.tokenize_contexts(example.prompt, example.response_prompts, example.responses,
                                          image_counts=counts)
        return self.tokenize_group(example.prompt, example.responses, image_counts=counts)

    def tokenize_contexts(
        self,
        prompt: Sequence[Message],
        contexts: Sequence[Sequence[Message]],
        responses: Sequence[Sequence[Message]],
        image_counts=None,
    ) -> TokenizedGroup:
        """Responses that each come with their own context turns: conversation k is
        ``prompt + contexts[k] + responses[k]`` (e.g. a critic prompt that quotes answer k, then its critique).

        Each conversation's prompt part is tokenized as in :meth:`tokenize_group`; the group's prefix is the
        longest run of tokens all of them share, which must hold every image, and the rest of conversation k
        (context tokens, never targets, then its response) is response k. So row k of the naive layout is
        exactly conversation k's tokens, and the prefix-shared layout encodes the image and the common
        instruction once.
        """
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts for {len(responses)} responses")
        parts = []
        for ctx, resp in zip(contexts, responses, strict=True):
            conv = tuple(prompt) + tuple(ctx)
            text = self.render(conv, True)
            n_in = text.count(IMAGE_PLACEHOLDER)
            ids, starts = self.encode(text, None if image_counts is None else image_counts[:n_in])
            rounds = sum(1 for m in conv if m.role == "assistant")
            rest = None if image_counts is None else image_counts[n_in:]
            parts.append((conv, text, ids, starts, self._tokenize_response(conv, tuple(resp), text, rounds, rest)))
        first_ids = parts[0][2]
        common = min(p[2].shape[0] for p in parts)
        for _, _, ids, _, _ in parts[1:]:
            differ = np.flatnonzero(ids[:common] != first_ids[:common])
            if differ.size:
                common = int(differ[0])
        if common == 0:
            raise TemplateError("the per-response prompts share no leading tokens")
        for _, _, ids, _, _ in parts:
            if np.any(ids[common:] == self.image_token_id):
                raise TemplateError("every image must come before the text that differs between responses")
        conv0, text0, _, starts0, _ = parts[0]
        cuttable = np.zeros(common, dtype=bool)
        for a, b in self._user_text_spans(conv0, text0):
            cuttable |= (starts0[:common] >= a) & (starts0[:common] < b)
        cuttable &= first_ids[:common] != self.image_token_id
        out = []
        for _, _, ids, _, r in parts:
            context = ids[common:]
            n = context.shape[0]
            out.append(
                TokenizedResponse(
                    np.concatenate([context, r.ids]).astype(np.int32),
                    np.concatenate([np.zeros(n, bool), r.trained]),
                    np.concatenate([np.zeros(n, np.float32), r.weights]),
                    r.min_keep + n if r.min_keep else 0,
                    r.num_images,
                )
            )
        n_images = parts[0][1].count(IMAGE_PLACEHOLDER)
        n_resp_images = tuple(r.num_images for r in (p[4] for p in parts))
        return TokenizedGroup(first_ids[:common].copy(), cuttable, tuple(out), n_images, n_resp_images)

    def tokenize_group(
        self, prompt: Sequence[Message], responses: Sequence[Sequence[Message]], image_counts=None
    ) -> TokenizedGroup:
        """``image_counts``: tokens of each image in placeholder order (prompt first, then each response's own
        images continue after the prompt's); None: ``image_seq_len`` each."""
        prompt = tuple(prompt)
        prefix_text = self.render(prompt, True)
        n_prefix_images = prefix_text.count(IMAGE_PLACEHOLDER)
        rest = None if image_counts is None else image_counts[n_prefix_images:]
        prefix_ids, prefix_starts = self.encode(
            prefix_text, None if image_counts is None else image_counts[:n_prefix_images])
        if prefix_ids.size == 0:
            raise TemplateError("the chat template renders an empty prompt (no BOS or header)")
        cuttable = np.zeros(prefix_ids.shape, dtype=bool)
        for a, b in self._user_text_spans(prompt, prefix_text):
            cuttable |= (prefix_starts >= a) & (prefix_starts < b)
        cuttable &= prefix_ids != self.image_token_id
        rounds_before = sum(1 for m in prompt if m.role == "assistant")
        out = []
        n_resp_images = []
        for resp in responses:
            r = self._tokenize_response(prompt, tuple(resp), prefix_text, rounds_before, rest)
            out.append(r)
            n_resp_images.append(r.num_images)
        return TokenizedGroup(prefix_ids, cuttable, tuple(out), n_prefix_images, tuple(n_resp_images))

    def _tokenize_response(
        self, prompt: tuple[Message, ...], resp: tuple[Message, ...], prefix_text: str, rounds_before: int,
        image_counts=None,
    ) -> TokenizedResponse:
        full = self.render(prompt + resp, False)
        if not full.startswith(prefix_text):
            raise TemplateError(
                "the chat template does not render the prompt with the generation header as a prefix of the "
                "full conversation; prompt/response split is impossible"
            )
        base = len(prefix_text)
        spans: list[tuple[int, int, int]] = []
        rnd = rounds_before
        for j, m in enumerate(resp):
            if m.role != "assistant":
                continue
            before = prefix_text if j == 0 else self.render(prompt + resp[:j], True)
            upto = full if j == len(resp) - 1 else self.render(prompt + resp[: j + 1], False)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError("the chat template renders turns differently depending on what follows")
            spans.append((len(before) - base, len(upto) - base, rnd))
            rnd += 1
        text = full[base:]
        ids, starts = self.encode(text, image_counts)
        trained = np.zeros(ids.shape, dtype=bool)
        weights = np.zeros(ids.shape, dtype=np.float32)
        for a, b, r in spans:
            inside = (starts >= a) & (starts < b) & (ids != self.image_token_id)
            trained |= inside
            weights[inside] = 1.0 + self.round_weight * r
        if not trained.any():
            raise TemplateError("the response has no target tokens after tokenization")
        image_pos = np.flatnonzero(ids == self.image_token_id)
        min_keep = int(image_pos[-1]) + 1 if image_pos.size else 0
        return TokenizedResponse(ids, trained, weights, min_keep, text.count(IMAGE_PLACEHOLDER))

