"""Model configuration parsed from (and written back to) Hugging Face ``config.json`` files.

The dataclasses are frozen and hashable so that they can live in an NNX graph definition (static under
``jax.jit``). ``hf_json`` keeps the original Hugging Face config so that an export writes back every field we
do not model (generation defaults, token ids, ...).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

SUPPORTED_TEXT = ("llama", "mistral", "qwen2")
SUPPORTED_VISION = ("clip_vision_model", "siglip_vision_model")
# model_type -> architecture of the three LLaVA families (AnyRes for the last two)
FAMILIES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture is not one this library implements."""


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters (HF ``rope_parameters`` / legacy ``rope_theta`` + ``rope_scaling``)."""

    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | dynamic | llama3 | yarn
    factor: float = 1.0
    # Extra scaling parameters as sorted (key, value) pairs, e.g. low_freq_factor, beta_fast.
    extra: tuple = ()
    partial_rotary_factor: float = 1.0

    def get(self, key, default=None):
        return dict(self.extra).get(key, default)


@dataclass(frozen=True)
class VisionConfig:
    kind: str  # "clip" | "siglip"
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    use_head: bool = False  # SigLIP attention-pooling head (weights kept for export, unused by LLaVA)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def has_class_token(self) -> bool:
        return self.kind == "clip"

    @property
    def num_positions(self) -> int:
        return self.num_patches + (1 if self.has_class_token else 0)


@dataclass(frozen=True)
class TextConfig:
    kind: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    rope: RopeConfig = RopeConfig()
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    # One entry per layer: None for full attention, else the sliding-window size.
    sliding_windows: tuple = ()

    def window(self, layer: int):
        return self.sliding_windows[layer] if self.sliding_windows else None


@dataclass(frozen=True)
class LlavaConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    feature_layers: tuple = (-2,)
    feature_layer_is_list: bool = False
    select_strategy: str = "default"  # "default" drops the first (class) token, "full" keeps all
    hf_json: str = ""  # the original HF config.json text, kept for export
    source_dir: str = ""  # where tokenizer/processor files can be copied from on export
    model_type: str = "llava"  # llava | llava_next | llava_onevision
    image_grid_pinpoints: tuple = ()  # AnyRes resolutions ((h, w), ...)
    vision_aspect_ratio: str = ""  # OneVision: "anyres_max_N"

    @property
    def anyres(self) -> bool:
        return self.model_type != "llava"

    @property
    def tile_tokens(self) -> int:
        """Features one tile (one vision-tower image) contributes (HF drops the first one for "default")."""
        n = self.vision.num_positions
        return n - 1 if self.select_strategy == "default" else n

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image of the fixed-count LLaVA family. AnyRes families depend on the image size:
        ask the front end (:mod:`jax_align.models.frontends`)."""
        if self.anyres:
            raise ValueError(f"{self.model_type}: the number of image tokens depends on the image size; use "
                             "jax_align.models.frontends.frontend_for(config).num_tokens(height, width)")
        return self.tile_tokens

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, cfg: dict) -> "LlavaConfig":
        model_type = cfg.get("model_type")
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported (supported: {sorted(FAMILIES)}, i.e. "
                f"{', '.join(FAMILIES.values())} with a CLIP or SigLIP vision tower)"
            )
        archs = cfg.get("architectures") or [FAMILIES[model_type]]
        if archs[0] != FAMILIES[model_type]:
            raise UnsupportedModelError(f"architecture {archs[0]!r} is not supported for model_type {model_type!r}")
        vcfg, tcfg = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
        vision = _vision_from_hf(vcfg)
        text = _text_from_hf(tcfg, cfg)
        layer = cfg.get("vision_feature_layer", -2)
        is_list = isinstance(layer, (list, tuple))
        layers = tuple(int(x) for x in layer) if is_list else (int(layer),)
        for x in layers:
            if not -(vision.num_layers + 1) <= x <= vision.num_layers:
                raise ValueError(f"vision_feature_layer {x} out of range for {vision.num_layers} layers")
        strategy = cfg.get("vision_feature_select_strategy",
                           "full" if model_type == "llava_onevision" else "default")
        if strategy not in ("default", "full"):
            raise UnsupportedModelError(f"vision_feature_select_strategy {strategy!r} is not supported")
        token = cfg.get("image_token_id", cfg.get("image_token_index"))
        if token is None:
            raise ValueError("config.json has neither image_token_id nor image_token_index")
        anyres = _anyres_from_hf(cfg, model_type, vision, strategy)
        return cls(
            vision=vision,
            text=text,
            image_token_id=int(token),
            projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
            projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
            feature_layers=layers,
            feature_layer_is_list=is_list,
            select_strategy=strategy,
            hf_json=json.dumps(cfg, sort_keys=True),
            **anyres,
        )

    @classmethod
    def from_hf_dir(cls, path: str) -> "LlavaConfig":
        import os

        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path}: no config.json in the model directory")
        with open(cfg_path) as f:
            return cls.from_hf_dict(json.load(f))

    def to_hf_dict(self) -> dict:
        """The HF config.json for this model: the original one when known, updated with our fields."""
        cfg = json.loads(self.hf_json) if self.hf_json else {}
        cfg.update(
            architectures=[FAMILIES[self.model_type]],
            model_type=self.model_type,
            image_token_index=self.image_token_id,
            projector_hidden_act=self.projector_hidden_act,
            multimodal_projector_bias=self.projector_bias,
            vision_feature_layer=list(self.feature_layers) if self.feature_layer_is_list else self.feature_layers[0],
            vision_feature_select_strategy=self.select_strategy,
            tie_word_embeddings=self.text.tie_word_embeddings,
        )
        if self.anyres:
            cfg["image_grid_pinpoints"] = [list(p) for p in self.image_grid_pinpoints]
            if self.model_type == "llava_onevision":
                cfg["vision_aspect_ratio"] = self.vision_aspect_ratio
        else:
            cfg["image_seq_length"] = self.num_image_tokens
        cfg.pop("image_token_id", None)
        cfg["vision_config"] = _vision_to_hf(self.vision, cfg.get("vision_config") or {})
        cfg["text_config"] = _text_to_hf(self.text, cfg.get("text_config") or {})
        return cfg

    def replace(self, **kw) -> "LlavaConfig":
        return dataclasses.replace(self, **kw)


