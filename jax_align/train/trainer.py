"""The training loop: model + data + mesh + optimizer + checkpoints + metrics, for every stage.

Functional core: one jitted ``step(state, frozen, ref, micro_batches)`` per length bucket with explicit in/out
shardings and a donated train state. Everything stateful (data iterator, checkpoint manager, logs) stays on the
host side of this loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_align.data.buckets import resolve_buckets
from jax_align.host_memory import trim_host_memory
from jax_align.model_store import load_model, save_model
from jax_align.models import LlavaModel
from jax_align.run_lock import lock_run_dir
from jax_align.sharding import make_mesh, rules_from_config, use_rules

from .adapter import adapter_arrays, adapter_meta, check_init_from, write_adapter
from .checkpointing import TrainCheckpointer, check_resume, fingerprint, resume_state
from .config import Config, ConfigError, dump
from .metrics_log import MetricsLog, Progress
from .optim import build_optimizer
from .reward_head import save_head
from .stages import Stage, get_stage
from .state_spec import batch_sharding, jit_step, model_kwargs, param_shardings, place_train_state, split_params
from .steps import StepSpec, make_train_step

log = logging.getLogger("jax_align.train")

PAD_VALUES = {"input_ids": None, "positions": 0, "segment_ids": 0, "prefix_segment_ids": 0, "labels": -100,
              "label_src": 0, "token_weights": 0.0, "response_ids": -1, "group_ids": -1}


class TrainingDiverged(RuntimeError):
    pass


def init_model_dir(cfg: Config) -> str:
    """The directory of a randomly initialised model from ``model.init`` (a HF ``config.json``, or a directory
    holding one): the config plus the tokenizer / processor files of ``model.tokenizer`` (default: the config's
    own directory), copied to ``run.dir/init_model`` unless the config already lives there."""
    src = cfg.model.init
    config_path = os.path.join(src, "config.json") if os.path.isdir(src) else src
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"model.init: {src}: no such config.json (give a HF LLaVA config.json or a "
                                f"directory holding one)")
    tok_dir = cfg.model.tokenizer or os.path.dirname(os.path.abspath(config_path))
    out = os.path.join(cfg.run.dir, "init_model")
    if os.path.abspath(os.path.dirname(config_path)) == os.path.abspath(out):
        return out
    if not any(os.path.isfile(os.path.join(tok_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"model.tokenizer: {tok_dir}: no tokenizer files (set model.tokenizer to a "
                                f"tokenizer/processor directory)")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(tok_dir):
        path = os.path.join(tok_dir, name)
        if os.path.isfile(path) and name not in ("config.json",) and not name.endswith((".safetensors", ".bin")):
            shutil.copy2(path, os.path.join(out, name))
    tmp = os.path.join(out, "config.json.tmp")  # config.json last and atomically: it marks a complete dir
    shutil.copy2(config_path, tmp)
    os.replace(tmp, os.path.join(out, "config.json"))
    return out


def prepare_inputs(cfg: Config, stage: Stage) -> tuple[str, str]:
    """``(model_dir, data_path)``: the start model's directory and the file the data pipeline reads."""
    if not cfg.data.train:
        raise ValueError("data.train is empty: give a data file (or data.world, resolved by `jax-align train`)")
    data_path = cfg.data.train
    if stage.prepare_data is not None:
        data_path = stage.prepare_data(data_path, cfg)
    if cfg.model.path:
        return cfg.model.path, data_path
    if not cfg.model.init:
        raise ValueError("set model.path (a checkpoint) or model.init (a HF config.json for a random init)")
    return init_model_dir(cfg), data_path


