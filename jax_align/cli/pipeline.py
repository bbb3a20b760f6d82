"""``jax-align pipeline eaco CONFIG [key=value ...]``: EACO end to end, resumable (spec §1.2-1.5).

Stages, in order (each writes ``DIR/.done/STAGE`` when it has finished; a re-run skips finished stages, so a
half-finished pipeline resumes from its last finished stage, and an interrupted training stage resumes from its
own checkpoints):

1. ``policy`` (optional): train the starting policy when ``policy.train`` is given (else ``policy.model``);
2. ``critic``: the generative critic (``critic`` stage on scored candidates, §1.3), starting from the policy;
3. ``pairs``: ``jax-align prefs eaco`` (N samples per image judged by the critic, best/worst, §1.2);
4. ``dpo``: DPO on the pairs (β 0.1, LoRA with the adapters-off reference, §1.4-1.5);
5. ``describe``: ``jax-align prefs describe`` with the DPO model (§1.2 step 7);
6. ``sft``: SFT on the description-infused records, continuing the DPO adapter (§1.2 step 7.3, §1.5).

The ``sft`` stage continues the DPO adapter (§1.2 step 7.3, §1.5: ``--load_peft``, the DPO adapter trained
further with a fresh optimizer at the preset's LR, 2e-5 in ``eaco_7b.yaml``). A LoRA run saves its model with the
adapters merged (``W' = W + (alpha / r) A B``: what ``describe``, eval and export read) and the unmerged adapter
beside it (``DIR/dpo/model/adapter/``, :mod:`jax_align.train.adapter`). When the DPO stage trained LoRA and the
``sft`` stage has ``lora.rank > 0``, the ``sft`` stage starts from the *base* model the DPO stage started from (the
adapter records it: ``model.path``, or ``model.init`` with its ``run.seed``) with ``lora.init_from=DIR/dpo/model``:
its start model computes the DPO model's logits and its adapters are the DPO adapters (``B != 0``). Fresh adapters
on ``W'`` would start from the same function but not the same training (``B' = 0``: the first step would move only
``B'``, and the update would live in a new rank-r subspace). Without LoRA in either stage the ``sft`` stage starts
from the merged DPO model (full fine-tuning). A ``model.path`` / ``model.init`` or ``lora.init_from`` given in
``sft.train`` is kept (then no adapter is added). ``jax-align pipeline`` checks before the first stage that the
two stages' ``lora`` rank, alpha, targets and include_projector agree.

The CONFIG (``configs/presets/eaco_*.yaml``) has ``dir``, an optional ``world: {seed, n}`` (rendered into
``DIR/world``; ``WORLD`` in any path stands for it), and one section per stage; a training stage's ``train``
mapping is a ``jax-align train`` config (sections ``run``, ``model``, ``data``, ``optim``, ``loss``, ``lora``,
``train``, ...) whose ``run.dir``, ``run.stage``, model and data paths the pipeline fills in unless given.
Every intermediate file is validated as ``data validate`` would (pairs as ``pairwise`` and ``ranked``, the
described records as ``sft``) before the next stage reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import yaml

STAGES = ("policy", "critic", "pairs", "dpo", "describe", "sft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", choices=("eaco",), help="the pipeline to run")
    parser.add_argument("config", help="pipeline YAML (configs/presets/eaco_tiny.yaml, eaco_7b.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config (e.g. dir=runs/x, "
                        "dpo.train.train.steps=5)")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and what each would do, run none")


def load_pipeline(path: str, overrides: list[str] = ()) -> dict:
    from jax_align.cli.errors import CommandError

    if not os.path.isfile(path):
        raise CommandError("no such file", file=path, field="config")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise CommandError("expected a mapping", file=path, field="config")
    for item in overrides:
        if "=" not in item:
            raise CommandError(f"override {item!r} is not key=value", field="overrides")
        key, value = item.split("=", 1)
        node = cfg
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CommandError(f"{p} is not a mapping", file=path, field=key)
        node[leaf] = yaml.safe_load(value) if value.strip() else ""
    unknown = set(cfg) - {"pipeline", "dir", "world", *STAGES}
    if unknown:
        raise CommandError(f"unknown sections {sorted(unknown)}; expected dir, world, {', '.join(STAGES)}",
                           file=path, field="config")
    if not cfg.get("dir"):
        raise CommandError("missing field: the pipeline's output directory", file=path, field="dir")
    if not (cfg.get("policy") or {}).get("model") and not (cfg.get("policy") or {}).get("train"):
        raise CommandError("missing field: policy.model (a model directory) or policy.train (a train config)",
                           file=path, field="policy")
    return cfg


def _paths(value, world: str | None):
    """``WORLD`` in strings replaced by the world directory (recursively)."""
    if isinstance(value, str):
        if "WORLD" in value and world is None:
            raise ValueError(f"{value!r} names WORLD but the pipeline config has no world section")
        return value.replace("WORLD", world) if world else value
    if isinstance(value, dict):
        return {k: _paths(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_paths(v, world) for v in value]
    return value


def _overrides(train: dict) -> list[str]:
    """A nested ``jax-align train`` config as ``section.key=value`` overrides."""
    out = []
    for section, values in train.items():
        if not isinstance(values, dict):
            raise ValueError(f"train config section {section!r} must be a mapping")
        for key, value in values.items():
            out.append(f"{section}.{key}=" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix(
                "\n...").removesuffix("..."))
    return out


def sft_start(spec: dict, dpo_model: str) -> tuple[dict, str | None]:
    """``(model section, lora.init_from)`` of the ``sft`` stage: the DPO stage's base model and its adapter when
    the DPO stage trained LoRA (``DPO/adapter/adapter.json``) and the ``sft`` stage does too, else the merged DPO
    model and no adapter; ``(None, None)`` when ``sft.train`` names its own model (§1.2 step 7.3, §1.5)."""
    from jax_align.train.adapter import ADAPTER_DIR, META

    train = spec.get("train") or {}
    if any((train.get("model") or {}).get(k) for k in ("path", "init")):
        return None, None  # the stage's own start model
    meta_path = os.path.join(dpo_model, ADAPTER_DIR, META)
    if int((train.get("lora") or {}).get("rank") or 0) <= 0 or not os.path.isfile(meta_path):
        return {"path": dpo_model}, None
    with open(meta_path, encoding="utf-8") as f:
        base = json.load(f).get("base") or {}
    if base.get("from") == "model.init":  # a random init: the same config (and, checked, the same run.seed)
        return {"init": base["model"]}, dpo_model
    return {"path": base["model"]}, dpo_model


def _train(stage_name: str, spec: dict, run_dir: str, *, model: str | dict | None, data: str | None,
           init_from: str | None = None) -> str:
    """Run one training stage through the trainer's public API; returns its final model directory. ``model`` is a
    model directory (``model.path``) or a ``model`` section, used only when the stage's config names no model;
    ``init_from`` is ``lora.init_from`` unless the config gives one."""
    from jax_align.train.config import load_config
    from jax_align.train.trainer import Trainer
    from jax_align.world.train_inputs import resolve_world_inputs

    train = {k: dict(v) for k, v in (spec.get("train") or {}).items()}
    train.setdefault("run", {}).setdefault("dir", run_dir)
    train["run"].setdefault("stage", stage_name)
    m = train.setdefault("model", {})
    if model and not m.get("path") and not m.get("init"):
        m.update({"path": model} if isinstance(model, str) else model)
    if init_from:
        train.setdefault("lora", {}).setdefault("init_from", init_from)
    d = train.setdefault("data", {})
    if data and not d.get("train"):
        d["train"] = data
    d.setdefault("allow_absolute_paths", True)  # the pipeline's own files point into DIR/world
    cfg = resolve_world_inputs(load_config(None, _overrides(train)))
    summary = Trainer(cfg).run()
    return summary.get("model") or os.path.join(cfg.run.dir, "model")


def _validate(path: str, fmt: str) -> None:
    """Every record of ``path`` parses in ``fmt`` (images checked), or stop naming the first bad record."""
    from jax_align.data.problems import DataError
    from jax_align.data.readers import open_records
    from jax_align.data.validate import RecordChecker, iter_problems

    problems = list(iter_problems(open_records(path), RecordChecker(fmt=fmt, allow_absolute_paths=True)))
    if problems:
        raise DataError(problems[:1])


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def plan(cfg: dict) -> list[tuple[str, str]]:
    """``(stage, what it does)`` for every stage that runs (``policy`` only with ``policy.train``)."""
    d = cfg["dir"]
    steps = []
    if (cfg.get("policy") or {}).get("train"):
        steps.append(("policy", f"train the starting policy -> {d}/policy/model"))
    steps += [("critic", f"train the generative critic (§1.3) -> {d}/critic/model"),
              ("pairs", f"prefs eaco: sample, judge, best/worst (§1.2) -> {d}/pairs.jsonl"),
              ("dpo", f"DPO on the pairs (§1.4) -> {d}/dpo/model"),
              ("describe", f"prefs describe with the DPO model (§1.2 step 7) -> {d}/described.jsonl"),
              ("sft", f"SFT on the described records, continuing the DPO adapter (§1.5) -> {d}/sft/model")]
    return steps


def check_train_configs(cfg: dict) -> None:
    """Every training stage's config loads (keys, types, values) before the first stage runs."""
    from jax_align.train.config import load_config

    world = os.path.join(os.path.abspath(cfg["dir"]), "world") if cfg.get("world") else None
    loaded = {}
    for name in ("policy", "critic", "dpo", "sft"):
        train = _paths((cfg.get(name) or {}).get("train") or {}, world)
        if train or name != "policy":
            stage = {"policy": "sft"}.get(name, name)
            loaded[name] = load_config(None, [*_overrides(train), f"run.stage={stage}"])
    dpo, sft = loaded["dpo"].lora, loaded["sft"].lora
    sft_model = (((cfg.get("sft") or {}).get("train") or {}).get("model") or {})
    names_model = any(sft_model.get(k) for k in ("path", "init"))
    if dpo.enabled and sft.enabled and not sft.init_from and not names_model:  # sft will continue the DPO adapter
        from jax_align.cli.errors import CommandError

        keys = ("rank", "alpha", "targets", "include_projector")
        bad = [f"lora.{k}: dpo {getattr(dpo, k)!r}, sft {getattr(sft, k)!r}" for k in keys
               if getattr(dpo, k) != getattr(sft, k)]
        if bad:
            raise CommandError(f"the sft stage continues the DPO adapter (lora.init_from), so its LoRA settings "
                               f"must be the dpo stage's: {'; '.join(bad)}", field="sft.train.lora")


