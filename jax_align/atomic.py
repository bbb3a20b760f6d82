"""Atomic outputs: write to a temporary sibling, then rename into place.

``atomic_file(path)`` yields a file object open on ``.NAME.tmp-PID-XXXX`` next to ``path``; on a clean exit the
data is flushed, fsynced and renamed over ``path`` (one ``rename``), on an exception the temporary is removed and
``path`` is untouched. ``atomic_dir(path)`` yields a temporary sibling *directory* to fill; on a clean exit it
replaces ``path`` (Linux: one ``renameat2(RENAME_EXCHANGE)``, so there is no moment without a complete ``path``;
elsewhere two renames, the old one kept as ``.NAME.old-*`` until the new one is in place). A killed process
leaves only hidden temporaries behind, which the next write of the same output removes (when their pid is gone).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _tmp_prefix(path: str, kind: str) -> str:
    return f".{os.path.basename(path)}.{kind}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str) -> None:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``path`` left by processes that are gone."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        return
    for kind in ("tmp", "old"):
        prefix = _tmp_prefix(path, kind)
        for name in os.listdir(parent):
            if not name.startswith(prefix):
                continue
            try:
                pid = int(name[len(prefix):].split("-", 1)[0])
            except ValueError:
                continue
            if pid == os.getpid() or _pid_alive(pid):
                continue
            full = os.path.join(parent, name)
            if kind == "old" and not os.path.exists(path):
                os.rename(full, path)  # killed between the two renames of the fallback: put the old one back
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(full)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def replace_dir(tmp: str, path: str) -> None:
    """Put the complete directory ``tmp`` at ``path``, replacing what is there; the old one is removed last."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(path):
        os.rename(tmp, path)
    elif os.path.isdir(path) and not os.path.islink(path) and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old output
    else:
        old = tempfile.mkdtemp(prefix=_tmp_prefix(path, "old") + f"{os.getpid()}-", dir=parent)
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
    _fsync_dir(parent)


@contextlib.contextmanager
def atomic_dir(path: str, *, tmp: str | None = None, commit: bool = True) -> Iterator[str]:
    """Yield a temporary sibling directory of ``path``; on success it replaces ``path`` atomically.

    ``tmp`` names the temporary explicitly (multi-process writers that must agree on it; it is emptied first);
    ``commit=False`` only fills it (a non-primary process of a multi-process save).
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if tmp is None:
        remove_stale_temporaries(path)
        tmp = tempfile.mkdtemp(prefix=_tmp_prefix(path, "tmp") + f"{os.getpid()}-", dir=parent)
    else:
        os.makedirs(tmp, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        if commit:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if commit:
        replace_dir(tmp, path)


@contextlib.contextmanager
def _atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary sibling path of ``path``; the caller writes it, and a clean exit renames it over
    ``path`` (a failure removes it and leaves ``path`` as it was)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path, "tmp") + f"{os.getpid()}-", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **open_kwargs):
    """Yield a file object on a temporary sibling of ``path``; renamed over ``path`` on a clean exit."""
    with _atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_save(path: str, writer: Callable[[str], object]) -> None:
    """``writer(tmp_path)`` writes a file (e.g. ``np.save``, ``fig.savefig``); it is renamed over ``path``.

    The temporary keeps ``path``'s extension so writers that add one (``np.save``) write where told."""
    with _atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        writer(tmp)


def write_json(path: str, obj, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` atomically (``indent=2, sort_keys=True`` unless given)."""
    import json

    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("sort_keys", True)
    with atomic_file(path, encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)
        f.write("\n")


def check_writable(path: str) -> None:
    """Fail now, not after minutes of work, when ``path`` could not be written: its nearest existing parent must be
    a writable directory (raises ``OSError`` naming ``path``)."""
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise NotADirectoryError(errno.ENOTDIR, f"{probe} is not a directory", path)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{probe} is not writable", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file path", path)