# transformers' defaults (LlavaNextConfig / LlavaOnevisionConfig) when config.json leaves them out
_DEFAULT_PINPOINTS = {
    "llava_next": ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
    "llava_onevision": tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7)),
}


def _anyres_from_hf(cfg: dict, model_type: str, vision: VisionConfig, strategy: str) -> dict:
    if model_type == "llava":
        return {}
    points = cfg.get("image_grid_pinpoints") or _DEFAULT_PINPOINTS[model_type]
    points = tuple((int(h), int(w)) for h, w in points)
    side = vision.image_size // vision.patch_size
    per_tile = vision.num_positions - (1 if strategy == "default" else 0)
    if per_tile != side * side:
        raise UnsupportedModelError(
            f"{model_type}: a tile gives {per_tile} features but AnyRes needs a {side}x{side} map (CLIP needs "
            "vision_feature_select_strategy 'default', SigLIP 'full')")
    out = {"model_type": model_type, "image_grid_pinpoints": points}
    if model_type == "llava_onevision":
        ratio = cfg.get("vision_aspect_ratio", "anyres_max_9")
        if not str(ratio).startswith("anyres_max_"):
            raise UnsupportedModelError(f"vision_aspect_ratio {ratio!r} is not supported (anyres_max_N only)")
        out["vision_aspect_ratio"] = str(ratio)
    return out


def _vision_from_hf(v: dict) -> VisionConfig:
    mt = v.get("model_type", "clip_vision_model")
    if mt not in SUPPORTED_VISION:
        raise UnsupportedModelError(f"vision tower {mt!r} is not supported (supported: {SUPPORTED_VISION})")
    kind = "clip" if mt == "clip_vision_model" else "siglip"
    return VisionConfig(
        kind=kind,
        hidden_size=int(v.get("hidden_size", 768)),
        intermediate_size=int(v.get("intermediate_size", 3072)),
        num_layers=int(v.get("num_hidden_layers", 12)),
        num_heads=int(v.get("num_attention_heads", 12)),
        image_size=int(v.get("image_size", 224)),
        patch_size=int(v.get("patch_size", 32 if kind == "clip" else 16)),
        num_channels=int(v.get("num_channels", 3)),
        layer_norm_eps=float(v.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6)),
        hidden_act=v.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh"),
        use_head=bool(v.get("vision_use_head", True)) if kind == "siglip" else False,
    )


