"""One record -> one prepared group: checked, tokenized, truncated, images preprocessed, per-response targets
(:class:`RecordProcessor`, run in Grain workers); bad records become :class:`Skipped` markers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jax_align.data.data_config import REQUIRED_FIELD_HELP, DataConfig
from jax_align.data.images import ImageProcessorConfig, preprocess_image
from jax_align.data.problems import Problem
from jax_align.data.readers import RawRecord
from jax_align.data.records import PreferenceGroup
from jax_align.data.tokenize import ChatTokenizer, TokenizedGroup
from jax_align.data.validate import RecordChecker
from jax_align.preference import ABSENT


@dataclass
class PreparedGroup:
    """A checked, tokenized, truncated record with its preprocessed images and per-response targets."""

    record_index: int
    number: int
    epoch: int
    kind: str
    tokens: TokenizedGroup
    pixel_values: np.ndarray  # float32 [n_images, C, H, W]; AnyRes: a tuple of frontends.ProcessedImage
    scores: np.ndarray  # float32 [K] (NaN: none)
    levels: np.ndarray  # int32 [K] quality levels (jax_align.preference: higher = better; ABSENT padding)
    dimension_scores: np.ndarray | None  # float32 [K, D]
    margin: float
    reference_logps: np.ndarray  # float32 [K] (NaN: unknown)
    critique_mask: np.ndarray | None = None  # bool [K]: response k has a critique (critique_prompt data)
    is_tie: bool = False
    source_order: np.ndarray | None = None  # int32 [K]: position of response k in its record (-1: padding)
    skipped_in_epoch: int = 0
    skipped_per_epoch: dict[str, int] = field(default_factory=dict)


@dataclass
class Skipped:
    """A bad record travelling through the pipeline to the skip filter."""

    epoch: int
    problems: tuple[Problem, ...]


class RecordProcessor:
    """``(epoch, RawRecord) -> PreparedGroup | Skipped`` (picklable: runs in Grain workers)."""

    def __init__(
        self,
        cfg: DataConfig,
        path: str,
        base_dir: str,
        tokenizer: ChatTokenizer,
        image_cfg: ImageProcessorConfig,
        reference_logps: np.ndarray | None = None,
    ):
        self.cfg = cfg
        self.path = path
        self.base_dir = base_dir
        self.image_cfg = image_cfg
        self.reference_logps = reference_logps
        self.checker = RecordChecker(
            fmt=cfg.format,
            require_images=cfg.require_images,
            tokenizer=tokenizer,
            max_length=cfg.row_length_limit,
            layout=cfg.layout,
            min_response_tokens=cfg.min_response_tokens,
            max_prompt_cut=cfg.max_prompt_cut,
            max_images=cfg.max_images,
            max_responses=cfg.responses_per_group,
            critique_prompt=cfg.critique_prompt,
            allow_absolute_paths=cfg.allow_absolute_paths,
            image_limits=cfg.image_limits,
        )

    def __call__(self, item: tuple[int, RawRecord]) -> PreparedGroup | Skipped:
        epoch, raw = item
        if self.cfg.pair_from_ranked:
            from dataclasses import replace

            from jax_align.data.pairing import reduce_to_pair

            raw = replace(raw, data=reduce_to_pair(raw.data))
        result = self.checker.check(raw, self.path, self.base_dir, keep_images=True)
        if not result.ok:
            return Skipped(epoch, tuple(result.problems))
        example, tokens = result.example, result.tokens
        missing = [f for f in self.cfg.required_fields if getattr(example, f, None) is None]
        if missing:
            return Skipped(epoch, tuple(Problem(self.path, raw.number, f, REQUIRED_FIELD_HELP.get(f, "missing field"))
                                        for f in missing))
        K = self.cfg.responses_per_group
        C = 3
        H, W = self.image_cfg.output_size
        frontend = getattr(self.checker.tokenizer, "frontend", None)
        if frontend is not None:  # AnyRes: per-image tiles + gather plan (models/frontends.py)
            pixels = tuple(frontend.preprocess(img) for img in result.images)
        else:
            pixels = np.zeros((len(result.images), C, H, W), np.float32)
            for i, img in enumerate(result.images):
                pixels[i] = preprocess_image(img, self.image_cfg)
        n = len(tokens.responses)
        scores = np.full((K,), np.nan, np.float32)
        levels = np.full((K,), ABSENT, np.int32)
        source = np.full((K,), -1, np.int32)
        source[: len(tokens.responses)] = np.arange(len(tokens.responses))
        refs = np.full((K,), np.nan, np.float32)
        dims = None
        margin = 0.0
        kind = "sft"
        critiques = None
        is_tie = False
        if isinstance(example, PreferenceGroup):
            is_tie = example.is_tie
            if self.cfg.critique_prompt:
                from jax_align.data.critique import critique_mask

                critiques = np.zeros((K,), bool)
                critiques[:n] = critique_mask(example)
            kind = example.kind
            levels[:n] = example.levels()
            if example.scores is not None:
                scores[:n] = example.scores
            if example.dimension_scores is not None:
                dims = np.asarray(example.dimension_scores, np.float32)
            if example.reference_logps is not None:
                refs[:n] = [np.nan if v is None else v for v in example.reference_logps]
            margin = 0.0 if example.margin is None else float(example.margin)
            if example.source_order is not None:
                source[:n] = example.source_order
        else:
            levels[:n] = 0
        if self.reference_logps is not None:
            cached = self.reference_logps[raw.index]
            refs[: cached.shape[0]] = np.where(np.isnan(cached), refs[: cached.shape[0]], cached)
        return PreparedGroup(
            record_index=raw.index,
            number=raw.number,
            epoch=epoch,
            kind=kind,
            tokens=tokens,
            pixel_values=pixels,
            scores=scores,
            levels=levels,
            dimension_scores=dims,
            margin=margin,
            reference_logps=refs,
            critique_mask=critiques,
            is_tie=is_tie,
            source_order=source,
        )
