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
                        help="call jax.distributed.initialize() first (multi-host; with no other flags it reads the "
                             "cluster's environment, e.g. on TPU pods or SLURM)")
    parser.add_argument("--coordinator", default=None, help="coordinator address host:port (implies --distributed)")
    parser.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    parser.add_argument("--process-id", type=int, default=None, help="this process's index")


def run(args) -> int:
    import jax

    from jax_align.train.config import ConfigError, load_config
    from jax_align.train.trainer import Trainer, TrainingDiverged

    if args.distributed or args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"jax-align train: {e}")
        return 2
    from jax_align.world.train_inputs import make_annotator, resolve_world_inputs

    resolve_world_inputs(cfg)  # data.world / model.init=tiny-world -> files (the trainer never sees the world)
    try:
        Trainer(cfg, annotator=make_annotator(cfg)).run()
    except TrainingDiverged as e:
        print(f"jax-align train: {e}")
        return 1
    return 0
