"""The ``jax-align`` command: one sub-command per module in :mod:`jax_align.cli`.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
lazily so that ``jax-align --help`` stays fast and a broken optional dependency only breaks its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("jax_align.cli.demo", "run the full alignment pipeline on the built-in synthetic world"),
    "convert": ("jax_align.cli.convert", "convert checkpoints between Hugging Face and jax-align (Orbax)"),
    "world": ("jax_align.cli.world", "render a synthetic visual world with ground truth and benchmarks"),
    "data": ("jax_align.cli.data", "inspect and validate training data files"),
    "train": ("jax_align.cli.train", "train SFT, reward, critic and DPO-family models from a YAML config"),
    "prefs": ("jax_align.cli.prefs", "build preference data (BDHS, critic-scored pairs, multi-level)"),
    "generate": ("jax_align.cli.generate", "batched generation with the KV-cache sampler"),
    "score": ("jax_align.cli.score", "per-response log-probs, implicit rewards and reward-model scores of a file"),
    "eval": ("jax_align.cli.eval", "hallucination and skill metrics on a synthetic world"),
    "plan": ("jax_align.cli.plan", "compile a config's train step ahead of time: memory per chip, FLOPs, fit"),
    "pipeline": ("jax_align.cli.pipeline", "run a paper's pipeline end to end, resumable (eaco)"),
    "curate": ("jax_align.cli.curate", "Align²LLaVA curation: keep the top instructions by reward model, per type"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax-align",
        description="Align vision-language models with preferences in JAX/Flax.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line summary")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name in _requested_commands():
            _load(module_name).add_arguments(p)
    return parser


def _requested_commands() -> set[str]:
    # Only the sub-command being run (or shown with --help) imports its module.
    return {a for a in sys.argv[1:] if a in COMMANDS}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise SystemExit(f"jax-align: this command is not available yet ({module_name} is missing)") from None
        raise


def main(argv: list[str] | None = None) -> int:
    from jax_align.cli.errors import debug_enabled, run_command

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    debug = debug_enabled(sys.argv[1:])  # --debug anywhere on the line: tracebacks instead of one-line errors
    sys.argv = [a for a in sys.argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    args.debug = debug
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from jax_align.compile_cache import enable_compilation_cache
    from jax_align.platforms import skip_absent_tpu

    if args.command != "plan":  # plan --topology compiles through libtpu on a CPU host
        skip_absent_tpu()  # no libtpu start-up errors on machines without a TPU (the test extra installs it)
    enable_compilation_cache()  # persistent XLA cache: $JAX_ALIGN_CACHE_DIR (off disables), else ~/.cache/jax-align
    return run_command(args.command, _load(args._module).run, args, debug=debug)


if __name__ == "__main__":
    raise SystemExit(main())
