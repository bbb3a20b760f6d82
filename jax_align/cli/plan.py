"""``jax-align plan CONFIG [--topology v5p:4x4x4] [--mfu 0.5] [key=value ...]``: will the run fit, and how fast?

Compiles the config's real train step ahead of time (for a TPU topology from a CPU host with libtpu, or for the
local devices) and prints per-chip bytes (parameters, optimizer state, gradients, activations), the total against
the chip's HBM, FLOPs per step and the expected step time at ``--mfu``. Exit 0 if it fits, 1 if not (naming the
largest buffers), 2 on bad input. See :mod:`jax_align.train.plan`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("chips (HBM GB, bf16 peak TFLOP/s): v4 32/275, v5e 16/197, v5p 95/459, v6e 32/918, h100 80/989, "
                     "h200 141/989.\nexamples:\n  jax-align plan configs/presets/mdpo_v5p64.yaml --topology v5p:2x4x4\n"
                     "  jax-align plan configs/tiny_dpo.yaml model.init=DIR/config.json --hbm-gb 0.01")
    parser.add_argument("config", metavar="CONFIG", help="YAML run config (the same file `jax-align train` takes)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. mesh.tensor=4")
    parser.add_argument("--topology", default=None,
                        help="TPU topology to compile for from this host, e.g. v5p:2x4x4 (v5p-64), v5p:4x4x4, "
                             "v5e:16x16, v6e:4x4 (needs libtpu: pip install 'jax-align[tpu]'); default: the "
                             "local devices")
    parser.add_argument("--mfu", type=float, default=0.5, help="model-FLOPs utilisation for the step time (0.5)")
    parser.add_argument("--length", type=int, default=None,
                        help="row length to compile (default: the largest of data.buckets, else data.max_length)")
    parser.add_argument("--chip", default=None,
                        help="chip whose HBM and peak to report against (v4|v5e|v5p|v6e|h100|h200); default: "
                             "from the topology or the devices")
    parser.add_argument("--hbm-gb", type=float, default=None, help="HBM per chip in GB (overrides the chip table)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 peak TFLOP/s per chip (overrides the chip table)")
    parser.add_argument("--json", default=None, metavar="OUT",
                        help="also write the plan's numbers (exact bytes per chip, FLOPs, fit) as JSON to OUT")


def run(args) -> int:
    import jax

    from jax_align.train.config import load_config
    from jax_align.train.plan import (
        CHIPS,
        PlanError,
        build_plan,
        chip_of_device,
        chip_of_topology,
        device_limits,
        render,
        topology_devices,
    )

    if not 0 < args.mfu <= 1:
        raise PlanError(f"--mfu {args.mfu}: must be in (0, 1]")
    if args.chip is not None and args.chip not in CHIPS:
        raise PlanError(f"--chip {args.chip}: must be one of {'|'.join(CHIPS)}")
    for name in ("hbm_gb", "peak_tflops", "length"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise PlanError(f"--{name.replace('_', '-')} {value}: must be positive")
    cfg = load_config(args.config, args.overrides)
    if args.topology:
        from jax_align.compile_cache import enable_compilation_cache

        # an executable compiled for a topology cannot be read back without a TPU client (the read fails with
        # "PjRtCompiler must be constructed with a Client" and the step compiles anyway): no persistent cache here
        enable_compilation_cache("off")
        devices = topology_devices(args.topology)
        chip, where = chip_of_topology(args.topology), f"TPU topology {args.topology}"
    else:
        devices = jax.devices()
        chip, where = chip_of_device(devices[0]), f"local {devices[0].platform} devices"
    chip = args.chip or chip
    hbm, peak = device_limits(devices, chip)
    if args.hbm_gb is not None:
        hbm = args.hbm_gb * 1e9
    if args.peak_tflops is not None:
        peak = args.peak_tflops * 1e12
    plan = build_plan(cfg, devices, length=args.length)
    text, fits = render(plan, chip=chip, hbm_bytes=hbm, peak_flops=peak, mfu=args.mfu, where=where)
    print(text, flush=True)
    if args.json:
        import dataclasses
        import json

        from jax_align.atomic import atomic_file

        record = {**dataclasses.asdict(plan), "total_bytes": plan.total_bytes, "chip": chip, "hbm_bytes": hbm,
                  "peak_flops": peak, "mfu": args.mfu, "fits": fits, "where": where}
        with atomic_file(args.json) as f:
            json.dump(record, f, indent=1)
    return 0 if fits else 1
