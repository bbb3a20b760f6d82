"""Scoring a model's answers on a world's benchmarks (``pope.jsonl``, ``captions.jsonl``, ``vqa.jsonl``).

:func:`evaluate_answers` scores saved answer files; :func:`evaluate_model` first generates the answers with
``jax_align.generate.generate_records`` (greedy by default). Both return an :class:`EvalResult` whose
``metrics`` is the JSON written by ``jax-align eval --json``:
``{"pope": {SPLIT: {"accuracy", "precision", "recall", "f1", "yes_ratio", "false_positive_rate"}},
"chair": {"chair_i", "chair_s", "recall"}, "vqa": {"accuracy", "accuracy_<category>"...}}`` (all fractions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from jax_align.eval.answers import load_answers, match_answers
from jax_align.eval.metrics import SceneObjects, chair_metrics, pope_metrics, vqa_metrics
from jax_align.world.benchmarks import POPE_SPLITS
from jax_align.world.config import WorldConfig
from jax_align.world.datasets import BENCHMARK_FILES, load_world_config, read_jsonl, write_jsonl


@dataclass
class WorldBenchmarks:
    """A world's questions and ground truth, as read from its directory."""

    world_dir: str
    config: WorldConfig
    pope: list[dict[str, Any]]
    captions: list[dict[str, Any]]
    vqa: list[dict[str, Any]]
    scenes: dict[str, SceneObjects] = field(repr=False)

    def records(self, name: str) -> list[dict[str, Any]]:
        return {"pope.jsonl": self.pope, "captions.jsonl": self.captions, "vqa.jsonl": self.vqa}[name]

    def shape_words(self) -> dict[str, str]:
        words = {s: s for s in self.config.shapes}
        words.update({self.config.plural(s): s for s in self.config.shapes})
        return words


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    counts: dict[str, Any]
    responses: dict[str, list[str]]


def _require(records: list[dict[str, Any]], path: str, fields: tuple[str, ...]) -> None:
    for i, r in enumerate(records, 1):
        for f in fields:
            if not isinstance(r.get(f), str):
                raise ValueError(f"{path}:{i}: {f}: missing or not a string")


