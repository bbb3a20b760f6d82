"""Input layer: record formats, readers, validation, image preprocessing, tokenization, row layouts, buckets,
Grain pipelines and the reference log-prob cache (issue 4).

Grain and transformers are imported only by the modules that need them (:mod:`.pipeline`,
:meth:`.tokenize.ChatTokenizer.from_model_dir`), so ``jax-align data validate`` starts quickly.
"""

from jax_align.data.layouts import IGNORE_INDEX, attention_mask_from_segments
from jax_align.data.problems import DataError, Problem
from jax_align.data.records import FORMATS, IMAGE_PLACEHOLDER, PreferenceGroup, SFTExample, parse_record
from jax_align.data.vision_tokens import image_token_id, num_image_tokens

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "DataError",
    "PreferenceGroup",
    "Problem",
    "SFTExample",
    "attention_mask_from_segments",
    "image_token_id",
    "num_image_tokens",
    "parse_record",
]
