"""The :class:`Generator`: prompt records -> bucketed batches -> the jitted sampler (:mod:`jax_align.generate`)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from jax_align.sampling import Sampler, SamplingParams

from .types import (
    IMAGE_PLACEHOLDER,
    Completion,
    GenerationInputError,
    PromptGeneration,
    _generation_eos_ids,
    _power_of_two_at_least,
    _Prepared,
)


class Generator:
    """A model, its chat tokenizer and image preprocessor, and a :class:`Sampler` with its compile cache.

    Build with :meth:`from_model_dir`. ``length_multiple`` sets the prompt-length buckets;
    ``image_cache_size`` bounds the preprocessed images kept for reuse.
    """

    def __init__(
        self,
        config,
        graphdef,
        params,
        tokenizer,
        image_config,
        *,
        length_multiple: int = 32,
        image_cache_size: int = 256,
        extra_eos_ids: Sequence[int] = (),
    ):
        self.config = config
        self.tokenizer = tokenizer  # jax_align.data.tokenize.ChatTokenizer
        self.image_config = image_config  # jax_align.data.images.ImageProcessorConfig
        self.frontend = getattr(tokenizer, "frontend", None)  # AnyRes families: tiles, plans, token counts
        self.sampler = Sampler(graphdef, params)
        self.length_multiple = int(length_multiple)
        self.image_cache_size = int(image_cache_size)
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self.images_loaded = 0  # images read and preprocessed (cache misses), for tests and logs
        hf = tokenizer.tokenizer
        eos = [hf.eos_token_id] if hf.eos_token_id is not None else []
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(int(t) for t in [*eos, *extra_eos_ids]))
        self.pad_id = int(tokenizer.pad_id)
        self._stop_string_ids: dict[tuple[str, ...], tuple[int, ...]] = {}

    @classmethod
    def from_model_dir(cls, path: str, *, dtype=None, **kw) -> Generator:
        """Load a Hugging Face LLaVA directory or a jax-align model directory (``--model``)."""
        from jax_align.data.images import ImageProcessorConfig
        from jax_align.data.tokenize import ChatTokenizer
        from jax_align.model_store import load_model

        config, graphdef, params = load_model(path, dtype=dtype)
        tokenizer = ChatTokenizer.from_model_dir(path)
        image_config = ImageProcessorConfig.from_model_dir(path)
        return cls(
            config, graphdef, params, tokenizer, image_config, extra_eos_ids=_generation_eos_ids(path), **kw
        )

    @property
    def num_compilations(self) -> int:
        """Compiled generation functions so far (one per batch/length/sampling bucket)."""
        return self.sampler.num_compilations

    # ------------------------------------------------------------------------------------ preparation
    def stop_ids_for(self, stop_strings: Sequence[str]) -> tuple[int, ...]:
        """Ids of every vocabulary token whose decoded text contains one of ``stop_strings`` (cached)."""
        key = tuple(s for s in stop_strings if s)
        if not key:
            return ()
        if key not in self._stop_string_ids:
            hf = self.tokenizer.tokenizer
            special = set(getattr(hf, "all_special_ids", []))
            ids = [i for i in range(len(hf)) if i not in special and any(s in hf.decode([i]) for s in key)]
            self._stop_string_ids[key] = tuple(ids)
        return self._stop_string_ids[key]

    def _messages(self, record: dict, n_images: int):
        from jax_align.data.records import Message

        if record.get("messages") is not None:
            msgs = record["messages"]
            if not isinstance(msgs, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs
            ):
                raise ValueError("messages: expected a list of {role, content} objects with string values")
            messages = [Message(m["role"], m["content"]) for m in msgs]
        else:
            prompt = record.get("prompt")
            if not isinstance(prompt, str):
                raise ValueError("prompt: missing or not a string")
            if n_images and IMAGE_PLACEHOLDER not in prompt:
                prompt = IMAGE_PLACEHOLDER * n_images + "\n" + prompt
            messages = [Message("user", prompt)]
        placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
        if placeholders != n_images:
            raise ValueError(
                f"prompt: has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {n_images} image(s)"
            )
        return messages

    def _prepare(self, record: dict, base_dir: str | None, prefix: str | None) -> _Prepared:
        from jax_align.data.records import Message

        if not isinstance(record, dict):
            raise ValueError(f"expected an object with image and prompt, got {type(record).__name__}")
        images = record.get("image")
        if images is None:
            images = []
        elif isinstance(images, (str, np.ndarray)):
            images = [images]
        elif not isinstance(images, (list, tuple)):
            raise ValueError(f"image: expected a path or a list of paths, got {type(images).__name__}")
        resolved = []
        for img in images:
            if isinstance(img, str):
                if not img:
                    raise ValueError("image: empty path")
                path = img if os.path.isabs(img) or base_dir is None else os.path.join(base_dir, img)
                resolved.append(os.path.abspath(path))
            elif isinstance(img, np.ndarray):
                resolved.append(np.asarray(img, np.float32))
            else:
                raise ValueError(f"image: expected a path or a preprocessed array, got {type(img).__name__}")
        messages = self._messages(record, len(resolved))
        tok = self.tokenizer
        prompt_text = tok.render(messages, True)
        ids, _ = tok.encode(prompt_text, self._image_counts(resolved))
        prefix_ids = np.zeros((0,), np.int32)
        if prefix:
            full = tok.render([*messages, Message("assistant", prefix)], False)
            at = full.find(prefix, len(prompt_text)) if full.startswith(prompt_text) else -1
            if at < 0:
                raise ValueError("response prefix: the chat template does not render it after the prompt")
            # tokenized apart from the prompt, as the training data tokenizes responses
            prefix_ids, _ = tok.encode(full[len(prompt_text) : at + len(prefix)])
            if (prefix_ids == tok.image_token_id).any():
                raise ValueError(f"response prefix: must not contain {IMAGE_PLACEHOLDER}")
        return _Prepared(
            np.concatenate([ids, prefix_ids]).astype(np.int32),
            prefix_ids.astype(np.int32),
            tuple(resolved),
            None,
        )

    def _image_counts(self, images) -> list[int] | None:
        """Image tokens of each image (AnyRes: from its size, asked of the front end); None when fixed."""
        if self.frontend is None:
            return None
        from jax_align.data.images import image_size
        from jax_align.data.records import ImageRef

        counts = []
        for im in images:
            if isinstance(im, np.ndarray):
                raise ValueError("image: AnyRes models take image files, not preprocessed arrays")
            counts.append(self.frontend.num_tokens(*image_size(ImageRef("image", path=im))))
        return counts

    def num_image_tokens(self, record: dict, base_dir: str | None = None) -> int:
        """Image tokens of a prompt record's images (BDHS / multi-level keep-masks cover exactly these)."""
        images = record.get("image")
        images = [] if images is None else [images] if isinstance(images, (str, np.ndarray)) else list(images)
        if self.frontend is None:
            return len(images) * self.tokenizer.image_seq_len
        paths = [im if not isinstance(im, str) or os.path.isabs(im) or base_dir is None else
                 os.path.join(base_dir, im) for im in images]
        return sum(self._image_counts(paths))

    def _pixels(self, image) -> np.ndarray:
        if isinstance(image, np.ndarray):
            return image
        cached = self._images.get(image)
        if cached is not None:
            self._images.move_to_end(image)
            return cached
        from jax_align.data.images import load_and_preprocess
        from jax_align.data.records import ImageRef

        if self.frontend is not None:  # AnyRes: a ProcessedImage (tiles, size, plan)
            from jax_align.data.images import load_image

            pixels = self.frontend.preprocess(load_image(ImageRef("image", path=image)))
        else:
            pixels = load_and_preprocess(ImageRef("image", path=image), self.image_config)
        self.images_loaded += 1
        self._images[image] = pixels
        while len(self._images) > self.image_cache_size:
            self._images.popitem(last=False)
        return pixels

    # ------------------------------------------------------------------------------------- generation
    def generate(
        self,
        prompts: Sequence[dict],
        sampling: SamplingParams | None = None,
        *,
        seed: int = 0,
        batch_size: int = 8,
        base_dir: str | None = None,
        image_keep_fraction: float | None = None,
        keep_masks: Sequence[np.ndarray | None] | None = None,
        response_prefixes: Sequence[str | None] | None = None,
        stop_strings: Sequence[str] = (),
        progress: Callable[[int], None] | None = None,
    ) -> list[PromptGeneration]:
        """Generate ``sampling.n_samples`` completions for each prompt record, in the records' order.

        A record has ``prompt`` (text; ``<image>\\n`` is prepended when absent) or ``messages`` (chat turns
        with ``<image>`` placeholders), and ``image``: a path (relative to ``base_dir``), a list of paths, a
        preprocessed ``float32 [C, H, W]`` array (e.g. a noised image), or None for text-only prompts.

        ``sampling``: :class:`SamplingParams` (greedy, 64 tokens by default); the tokenizer's EOS is always a
        stop token and ``pad_token_id`` is set from the tokenizer. ``image_keep_fraction``: each image token
        of a prompt stays visible with this probability (BDHS: ``1 - rho_th`` = 0.01), drawn with
        ``numpy.random.default_rng([seed, i])`` and shared by the prompt's samples; or ``keep_masks``: per
        prompt, None or a bool vector over its image tokens (True = visible). ``response_prefixes``: per
        prompt, None or the start of the answer to continue. ``stop_strings``: generation also stops at any
        token containing one of them, and the text is cut right after the first occurrence. ``progress`` is
        called with the number of prompts finished after each batch.
        """
        import jax
        import jax.numpy as jnp

        sp = sampling or SamplingParams()
        n = len(prompts)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if keep_masks is not None and image_keep_fraction is not None:
            raise ValueError("pass either keep_masks or image_keep_fraction, not both")
        if image_keep_fraction is not None and not 0.0 <= image_keep_fraction <= 1.0:
            raise ValueError(f"image_keep_fraction must be in [0, 1], got {image_keep_fraction}")
        for name, seq in (("keep_masks", keep_masks), ("response_prefixes", response_prefixes)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} prompts")
        stops = tuple(dict.fromkeys([*sp.stop_token_ids, *self.eos_ids, *self.stop_ids_for(stop_strings)]))
        stops = tuple(t for t in stops if t not in sp.banned_token_ids)
        sp = sp.replace(stop_token_ids=stops, pad_token_id=self.pad_id)
        max_pos = self.config.text.max_position_embeddings
        image_id = self.tokenizer.image_token_id

        prepared: list[_Prepared] = []
        for i, record in enumerate(prompts):
            prefix = None if response_prefixes is None else response_prefixes[i]
            try:
                p = self._prepare(record, base_dir, prefix)
            except ValueError as e:
                raise GenerationInputError(i, str(e)) from None
            if len(p.ids) + sp.max_new_tokens > max_pos:
                raise GenerationInputError(
                    i,
                    f"{len(p.ids)} prompt tokens + {sp.max_new_tokens} new tokens exceed "
                    f"the model's {max_pos} positions",
                )
            n_img = int((p.ids == image_id).sum())
            keep = None
            if keep_masks is not None and keep_masks[i] is not None:
                keep = np.asarray(keep_masks[i], bool).reshape(-1)
                if keep.shape[0] != n_img:
                    raise GenerationInputError(
                        i, f"keep mask has {keep.shape[0]} entries for {n_img} image tokens"
                    )
            elif image_keep_fraction is not None:
                rho = np.random.default_rng([seed, i]).random(n_img)
                keep = rho >= 1.0 - image_keep_fraction  # spec §2.2: m_j = 1[rho_j >= rho_th]
            prepared.append(_Prepared(p.ids, p.prefix_ids, p.images, keep))

        use_keep = any(p.keep is not None for p in prepared)
        base_key = jax.random.key(seed)
        results: list[list[Completion] | None] = [None] * n
        # group by image count (static pixel shape), longest first inside a group
        order = sorted(range(n), key=lambda i: (len(prepared[i].images), -len(prepared[i].ids), i))
        chunks: list[list[int]] = []
        for i in order:
            if (
                chunks
                and len(chunks[-1]) < batch_size
                and len(prepared[chunks[-1][0]].images) == len(prepared[i].images)
            ):
                chunks[-1].append(i)
            else:
                chunks.append([i])
        for chunk in chunks:
            rows = min(batch_size, _power_of_two_at_least(len(chunk)))
            members = chunk + [chunk[0]] * (rows - len(chunk))  # filler rows repeat a real one
            longest = max(len(prepared[i].ids) for i in chunk)
            length = -(-longest // self.length_multiple) * self.length_multiple
            ids = np.full((rows, length), self.pad_id, np.int32)
            mask = np.zeros((rows, length), np.int32)
            keep = np.ones((rows, length), bool) if use_keep else None
            for r, i in enumerate(members):
                p = prepared[i]
                ids[r, length - len(p.ids) :] = p.ids
                mask[r, length - len(p.ids) :] = 1
                if keep is not None and p.keep is not None:
                    row = keep[r, length - len(p.ids) :]
                    row[p.ids == image_id] = p.keep
            pixels = None
            n_img = len(prepared[chunk[0]].images)
            if n_img:
                per_row = {}
                for i in chunk:
                    try:
                        per_row[i] = [self._pixels(im) for im in prepared[i].images]
                    except (ValueError, OSError) as e:  # ImageLoadError is a ValueError
                        raise GenerationInputError(i, f"image: {e}") from None
                if self.frontend is not None:  # tiles padded to the front end's maximum: one compile per bucket
                    from jax_align.models.anyres import batch_images
                    from jax_align.models.frontends import stack_row_images

                    pixels = batch_images(stack_row_images(
                        [per_row[i] for i in members], max_images=n_img, max_tiles=self.frontend.max_tiles,
                        max_tokens=length, taps=self.frontend.taps))
                else:
                    stacked = np.stack([np.stack(per_row[i]) for i in members])  # [rows, n_img, C, H, W]
                    pixels = stacked[:, 0] if n_img == 1 else stacked
            keys = jax.vmap(lambda j: jax.random.fold_in(base_key, j))(jnp.asarray(members, jnp.int32))
            toks, logps, lengths = self.sampler(
                jnp.asarray(ids),
                jnp.asarray(mask),
                None if pixels is None else jax.tree.map(jnp.asarray, pixels),
                keys,
                sp,
                None if keep is None else jnp.asarray(keep),
            )
            toks, logps, lengths = np.asarray(toks), np.asarray(logps), np.asarray(lengths)
            for r, i in enumerate(chunk):
                results[i] = [
                    self._completion(
                        prepared[i],
                        toks[r * sp.n_samples + j],
                        logps[r * sp.n_samples + j],
                        int(lengths[r * sp.n_samples + j]),
                        set(stops),
                        stop_strings,
                    )
                    for j in range(sp.n_samples)
                ]
            if progress is not None:
                progress(len(chunk))
        return [
            PromptGeneration(tuple(results[i]), p.ids, p.prefix_ids, p.keep) for i, p in enumerate(prepared)
        ]

    def _completion(
        self,
        p: _Prepared,
        toks: np.ndarray,
        logps: np.ndarray,
        length: int,
        stops: set[int],
        stop_strings: Sequence[str],
    ) -> Completion:
        toks, logps = toks[:length].astype(np.int32), logps[:length].astype(np.float32)
        stopped = length > 0 and int(toks[-1]) in stops
        text_ids = toks[:-1] if stopped and int(toks[-1]) in self.eos_ids else toks
        hf = self.tokenizer.tokenizer
        prefix_ids = p.prefix_ids.tolist()
        pre = hf.decode(prefix_ids, skip_special_tokens=True) if prefix_ids else ""
        full = hf.decode(prefix_ids + text_ids.tolist(), skip_special_tokens=True)
        cont = (
            full[len(pre) :]
            if full.startswith(pre)
            else hf.decode(text_ids.tolist(), skip_special_tokens=True)
        )
        cuts = [cont.find(s) + len(s) for s in stop_strings if s and s in cont]
        if cuts:
            cont = cont[: min(cuts)]
        return Completion((pre + cont).strip(), cont, toks, logps, stopped)