def load_benchmarks(world_dir: str) -> WorldBenchmarks:
    """Read and check a world directory written by ``jax-align world``."""
    world_dir = os.fspath(world_dir)
    config = load_world_config(world_dir)
    loaded: dict[str, list[dict[str, Any]]] = {}
    for name, fields in (
        ("pope.jsonl", ("image", "prompt", "label", "split")),
        ("captions.jsonl", ("image", "prompt")),
        ("vqa.jsonl", ("image", "prompt", "answer")),
        ("scenes.jsonl", ("image",)),
    ):
        path = os.path.join(world_dir, name)
        if not os.path.exists(path):
            raise ValueError(f"{path}: missing (is {world_dir} a directory written by `jax-align world`?)")
        loaded[name] = read_jsonl(path)
        _require(loaded[name], path, fields)
    for i, r in enumerate(loaded["pope.jsonl"], 1):
        if r["split"] not in POPE_SPLITS:
            raise ValueError(f"{os.path.join(world_dir, 'pope.jsonl')}:{i}: split: unknown {r['split']!r}")
    scenes: dict[str, SceneObjects] = {}
    scene_path = os.path.join(world_dir, "scenes.jsonl")
    for i, r in enumerate(loaded["scenes.jsonl"], 1):
        if not isinstance(r.get("objects"), list):
            raise ValueError(f"{scene_path}:{i}: objects: missing or not a list")
        try:
            scenes[os.path.normpath(r["image"])] = SceneObjects.from_record(r["objects"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{scene_path}:{i}: objects: each needs shape and color ({e})") from None
    for i, r in enumerate(loaded["captions.jsonl"], 1):
        if os.path.normpath(r["image"]) not in scenes:
            raise ValueError(
                f"{os.path.join(world_dir, 'captions.jsonl')}:{i}: image: {r['image']!r} not in scenes.jsonl"
            )
    return WorldBenchmarks(
        world_dir, config, loaded["pope.jsonl"], loaded["captions.jsonl"], loaded["vqa.jsonl"], scenes
    )


def score(bench: WorldBenchmarks, responses: dict[str, list[str]]) -> EvalResult:
    """Metrics from responses aligned with the benchmark records (keys are the benchmark file names)."""
    metrics: dict[str, Any] = {"pope": {}}
    counts: dict[str, Any] = {"pope": {}}
    pope_responses = responses["pope.jsonl"]
    for split in POPE_SPLITS:
        rows = [i for i, r in enumerate(bench.pope) if r["split"] == split]
        m, c = pope_metrics([bench.pope[i]["label"] for i in rows], [pope_responses[i] for i in rows])
        metrics["pope"][split] = m
        counts["pope"][split] = c
    scenes = [bench.scenes[os.path.normpath(r["image"])] for r in bench.captions]
    metrics["chair"], counts["chair"] = chair_metrics(
        responses["captions.jsonl"], scenes, bench.shape_words(), bench.config.colors
    )
    metrics["vqa"], counts["vqa"] = vqa_metrics(
        [r["answer"] for r in bench.vqa], responses["vqa.jsonl"], [r.get("category") for r in bench.vqa]
    )
    return EvalResult(metrics, counts, responses)


def evaluate_answers(world_dir: str, answers_dir: str) -> EvalResult:
    """Score the answer files ``answers_dir/{pope,captions,vqa}.jsonl`` against the world in ``world_dir``."""
    bench = load_benchmarks(world_dir)
    responses = {}
    for name in BENCHMARK_FILES:
        answers, path = load_answers(answers_dir, name)
        responses[name] = match_answers(bench.records(name), bench.world_dir, answers, path)
    return score(bench, responses)


def generate_answers(
    bench: WorldBenchmarks,
    model: str,
    *,
    max_new_tokens: int = 96,
    batch_size: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Answer every benchmark question with ``jax_align.generate.generate_records``.

    Captions get ``max_new_tokens``; yes/no and VQA questions ``min(max_new_tokens, 16)``.
    """
    try:
        from jax_align.generate import generate_records
    except ImportError as e:
        raise RuntimeError(
            "jax-align eval --model needs jax_align.generate.generate_records, which could not be imported "
            f"({e}); generate the answers with `jax-align generate` and score them with --answers instead"
        ) from e
    out: dict[str, list[str]] = {}
    for name in BENCHMARK_FILES:
        records = [{"image": r["image"], "prompt": r["prompt"]} for r in bench.records(name)]
        budget = max_new_tokens if name == "captions.jsonl" else min(max_new_tokens, 16)
        texts = generate_records(
            model,
            records,
            base_dir=bench.world_dir,
            max_new_tokens=budget,
            batch_size=batch_size,
            temperature=temperature,
            seed=seed,
        )
        if len(texts) != len(records):
            raise RuntimeError(
                f"generate_records returned {len(texts)} responses for {len(records)} {name} records"
            )
        out[name] = [t if isinstance(t, str) else t[0] for t in texts]
    return out


def evaluate_model(world_dir: str, model: str, **generate_kwargs: Any) -> EvalResult:
    """Generate answers for the world's questions with ``model`` and score them."""
    bench = load_benchmarks(world_dir)
    return score(bench, generate_answers(bench, model, **generate_kwargs))


def write_answers(bench: WorldBenchmarks, responses: dict[str, list[str]], out_dir: str) -> None:
    """Write answer files in ``jax-align generate``'s format (question record + ``response``).

    Image paths are rewritten relative to ``out_dir`` so that the files follow the relative-path rule.
    """
    os.makedirs(out_dir, exist_ok=True)
    for name in BENCHMARK_FILES:
        rows = []
        for record, response in zip(bench.records(name), responses[name], strict=True):
            image = os.path.relpath(
                os.path.join(os.path.abspath(bench.world_dir), record["image"]), os.path.abspath(out_dir)
            )
            rows.append({**record, "image": image, "response": response})
        write_jsonl(os.path.join(out_dir, name), rows)
