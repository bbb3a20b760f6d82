"""Multi-level preference groups for MDPO (AMP, spec §5.1-5.2) built with BDHS-style hallucination sampling.

Level 0 is the ground truth; level 1 replaces one of its sentences with a continuation sampled from the policy
with the image masked (spec §2.2's guided step); level 2 replaces two. Answers with one sentence (yes/no, short
VQA) give two levels: the truth and its hallucinated (or, for yes/no, flipped) version. This stands in for AMP's
multi-size experts, which need several model sizes, while keeping AMP's ordering "fewer hallucinations ranks
higher" by construction.
"""

from __future__ import annotations

import numpy as np

from jax_align.recipes.bdhs import _YES_NO, BDHSConfig, first_exchange, split_sentences, swap_yes_no
from jax_align.sampling import SamplingParams


def build_multilevel(generator, records: list[dict], *, base_dir: str, cfg: BDHSConfig | None = None) -> list[dict]:
    """Ranked records ``{image, prompt, responses (best first), scores}`` from SFT ``records``."""
    cfg = cfg or BDHSConfig()
    rng = np.random.default_rng(cfg.seed + 7)
    n_img = [generator.num_image_tokens({"image": r.get("image")}, base_dir) for r in records]  # front end
    prompts, prefixes, keeps, where = [], [], [], []
    exchanges = [first_exchange(r) for r in records]
    for i, (prompt, answer) in enumerate(exchanges):
        sentences = split_sentences(answer)
        keep = rng.random(n_img[i]) >= cfg.rho_th
        for k, sentence in enumerate(sentences):
            words = sentence.split()
            pivot = int(rng.integers(1, len(words))) if len(words) > 1 else 0
            kept = " ".join(words[:pivot])
            prefix = (" ".join(sentences[:k]) + " " + kept).strip()
            prompts.append({"image": records[i].get("image"), "prompt": prompt})
            prefixes.append(prefix or None)
            keeps.append(keep)
            where.append((i, k, kept))
    sp = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        banned_token_ids=generator.eos_ids)
    outs = generator.generate(prompts, sp, seed=cfg.seed + 7, batch_size=cfg.batch_size, base_dir=base_dir,
                              keep_masks=keeps, response_prefixes=prefixes, stop_strings=(".", "!", "?"))
    variants: dict[int, dict[int, str]] = {}
    for (i, k, kept), out in zip(where, outs, strict=False):
        cont = out.completions[0].continuation
        text = " ".join((kept + cont if kept else cont.strip()).split())
        variants.setdefault(i, {})[k] = text
    result = []
    for i, (prompt, answer) in enumerate(exchanges):
        sentences = split_sentences(answer)
        changed = [k for k in range(len(sentences)) if variants.get(i, {}).get(k) and variants[i][k] != sentences[k]]
        if len(sentences) == 1 and not changed and _YES_NO.match(sentences[0]):
            variants.setdefault(i, {})[0] = swap_yes_no(sentences[0])
            changed = [0]
        if not changed:
            continue
        order = [changed[j] for j in rng.permutation(len(changed))]
        levels = [answer]
        for n_bad in (1, 2):
            if len(order) < n_bad:
                break
            levels.append(" ".join(variants[i][k] if k in order[:n_bad] else s for k, s in enumerate(sentences)))
        result.append({"image": records[i].get("image"), "prompt": prompt, "responses": levels,
                       "scores": [float(len(levels) - 1 - j) for j in range(len(levels))]})
    return result
