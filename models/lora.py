"""Low-rank adapters (LoRA) on the decoder's projections (and optionally the projector), as NNX parameters.

An adapted :class:`~.layers.Dense` computes ``y = x @ W (+ bias) + (alpha / r) * dropout(x) @ A @ B`` with
``A [in, r]`` and ``B [r, out]`` stored as :class:`LoRAParam` (a subclass of ``nnx.Param``), so one NNX filter
selects exactly the adapters::

    n = apply_lora(model, rank=8, alpha=16)              # in place; returns the number of adapted layers
    graphdef, lora, base = nnx.split(model, LoRAParam, ...)   # trainable = adapters only
    ref = nnx.merge(graphdef, disable_lora(lora), base)     # the reference: same weights, adapters off

``B`` starts at zero, so a freshly adapted model computes exactly what the base model computes, and
``disable_lora`` (all ``B`` zeroed; the base weights are shared, never copied) turns any adapted model back
into its base model. :func:`merge_lora` folds ``(alpha / r) * A @ B`` into each kernel and removes the
adapters: the merged state has the same paths as a model that never had adapters, so
``jax_align.models.to_hf`` exports it.

Adapter dropout needs randomness. Layers never own a key; instead the caller opens :func:`lora_dropout_key`
*inside* the traced loss function, and every adapted layer with a non-zero dropout rate draws its mask from
``fold_in(key, layer_id)`` (``layer_id`` is fixed by :func:`apply_lora`, so masks do not depend on call order
and a rematerialised layer recomputes the same mask). Without an open context (evaluation, the reference
model, generation) no dropout is applied; with dropout 0 the forward pass contains no dropout code at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import re
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Module-path prefixes that may carry adapters. The LM head is read as a raw matrix by the log-prob head and
# the vision tower stays frozen, so neither is ever adapted.
DECODER_PREFIX = "language_model."
PROJECTOR_PREFIX = "multi_modal_projector."


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix (``lora_a`` or ``lora_b``). Being an ``nnx.Param``, it is a parameter everywhere
    (sharding by ``logical_axes``, checkpoints), and ``LoRAParam`` alone is the NNX filter for adapters."""


lora_filter = LoRAParam
"""NNX filter selecting the adapters: ``nnx.split(model, lora_filter, ...)``."""

base_param_filter = nnx.All(nnx.Param, nnx.Not(LoRAParam))
"""NNX filter selecting every parameter that is not an adapter."""


# -- dropout randomness --------------------------------------------------------------------------------
_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("lora_dropout_key", default=None)


@contextlib.contextmanager
def lora_dropout_key(key: jax.Array | None) -> Iterator[None]:
    """Enable adapter dropout for the forward passes run inside the ``with`` block, drawn from ``key``.

    Open it inside the function that ``jax.jit``/``jax.grad`` traces, with a key that is an argument of that
    function (e.g. ``fold_in(step_key, micro_batch)``): a key captured from outside a jitted function would be
    baked into the compiled step as a constant and repeat the same masks every step. ``key=None`` disables
    dropout inside the block.
    """
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


def active_dropout_key() -> jax.Array | None:
    """The key of the innermost open :func:`lora_dropout_key` block, or None (no adapter dropout)."""
    return _DROPOUT_KEY.get()


def lora_update(x: jax.Array, a: jax.Array, b: jax.Array, *, scale: float, dropout: float, layer_id: int,
                dtype) -> jax.Array:
    """``scale * dropout(x) @ a @ b`` computed in ``dtype`` (``x [..., in]``, ``a [in, r]``, ``b [r, out]``).

    Dropout is inverted (kept entries scaled by ``1 / (1 - dropout)``) and only applied while a
    :func:`lora_dropout_key` block is open.
    """
    h = x.astype(dtype)
    if dropout > 0.0:
        key = active_dropout_key()
        if key is not None:
            keep = jax.random.bernoulli(jax.random.fold_in(key, layer_id), 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / jnp.asarray(1.0 - dropout, dtype), jnp.zeros((), dtype))
    # ``scale`` may be an fp32 array (per-layer scales of a scanned stack): keep the result in ``dtype``
    return (scale * jnp.dot(jnp.dot(h, a.astype(dtype)), b.astype(dtype))).astype(dtype)


# -- model-level operations ----------------------------------------------------------------------------
@runtime_checkable
class Adaptable(Protocol):
    """A layer that can carry adapters (:class:`~.layers.Dense`)."""

    lora_a: nnx.Param | None
    lora_b: nnx.Param | None

    def add_lora(self, rank: int, alpha: float, *, key: jax.Array, dropout: float = 0.0, layer_id: int = 0,
                 param_dtype=jnp.float32) -> None: ...

    def merge_lora(self) -> None: ...


