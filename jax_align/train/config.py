"""Run configuration: typed sections with defaults, YAML files, and ``key=value`` dotted overrides.

``jax-align train CONFIG [key=value ...]`` loads the YAML file over the defaults below, then applies overrides
(values parsed as YAML, so ``optim.lr=1e-6``, ``mesh.fsdp=-1``, ``loss.loss_type=[sigmoid,sft]`` work). Unknown
keys are errors that name the key and the closest known one. ``describe()`` renders every key with its default
and help text for ``--help``; the resolved config is saved as ``run.dir/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml

from .lora import LoraConfig
from .reward_head import HEAD_KINDS
from .stages import STAGES, get_stage

MMDPO_BETAS = ("reward_margin", "batch_implicit", "fixed")


def _f(default, help_text: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class RunConfig:
    dir: str = _f("runs/default", "run directory: checkpoints, metrics.jsonl, TensorBoard events, config.yaml")
    stage: str = _f("dpo", "the training stage, one of jax_align.train.stages.STAGES: sft | critic | "
                    "critique_reward | reward | dpo | mmdpo | mdpo | online_dpo | mixed_dpo | avg_dpo")
    seed: int = _f(0, "seed for parameter init, data order and dropout")


@dataclass
class ModelConfig:
    path: str = _f("", "Hugging Face LLaVA directory or jax-align model directory to start from")
    init: str = _f("", "build a randomly initialised model instead: a HF LLaVA config.json (or a directory with "
                   "one), at any size; 'tiny-world' = the built-in world's tiny LLaVA (with data.world)")
    tokenizer: str = _f("", "tokenizer/processor directory when model.init is used (default: the config's "
                        "directory; the world's with tiny-world)")
    param_dtype: str = _f("float32", "parameter dtype: float32 | bfloat16")
    compute_dtype: str = _f("float32", "activation dtype: float32 | bfloat16 (log-probs and losses stay fp32)")
    remat: str = _f("none", "rematerialisation policy per decoder layer: none | full | dots")
    attention: str = _f("auto", "attention kernel: auto (blockwise when T*S >= 2**20) | reference | blockwise "
                        "(online softmax, never the full score tensor) | cudnn (GPU) | splash (TPU); kernels "
                        "that cannot express the mask fall back to blockwise")
    scan_layers: Any = _f(None, "run layers under a scan over stacked parameters: null (auto: towers of >= 8 "
                          "layers) | true | false; checkpoints on disk stay per layer")
    train_vision: bool = _f(False, "train the vision tower (frozen by default)")
    train_projector: bool = _f(True, "train the multimodal projector")
    train_language: bool = _f(True, "train the language model (ignored with LoRA: only adapters train)")


@dataclass
class DataConfig:
    train: str = _f("", "training data file (JSONL, JSON list, Parquet or a datasets directory)")
    format: str = _f("", "record format: sft | pairwise | ranked (default: from the stage)")
    layout: str = _f("prefix_shared", "prefix_shared (image+prompt encoded once per group) | naive")
    max_length: int = _f(512, "maximum tokens per row (image tokens included); longer rows are truncated")
    buckets: list = _f([], "sequence-length buckets; one compile per bucket (default []: powers of two from "
                       "128 up to max_length, then max_length, e.g. 128/256/512; see data.buckets.default_buckets)")
    batch_size: int = _f(8, "groups per optimizer step (global, across all devices)")
    shuffle: bool = _f(True, "shuffle every epoch (seeded by run.seed)")
    workers: int = _f(0, "Grain worker processes (0 = in-process)")
    on_error: str = _f("raise", "bad records: raise (stop with a message naming file, record and field) | skip")
    num_responses: int = _f(0, "responses per group K (0 = from the stage: 2 for dpo/mmdpo, 4 for mdpo/reward)")
    world: dict = _f({}, "generate training data from the synthetic world when data.train is empty: {seed, n}")
    max_skip_fraction: float = _f(0.5, "on_error=skip stops once more than this fraction of an epoch is bad (or "
                                  "when no record is good)")
    allow_absolute_paths: bool = _f(False, "image paths may be absolute or leave the data file's directory")
    max_image_pixels: int = _f(0, "decode limit: pixels of an image after padding to square (0 = default, 36M)")
    max_image_aspect_ratio: float = _f(0.0, "decode limit: longer/shorter side of an image (0 = default, 20)")
    round_weight: float = _f(0.0, "AMP's per-round token weight increment: assistant round r weighs 1 + w*r "
                             "(spec §5.2 'loss_turbo'; AMP's code: 0.05)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "peak learning rate")
    schedule: str = _f("cosine", "cosine | linear | constant (after warmup)")
    warmup_steps: int = _f(0, "linear warmup steps")
    warmup_ratio: float = _f(0.0, "warmup as a fraction of train.steps (used when warmup_steps is 0)")
    weight_decay: float = _f(0.0, "AdamW weight decay (never applied to biases, norms and embeddings)")
    b1: float = _f(0.9, "Adam beta1")
    b2: float = _f(0.999, "Adam beta2")
    eps: float = _f(1e-8, "Adam epsilon")
    clip: float = _f(1.0, "global gradient-norm clip (0 = off)")
    grad_accum: int = _f(1, "micro-batches per optimizer step (batch_size must divide)")
    projector_lr: float = _f(0.0, "learning rate of the projector (0 = same as optim.lr)")


@dataclass
class LossConfig:
    beta: float = _f(0.1, "DPO/MDPO beta")
    loss_type: Any = _f("sigmoid", "DPO loss type or list of types (TRL 1.16 names)")
    loss_weights: Any = _f(None, "weights for a list of loss types")
    label_smoothing: float = _f(0.0, "cDPO label smoothing (TRL convention)")
    penalty: float = _f(1.0, "MDPO penalty on the best response (spec §5.2)")
    pairs: str = _f("all", "MDPO pairs: all | adjacent | best_vs_rest")
    mmdpo_beta: str = _f("reward_margin", "MM-DPO beta: reward_margin (paper, needs each record's margin) | "
                         "batch_implicit (the released code's batch-level beta, spec §4.4) | fixed")
    ls_factor_weight: float = _f(0.1, "MM-DPO batch_implicit: the released script's ls_factor_weight (spec §4.4)")
    margin_w: float = _f(0.5, "MM-DPO reward-margin beta w (spec §4.3)")
    margin_k: float = _f(0.5, "MM-DPO reward-margin beta k (spec §4.3)")
    sft_weight: float = _f(0.0, "weight of an SFT (chosen NLL) term (mmdpo's default: gamma = 0.25, spec §4.4)")
    reward_margin: bool = _f(False, "reward loss: use the record's margin (TRL RewardTrainer)")
    center_rewards: float = _f(0.0, "reward loss: centering coefficient c*mean((r_w+r_l)^2) (critique_reward's "
                               "default: 0.01, spec §4.2)")
    critique_weight: float = _f(1.0, "critique_reward: weight w_c of the critique NLL (spec §4.2)")
    tie_weight: float = _f(1.0, "critique_reward: weight of the squared reward gap on is_tie pairs (spec §4.2)")


@dataclass
class RewardConfig:
    head: str = _f("linear", "scalar reward head: linear (no bias, Align2LLaVA spec §3.2) | mlp_tanh (MM-RLHF's "
                   "dropout-Linear-tanh-dropout-Linear, spec §4.2); saved beside the model as reward_head.npz")
    dropout: float = _f(0.0, "dropout of the mlp_tanh head while training (MM-RLHF: the LLM's attention_dropout)")


@dataclass
class RefConfig:
    mode: str = _f("copy", "reference policy: copy (frozen copy of the start) | cached (log-probs in the data)")
    dtype: str = _f("", "dtype of the frozen copy (default: model.param_dtype)")


@dataclass
class TrainConfig:
    steps: int = _f(100, "optimizer steps")
    log_every: int = _f(1, "write metrics every N steps")
    token_chunk: int = _f(256, "tokens per chunk of the log-prob head")
    image_dropout: float = _f(0.0, "SFT: probability that a row's image tokens are all hidden (modality dropout)")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class OnlineConfig:
    every: int = _f(8, "online_dpo / mixed_dpo / avg_dpo: optimizer steps per round; each round the current "
                    "policy samples for batch_size x every prompts (spec §2.1)")
    samples: int = _f(2, "samples per prompt (the annotator compares Response 1 vs Response 2)")
    temperature: float = _f(1.0, "sampling temperature (not given in the paper; spec §2.1 inferred default)")
    top_p: float = _f(1.0, "nucleus sampling")
    max_new_tokens: int = _f(64, "tokens per sample")
    batch_size: int = _f(16, "prompts per sampling batch")
    mix_p: float = _f(0.5, "mixed_dpo: probability p of the offline pair (alpha ~ Bernoulli(p), spec §2.1 eq. 4)")
    annotator: str = _f("", "who ranks the samples: world:DIR (the built-in world's ground truth) | reward:MODEL "
                        "(a reward or critique_reward run's model)")
    rejected: str = _f("annotator", "how the online pair is made: annotator (the best and worst of online.samples "
                       "samples) | bdhs (Online-BDHS, spec §2.2: chosen = the record's answer, rejected = the live "
                       "policy's BDHS answer with image attention masked; an annotator, if set, only logs scores)")
    bdhs_rho_th: float = _f(0.99, "online.rejected=bdhs: image tokens hidden with probability rho_th (spec §2.2)")
    bdhs_attempts: int = _f(5, "online.rejected=bdhs: N_BDHS attempts, the last one unguided (spec §2.2)")
    bdhs_sim_threshold: float = _f(0.97, "online.rejected=bdhs: retry while the sentence-embedding cosine to the "
                                   "answer is >= eps_s (spec §2.2)")
    bdhs_embedder: str = _f("", "online.rejected=bdhs: sentence-embedder directory (empty: the packaged MiniLM)")


@dataclass
class CheckpointConfig:
    every: int = _f(50, "save every N steps (and at the end)")
    keep: int = _f(3, "keep the last K checkpoints")
    resume: Any = _f("auto", "auto (the newest readable checkpoint; refused when the run's config fingerprint "
                     "differs) | never | force (resume despite a different config) | STEP (that checkpoint)")
    use_async: bool = _f(True, "asynchronous saves")


@dataclass
class MeshConfig:
    data: int = _f(1, "data-parallel axis size (-1 = all remaining devices)")
    fsdp: int = _f(-1, "FSDP axis size (-1 = all remaining devices)")
    tensor: int = _f(1, "tensor-parallel axis size")
    devices: int = _f(0, "devices the mesh spans (0 = all); data x fsdp x tensor must equal it")
    rules: Any = _f(None, "overrides of the logical-axis rules table, e.g. {mlp: fsdp, heads: null} "
                    "(jax_align/sharding.py DEFAULT_RULES)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def _keys(cls) -> list[str]:
    out = []
    for sec in dataclasses.fields(cls):
        out += [f"{sec.name}.{f.name}" for f in dataclasses.fields(sec.default_factory())]
    return out


def _set(cfg: Config, dotted: str, value, source: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]) or not hasattr(getattr(cfg, parts[0]), parts[1]):
        near = difflib.get_close_matches(dotted, _keys(Config), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{source}: unknown config key {dotted!r}{hint}")
    section = getattr(cfg, parts[0])
    current = getattr(section, parts[1])
    declared = {f.name: f.type for f in dataclasses.fields(section)}[parts[1]]
    if declared in (Any, "Any"):  # free-form keys (a loss type or a list of them)
        setattr(section, parts[1], value)
        return
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{source}: {dotted} must be true or false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" as a string; numeric keys accept it
            value = type(current)(value)
        except ValueError:
            pass
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, (int, float, str)) and current is not None and not isinstance(current, bool):
        if not isinstance(value, type(current)):
            raise ConfigError(f"{source}: {dotted} must be {type(current).__name__}, got {value!r}")
    setattr(section, parts[1], value)


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then the overrides; then the stage's own defaults (``Stage.defaults``) for
    every key that neither the file nor an override set."""
    cfg = Config()
    explicit: set[str] = set()
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        for sec, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {sec!r} must be a mapping")
            for k, v in values.items():
                _set(cfg, f"{sec}.{k}", v, path)
                explicit.add(f"{sec}.{k}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        _set(cfg, k.strip(), yaml.safe_load(v) if v.strip() else "", "override")
        explicit.add(k.strip())
    validate(cfg)
    for key, value in get_stage(cfg.run.stage).defaults.items():
        if key not in explicit:
            _set(cfg, key, value, f"stage {cfg.run.stage} default")
    return cfg


def _resume_ok(value) -> bool:
    return str(value).strip().lower() in ("auto", "never", "force") or str(value).strip().isdigit()


def validate(cfg: Config) -> None:
    checks = [
        (STAGES.get(cfg.run.stage) is not None, "run.stage must be " + "|".join(STAGES)),
        (cfg.loss.mmdpo_beta in MMDPO_BETAS, "loss.mmdpo_beta must be " + "|".join(MMDPO_BETAS)),
        (cfg.reward.head in HEAD_KINDS, "reward.head must be " + "|".join(HEAD_KINDS)),
        (0.0 <= cfg.reward.dropout < 1.0, "reward.dropout must be in [0, 1)"),
        (cfg.data.layout in ("prefix_shared", "naive"), "data.layout must be prefix_shared|naive"),
        (cfg.data.on_error in ("raise", "skip"), "data.on_error must be raise|skip"),
        (cfg.optim.schedule in ("cosine", "linear", "constant"), "optim.schedule must be cosine|linear|constant"),
        (cfg.ref.mode in ("copy", "cached"), "ref.mode must be copy|cached"),
        (_resume_ok(cfg.checkpoint.resume), "checkpoint.resume must be auto|never|force|STEP"),
        (0.0 <= cfg.data.max_skip_fraction <= 1.0, "data.max_skip_fraction must be in [0, 1]"),
        (cfg.train.steps > 0, "train.steps must be positive"),
        (cfg.checkpoint.every > 0, "checkpoint.every must be positive"),
        (cfg.optim.grad_accum >= 1 and cfg.data.batch_size % cfg.optim.grad_accum == 0,
         "optim.grad_accum must divide data.batch_size"),
        (cfg.online.rejected in ("annotator", "bdhs"), "online.rejected must be annotator|bdhs"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    try:
        cfg.lora.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def describe() -> str:
    """Every key with its default and help text (for ``--help``)."""
    lines = []
    for sec in dataclasses.fields(Config):
        inst = sec.default_factory()
        lines.append(f"{sec.name}:")
        for f in dataclasses.fields(inst):
            lines.append(f"  {sec.name}.{f.name} = {getattr(inst, f.name)!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def dump(cfg: Config, path: str) -> None:
    from jax_align.atomic import atomic_file

    with atomic_file(path) as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
