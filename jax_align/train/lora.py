"""LoRA in training (issue 5 item 4): the ``lora.*`` config section and the few calls the trainer makes.

With LoRA only the adapters train; the reference policy is the same model with adapters off (``lora_b``
zeroed, no second copy of the base weights); the final model is exported with adapters merged into the
kernels, and the unmerged adapter is saved beside it (``MODEL/adapter/``); ``lora.init_from`` starts a run from
such an adapter on its base model (:mod:`.adapter`, spec §1.2 step 7.3 / §1.5).
The layer-level mechanics live in :mod:`jax_align.models.lora`.

Trainer sketch::

    model, is_lora = maybe_apply_lora(model, cfg.lora, seed=cfg.run.seed)
    if is_lora:
        graphdef, trainable, frozen = split_lora(model)          # trainable: adapters only
    ...
    # in the loss (traced), policy forward with adapter dropout:
    with lora_dropout_key(jax.random.fold_in(key, 1)):
        policy_logps = ...
    ref_model = reference_model(graphdef, trainable, frozen)      # adapters off, base weights shared
    ...
    to_hf(model_config, merged_state(graphdef, trainable, frozen), out_dir)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from jax_align.models.lora import (
    DEFAULT_TARGETS,
    LoRAParam,
    apply_lora,
    disable_lora,
    lora_dropout_key,
    lora_filter,
    merged_state,
    split_lora,
)

__all__ = [
    "LoraConfig", "maybe_apply_lora", "reference_model", "split_lora", "merged_state", "disable_lora",
    "lora_dropout_key", "lora_filter", "LoRAParam",
]


@dataclass
class LoraConfig:
    """The ``lora`` section of the run config. ``rank = 0`` (the default) trains without adapters."""

    rank: int = field(default=0, metadata={
        "help": "LoRA rank r (0 = off: full fine-tuning of the trainable groups)"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha: adapters are scaled by alpha / rank"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input during training"})
    targets: list = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={
        "help": "decoder layers to adapt: attribute names (q_proj), globs on the module path "
                "(language_model.layers.*.self_attn.q_proj) or 're:REGEX'"})
    include_projector: bool = field(default=False, metadata={
        "help": "also adapt the multimodal projector's linear_1 and linear_2"})
    init_from: str = field(default="", metadata={
        "help": "start the adapters from a LoRA run's saved adapter (its model dir, holding adapter/, or that "
                "adapter/ dir) on the base model given by model.path / model.init, with a fresh optimizer; "
                "rank, alpha, targets and include_projector must match (a checkpoint to resume wins)"})

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def validate(self) -> None:
        """Raise ValueError naming the ``lora.*`` key that is out of range."""
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"lora.rank must be a non-negative integer, got {self.rank!r}")
        if not self.enabled:
            if self.init_from:
                raise ValueError(f"lora.init_from={self.init_from!r} needs lora.rank > 0 (the adapter's rank)")
            return
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if not targets and not self.include_projector:
            raise ValueError("lora.targets is empty and lora.include_projector is false: nothing to adapt")
        if not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora.targets must be a list of non-empty strings, got {self.targets!r}")


def maybe_apply_lora(model: nnx.Module, cfg: LoraConfig, *, seed: int = 0) -> tuple[nnx.Module, bool]:
    """Add adapters in place when ``cfg.rank > 0``; returns ``(model, is_lora)``.

    Raises ValueError for invalid settings or targets that match no decoder layer (see
    :func:`jax_align.models.lora.apply_lora`).
    """
    cfg.validate()
    if not cfg.enabled:
        return model, False
    targets = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets)
    apply_lora(model, rank=cfg.rank, alpha=float(cfg.alpha), dropout=float(cfg.dropout), targets=targets,
               include_projector=bool(cfg.include_projector), seed=seed)
    return model, True


def reference_model(graphdef, lora_state, *other_states) -> nnx.Module:
    """The reference policy of a LoRA run: ``nnx.merge(graphdef, disable_lora(lora_state), *other_states)``.

    Pure and jit-able; the base weights in ``other_states`` are shared with the policy, not copied.
    """
    return nnx.merge(graphdef, disable_lora(lora_state), *other_states)