def _dotted(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def adaptable_layers(model: nnx.Module) -> list[tuple[str, Adaptable]]:
    """Every layer of ``model`` that can carry adapters, as ``(dotted module path, layer)``, graph order.

    Under a layer scan a stacked layer appears once per layer, with its per-layer path (see
    :func:`~.layers.layer_views`), so targets, layer ids and counts do not depend on ``scan_layers``."""
    from .layers import layer_views

    found = [(_dotted(path), m) for path, m in nnx.iter_modules(model) if path and isinstance(m, Adaptable)]
    views = [v for p, m in found for v in layer_views(p, m)]
    return sorted(views, key=lambda pv: _layer_order(pv[0]))


def _layer_order(path: str):
    """Sort key: graph order with stacked layers interleaved as in the per-layer layout (by layer index)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def adapted_layers(model: nnx.Module) -> list[tuple[str, Adaptable]]:
    """The layers of ``model`` that currently carry adapters."""
    return [(p, m) for p, m in adaptable_layers(model) if m.lora_a is not None]


def has_lora(model: nnx.Module) -> bool:
    return bool(adapted_layers(model))


def target_matches(target: str, path: str) -> bool:
    """Whether a target selects the layer at dotted ``path``.

    * ``"re:PATTERN"``: Python regex, full match on the path (``re:language_model\\.layers\\.[0-3]\\..*``);
    * a glob (contains ``*``, ``?``, ``[`` or ``.``): ``fnmatch`` on the path (``*`` also crosses dots), e.g.
      ``language_model.layers.*.self_attn.q_proj`` or ``*.mlp.*``;
    * otherwise an attribute name, matched against the last path component (``q_proj``).
    """
    if target.startswith("re:"):
        return re.fullmatch(target[3:], path) is not None
    if any(c in target for c in "*?[."):
        return fnmatch.fnmatchcase(path, target)
    return path.rsplit(".", 1)[-1] == target


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS, include_projector: bool = False, seed: int = 0,
               param_dtype=jnp.float32) -> int:
    """Add adapters in place to the decoder layers selected by ``targets`` (see :func:`target_matches`), and
    to both projector linears when ``include_projector``. Returns the number of adapted layers.

    Only layers under ``language_model.`` (and ``multi_modal_projector.`` with ``include_projector``) are
    candidates. ``A`` is drawn like PEFT's default (Kaiming-uniform, bound ``1/sqrt(in)``) from
    ``fold_in(key(seed), layer_id)``, ``B`` is zero, ``scale = alpha / rank``. Adapters are stored in
    ``param_dtype`` (fp32 by default, also for bf16 base weights).

    Raises ValueError for a bad rank/alpha/dropout, a target that matches no decoder layer (naming it and the
    available layer names), or a layer that already has adapters.
    """
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"apply_lora: rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"apply_lora: alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"apply_lora: dropout must be in [0, 1), got {dropout!r}")
    if not targets and not include_projector:
        raise ValueError("apply_lora: no targets given")
    layers = adaptable_layers(model)
    decoder = [(p, m) for p, m in layers if p.startswith(DECODER_PREFIX)]
    chosen: dict[str, Adaptable] = {}
    for t in targets:
        hits = [(p, m) for p, m in decoder if target_matches(t, p)]
        if not hits:
            names = sorted({p.rsplit(".", 1)[-1] for p, _ in decoder})
            example = decoder[0][0] if decoder else "(none)"
            raise ValueError(f"apply_lora: target {t!r} matches no decoder layer; decoder layer names: "
                             f"{names}, e.g. path {example!r}")
        chosen.update(hits)
    if include_projector:
        proj = [(p, m) for p, m in layers if p.startswith(PROJECTOR_PREFIX)]
        if not proj:
            raise ValueError("apply_lora: include_projector=True but the model has no multi_modal_projector "
                             "layers")
        chosen.update(proj)
    order = [p for p, _ in layers if p in chosen]  # graph order: layer ids do not depend on the target order
    already = [p for p in order if chosen[p].lora_a is not None]
    if already:
        more = " ..." if len(already) > 4 else ""
        raise ValueError(f"apply_lora: layers already have adapters: {already[:4]}{more}")
    root = jax.random.key(seed)
    for i, p in enumerate(order):
        chosen[p].add_lora(rank, alpha, key=jax.random.fold_in(root, i), dropout=dropout, layer_id=i,
                           param_dtype=param_dtype)
    return len(order)


def merge_lora(model: nnx.Module) -> int:
    """Fold ``scale * A @ B`` into every adapted kernel and remove the adapters, in place.

    Afterwards the model has exactly the parameter paths of a model that never had adapters. Returns the
    number of merged layers. The variables are updated in place, so any ``nnx.State`` that shares them (e.g.
    the state the model was merged from) sees the new kernels; use :func:`merged_state` to leave inputs
    untouched.
    """
    layers = adapted_layers(model)
    for _, m in layers:
        m.merge_lora()
    return len(layers)


def merged_state(graphdef, *states) -> nnx.State:
    """The state of ``nnx.merge(graphdef, *states)`` with adapters folded in; the inputs are not modified.

    This is what to export: ``to_hf(config, merged_state(graphdef, lora, base), out_dir)``.
    """
    model = nnx.merge(graphdef, *states, copy=True)
    merge_lora(model)
    return nnx.state(model)


def split_lora(model: nnx.Module):
    """``(graphdef, lora_state, rest_state)``; ``nnx.merge(graphdef, lora_state, rest_state)`` rebuilds it.

    Raises ValueError if the model has no adapters.
    """
    graphdef, lora, rest = nnx.split(model, lora_filter, ...)
    if not jax.tree.leaves(lora):
        raise ValueError("split_lora: the model has no LoRA adapters (call apply_lora first)")
    return graphdef, lora, rest


def _is_lora_b(path) -> bool:
    for k in path:
        name = getattr(k, "key", getattr(k, "name", None))
        if name == "lora_b":
            return True
    return False


def disable_lora(lora_state):
    """The adapter state with every ``lora_b`` set to zero (``lora_a`` untouched): merged with the base
    weights it gives exactly the base model, i.e. the reference policy "same weights, adapters off".

    Works on an ``nnx.State`` (or nested dict) of adapters, inside or outside ``jit``; only the small adapter
    arrays are created, the base weights are never copied.
    """
    return jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if _is_lora_b(p) else x,
                                            lora_state)
