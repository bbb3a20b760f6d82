"""The trainer's guards (issue 16 items 1, 5): one run per run directory, no silent resume of a different
config, and no mesh that silently drops devices or data parallelism. Each case runs the real CLI and checks
the exit code, the one-line message and that nothing complete was lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "jax_align.cli.main", "train", os.path.join(ROOT, "configs", "tiny_dpo.yaml")]


def _train(run_dir, *overrides, env=None, timeout=300):
    return subprocess.run([*CLI, f"run.dir={run_dir}", "data.world={seed: 2, n: 8}", "train.progress=false",
                           *overrides], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _one_line(p):
    lines = [ln for ln in (p.stdout + p.stderr).strip().splitlines() if ln.startswith("jax-align train:")]
    assert lines and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[-1]


def test_second_run_on_a_locked_run_dir_exits_2_naming_the_holder(tmp_path):
    run = str(tmp_path / "run")
    first = subprocess.Popen([*CLI, f"run.dir={run}", "data.world={seed: 2, n: 8}", "train.steps=100000",
                              "checkpoint.every=100000", "train.progress=false"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.isfile(os.path.join(run, "config.yaml")):  # written under the lock
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        p = _train(run, "train.steps=2")
        assert p.returncode == 2
        line = _one_line(p)
        assert str(first.pid) in line and "lock" in line.lower(), line
    finally:
        first.kill()
        first.wait()
    p = _train(run, "train.steps=2", "checkpoint.every=1")  # the lock died with its holder
    assert p.returncode == 0, p.stderr[-2000:]


def test_changed_config_is_refused_unless_forced(tmp_path):
    run = str(tmp_path / "run")
    assert _train(run, "train.steps=2", "checkpoint.every=1").returncode == 0
    with open(os.path.join(run, "config.yaml")) as f:
        saved = f.read()
    p = _train(run, "train.steps=4", "run.stage=sft", "checkpoint.every=1")
    assert p.returncode == 2
    line = _one_line(p)
    assert "run.stage" in line and "checkpoint.resume=force" in line, line
    with open(os.path.join(run, "config.yaml")) as f:
        assert f.read() == saved  # the refused run wrote nothing
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["1", "2"]
    p = _train(run, "train.steps=3", "checkpoint.every=1", "optim.lr=5e-4")  # lr is not part of the fingerprint
    assert p.returncode == 0 and "resuming from" in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize("overrides, needle", [
    (["mesh.data=3", "mesh.fsdp=1"], "the product must be the device count"),
    (["mesh.data=4", "mesh.fsdp=1", "data.batch_size=6"], "not divisible"),
])
def test_meshes_that_drop_devices_or_data_parallelism_are_errors(tmp_path, overrides, needle):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = _train(str(tmp_path / "run"), "train.steps=1", *overrides, env=env)
    assert p.returncode == 2
    assert needle in _one_line(p)
