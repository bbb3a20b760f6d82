"""``jax-align prefs bdhs``: BDHS preference pairs from SFT data with the starting policy (spec §2.2, Algorithm 1).

The algorithm (masked, guided sampling, the yes/no swap, the similarity retries) lives in
:mod:`jax_align.generate.bdhs`, the one implementation the trainer's Online-BDHS (``online.rejected=bdhs``)
uses too; this module re-exports it and writes the pairs.
"""

from __future__ import annotations

import json
import os

from jax_align.data.image_paths import rebase_images
from jax_align.generate.bdhs import (  # noqa: F401  (the recipe's public names, used by other recipes and tests)
    _SWAP,
    _YES_NO,
    BDHSConfig,
    BDHSResult,
    _Job,
    _plan_guided,
    bdhs_rejected,
    first_exchange,
    run_bdhs,
    split_sentences,
    swap_yes_no,
)


def write_pairs(pairs: list[dict], in_base: str, out_path: str) -> None:
    """Write preference records with image paths made relative to ``out_path``'s directory."""
    from jax_align.atomic import atomic_file

    out_dir = os.path.dirname(os.path.abspath(out_path))
    with atomic_file(out_path) as f:  # an existing file survives a failed write
        for p in pairs:
            f.write(json.dumps(rebase_images(p, in_base, out_dir)) + "\n")
