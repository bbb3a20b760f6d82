"""Plain-text tables of evaluation results."""

from __future__ import annotations

from typing import Any

from jax_align.world.benchmarks import POPE_SPLITS


def _pct(x: float) -> str:
    return f"{100.0 * x:6.2f}"


def format_table(metrics: dict[str, Any], counts: dict[str, Any] | None = None) -> str:
    """The metrics as aligned text tables (percentages), with question counts when given."""
    counts = counts or {}
    lines = ["POPE          n    acc   prec    rec     f1    yes    fpr"]
    for split in POPE_SPLITS:
        m = metrics["pope"][split]
        n = counts.get("pope", {}).get(split, {}).get("n", "")
        lines.append(
            f"{split:<11} {n!s:>4} "
            + " ".join(
                _pct(m[k])
                for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "false_positive_rate")
            )
        )
    c = metrics["chair"]
    cc = counts.get("chair", {})
    lines.append("")
    lines.append("CHAIR   captions mentions  chair_i chair_s  recall")
    lines.append(
        f"{'':<7} {cc.get('captions', '')!s:>8} {cc.get('mentions', '')!s:>8} "
        f"{_pct(c['chair_i'])}  {_pct(c['chair_s'])} {_pct(c['recall'])}"
    )
    v = metrics["vqa"]
    vc = counts.get("vqa", {})
    lines.append("")
    lines.append("VQA              n   accuracy")
    lines.append(f"{'all':<13} {vc.get('n', '')!s:>4}   {_pct(v['accuracy'])}")
    for key in sorted(k for k in v if k.startswith("accuracy_")):
        category = key[len("accuracy_") :]
        lines.append(f"{category:<13} {vc.get('n_' + category, '')!s:>4}   {_pct(v[key])}")
    return "\n".join(lines)
