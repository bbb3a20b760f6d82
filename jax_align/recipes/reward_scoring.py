"""Score preference pairs with a trained scalar reward model and attach MM-DPO margins (spec §4.3).

``margin = r(chosen) - r(rejected)`` per record; MM-DPO turns it into a per-example beta
(:func:`jax_align.losses.reward_margin_beta`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def score_pairs(model_dir: str, pairs_path: str, *, batch_size: int = 16, buckets=(128, 256, 512)) -> np.ndarray:
    """Rewards ``[N, 2]`` (chosen, rejected) for the records of a pairwise file, in file order."""
    graphdef, params, head = load_reward_model(model_dir)
    cfg = DataConfig(path=pairs_path, format="pairwise", model_dir=model_dir, batch_size=batch_size,
                     buckets=tuple(buckets), layout="prefix_shared", shuffle=False, num_epochs=1, num_responses=2)
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


def attach_margins(pairs_path: str, rewards: np.ndarray, out_path: str) -> dict:
    """Copy a pairwise file adding ``margin`` = r(chosen) - r(rejected); returns summary statistics."""
    margins = rewards[:, 0] - rewards[:, 1]
    with open(pairs_path) as src, open(out_path, "w") as dst:
        for line, m in zip(src, margins, strict=False):
            rec = json.loads(line)
            rec["margin"] = float(m)
            dst.write(json.dumps(rec) + "\n")
    return {"pairs": int(len(margins)), "mean_margin": float(np.nanmean(margins)),
            "agree": float(np.nanmean(margins > 0))}
