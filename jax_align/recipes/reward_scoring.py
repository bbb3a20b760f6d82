"""Score preference pairs with a trained reward model and attach MM-DPO margins (spec §4.3).

``margin = r(chosen) - r(rejected)`` per record; MM-DPO turns it into a per-example beta
(:func:`jax_align.losses.reward_margin_beta`). A scalar reward model (``run.stage=reward``) scores the answers
directly; a critique-based one (``run.stage=critique_reward``, spec §4.2) first writes its critique of each
answer greedily, then scores ``critic prompt + answer + critique`` (:func:`score_pairs_with_critiques`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_align.atomic import atomic_file
from jax_align.data.image_paths import rebase_images
from jax_align.data.pipeline import DataConfig, DataPipeline
from jax_align.model_store import load_model
from jax_align.train.steps import response_rewards


def load_reward_model(model_dir: str):
    """(graphdef, params, head) of a reward run's ``model/`` directory (the head is ``reward_head.npy``)."""
    _, graphdef, params = load_model(model_dir)
    head_path = os.path.join(model_dir, "reward_head.npy")
    if not os.path.isfile(head_path):
        raise FileNotFoundError(f"{head_path}: not a reward model (no reward head)")
    return graphdef, params, jnp.asarray(np.load(head_path))


def score_pairs(model_dir: str, pairs_path: str, *, batch_size: int = 16, buckets=(128, 256, 512),
                critique_prompt: bool = False) -> np.ndarray:
    """Rewards ``[N, 2]`` (chosen, rejected) for the records of a pairwise file, in file order.

    ``critique_prompt``: the model is a critique-based reward model and the records carry its critiques
    (``chosen_reason`` / ``rejected_reason``); each answer is scored inside the critic prompt.
    """
    graphdef, params, head = load_reward_model(model_dir)
    cfg = DataConfig(path=pairs_path, format="pairwise", model_dir=model_dir, batch_size=batch_size,
                     buckets=tuple(buckets), layout="prefix_shared", shuffle=False, num_epochs=1, num_responses=2,
                     critique_prompt=critique_prompt)
    pipeline = DataPipeline(cfg)

    @jax.jit
    def rewards(params, head, batch):
        return response_rewards(nnx.merge(graphdef, params), head, batch)

    out = np.full((len(pipeline.source), 2), np.nan, np.float32)
    for batch in pipeline.iterator():
        r = np.asarray(rewards(params, head, {k: jnp.asarray(v) for k, v in batch.items()}))
        for g, idx in enumerate(batch["record_index"]):
            if idx >= 0 and batch["group_mask"][g]:
                out[idx] = r[g]
    return out


def generate_critiques(model_dir: str, pairs_path: str, out_path: str, *, max_new_tokens: int = 256,
                       batch_size: int = 16) -> int:
    """Copy a pairwise file with ``chosen_reason`` / ``rejected_reason`` replaced by the critiques the
    critique-based reward model writes greedily (spec §4.2 inference: one greedy critique per answer)."""
    from jax_align.data.critique import critique_group
    from jax_align.data.readers import open_records
    from jax_align.data.records import parse_record
    from jax_align.generate import Generator
    from jax_align.sampling import SamplingParams

    source = open_records(pairs_path)
    rows, prompts = [], []
    for raw in source:
        group, problems = parse_record(raw.data, "pairwise", base_dir=source.base_dir)
        if group is None:
            field, message = problems[0]
            raise ValueError(f"{pairs_path}: record {raw.number}: {field}: {message}")
        images = [ref.path if ref.path is not None else ref.data for ref in group.images]
        for context in critique_group(group).response_prompts:
            prompts.append({"messages": [{"role": m.role, "content": m.content} for m in context],
                            "image": images})
        rows.append(raw.data)
    generator = Generator.from_model_dir(model_dir)
    outs = generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens), batch_size=batch_size)
    base_out = os.path.dirname(os.path.abspath(out_path))
    with atomic_file(out_path) as dst:
        for i, rec in enumerate(rows):
            rec = rebase_images(rec, source.base_dir, base_out)
            rec["chosen_reason"], rec["rejected_reason"] = outs[2 * i].texts[0], outs[2 * i + 1].texts[0]
            dst.write(json.dumps(rec) + "\n")
    return len(rows)


def score_pairs_with_critiques(model_dir: str, pairs_path: str, work_path: str, *, batch_size: int = 16,
                               buckets=(256, 512, 1024), max_new_tokens: int = 256) -> np.ndarray:
    """Rewards ``[N, 2]`` from a critique-based reward model: its greedy critiques of both answers are
    written to ``work_path`` (kept for inspection), then each answer is scored with its critique."""
    generate_critiques(model_dir, pairs_path, work_path, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return score_pairs(model_dir, work_path, batch_size=batch_size, buckets=buckets, critique_prompt=True)


def attach_margins(pairs_path: str, rewards: np.ndarray, out_path: str) -> dict:
    """Copy a pairwise file adding ``margin`` = r(chosen) - r(rejected); returns summary statistics."""
    margins = rewards[:, 0] - rewards[:, 1]
    src_dir = os.path.dirname(os.path.abspath(pairs_path))
    dst_dir = os.path.dirname(os.path.abspath(out_path))
    with open(pairs_path) as src, atomic_file(out_path) as dst:
        lines = [line for line in src if line.strip()]
        if len(lines) != len(margins):
            raise ValueError(f"{pairs_path}: {len(lines)} records but {len(margins)} scored pairs")
        for line, m in zip(lines, margins, strict=True):
            rec = rebase_images(json.loads(line), src_dir, dst_dir)
            rec["margin"] = float(m)
            dst.write(json.dumps(rec) + "\n")
    return {"pairs": int(len(margins)), "mean_margin": float(np.nanmean(margins)),
            "agree": float(np.nanmean(margins > 0))}
