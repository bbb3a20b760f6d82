"""The training loop: model + data + mesh + optimizer + checkpoints + metrics, for every stage.

Functional core: one jitted ``step(state, frozen, ref, micro_batches)`` per length bucket with explicit in/out
shardings and a donated train state. Everything stateful (data iterator, checkpoint manager, logs) stays on the
host side of this loop.
"""

from __future__ import annotations

import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from jax_align.models import LlavaModel

from jax_align.model_store import load_model, save_model
from jax_align.sharding import DEFAULT_RULES, make_mesh, spec_for, state_shardings

from .checkpointing import TrainCheckpointer
from .config import Config, dump
from .metrics_log import MetricsLog, Progress
from .optim import build_optimizer
from .partition import split_trainable
from .steps import StepSpec, make_train_step

log = logging.getLogger("jax_align.train")

STAGE_FORMAT = {"sft": "sft", "critic": "scored", "reward": "scored", "critique_reward": "pairwise",
                "dpo": "pairwise", "mmdpo": "pairwise", "mdpo": "ranked"}
REWARD_STAGES = ("reward", "critique_reward")  # stages that train a scalar reward head
PAD_VALUES = {"input_ids": None, "positions": 0, "segment_ids": 0, "prefix_segment_ids": 0, "labels": -100,
              "label_src": 0, "token_weights": 0.0, "response_ids": -1, "group_ids": -1}


class TrainingDiverged(RuntimeError):
    pass


def _dtype(name: str):
    return jnp.dtype({"fp32": "float32", "bf16": "bfloat16"}.get(name, name))


def prepare_inputs(cfg: Config) -> tuple[str, str]:
    """Resolve (model_dir, data_path), generating the world data / from-scratch model dir when asked."""
    run_dir = cfg.run.dir
    data_path = cfg.data.train
    world_dir = None
    if not data_path:
        if not cfg.data.world:
            raise ValueError("data.train is empty and data.world is not set: nothing to train on")
        world_dir = os.path.join(run_dir, "world")
        from jax_align.world.datasets import write_world

        if not os.path.isfile(os.path.join(world_dir, "world.json")):
            write_world(world_dir, seed=int(cfg.data.world.get("seed", 0)), n=int(cfg.data.world.get("n", 64)))
        fmt = cfg.data.format or STAGE_FORMAT[cfg.run.stage]
        from jax_align.world.preferences import pairs_from_scored, ranked_from_scored

        if cfg.run.stage == "critique_reward":
            from jax_align.world.critiques import critique_pairs

            data_path = os.path.join(world_dir, "critique_pairs.jsonl")
            if not os.path.isfile(data_path):
                critique_pairs(world_dir, data_path)
        elif fmt == "sft":
            data_path = os.path.join(world_dir, "sft.jsonl")
        elif fmt == "pairwise":
            data_path = os.path.join(world_dir, "pairs.jsonl")
            if not os.path.isfile(data_path):
                pairs_from_scored(os.path.join(world_dir, "reward.jsonl"), data_path)
        elif fmt == "ranked":
            data_path = os.path.join(world_dir, "ranked.jsonl")
            if not os.path.isfile(data_path):
                ranked_from_scored(os.path.join(world_dir, "reward.jsonl"), data_path)
        else:
            data_path = os.path.join(world_dir, "reward.jsonl")
    if cfg.run.stage == "critic":  # EACO's generative critic: scored candidates rendered as SFT text (spec §1.3)
        from jax_align.recipes.critic_data import critic_sft_file

        critic_path = os.path.join(run_dir, "critic_sft.jsonl")
        if not os.path.isfile(critic_path):
            critic_sft_file(data_path, critic_path)
        data_path = critic_path
    if cfg.model.path:
        return cfg.model.path, data_path
    if not cfg.model.init:
        raise ValueError("set model.path (a checkpoint) or model.init (tiny-world or a config.json)")
    init_dir = os.path.join(run_dir, "init_model")
    if not os.path.isfile(os.path.join(init_dir, "config.json")):
        from jax_align.presets import tiny_world_model_dir

        tok = cfg.model.tokenizer or (os.path.join(world_dir, "tokenizer") if world_dir else "")
        if cfg.model.init != "tiny-world":
            raise ValueError(f"model.init {cfg.model.init!r}: only 'tiny-world' is built in")
        if not tok:
            raise ValueError("model.init=tiny-world needs model.tokenizer (or data.world to make one)")
        tiny_world_model_dir(init_dir, tok)
    return init_dir, data_path


