"""The demo's report: ``report.json``, ``report.md``, PNG plots and a printed table."""

from __future__ import annotations

import json
import os

from jax_align.atomic import atomic_file, atomic_save

MODELS = ("sft", "dpo", "mdpo", "mmdpo")


def _row(metrics: dict) -> dict:
    adv = metrics["pope"]["adversarial"]
    fpr = adv.get("false_positive_rate")
    return {"pope_adv_fpr": fpr, "pope_adv_acc": adv["accuracy"], "pope_adv_f1": adv["f1"],
            "chair_i": metrics["chair"]["chair_i"], "chair_s": metrics["chair"]["chair_s"],
            "object_recall": metrics["chair"]["recall"], "vqa": metrics["vqa"]["accuracy"]}


def summary_table(results: dict) -> tuple[list[str], list[list[str]]]:
    head = ["model", "POPE-adv FPR", "POPE-adv acc", "CHAIR_i", "CHAIR_s", "recall", "VQA acc"]
    rows = []
    for name in MODELS:
        if name in results:
            r = _row(results[name])
            rows.append([name] + [f"{100 * r[k]:.1f}" if r[k] is not None else "-"
                                  for k in ("pope_adv_fpr", "pope_adv_acc", "chair_i", "chair_s", "object_recall",
                                            "vqa")])
    return head, rows


def relative_changes(results: dict) -> dict:
    base = _row(results["sft"])
    out = {}
    for name in MODELS[1:]:
        if name not in results:
            continue
        r = _row(results[name])
        def rel(k, r=r):
            return (r[k] - base[k]) / base[k] if base[k] else None

        out[name] = {"pope_adv_fpr_rel": rel("pope_adv_fpr"), "chair_i_rel": rel("chair_i"),
                     "vqa_delta_points": 100 * (r["vqa"] - base["vqa"])}
    return out


