"""jax_align.platforms: commands on a machine without a TPU do not start libtpu (whose start-up errors a user
would read as a failure), and whatever the user chose is kept."""

import os
import subprocess
import sys

from jax_align.platforms import (
    GOOGLE_PCI_VENDOR_ID,
    TINY_MODEL_CPU_FLAGS,
    gpu_visible,
    tiny_model_cpu_flags,
    tpu_attached,
)


def _pci(tmp_path, vendors):
    for i, v in enumerate(vendors):
        d = tmp_path / f"0000:00:0{i}.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text(v + "\n")
    return str(tmp_path)


def test_tpu_attached_reads_the_pci_vendor(tmp_path):
    assert not tpu_attached(_pci(tmp_path / "a", ["0x8086", "0x10de"]))
    assert tpu_attached(_pci(tmp_path / "b", ["0x8086", GOOGLE_PCI_VENDOR_ID]))
    assert not tpu_attached(str(tmp_path / "missing"))


def _run(env):
    code = ("from jax_align.platforms import skip_absent_tpu; r = skip_absent_tpu(); import jax; "
            "print(r, jax.default_backend())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split(), out.stderr


def test_skip_absent_tpu_only_where_nothing_is_attached():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    (changed, backend), stderr = _run(env)
    if tpu_attached() or gpu_visible():
        assert changed == "None"
    else:
        assert (changed, backend) == ("cpu", "cpu")
        assert "libtpu" not in stderr and "TPU_WORKER_HOSTNAMES" not in stderr
    (changed, backend), _ = _run(dict(env, JAX_PLATFORMS="cpu"))  # the user's choice is kept
    assert (changed, backend) == ("None", "cpu")


def test_tiny_model_cpu_flags_only_on_the_cpu_and_never_over_the_users():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert tiny_model_cpu_flags(env) == TINY_MODEL_CPU_FLAGS
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", *TINY_MODEL_CPU_FLAGS]
    assert tiny_model_cpu_flags(env) == () and env["XLA_FLAGS"].count("multi_thread_eigen") == 1  # once
    user = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}
    assert tiny_model_cpu_flags(user) == () and user["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    gpu = {"JAX_PLATFORMS": "cuda"}
    assert tiny_model_cpu_flags(gpu) == () and "XLA_FLAGS" not in gpu
