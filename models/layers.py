"""Basic Flax NNX layers whose parameters carry logical axis names (metadata key ``logical_axes``).

Logical names are resolved to mesh axes by one rules table in :mod:`jax_align.sharding`. Kernels use the JAX
layout ``[in, out]``; the Hugging Face weight map (:mod:`jax_align.models.hf_names`) transposes on the way in
and out.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .lora import LoRAParam, lora_update


def param(rngs: nnx.Rngs | None, shape, axes, dtype, init="normal", std=0.02) -> nnx.Param:
    """A parameter with logical axis names. ``rngs=None`` (abstract creation) still needs a key: use 0."""
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        key = rngs.params() if rngs is not None else jax.random.key(0)
        value = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class LoRAStackInfo(nnx.Variable):
    """Per-layer LoRA scale / dropout id of a stacked (scanned) :class:`Dense` (not a parameter: not trained)."""


class StackedLayerView:
    """One layer of a stacked :class:`Dense`, seen as a plain adaptable layer by :mod:`.lora`.

    ``apply_lora`` selects and numbers layers by their per-layer paths (``language_model.layers.3...``); a view
    forwards ``add_lora`` to the stack with its index, so scanned and unrolled models get the same adapters.
    """

    def __init__(self, dense: Dense, index: int):
        self.dense, self.index = dense, index

    @property
    def lora_a(self):
        return self.dense.lora_a if self.dense.stacked_lora_active(self.index) else None

    @property
    def lora_b(self):
        return self.dense.lora_b if self.dense.stacked_lora_active(self.index) else None

    @property
    def lora_scale(self):
        return float(np.asarray(self.dense.lora_scale.get_value())[self.index]) if self.lora_a is not None else 0.0

    def add_lora(self, rank, alpha, *, key, dropout=0.0, layer_id=0, param_dtype=jnp.float32) -> None:
        self.dense.add_lora(rank, alpha, key=key, dropout=dropout, layer_id=layer_id, param_dtype=param_dtype,
                            stack_index=self.index)

    def merge_lora(self) -> None:
        self.dense.merge_lora()  # the whole stack; later views of the same stack are then no-ops


def layer_views(path: str, module) -> list:
    """``[(path, layer)]``: a stacked :class:`Dense` under ``...layers.`` becomes one view per layer with the
    per-layer path ``...layers.{i}...``; anything else is returned as is."""
    parts = path.split(".")
    if not isinstance(module, Dense) or not module.stack_size or "layers" not in parts:
        return [(path, module)]
    at = parts.index("layers") + 1
    return [(".".join(parts[:at] + [str(i)] + parts[at:]), StackedLayerView(module, i))
            for i in range(module.stack_size)]


class Dense(nnx.Module):
    """``y = x @ kernel (+ bias)``, kernel ``[in, out]`` with logical ``axes`` ``(in_axis, out_axis)``.

    Optional LoRA (see :mod:`.lora`): after :meth:`add_lora` the layer also adds
    ``lora_scale * dropout(x) @ lora_a @ lora_b`` with ``lora_a [in, r]`` (axes ``(in_axis, "lora_rank")``)
    and ``lora_b [r, out]`` (axes ``("lora_rank", out_axis)``) stored as :class:`~.lora.LoRAParam`. Without
    adapters ``lora_a``/``lora_b`` are None and the forward pass is unchanged.
    """

    def __init__(self, din, dout, *, axes, use_bias=True, rngs=None, param_dtype=jnp.float32, dtype=None,
                 std=None):
        std = std if std is not None else 1.0 / math.sqrt(din)
        self.kernel = param(rngs, (din, dout), axes, param_dtype, std=std)
        self.bias = param(rngs, (dout,), axes[1:], param_dtype, init="zeros") if use_bias else None
        self.dtype = dtype
        self._reset_lora()

    def _reset_lora(self):
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)
        self.lora_scale = nnx.static(0.0)
        self.lora_dropout = 0.0
        self.lora_id = nnx.static(0)

    @property
    def stack_size(self) -> int:
        """Number of stacked layers (``kernel [L, in, out]`` under a layer scan), 0 for a plain layer."""
        shape = self.kernel.get_value().shape
        return int(shape[0]) if len(shape) == 3 else 0

    def add_lora(self, rank: int, alpha: float, *, key: jax.Array, dropout: float = 0.0, layer_id: int = 0,
                 param_dtype=jnp.float32, stack_index: int | None = None) -> None:
        """Attach adapters: ``lora_a`` Kaiming-uniform (bound ``1/sqrt(in)``, PEFT's default), ``lora_b``
        zero (so the layer's output is unchanged), scale ``alpha / rank``. ``layer_id`` seeds this layer's
        dropout masks.

        A stacked layer (``kernel [L, in, out]``) adapts one layer at a time (``stack_index``): its adapters
        are ``[L, in, r]`` / ``[L, r, out]`` and its scale and dropout ids are per-layer arrays
        (:class:`LoRAStackInfo`); layers never adapted keep scale 0, so they compute their base output.
        """
        if self.stack_size:
            return self._add_stacked_lora(rank, alpha, key=key, dropout=dropout, layer_id=layer_id,
                                          param_dtype=param_dtype, index=stack_index)
        if self.lora_a is not None:
            raise ValueError("Dense.add_lora: this layer already has adapters")
        din, dout = self.kernel.get_value().shape
        in_axis, out_axis = self.kernel.get_metadata().get("logical_axes", (None, None))
        bound = 1.0 / math.sqrt(din)
        a = jax.random.uniform(key, (din, rank), jnp.float32, -bound, bound).astype(param_dtype)
        self.lora_a = LoRAParam(a, logical_axes=(in_axis, "lora_rank"))
        self.lora_b = LoRAParam(jnp.zeros((rank, dout), param_dtype), logical_axes=("lora_rank", out_axis))
        self.lora_scale = nnx.static(float(alpha) / rank)
        self.lora_dropout = float(dropout)
        self.lora_id = nnx.static(int(layer_id))

    def _add_stacked_lora(self, rank, alpha, *, key, dropout, layer_id, param_dtype, index):
        n, din, dout = self.kernel.get_value().shape
        if index is None or not 0 <= index < n:
            raise ValueError(f"Dense.add_lora: a stacked layer needs stack_index in [0, {n}), got {index!r}")
        _, in_axis, out_axis = self.kernel.get_metadata().get("logical_axes", (None, None, None))
        if self.lora_a is None:
            self.lora_a = LoRAParam(jnp.zeros((n, din, rank), param_dtype),
                                    logical_axes=("layers", in_axis, "lora_rank"))
            self.lora_b = LoRAParam(jnp.zeros((n, rank, dout), param_dtype),
                                    logical_axes=("layers", "lora_rank", out_axis))
            self.lora_scale = nnx.data(LoRAStackInfo(jnp.zeros((n,), jnp.float32), logical_axes=("layers",)))
            self.lora_id = nnx.data(LoRAStackInfo(jnp.zeros((n,), jnp.int32), logical_axes=("layers",)))
            self.lora_dropout = float(dropout)
        elif self.lora_a.get_value().shape[-1] != rank or self.lora_dropout != float(dropout):
            raise ValueError("Dense.add_lora: layers of one stack need the same rank and dropout")
        if self.stacked_lora_active(index):
            raise ValueError(f"Dense.add_lora: stacked layer {index} already has adapters")
        bound = 1.0 / math.sqrt(din)
        a = jax.random.uniform(key, (din, rank), jnp.float32, -bound, bound).astype(param_dtype)
        self.lora_a.set_value(self.lora_a.get_value().at[index].set(a))
        self.lora_scale.set_value(self.lora_scale.get_value().at[index].set(float(alpha) / rank))
        self.lora_id.set_value(self.lora_id.get_value().at[index].set(int(layer_id)))

    def stacked_lora_active(self, index: int) -> bool:
        """Whether stacked layer ``index`` has adapters (a non-zero scale)."""
        if self.lora_a is None:
            return False
        return bool(np.asarray(self.lora_scale.get_value())[index] != 0)

    def merge_lora(self) -> None:
        """Fold ``lora_scale * lora_a @ lora_b`` into the kernel (computed in fp32, stored in the kernel's
        dtype) and remove the adapters. No-op without adapters."""
        if self.lora_a is None:
            return
        kernel = self.kernel.get_value()
        a = self.lora_a.get_value().astype(jnp.float32)
        b = self.lora_b.get_value().astype(jnp.float32)
        if isinstance(self.lora_scale, LoRAStackInfo):
            delta = self.lora_scale.get_value()[:, None, None] * jnp.einsum("lir,lro->lio", a, b)
        else:
            delta = self.lora_scale * jnp.dot(a, b)
        self.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        self._reset_lora()

    def __call__(self, x):
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
        if self.lora_a is not None:
            stacked = isinstance(self.lora_scale, LoRAStackInfo)  # one layer of a scanned stack: traced
            y = y + lora_update(x, self.lora_a[...], self.lora_b[...],
                                scale=self.lora_scale[...] if stacked else self.lora_scale,
                                dropout=self.lora_dropout, layer_id=self.lora_id[...] if stacked else self.lora_id,
                                dtype=dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class Embed(nnx.Module):
    def __init__(self, num, dim, *, axes=("vocab", "embed"), rngs=None, param_dtype=jnp.float32, std=0.02):
        self.embedding = param(rngs, (num, dim), axes, param_dtype, std=std)

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0)


class RMSNorm(nnx.Module):
    """Llama-style RMSNorm: normalise in fp32, cast back, then scale (matches HF's order of operations)."""

    def __init__(self, dim, *, eps=1e-6, axes=("norm",), param_dtype=jnp.float32):
        self.scale = param(None, (dim,), axes, param_dtype, init="ones")
        self.eps = eps

    def __call__(self, x):
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(dtype) * xf.astype(dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim, *, eps=1e-5, axes=("norm",), param_dtype=jnp.float32):
        self.scale = param(None, (dim,), axes, param_dtype, init="ones")
        self.bias = param(None, (dim,), axes, param_dtype, init="zeros")
        self.eps = eps

    def __call__(self, x):
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


def activation(name: str):
    """Hugging Face ``ACT2FN`` names to JAX functions."""
    table = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "relu": jax.nn.relu,
    }
    if name not in table:
        raise ValueError(f"activation {name!r} is not supported (supported: {sorted(table)})")
    return table[name]
