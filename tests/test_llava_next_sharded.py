"""Issue 12: an AnyRes (OneVision) forward sharded as (data, fsdp, tensor) = (2, 2, 2) on 8 simulated CPU devices
equals 1 device, on a row-wise batch of images with different tile counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hf_fixtures import build_hf_anyres

HERE = os.path.dirname(__file__)


def test_sharded_anyres_forward_equals_single_device(tmp_path):
    path = str(tmp_path / "ov")
    build_hf_anyres(path, "ov_qwen2")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "sharded_anyres.py"), path, HERE],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_abs_ref"] > 0.5
    assert result["max_abs_err"] < 1e-5 * max(1.0, result["max_abs_ref"]), result
