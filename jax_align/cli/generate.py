"""``jax-align generate``: answer a JSONL file of ``{image, prompt}`` records with the KV-cache sampler.

Each input line is a JSON object with ``image`` (a path relative to the input file, or absolute) and
``prompt``; other fields are carried over. Each output line repeats the input record unchanged and adds
``response``: a string, or a list of ``--n-samples`` strings when more than one sample is drawn. Temperature 0
(the default) is greedy decoding, equal to transformers' greedy ``generate`` on the same model; ``--num-beams``
> 1 is beam search (``--length-penalty``), equal to ``generate(num_beams=..., do_sample=False)``;
``--repetition-penalty`` is transformers' (both together: AMP's expert decoding, spec §5.1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="Hugging Face LLaVA directory or jax-align model directory"
    )
    parser.add_argument("--input", required=True, help="JSONL with image (relative to this file) and prompt")
    parser.add_argument("--output", required=True, help="JSONL to write: each input record plus response")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with this many beams (1 = off; needs --temperature 0)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search: finished score = log p / length ** this (1.0, as transformers)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="transformers' repetition penalty on seen tokens (1 = off; AMP experts: 1.1)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generated tokens per answer (128)")
    parser.add_argument("--n-samples", type=int, default=1, help="answers per prompt; >1 writes a list")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch (8)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="parameter dtype (default: as stored; float32 for Hugging Face directories)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="accept image paths outside the input file's directory (absolute or ../)",
    )


class InputError(ValueError):
    """A bad input line; the message names the file and line."""


def read_input(path: str, allow_absolute_paths: bool = False) -> tuple[list[dict], list[int]]:
    """Records of the input file and their 1-based line numbers; checks ``image`` and ``prompt``."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: input file not found")
    base = os.path.dirname(os.path.abspath(path))
    records, lines = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            except RecursionError:
                raise InputError(f"{where}: invalid JSON: nested too deeply") from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for field in ("image", "prompt"):
                value = record.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise InputError(f"{where}: {field}: missing, empty or not a string")
            from jax_align.data.safe_paths import resolve_image_path

            image, escape = resolve_image_path(record["image"], base, allow_absolute_paths)
            if escape:
                raise InputError(f"{where}: image: {escape}")
            if not os.path.isfile(image):
                raise InputError(f"{where}: image: file not found: {image}")
            _check_image_header(image, where)
            records.append(record)
            lines.append(lineno)
    if not records:
        raise InputError(f"{path}: no records")
    return records, lines


def _check_image_header(image: str, where: str) -> None:
    """Image-bomb limits from the header alone, before any model is built (the decode is later)."""
    from PIL import Image

    from jax_align.data.images import ImageLimits, ImageLoadError

    try:
        with Image.open(image) as im:
            size = im.size
    except Exception:
        return  # undecodable: reported with the record when the image is decoded
    try:
        ImageLimits.default().check(*size, image)
    except ImageLoadError as e:
        raise InputError(f"{where}: image: {e}") from None


def run(args: argparse.Namespace) -> int:
    from jax_align.generate import GenerationInputError, Generator
    from jax_align.sampling import SamplingParams

    try:
        sp = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            n_samples=args.n_samples,
            num_beams=args.num_beams,
            length_penalty=args.length_penalty,
            repetition_penalty=args.repetition_penalty,
        )
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    except ValueError as e:
        print(f"jax-align generate: {e}", file=sys.stderr)
        return 2
    try:
        from jax_align.cli.errors import located

        with located(args.input, "--input"):  # e.g. bytes that are not UTF-8
            records, lines = read_input(args.input, getattr(args, "allow_absolute_paths", False))
    except InputError as e:
        print(f"jax-align generate: {e}", file=sys.stderr)
        return 2
    import jax.numpy as jnp

    from jax_align.atomic import check_writable
    from jax_align.cli.errors import located

    with located(args.output, "--output"):
        check_writable(args.output)

    dtype = None if args.dtype is None else jnp.dtype(args.dtype)
    with located(args.model, "--model"):  # a bad model directory: one line naming it (exit 2)
        gen = Generator.from_model_dir(args.model, dtype=dtype)
    from tqdm import tqdm

    base = os.path.dirname(os.path.abspath(args.input))
    with tqdm(
        total=len(records), desc="generate", unit="prompt", disable=args.no_progress, file=sys.stderr
    ) as bar:
        try:
            prompts = [{"image": r["image"], "prompt": r["prompt"]} for r in records]
            results = gen.generate(
                prompts, sp, seed=args.seed, batch_size=args.batch_size, base_dir=base, progress=bar.update
            )
        except GenerationInputError as e:
            print(f"jax-align generate: {args.input}:{lines[e.index]}: {e.detail}", file=sys.stderr)
            return 2
    from jax_align.atomic import atomic_file

    with atomic_file(args.output, encoding="utf-8") as f:
        for record, result in zip(records, results, strict=True):
            response = result.completions[0].text if sp.n_samples == 1 else result.texts
            f.write(json.dumps({**record, "response": response}, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(records)} records to {args.output} ({gen.num_compilations} compiled bucket(s), "
        f"{gen.images_loaded} image(s) preprocessed)",
        file=sys.stderr,
    )
    return 0
