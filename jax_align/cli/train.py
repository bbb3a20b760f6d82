"""``jax-align train CONFIG [key=value ...]``: train any stage from a YAML config with dotted overrides."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jax_align.train.config import describe

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "configuration keys (section.key = default):\n" + describe()
    parser.add_argument("config", metavar="CONFIG", help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-6")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host; reads the usual JAX env vars)")


def run(args) -> int:
    import jax

    from jax_align.train.config import ConfigError, load_config
    from jax_align.train.trainer import Trainer, TrainingDiverged

    if args.distributed:
        jax.distributed.initialize()
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"jax-align train: {e}")
        return 2
    try:
        Trainer(cfg).run()
    except TrainingDiverged as e:
        print(f"jax-align train: {e}")
        return 1
    return 0
