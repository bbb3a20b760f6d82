"""The train state and its shardings, built once for the trainer (real arrays) and for ``jax-align plan``
(abstract ``ShapeDtypeStruct`` trees): the model's keywords, the LoRA / trainable / frozen split, the reward head,
the reference copy, the optimizer state, the shardings of each from the mesh's rules table, the batch shardings
and the jitted step with its in/out shardings and donation. Both callers get the same structure from here, so a
plan compiles exactly the step the trainer runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jax_align.sharding import spec_for, state_shardings

from .config import Config
from .partition import split_trainable
from .stages import Stage


def dtype_of(name: str):
    return jnp.dtype({"fp32": "float32", "bf16": "bfloat16"}.get(name, name))


def model_kwargs(cfg: Config) -> dict:
    """The ``LlavaModel`` / ``load_model`` keywords of ``cfg.model``: dtypes, remat, attention, layer scan."""
    compute = None if cfg.model.compute_dtype in ("", "float32", "fp32") else dtype_of(cfg.model.compute_dtype)
    kw = {"param_dtype": dtype_of(cfg.model.param_dtype), "dtype": compute, "remat": cfg.model.remat}
    for key in ("attention", "scan_layers"):
        if hasattr(cfg.model, key):
            kw[key] = getattr(cfg.model, key)
    return kw


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


@dataclass
class ParamTrees:
    """The model split for training: ``nnx.merge(graphdef, params["model"], frozen)`` is the policy."""

    graphdef: object
    params: dict  # {"model": trainable state, optionally "reward_head": head parameters}
    frozen: object
    ref: object  # the reference copy (ref.mode=copy without LoRA), else None
    full: object  # the whole model state (for counting parameters)
    is_lora: bool


def split_params(cfg: Config, stage: Stage, model, hidden_size: int, *, is_abstract: bool = False) -> ParamTrees:
    """LoRA adapters (``cfg.lora``; a real model's start from ``lora.init_from``'s saved adapter when set), the
    trainable / frozen split, the reward head and the reference copy of ``model`` (a real model, or one built under
    ``nnx.eval_shape`` with ``is_abstract``: then every tree is abstract)."""
    from jax_align.models.lora import split_lora

    from .lora import maybe_apply_lora
    from .reward_head import init_head

    model, is_lora = maybe_apply_lora(model, cfg.lora, seed=cfg.run.seed)
    if is_lora and cfg.lora.init_from and not is_abstract:  # the saved A, B as the initial adapters (spec §1.5)
        from .adapter import load_adapter

        load_adapter(model, cfg.lora.init_from)
    graphdef, trainable, frozen = split_lora(model) if is_lora else split_trainable(model, cfg.model)
    full = nnx.state(model)
    if is_abstract:
        trainable, frozen, full = abstract(trainable), abstract(frozen), abstract(full)
    params = {"model": trainable}
    if stage.reward_head:
        make = lambda: init_head(cfg.reward.head, hidden_size, seed=cfg.run.seed)  # noqa: E731
        params["reward_head"] = abstract(jax.eval_shape(make)) if is_abstract else make()
    ref = None
    if stage.needs_reference and cfg.ref.mode == "copy" and not is_lora:
        ref_dtype = dtype_of(cfg.ref.dtype) if cfg.ref.dtype else None
        if is_abstract:
            ref = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, ref_dtype or x.dtype), full)
        else:  # a real copy of what trains (the policy's buffers are donated to every step); frozen parameters
            # (the vision tower) never change, so the reference shares their arrays instead of a second copy
            shared = {id(x) for x in jax.tree.leaves(frozen)}
            ref = jax.tree.map(lambda x: x if id(x) in shared and ref_dtype in (None, x.dtype)
                               else jnp.array(x, dtype=ref_dtype or x.dtype, copy=True), full)
    return ParamTrees(graphdef, params, frozen, ref, full, is_lora)


@dataclass
class Shardings:
    params: dict
    frozen: object
    ref: object  # None without a reference copy
    replicated: NamedSharding


def param_shardings(trees: ParamTrees, mesh, rules) -> Shardings:
    """Parameters, frozen parameters and the reference copy by the rules table; a reward head replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    p_sh = {"model": state_shardings(trees.params["model"], mesh, rules)}
    if "reward_head" in trees.params:
        p_sh["reward_head"] = jax.tree.map(lambda _: replicated, trees.params["reward_head"])
    ref_sh = None if trees.ref is None else state_shardings(trees.ref, mesh, rules)
    return Shardings(p_sh, state_shardings(trees.frozen, mesh, rules), ref_sh, replicated)


