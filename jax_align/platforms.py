"""Which JAX platforms a ``jax-align`` command initialises when the user did not say.

The ``test`` extra installs ``libtpu`` so that ``jax-align plan --topology`` can compile for TPU topologies from a
CPU host. On a machine without a TPU, JAX then tries the TPU backend first and prints libtpu's initialisation
errors (a page of ``INVALID_ARGUMENT`` lines and a source trace) before falling back to the CPU, which reads like a
failure at the top of ``make demo``. :func:`skip_absent_tpu` restricts JAX to the CPU when no TPU chip is attached
(no PCI device of Google's vendor id) and no GPU device file exists (NVIDIA or AMD); anything the user set
(``JAX_PLATFORMS`` or ``jax.config.jax_platforms``) is left alone, as is every machine with an accelerator.
"""

from __future__ import annotations

import glob
import os

GOOGLE_PCI_VENDOR_ID = "0x1ae0"  # TPU chips attach as PCI devices of this vendor
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")  # NVIDIA, WSL2, AMD ROCm


def tpu_attached(pci_root: str = "/sys/bus/pci/devices") -> bool:
    """A PCI device of Google's vendor id is attached (TPU VMs); reads sysfs only, never initialises a backend."""
    for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
        try:
            with open(vendor) as f:
                if f.read().strip().lower() == GOOGLE_PCI_VENDOR_ID:
                    return True
        except OSError:
            continue
    return False


def gpu_visible() -> bool:
    return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def skip_absent_tpu() -> str | None:
    """Set ``jax_platforms`` to ``cpu`` on a machine with neither a TPU nor a GPU, unless the user chose.

    Returns the value set, or ``None`` when nothing was changed. Call before the first JAX computation (backends
    initialise lazily, so after ``import jax`` is fine)."""
    if os.environ.get("JAX_PLATFORMS", "").strip() or tpu_attached() or gpu_visible():
        return None
    import jax

    if jax.config.jax_platforms:  # set in code by the user
        return None
    jax.config.update("jax_platforms", "cpu")
    return "cpu"


# XLA's CPU client runs large ops on a multi-threaded Eigen pool. The demo's models are tiny (width 128): its ops
# are too small to split, and the pool's hand-offs cost more than they save. Measured on a 2-core CPU, 200
# captioning steps of the demo's model: 45.3-46.7 s with the pool, 35.8-40.6 s without (three runs; same losses);
# two runs at once: no change (75 s each either way).
TINY_MODEL_CPU_FLAGS = ("--xla_cpu_multi_thread_eigen=false",)


def tiny_model_cpu_flags(environ=os.environ) -> tuple[str, ...]:
    """Add :data:`TINY_MODEL_CPU_FLAGS` to ``XLA_FLAGS`` when JAX is restricted to the CPU, for runs of tiny models
    (the demo). A flag the user already set (by name) is left as it is. Returns the flags added.

    Call before the first JAX computation of the process (XLA reads ``XLA_FLAGS`` once, when its first backend
    starts); processes started afterwards (the demo's workers) inherit the environment."""
    import jax

    platforms = environ.get("JAX_PLATFORMS", "").strip() or (jax.config.jax_platforms or "")
    if platforms.strip().lower() != "cpu":
        return ()
    existing = environ.get("XLA_FLAGS", "")
    added = tuple(f for f in TINY_MODEL_CPU_FLAGS if f.split("=")[0] not in existing)
    if added:
        environ["XLA_FLAGS"] = " ".join([existing.strip(), *added]).strip()
    return added
