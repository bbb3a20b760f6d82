"""Full-disk detection: ``ENOSPC`` anywhere in an exception chain (Python ``OSError`` or TensorStore/safetensors
messages that carry only the text), and the free space to report with it."""

from __future__ import annotations

import errno
import os
import shutil

_ENOSPC_TEXT = ("No space left on device", "os error 28", "os_error_code='28'", "ENOSPC")


def is_enospc(exc: BaseException) -> bool:
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if any(t in str(e) for t in _ENOSPC_TEXT):
            return True
        stack.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return False


def free_space(path: str) -> str:
    """``"12.3 MiB free"`` on the file system holding ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free"
    except OSError as e:
        return f"free space unknown ({e.strerror})"


def tree_nbytes(tree, itemsize: int | None = None) -> int:
    """Bytes of the arrays in a pytree (``itemsize``: as if cast to a dtype of that size)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        size = getattr(leaf, "size", None)
        if size is None:
            continue
        total += int(size) * (itemsize or int(getattr(getattr(leaf, "dtype", None), "itemsize", 4)))
    return total


def ensure_room(path: str, need_bytes: int, what: str, slack: int | None = None) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` before writing ``what`` when the file system cannot hold it."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    slack = need_bytes // 50 + (64 << 10) if slack is None else slack  # metadata and small files
    if need_bytes + slack > free:
        raise OSError(errno.ENOSPC, f"No space left on device: {what} needs about {need_bytes / 2**20:.1f} MiB, "
                      f"{free / 2**20:.1f} MiB free", path)
