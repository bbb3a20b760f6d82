"""The demo's report: ``report.json``, ``report.md``, PNG plots and a printed table.

Per method: POPE per split (F1, false-positive rate), CHAIR_i / CHAIR_s / recall, VQA accuracy per category, the
cost (records, optimizer steps, CPU minutes); mean and standard deviation over seeds; the change against SFT and
whether it is within noise; the goal of issue 17 (CHAIR_i and adversarial FPR below SFT, VQA within 1 point)
judged per method from these numbers; a ranking.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics

from jax_align.atomic import atomic_file, atomic_save

SPLITS = ("random", "popular", "adversarial")
VQA_TOLERANCE = 1.0  # points (issue 17 item 4)


def row(metrics: dict) -> dict:
    """The report's numbers of one evaluation (fractions)."""
    out = {}
    for split in SPLITS:
        m = metrics["pope"].get(split, {})
        out[f"pope_{split}_f1"] = m.get("f1")
        out[f"pope_{split}_fpr"] = m.get("false_positive_rate")
    out.update(chair_i=metrics["chair"]["chair_i"], chair_s=metrics["chair"]["chair_s"],
               recall=metrics["chair"]["recall"], vqa=metrics["vqa"]["accuracy"])
    out.update({k: v for k, v in metrics["vqa"].items() if k.startswith("accuracy_")})
    return out


def _stats(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarize(results: dict) -> dict:
    """``{method: {key: {mean, std, n}}}`` over the seeds of each method."""
    out = {}
    for name, entry in results.items():
        rows = [row(m) for m in entry["seeds"].values()]
        out[name] = {k: _stats([r.get(k) for r in rows]) for k in rows[0]}
    return out


def compare(summary: dict, hallucination: dict[str, bool], baselines: dict[str, str] | None = None) -> dict:
    """Change of each method against its baseline (SFT unless ``baselines`` names another row, e.g. Align²'s
    uncurated control), the goal's three checks and whether each change is within noise (the method's seed
    spread: |change| <= 2 std; with one seed nothing can be called noise)."""
    out = {}
    for name, s in summary.items():
        if name == "sft":
            continue
        against = (baselines or {}).get(name, "sft")
        against = against if against in summary else "sft"
        base = {k: v["mean"] for k, v in summary[against].items()}
        mean = {k: v["mean"] for k, v in s.items()}
        std = {k: v["std"] for k, v in s.items()}

        def rel(k, mean=mean, base=base):
            return (mean[k] - base[k]) / base[k] if base.get(k) and mean.get(k) is not None else None

        noise = {k: (s[k]["n"] > 1 and abs(mean[k] - base[k]) <= 2 * std[k]) for k in ("chair_i",
                 "pope_adversarial_fpr", "vqa") if mean.get(k) is not None and base.get(k) is not None}
        entry = {"baseline": against, "chair_i_rel": rel("chair_i"), "pope_adv_fpr_rel": rel("pope_adversarial_fpr"),
                 "vqa_delta_points": 100 * (mean["vqa"] - base["vqa"]), "within_noise": noise}
        entry["goal"] = goal_check(entry) if hallucination.get(name, True) else {"verdict": "n/a (a control)"}
        sft = {k: v["mean"] for k, v in summary["sft"].items()}
        entry["vs_sft"] = {k: (mean[b] - sft[b]) / sft[b] if sft.get(b) and mean.get(b) is not None else None
                           for k, b in (("chair_i_rel", "chair_i"), ("pope_adv_fpr_rel", "pope_adversarial_fpr"))}
        entry["vs_sft"]["vqa_delta_points"] = 100 * (mean["vqa"] - sft["vqa"])
        out[name] = entry
    return out


def goal_check(rel: dict | None) -> dict:
    """Issue 17 item 4: CHAIR_i and the adversarial POPE false-positive rate below SFT, VQA within 1 point."""
    if rel is None or rel.get("pope_adv_fpr_rel") is None or rel.get("chair_i_rel") is None:
        return {"met": False, "verdict": "not measurable", "detail": "no result or a zero SFT baseline"}
    checks = {"chair_i": rel["chair_i_rel"] < 0, "pope_adv_fpr": rel["pope_adv_fpr_rel"] < 0,
              "vqa": rel["vqa_delta_points"] >= -VQA_TOLERANCE}
    failed = [k for k, ok in checks.items() if not ok]
    met = not failed
    return {"met": met, "checks": checks, "verdict": "met" if met else "not met",
            "detail": "all three hold" if met else "fails: " + ", ".join(failed)}


def ranking(comparison: dict) -> list[str]:
    """On common ground (every method against the SFT model): methods that keep VQA within the tolerance first, by
    the mean of their relative cuts of CHAIR_i and of the adversarial false-positive rate (larger cut first); then
    the others by the same key."""
    def key(name):
        c = comparison[name].get("vs_sft", comparison[name])
        cut = -((c["chair_i_rel"] or 0) + (c["pope_adv_fpr_rel"] or 0)) / 2
        return (c["vqa_delta_points"] < -VQA_TOLERANCE, -cut)

    return sorted(comparison, key=key)


def _pct(stat: dict | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{100 * stat['mean']:+.1f}" if signed else f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['std']:.1f}" if stat["n"] > 1 else "")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]


