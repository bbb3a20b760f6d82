"""Stacked layers for ``scan_layers``: build a stacked module, and convert states between the per-layer layout
(checkpoints, HF names: ``language_model.layers.3.self_attn.q_proj.kernel [E, H*D]``) and the stacked layout
(``language_model.layers.self_attn.q_proj.kernel [L, E, H*D]``, logical axes ``("layers", ...)``).

:func:`unstack_layers` and :func:`stack_layers` accept an ``nnx.State`` (leaves: variables holding arrays,
``ShapeDtypeStruct`` or ``NamedSharding``) or a nested dict of arrays, and leave anything already in the
requested layout unchanged, so they can be called unconditionally at load and save boundaries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

LAYER_STACKS = (("language_model", "layers"), ("vision_tower", "encoder", "layers"))
LAYER_AXIS = "layers"


def layer_runs(windows) -> list[tuple[int, int, object]]:
    """Maximal runs ``(start, stop, window)`` of consecutive layers with the same attention window."""
    runs = []
    for i, w in enumerate(windows):
        if runs and runs[-1][2] == w:
            runs[-1] = (runs[-1][0], i + 1, w)
        else:
            runs.append((i, i + 1, w))
    return runs


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _is_index(key) -> bool:
    return isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit())


def _stack_values(values):
    first = values[0]
    if isinstance(first, NamedSharding):
        return NamedSharding(first.mesh, PartitionSpec(None, *first.spec))
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(values),) + tuple(first.shape), first.dtype)
    if isinstance(first, np.ndarray):
        return np.stack(values)
    return jnp.stack(values)


def _take_value(value, i):
    if isinstance(value, NamedSharding):
        return NamedSharding(value.mesh, PartitionSpec(*tuple(value.spec)[1:]))
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(value.shape)[1:], value.dtype)
    return value[i]


def _stack_leaves(leaves):
    if not _is_var(leaves[0]):
        return _stack_values(leaves)
    first = leaves[0]
    value = _stack_values([v.get_value() for v in leaves])
    axes = first.get_metadata().get("logical_axes")
    if axes is None:
        return first.replace(value)
    return first.replace(value, logical_axes=(LAYER_AXIS,) + tuple(axes))


def _take_leaf(leaf, i):
    if not _is_var(leaf):
        return _take_value(leaf, i)
    value = _take_value(leaf.get_value(), i)
    axes = leaf.get_metadata().get("logical_axes")
    if axes and axes[0] == LAYER_AXIS:
        return leaf.replace(value, logical_axes=tuple(axes[1:]))
    return leaf.replace(value)


def stack_modules(modules):
    """One module of ``modules[0]``'s type whose variables stack the modules' variables on axis 0."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.state(m) for m in modules]
    stacked = jax.tree.map(lambda *vs: _stack_leaves(vs), *states, is_leaf=_is_var)
    return nnx.merge(graphdef, stacked)


# -- state conversion -----------------------------------------------------------------------------------------
def flatten_dict(tree) -> list[tuple[tuple, object]]:
    """``[(path, leaf)]`` of a nested dict (depth first, insertion order)."""
    out = []

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(prefix + (k,), v)
        else:
            out.append((prefix, node))

    walk((), tree)
    return out


def _flatten(state):
    if isinstance(state, nnx.State):
        return [(tuple(p), v) for p, v in nnx.to_flat_state(state)], True
    return flatten_dict(state), False


def _unflatten(items, is_state):
    if is_state:
        return nnx.from_flat_state(items)
    root: dict = {}
    for path, leaf in items:
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return root


def _stack_prefix(path, prefixes):
    for pre in prefixes:
        if len(path) > len(pre) and tuple(path[:len(pre)]) == pre:
            return pre
    return None


def _leading(leaf):
    value = leaf.get_value() if _is_var(leaf) else leaf
    shape = getattr(value, "shape", None)
    return None if shape is None or not len(shape) else int(shape[0])


def stacked_prefixes(state) -> tuple:
    """The layer groups of ``state`` that are in the stacked layout."""
    items, _ = _flatten(state)
    found = []
    for path, _ in items:
        pre = _stack_prefix(path, LAYER_STACKS)
        if pre is not None and not _is_index(path[len(pre)]) and pre not in found:
            found.append(pre)
    return tuple(found)


def unstack_layers(state, num_layers: int | None = None):
    """Stacked layer groups -> per-layer layout (``...layers.{i}...``). ``num_layers`` is needed only for a
    state without array shapes (a tree of shardings)."""
    items, is_state = _flatten(state)
    stacked = stacked_prefixes(state)
    if not stacked:
        return state
    counts = {}
    for path, leaf in items:
        pre = _stack_prefix(path, stacked)
        if pre is not None and _leading(leaf) is not None and not isinstance(
                leaf.get_value() if _is_var(leaf) else leaf, NamedSharding):
            counts.setdefault(pre, _leading(leaf))
    out = []
    for path, leaf in items:
        pre = _stack_prefix(path, stacked)
        if pre is None:
            out.append((path, leaf))
            continue
        n = counts.get(pre, num_layers)
        if n is None:
            raise ValueError(f"unstack_layers: cannot tell the number of layers of {'.'.join(pre)}; pass num_layers")
        out += [(pre + (i,) + path[len(pre):], _take_leaf(leaf, i)) for i in range(n)]
    return _unflatten(out, is_state)


def stack_layers(state, like=None):
    """Per-layer layout -> stacked layout for the layer groups that are stacked in ``like`` (a state of the
    target model; default: the decoder layers only)."""
    prefixes = stacked_prefixes(like) if like is not None else (LAYER_STACKS[0],)
    items, is_state = _flatten(state)
    groups: dict = {}
    out: list = []
    for path, leaf in items:
        pre = _stack_prefix(path, prefixes)
        if pre is None or not _is_index(path[len(pre)]):
            out.append((path, leaf))
            continue
        key = pre + path[len(pre) + 1:]
        if key not in groups:
            groups[key] = []
            out.append((key, None))
        groups[key].append((int(path[len(pre)]), leaf))
    if not groups:
        return state
    out = [(p, _stack_leaves([l for _, l in sorted(groups[p], key=lambda t: t[0])]) if leaf is None and p in groups
            else leaf) for p, leaf in out]
    return _unflatten(out, is_state)