def _pad_to(batch: dict, length: int, pad_id: int) -> dict:
    out = {}
    for k, v in batch.items():
        if k in PAD_VALUES and v.shape[-1] < length:
            fill = pad_id if k == "input_ids" else PAD_VALUES[k]
            v = np.concatenate([v, np.full(v.shape[:-1] + (length - v.shape[-1],), fill, v.dtype)], axis=-1)
        out[k] = v
    return out


def stack_micro_batches(batches: list[dict], pad_id: int) -> dict:
    """Stack micro-batches on a new leading axis, padding sequences to the longest bucket among them."""
    length = max(b["input_ids"].shape[-1] for b in batches)
    batches = [_pad_to(b, length, pad_id) for b in batches]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def _model(self, model_dir: str):
        """The starting model, built with the configured parameter dtype, compute dtype and remat policy."""
        cfg = self.cfg
        pdtype = _dtype(cfg.model.param_dtype)
        compute = None if cfg.model.compute_dtype in ("", "float32", "fp32") else _dtype(cfg.model.compute_dtype)
        if cfg.model.path:
            config, graphdef, params = load_model(model_dir, dtype=pdtype, compute_dtype=compute,
                                                  remat=cfg.model.remat)
            return config, nnx.merge(graphdef, params)
        from jax_align.models import LlavaConfig

        config = LlavaConfig.from_hf_dir(model_dir).replace(source_dir=os.path.abspath(model_dir))
        return config, LlavaModel(config, rngs=nnx.Rngs(cfg.run.seed), param_dtype=pdtype, dtype=compute,
                                  remat=cfg.model.remat)

    def run(self) -> dict:
        cfg = self.cfg
        os.makedirs(cfg.run.dir, exist_ok=True)
        primary = jax.process_index() == 0  # one writer for logs, config and model files; all save checkpoints
        if primary:
            dump(cfg, os.path.join(cfg.run.dir, "config.yaml"))
        model_dir, data_path = prepare_inputs(cfg)
        mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        config, model = self._model(model_dir)
        stage = cfg.run.stage

        # ---- data
        from jax_align.data.pipeline import DataConfig, DataPipeline

        fmt = "sft" if stage == "critic" else (cfg.data.format or STAGE_FORMAT[stage])
        accum = cfg.optim.grad_accum
        n_proc = jax.process_count()
        micro_groups = cfg.data.batch_size // accum // n_proc
        if micro_groups < 1:
            raise ValueError(f"data.batch_size {cfg.data.batch_size} is too small for grad_accum {accum} x "
                             f"{n_proc} processes")
        buckets = tuple(cfg.data.buckets) or (cfg.data.max_length,)
        dcfg = DataConfig(path=data_path, format=fmt, model_dir=model_dir, batch_size=micro_groups, buckets=buckets,
                          max_length=cfg.data.max_length, layout=cfg.data.layout, seed=cfg.run.seed,
                          shuffle=cfg.data.shuffle, num_epochs=None, shard_index=jax.process_index(),
                          shard_count=n_proc, worker_count=cfg.data.workers,
                          on_error="strict" if cfg.data.on_error == "raise" else "skip", drop_remainder=True,
                          num_responses=2 if stage in ("dpo", "mmdpo", "critique_reward")
                          else (cfg.data.num_responses or None), critique_prompt=stage == "critique_reward")
        responses = dcfg.responses_per_group
        table = None
        if stage in ("dpo", "mdpo", "mmdpo") and cfg.ref.mode == "cached":
            table = self._reference_table(dcfg, model, model_dir, micro_groups, responses)
        pipeline = DataPipeline(dcfg, reference_logps=table)
        pad_id = pipeline.tokenizer.pad_id

        # ---- parameters, reference, optimizer
        from jax_align.models.lora import merged_state, split_lora

        from .lora import maybe_apply_lora

        model, is_lora = maybe_apply_lora(model, cfg.lora, seed=cfg.run.seed)
        if is_lora:  # only the adapters train; the reference is the same weights with adapters off
            graphdef, trainable, frozen = split_lora(model)
        else:
            graphdef, trainable, frozen = split_trainable(model, cfg.model)
        params = {"model": trainable}
        if stage in REWARD_STAGES:
            params["reward_head"] = jnp.zeros((config.text.hidden_size,), jnp.float32)
        ref = None
        if stage in ("dpo", "mdpo", "mmdpo") and cfg.ref.mode == "copy" and not is_lora:
            ref_dtype = _dtype(cfg.ref.dtype) if cfg.ref.dtype else None
            full = nnx.state(model)
            # a real copy: the policy's buffers are donated to every step
            ref = jax.tree.map(lambda x: jnp.array(x, dtype=ref_dtype or x.dtype, copy=True), full)
        tx = build_optimizer(cfg.optim, cfg.train.steps, params)
        rules = DEFAULT_RULES
        p_sh = {"model": state_shardings(trainable, mesh, rules)}
        if "reward_head" in params:
            p_sh["reward_head"] = NamedSharding(mesh, PartitionSpec())
        params = jax.device_put(params, p_sh)
        frozen = jax.device_put(frozen, state_shardings(frozen, mesh, rules))
        if ref is not None:
            ref = jax.device_put(ref, state_shardings(ref, mesh, rules))
        replicated = NamedSharding(mesh, PartitionSpec())
        on_mesh = lambda x: x if len(x.sharding.device_set) == mesh.size else jax.device_put(x, replicated)
        opt_state = jax.tree.map(on_mesh, jax.jit(tx.init)(params))  # moments follow the params' shardings
        state = {"params": params, "opt_state": opt_state,
                 "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
                 "rng": jax.device_put(jax.random.key_data(jax.random.key(cfg.run.seed)), replicated)}
        state_sh = jax.tree.map(lambda x: x.sharding, state)

        # ---- resume
        ckpt = TrainCheckpointer(os.path.join(cfg.run.dir, "checkpoints"), keep=cfg.checkpoint.keep,
                                 use_async=cfg.checkpoint.use_async)
        start, data_state = 0, None
        latest = ckpt.latest_step() if cfg.checkpoint.resume == "auto" else None
        if latest is not None:
            state, data_state = ckpt.restore(latest, state)
            start = int(latest)
            if primary:
                print(f"resuming from {cfg.run.dir}/checkpoints step {start}", flush=True)
        iterator = pipeline.iterator(data_state)

        # ---- step function
        spec = StepSpec.from_config(cfg, groups=micro_groups * n_proc, responses=responses)
        step_fn = make_train_step(graphdef, spec, tx)
        compiled: dict = {}
        metrics_log = MetricsLog(cfg.run.dir, start_step=start, enabled=primary)
        progress = Progress(cfg.train.steps, start, cfg.train.progress and primary, desc=f"{stage}")
        t0 = time.perf_counter()
        last = {}
        try:
            for step in range(start + 1, cfg.train.steps + 1):
                host = stack_micro_batches([next(iterator) for _ in range(accum)], pad_id)
                batch = self._global_batch(host, mesh)
                key = tuple((k, v.shape) for k, v in sorted(batch.items()))
                fn = compiled.get(key)
                if fn is None:
                    batch_sh = jax.tree.map(lambda x: x.sharding, batch)
                    fn = jax.jit(step_fn, donate_argnums=(0,),
                                 in_shardings=(state_sh, jax.tree.map(lambda x: x.sharding, frozen),
                                               None if ref is None else jax.tree.map(lambda x: x.sharding, ref),
                                               batch_sh),
                                 out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())))
                    compiled[key] = fn
                state, metrics = fn(state, frozen, ref, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                metrics.update(iterator.metrics())
                metrics["lr"] = float(self._lr(tx, step))
                if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                    ckpt.wait()
                    good = ckpt.latest_step()
                    raise TrainingDiverged(
                        f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}); "
                        f"stopped without saving. The last good checkpoint is step {good} in "
                        f"{os.path.join(cfg.run.dir, 'checkpoints')}")
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    metrics_log.write(step, metrics)
                progress.update(metrics, int((host["segment_ids"] != 0).sum()) * n_proc)
                last = metrics
                if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
                    ckpt.save(step, state, iterator.get_state(), cfg.to_dict())
        finally:
            progress.close()
            metrics_log.close()
            ckpt.close()
            iterator.close()
        # ---- final model
        model_out = os.path.join(cfg.run.dir, "model")
        if is_lora:  # adapters folded into the kernels: an ordinary model that exports to HF as is
            final_state = merged_state(graphdef, state["params"]["model"], frozen)
        else:
            final_state = nnx.state(nnx.merge(graphdef, state["params"]["model"], frozen))
        save_model(model_out, config, final_state, source_dir=model_dir)
        if "reward_head" in state["params"] and primary:
            np.save(os.path.join(model_out, "reward_head.npy"), np.asarray(state["params"]["reward_head"]))
        summary = {"stage": stage, "steps": cfg.train.steps, "start_step": start, "compilations": len(compiled),
                   "seconds": round(time.perf_counter() - t0, 2), "model": model_out,
                   **{k: last[k] for k in ("loss", "rewards/accuracies", "rewards/margins") if k in last}}
        if primary:
            print("summary: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in summary.items()), flush=True)
        return summary

    def _reference_table(self, dcfg, model, model_dir: str, groups: int, responses: int):
        """Reference log-probs ``[num_records, K]`` of the starting policy, computed once and cached under
        ``run.dir/ref_cache`` keyed by data, weights, tokenizer and max length (issue 4 item 9)."""
        from jax_align.data.ref_cache import ReferenceLogpCache, fingerprint_arrays, reference_pass_batches

        from .steps import response_logps

        cfg = self.cfg
        graphdef, state = nnx.split(model)
        cache = ReferenceLogpCache.for_run(
            os.path.join(cfg.run.dir, "ref_cache"), dataset_path=dcfg.path,
            weights_fingerprint=fingerprint_arrays(np.asarray(x) for x in jax.tree.leaves(state)),
            model_dir=model_dir, max_length=dcfg.row_length_limit,
            extra={"layout": dcfg.layout, "K": responses, "round_weight": dcfg.round_weight})
        spec = StepSpec.from_config(cfg, groups=groups, responses=responses)

        @jax.jit
        def logps(state, batch):
            return response_logps(nnx.merge(graphdef, state), batch, spec)[0]

        def compute(batch):
            return np.asarray(logps(state, {k: jnp.asarray(v) for k, v in batch.items()}))

        _, n_records, k = reference_pass_batches(dcfg)
        return cache.get_or_compute(lambda: reference_pass_batches(dcfg)[0], compute, num_records=n_records,
                                    num_responses=k)

    def _lr(self, tx, step):
        from .optim import schedule

        return schedule(self.cfg.optim, self.cfg.train.steps, self.cfg.optim.lr)(step - 1)

    @staticmethod
    def _global_batch(host: dict, mesh) -> dict:
        """Per-process micro-batches ``[A, B_local, ...]`` -> global arrays sharded over ``batch`` (axis 1)."""
        out = {}
        n = jax.process_count()
        if n > 1:  # local group / row indices become global ones
            p = jax.process_index()
            host = dict(host)
            rows, groups = host["input_ids"].shape[1], host["group_mask"].shape[1]
            host["group_ids"] = np.where(host["group_ids"] >= 0, host["group_ids"] + p * groups, -1)
            if "response_row" in host:
                host["response_row"] = np.where(host["response_row"] >= 0, host["response_row"] + p * rows, -1)
        for k, v in host.items():
            axes = (None, "batch") + (None,) * (v.ndim - 2)
            global_shape = (v.shape[0], v.shape[1] * n, *v.shape[2:])
            sharding = NamedSharding(mesh, spec_for(axes, global_shape, mesh))
            if n > 1:
                out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
            else:
                out[k] = jax.device_put(v, sharding)
        return out