def _plots(ctx, summary: dict, names: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        s = summary[name]
        for ax, key, label in ((axes[0], "chair_i", "CHAIR_i"), (axes[1], "pope_adversarial_fpr", "POPE-adv FPR")):
            if s[key]["mean"] is None:
                continue
            ax.errorbar(100 * s["vqa"]["mean"], 100 * s[key]["mean"], xerr=100 * s["vqa"]["std"],
                        yerr=100 * s[key]["std"], fmt="o", capsize=3)
            ax.annotate(name, (100 * s["vqa"]["mean"], 100 * s[key]["mean"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
            ax.set(xlabel="VQA accuracy (%)", ylabel=f"{label} (%)", title=f"{label} against skill (lower is better)")
    fig.tight_layout()
    files.append("hallucination.png")
    atomic_save(os.path.join(ctx.out, files[-1]), lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)

    runs = sorted(d for d in os.listdir(ctx.path("runs")) if os.path.isfile(ctx.path("runs", d, "metrics.jsonl")))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        rows = [json.loads(line) for line in open(ctx.path("runs", run, "metrics.jsonl"))]
        rows = [r for r in rows if "loss" in r]
        if not rows:
            continue
        axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label=run)
        if "rewards/margins" in rows[0]:
            axes[1].plot([r["step"] for r in rows], [r["rewards/margins"] for r in rows], label=run)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].set(title="reward margin (DPO family)", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    files.append("training_curves.png")
    atomic_save(os.path.join(ctx.out, files[-1]), lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)
    return files


def write_report(ctx, results: dict, methods: dict, seeds: list[int]) -> dict:
    names = ["sft"] + [n for n in results if n != "sft"]
    summary = summarize(results)
    comparison = compare(summary, {n: methods[n].hallucination for n in methods},
                         {n: methods[n].baseline for n in methods})
    order = ranking({n: c for n, c in comparison.items() if methods[n].hallucination})
    report = {"settings": {"seed": ctx.seed, "seeds": seeds, "plan": dataclasses.asdict(ctx.plan)}, "metrics": results,
              "summary": summary, "relative_to_sft": comparison, "ranking": order, "data": ctx.data,
              "timings_s": ctx.timings, "cpu_s": ctx.cpu,
              "methods": {n: {"title": m.title, "spec": m.spec, "judge": m.judge, "settings": m.settings,
                              "departures": list(m.departures), "targets_hallucination": m.hallucination}
                          for n, m in methods.items() if n in results},
              "models": {n: results[n]["model"] for n in names}}
    report["plots"] = _plots(ctx, summary, names)
    with atomic_file(ctx.path("report.json")) as f:
        json.dump(report, f, indent=2, sort_keys=True, default=str)
    lines = _markdown(ctx, report, names, seeds)
    with atomic_file(ctx.path("report.md")) as f:
        f.write("\n".join(lines))
    ctx.log("\n".join(_main_table(summary, names, results)))
    return report


def _main_table(summary: dict, names: list[str], results: dict) -> list[str]:
    head = ["method", "POPE-adv FPR", "POPE-adv F1", "POPE-pop F1", "POPE-rand F1", "CHAIR_i", "CHAIR_s", "recall",
            "VQA", "records", "steps", "CPU min"]
    rows = []
    for n in names:
        s = summary[n]
        cost = list(results[n].get("cost", {}).values())
        rows.append([n, _pct(s["pope_adversarial_fpr"]), _pct(s["pope_adversarial_f1"]), _pct(s["pope_popular_f1"]),
                     _pct(s["pope_random_f1"]), _pct(s["chair_i"]), _pct(s["chair_s"]), _pct(s["recall"]),
                     _pct(s["vqa"]),
                     str(round(statistics.fmean(c["records"] for c in cost))) if cost else "-",
                     f"{cost[0]['pref_steps']}+{cost[0]['sft_steps']}" if cost else "-",
                     f"{statistics.fmean(c['cpu_minutes'] for c in cost):.1f}" if cost else "-"])
    return _table(head, rows)


def _markdown(ctx, report: dict, names: list[str], seeds: list[int]) -> list[str]:
    summary, comparison = report["summary"], report["relative_to_sft"]
    plan = report["settings"]["plan"]
    ev = ctx.data.get("eval_world", {})
    lines = ["# jax-align demo report", "",
             f"A tiny LLaVA trained from scratch on the synthetic world, then aligned by {len(names) - 1} methods from "
             f"the same SFT model. Evaluation world seed {ctx.seed + 10_000}: POPE-adversarial over {ev.get('scenes')} "
             f"scenes ({ev.get('pope_adversarial_no')} \"no\" questions), captions, VQA and the other POPE splits on "
             f"the first {ev.get('detail_scenes')}; greedy decoding; percent. Seeds per method: {len(seeds)} "
             f"({', '.join(map(str, seeds))}); ± is the standard deviation over seeds.", "",
             *_main_table(summary, names, report["metrics"]), "",
             "`steps` is preference + SFT optimizer steps; `records` the preference (or curated SFT) records the method"
             " generated; CPU minutes of the process that ran the method (its data, training, export and evaluation;"
             " not the shared BDHS pairs).", "",
             "## Against the baseline", "",
             "Relative change of CHAIR_i and the adversarial false-positive rate (negative is better), VQA in points, "
             "against SFT (Align²LLaVA: against SFT on as many uncurated records, its control). "
             "Goal (issue 17): both below the baseline and VQA at most 1 point lower. `noise` marks a change within "
             "two seed standard deviations.", ""]
    head = ["method", "against", "CHAIR_i", "POPE-adv FPR", "VQA (points)", "goal", "detail"]
    failed = {n: [c["failed"] for c in report["metrics"][n].get("cost", {}).values() if c.get("failed")]
              for n in names}
    rows = []
    for n in names[1:]:
        c = comparison[n]
        f = lambda v: "n/a" if v is None else f"{100 * v:+.1f}%"  # noqa: E731
        noise = c["within_noise"]
        tag = lambda k, noise=noise: " (noise)" if noise.get(k) else ""  # noqa: E731
        rows.append([n, c["baseline"], f(c["chair_i_rel"]) + tag("chair_i"),
                     f(c["pope_adv_fpr_rel"]) + tag("pope_adversarial_fpr"),
                     f"{c['vqa_delta_points']:+.1f}" + tag("vqa"), c["goal"]["verdict"],
                     "; ".join(filter(None, [c["goal"].get("detail", ""), *failed.get(n, [])]))])
    lines += _table(head, rows)
    lines += ["", "Ranking against the SFT model (methods that keep VQA within 1 point first, then by the mean "
              "relative cut of CHAIR_i and the adversarial FPR): " + " > ".join(report["ranking"]), "",
              "## VQA per category", ""]
    cats = sorted(k for k in summary["sft"] if k.startswith("accuracy_"))
    lines += _table(["method"] + [c.removeprefix("accuracy_") for c in cats],
                    [[n] + [_pct(summary[n].get(c)) for c in cats] for n in names])
    lines += ["", "## Methods", ""]
    lines += _table(["method", "paper", "spec", "who judges", "settings", "departures from the paper"],
                    [[n, m["title"], m["spec"], m["judge"], m["settings"], "; ".join(m["departures"]) or "none"]
                     for n, m in report["methods"].items()])
    lines += ["", "Budget rule: every preference method starts from the SFT model with "
              f"{plan['pref_steps']} optimizer steps of {plan['pref_batch']} examples (lr {plan['pref_lr']}, beta "
              f"{plan['beta']}); Align²LLaVA and its control fine-tune the captioning model for "
              f"{plan['align2_sft_steps']} SFT steps on their {plan['align2_pool']}-record pool's selections; "
              "EACO adds its description-infused SFT stage "
              f"({plan['eaco_sft_steps']} steps).", "", "## Data", "", "```",
              json.dumps(ctx.data, indent=2, sort_keys=True, default=str), "```", "", "## Settings", "", "```",
              json.dumps(plan, indent=2), "```", "", "## Time (seconds: wall, CPU of this process)", "", "```",
              json.dumps({k: [v, ctx.cpu.get(k)] for k, v in ctx.timings.items()}, indent=1), "```", "",
              "![hallucination against skill](hallucination.png)", "", "![training curves](training_curves.png)", ""]
    return lines