def check_mesh(cfg: Config, mesh, n_devices: int) -> None:
    """A mesh must span the devices it was given (no silently idle devices) and the data-parallel ways must
    divide the micro-batch's groups (no silent fall-back to replication)."""
    if mesh.size != n_devices:
        raise ConfigError(f"mesh.data x mesh.fsdp x mesh.tensor = {dict(mesh.shape)} uses {mesh.size} of "
                          f"{n_devices} devices: the product must be the device count (-1 fills one axis; "
                          f"mesh.devices=N uses the first N devices on purpose)")
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    groups = cfg.data.batch_size // cfg.optim.grad_accum
    if groups % data_ways:
        raise ConfigError(f"data.batch_size / optim.grad_accum = {groups} groups per micro-batch is not divisible "
                          f"by the data-parallel ways mesh.data x mesh.fsdp = {data_ways}")


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
    """``Trainer(cfg, annotator=None).run()``. ``annotator`` ranks the policy's samples of the online stages
    (:class:`jax_align.train.online.Annotator`; ``jax-align train`` builds it from ``online.annotator``)."""

    def __init__(self, cfg: Config, annotator=None):
        self.cfg = cfg
        self.annotator = annotator

    def _model(self, model_dir: str):
        """The starting model, built with the configured parameter dtype, compute dtype and remat policy."""
        cfg = self.cfg
        kw = model_kwargs(cfg)
        if cfg.model.path:
            config, graphdef, params = load_model(model_dir, dtype=kw.pop("param_dtype"),
                                                  compute_dtype=kw.pop("dtype"), **kw)
            return config, nnx.merge(graphdef, params)
        from jax_align.models import LlavaConfig

        config = LlavaConfig.from_hf_dir(model_dir).replace(source_dir=os.path.abspath(model_dir))
        return config, LlavaModel(config, rngs=nnx.Rngs(cfg.run.seed), **kw)

    def run(self) -> dict:
        """Train; the run directory is locked for the whole run (a second run on it stops naming the holder)."""
        cfg = self.cfg
        os.makedirs(cfg.run.dir, exist_ok=True)
        primary = jax.process_index() == 0  # one writer for logs, config and model files; all save checkpoints
        with lock_run_dir(cfg.run.dir, enabled=primary):
            return self._run(primary)

    def _run(self, primary: bool) -> dict:
        cfg = self.cfg
        ckpt = TrainCheckpointer(os.path.join(cfg.run.dir, "checkpoints"), keep=cfg.checkpoint.keep,
                                 use_async=cfg.checkpoint.use_async)
        fp = fingerprint(cfg.to_dict())
        check_resume(ckpt, cfg.checkpoint.resume, fp)  # before config.yaml is overwritten
        stage = get_stage(cfg.run.stage)
        devices = jax.devices()[: cfg.mesh.devices] if cfg.mesh.devices > 0 else jax.devices()
        mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
        check_mesh(cfg, mesh, len(devices))
        if primary:
            dump(cfg, os.path.join(cfg.run.dir, "config.yaml"))
        model_dir, data_path = prepare_inputs(cfg, stage)
        if cfg.lora.init_from:  # a mismatched adapter stops the run here, before data or model are read
            check_init_from(cfg, model_dir)

        # ---- data
        from jax_align.data.pipeline import DataConfig, DataPipeline

        fmt = stage.pipeline_format or cfg.data.format or stage.record_format
        accum = cfg.optim.grad_accum
        n_proc = jax.process_count()
        micro_groups = cfg.data.batch_size // accum // n_proc
        if micro_groups < 1:
            raise ValueError(f"data.batch_size {cfg.data.batch_size} is too small for grad_accum {accum} x "
                             f"{n_proc} processes")
        buckets = resolve_buckets(cfg.data.buckets, cfg.data.max_length)  # [] = the default ladder
        dcfg = DataConfig(path=data_path, format=fmt, model_dir=model_dir, batch_size=micro_groups, buckets=buckets,
                          max_length=cfg.data.max_length, layout=cfg.data.layout, seed=cfg.run.seed,
                          shuffle=cfg.data.shuffle, num_epochs=None, shard_index=jax.process_index(),
                          shard_count=n_proc, worker_count=cfg.data.workers,
                          on_error="strict" if cfg.data.on_error == "raise" else "skip", drop_remainder=True,
                          num_responses=stage.responses or cfg.data.num_responses or None,
                          critique_prompt=stage.critique_prompt, round_weight=cfg.data.round_weight,
                          required_fields=stage.record_fields(cfg), max_skip_fraction=cfg.data.max_skip_fraction,
                          pair_from_ranked=stage.responses == 2 and fmt in ("ranked", "scored"),
                          # a stage's derived file (critic text) points back at the source's checked images
                          allow_absolute_paths=cfg.data.allow_absolute_paths or stage.prepare_data is not None,
                          max_image_pixels=cfg.data.max_image_pixels or None,
                          max_image_aspect_ratio=cfg.data.max_image_aspect_ratio or None)
        responses = dcfg.responses_per_group
        if stage.online and cfg.ref.mode == "cached":
            raise ConfigError(f"run.stage={stage.name} samples new pairs every round: ref.mode=cached cannot hold "
                              f"their reference log-probs (use ref.mode=copy or LoRA)")
        if not stage.online:  # data faults stop the run here, in seconds, before any model is built
            DataPipeline(dcfg).preflight()
        config, model = self._model(model_dir)
        table = None
        if stage.needs_reference and cfg.ref.mode == "cached":
            table = self._reference_table(dcfg, model, model_dir, micro_groups, responses)
        pipeline = None if stage.online else DataPipeline(dcfg, reference_logps=table)
        from jax_align.data.tokenize import ChatTokenizer

        pad_id = ChatTokenizer.from_model_dir(model_dir).pad_id if pipeline is None else pipeline.tokenizer.pad_id

        # ---- parameters, reference, optimizer (the same assembly jax-align plan makes abstractly)
        from jax_align.models.lora import merged_state

        trees = split_params(cfg, stage, model, config.text.hidden_size)
        graphdef, frozen, ref, is_lora = trees.graphdef, trees.frozen, trees.ref, trees.is_lora
        tx = build_optimizer(cfg.optim, cfg.train.steps, trees.params)
        rules = rules_from_config(cfg.mesh.rules)
        shardings = param_shardings(trees, mesh, rules)
        state, frozen, ref = place_train_state(trees, shardings, tx, mesh, cfg.run.seed)
        del trees, model
        trim_host_memory()  # loading and tokenizer scratch back to the OS before the step's buffers
        state_sh = jax.tree.map(lambda x: x.sharding, state)

        # ---- resume (corrupt checkpoints are reported and set aside; a changed config is refused)
        start, restored, data_state = resume_state(ckpt, state, cfg.checkpoint.resume, fp)
        if restored is not None:
            state = restored
            if primary:
                print(f"resuming from {cfg.run.dir}/checkpoints step {start}", flush=True)
        if stage.online:
            iterator = self._online_iterator(stage, dcfg, data_path, model_dir, config, graphdef, frozen, is_lora,
                                             lambda: state, start)
            iterator.set_state(data_state)
        else:
            iterator = pipeline.iterator(data_state)

        # ---- step function
        spec = StepSpec.from_config(cfg, stage, groups=micro_groups * n_proc, responses=responses)
        step_fn = make_train_step(graphdef, spec, tx)
        compiled: dict = {}
        metrics_log = MetricsLog(cfg.run.dir, start_step=start, enabled=primary)
        progress = Progress(cfg.train.steps, start, cfg.train.progress and primary, desc=stage.name)
        t0 = time.perf_counter()
        last = {}
        try:
            mesh_ctx = contextlib.ExitStack()  # activations get sharding constraints by name inside (sharding.py)
            mesh_ctx.enter_context(jax.set_mesh(mesh))
            mesh_ctx.enter_context(use_rules(rules))
            pending = None  # the last dispatched step, finished (metrics fetched) after the next one is queued

            def finish(p: dict) -> dict:
                """Fetch a dispatched step's metrics (waits for it), check them, log them."""
                step, metrics = p["step"], {k: float(v) for k, v in jax.device_get(p["metrics"]).items()}
                metrics.update(p["data"])
                if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                    ckpt.wait()
                    good = ckpt.last_good_step(step)  # step N's loss comes from checkpoint N-1's parameters
                    where = os.path.join(cfg.run.dir, "checkpoints")
                    advice = (f"the last good checkpoint is step {good} in {where} (its parameters gave a finite "
                              f"loss): resume it with checkpoint.resume={good}, e.g. with a lower optim.lr"
                              if good is not None else
                              f"no checkpoint in {where} is known to give a finite loss (keep more with "
                              f"checkpoint.keep, or save more often)")
                    raise TrainingDiverged(
                        f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}); "
                        f"stopped without saving; {advice}")
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    metrics_log.write(step, metrics)
                progress.update(metrics, p["tokens"])
                return metrics

            for step in range(start + 1, cfg.train.steps + 1):
                # the host reads and lays out this batch while the previous step still runs (dispatch is
                # asynchronous; that step's metrics are fetched only after this one is queued)
                host = stack_micro_batches([next(iterator) for _ in range(accum)], pad_id)
                batch = self._global_batch(host, mesh)
                key = tuple((k, v.shape) for k, v in sorted(batch.items()))
                fn = compiled.get(key)
                if fn is None:
                    sharding_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
                    fn = jit_step(step_fn, state_sh, sharding_of(frozen),
                                  None if ref is None else sharding_of(ref), sharding_of(batch), mesh)
                    fn = fn.lower(state, frozen, ref, batch).compile()
                    trim_host_memory()  # the compiler's freed scratch goes back before the step's buffers come
                    compiled[key] = fn
                state, metrics = fn(state, frozen, ref, batch)
                data = iterator.metrics()
                data["data/row_length"] = float(host["input_ids"].shape[-1])  # the bucket this step padded to
                data["lr"] = float(self._lr(tx, step))
                if pending is not None:
                    last = finish(pending)
                pending = {"step": step, "metrics": metrics, "data": data,
                           "tokens": int((host["segment_ids"] != 0).sum()) * n_proc}
                if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
                    last, pending = finish(pending), None  # a checkpoint only of parameters with finite metrics
                    ckpt.save(step, state, iterator.get_state(), cfg.to_dict())
        finally:
            mesh_ctx.close()
            progress.close()
            metrics_log.close()
            ckpt.close()
            iterator.close()
        # ---- final model
        model_out = os.path.join(cfg.run.dir, "model")
        write_extra = None
        if is_lora:  # adapters folded into the kernels: an ordinary model that exports to HF as is; the unmerged
            # adapter goes beside it (MODEL/adapter/, for lora.init_from)
            arrays = adapter_arrays(nnx.merge(graphdef, state["params"]["model"], frozen))
            meta = adapter_meta(cfg, model_dir, stage=stage.name, steps=cfg.train.steps, layers=len(arrays) // 2)
            write_extra = lambda work: write_adapter(work, arrays, meta)  # noqa: E731
            final_state = merged_state(graphdef, state["params"]["model"], frozen)
        else:
            final_state = nnx.state(nnx.merge(graphdef, state["params"]["model"], frozen))
        save_model(model_out, config, final_state, source_dir=model_dir, extra=write_extra)
        if stage.reward_head and primary:
            save_head(model_out, jax.device_get(state["params"]["reward_head"]), stage=stage.name,
                      critique_prompt=stage.critique_prompt)
        summary = {"stage": stage.name, "steps": cfg.train.steps, "start_step": start,
                   "compilations": len(compiled), "seconds": round(time.perf_counter() - t0, 2), "model": model_out,
                   **{k: last[k] for k in stage.summary_metrics if k in last}}
        if primary:
            print("summary: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in summary.items()), flush=True)
        return summary

    def _reference_table(self, dcfg, model, model_dir: str, groups: int, responses: int):
        """Reference log-probs ``[num_records, K]`` of the starting policy, computed once and cached under
        ``run.dir/ref_cache`` keyed by data, weights, tokenizer and max length (issue 4 item 9)."""
        from jax_align.data.ref_cache import ReferenceLogpCache, fingerprint_arrays, reference_pass_batches

        from .forward import response_logps

        cfg = self.cfg
        graphdef, state = nnx.split(model)
        cache = ReferenceLogpCache.for_run(
            os.path.join(cfg.run.dir, "ref_cache"), dataset_path=dcfg.path,
            weights_fingerprint=fingerprint_arrays(np.asarray(x) for x in jax.tree.leaves(state)),
            model_dir=model_dir, max_length=dcfg.row_length_limit,
            extra={"layout": dcfg.layout, "K": responses, "round_weight": dcfg.round_weight})
        @jax.jit
        def logps(state, batch):
            return response_logps(nnx.merge(graphdef, state), batch, groups=groups, responses=responses,
                                  token_chunk=cfg.train.token_chunk)[0]

        def compute(batch):
            return np.asarray(logps(state, {k: jnp.asarray(v) for k, v in batch.items()}))

        _, n_records, k = reference_pass_batches(dcfg)
        return cache.get_or_compute(lambda: reference_pass_batches(dcfg)[0], compute, num_records=n_records,
                                    num_responses=k)

    def _online_iterator(self, stage, dcfg, data_path, model_dir, config, graphdef, frozen, is_lora, state_fn,
                         start):
        """Rounds of policy samples ranked by the annotator (spec §2.1), sampled from the live train state."""
        from jax_align.data.pipeline import DataPipeline
        from jax_align.models.lora import merged_state

        from .online import OnlineIterator, OnlineRounds, online_pipeline_config

        cfg = self.cfg
        if self.annotator is None and cfg.online.rejected != "bdhs":  # Online-BDHS pairs need no annotator
            raise ConfigError(f"run.stage={stage.name} needs an annotator: set online.annotator (world:DIR or "
                              f"reward:MODEL)")

        def params_fn():  # the policy's full state: the same arrays the step updates (LoRA: adapters folded in)
            trainable = state_fn()["params"]["model"]
            if is_lora:
                return merged_state(graphdef, trainable, frozen)
            return nnx.state(nnx.merge(graphdef, trainable, frozen))

        graphdef_full = nnx.graphdef(nnx.merge(graphdef, state_fn()["params"]["model"], frozen))
        rounds = OnlineRounds(cfg, data_path, model_dir, config, graphdef_full, params_fn, self.annotator,
                              mixed=stage.online == "mixed",
                              prompts_per_round=cfg.data.batch_size * cfg.online.every // jax.process_count())
        return OnlineIterator(rounds, lambda path: DataPipeline(online_pipeline_config(dcfg, path)),
                              cfg.online.every * cfg.optim.grad_accum, start * cfg.optim.grad_accum)

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
            global_shape = (v.shape[0], v.shape[1] * n, *v.shape[2:])
            sharding = batch_sharding(global_shape, mesh)
            if n > 1:
                out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
            else:
                out[k] = jax.device_put(v, sharding)
        return out
