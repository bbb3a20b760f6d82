"""MM-DPO margins from a trained reward model (spec §4.3): a thin use of ``jax-align score``.

``margin = r(chosen) - r(rejected)`` per record; MM-DPO turns it into a per-example beta
(:func:`jax_align.losses.reward_margin_beta`). A scalar reward model (``run.stage=reward``) scores the answers
directly; a critique-based one (``run.stage=critique_reward``, spec §4.2) first writes its critique of each
answer greedily, then scores ``critic prompt + answer + critique`` (:func:`jax_align.train.score.score_file`
does both, from the model's ``reward_head.json``).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from jax_align.atomic import atomic_file
from jax_align.data.image_paths import rebase_images
from jax_align.train.score import score_file


def _rewards(model_dir: str, pairs_path: str, **kw) -> np.ndarray:
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(pairs_path))) as tmp:
        out = os.path.join(tmp, "scored.jsonl")
        score_file(model_dir, pairs_path, out, fmt="pairwise", **kw)
        with open(out) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return np.asarray([r.get("rewards", [np.nan, np.nan]) for r in rows], np.float32).reshape(len(rows), 2)


def score_pairs(model_dir: str, pairs_path: str, *, batch_size: int = 16, buckets=None,
                critique_prompt: bool = False) -> np.ndarray:
    """Rewards ``[N, 2]`` (chosen, rejected) for the records of a pairwise file, in file order. For a
    critique-based model, ``critique_prompt=True`` scores with the records' own critiques (teacher forcing)."""
    return _rewards(model_dir, pairs_path, batch_size=batch_size, buckets=buckets,
                    critiques="given" if critique_prompt else "generate")


def score_pairs_with_critiques(model_dir: str, pairs_path: str, work_path: str, *, batch_size: int = 16,
                               buckets=None, max_new_tokens: int = 256) -> np.ndarray:
    """Rewards ``[N, 2]`` from a critique-based reward model: its greedy critiques of both answers are
    written to ``work_path`` (kept for inspection), then each answer is scored with its critique."""
    from jax_align.train.score import generate_critiques

    generate_critiques(model_dir, pairs_path, work_path, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return score_pairs(model_dir, work_path, batch_size=batch_size, buckets=buckets, critique_prompt=True)


def attach_margins(pairs_path: str, rewards: np.ndarray, out_path: str) -> dict:
    """Copy a pairwise file adding ``margin`` = r(chosen) - r(rejected); returns summary statistics."""
    margins = rewards[:, 0] - rewards[:, 1]
    src_dir = os.path.dirname(os.path.abspath(pairs_path))
    dst_dir = os.path.dirname(os.path.abspath(out_path))
    with open(pairs_path) as src:
        lines = [line for line in src if line.strip()]
    if len(lines) != len(margins):
        raise ValueError(f"{pairs_path}: {len(lines)} records but {len(margins)} scored pairs")
    with atomic_file(out_path) as dst:
        for line, m in zip(lines, margins, strict=True):
            rec = rebase_images(json.loads(line), src_dir, dst_dir)
            rec["margin"] = float(m)
            dst.write(json.dumps(rec) + "\n")
    return {"pairs": int(len(margins)), "mean_margin": float(np.nanmean(margins)),
            "agree": float(np.nanmean(margins > 0))}
