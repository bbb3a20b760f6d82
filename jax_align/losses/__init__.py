"""Preference losses as pure, jit-able functions of sequence log-probs (spec §0, §2.1, §4.3-4.4, §5.2, §6.1).

Everything here takes **sequence** log-probs (sums over response tokens, see :mod:`jax_align.logprobs`) and
returns ``(losses[B], metrics)``: per-example losses (the training loss is their mean, possibly weighted by
the caller) and a dict of batch-mean scalars named as in TRL (``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``). Metrics are computed under
``stop_gradient``.

Contents (one module each; every name is importable from ``jax_align.losses``):

* ``losses/dpo.py``: :func:`dpo_loss`, TRL 1.16's 15 loss types with TRL's names and formulas, combinable with
  weights.
* ``losses/beta.py``: :func:`reward_margin_beta` (MM-DPO's per-example beta, paper) and
  :func:`batch_implicit_beta` (the released MM-RLHF code path), spec §4.3-4.4.
* ``losses/multilevel.py``: :func:`enumerate_pairs` and :func:`mdpo_loss`: AMP's multi-level DPO with the
  penalty on the best response, spec §5.2.
* ``losses/apple.py``: :func:`mixed_dpo` and :func:`avg_dpo`: Apple's per-example combinators, spec §2.1.
* :func:`mmrlhf_to_trl_label_smoothing`: converts MM-RLHF's inverted label-smoothing convention (spec §0).

**Label-smoothing convention (spec §0).** ``label_smoothing = eps`` is the TRL/cDPO convention: the
probability that a label is flipped, ``loss = -(1 - eps) log s(b h) - eps log s(-b h)``; ``eps = 0`` is plain
DPO. MM-RLHF's trainer uses the opposite convention (its value is the weight on the *positive* term,
default 1.0 = plain DPO): convert with :func:`mmrlhf_to_trl_label_smoothing`.
"""

from .apple import avg_dpo, mixed_dpo
from .beta import batch_implicit_beta, reward_margin_beta
from .dpo import DPO_LOSS_TYPES, TRL_LOSS_TYPES, dpo_loss, mmrlhf_to_trl_label_smoothing
from .multilevel import PairSet, enumerate_pairs, mdpo_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "PairSet",
    "TRL_LOSS_TYPES",
    "dpo_loss",
    "reward_margin_beta",
    "batch_implicit_beta",
    "enumerate_pairs",
    "mdpo_loss",
    "mixed_dpo",
    "avg_dpo",
    "mmrlhf_to_trl_label_smoothing",
]
