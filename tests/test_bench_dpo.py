"""tools/bench_dpo.py at its smallest size: every side reports its throughput, and the TRL side computes the same
thing as jax-align (same tokens, same first-step log-probs and losses)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_dpo_smallest_size(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ALIGN_CACHE_DIR=str(tmp_path / "xla"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_dpo.py"), "--config", "tiny",
                        "--steps", "2", "--pairs", "2", "--max-length", "64", "--prompt-words", "6",
                        "--response-words", "6", "--matmul-n", "256", "--alternate", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout
    for word in ("pairs/s", "tokens/s", "peak MB", "% peak", "FLOPs per step", "bucket used 64", "load average"):
        assert word in text, word
    report = json.loads(out.read_text())
    sides = report["sides"]
    assert set(sides) == {"jax-copy", "jax-cached", "trl"}
    for name, s in sides.items():
        assert s["pairs_per_s"] > 0 and s["tokens_per_s"] > 0 and s["peak_rss_mb"] > 0, name
        assert len(s["wall_all"]) == 2 and s["gflops"] > 0, name
        assert f"\n{name} " in text
    # the same rows on every side: TRL's attention mask counts exactly jax-align's prompt + response tokens
    assert sides["jax-copy"]["tokens"] == sides["jax-cached"]["tokens"] == sides["trl"]["tokens"] > 0
    # the same computation: step 1 is log 2 (policy = reference) and the policies' log-probs agree to fp32
    # rounding of a ~30-token sum; step 2 follows one identical AdamW update
    trl = sides["trl"]
    for name in ("jax-copy", "jax-cached"):
        s = sides[name]
        assert math.isclose(s["loss1"], math.log(2), abs_tol=1e-6)
        assert math.isclose(trl["loss1"], math.log(2), abs_tol=1e-6)
        for key in ("logps_chosen1", "logps_rejected1"):
            assert math.isclose(s[key], trl[key], rel_tol=1e-5, abs_tol=1e-4), (name, key, s[key], trl[key])
        assert s["loss2"] < s["loss1"]
        assert math.isclose(s["loss2"], trl["loss2"], abs_tol=2e-5), (name, s["loss2"], trl["loss2"])
