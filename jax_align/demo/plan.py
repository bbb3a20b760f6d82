"""The demo's plan: sizes, steps and learning rates of every stage, and the budget rule shared by the methods.

Budget rule (issue 17): every preference method starts from the same SFT model and gets the same optimizer budget,
``pref_steps`` steps of ``pref_batch`` preference examples (pairs, or groups for MDPO), so at most
``pref_steps x pref_batch`` preference examples; the offline methods generate ``pref_records`` (that over
``pref_epochs``; fewer when a recipe drops some, or far fewer where each costs many generations: EACO; reported),
the online methods draw their prompts from as many records. EACO's extra SFT stage and Align²LLaVA's SFT (and its
control's) are SFT budgets (``eaco_sft_steps``, ``align2_sft_steps``), reported as cost beside them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPlan:
    train_scenes: int = 8000
    eval_scenes: int = 1800  # the adversarial POPE split over all of them: >= 200 "no" questions
    eval_detail_scenes: int = 500  # captions, VQA and the random/popular POPE splits on the first ones
    # 800 + 500 steps left the SFT model far worse (CHAIR_i 15.7% vs 7.4%, VQA 54.2 vs 71.6): the base is not cut
    caption_steps: int = 1000
    sft_steps: int = 600
    batch_size: int = 32
    caption_lr: float = 1e-3  # 3e-3 left the model binding wrong shapes/colours (CHAIR_i ~30%); 1e-3: ~5%
    sft_lr: float = 7e-4
    # ---- the shared preference budget (see the module docstring)
    pref_steps: int = 300
    pref_batch: int = 16  # 32 (9600 records): the demo took 26.5 min on a quiet 2-core CPU; 16 keeps the step count
    pref_epochs: int = 1  # each offline record seen once (2 epochs on half the pairs cost DPO 5 VQA points)
    pref_lr: float = 1.5e-4  # 3e-4 (300 steps) cut CHAIR_i more but cost DPO 2.0 VQA points; 1.5e-4: 0.5
    beta: float = 0.1  # every DPO-family method: TRL's / the papers' default
    sft_weight: float = 1.0  # the chosen answer's NLL beside DPO (RPO, MM-DPO's gamma, MDPO's anchor)
    # ---- BDHS (spec §2.2): prompts from the training world
    bdhs_extend: float = 1.0  # one extra masked sentence after each caption (extra-object hallucinations)
    bdhs_rho_th: float = 0.99
    bdhs_existence_fraction: float = 0.12
    # attribute/position questions among the BDHS prompts. With 6% (the rest captions and existence questions)
    # DPO cost 4.5 VQA points: the image-masked policy's captions say "right"/"top" far more often than the
    # truth and "center"/"middle" far less (7231 vs 2862, 896 vs 2727 mentions in 3936 caption pairs), and DPO
    # turned that into a word bias (position answers collapsed to "Center."). With 20%: -1.9; 35%: +0.3, with
    # the adversarial FPR cut 82% instead of 58% (one SFT model, DPO at batch 16, 300 steps)
    bdhs_vqa_fraction: float = 0.35
    # ---- online / mixed DPO (spec §2.1)
    online_every: int = 25  # optimizer steps per round
    # samples per online prompt, best vs worst by the world's truth (§2.1 compares 2). With 2, the tiny policy's
    # samples tied on 70% of the prompts and on nearly every existence question (both "Yes."): Online-DPO moved no
    # POPE answer (adversarial FPR 87.0% -> 87.0%, VQA -1.8). With 4: FPR -> 53.7%, CHAIR_i 6.7% -> 6.2%, VQA -0.1
    # (one SFT model); the first round's sampling took 18.0 s with 4 samples and 18.4 s with 2
    online_samples: int = 4
    # Mixed-DPO keeps §2.1's 2 (its offline half decides the existence questions): on the same SFT model, with 4
    # adversarial FPR 36.1%, CHAIR_i 5.1%, VQA +0.4; with 2: 29.2%, 5.3%, +1.2
    mixed_samples: int = 2
    online_temperature: float = 1.0
    online_max_new_tokens: int = 48
    # Online-DPO's chosen answers are the policy's own samples: an NLL on them (RPO) reinforced its own mistakes
    # (VQA -1.7 with weight 1, -0.9 with none, the §2.1 loss); Mixed-DPO keeps sft_weight for its offline half
    # (with none: VQA -4.3)
    online_sft_weight: float = 0.0
    mixed_lr: float = 1e-4  # Mixed-DPO at pref_lr 1.5e-4: VQA -2.0; at 1e-4: -1.1 (CHAIR_i 4.9%, FPR 22%)
    # ---- EACO (spec §1)
    critic_steps: int = 150
    critic_lr: float = 1e-3
    critic_groups: int = 2000
    eaco_samples: int = 5
    eaco_temperature: float = 1.0  # the code's 0.2 gives identical samples with the tiny policy (eaco_tiny.yaml)
    eaco_sft_steps: int = 100
    eaco_sft_records: int = 3200
    eaco_sft_lr: float = 3e-5  # the description-infused SFT (§1.5: its LR is the SFT recipe's); at pref_lr 1.5e-4
    # it raised CHAIR_i from 6.8% to 13.3%, at 3e-5 to 10.5%
    # ---- Align²LLaVA (spec §3)
    rm_question_steps: int = 160
    # 80 steps (batch 8) left the answer RM worse than chance on shape and size answers: the curated records of
    # those kinds were truer in the pool (0.70) than after curation (0.53, 0.55); with 240: 0.71, 0.65, all kept
    # records 0.772 against 0.736, and the curated model's VQA 46.6% -> 49.2% (control 50.2%; one SFT model)
    rm_answer_steps: int = 240
    rm_lr: float = 1e-3
    rm_groups: int = 0  # 0: every scene of the training world
    keep: float = 0.3
    align2_pool: int = 16000  # records of the noisy instruction pool (of the world's 5 per scene)
    align2_noise: float = 0.3  # fraction of the pool corrupted (machine-generated errors)
    align2_sft_steps: int = 300  # SFT from the captioning model, for the curated data and its random control
    align2_batch: int = 16  # of that SFT (32 before the 20-minute budget; both arms alike)
    # ---- MM-RLHF (spec §4)
    critique_rm_steps: int = 120
    critique_rm_lr: float = 5e-4
    critique_tokens: int = 40  # the reward model's critique of each answer before it scores it
    # ---- AMP (spec §5)
    amp_records: int = 1200
    amp_expert_batch: int = 16  # M_1, the SFT model on half the SFT set, for sft_steps // 2 steps
    amp_parts: int = 2  # IG: K - 2 cumulative parts (K = 4 levels: standard, M_2 = the SFT model, M_1, base)
    # ---- shapes
    max_length: int = 128  # captions, SFT and pairs: a prefix-shared pair fits (99.9% of groups whole)
    # the steps cost about a + b x length: captioning/SFT batches peak at 57-69 tokens, BDHS pairs at 102-128
    # (measured on the world), so 72 and 112 spare them a 96 or 128 row; every bucket a run uses costs a compile
    buckets: tuple[int, ...] = (48, 64, 72, 96, 112, 128)
    group_max_length: int = 288  # MDPO groups and the reward models' five candidates
    eval_batch: int = 64
    caption_tokens: int = 80
    methods: tuple[str, ...] = ()  # empty: all (see jax_align.demo.methods.METHODS)

    @property
    def pref_records(self) -> int:
        """Preference records an offline method generates: ``pref_steps x pref_batch / pref_epochs``."""
        return max(self.pref_batch, self.pref_steps * self.pref_batch // self.pref_epochs)


QUICK = DemoPlan(train_scenes=40, eval_scenes=24, eval_detail_scenes=8, caption_steps=4, sft_steps=4, batch_size=8,
                 pref_steps=4, pref_batch=4, online_every=2, critic_steps=3, critic_groups=16, eaco_samples=3,
                 eaco_sft_steps=2, eaco_sft_records=8, rm_question_steps=3, rm_answer_steps=3, rm_groups=16,
                 critique_rm_steps=3, align2_pool=60, align2_sft_steps=4, align2_batch=8, amp_records=8,
                 amp_expert_batch=8, eval_batch=16,
                 # mostly captions: two samples of the barely trained policy tie on every short question, and an
                 # online round whose every prompt ties has nothing to train on (the run stops)
                 bdhs_vqa_fraction=0.06,
                 caption_tokens=24, online_max_new_tokens=16,
                 critique_tokens=16, max_length=96, buckets=(96,), group_max_length=192)
