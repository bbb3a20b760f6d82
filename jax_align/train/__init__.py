"""Training: the stage registry (:mod:`.stages`, losses in :mod:`.stage_losses`), run config (:mod:`.config`),
per-response forward (:mod:`.forward`), reward heads (:mod:`.reward_head`), optimizer (:mod:`.optim`),
frozen-group partition (:mod:`.partition`), pure train steps (:mod:`.steps`), LoRA (:mod:`.lora`),
checkpointing (:mod:`.checkpointing`), metrics logging (:mod:`.metrics_log`), the trainer loop (:mod:`.trainer`),
the online rounds of Online-/Mixed-DPO (:mod:`.online`), the scorer behind ``jax-align score`` (:mod:`.score`) and
ahead-of-time planning (:mod:`.plan`).

Public API for the layers above (recipes, world, cli, demo): ``config.load_config``, ``trainer.Trainer``,
``stages.get_stage`` / ``STAGES``, ``score.score_file`` / ``generate_critiques``, ``reward_head.has_head``,
``online.RewardModelAnnotator``, ``plan``.

Nothing is imported here, so ``import jax_align.train.config`` stays cheap; import the submodules directly.
"""
