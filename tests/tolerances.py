"""Tolerances derived from the computation, not from the last run.

Two fp32 evaluations of the same function that differ only in the order of their additions (another batch
shape, another sharding, another XLA fusion) differ by rounding. For a result built from sums of ``n`` terms whose
magnitudes are at most ``scale``, each partial sum rounds with relative error ``eps = 2**-23``; the errors of the
``n`` additions are independent in sign, so their sum grows like ``sqrt(n)`` (Higham, *Accuracy and Stability of
Numerical Algorithms*, §4.2, probabilistic bound), and two evaluations differ by at most twice that.
``fp32_reassociation_tol`` returns ``2 * sqrt(n) * eps * scale`` with a safety factor of 4 for the
correlated worst cases the probabilistic bound leaves out.
"""

from __future__ import annotations

import math

import numpy as np

FP32_EPS = float(np.finfo(np.float32).eps)


def fp32_reassociation_tol(n_terms: int, scale: float, safety: float = 4.0) -> float:
    return safety * 2.0 * math.sqrt(max(n_terms, 1)) * FP32_EPS * max(scale, 1.0)


def decoder_terms(config) -> int:
    """Additions on the path of one logit of a LLaVA decoder: per layer the attention and MLP contractions, then
    the LM head's, plus the log-softmax's sum over the vocabulary."""
    t = config.text
    per_layer = t.hidden_size + t.num_heads * t.head_dim + t.intermediate_size
    return t.num_layers * per_layer + t.hidden_size + t.vocab_size
