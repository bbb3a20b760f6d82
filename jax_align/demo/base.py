"""The demo's shared machinery: the two worlds, training through the trainer, export, evaluation, progress.

Every method of :mod:`jax_align.demo.methods` reuses one context: one training world, one evaluation world, one
captioning model and one SFT model (trained once, whatever ``--seeds`` says), the BDHS pairs of each seed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from jax_align.demo.plan import DemoPlan


class Progress:
    """One line per top-level stage with the elapsed time and an estimate of the time left.

    ``stages`` are ``(name, weight)``: each stage's expected share of the run (seconds measured on a 2-core CPU for
    the full plan); the estimate scales the weights left by the speed observed so far.
    """

    def __init__(self, stages: Sequence[tuple[str, float]], log: Callable[[str], None]):
        self.weights = dict(stages)
        self.names = [n for n, _ in stages]
        self.log = log
        self.t0 = time.perf_counter()
        self.done: set[str] = set()

    def _left(self) -> str:
        elapsed = time.perf_counter() - self.t0
        done = sum(self.weights[n] for n in self.done)
        if done <= 0:
            return "unknown yet"
        left = sum(w for n, w in self.weights.items() if n not in self.done) * elapsed / done
        return f"~{_fmt(left)}"

    def start(self, name: str) -> float:
        self.log(f"[demo {len(self.done) + 1}/{len(self.names)}] {name} ... elapsed "
                 f"{_fmt(time.perf_counter() - self.t0)}, left {self._left()}")
        return time.perf_counter()

    def finish(self, name: str, started: float) -> None:
        self.done.add(name)
        self.log(f"[demo {len(self.done)}/{len(self.names)}] {name} done in {_fmt(time.perf_counter() - started)}; "
                 f"elapsed {_fmt(time.perf_counter() - self.t0)}, left {self._left()}")


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


class DemoContext:
    def __init__(self, out_dir: str, plan: DemoPlan, seed: int = 0, log=print):
        self.out = os.path.abspath(out_dir)
        self.plan = plan
        self.seed = seed
        self.log = log
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.data: dict[str, dict] = {}
        self.train_world = self.path("world", "train")
        self.eval_world = self.path("world", "eval")

    # ------------------------------------------------------------------------------------------ helpers
    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def timed(self, name: str, fn, *a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        self.log(f"[demo]   {name} ...")
        out = fn(*a, **kw)
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.cpu[name] = round(time.process_time() - c0, 1)
        self.log(f"[demo]   {name} done in {self.timings[name]}s")
        return out

    def train(self, name: str, stage: str, data: str, steps: int, lr: float, **extra) -> str:
        """A run of the trainer under ``runs/NAME``; returns the trained model's directory."""
        from jax_align.train.run_config import run_config, run_overrides
        from jax_align.train.trainer import Trainer
        from jax_align.world.train_inputs import resolve_world_inputs

        p = self.plan
        cfg = run_config(run_overrides(
            self.path("runs", name), stage, data, steps=steps, lr=lr, batch_size=extra.pop("batch", p.batch_size),
            max_length=p.max_length, buckets=p.buckets, seed=extra.pop("seed", self.seed), extra=extra))
        Trainer(resolve_world_inputs(cfg), annotator=_annotator(cfg)).run()
        return self.path("runs", name, "model")

    def export(self, name: str, run_model: str) -> str:
        """``models/NAME`` as a Hugging Face directory (written whole or not at all)."""
        from jax_align.atomic import atomic_dir
        from jax_align.model_store import load_model
        from jax_align.models import to_hf

        config, _, params = load_model(run_model)
        dst = self.path("models", name)
        with atomic_dir(dst) as work:
            to_hf(config, params, work, source_dir=run_model)
        return dst

    def evaluate(self, name: str, model_dir: str) -> dict:
        from jax_align.eval.evaluate import evaluate_model, load_benchmarks, write_answers

        p = self.plan
        res = evaluate_model(self.eval_world, model_dir, max_new_tokens=p.caption_tokens, batch_size=p.eval_batch)
        write_answers(load_benchmarks(self.eval_world), res.responses, self.path("answers", name))
        m = res.metrics
        self.log(f"[demo] {name}: POPE-adv FPR {m['pope']['adversarial'].get('false_positive_rate', float('nan')):.3f}"
                 f" CHAIR_i {m['chair']['chair_i']:.3f} VQA {m['vqa']['accuracy']:.3f}")
        return m

    def data_file(self, name: str) -> str:
        path = self.path("data", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    # ------------------------------------------------------------------------------------------ shared stages
    def worlds(self) -> None:
        from jax_align.world.datasets import write_world

        p = self.plan
        write_world(self.train_world, seed=self.seed, n=p.train_scenes)
        write_world(self.eval_world, seed=self.seed + 10_000, n=p.eval_scenes)
        self.data["eval_world"] = trim_eval_world(self.eval_world, p.eval_detail_scenes)

    def base_models(self) -> tuple[str, str]:
        """The captioning model (Align²LLaVA's and AMP-IG's "base") and the SFT model every method starts from."""
        p = self.plan
        tok = os.path.join(self.train_world, "tokenizer")
        cap = self.timed("train captioning", self.train, "caption", "sft",
                         os.path.join(self.train_world, "pretrain.jsonl"), p.caption_steps, p.caption_lr,
                         **{"model.init": "tiny-world", "model.tokenizer": tok, "model.train_vision": True})
        sft = self.timed("train sft", self.train, "sft", "sft", os.path.join(self.train_world, "sft.jsonl"),
                         p.sft_steps, p.sft_lr, **{"model.path": cap, "model.train_vision": True})
        return self.export("caption", cap), self.export("sft", sft)


def _annotator(cfg):
    from jax_align.world.train_inputs import make_annotator

    return make_annotator(cfg)


def trim_eval_world(world_dir: str, detail_scenes: int) -> dict:
    """Keep the adversarial POPE split over every scene (enough "no" questions to measure a false-positive rate)
    and the other benchmarks on the first ``detail_scenes`` scenes (captions are the slow part of an evaluation).
    Returns the question counts."""
    from jax_align.world.datasets import read_jsonl, write_jsonl

    scenes = read_jsonl(os.path.join(world_dir, "scenes.jsonl"))
    keep = {os.path.normpath(s["image"]) for s in scenes[:detail_scenes]}
    inside = lambda r: os.path.normpath(r["image"]) in keep  # noqa: E731
    pope = [r for r in read_jsonl(os.path.join(world_dir, "pope.jsonl"))
            if r["split"] == "adversarial" or inside(r)]
    counts = {"scenes": len(scenes), "detail_scenes": min(detail_scenes, len(scenes))}
    write_jsonl(os.path.join(world_dir, "pope.jsonl"), pope)
    for name in ("captions.jsonl", "vqa.jsonl"):
        rows = [r for r in read_jsonl(os.path.join(world_dir, name)) if inside(r)]
        write_jsonl(os.path.join(world_dir, name), rows)
        counts[name.split(".")[0]] = len(rows)
    for split in ("random", "popular", "adversarial"):
        counts[f"pope_{split}_no"] = sum(r["split"] == split and r["label"] == "no" for r in pope)
    return counts
