"""Hugging Face <-> JAX conversion for LLaVA checkpoints: ``from_hf`` and ``to_hf``.

Strict by design: a missing, unexpected or mis-shaped tensor, or an unsupported architecture, is an error that
lists every problem; pickled ``.bin`` weights are never loaded.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import hf_names
from .anyres import AnyResImages
from .config import LlavaConfig
from .layer_stack import flatten_dict, stack_layers, unstack_layers
from .llava import LlavaModel

# Non-weight files of a Hugging Face model directory that travel with the weights.
ASSET_PATTERNS = (
    "tokenizer*.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
    "chat_template.*", "preprocessor_config.json", "processor_config.json", "generation_config.json",
)


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it claims to be."""


def abstract_model(cfg: LlavaConfig, param_dtype=jnp.float32, dtype=None, remat="none", attention="auto",
                   scan_layers=None):
    """(graphdef, abstract state) without allocating parameters."""
    model = nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype,
                                              remat=remat, attention=attention, scan_layers=scan_layers))
    return nnx.split(model)


def init_params(cfg: LlavaConfig, seed: int = 0, param_dtype=jnp.float32, dtype=None, remat="none",
                attention="auto", scan_layers=None):
    """A randomly initialised model: (graphdef, state)."""
    model = LlavaModel(cfg, rngs=nnx.Rngs(seed), param_dtype=param_dtype, dtype=dtype, remat=remat,
                       attention=attention, scan_layers=scan_layers)
    return nnx.split(model)


def flat_params(params) -> list[tuple[tuple, object]]:
    """``[(path, array)]`` for an ``nnx.State`` or a nested dict of arrays."""
    if isinstance(params, nnx.State):
        return [(tuple(p), v.get_value() if isinstance(v, nnx.Variable) else v)
                for p, v in nnx.to_flat_state(params)]
    return flatten_dict(params)


