"""Sharding by name: one rules table maps logical axis names to the mesh axes ``data``, ``fsdp``, ``tensor``.

Every parameter carries logical names (NNX metadata ``logical_axes``); activations use the same vocabulary
(``batch``, ``length``). The same code runs on one CPU, simulated CPU devices, a GPU node or a TPU pod: only the
mesh shape (from config) changes. A dimension that the mapped mesh axes do not divide is replicated instead of
failing, and a mesh axis is used at most once per array.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

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
    ("layers", None),  # the stacked-layer axis of a layer scan (models/layer_stack.py): never sharded
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


# -- rules from config, activation constraints -------------------------------------------------------------
def rules_from_config(overrides=None, base=DEFAULT_RULES) -> tuple[tuple[str, object], ...]:
    """The rules table with ``overrides`` applied (config ``mesh.rules``).

    ``overrides``: a mapping ``{logical name: mesh axis | [mesh axes] | null}`` or a list of
    ``[name, target]`` pairs. A name not in ``base`` is added; a target must name mesh axes of
    :data:`MESH_AXES` (``null``/``None``/``[]`` = replicated). Raises ValueError naming the bad entry.
    """
    if not overrides:
        return tuple(base)
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    table = dict(base)
    for item in items:
        try:
            name, target = item
        except (TypeError, ValueError):
            raise ValueError(f"mesh.rules: entry {item!r} is not a (logical name, mesh axes) pair") from None
        if not isinstance(name, str) or not name:
            raise ValueError(f"mesh.rules: logical name {name!r} is not a non-empty string")
        if target is None or target == "" or (isinstance(target, (list, tuple)) and not target):
            table[name] = None
            continue
        axes = (target,) if isinstance(target, str) else tuple(target)
        bad = [a for a in axes if a not in MESH_AXES]
        if bad or len(set(axes)) != len(axes):
            raise ValueError(f"mesh.rules: {name}: {target!r} must name distinct mesh axes among {MESH_AXES}")
        table[name] = axes[0] if len(axes) == 1 else axes
    return tuple(table.items())


_RULES: contextvars.ContextVar = contextvars.ContextVar("jax_align_sharding_rules", default=None)


@contextlib.contextmanager
def use_rules(rules) -> Iterator[None]:
    """Make ``rules`` the table that :func:`constrain` resolves activations with (inside the ``with`` block;
    open it around tracing, i.e. around the first call of a jitted function)."""
    token = _RULES.set(tuple(rules) if rules is not None else None)
    try:
        yield
    finally:
        _RULES.reset(token)


def active_rules():
    rules = _RULES.get()
    return DEFAULT_RULES if rules is None else rules


def current_mesh():
    """The mesh set by ``jax.set_mesh`` / ``jax.sharding.use_mesh`` or a legacy ``with mesh:`` block, else None."""
    try:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is not None and not mesh.empty:
            return mesh
    except Exception:  # noqa: BLE001 - API differences across jax versions
        pass
    try:
        from jax._src import mesh as mesh_lib

        physical = mesh_lib.thread_resources.env.physical_mesh
        if physical is not None and not physical.empty:
            return physical
    except Exception:  # noqa: BLE001
        pass
    return None


def constrain(x, axes: Sequence[str | None], rules=None):
    """``with_sharding_constraint`` of activation ``x`` by logical ``axes`` (``("batch", "length", "embed")``),
    resolved through the rules table (:func:`use_rules`, else :data:`DEFAULT_RULES`).

    A no-op outside a mesh context, or when every mesh axis has size 1; dimensions that the mapped axes do
    not divide stay replicated (as for parameters).
    """
    mesh = current_mesh()
    if mesh is None or int(np.prod(list(mesh.shape.values()))) == 1:
        return x
    spec = spec_for(axes, x.shape, mesh, rules if rules is not None else active_rules())
    if isinstance(mesh, Mesh):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return jax.lax.with_sharding_constraint(x, spec)