def _plots(demo) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in ("caption", "sft", "dpo", "mdpo", "reward", "mmdpo"):
        path = os.path.join(demo.out, "runs", run, "metrics.jsonl")
        if not os.path.isfile(path):
            continue
        rows = [json.loads(line) for line in open(path)]
        axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label=run)
        if rows and "rewards/margins" in rows[0]:
            axes[1].plot([r["step"] for r in rows], [r["rewards/margins"] for r in rows], label=run)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].set(title="reward margin (DPO family)", xlabel="step")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    files.append("training_curves.png")
    atomic_save(os.path.join(demo.out, files[-1]), lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)

    names = [n for n in MODELS if n in demo.results]
    rows = [_row(demo.results[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    keys = [("pope_adv_fpr", "POPE-adversarial FPR"), ("chair_i", "CHAIR_i"), ("chair_s", "CHAIR_s"),
            ("vqa", "VQA accuracy")]
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ax.bar([i + j * width for i in range(len(keys))], [100 * (rows[j][k] or 0) for k, _ in keys], width,
               label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [t for _, t in keys])
    ax.set(ylabel="%", title="hallucination and skill on held-out scenes (lower is better except VQA)")
    ax.legend()
    fig.tight_layout()
    files.append("hallucination.png")
    atomic_save(os.path.join(demo.out, files[-1]), lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)
    return files


METHOD_NOTES = [
    "## How the pipeline is set up, and why",
    "",
    "- The tiny LLaVA (CLIP 48 px / patch 16 = 9 image tokens, 2-layer Llama of width 128) is trained from "
    "scratch: captions first, then SFT on captions, VQA and yes/no questions. Learning rates matter most: at "
    "3e-3 the model stayed at CHAIR_i ~30% (binding the wrong shape or colour to an object it had located); at "
    "1e-3 / 7e-4 it describes scenes with ~5% CHAIR_i.",
    "- BDHS (spec 2.2, defaults rho_th 0.99, N 5, eps 0.97, yes/no swap 0.5) runs on the training world's SFT "
    "answers: every detailed caption (half of them twice, as independent samples), POPE-style existence "
    "questions over training scenes (half about the biased companions) and attribute/position VQA (no counts: "
    "the masked policy's 'One.' is also the most frequent truth, so the kept pairs would teach over-counting). "
    "Library decisions: the first attempt is greedy and retries sample, "
    "EOS is banned inside a guided sentence, and each caption gets one more masked sentence after the truth "
    "(an extra, usually co-occurring, object).",
    "- DPO (sigmoid, beta 0.1) adds the chosen answer's NLL (weight 1, RPO / MM-DPO's gamma) and uses the "
    "reference log-probs cached once before training. Without the NLL term DPO degenerates on this model.",
    "- MDPO trains on groups of truth, then BDHS answers with one and two hallucinated sentences; MM-DPO uses "
    "the same BDHS pairs as DPO with margins from a reward model trained on the world's scored candidates.",
    "- Counts, sizes and the evaluation world are never used in training; the evaluation world has its own seed.",
]


def goal_check(rel: dict | None) -> dict:
    """The issue's goal for DPO: FPR and CHAIR_i at least 50% lower, VQA at most 1 point lower."""
    if rel is None or rel["pope_adv_fpr_rel"] is None or rel["chair_i_rel"] is None:
        return {"met": False, "verdict": "not measurable", "detail": "no DPO result or a zero SFT baseline"}
    checks = {"pope_adv_fpr": rel["pope_adv_fpr_rel"] <= -0.5, "chair_i": rel["chair_i_rel"] <= -0.5,
              "vqa": rel["vqa_delta_points"] >= -1.0}
    met = all(checks.values())
    failed = [k for k, ok in checks.items() if not ok]
    return {"met": met, "checks": checks, "verdict": "met" if met else "not met",
            "detail": "all three hold" if met else "fails: " + ", ".join(failed)}


def write_report(demo) -> dict:
    head, rows = summary_table(demo.results)
    report = {"settings": demo.settings(), "metrics": demo.results, "summary": {n: _row(demo.results[n])
                                                                               for n in demo.results},
              "relative_to_sft": relative_changes(demo.results), "data": demo.data, "timings_s": demo.timings,
              "models": {n: os.path.join("models", n) for n in demo.results}}
    report["goal"] = goal_check(report["relative_to_sft"].get("dpo"))
    report["plots"] = _plots(demo)
    with atomic_file(os.path.join(demo.out, "report.json")) as f:
        json.dump(report, f, indent=2, sort_keys=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
    table = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]
    plan = demo.settings()["plan"]
    lines = [
        "# jax-align demo report", "",
        "A tiny LLaVA trained from scratch on the synthetic world, then aligned three ways. All numbers are on "
        f"held-out scenes (evaluation world seed {demo.seed + 10_000}, {plan['eval_scenes']} scenes), greedy "
        "decoding, metrics pinned in `jax_align/eval` (percent).", "", *table, "",
        "Relative change against SFT (negative is better for hallucination; VQA in points):", "",
    ]
    for name, rel in report["relative_to_sft"].items():
        fmt_rel = lambda v: "n/a" if v is None else f"{100 * v:+.1f}%"
        lines.append(f"- {name}: POPE-adversarial FPR {fmt_rel(rel['pope_adv_fpr_rel'])}, CHAIR_i "
                     f"{fmt_rel(rel['chair_i_rel'])}, VQA {rel['vqa_delta_points']:+.1f} points")
    goal = report["goal"]
    lines += ["", f"Goal (DPO with BDHS: POPE-adversarial FPR and CHAIR_i at least 50% lower than SFT, VQA at most "
              f"1 point lower): **{goal['verdict']}** on this evaluation world ({goal['detail']}).", "",
              *METHOD_NOTES]
    lines += ["", "## Data", "", "```", json.dumps(demo.data, indent=2, sort_keys=True), "```", "",
              "## Settings", "", f"seed {demo.seed}; training world seed {demo.seed}, "
              f"{plan['train_scenes']} scenes.", "", "```", json.dumps(plan, indent=2), "```", "",
              "## Time (seconds)", "", "```", json.dumps(demo.timings, indent=2), "```", "",
              "![training curves](training_curves.png)", "", "![hallucination](hallucination.png)", ""]
    with atomic_file(os.path.join(demo.out, "report.md")) as f:
        f.write("\n".join(lines))
    print("\n".join(table))
    return report
