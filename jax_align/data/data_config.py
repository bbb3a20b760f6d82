"""What an input pipeline reads and how it batches: :class:`DataConfig` (split from ``pipeline.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jax_align.data.records import FORMATS
from jax_align.data.tokenize import LAYOUTS

if TYPE_CHECKING:  # grain is imported by the pipeline only (``jax-align data validate`` starts quickly)
    import grain

ON_ERROR = ("strict", "skip")
REQUIRED_FIELD_HELP = {
    "margin": "missing field: MM-DPO's reward-margin beta needs each pair's reward margin (spec §4.3); write them "
              "with `jax-align prefs margins`, or set loss.mmdpo_beta=fixed|batch_implicit",
}


@dataclass(frozen=True)
class DataConfig:
    """What the pipeline reads and how it batches.

    ``batch_size``: groups per batch (SFT without packing: examples = rows; SFT with ``pack``: rows).
    ``num_responses``: K, the static responses per group (default: 2 pairwise, 1 SFT, 4 ranked/scored);
    groups with fewer are padded (``response_mask``), records with more are bad records.
    ``max_images``: image slots per row (``pixel_values`` [B, max_images, C, H, W]).
    ``buckets``: row lengths; ``max_length`` (default: the largest bucket) is the truncation limit.
    ``round_weight``: AMP per-round token weight increment (spec 5.2; 0 = all targets weigh 1).
    ``critique_prompt``: judge each response in MM-RLHF's critic prompt with its critique as the target
    (:mod:`jax_align.data.critique`); batches then also carry ``critique_mask`` [G, K] and ``is_tie`` [G].
    """

    path: str
    format: str
    model_dir: str
    batch_size: int
    buckets: tuple[int, ...] = (512, 1024, 2048)
    max_length: int | None = None
    layout: str = "prefix_shared"
    pack: bool = False
    pack_window: int = 64
    num_responses: int | None = None
    max_images: int = 1
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    shard_index: int = 0
    shard_count: int = 1
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    on_error: str = "strict"
    round_weight: float = 0.0
    image_aspect_ratio: str | None = None
    min_response_tokens: int = 1
    max_prompt_cut: float = 0.5
    require_images: bool | None = None
    drop_remainder: bool = False
    image_root: str | None = None
    split: str | None = None
    critique_prompt: bool = False
    # on_error="skip" stops once more than this fraction of an epoch's records is bad (or none is good)
    max_skip_fraction: float = 0.5
    # image paths outside the data file's directory (absolute or ../): refused when False
    allow_absolute_paths: bool = True
    max_image_pixels: int | None = None  # image decode limits (None: ImageLimits.default())
    max_image_aspect_ratio: float | None = None
    required_fields: tuple[str, ...] = ()  # optional record fields the consumer cannot do without (mmdpo: margin)
    # ranked/scored records (K >= 2 scored responses) are cut to their best/worst pair (EACO, spec §1.2 step 5;
    # jax_align.data.pairing.reduce_to_pair) so a pairwise stage (dpo) trains on them
    pair_from_ranked: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {FORMATS}, got {self.format!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.pack and self.format != "sft":
            raise ValueError("data.pack is for SFT data; preference groups use the prefix-shared layout")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} not in [0, {self.shard_count})")
        if self.batch_size <= 0:
            raise ValueError("data.batch_size must be positive")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")

    @property
    def image_limits(self):
        from jax_align.data.images import ImageLimits

        d = ImageLimits.default()
        return ImageLimits(
            max_pixels=d.max_pixels if self.max_image_pixels is None else int(self.max_image_pixels),
            max_aspect_ratio=d.max_aspect_ratio if self.max_image_aspect_ratio is None
            else float(self.max_image_aspect_ratio),
        )

    @property
    def responses_per_group(self) -> int:
        if self.num_responses is not None:
            return int(self.num_responses)
        return {"sft": 1, "pairwise": 2}.get(self.format, 4)

    @property
    def row_length_limit(self) -> int:
        return int(self.max_length or max(self.buckets))

    def with_shard_options(self, options: grain.sharding.ShardOptions) -> DataConfig:
        """This config sharded as a Grain ``ShardOptions`` (e.g. ``ShardByJaxProcess()``) says."""
        from dataclasses import replace

        return replace(self, shard_index=options.shard_index, shard_count=options.shard_count)