def _weight_files(path: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if files:
        return files
    pickled = glob.glob(os.path.join(path, "*.bin")) + glob.glob(os.path.join(path, "*.pt"))
    if pickled:
        raise CheckpointError(f"{path}: only pickled weights ({os.path.basename(pickled[0])}, ...) found; they are "
                              "never unpickled. Re-save the model with safetensors (save_pretrained does by default)")
    raise CheckpointError(f"{path}: no *.safetensors weight files")


def _index_hf_tensors(path: str) -> dict[str, tuple[str, str]]:
    """canonical name -> (file, original key)."""
    from safetensors import safe_open

    found: dict[str, tuple[str, str]] = {}
    for f in _weight_files(path):
        with safe_open(f, framework="flax") as h:
            for key in h.keys():
                name = hf_names.canonical_name(key)
                if name in found:
                    raise CheckpointError(f"{path}: tensor {name} appears twice ({found[name][1]} and {key})")
                found[name] = (f, key)
    return found


def load_hf_params(path: str, cfg: LlavaConfig, param_dtype=jnp.float32, shardings=None, dtype=None,
                   remat: str = "none", attention: str = "auto", scan_layers=None):
    """Read the safetensors weights of ``path`` into the state of a ``LlavaModel(cfg)``.

    ``shardings`` (optional) is a pytree of ``NamedSharding`` matching the state; tensors are placed one by one.
    ``dtype`` (compute dtype), ``remat``, ``attention`` and ``scan_layers`` configure the returned graph
    definition; with a layer scan the per-layer tensors are stacked after reading (``shardings`` then matches
    the stacked state).
    """
    from safetensors import safe_open

    graphdef, target = abstract_model(cfg, param_dtype, dtype=dtype, remat=remat, attention=attention,
                                      scan_layers=scan_layers)
    abstract = unstack_layers(target)  # HF names are per layer
    if shardings is not None:
        shardings = unstack_layers(shardings, cfg.text.num_layers)
    expected = {hf_names.hf_name(p): (p, v) for p, v in flat_params(abstract)}
    available = _index_hf_tensors(path)
    tied = cfg.text.tie_word_embeddings
    missing = sorted(n for n in expected if n not in available)
    unexpected = sorted(n for n in available if n not in expected
                        and not (tied and n == "language_model.lm_head.weight"))
    mis_shaped = []
    handles = {}
    try:
        for name, (path_t, var) in expected.items():
            if name not in available:
                continue
            f, key = available[name]
            if f not in handles:
                handles[f] = safe_open(f, framework="flax")
            got = tuple(handles[f].get_slice(key).get_shape())
            want = hf_names.hf_shape(path_t, var.shape, cfg.vision.num_channels)
            if got != want:
                mis_shaped.append(f"{name}: checkpoint {got}, model expects {want}")
        if missing or unexpected or mis_shaped:
            lines = [f"{path}: checkpoint does not match the {cfg.text.kind}+{cfg.vision.kind} {cfg.model_type} "
                     "config"]
            for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
                if items:
                    lines.append(f"  {len(items)} {title} tensor(s):")
                    lines += [f"    {x}" for x in items]
            raise CheckpointError("\n".join(lines))
        flat_shard = dict(flat_params(shardings)) if shardings is not None else {}
        values = {}
        for name, (path_t, var) in expected.items():
            f, key = available[name]
            arr = hf_names.to_ours(path_t, handles[f].get_tensor(key), var.shape)
            arr = jnp.asarray(arr, dtype=param_dtype)
            if path_t in flat_shard:
                arr = jax.device_put(arr, flat_shard[path_t])
            values[path_t] = arr
    finally:
        handles.clear()
    state = nnx.from_flat_state({p: v.replace(values[p]) for p, v in nnx.to_flat_state(abstract)})
    return graphdef, stack_layers(state, like=target)


def make_forward(graphdef, cfg: LlavaConfig):
    """``forward(params, input_ids, pixel_values, attention_mask)`` -> logits ``[B, T, V]``, jitted.

    ``attention_mask`` is Hugging Face's padding mask (1 = token, 0 = padding); positions are ``arange(T)`` as in
    ``LlavaForConditionalGeneration.forward`` without ``position_ids``.
    """

    @jax.jit
    def _forward(params, input_ids, pixel_values, attention_mask):
        model = nnx.merge(graphdef, params)
        seg = None if attention_mask is None else attention_mask.astype(jnp.int32)
        prefix = None if seg is None else jnp.ones_like(seg)  # padding queries see all real keys, like HF
        logits, _ = model(input_ids, pixel_values, segment_ids=seg, prefix_segment_ids=prefix)
        return logits

    def forward(params, input_ids, pixel_values=None, attention_mask=None, image_sizes=None):
        """AnyRes families take transformers' ``pixel_values [N, T, C, H, W]`` with ``image_sizes [N, 2]``, or an
        :class:`~.anyres.AnyResImages` (see :mod:`.frontends`)."""
        input_ids = jnp.asarray(input_ids, jnp.int32) if isinstance(input_ids, np.ndarray) else input_ids
        if cfg.anyres and pixel_values is not None and not isinstance(pixel_values, AnyResImages):
            if image_sizes is None:
                raise ValueError(f"{cfg.model_type}: pixel_values need image_sizes (or pass AnyResImages)")
            from .frontends import frontend_for, hf_pixel_inputs

            fe = frontend_for(cfg)
            n_tok = int(np.sum(np.asarray(input_ids) == cfg.image_token_id))
            want = sum(fe.num_tokens(*(int(v) for v in s)) for s in np.asarray(image_sizes))
            if n_tok != want:
                raise ValueError(f"Image features and image tokens do not match: tokens: {n_tok}, features: {want}")
            pixel_values = hf_pixel_inputs(fe, pixel_values, image_sizes)
        elif isinstance(input_ids, (np.ndarray, jax.Array)) and not isinstance(input_ids, jax.core.Tracer) \
                and not isinstance(pixel_values, AnyResImages):
            check_image_tokens(cfg, np.asarray(input_ids), None if pixel_values is None else np.shape(pixel_values))
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)
        if pixel_values is not None:
            pixel_values = jax.tree.map(jnp.asarray, pixel_values)
        return _forward(params, input_ids, pixel_values, attention_mask)

    return forward


