"""Keeping a record's relative image paths valid when the record is written to another directory."""

from __future__ import annotations

import os

_NOT_FILES = ("http:", "https:", "data:")


def rebase_images(record: dict, src_dir: str, dst_dir: str) -> dict:
    """A copy of ``record`` whose relative ``image`` / ``images`` paths resolve from ``dst_dir`` as they did from
    ``src_dir``; absolute paths, URLs, data URIs and embedded images are kept as they are."""

    def move(value):
        if isinstance(value, str) and not os.path.isabs(value) and not value.startswith(_NOT_FILES):
            return os.path.relpath(os.path.join(src_dir, value), dst_dir)
        return value

    out = dict(record)
    for key in ("image", "images"):
        if isinstance(out.get(key), str):
            out[key] = move(out[key])
        elif isinstance(out.get(key), list):
            out[key] = [move(v) for v in out[key]]
    return out
