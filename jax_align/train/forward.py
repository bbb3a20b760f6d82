"""What a model says about the responses of a batch: summed log-probs, token counts and scalar rewards.

Pure functions of a model and a batch (the contract of :mod:`jax_align.data.layouts`), shared by the training
losses, the reference log-prob pass and ``jax-align score``. Per-response log-probs are summed per
``(group, response)`` and reshaped to ``[G, K]`` in either layout (spec §0: sums over response tokens, with
optional per-token weights, spec §5.2). The LM head is applied through the chunked log-prob head, never as
``[B, T, V]`` logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_align.logprobs import token_logprobs
from jax_align.models.anyres import batch_images

from .reward_head import apply_head

IGNORE = -100


def hidden_states(model, batch, keep=None):
    # the image input: pixel tiles, plus the AnyRes gather plan when the batch carries one (LLaVA-NeXT/OneVision)
    hidden, _ = model.hidden_states(batch["input_ids"], batch_images(batch), segment_ids=batch["segment_ids"],
                                    prefix_segment_ids=batch["prefix_segment_ids"], positions=batch["positions"],
                                    image_keep_mask=keep)
    return hidden


def response_logps(model, batch, *, groups: int, responses: int, token_chunk: int = 256, hidden=None, keep=None):
    """Summed (weighted) log-probs ``[G, K]`` and token counts ``[G, K]`` of every response in the batch."""
    hidden = hidden_states(model, batch, keep) if hidden is None else hidden
    h = jnp.take_along_axis(hidden, batch["label_src"][..., None], axis=1)
    tok = token_logprobs(h, model.head_weight(), batch["labels"], token_chunk=token_chunk)
    g, k = groups, responses
    valid = (batch["labels"] != IGNORE) & (batch["group_ids"] >= 0) & (batch["response_ids"] >= 0)
    idx = jnp.where(valid, batch["group_ids"] * k + batch["response_ids"], g * k).reshape(-1)
    w = jnp.where(valid, batch["token_weights"], 0.0).reshape(-1)
    sums = jax.ops.segment_sum((tok.reshape(-1) * w), idx, num_segments=g * k + 1)[:-1]
    counts = jax.ops.segment_sum(valid.reshape(-1).astype(jnp.int32), idx, num_segments=g * k + 1)[:-1]
    return sums.reshape(g, k), counts.reshape(g, k)


def response_rewards(model, head: dict, batch, hidden=None, *, dropout: float = 0.0, key=None):
    """Scalar rewards ``[G, K]``: the head on the hidden state of each response's last token (spec §6.4)."""
    hidden = hidden_states(model, batch) if hidden is None else hidden
    rows, ends = jnp.maximum(batch["response_row"], 0), jnp.maximum(batch["response_end"], 0)
    return apply_head(head, hidden[rows, ends], dropout=dropout, key=key)
