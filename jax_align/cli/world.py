"""``jax-align world``: render a synthetic world with ground truth, benchmarks, training sets, tokenizer."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jax_align.world.config import WorldConfig

    d = WorldConfig()
    parser.add_argument("--seed", type=int, default=0, help="world seed (same seed => identical files)")
    parser.add_argument("--n", type=int, default=500, help="number of scenes/images (default 500)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--image-size", type=int, default=d.image_size, help=f"image side in px ({d.image_size})"
    )
    parser.add_argument(
        "--pairs",
        default=",".join(f"{t}:{c}" for t, c in d.pairs),
        help="co-occurrence pairs TRIGGER:COMPANION,... or 'none' (default %(default)s)",
    )
    parser.add_argument(
        "--bias-rate", type=float, default=d.bias_rate, help="P(companion | trigger) (default %(default)s)"
    )
    parser.add_argument(
        "--trigger-weight",
        type=float,
        default=d.trigger_weight,
        help="sampling weight of trigger shapes vs 1 for others (default %(default)s)",
    )
    parser.add_argument("--min-objects", type=int, default=d.min_objects)
    parser.add_argument("--max-objects", type=int, default=d.max_objects)
    parser.add_argument("--sft-vqa-per-image", type=int, default=d.sft_vqa_per_image)
    parser.add_argument("--sft-yes-no-per-image", type=int, default=d.sft_yes_no_per_image)
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write DIR/tokenizer")


def run(args: argparse.Namespace) -> int:
    from jax_align.world.config import WorldConfig, parse_pairs
    from jax_align.world.datasets import write_world

    try:
        config = WorldConfig(
            image_size=args.image_size,
            pairs=parse_pairs(args.pairs),
            bias_rate=args.bias_rate,
            trigger_weight=args.trigger_weight,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            sft_vqa_per_image=args.sft_vqa_per_image,
            sft_yes_no_per_image=args.sft_yes_no_per_image,
        )
        summary = write_world(
            args.out, seed=args.seed, n=args.n, config=config, tokenizer=not args.no_tokenizer
        )
    except ValueError as e:
        print(f"jax-align world: {e}")
        return 2
    print(f"wrote {summary['n']} scenes to {args.out} (seed {summary['seed']})")
    print("records: " + ", ".join(f"{k}={v}" for k, v in summary["records"].items()))
    for pair, stats in summary["bias"].items():
        print(
            f"bias {pair}: {stats['with_companion']}/{stats['scenes_with_trigger']} = {stats['rate']:.3f} "
            f"({stats['without_companion']} scenes with the trigger but no companion)"
        )
    print("pope questions: " + json.dumps(summary["pope"]))
    return 0
