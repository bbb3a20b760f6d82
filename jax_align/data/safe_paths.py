"""Image paths of a data file stay inside its directory unless absolute paths are allowed.

A relative path is joined to the data file's directory (or the configured image root) and normalised; one that
then lies outside it (``../../etc/passwd``) or an absolute path is refused with a message naming the rule and
the setting that lifts it (``data.allow_absolute_paths=true``; ``--allow-absolute-paths`` on the command line).
"""

from __future__ import annotations

import os


def resolve_image_path(item: str, base_dir: str, allow_absolute_paths: bool) -> tuple[str, str | None]:
    """``(normalised path, error or None)``."""
    base = os.path.normpath(os.path.abspath(base_dir))
    if os.path.isabs(item):
        path = os.path.normpath(item)
        if not allow_absolute_paths and not _inside(os.path.abspath(path), base):
            return path, (f"image path {item!r} is absolute and outside the data directory {base} "
                          "(set data.allow_absolute_paths=true to allow it)")
        return path, None
    path = os.path.normpath(os.path.join(base_dir, item))
    if not allow_absolute_paths and not _inside(os.path.abspath(path), base):
        return path, (f"image path {item!r} escapes the data directory {base} "
                      "(set data.allow_absolute_paths=true to allow it)")
    return path, None


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)
