"""Training stages as objects: each stage's whole contract in one place.

A :class:`Stage` declares the record format its data is read in, the responses per group, whether it needs a
reference policy or a scalar reward head, its loss function (:mod:`jax_align.train.stage_losses`), the record
fields it cannot train without, the metrics its summary reports, the config defaults it sets, and how its data
is prepared. The trainer, the step builder and the scorer read these fields; none of them tests a stage's name.
Adding a stage is one entry in :data:`STAGES` plus its loss function.

Direction: every stage reads quality through :mod:`jax_align.preference` (responses best first, ``levels``
higher = better).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

from . import stage_losses as L


def _critic_sft_data(data_path: str, cfg) -> str:
    """EACO's generative critic trains on scored candidates rendered as rationale + scores text (spec §1.3).
    The source's image paths are checked under ``data.allow_absolute_paths`` here; the derived file points back
    at those images from the run directory."""
    import os

    from jax_align.data.critic_text import critic_sft_file

    out = os.path.join(cfg.run.dir, "critic_sft.jsonl")
    if not os.path.isfile(out):
        critic_sft_file(data_path, out, allow_absolute_paths=cfg.data.allow_absolute_paths)
    return out


def _mmdpo_fields(cfg) -> tuple[str, ...]:
    """MM-DPO's paper beta needs each pair's reward margin (spec §4.3): no silent fallback to plain DPO."""
    return ("margin",) if cfg.loss.mmdpo_beta == "reward_margin" else ()


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    record_format: str  # the format the user's data file is in: sft | pairwise | ranked | scored
    loss: Callable  # (LossContext, batch, StepSpec) -> (loss, metrics)
    responses: int | None = None  # fixed responses per group K; None: data.num_responses or the format default
    needs_reference: bool = False  # trains against a reference policy (frozen copy, adapters off, or cached)
    reward_head: bool = False  # trains (and saves) a scalar reward head
    critique_prompt: bool = False  # responses are judged in MM-RLHF's critic prompt (spec §4.2)
    image_dropout: bool = False  # train.image_dropout (modality dropout) applies
    record_fields: Callable = lambda cfg: ()  # (Config) -> record fields without which the stage cannot train
    summary_metrics: tuple[str, ...] = ("loss",)
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # dotted config key -> value
    prepare_data: Callable[[str, object], str] | None = None  # (data file, Config) -> file the pipeline reads
    pipeline_format: str | None = None  # format the prepared file is in (default: record_format)
    online: str | None = None  # "online" | "mixed" | "avg": the policy samples during training (spec §2.1-2.2)

    @property
    def data_format(self) -> str:
        return self.pipeline_format or self.record_format


_PREF_METRICS = ("loss", "rewards/accuracies", "rewards/margins")
_RM_METRICS = ("loss", "accuracy", "margin")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "supervised fine-tuning on conversations", "sft", L.sft_loss, responses=1, image_dropout=True),
    Stage("critic", "EACO's generative critic: SFT on scored candidates rendered as rationale + scores (§1.3)",
          "scored", L.sft_loss, responses=1, prepare_data=_critic_sft_data, pipeline_format="sft"),
    Stage("reward", "scalar reward model, Bradley-Terry over pairs or quality levels (§3.2, §6.4)", "scored",
          L.reward_stage_loss, reward_head=True, summary_metrics=_RM_METRICS),
    Stage("critique_reward", "MM-RLHF's critique-based reward model: critique NLL + scalar head (§4.2)",
          "pairwise", L.critique_reward_stage_loss, responses=2, reward_head=True, critique_prompt=True,
          summary_metrics=_RM_METRICS, defaults=MappingProxyType({"loss.center_rewards": 0.01})),
    Stage("dpo", "DPO family on chosen/rejected pairs (TRL loss types)", "pairwise", L.dpo_stage_loss,
          responses=2, needs_reference=True, summary_metrics=_PREF_METRICS),
    Stage("mmdpo", "MM-RLHF's MM-DPO: reward-margin beta + gamma SFT (§4.3-4.4)", "pairwise", L.mmdpo_stage_loss,
          responses=2, needs_reference=True, summary_metrics=_PREF_METRICS, record_fields=_mmdpo_fields,
          defaults=MappingProxyType({"loss.sft_weight": 0.25})),
    Stage("mdpo", "AMP's multi-level DPO over K ranked responses (§5.2)", "ranked", L.mdpo_stage_loss,
          needs_reference=True, summary_metrics=_PREF_METRICS),
    Stage("online_dpo", "Online-DPO: the current policy samples, an annotator ranks, DPO on the fresh pairs (§2.1)",
          "sft", L.dpo_stage_loss, responses=2, needs_reference=True, summary_metrics=_PREF_METRICS,
          online="online", pipeline_format="pairwise"),
    Stage("mixed_dpo", "Mixed-DPO: per prompt the offline pair (alpha ~ Bernoulli(p)) or an online pair (§2.1 eq. 4)",
          "pairwise", L.dpo_stage_loss, responses=2, needs_reference=True, summary_metrics=_PREF_METRICS,
          online="mixed"),
    Stage("avg_dpo", "Avg-DPO: the record's chosen against its rejected and the live policy's Online-BDHS answer, "
          "the two DPO losses averaged with gamma = 0.5 (§2.1 eq. 5, §2.2)", "pairwise", L.avg_dpo_stage_loss,
          responses=3, needs_reference=True, summary_metrics=_PREF_METRICS, online="avg", pipeline_format="ranked",
          defaults=MappingProxyType({"online.rejected": "bdhs"})),
)}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"run.stage must be one of {'|'.join(STAGES)}, got {name!r}") from None

