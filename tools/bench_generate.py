#!/usr/bin/env python
"""Generation throughput: the jax-align sampler vs transformers' ``generate`` on the same model and batch.

Both engines decode the same left-padded batch of prompts (each with one image block and random pixels)
greedily for exactly ``--new-tokens`` tokens (no stop token), from the same weights: the model is a Hugging
Face LLaVA directory (``--model``) or a random one built with the size flags, then converted for JAX with
:func:`jax_align.model_store.load_model`. Reported: generated tokens per second for each engine (median over
``--repeats`` timed runs after a warm-up run; JAX compile time is reported separately), their ratio, and the
fraction of generated tokens on which the two greedy decodes agree.

Examples::

    python tools/bench_generate.py                       # small random model on CPU
    python tools/bench_generate.py --layers 8 --hidden 512 --batch-size 16 --new-tokens 64
    python tools/bench_generate.py --model /path/to/llava-hf-dir --batch-size 4 --prompt-len 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", help="Hugging Face LLaVA directory (default: build a random one with the flags below)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--prompt-len", type=int, default=48, help="text tokens per prompt (plus the image tokens)"
    )
    p.add_argument(
        "--pad", type=int, default=8, help="the last row is this many tokens shorter (left padding)"
    )
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("random model size (ignored with --model)")
    g.add_argument("--vocab", type=int, default=2000)
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--intermediate", type=int, default=704)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=4)
    g.add_argument("--vision-hidden", type=int, default=128)
    g.add_argument("--vision-layers", type=int, default=2)
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--patch-size", type=int, default=16)
    p.add_argument(
        "--single-thread",
        action="store_true",
        help="one CPU thread for both engines (torch.set_num_threads(1); XLA without Eigen threads): "
        "fairer and steadier on a busy machine",
    )
    p.add_argument("--json", help="also write the results as JSON here")
    return p.parse_args(argv)


def build_random_llava(out_dir: str, a: argparse.Namespace) -> None:
    """Save a random ``LlavaForConditionalGeneration`` (Llama + CLIP) with O(1) logits to ``out_dir``."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(a.seed)
    vision = CLIPVisionConfig(
        hidden_size=a.vision_hidden,
        intermediate_size=4 * a.vision_hidden,
        num_hidden_layers=a.vision_layers,
        num_attention_heads=max(1, a.vision_hidden // 32),
        image_size=a.image_size,
        patch_size=a.patch_size,
        projection_dim=a.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=a.vocab - 1, pad_token_id=0)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if prm.ndim == 1 and "norm" in name:
                prm.copy_(1.0 + 0.1 * torch.randn(prm.shape))
            else:
                prm.copy_(torch.randn(prm.shape) / max(1.0, prm.shape[-1] ** 0.5) * 1.5)
    model.save_pretrained(out_dir)


def make_batch(cfg, a: argparse.Namespace):
    """Left-padded prompts ``[B, T]`` (BOS, image block, random text), their mask and random pixels.

    Row r has ``r * pad // (B - 1)`` fewer text tokens than the longest row, so rows differ in length.
    """
    rng = np.random.default_rng(a.seed)
    n_img = cfg.num_image_tokens
    width = 1 + n_img + a.prompt_len
    image_id = cfg.image_token_id
    ids = np.zeros((a.batch_size, width), np.int64)
    mask = np.zeros_like(ids)
    for r in range(a.batch_size):
        short = min(a.prompt_len - 1, r * a.pad // max(1, a.batch_size - 1))
        text = rng.integers(3, min(cfg.text.vocab_size, image_id), a.prompt_len - short)
        row = np.concatenate([[1], np.full(n_img, image_id), text])
        ids[r, width - len(row) :] = row
        mask[r, width - len(row) :] = 1
    px = rng.normal(size=(a.batch_size, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    return ids, mask, px


def time_runs(fn, repeats: int) -> tuple[float, list[float], object]:
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, times, out


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.single_thread:  # must precede the first jax import
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
            "intra_op_parallelism_threads=1"
        ).strip()
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import LlavaForConditionalGeneration

    from jax_align.model_store import load_model
    from jax_align.sampling import Sampler, SamplingParams

    if a.single_thread:
        torch.set_num_threads(1)
    tmp = None
    path = a.model
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_generate_")
        path = tmp.name
        build_random_llava(path, a)
    config, graphdef, params = load_model(path)
    ids, mask, px = make_batch(config, a)
    b, n = a.batch_size, a.new_tokens
    tokens = b * n

    # jax-align: the engine's jitted KV-cache sampler (compile excluded from the timed runs)
    sampler = Sampler(graphdef, params)
    sp = SamplingParams(max_new_tokens=n)  # greedy, no stop tokens: exactly n tokens per row
    j_ids, j_mask, j_px = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(px)

    def run_jax():
        out = sampler(j_ids, j_mask, j_px, jax.random.key(0), sp)
        jax.block_until_ready(out)
        return np.asarray(out[0])

    jax_first, jax_times, jax_toks = time_runs(run_jax, a.repeats)

    # transformers: greedy generate on the same weights and batch
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    t_ids, t_mask, t_px = torch.tensor(ids), torch.tensor(mask), torch.tensor(px)

    def run_torch():
        with torch.no_grad():
            out = model.generate(
                input_ids=t_ids,
                attention_mask=t_mask,
                pixel_values=t_px,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        return out[:, ids.shape[1] :].numpy()

    torch_first, torch_times, torch_toks = time_runs(run_torch, a.repeats)

    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    agree = float(np.mean(jax_toks == torch_toks)) if jax_toks.shape == torch_toks.shape else float("nan")
    result = {
        "device": {"jax": str(jax.devices()[0]), "torch_threads": torch.get_num_threads()},
        "model": a.model or "random",
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "batch_size": b,
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": n,
        "repeats": a.repeats,
        "jax_align": {"tokens_per_s": tokens / jax_s, "median_s": jax_s, "first_call_s": jax_first},
        "transformers": {"tokens_per_s": tokens / torch_s, "median_s": torch_s, "first_call_s": torch_first},
        "ratio_jax_over_transformers": (tokens / jax_s) / (tokens / torch_s),
        "greedy_token_agreement": agree,
    }
    print(
        f"model: {result['model']} ({result['params']:,} parameters), batch {b} x {ids.shape[1]} prompt "
        f"tokens, {n} new tokens, median of {a.repeats}; jax device {result['device']['jax']}, "
        f"torch threads {result['device']['torch_threads']}"
    )
    print(f"{'engine':<14}{'tokens/s':>12}{'median s':>11}{'first call s':>14}")
    for name in ("jax_align", "transformers"):
        r = result[name]
        print(f"{name:<14}{r['tokens_per_s']:>12.1f}{r['median_s']:>11.3f}{r['first_call_s']:>14.2f}")
    print(
        f"ratio (jax-align / transformers): {result['ratio_jax_over_transformers']:.2f}x; "
        f"greedy tokens agreeing: {agree:.3f}"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
