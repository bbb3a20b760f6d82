"""What the generation engine returns, and its input error (see :mod:`jax_align.generate`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_PLACEHOLDER = "<image>"


class GenerationInputError(ValueError):
    """A prompt record that cannot be generated from; ``index`` is its position in the call's prompt list."""

    def __init__(self, index: int, message: str):
        super().__init__(f"prompt {index}: {message}")
        self.index = index
        self.detail = message


@dataclass(frozen=True)
class Completion:
    """One sampled answer.

    ``text``: the whole answer (forced prefix + generated continuation), decoded together, special tokens
    skipped, cut after the first stop string, stripped. ``continuation``: the generated part only, unstripped
    (so ``prefix + continuation`` reads as written). ``token_ids`` / ``logprobs``: the generated tokens
    (including the stop token when one was emitted; the forced prefix is not included) and the model's
    unfiltered log-probs of them. ``stopped``: ended on a stop token (False: ran out of ``max_new_tokens``).
    """

    text: str
    continuation: str
    token_ids: np.ndarray
    logprobs: np.ndarray
    stopped: bool

    @property
    def logprob(self) -> float:
        """Sum of the generated tokens' log-probs."""
        return float(np.sum(self.logprobs))


@dataclass(frozen=True)
class PromptGeneration:
    """The completions of one prompt, with the exact prompt tokens and image keep-mask used."""

    completions: tuple[Completion, ...]
    prompt_ids: np.ndarray  # int32 [T]: template + image tokens + forced prefix
    prefix_ids: np.ndarray  # int32 [R]: the forced response prefix tokens (the end of prompt_ids)
    keep_mask: np.ndarray | None  # bool [num image tokens] or None (all visible)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]


@dataclass(frozen=True)
class _Prepared:
    ids: np.ndarray
    prefix_ids: np.ndarray
    images: tuple[Any, ...]  # paths (str) or preprocessed [C, H, W] arrays
    keep: np.ndarray | None


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _generation_eos_ids(path: str) -> list[int]:
    """EOS ids named by ``generation_config.json`` (an int or a list), if the directory has one."""
    cfg_path = os.path.join(path, "generation_config.json")
    if not os.path.exists(cfg_path):
        return []
    with open(cfg_path) as f:
        eos = json.load(f).get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
