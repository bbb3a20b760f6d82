"""An exclusive OS-level lock on a directory: one writer per run directory or conversion output.

``with DirLock(run_dir): ...`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``RUN_DIR/.jax-align.lock`` and writes
the holder's pid, host and start time into it. The kernel releases the lock when the process exits, however it
exits (SIGKILL included), so a stale lock file never blocks a later run; only a live holder does. A clean release
removes the file. A second holder
fails at once with :class:`LockedError` naming the live holder's pid and host.

``inside=False`` puts the lock file next to the directory instead (``PARENT/.NAME.jax-align.lock``), for outputs
that are replaced as a whole by a rename (:func:`jax_align.atomic.atomic_dir`), whose own files would be swapped
away with them.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

LOCK_NAME = ".jax-align.lock"


class LockedError(RuntimeError):
    """Another live process holds the lock. ``path``: the lock file; ``holder``: what it wrote (pid, host...)."""

    def __init__(self, directory: str, path: str, holder: dict):
        self.directory, self.path, self.holder = directory, path, holder
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = holder.get("started")
        super().__init__(f"{directory}: in use by another jax-align process ({who}"
                         + (f", since {since}" if since else "") + f"; lock file {path})")


def lock_path(directory: str, inside: bool = True) -> str:
    directory = os.path.abspath(directory)
    if inside:
        return os.path.join(directory, LOCK_NAME)
    return os.path.join(os.path.dirname(directory), f".{os.path.basename(directory)}{LOCK_NAME}")


class DirLock:
    """Exclusive lock on ``directory`` (created if missing); a context manager, or ``acquire()``/``release()``."""

    def __init__(self, directory: str, *, inside: bool = True, what: str = "", enabled: bool = True):
        self.directory = os.path.abspath(directory)
        self.path = lock_path(self.directory, inside)
        self.what = what
        self.enabled = enabled  # False: a no-op (the non-primary processes of a multi-process run)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        if self._fd is not None or not self.enabled:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise LockedError(self.directory, self.path, holder) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the previous holder may have removed the file between our open and flock: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500],
                "what": self.what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)  # while still locked; a process that opened the old file re-checks the inode
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}


def lock_run_dir(run_dir: str, enabled: bool = True) -> DirLock:
    """The trainer's lock: ``with lock_run_dir(cfg.run.dir, enabled=jax.process_index() == 0): ...`` (one lock
    per run: the processes of a multi-process run share the directory)."""
    return DirLock(run_dir, inside=True, what="run directory", enabled=enabled)


def lock_output(out_dir: str) -> DirLock:
    """A conversion output's lock, next to it (the output itself is replaced by a rename)."""
    return DirLock(out_dir, inside=False, what="output directory")