def _vision_to_hf(v: VisionConfig, base: dict) -> dict:
    out = dict(base)
    out.update(
        model_type="clip_vision_model" if v.kind == "clip" else "siglip_vision_model",
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        num_channels=v.num_channels,
        layer_norm_eps=v.layer_norm_eps,
        hidden_act=v.hidden_act,
    )
    if v.kind == "siglip":
        out["vision_use_head"] = v.use_head
    return out


def _rope_from_hf(t: dict) -> RopeConfig:
    params = t.get("rope_parameters")
    if params is None:  # transformers 4 layout
        params = dict(t.get("rope_scaling") or {})
        params.setdefault("rope_theta", t.get("rope_theta", 10000.0))
    params = dict(params)
    if isinstance(params.get("full_attention"), dict):  # per-layer-type layout: one shared setting only
        params = dict(params["full_attention"])
    rope_type = params.pop("rope_type", params.pop("type", "default")) or "default"
    if rope_type not in ("default", "linear", "dynamic", "llama3", "yarn"):
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported")
    theta = float(params.pop("rope_theta", t.get("rope_theta", 10000.0)))
    factor = float(params.pop("factor", 1.0) or 1.0)
    partial = float(params.pop("partial_rotary_factor", t.get("partial_rotary_factor", 1.0)) or 1.0)
    extra = tuple(sorted((k, v) for k, v in params.items() if not isinstance(v, (list, dict))))
    return RopeConfig(theta=theta, rope_type=rope_type, factor=factor, extra=extra, partial_rotary_factor=partial)


def _text_from_hf(t: dict, top: dict) -> TextConfig:
    kind = t.get("model_type", "llama")
    if kind not in SUPPORTED_TEXT:
        raise UnsupportedModelError(f"language model {kind!r} is not supported (supported: {SUPPORTED_TEXT})")
    hidden = int(t.get("hidden_size", 4096))
    heads = int(t.get("num_attention_heads", 32))
    layers = int(t.get("num_hidden_layers", 32))
    head_dim = t.get("head_dim") or hidden // heads
    tie = t.get("tie_word_embeddings", top.get("tie_word_embeddings", False))
    if kind == "llama":
        qkv_bias = o_bias = bool(t.get("attention_bias", False))
    elif kind == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = False
    window = t.get("sliding_window")
    if kind == "qwen2":
        layer_types = t.get("layer_types")
        if layer_types is None:
            use = t.get("use_sliding_window", False)
            max_window = t.get("max_window_layers", layers)
            layer_types = ["sliding_attention" if use and i >= max_window else "full_attention" for i in range(layers)]
        windows = tuple(window if lt == "sliding_attention" and window else None for lt in layer_types)
    elif kind == "mistral" and window:
        windows = tuple(int(window) for _ in range(layers))
    else:
        windows = ()
    if windows and all(w is None for w in windows):
        windows = ()
    return TextConfig(
        kind=kind,
        vocab_size=int(t.get("vocab_size", 32000)),
        hidden_size=hidden,
        intermediate_size=int(t.get("intermediate_size", 11008)),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(t.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
        hidden_act=t.get("hidden_act", "silu"),
        rope=_rope_from_hf(t),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(t.get("mlp_bias", False)) if kind == "llama" else False,
        tie_word_embeddings=bool(tie),
        max_position_embeddings=int(t.get("max_position_embeddings", 2048)),
        sliding_windows=windows,
    )


def _text_to_hf(t: TextConfig, base: dict) -> dict:
    out = dict(base)
    out.update(
        model_type=t.kind,
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        rms_norm_eps=t.rms_norm_eps,
        hidden_act=t.hidden_act,
        tie_word_embeddings=t.tie_word_embeddings,
        max_position_embeddings=t.max_position_embeddings,
    )
    if "rope_parameters" not in out and "rope_theta" not in out:
        params = {"rope_type": t.rope.rope_type, "rope_theta": t.rope.theta, **dict(t.rope.extra)}
        if t.rope.rope_type != "default":
            params["factor"] = t.rope.factor
        out["rope_parameters"] = params
    if t.kind == "llama":
        out["attention_bias"] = t.qkv_bias
        out["mlp_bias"] = t.mlp_bias
    return out
