"""``jax-align convert from-hf HF_DIR OUT_DIR`` and ``jax-align convert to-hf CKPT_DIR OUT_DIR``."""

from __future__ import annotations

import argparse
import json
import os

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
    try:
        for unit, mult in units.items():
            if t.endswith(unit):
                size = int(float(t[: -len(unit)]) * mult)
                break
        else:
            size = int(t)
    except ValueError:
        size = 0
    if size <= 0:
        from jax_align.cli.errors import CommandError

        raise CommandError(f"expected a positive size such as 2GB or 500MB, got {text!r}", field="--max-shard-size")
    return size


def _check_source(src: str, direction: str) -> None:
    """Cheap checks before anything is loaded: the source exists and looks like a model directory."""
    from jax_align.cli.errors import CommandError
    from jax_align.model_store import is_jax_align_model

    if not os.path.exists(src):
        raise CommandError("no such directory", file=src, field="source")
    if not os.path.isdir(src):
        raise CommandError("not a directory", file=src, field="source")
    config_path = os.path.join(src, "config.json")
    if not os.path.isfile(config_path):
        raise CommandError("config.json missing (not a Hugging Face or jax-align model directory)", file=src,
                           field="source")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise CommandError(f"invalid JSON: {e.msg} (column {e.colno})", file=config_path, record=e.lineno,
                           field="config") from None
    except UnicodeDecodeError as e:
        raise CommandError(f"not UTF-8 text: {e.reason}", file=config_path, field="config") from None
    if not isinstance(config, dict):
        raise CommandError(f"expected a JSON object, got {type(config).__name__}", file=config_path, field="config")
    if direction == "to-hf" and is_jax_align_model(src) and not os.path.isdir(os.path.join(src, "params")):
        raise CommandError("params/ missing (an incomplete jax-align model directory)", file=src, field="source")


def _check_output(src: str, out: str) -> None:
    from jax_align.cli.errors import CommandError
    from jax_align.model_store import check_replaceable

    if os.path.abspath(src) == os.path.abspath(out):
        raise CommandError("the output is the source directory; choose another output path", file=out,
                           field="output")
    parent = os.path.dirname(os.path.abspath(out))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        raise CommandError("not writable", file=probe, field="output")
    check_replaceable(out)


def run(args) -> int:
    from jax_align.cli.errors import located
    from jax_align.run_lock import lock_output

    max_shard = parse_size(args.max_shard_size) if args.direction == "to-hf" else None
    _check_source(args.src, args.direction)
    _check_output(args.src, args.out)
    with lock_output(args.out):  # one writer per output; the output is replaced only when complete
        import jax.numpy as jnp

        from jax_align.model_store import load_model, save_model

        if args.direction == "from-hf":
            with located(args.src, "source"):
                config, _, params = load_model(args.src, dtype=jnp.dtype(DTYPES[args.dtype]))
            with located(args.out, "output"):
                save_model(args.out, config, params, source_dir=args.src)
            print(f"wrote jax-align model {args.out} ({config.text.kind}+{config.vision.kind}, {args.dtype})")
        else:
            from jax_align.atomic import atomic_dir
            from jax_align.models import to_hf

            with located(args.src, "source"):
                config, _, params = load_model(args.src)
            dtype = jnp.dtype(DTYPES[args.dtype]) if args.dtype else None
            from jax_align.disk import ensure_room, tree_nbytes

            with located(args.out, "output"):
                ensure_room(args.out, tree_nbytes(params, None if dtype is None else dtype.itemsize), "the export")
            with located(args.out, "output"), atomic_dir(args.out) as work:
                to_hf(config, params, work, dtype=dtype, max_shard_size=max_shard, source_dir=args.src)
            print(f"wrote Hugging Face model {args.out}")
    return 0
