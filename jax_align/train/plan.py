"""Plan a run before paying for it: compile the config's real train step ahead of time and read its memory.

``jax-align plan CONFIG [--topology v5p:4x4x4]`` builds everything the trainer builds, but abstractly: the model
(``nnx.eval_shape``, no weights), LoRA adapters, the trainable / frozen split, the reference copy, the optimizer
state (``jax.eval_shape(tx.init)``), the shardings of the config's mesh (the rules table of
:mod:`jax_align.sharding`) and a batch with exactly the keys, shapes and dtypes the data pipeline produces for the
largest length bucket (:func:`jax_align.data.layouts.assemble_rows` on empty rows). The step of
:func:`jax_align.train.steps.make_train_step` is jitted with the trainer's in/out shardings and donation and
compiled for a TPU topology description (``libtpu`` on a CPU host, no TPU needed) or for the local devices.

Per chip it reports the bytes of the arguments counted from the abstract tree (trainable parameters, frozen
parameters, reference copy, optimizer state, batch), the compiler's own memory analysis (arguments, outputs,
aliased, temporaries), the gradient bytes (one accumulator the size of the trainable parameters, inside the
temporaries) and the rest of the temporaries (activations), the total against the chip's HBM, and FLOPs per
step. XLA's ``cost_analysis`` counts the body of a loop once (a layer scan, the gradient-accumulation scan), so
the FLOPs used for the step time are counted on the step's jaxpr: every ``dot_general`` / convolution, times the
length of each enclosing ``scan`` (rematerialised forwards included); the cost-analysis figure is printed too.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_align.sharding import make_mesh, rules_from_config, use_rules

from .config import Config, ConfigError
from .optim import build_optimizer
from .stages import Stage, get_stage
from .state_spec import (
    abstract_train_state,
    batch_sharding,
    jit_step,
    model_kwargs,
    param_shardings,
    split_params,
)
from .steps import StepSpec, make_train_step
from .trainer import check_mesh

GB = 1e9

# HBM per chip (GB, decimal as vendors state it) and dense bf16 peak (TFLOP/s) per chip.
CHIPS: dict[str, tuple[float, float]] = {
    "v4": (32.0, 275.0),
    "v5e": (16.0, 197.0),
    "v5p": (95.0, 459.0),
    "v6e": (32.0, 918.0),
    "h100": (80.0, 989.0),
    "h200": (141.0, 989.0),
}

TPU_INSTALL_HINT = "pip install 'jax-align[tpu]'"


class PlanError(ValueError):
    """Bad input to the planner (config, topology): one line, exit 2."""


# ------------------------------------------------------------------------------------------------ devices
def chip_of_topology(name: str) -> str | None:
    """``"v5p:4x4x4"`` -> ``"v5p"``; ``"v5litepod:..."``/``"v5e:..."`` -> ``"v5e"``; None when unknown."""
    head = name.split(":")[0].split("_")[0].split("=")[0].lower()
    aliases = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e", "v6lite": "v6e", "v5": "v5p"}
    head = aliases.get(head, head)
    return head if head in CHIPS else None


def chip_of_device(device) -> str | None:
    """The :data:`CHIPS` entry of a device from its ``device_kind`` (None for CPUs and unknown kinds)."""
    kind = str(getattr(device, "device_kind", "")).lower()
    if "h200" in kind:
        return "h200"
    if "h100" in kind:
        return "h100"
    if "tpu" in kind:
        if "v6" in kind:
            return "v6e"
        if "v5" in kind:
            return "v5e" if ("lite" in kind or "v5e" in kind) else "v5p"
        if "v4" in kind:
            return "v4"
    return None


def topology_devices(name: str) -> list:
    """The devices of a TPU topology description (``v5p:4x4x4``, ``v5e:16x16``, ``v4:2x2x2``, ``v6e:4x4``)."""
    try:
        import libtpu  # noqa: F401  (the topology description needs the TPU compiler)
    except ImportError:
        raise PlanError(f"--topology {name}: TPU topologies need libtpu: {TPU_INSTALL_HINT}") from None
    # the planner only compiles: several processes (parallel tests, a training run) may load libtpu at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name)
    except Exception as e:  # noqa: BLE001 - libtpu raises JaxRuntimeError with a multi-line message
        msg = " ".join(str(e).split())
        raise PlanError(f"--topology {name}: not a TPU topology ({msg[:300]}); give e.g. v5p:2x4x4, v5e:16x16, "
                        f"v4:2x2x2, v6e:4x4") from None
    return list(topo.devices)


# ------------------------------------------------------------------------------------------------ model
def model_dir_of(cfg: Config) -> str:
    """The directory whose config.json describes the model: ``model.path``, else ``model.init``."""
    src = cfg.model.path or cfg.model.init
    if not src:
        raise PlanError("set model.path (a checkpoint) or model.init (a HF config.json) to plan a run")
    if src == "tiny-world":
        raise PlanError("model.init=tiny-world is built from the world's tokenizer at train time: plan with "
                        "model.init=PATH/config.json (e.g. the run's init_model/config.json)")
    path = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PlanError(f"{src}: no config.json (model.path / model.init must name a model directory or its "
                        f"config.json)")
    return path


def abstract_model(cfg: Config, config, stage: Stage):
    """The trainer's :class:`~jax_align.train.state_spec.ParamTrees`, all abstract: the model is built under
    ``nnx.eval_shape`` (no weights); LoRA adapters are then added for real (they are small, and adding them to a
    scanned stack reads which layers already have some) and made abstract."""
    from jax_align.models import LlavaModel

    model = nnx.eval_shape(lambda: LlavaModel(config, rngs=nnx.Rngs(cfg.run.seed), **model_kwargs(cfg)))
    return split_params(cfg, stage, model, config.text.hidden_size, is_abstract=True)


# ------------------------------------------------------------------------------------------------ batch
def plan_length(cfg: Config) -> int:
    """The row length the plan compiles: the largest bucket (the most memory; the default ladder's is
    ``data.max_length``)."""
    from jax_align.data.buckets import resolve_buckets

    return int(max(resolve_buckets(cfg.data.buckets, cfg.data.max_length)))


def batch_shapes(cfg: Config, stage: Stage, model_dir: str, config, length: int) -> tuple[dict, int, int]:
    """``({key: ShapeDtypeStruct [grad_accum, rows, ...]}, groups, responses)`` of one step's global batch.

    The arrays are those the data pipeline's collator builds (same keys, shapes and dtypes) for a batch of
    ``data.batch_size / optim.grad_accum`` groups per micro-batch padded to ``length`` tokens.
    """
    from jax_align.data.collate import Collator
    from jax_align.data.data_config import DataConfig
    from jax_align.models.frontends import load_frontend

    fmt = stage.pipeline_format or cfg.data.format or stage.record_format
    accum = cfg.optim.grad_accum
    groups = cfg.data.batch_size // accum
    dcfg = DataConfig(path="", format=fmt, model_dir=model_dir, batch_size=groups, buckets=(length,),
                      max_length=length, layout=cfg.data.layout,
                      num_responses=stage.responses or cfg.data.num_responses or None,
                      critique_prompt=stage.critique_prompt, round_weight=cfg.data.round_weight)
    responses = dcfg.responses_per_group
    frontend = load_frontend(model_dir, config)
    if getattr(frontend, "anyres", False):
        image_shape = (3, frontend.tile, frontend.tile)
    else:
        from jax_align.data.images import ImageProcessorConfig

        image_shape = (3, *ImageProcessorConfig.from_model_dir(model_dir).output_size)
        frontend = None
    batch = Collator(dcfg, pad_id=0, image_shape=image_shape, frontend=frontend).empty_batch(length)
    shapes = {k: jax.ShapeDtypeStruct((accum, *np.shape(v)), np.asarray(v).dtype) for k, v in batch.items()}
    return shapes, groups, responses


# ------------------------------------------------------------------------------------------------ bytes, FLOPs
def shard_bytes(x, sharding) -> int:
    """Bytes of one device's shard of the abstract array ``x`` under ``sharding``."""
    shape = tuple(x.shape)
    local = sharding.shard_shape(shape) if shape else ()
    return int(np.prod(local, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize


def tree_bytes(tree, shardings) -> int:
    return sum(shard_bytes(x, s) for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True))


def _sub_jaxprs(params):
    for v in params.values():
        items = v if isinstance(v, (tuple, list)) else (v,)
        for item in items:
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def jaxpr_flops(jaxpr) -> float:
    """Matmul and convolution FLOPs of a jaxpr (2 per multiply-add), scan bodies times their length, the
    costliest branch of a ``cond``; other primitives are not counted (they are a few percent of a transformer)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, rc), (_, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            free_r = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
            total += 2.0 * float(np.prod(lhs, dtype=np.float64)) * float(np.prod(free_r, dtype=np.float64))
        elif name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape  # O I spatial... per dimension_numbers; I*spatial = prod/O
            dn = eqn.params["dimension_numbers"]
            o_dim = dn.rhs_spec[0]
            total += 2.0 * float(np.prod(out, dtype=np.float64)) * float(np.prod(rhs, dtype=np.float64)) / rhs[o_dim]
        elif name == "cond":
            total += max((jaxpr_flops(b.jaxpr) for b in eqn.params["branches"]), default=0.0)
        else:
            inner = sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """What :func:`build_plan` measured. Bytes are per chip."""

    chips: int
    mesh: dict
    length: int
    groups: int
    responses: int
    grad_accum: int
    params_total: int  # parameters of the model (all, counted once, not per chip)
    params_trainable: int
    bytes: dict  # category -> bytes per chip, counted from the abstract tree
    compiled: dict  # the compiler's memory analysis, per chip
    flops: float  # per step, whole mesh (jaxpr count)
    xla_flops: float  # per step per chip (cost_analysis, loop bodies once)
    largest: list = field(default_factory=list)  # (name, bytes per chip, shape, dtype) of the largest arguments
    seconds: dict = field(default_factory=dict)  # build / trace / compile times
    compiler_error: str = ""  # the compiler refused the program (RESOURCE_EXHAUSTED): it does not fit

    @property
    def total_bytes(self) -> int:
        """Peak per chip: arguments + outputs - donated (aliased) + temporaries + generated code."""
        c = self.compiled
        return c["argument"] + c["output"] - c["alias"] + c["temp"] + c["code"]


@contextlib.contextmanager
def _mesh_context(mesh, devices):
    """``jax.set_mesh(mesh)`` as the trainer does. For devices of another platform (a TPU topology from a CPU
    host) constants the step closes over are embedded in the program instead of being passed as arguments
    (``jax_embedded_constants_max_bytes``): an argument would live on a local CPU device, which a TPU program
    refuses."""
    if devices and devices[0].platform == jax.devices()[0].platform:
        with jax.set_mesh(mesh):
            yield
        return
    before = jax.config.jax_embedded_constants_max_bytes
    jax.config.update("jax_embedded_constants_max_bytes", 1 << 40)
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        jax.config.update("jax_embedded_constants_max_bytes", before)


def _named(tree, shardings, prefix: str) -> list:
    out = []
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for (path, x), s in zip(flat, jax.tree.leaves(shardings), strict=True):
        name = prefix + "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out.append((name, shard_bytes(x, s), tuple(x.shape), str(jnp.dtype(x.dtype))))
    return out


def build_plan(cfg: Config, devices=None, *, length: int | None = None) -> Plan:
    """Compile the config's train step for ``devices`` (default: the local ones) and measure it, as the trainer
    builds it: the rules table with ``mesh.rules``, traced inside ``jax.set_mesh(mesh)`` and ``use_rules``."""
    import time

    from jax_align.models import LlavaConfig

    t0 = time.perf_counter()
    devices = list(devices if devices is not None else jax.devices())
    stage = get_stage(cfg.run.stage)
    try:
        mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from None
    check_mesh(cfg, mesh, len(devices))
    model_dir = model_dir_of(cfg)
    config = LlavaConfig.from_hf_dir(model_dir)
    length = int(length or plan_length(cfg))
    try:
        rules = rules_from_config(getattr(cfg.mesh, "rules", None))
    except ValueError as e:
        raise ConfigError(str(e)) from None

    trees = abstract_model(cfg, config, stage)
    params, frozen, ref = trees.params, trees.frozen, trees.ref
    tx = build_optimizer(cfg.optim, cfg.train.steps, params)
    sh = param_shardings(trees, mesh, rules)
    p_sh, frozen_sh, ref_sh = sh.params, sh.frozen, sh.ref
    state, state_sh = abstract_train_state(trees, sh, tx)
    opt_state, opt_sh = state["opt_state"], state_sh["opt_state"]

    batch, groups, responses = batch_shapes(cfg, stage, model_dir, config, length)
    batch_sh = {k: batch_sharding(v.shape, mesh) for k, v in batch.items()}

    spec = StepSpec.from_config(cfg, stage, groups=groups, responses=responses)
    step_fn = make_train_step(trees.graphdef, spec, tx)
    t1 = time.perf_counter()
    jitted = jit_step(step_fn, state_sh, frozen_sh, ref_sh, batch_sh, mesh)
    with _mesh_context(mesh, devices), use_rules(rules):  # activation constraints by name, as the trainer
        lowered = jitted.lower(state, frozen, ref, batch)
        t2 = time.perf_counter()
        compiler_error = ""
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - the TPU compiler refuses a program larger than HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            compiled, compiler_error = None, " ".join(str(e).split())
        t3 = time.perf_counter()
        flops = jaxpr_flops(jax.make_jaxpr(step_fn)(state, frozen, ref, batch).jaxpr)
    t4 = time.perf_counter()

    counted = {
        "trainable parameters": tree_bytes(params, p_sh),
        "frozen parameters": tree_bytes(frozen, frozen_sh),
        "reference copy": 0 if ref is None else tree_bytes(ref, ref_sh),
        "optimizer state": tree_bytes(opt_state, opt_sh),
        "batch": tree_bytes(batch, batch_sh),
    }
    counted["gradients"] = counted["trainable parameters"]
    cost = None
    if compiled is not None:
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        stats = {"argument": int(mem.argument_size_in_bytes), "output": int(mem.output_size_in_bytes),
                 "alias": int(mem.alias_size_in_bytes), "temp": int(mem.temp_size_in_bytes),
                 "code": int(mem.generated_code_size_in_bytes)}
    else:  # what the compiler said it needed ("HLO temporaries (176.64G)") beside the counted arguments
        found = re.search(r"temporaries \(([0-9.]+)([KMGT])\)", compiler_error)
        temp = int(float(found.group(1)) * 1024 ** " KMGT".index(found.group(2))) if found else 0
        stats = {"argument": sum(v for k, v in counted.items() if k != "gradients"), "output": 0, "alias": 0,
                 "temp": temp, "code": 0}
    largest = (_named(params, p_sh, "params/") + _named(frozen, frozen_sh, "frozen/")
               + _named(opt_state, opt_sh, "opt_state/") + ([] if ref is None else _named(ref, ref_sh, "ref/")))
    largest.sort(key=lambda r: -r[1])
    count = lambda tree: sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(tree))
    return Plan(chips=len(devices), mesh=dict(mesh.shape), length=length, groups=groups, responses=responses,
                grad_accum=cfg.optim.grad_accum, params_total=count(trees.full),
                params_trainable=count(params), bytes=counted, compiled=stats, flops=flops,
                xla_flops=float(cost.get("flops", 0.0)) if cost else 0.0, largest=largest[:8],
                seconds={"build": round(t1 - t0, 1), "lower": round(t2 - t1, 1), "compile": round(t3 - t2, 1),
                         "flops": round(t4 - t3, 1)}, compiler_error=compiler_error)


# ------------------------------------------------------------------------------------------------ report
def _gb(n: float) -> str:
    return f"{n / GB:8.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:8.2f} MB"


def _exact(n: int) -> str:
    return f"{_gb(n)}  ({n:,} B)"


def render(plan: Plan, *, chip: str | None, hbm_bytes: float | None, peak_flops: float | None, mfu: float,
           where: str) -> tuple[str, bool]:
    """The report text and whether the step fits (``hbm_bytes`` None: unknown, counted as fitting)."""
    b, c = plan.bytes, plan.compiled
    temp_rest = max(c["temp"] - b["gradients"], 0)
    lines = [
        f"plan: {where}: {plan.chips} chips ({chip or 'unknown chip'}), mesh " +
        " x ".join(f"{k}={v}" for k, v in plan.mesh.items()),
        f"  step: {plan.grad_accum} micro-batch(es) x {plan.groups} groups x {plan.responses} responses, rows of "
        f"{plan.length} tokens; {plan.params_total:,} parameters, {plan.params_trainable:,} trainable",
        "  per chip (counted from the abstract state):",
        *[f"    {k:<22}{_exact(v)}" for k, v in b.items() if k != "gradients"],
        f"    {'gradients':<22}{_exact(b['gradients'])}  (an accumulator the size of the trainable parameters, "
        f"inside temp)",
        f"    {'activations + other':<22}{_gb(temp_rest)}  (compiled temp - gradients)",
        "  per chip (compiler memory analysis):",
        f"    arguments {_gb(c['argument'])}   outputs {_gb(c['output'])}   donated (aliased) {_gb(c['alias'])}",
        f"    temp      {_gb(c['temp'])}   code    {_gb(c['code'])}",
        f"    total     {_gb(plan.total_bytes)}" + (f" of {_gb(hbm_bytes).strip()} HBM "
                                                     f"({100 * plan.total_bytes / hbm_bytes:.0f}%)"
                                                     if hbm_bytes else " (HBM of this device unknown: --hbm-gb)"),
        f"  FLOPs per step: {plan.flops:.4g} (all chips; {plan.flops / plan.chips:.4g} per chip; matmuls counted "
        f"on the jaxpr with scan lengths); XLA cost_analysis {plan.xla_flops:.4g} per chip (loop bodies once)",
    ]
    if peak_flops:
        t = plan.flops / plan.chips / (peak_flops * mfu)
        lines.append(f"  expected step time at MFU {mfu:g}: {t:.3f} s ({peak_flops / 1e12:g} TFLOP/s bf16 peak "
                     f"per chip)")
    else:
        lines.append("  expected step time: peak FLOP/s of this device unknown (--peak-tflops)")
    lines.append(f"  times: build {plan.seconds['build']} s, lower {plan.seconds['lower']} s, compile "
                 f"{plan.seconds['compile']} s, FLOP count {plan.seconds['flops']} s")
    fits = not plan.compiler_error and (hbm_bytes is None or plan.total_bytes <= hbm_bytes)
    if plan.compiler_error:
        lines.append(f"  compiler: {plan.compiler_error}")
    if fits:
        lines.append("fits" if hbm_bytes else "fits: unknown (no HBM size)")
    else:
        limit = _gb(hbm_bytes).strip() if hbm_bytes else "the device's memory"
        lines.append(f"DOES NOT FIT: {_gb(plan.total_bytes).strip()} > {limit} per chip; largest buffers per chip:")
        parts = sorted([("temporaries (activations, gradients)", c["temp"])]
                       + [(k, v) for k, v in b.items() if k != "gradients"], key=lambda r: -r[1])
        lines += [f"    {name:<40}{_gb(v)}" for name, v in parts[:4]]
        lines += [f"    {name} {list(shape)} {dt}: {_gb(v).strip()}" for name, v, shape, dt in plan.largest[:5]]
    return "\n".join(lines), fits


def device_limits(devices, chip: str | None) -> tuple[float | None, float | None]:
    """``(hbm_bytes, peak_flops)`` per chip from :data:`CHIPS`; CPUs: the host memory over the device count."""
    if chip in CHIPS:
        hbm, peak = CHIPS[chip]
        return hbm * GB, peak * 1e12
    if devices and devices[0].platform == "cpu":
        try:
            host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return host / len(devices), None
        except (ValueError, OSError, AttributeError):
            return None, None
    return None, None
