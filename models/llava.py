"""The LLaVA composition: vision tower -> projector -> image features written into the image-token positions.

Static shapes throughout: the i-th image-token position of a row takes the i-th image feature of that row (a
gather driven by a cumulative sum, no Python loop over the batch). ``pixel_values`` is ``[B, N, C, H, W]``
(N images per row) or, as in Hugging Face, ``[N, C, H, W]``; in the 4-D case with ``N != B`` features are
filled in batch-major order over all image tokens, exactly like ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from .anyres import AnyResImages
from .config import LlavaConfig
from .decoder import Decoder, resolve_scan
from .layers import Dense, activation, param
from .vision import VisionTower


class Projector(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs=None, param_dtype=jnp.float32, dtype=None):
        din = cfg.vision.hidden_size * len(cfg.feature_layers)
        d = cfg.text.hidden_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, use_bias=cfg.projector_bias)
        self.linear_1 = Dense(din, d, axes=("vision_embed", "embed"), **kw)
        self.linear_2 = Dense(d, d, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.projector_hidden_act)

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaModel(nnx.Module):
    def __init__(self, cfg: LlavaConfig, *, rngs: nnx.Rngs | None = None, param_dtype=jnp.float32, dtype=None,
                 remat: str = "none", attention: str = "auto", scan_layers=None):
        # attention: auto | reference | blockwise | cudnn | splash (models/attention.py); scan_layers: None
        # (auto: scan towers of >= 8 layers, decoder and vision tower each) | True | False (models/decoder.py)
        self.vision_tower = VisionTower(cfg.vision, rngs, param_dtype,
                                        scan_layers=resolve_scan(scan_layers, cfg.vision.num_layers))
        self.multi_modal_projector = Projector(cfg, rngs, param_dtype, dtype)
        self.language_model = Decoder(cfg.text, rngs, param_dtype, dtype, remat=remat, attention=attention,
                                      scan_layers=scan_layers)
        if cfg.anyres:  # LLaVA-NeXT / OneVision: the learned vector closing each row of the tile map
            self.image_newline = param(rngs, (cfg.text.hidden_size,), ("embed",), param_dtype,
                                       std=cfg.text.hidden_size ** -0.5)
        if not cfg.text.tie_word_embeddings:
            self.lm_head = Dense(cfg.text.hidden_size, cfg.text.vocab_size, axes=("embed", "vocab"), use_bias=False,
                                 rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.cfg = cfg
        self.dtype = dtype

    # -- pieces ------------------------------------------------------------------------------------
    def encode_images(self, pixel_values):
        """``[N, C, H, W]`` -> projected image features ``[N, P, E]`` (P = ``cfg.tile_tokens``)."""
        cfg = self.cfg
        dtype = self.dtype or pixel_values.dtype
        states = self.vision_tower.hidden_states(pixel_values.astype(dtype), cfg.feature_layers)
        if cfg.select_strategy == "default":
            states = [s[:, 1:] for s in states]
        return self.multi_modal_projector(jnp.concatenate(states, axis=-1))

    def head_weight(self):
        """The LM head as ``[E, V]`` (the transposed embedding when tied)."""
        if self.cfg.text.tie_word_embeddings:
            return self.language_model.embed_tokens.embedding[...].T
        return self.lm_head.kernel[...]

    def embed(self, input_ids, image_features=None):
        """Token embeddings with image features written into image-token positions.

        ``image_features`` is ``[B, M, E]`` (row-wise: M features per row, consumed in order) or ``[M, E]``
        (batch-major over all image tokens, HF semantics). Extra features are ignored; a row with more image
        tokens than features repeats the last one (callers check counts on the host, see ``check_image_tokens``).
        """
        x = self.language_model.embed_tokens(input_ids)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        if image_features is None:
            return x
        is_img = input_ids == self.cfg.image_token_id
        feats = image_features.astype(x.dtype)
        if feats.ndim == 3:
            idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, feats.shape[1] - 1)
            gathered = jnp.take_along_axis(feats, idx[..., None], axis=1)
        else:
            flat = is_img.reshape(-1)
            idx = jnp.clip(jnp.cumsum(flat) - 1, 0, feats.shape[0] - 1)
            gathered = feats[idx].reshape(*input_ids.shape, -1)
        return jnp.where(is_img[..., None], gathered, x)

    def anyres_features(self, images: AnyResImages):
        """AnyRes tiles -> the image-token features of :class:`~.anyres.AnyResImages`'s plan.

        Returns ``[M, E]`` (batch-major) or ``[B, M, E]`` (row-wise). Every tile, padding included, goes through
        the tower (static shapes); the plan's zero weights drop padding tiles and padding tokens.
        """
        tiles = images.tiles
        lead = tiles.shape[:-3]
        f = self.encode_images(tiles.reshape(-1, *tiles.shape[-3:]))  # [n_tiles, P, E]
        e = f.shape[-1]
        w = images.weight.astype(f.dtype)
        nl = images.newline.astype(f.dtype)[..., None] * self.image_newline[...].astype(f.dtype)
        if images.row_wise:
            f = f.reshape(lead[0], -1, e)  # [B, N*T*P, E]
            b, m, k = images.index.shape
            g = jnp.take_along_axis(f, images.index.reshape(b, m * k)[..., None], axis=1).reshape(b, m, k, e)
        else:
            g = f.reshape(-1, e)[images.index]  # [M, K, E]
        out = g[..., 0, :] * w[..., 0, None]
        for j in range(1, g.shape[-2]):
            out = out + g[..., j, :] * w[..., j, None]
        return out + nl

    def image_features_for(self, pixel_values, batch: int):
        """Encode ``pixel_values`` (an array or :class:`AnyResImages`) and lay the features out for :meth:`embed`."""
        if isinstance(pixel_values, AnyResImages):
            return self.anyres_features(pixel_values)
        if pixel_values.ndim == 5:
            b, n = pixel_values.shape[:2]
            f = self.encode_images(pixel_values.reshape(b * n, *pixel_values.shape[2:]))
            return f.reshape(b, n * f.shape[1], f.shape[2])
        f = self.encode_images(pixel_values)
        if f.shape[0] == batch:
            return f
        return f.reshape(-1, f.shape[-1])

    # -- forward -----------------------------------------------------------------------------------
    def hidden_states(self, input_ids, pixel_values=None, *, image_features=None, segment_ids=None,
                      prefix_segment_ids=None, positions=None, image_keep_mask=None, cache=None, cache_index=None):
        """Final (normed) hidden states ``[B, T, E]`` and the updated cache (None without a cache)."""
        b, t = input_ids.shape
        if image_features is None and pixel_values is not None:
            image_features = self.image_features_for(pixel_values, b)
        x = self.embed(input_ids, image_features)
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if prefix_segment_ids is None:
            prefix_segment_ids = segment_ids
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t) + (0 if cache_index is None else cache_index), (b, t))
        keep = None
        if image_keep_mask is not None:
            keep = image_keep_mask | (input_ids != self.cfg.image_token_id)
        return self.language_model(x, positions, segment_ids, prefix_segment_ids, keep, cache, cache_index)

    def __call__(self, input_ids, pixel_values=None, **kw):
        """Logits ``[B, T, V]`` (fp32) and the cache. Training code should use ``hidden_states`` + a chunked head."""
        h, cache = self.hidden_states(input_ids, pixel_values, **kw)
        logits = jnp.einsum("bte,ev->btv", h.astype(jnp.float32), self.head_weight().astype(jnp.float32))
        return logits, cache
