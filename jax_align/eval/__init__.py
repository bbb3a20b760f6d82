"""Hallucination and skill metrics on the synthetic world (issue 6): POPE, CHAIR and VQA with pinned parsers.

Use :func:`evaluate_answers` on saved answer files or :func:`evaluate_model` to generate and score; the
definitions are documented in :mod:`jax_align.eval.parsers` and :mod:`jax_align.eval.metrics`.
"""

from jax_align.eval.evaluate import (
    EvalResult,
    WorldBenchmarks,
    evaluate_answers,
    evaluate_model,
    generate_answers,
    load_benchmarks,
    score,
    write_answers,
)
from jax_align.eval.metrics import SceneObjects, chair_metrics, pope_metrics, vqa_metrics
from jax_align.eval.parsers import Mention, extract_mentions, normalize, parse_yes_no, vqa_correct
from jax_align.eval.report import format_table

__all__ = [
    "EvalResult",
    "Mention",
    "SceneObjects",
    "WorldBenchmarks",
    "chair_metrics",
    "evaluate_answers",
    "evaluate_model",
    "extract_mentions",
    "format_table",
    "generate_answers",
    "load_benchmarks",
    "normalize",
    "parse_yes_no",
    "pope_metrics",
    "score",
    "vqa_correct",
    "vqa_metrics",
    "write_answers",
]