def run(args) -> int:
    cfg = load_pipeline(args.config, args.overrides)
    check_train_configs(cfg)
    steps = plan(cfg)
    if args.dry_run:
        for name, what in steps:
            print(f"{name}: {what}")
        return 0
    print(json.dumps(run_eaco(cfg)))
    return 0


def run_eaco(cfg: dict, log=print) -> dict:
    """Run (or resume) the EACO pipeline of ``cfg``; returns ``{stage: "ran" | "done before"}`` and outputs."""
    from jax_align.atomic import write_json
    from jax_align.cli.prefs_eaco import run_describe
    from jax_align.cli.prefs_eaco import run_eaco as run_pairs

    d = os.path.abspath(cfg["dir"])
    done_dir = os.path.join(d, ".done")
    os.makedirs(done_dir, exist_ok=True)
    world = None
    if cfg.get("world"):
        from jax_align.world.datasets import write_world

        world = os.path.join(d, "world")
        if not os.path.isfile(os.path.join(world, "world.json")):
            write_world(world, seed=int(cfg["world"].get("seed", 0)), n=int(cfg["world"].get("n", 32)))
    cfg = {k: _paths(v, world) for k, v in cfg.items()}
    out = {"policy": (cfg["policy"] or {}).get("model"), "critic": os.path.join(d, "critic", "model"),
           "pairs": os.path.join(d, "pairs.jsonl"), "dpo": os.path.join(d, "dpo", "model"),
           "describe": os.path.join(d, "described.jsonl"), "sft": os.path.join(d, "sft", "model")}
    if (cfg["policy"] or {}).get("train"):
        out["policy"] = os.path.join(d, "policy", "model")
    status = {}
    for name, _ in plan(cfg):
        marker = os.path.join(done_dir, name)
        if os.path.isfile(marker):
            status[name] = "done before"
            log(f"pipeline eaco: {name}: finished before ({marker}), skipped")
            continue
        log(f"pipeline eaco: {name}: running")
        t0 = time.time()
        spec = cfg.get(name) or {}
        if name == "policy":
            _train("sft", spec, os.path.join(d, "policy"), model=None, data=None)
        elif name == "critic":
            data = spec.get("data") or ("world" if world else None)
            if data == "world":  # §1.3 on the world: score: N = 5 - hallucinated objects (world/critiques.py)
                from jax_align.world.critiques import write_critic_data

                if world is None:
                    raise ValueError("critic.data: world needs the pipeline's world section")
                data = os.path.join(d, "critic_data.jsonl")
                write_critic_data(world, data, k=int(spec.get("candidates", 5)), seed=int(spec.get("seed", 0)),
                                  limit=int(spec.get("groups", 0)))
            _train("critic", spec, os.path.join(d, "critic"), model=spec.get("base") or out["policy"], data=data)
        elif name == "pairs":
            run_pairs(_args(policy=out["policy"], critic=out["critic"], output=out["pairs"],
                            input=spec.get("input") or os.path.join(world or "", "captions.jsonl"),
                            n_samples=int(spec.get("n_samples", 5)), temperature=float(spec.get("temperature", 0.2)),
                            max_new_tokens=int(spec.get("max_new_tokens", 1024)),
                            critic_max_new_tokens=int(spec.get("critic_max_new_tokens", 256)),
                            prompts=str(spec.get("prompts", "default")), drop_ties=bool(spec.get("drop_ties")),
                            seed=int(spec.get("seed", 42)), batch_size=int(spec.get("batch_size", 8)),
                            limit=int(spec.get("limit", 0)), allow_absolute_paths=True))
            _validate(out["pairs"], "pairwise")
            _validate(out["pairs"], "ranked")
        elif name == "dpo":
            _train("dpo", spec, os.path.join(d, "dpo"), model=out["policy"], data=out["pairs"])
        elif name == "describe":
            run_describe(_args(model=out["dpo"], output=out["describe"],
                               input=spec.get("input") or os.path.join(world or "", "sft.jsonl"),
                               temperature=float(spec.get("temperature", 0.2)),
                               max_new_tokens=int(spec.get("max_new_tokens", 1024)), seed=int(spec.get("seed", 42)),
                               batch_size=int(spec.get("batch_size", 8)), limit=int(spec.get("limit", 0)),
                               allow_absolute_paths=True))
            _validate(out["describe"], "sft")
        elif name == "sft":
            model, init_from = sft_start(spec, out["dpo"])
            _train("sft", spec, os.path.join(d, "sft"), model=model, data=out["describe"], init_from=init_from)
        write_json(marker, {"stage": name, "output": out[name], "seconds": round(time.time() - t0, 2)})
        status[name] = "ran"
    return {"stages": status, "outputs": out}