def check_image_tokens(cfg: LlavaConfig, input_ids: np.ndarray, pixel_shape) -> None:
    """Raise like transformers does when image tokens and image features disagree in number."""
    n_tokens = int((input_ids == cfg.image_token_id).sum())
    if pixel_shape is None:
        n_images = 0
    else:
        n_images = int(np.prod(pixel_shape[:-3]))
    if pixel_shape is not None and len(pixel_shape) == 5:
        per_row = (input_ids == cfg.image_token_id).sum(axis=1)
        if (per_row > pixel_shape[1] * cfg.tile_tokens).any():
            raise ValueError(f"a row has more image tokens than {pixel_shape[1]} images provide")
        return
    if n_tokens != n_images * cfg.tile_tokens:
        raise ValueError(f"Image features and image tokens do not match: tokens: {n_tokens}, features: "
                         f"{n_images * cfg.tile_tokens} ({n_images} images x {cfg.tile_tokens})")


def from_hf(path: str, dtype=jnp.float32, **model_options):
    """Load a Hugging Face LLaVA directory: returns ``(config, params, forward)``.

    ``forward(params, input_ids, pixel_values, attention_mask)`` is pure and jitted; numpy inputs are accepted.
    ``model_options``: ``remat``, ``attention``, ``scan_layers`` (see :class:`~.llava.LlavaModel`).
    """
    cfg = LlavaConfig.from_hf_dir(path).replace(source_dir=os.path.abspath(path))
    graphdef, params = load_hf_params(path, cfg, param_dtype=dtype, **model_options)
    return cfg, params, make_forward(graphdef, cfg)


def to_hf(config: LlavaConfig, params, out_dir: str, *, dtype=None, max_shard_size: int = 5 * 1024**3,
          source_dir: str | None = None) -> str:
    """Write a directory that ``LlavaForConditionalGeneration.from_pretrained`` loads with no missing/unexpected keys.

    Weights are saved as safetensors (sharded with an index above ``max_shard_size`` bytes); tokenizer and
    processor files are copied from ``source_dir`` (default: the directory the model was imported from).
    """
    from safetensors.flax import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for path_t, value in flat_params(unstack_layers(params)):  # HF names are per layer
        name = hf_names.hf_name(path_t)
        if name == "language_model.lm_head.weight" and config.text.tie_word_embeddings:
            continue
        arr = np.asarray(jax.device_get(value))
        arr = hf_names.to_hf(path_t, arr, config.vision.num_channels)
        out = jnp.asarray(np.ascontiguousarray(arr))
        tensors[name] = out.astype(dtype) if dtype is not None else out
    save_dtype = str(next(iter(tensors.values())).dtype)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].size * tensors[name].dtype.itemsize
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += nbytes
    shards.append(current)
    for old in glob.glob(os.path.join(out_dir, "model*.safetensors")) + glob.glob(
            os.path.join(out_dir, "model.safetensors.index.json")):
        os.remove(old)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(t.size * t.dtype.itemsize for t in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    hf_cfg = config.to_hf_dict()
    hf_cfg.pop("torch_dtype", None)
    hf_cfg["dtype"] = save_dtype
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
    copy_assets(source_dir or config.source_dir, out_dir)
    return out_dir


def copy_assets(src: str | None, dst: str) -> list[str]:
    """Copy tokenizer/processor files from a model directory (if any). Returns the copied names."""
    copied = []
    if not src or not os.path.isdir(src) or os.path.abspath(src) == os.path.abspath(dst):
        return copied
    for pattern in ASSET_PATTERNS:
        for f in glob.glob(os.path.join(src, pattern)):
            shutil.copy2(f, os.path.join(dst, os.path.basename(f)))
            copied.append(os.path.basename(f))
    return copied
