"""Compile time of a DPO-like forward + backward step, unrolled vs scanned decoder layers (issue 13 item 4).

    .venv/bin/python tools/bench_compile_scan.py --layers 8 32 --hidden 1024 --seq 512

Lowers and compiles (never runs) ``grad(dpo_loss)`` of a LLaVA-shaped model with abstract parameters, so no
memory is allocated; prints seconds per (layers, scan_layers) and the 32/8 ratios.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax_align.models import LlavaConfig, LlavaModel

from jax_align.presets import tiny_llava_hf_config


def step_fn(graphdef, beta=0.1):
    def loss(params, ids, seg, labels, ref_logps):
        model = nnx.merge(graphdef, params)
        h, _ = model.hidden_states(ids, segment_ids=seg)
        logits = h.astype(jnp.float32) @ model.head_weight().astype(jnp.float32)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
        lp = jnp.sum(lp * (seg > 0), axis=-1).reshape(2, -1)  # chosen rows, rejected rows
        margin = (lp[0] - ref_logps[0]) - (lp[1] - ref_logps[1])
        return -jnp.mean(jax.nn.log_sigmoid(beta * margin))

    return jax.jit(jax.value_and_grad(loss))


def compile_seconds(layers, scan, a):
    hf = tiny_llava_hf_config(vocab_size=a.vocab, image_token_id=a.vocab - 1, hidden=a.hidden, layers=layers,
                              heads=a.heads, kv_heads=a.heads, intermediate=a.intermediate, vision_layers=1,
                              max_positions=max(512, a.seq))
    cfg = LlavaConfig.from_hf_dict(hf)
    model = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0), scan_layers=scan, remat=a.remat,
                                              attention=a.attention))
    graphdef, params = nnx.split(model)
    b = 2 * a.pairs
    i32 = jnp.int32
    args = (params, jax.ShapeDtypeStruct((b, a.seq), i32), jax.ShapeDtypeStruct((b, a.seq), i32),
            jax.ShapeDtypeStruct((b, a.seq), i32), jax.ShapeDtypeStruct((2, a.pairs), jnp.float32))
    t0 = time.perf_counter()
    lowered = step_fn(graphdef).lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[8, 32])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32064)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--remat", default="full")
    p.add_argument("--attention", default="auto")
    p.add_argument("--scan", default="both", choices=["both", "on", "off"])
    a = p.parse_args()
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[a.scan]
    res = {}
    for scan in modes:
        for n in a.layers:
            lower, comp = compile_seconds(n, scan, a)
            res[(n, scan)] = lower + comp
            print(f"layers={n:3d} scan_layers={scan!s:5}  trace+lower {lower:6.1f} s  compile {comp:6.1f} s  "
                  f"total {lower + comp:6.1f} s", flush=True)
    for scan in modes:
        lo, hi = min(a.layers), max(a.layers)
        print(f"scan_layers={scan}: {hi}-layer / {lo}-layer = {res[(hi, scan)] / res[(lo, scan)]:.2f}x")


if __name__ == "__main__":
    main()
