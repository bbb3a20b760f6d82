"""Peak temporary memory (XLA's compiled memory analysis) and step time of a long-sequence forward + backward,
``model.attention=reference`` vs ``blockwise`` (issue 13 item 5).

    .venv/bin/python tools/bench_attention_memory.py --lengths 1024 2048 4096 --time

Compiles ``grad(sum of log-probs)`` of a small LLaVA-shaped decoder (no images) at each length; prints
``temp_size_in_bytes`` and, with ``--time``, the median step time on the local device.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax_align.models import LlavaConfig, LlavaModel

from jax_align.presets import tiny_llava_hf_config


def build(a, impl, t):
    hf = tiny_llava_hf_config(vocab_size=a.vocab, image_token_id=a.vocab - 1, hidden=a.hidden, layers=a.layers,
                              heads=a.heads, kv_heads=a.heads, intermediate=4 * a.hidden, vision_layers=1,
                              max_positions=max(t, 512))
    cfg = LlavaConfig.from_hf_dict(hf)
    model = LlavaModel(cfg, rngs=nnx.Rngs(0), attention=impl, remat="full")
    graphdef, params = nnx.split(model)

    def loss(params, ids, seg):
        m = nnx.merge(graphdef, params)
        h, _ = m.hidden_states(ids, segment_ids=seg)
        logits = h @ m.head_weight()
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], axis=-1)[..., 0]
        return jnp.sum(lp * (seg > 0))

    return jax.jit(jax.grad(loss)), params


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--time", action="store_true", help="also run the step (3 times) and print the median")
    a = p.parse_args()
    for impl in ("reference", "blockwise"):
        prev = prev_t = None
        for t in a.lengths:
            step, params = build(a, impl, t)
            ids = jnp.asarray(np.random.default_rng(0).integers(0, a.vocab - 2, (a.batch, t)), jnp.int32)
            seg = jnp.ones((a.batch, t), jnp.int32).at[:, t - t // 8:].set(0)  # some right padding
            compiled = step.lower(params, ids, seg).compile()
            temp = compiled.memory_analysis().temp_size_in_bytes
            line = f"attention={impl:9s} T={t:5d}  temp {temp / 2**20:9.1f} MiB"
            if prev:
                line += f"  (x{temp / prev:.2f} for x{t / prev_t:.0f} length)"
            if a.time:
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled(params, ids, seg))
                    times.append(time.perf_counter() - t0)
                line += f"  step {sorted(times)[1]:.3f} s"
            print(line, flush=True)
            prev, prev_t = temp, t


if __name__ == "__main__":
    main()
