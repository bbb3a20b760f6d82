"""Vision towers: CLIP ViT (class token, pre-layernorm) and SigLIP (no class token), HF-compatible."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import dot_product_attention
from .config import VisionConfig
from .layer_stack import stack_modules
from .layers import Dense, LayerNorm, activation, param


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs, param_dtype):
        d = cfg.hidden_size
        ax = ("vision_embed", "vision_heads")
        self.q_proj = Dense(d, d, axes=ax, rngs=rngs, param_dtype=param_dtype)
        self.k_proj = Dense(d, d, axes=ax, rngs=rngs, param_dtype=param_dtype)
        self.v_proj = Dense(d, d, axes=ax, rngs=rngs, param_dtype=param_dtype)
        self.out_proj = Dense(d, d, axes=("vision_heads", "vision_embed"), rngs=rngs, param_dtype=param_dtype)
        self.num_heads = cfg.num_heads

    def __call__(self, x):
        b, t, d = x.shape
        h = self.num_heads
        q = self.q_proj(x).reshape(b, t, h, d // h)
        k = self.k_proj(x).reshape(b, t, h, d // h)
        v = self.v_proj(x).reshape(b, t, h, d // h)
        mask = jnp.ones((b, t, t), bool)
        return self.out_proj(dot_product_attention(q, k, v, mask).reshape(b, t, d))


class VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs, param_dtype):
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, axes=("vision_embed", "vision_mlp"), rngs=rngs,
                         param_dtype=param_dtype)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, axes=("vision_mlp", "vision_embed"), rngs=rngs,
                         param_dtype=param_dtype)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs, param_dtype):
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.layer_norm1 = LayerNorm(d, eps=eps, axes=("vision_embed",), param_dtype=param_dtype)
        self.self_attn = VisionAttention(cfg, rngs, param_dtype)
        self.layer_norm2 = LayerNorm(d, eps=eps, axes=("vision_embed",), param_dtype=param_dtype)
        self.mlp = VisionMLP(cfg, rngs, param_dtype)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs, param_dtype):
        p, c, d = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        # A conv with stride == kernel == patch is a matmul over flattened (C, p, p) patches.
        self.patch_embedding = Dense(c * p * p, d, axes=("patch", "vision_embed"), use_bias=cfg.kind == "siglip",
                                     rngs=rngs, param_dtype=param_dtype)
        if cfg.has_class_token:
            self.class_embedding = param(rngs, (d,), ("vision_embed",), param_dtype)
        self.position_embedding = param(rngs, (cfg.num_positions, d), ("vision_pos", "vision_embed"), param_dtype)
        self.cfg = cfg

    def __call__(self, pixel_values):
        cfg = self.cfg
        n, c, hh, ww = pixel_values.shape
        p = cfg.patch_size
        hp, wp = hh // p, ww // p  # a stride-p VALID conv drops the last rows/columns (SigLIP-so400m: 384 / 14)
        x = pixel_values[:, :, : hp * p, : wp * p].reshape(n, c, hp, p, wp, p).transpose(0, 2, 4, 1, 3, 5)
        x = self.patch_embedding(x.reshape(n, hp * wp, c * p * p))
        if cfg.has_class_token:
            cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        return x + self.position_embedding[...].astype(x.dtype)[None]


class AttentionPoolingHead(nnx.Module):
    """SigLIP's attention-pooling head. LLaVA never calls it; its weights are kept so export is lossless."""

    def __init__(self, cfg: VisionConfig, rngs, param_dtype):
        d = cfg.hidden_size
        self.probe = param(rngs, (1, 1, d), (None, None, "vision_embed"), param_dtype)
        self.attention = nnx.Dict(
            in_proj_weight=param(rngs, (3 * d, d), ("vision_heads", "vision_embed"), param_dtype),
            in_proj_bias=param(rngs, (3 * d,), ("vision_heads",), param_dtype, init="zeros"),
            out_proj=Dense(d, d, axes=("vision_heads", "vision_embed"), rngs=rngs, param_dtype=param_dtype),
        )
        self.layernorm = LayerNorm(d, eps=cfg.layer_norm_eps, axes=("vision_embed",), param_dtype=param_dtype)
        self.mlp = VisionMLP(cfg, rngs, param_dtype)


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs=None, param_dtype=jnp.float32, scan_layers: bool = False):
        self.embeddings = VisionEmbeddings(cfg, rngs, param_dtype)
        if cfg.kind == "clip":
            self.pre_layrnorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, axes=("vision_embed",),
                                          param_dtype=param_dtype)
        layers = [VisionLayer(cfg, rngs, param_dtype) for _ in range(cfg.num_layers)]
        # scan_layers: the layers' variables stacked on a leading "layers" axis, run under lax.scan
        self.scan_layers = bool(scan_layers)
        self.encoder = nnx.Dict(layers=stack_modules(layers) if self.scan_layers else nnx.List(layers))
        self.post_layernorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, axes=("vision_embed",),
                                        param_dtype=param_dtype)
        if cfg.use_head:
            self.head = AttentionPoolingHead(cfg, rngs, param_dtype)
        self.cfg = cfg

    def hidden_states(self, pixel_values, layers):
        """HF ``hidden_states`` entries at ``layers`` (index 0 = embeddings, i = after layer i; negatives ok).

        Layers past the deepest requested one are not computed.
        """
        n_all = self.cfg.num_layers + 1
        wanted = [i % n_all for i in layers]
        x = self.embeddings(pixel_values)
        if self.cfg.kind == "clip":
            x = self.pre_layrnorm(x)
        states = {0: x}
        if self.scan_layers:  # one scan per stretch between requested layers
            graphdef, stacked = nnx.split(self.encoder["layers"])
            done = 0
            for stop in sorted({i for i in wanted if i > 0}):
                run = jax.tree.map(lambda a, lo=done, hi=stop: a[lo:hi], stacked)
                x, _ = jax.lax.scan(lambda h, s: (nnx.merge(graphdef, s)(h), None), x, run)
                states[stop], done = x, stop
            return [states[i] for i in wanted]
        for i in range(max(wanted)):
            x = self.encoder["layers"][i](x)
            states[i + 1] = x
        return [states[i] for i in wanted]
