"""Persistent XLA compilation cache, on by default for every ``jax-align`` command.

Compiled executables are written to a directory and read back by later processes, so a resumed run, a second
``jax-align train`` of the same config or the next ``jax-align generate`` skips most of its compile time. The
directory is, in order of precedence:

1. the ``path`` given to :func:`enable_compilation_cache`;
2. ``$JAX_ALIGN_CACHE_DIR`` (``off``, ``0``, ``false``, ``no``, ``none`` or ``disabled`` turn the cache off);
3. ``$JAX_COMPILATION_CACHE_DIR`` / a ``jax_compilation_cache_dir`` already configured by the user;
4. ``$XDG_CACHE_HOME/jax-align/xla`` (``~/.cache/jax-align/xla``).

JAX's own thresholds (cache only compilations that took at least 1 s) are lowered so that the tiny models of the
tests and the demo on a CPU also benefit; only compilations under ``min_compile_time_secs`` are skipped, which
keeps the thousands of one-primitive eager computations out of the cache.

The cache is trusted code: do not point it at a directory that others can write to.
"""

from __future__ import annotations

import os
import warnings

ENV_VAR = "JAX_ALIGN_CACHE_DIR"
OFF_VALUES = frozenset({"off", "0", "false", "no", "none", "disable", "disabled"})
DEFAULT_MIN_COMPILE_TIME_SECS = 0.1

_state: dict[str, object] = {"path": None, "done": False}


def default_cache_dir() -> str | None:
    """The directory that :func:`enable_compilation_cache` uses without a ``path``; ``None`` when turned off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        return None if value.lower() in OFF_VALUES else os.path.abspath(os.path.expanduser(value))
    try:
        import jax

        configured = jax.config.jax_compilation_cache_dir
    except Exception:  # pragma: no cover - a jax without the option
        configured = None
    if configured:
        return str(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jax-align", "xla")


def enable_compilation_cache(path: str | None = None, *,
                             min_compile_time_secs: float = DEFAULT_MIN_COMPILE_TIME_SECS,
                             min_entry_size_bytes: int = 0) -> str | None:
    """Point JAX's persistent compilation cache at ``path`` (default: :func:`default_cache_dir`).

    Returns the cache directory in use, or ``None`` when the cache is off (``path`` or ``$JAX_ALIGN_CACHE_DIR``
    is ``off``) or the directory cannot be created (a warning says why). Idempotent: calling it again with the
    same arguments changes nothing; a different directory takes effect for the compilations that follow.
    """
    import jax

    if path is not None and path.strip().lower() in OFF_VALUES:
        path = None
        disabled = True
    else:
        path = os.path.abspath(os.path.expanduser(path)) if path else default_cache_dir()
        disabled = path is None
    key = (path, float(min_compile_time_secs), int(min_entry_size_bytes))
    if _state["done"] and _state.get("key") == key:
        return path

    if not disabled:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            warnings.warn(f"jax-align: compilation cache disabled, cannot create {path}: {e}", stacklevel=2)
            disabled, path = True, None

    if disabled:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    _reset_jax_cache()
    _state.update(path=path, done=True, key=key)
    return path


def cache_dir() -> str | None:
    """The directory set by the last :func:`enable_compilation_cache` call (``None``: not called or off)."""
    return _state["path"]  # type: ignore[return-value]


def _reset_jax_cache() -> None:
    # JAX opens its cache (and decides whether to use it) once, at the first compilation; a change of setting
    # after that needs a reset. Harmless before the first compilation.
    try:
        from jax._src import compilation_cache as cc

        cc.reset_cache()
    except Exception:  # pragma: no cover - private API drift: the new setting applies to new processes
        pass
