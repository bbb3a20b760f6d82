"""A LoRA run's unmerged adapter, saved beside its merged model and read back as another run's initial adapters
(issue 14 item 5).

EACO's SFT stage continues the DPO stage's adapter (``../shared/spec/algorithms.md`` §1.2 step 7.3 and §1.5:
``--load_peft``, the DPO adapter trained further with a fresh optimizer at LR 2e-5). The merged model
``W' = W + (alpha / r) A B`` computes the same function, but training fresh adapters on ``W'`` is not the same
training: continuing moves ``(A, B)`` from their trained values (the gradient of ``A`` is scaled by ``B != 0``
from the first step), fresh adapters start at ``B = 0``. So a LoRA run writes, inside its model directory (in the
same atomic commit as the merged weights, :func:`jax_align.model_store.save_model`)::

    MODEL/adapter/adapter.json         rank, alpha, targets, include_projector, the adapted layers, and the base
                                       model the adapter was trained on (``base``: its directory, whether it came
                                       from model.path or model.init, run.seed)
    MODEL/adapter/adapter.safetensors  ``PATH.lora_a [in, r]`` and ``PATH.lora_b [r, out]`` per adapted layer, fp32,
                                       per-layer paths (``language_model.layers.3.self_attn.q_proj``) whatever
                                       ``model.scan_layers`` is

and ``lora.init_from=DIR`` (``MODEL`` or ``MODEL/adapter``) starts a run from its *base* model (``model.path`` /
``model.init``) with these ``A, B`` as the initial LoRA state and a fresh optimizer. :func:`check_init_from`
refuses, in one line naming the key, an adapter whose rank / alpha / targets / include_projector differ from the
run's ``lora`` section, and a run whose model is the adapter's own merged model (the update would count twice).
A checkpoint to resume wins over ``init_from`` (the trainer restores it over the initial state).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config, ConfigError

log = logging.getLogger("jax_align.train")

ADAPTER_DIR = "adapter"
META = "adapter.json"
WEIGHTS = "adapter.safetensors"
FORMAT = "jax-align-lora-adapter"
NAMES = ("lora_a", "lora_b")


def _targets(value) -> list[str]:
    return [value] if isinstance(value, str) else [str(t) for t in value]


def _slots(model):
    """``[(key, variable, stack index or None)]`` of every adapter matrix of ``model``, in layer order."""
    from jax_align.models.layers import StackedLayerView
    from jax_align.models.lora import adapted_layers

    out = []
    for path, layer in adapted_layers(model):
        stacked = isinstance(layer, StackedLayerView)
        owner = layer.dense if stacked else layer
        for name in NAMES:
            out.append((f"{path}.{name}", getattr(owner, name), layer.index if stacked else None))
    return out


def _host(x) -> np.ndarray:
    if jax.process_count() > 1:  # every process joins; each gets the full array
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def adapter_arrays(model) -> dict[str, np.ndarray]:
    """``{PATH.lora_a: [in, r], PATH.lora_b: [r, out]}`` of ``model``'s adapted layers, fp32 on the host.

    Call it on every process of a multi-process run (the arrays are gathered)."""
    cache: dict[int, np.ndarray] = {}
    out = {}
    for key, var, index in _slots(model):
        if id(var) not in cache:
            cache[id(var)] = _host(var.get_value())
        value = cache[id(var)]
        out[key] = np.asarray(value if index is None else value[index], np.float32)
    return out


def adapter_meta(cfg: Config, base_dir: str, *, stage: str, steps: int, layers: int) -> dict:
    """The ``adapter.json`` of a run of ``cfg`` that started from the model in ``base_dir``."""
    return {"format": FORMAT, "version": 1, "rank": int(cfg.lora.rank), "alpha": float(cfg.lora.alpha),
            "dropout": float(cfg.lora.dropout), "targets": _targets(cfg.lora.targets),
            "include_projector": bool(cfg.lora.include_projector), "layers": int(layers),
            "base": {"model": os.path.abspath(base_dir), "from": "model.path" if cfg.model.path else "model.init",
                     "seed": int(cfg.run.seed)},
            "stage": stage, "steps": int(steps), "init_from": cfg.lora.init_from or None}


def write_adapter(model_dir: str, arrays: dict[str, np.ndarray], meta: dict) -> str:
    """Write ``MODEL/adapter/`` into ``model_dir`` (the model's temporary directory while it is being saved, so
    the adapter is committed with the merged weights). Returns the adapter directory."""
    from safetensors.numpy import save_file

    out = os.path.join(model_dir, ADAPTER_DIR)
    os.makedirs(out, exist_ok=True)
    save_file(arrays, os.path.join(out, WEIGHTS), metadata={"format": FORMAT})
    with open(os.path.join(out, META), "w", encoding="utf-8") as f:  # last: its presence means complete
        json.dump(meta, f, indent=2, sort_keys=True)
    return out


def resolve_adapter_dir(path: str) -> str:
    """The adapter directory of ``lora.init_from``: ``path`` itself or ``path/adapter``; a ConfigError if neither
    holds ``adapter.json``."""
    for d in (os.path.join(path, ADAPTER_DIR), path):
        if os.path.isfile(os.path.join(d, META)):
            return os.path.abspath(d)
    raise ConfigError(f"lora.init_from: {path}: no LoRA adapter here (expected {path}/{ADAPTER_DIR}/{META}, written "
                      f"by a LoRA run into its model directory)")


def read_meta(adapter_dir: str) -> dict:
    try:
        with open(os.path.join(adapter_dir, META), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"lora.init_from: {adapter_dir}/{META}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"lora.init_from: {adapter_dir}/{META}: not a jax-align LoRA adapter")
    return meta


def check_init_from(cfg: Config, model_dir: str) -> dict:
    """Check ``lora.init_from`` against the run before any model is built; returns the adapter's metadata.

    ConfigError (one line) when the adapter's rank / alpha / targets / include_projector differ from ``cfg.lora``,
    when the run starts from the adapter's own merged model, or when the adapter's base was a random
    ``model.init`` with another ``run.seed``. A different base directory is only logged (a copy of the base is
    fine)."""
    where = cfg.lora.init_from
    adapter_dir = resolve_adapter_dir(where)
    meta = read_meta(adapter_dir)
    mine = {"lora.rank": int(cfg.lora.rank), "lora.alpha": float(cfg.lora.alpha),
            "lora.targets": _targets(cfg.lora.targets), "lora.include_projector": bool(cfg.lora.include_projector)}
    theirs = {"lora.rank": meta.get("rank"), "lora.alpha": float(meta.get("alpha", 0.0)),
              "lora.targets": meta.get("targets"), "lora.include_projector": bool(meta.get("include_projector"))}
    bad = [f"{k}={mine[k]!r} (adapter: {theirs[k]!r})" for k in mine if mine[k] != theirs[k]]
    if bad:
        raise ConfigError(f"lora.init_from: {where}: the adapter does not match this run's LoRA config: "
                          f"{', '.join(bad)}; set the run's values to the adapter's")
    base = meta.get("base") or {}
    merged_dir = os.path.dirname(adapter_dir)
    if os.path.realpath(model_dir) == os.path.realpath(merged_dir):
        raise ConfigError(f"lora.init_from: {where}: the run starts from the model this adapter is already merged "
                          f"into ({merged_dir}); start from its base instead ({base.get('from', 'model.path')}="
                          f"{base.get('model')})")
    if base.get("from") == "model.init" and not cfg.model.path and base.get("seed") != cfg.run.seed:
        raise ConfigError(f"lora.init_from: {where}: the adapter was trained on a random model.init with "
                          f"run.seed={base.get('seed')}, this run has run.seed={cfg.run.seed}: its base weights "
                          f"would differ")
    if base.get("from") == "model.path" and base.get("model") and (
            os.path.realpath(base["model"]) != os.path.realpath(model_dir)):
        log.warning("lora.init_from: the adapter was trained on %s, this run starts from %s", base["model"],
                    model_dir)
    return meta


def load_adapter(model, path: str) -> int:
    """Set the adapters of ``model`` (already adapted by the run's ``lora`` config) to the saved ``A, B`` of
    ``path`` (``lora.init_from``), in place. Returns the number of adapted layers.

    ConfigError when the saved layers or shapes differ from the model's (another model, other targets)."""
    from safetensors.numpy import load_file

    adapter_dir = resolve_adapter_dir(path)
    saved = load_file(os.path.join(adapter_dir, WEIGHTS))
    slots = _slots(model)
    want = {key for key, _, _ in slots}
    missing, extra = sorted(want - set(saved)), sorted(set(saved) - want)
    if missing or extra:
        raise ConfigError(f"lora.init_from: {path}: the adapter's layers differ from this model's: "
                          f"{len(missing)} missing (e.g. {missing[:1]}), {len(extra)} not in this model "
                          f"(e.g. {extra[:1]})")
    values: dict[int, tuple] = {}  # variable id -> (variable, host copy being filled)
    for key, var, index in slots:
        if id(var) not in values:
            values[id(var)] = (var, np.array(jax.device_get(var.get_value()), dtype=np.float32))
        target = values[id(var)][1]
        shape = target.shape if index is None else target.shape[1:]
        if saved[key].shape != shape:
            raise ConfigError(f"lora.init_from: {path}: {key} has shape {saved[key].shape}, this model's is {shape}")
        if index is None:
            target[...] = saved[key]
        else:
            target[index] = saved[key]
    for var, value in values.values():
        var.set_value(jnp.asarray(value, var.get_value().dtype))
    return len(slots) // len(NAMES)
