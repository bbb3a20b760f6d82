"""Issue 2: both HF weight layouts, sharded safetensors with an index, bf16, rope variants, strict errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hf_fixtures import build_family, build_hf_llava, random_inputs, torch_logits
from jax_align.models import CheckpointError, UnsupportedModelError, from_hf


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_family(str(tmp_path_factory.mktemp("hf")), "llama_clip")


def _flat(params):
    from jax_align.models.convert import flat_params

    return {p: np.asarray(v) for p, v in flat_params(params)}


def test_in_memory_names_sharded_bf16(llama, tmp_path):
    """``model.language_model.*`` names, bf16 tensors, two shards with an index: loads to the same weights."""
    import torch
    from safetensors.torch import save_file

    path, model = llama
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    assert any(k.startswith("model.language_model.") for k in state)
    keys = sorted(state)
    half = len(keys) // 2
    out = tmp_path / "bf16"
    out.mkdir()
    shutil.copy(os.path.join(path, "config.json"), out / "config.json")
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:]), 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, p_bf16, _ = from_hf(str(out))
    _, p_ref, _ = from_hf(path)
    a, b = _flat(p_bf16), _flat(p_ref)
    assert a.keys() == b.keys()
    for k in a:
        expect = np.asarray(torch.tensor(b[k]).to(torch.bfloat16).float())
        np.testing.assert_array_equal(a[k], expect, err_msg=str(k))


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
])
def test_rope_scaling_types_match(rope, tmp_path):
    extra = {"rope_parameters": rope, "max_position_embeddings": 32}
    model = build_hf_llava(str(tmp_path / "m"), "llama", "clip", extra)
    cfg, params, forward = from_hf(str(tmp_path / "m"))
    assert cfg.text.rope.rope_type == rope["rope_type"]
    ids, px, mask = random_inputs(cfg, length=48)  # longer than max_position_embeddings (dynamic grows its base)
    err = np.abs(np.asarray(forward(params, ids, px, mask)) - torch_logits(model, ids, px, mask)).max()
    assert err < 1e-4, f"{rope['rope_type']}: {err}"


def _rewrite(src: str, dst, edit):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    f = os.path.join(dst, "model.safetensors")
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f)
    return str(dst)


def test_missing_unexpected_misshaped_listed(llama, tmp_path):
    path, _ = llama

    def edit(t):
        t.pop("language_model.model.layers.1.mlp.up_proj.weight")
        t["language_model.model.layers.9.extra.weight"] = np.zeros(3, np.float32)
        t["multi_modal_projector.linear_2.bias"] = np.zeros(5, np.float32)

    bad = _rewrite(path, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError) as e:
        from_hf(bad)
    msg = str(e.value)
    assert "1 missing" in msg and "language_model.model.layers.1.mlp.up_proj.weight" in msg
    assert "1 unexpected" in msg and "language_model.model.layers.9.extra.weight" in msg
    assert "1 mis-shaped" in msg and "multi_modal_projector.linear_2.bias: checkpoint (5,)" in msg


@pytest.mark.parametrize("field,value,needle", [
    ("model_type", "llava_next", "llava_next"),
    ("text_config.model_type", "gemma", "gemma"),
    ("vision_config.model_type", "pixtral", "pixtral"),
])
def test_unsupported_architecture(llama, tmp_path, field, value, needle):
    path, _ = llama
    dst = tmp_path / "arch"
    shutil.copytree(path, dst)
    cfg = json.loads((dst / "config.json").read_text())
    node = cfg
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=needle):
        from_hf(str(dst))


def test_pickled_weights_refused(llama, tmp_path):
    path, _ = llama
    dst = tmp_path / "pickled"
    dst.mkdir()
    shutil.copy(os.path.join(path, "config.json"), dst / "config.json")
    (dst / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="never unpickled"):
        from_hf(str(dst))


def test_image_token_count_mismatch_is_clear(llama):
    path, _ = llama
    cfg, params, forward = from_hf(path)
    ids, px, mask = random_inputs(cfg)
    ids[0, 2] = 5  # one image token fewer
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        forward(params, ids, px, mask)
