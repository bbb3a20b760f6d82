"""Hand freed host memory back to the operating system.

XLA's compiler, the model loaders and the tokenizer free hundreds of MB of small allocations that glibc keeps in
its heap; the step's large buffers are then mapped afresh, so the process's resident high-water mark holds both.
:func:`trim_host_memory` (glibc's ``malloc_trim(0)``) returns the free pages after setup and after each compile,
before a step allocates its buffers (issue 13: the DPO bench reports the peak RSS over the post-import baseline).
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` off glibc/Linux (musl has no ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim_host_memory() -> bool:
    """``malloc_trim(0)``: True when glibc released memory; False (and nothing done) off glibc/Linux."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
