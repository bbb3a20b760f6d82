"""Sharding by name: one rules table maps logical axis names to the mesh axes ``data``, ``fsdp``, ``tensor``.

Every parameter carries logical names (NNX metadata ``logical_axes``); activations use the same vocabulary
(``batch``, ``length``). The same code runs on one CPU, simulated CPU devices, a GPU node or a TPU pod: only the
mesh shape (from config) changes. A dimension that the mapped mesh axes do not divide is replicated instead of
failing, and a mesh axis is used at most once per array.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated). MaxText-style FSDP + tensor parallelism.
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_pos", None),
    ("patch", None),
    ("lora_rank", None),
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types (GSPMD-style propagation).

    One of the sizes may be -1: it takes all remaining devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        sizes[sizes.index(-1)] = len(devices) // known
    n = int(np.prod(sizes))
    if n > len(devices) or n < 1:
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs {n} devices, "
                         f"{len(devices)} available")
    arr = np.asarray(devices[:n]).reshape(sizes)
    return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def spec_for(axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
             rules=DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for an array with logical ``axes`` and ``shape`` on ``mesh``."""
    if not axes:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape, strict=False):
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(a for a in targets if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        size = int(np.prod([mesh.shape[a] for a in targets])) if targets else 1
        if not targets or dim % size:
            out.append(None)
            continue
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """A pytree of ``NamedSharding`` with the structure of an NNX ``state`` (read from ``logical_axes``)."""

    def one(x):
        if _is_var(x):
            value = x.get_value()
            axes = x.get_metadata().get("logical_axes")
            return x.replace(NamedSharding(mesh, spec_for(axes, value.shape, mesh, rules)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=_is_var)


def shard_state(state, mesh: Mesh, rules=DEFAULT_RULES):
    """Place an NNX state on the mesh according to its logical axes."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch arrays: leading dimension over ``(data, fsdp)``, the rest replicated."""
    lead = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    first = lead if len(lead) > 1 else (lead[0] if lead else None)
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
