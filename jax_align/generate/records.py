"""The records API: answer ``{image, prompt}`` records with a model directory (``jax-align eval --model``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from jax_align.sampling import SamplingParams

from .engine import Generator

_CACHE: dict[tuple, Generator] = {}


def _model_stamp(path: str) -> tuple:
    """What identifies a model directory's current contents cheaply: its files' names, sizes and mtimes."""
    stamp = []
    for name in sorted(os.listdir(path)):
        st = os.stat(os.path.join(path, name))
        stamp.append((name, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def get_generator(model_path: str) -> Generator:
    """A :class:`Generator` for ``model_path``, reused across calls while the directory is unchanged (the
    last model only, with its compiled functions)."""
    path = os.path.abspath(model_path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: model directory not found")
    key = (path, _model_stamp(path))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Generator.from_model_dir(path)
    return _CACHE[key]


def generate_records(
    model_path: str,
    records: Sequence[dict],
    *,
    base_dir: str,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    seed: int = 0,
    n_samples: int = 1,
    top_p: float = 1.0,
    top_k: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str] | list[list[str]]:
    """Answer each ``{image, prompt}`` record (image paths relative to ``base_dir``) with the model.

    Returns one stripped string per record, or a list of ``n_samples`` strings per record when
    ``n_samples > 1``. Temperature 0 (the default) is greedy.
    """
    gen = get_generator(model_path)
    sp = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, n_samples=n_samples
    )
    out = gen.generate(records, sp, seed=seed, batch_size=batch_size, base_dir=base_dir, progress=progress)
    if n_samples == 1:
        return [g.completions[0].text for g in out]
    return [g.texts for g in out]
