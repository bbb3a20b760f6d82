"""Issue 7: ``jax-align demo --quick`` runs the whole pipeline and leaves consistent outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_demo_outputs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "demo", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"sft", "dpo", "mdpo", "mmdpo"}
    for name in ("sft", "dpo", "mdpo", "mmdpo"):
        m = report["metrics"][name]
        assert set(m["pope"]) >= {"random", "popular", "adversarial"}
        for key in ("chair_i", "chair_s", "recall"):
            assert 0.0 <= m["chair"][key] <= 1.0
        assert 0.0 <= m["vqa"]["accuracy"] <= 1.0
        model = out / "models" / name
        assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
        assert (model / "tokenizer.json").is_file() and (model / "preprocessor_config.json").is_file()
        answers = out / "answers" / name
        assert all((answers / f).is_file() for f in ("pope.jsonl", "captions.jsonl", "vqa.jsonl"))
    assert report["data"]["bdhs"]["pairs"] > 0
    for plot in report["plots"]:
        assert (out / plot).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "| sft" in md and "| dpo" in md and "seed 0" in md
    goal = report["goal"]  # the issue's goal, judged from this run's own numbers
    rel = report["relative_to_sft"]["dpo"]
    if rel["pope_adv_fpr_rel"] is not None and rel["chair_i_rel"] is not None:
        expect = rel["pope_adv_fpr_rel"] <= -0.5 and rel["chair_i_rel"] <= -0.5 and rel["vqa_delta_points"] >= -1
        assert goal["met"] == expect
    assert f"**{goal['verdict']}**" in md
    # the exported SFT model answers through the public CLI
    prompts = tmp_path / "in.jsonl"
    world = out / "world" / "eval"
    rec = json.loads((world / "vqa.jsonl").read_text().splitlines()[0])
    prompts.write_text(json.dumps({"image": os.path.relpath(world / rec["image"], tmp_path), "prompt": rec["prompt"]})
                       + "\n")
    gen = subprocess.run([sys.executable, "-m", "jax_align.cli.main", "generate",
                          "--model", str(out / "models" / "dpo"), "--input", str(prompts),
                          "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "response" in json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])


def test_goal_check_follows_the_issue_thresholds():
    from jax_align.demo_report import goal_check

    ok = {"pope_adv_fpr_rel": -0.6, "chair_i_rel": -0.5, "vqa_delta_points": -1.0}
    assert goal_check(ok)["met"]
    assert goal_check({**ok, "chair_i_rel": -0.49})["detail"] == "fails: chair_i"
    assert not goal_check({**ok, "vqa_delta_points": -1.01})["met"]
    assert not goal_check({**ok, "pope_adv_fpr_rel": None})["met"] and not goal_check(None)["met"]
