"""``jax-align convert from-hf HF_DIR OUT_DIR`` and ``jax-align convert to-hf CKPT_DIR OUT_DIR``."""

from __future__ import annotations

import argparse

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("from-hf", help="Hugging Face LLaVA directory -> jax-align model (Orbax + config)")
    a.add_argument("src", metavar="HF_DIR")
    a.add_argument("out", metavar="OUT_DIR")
    a.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="parameter dtype (default float32)")
    b = sub.add_parser("to-hf", help="jax-align model (or checkpoint) -> Hugging Face directory (safetensors)")
    b.add_argument("src", metavar="CKPT_DIR")
    b.add_argument("out", metavar="OUT_DIR")
    b.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="tensor dtype to write (default: as stored)")
    b.add_argument("--max-shard-size", default="5GB", help="shard safetensors above this size (e.g. 2GB, 500MB)")


def parse_size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "B": 1}
    t = text.strip().upper()
    for unit, mult in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    return int(t)


def run(args) -> int:
    import jax.numpy as jnp

    from jax_align.model_store import load_model, save_model
    from jax_align.models import to_hf

    if args.direction == "from-hf":
        config, _, params = load_model(args.src, dtype=jnp.dtype(DTYPES[args.dtype]))
        save_model(args.out, config, params, source_dir=args.src)
        print(f"wrote jax-align model {args.out} ({config.text.kind}+{config.vision.kind}, {args.dtype})")
    else:
        config, _, params = load_model(args.src)
        dtype = jnp.dtype(DTYPES[args.dtype]) if args.dtype else None
        to_hf(config, params, args.out, dtype=dtype, max_shard_size=parse_size(args.max_shard_size),
              source_dir=args.src)
        print(f"wrote Hugging Face model {args.out}")
    return 0