def moment_shardings(opt_state, params, param_shardings, default):
    """Shardings of an optax state: a leaf whose path ends with a parameter's path and has its shape (Adam's
    ``mu``/``nu``) takes that parameter's sharding, anything else (step counters) ``default``. The trainer gets
    the same from ``jax.jit(tx.init)`` (``zeros_like`` keeps the sharding)."""
    def key(path):
        return tuple(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)

    flat_p, _ = jax.tree_util.tree_flatten_with_path(params)
    by_path = {key(path): (x.shape, s) for (path, x), s in zip(flat_p, jax.tree.leaves(param_shardings),
                                                                strict=True)}
    longest = max((len(k) for k in by_path), default=0)

    def one(path, x):
        k = key(path)
        for n in range(min(len(k), longest), 0, -1):
            hit = by_path.get(k[-n:])
            if hit is not None and tuple(hit[0]) == tuple(x.shape):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(one, opt_state)


def abstract_train_state(trees: ParamTrees, sh: Shardings, tx) -> tuple[dict, dict]:
    """``(state, state_shardings)`` of the train state ``{params, opt_state, step, rng}``, abstract."""
    opt_state = abstract(jax.eval_shape(tx.init, trees.params))
    opt_sh = moment_shardings(opt_state, trees.params, sh.params, sh.replicated)
    key_data = abstract(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    state = {"params": trees.params, "opt_state": opt_state, "step": jax.ShapeDtypeStruct((), jnp.int32),
             "rng": key_data}
    return state, {"params": sh.params, "opt_state": opt_sh, "step": sh.replicated, "rng": sh.replicated}


def place_train_state(trees: ParamTrees, sh: Shardings, tx, mesh, seed: int) -> tuple[dict, object, object]:
    """``(state, frozen, ref)`` on the mesh: parameters, frozen parameters and the reference copy put by their
    shardings, the optimizer state initialised from the placed parameters (its moments follow their shardings),
    step 0 and the key of ``seed`` replicated. ``jax.tree.map(lambda x: x.sharding, state)`` gives the state's
    shardings for the step."""
    params = jax.device_put(trees.params, sh.params)
    frozen = jax.device_put(trees.frozen, sh.frozen)
    ref = None if trees.ref is None else jax.device_put(trees.ref, sh.ref)
    on_mesh = lambda x: x if len(x.sharding.device_set) == mesh.size else jax.device_put(x, sh.replicated)  # noqa
    opt_state = jax.tree.map(on_mesh, jax.jit(tx.init)(params))
    state = {"params": params, "opt_state": opt_state,
             "step": jax.device_put(jnp.zeros((), jnp.int32), sh.replicated),
             "rng": jax.device_put(jax.random.key_data(jax.random.key(seed)), sh.replicated)}
    return state, frozen, ref


def batch_sharding(shape, mesh) -> NamedSharding:
    """A step's batch array ``[grad_accum, rows, ...]``: rows over the ``batch`` axes, the rest replicated."""
    return NamedSharding(mesh, spec_for((None, "batch") + (None,) * (len(shape) - 2), tuple(shape), mesh))


def jit_step(step_fn, state_sh, frozen_sh, ref_sh, batch_sh, mesh):
    """The step jitted as the trainer runs it: the train state donated, explicit in/out shardings, metrics
    replicated."""
    return jax.jit(step_fn, donate_argnums=(0,), in_shardings=(state_sh, frozen_sh, ref_sh, batch_sh),
                   out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())))
