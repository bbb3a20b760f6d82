"""Basic Flax NNX layers whose parameters carry logical axis names (metadata key ``logical_axes``).

Logical names are resolved to mesh axes by one rules table in :mod:`jax_align.sharding`. Kernels use the JAX
layout ``[in, out]``; the Hugging Face weight map (:mod:`jax_align.models.hf_names`) transposes on the way in
and out.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
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
        self.lora_scale = 0.0
        self.lora_dropout = 0.0
        self.lora_id = 0

    def add_lora(self, rank: int, alpha: float, *, key: jax.Array, dropout: float = 0.0, layer_id: int = 0,
                 param_dtype=jnp.float32) -> None:
        """Attach adapters: ``lora_a`` Kaiming-uniform (bound ``1/sqrt(in)``, PEFT's default), ``lora_b``
        zero (so the layer's output is unchanged), scale ``alpha / rank``. ``layer_id`` seeds this layer's
        dropout masks."""
        if self.lora_a is not None:
            raise ValueError("Dense.add_lora: this layer already has adapters")
        din, dout = self.kernel.get_value().shape
        in_axis, out_axis = self.kernel.get_metadata().get("logical_axes", (None, None))
        bound = 1.0 / math.sqrt(din)
        a = jax.random.uniform(key, (din, rank), jnp.float32, -bound, bound).astype(param_dtype)
        self.lora_a = LoRAParam(a, logical_axes=(in_axis, "lora_rank"))
        self.lora_b = LoRAParam(jnp.zeros((rank, dout), param_dtype), logical_axes=("lora_rank", out_axis))
        self.lora_scale = float(alpha) / rank
        self.lora_dropout = float(dropout)
        self.lora_id = int(layer_id)

    def merge_lora(self) -> None:
        """Fold ``lora_scale * lora_a @ lora_b`` into the kernel (computed in fp32, stored in the kernel's
        dtype) and remove the adapters. No-op without adapters."""
        if self.lora_a is None:
            return
        kernel = self.kernel.get_value()
        delta = self.lora_scale * jnp.dot(self.lora_a.get_value().astype(jnp.float32),
                                          self.lora_b.get_value().astype(jnp.float32))
        self.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        self._reset_lora()

    def __call__(self, x):
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
        if self.lora_a is not None:
            y = y + lora_update(x, self.lora_a[...], self.lora_b[...], scale=self.lora_scale,
                                dropout=self.lora_dropout, layer_id=self.lora_id, dtype=dtype)
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
