"""Training: run config (:mod:`.config`), optimizer (:mod:`.optim`), frozen-group partition (:mod:`.partition`),
pure train steps (:mod:`.steps`), LoRA (:mod:`.lora`), checkpointing (:mod:`.checkpointing`), metrics logging
(:mod:`.metrics_log`) and the trainer loop (:mod:`.trainer`).

Nothing is imported here, so ``import jax_align.train.config`` stays cheap; import the submodules directly.
"""
