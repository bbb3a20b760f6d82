"""Preference files derived from the world's scored candidates (``reward.jsonl``): best vs worst pairs.

Used by the tiny configs so that DPO-family stages can train on data generated offline in seconds.
"""

from __future__ import annotations

import json
import os

from jax_align.atomic import atomic_file


def pairs_from_scored(scored_path: str, out_path: str, *, margin: bool = False) -> int:
    """Write TRL-style pairwise records (``prompt``, ``image``, ``chosen``, ``rejected``): the first (best)
    and the last (worst) candidate of every group whose scores differ. ``margin``: also write the truth-score
    gap as the record's ``margin`` (a stand-in for a reward model's margin, for MM-DPO). Returns the number
    written."""
    base_in, base_out = os.path.dirname(os.path.abspath(scored_path)), os.path.dirname(os.path.abspath(out_path))
    n = 0
    with open(scored_path) as src, atomic_file(out_path) as dst:
        for line in src:
            rec = json.loads(line)
            responses, scores = rec["responses"], rec.get("scores") or []
            if len(responses) < 2 or (scores and scores[0] == scores[-1]) or responses[0] == responses[-1]:
                continue
            image = os.path.relpath(os.path.join(base_in, rec["image"]), base_out)
            out = {"image": image, "prompt": rec["prompt"], "chosen": responses[0], "rejected": responses[-1]}
            if margin and scores:
                out["margin"] = float(scores[0]) - float(scores[-1])
            dst.write(json.dumps(out) + "\n")
            n += 1
    return n


def ranked_from_scored(scored_path: str, out_path: str, levels: int = 4) -> int:
    """Write ranked records (``prompt``, ``image``, ``responses`` best first, ``scores``) keeping the first
    ``levels`` candidates. Returns the number written."""
    base_in, base_out = os.path.dirname(os.path.abspath(scored_path)), os.path.dirname(os.path.abspath(out_path))
    n = 0
    with open(scored_path) as src, atomic_file(out_path) as dst:
        for line in src:
            rec = json.loads(line)
            responses = rec["responses"][:levels]
            if len(set(responses)) < 2:
                continue
            image = os.path.relpath(os.path.join(base_in, rec["image"]), base_out)
            out = {"image": image, "prompt": rec["prompt"], "responses": responses}
            if rec.get("scores"):
                out["scores"] = rec["scores"][:levels]
            dst.write(json.dumps(out) + "\n")
            n += 1
    return n
