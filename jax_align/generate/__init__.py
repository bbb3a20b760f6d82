"""The generation engine behind ``jax-align generate``, ``jax-align eval --model`` and the sampling recipes.

:class:`Generator` holds a model, its chat tokenizer and its image preprocessor, and turns prompt records into
completions:

1. each prompt is rendered with the checkpoint's chat template (``<image>\\n`` is prepended when the prompt
   has no placeholder but an image), tokenized with every ``<image>`` expanded to the model's image-token
   count, and optionally extended with a forced response prefix;
2. its image is loaded and preprocessed once (an LRU cache keyed by path serves prompts sharing an image), and
   its ``n_samples`` continuations share one prefill (:mod:`jax_align.sampling`);
3. prompts are sorted by length and cut into batches; each batch is left-padded to a length bucket (a
   multiple of ``length_multiple``) and a batch-size bucket (a power of two up to ``batch_size``), so the
   jitted sampler compiles once per bucket, never per call (:attr:`Generator.num_compilations`);
4. tokens are decoded up to the first stop token (the tokenizer's EOS, plus ``stop_token_ids`` and tokens
   containing a ``stop_strings`` entry), special tokens skipped, whitespace stripped.

Sampling is reproducible: prompt ``i`` of a call draws from ``fold_in(key(seed), i)`` (sample ``j`` from a
further ``fold_in(., j)``), so its outputs do not depend on the batch size or on the other prompts.

Hooks for the preference recipes (spec §2.2, BDHS): ``image_keep_fraction`` / ``keep_masks`` hide image
tokens from the text (every layer, prefill and decode), ``response_prefixes`` force the start of the answer
and generation continues it (e.g. to the first full stop with ``stop_strings=(".",)``), and every completion
carries its token ids and the model's log-probs.

Modules: :mod:`.types` (results, input error), :mod:`.engine` (:class:`Generator`), :mod:`.records`
(:func:`generate_records`, :func:`get_generator`), :mod:`.bdhs` (BDHS's masked, guided sampling, spec §2.2: the
one implementation behind ``jax-align prefs bdhs`` and the trainer's ``online.rejected=bdhs``).
"""

from jax_align.sampling import Sampler, SamplingParams

from .engine import Generator
from .records import _CACHE, _model_stamp, generate_records, get_generator  # noqa: F401  (the old module's names)
from .types import (  # noqa: F401  (the old module's names)
    IMAGE_PLACEHOLDER,
    Completion,
    GenerationInputError,
    PromptGeneration,
    _generation_eos_ids,
    _power_of_two_at_least,
    _Prepared,
)

__all__ = ["IMAGE_PLACEHOLDER", "Completion", "GenerationInputError", "Generator", "PromptGeneration", "Sampler",
           "SamplingParams", "generate_records", "get_generator"]
