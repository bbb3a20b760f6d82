"""Random-access readers for record files: JSONL, JSON arrays, Parquet, and ``datasets`` saved to disk.

:func:`open_records` returns a :class:`RecordSource` (``len`` + ``__getitem__``, picklable, so it can be a
Grain ``MapDataset`` source and travel to worker processes). Each item is a :class:`RawRecord` holding the
decoded object, or the reason it could not be decoded (invalid JSON on a JSONL line), and its record number
(1-based line number for JSONL, row index + 1 otherwise). Image columns stay raw: ``datasets`` ``Image``
features come back as ``{"bytes", "path"}`` dicts, never decoded here.
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawRecord:
    """One record of a data file. ``index`` is its 0-based position among the file's records."""

    index: int
    number: int
    data: Any = None
    error: str | None = None


class RecordSource(abc.ABC):
    """A sequence of :class:`RawRecord` read from ``path``; images resolve against ``base_dir``."""

    kind = "records"

    def __init__(self, path: str, base_dir: str):
        self.path = path
        self.base_dir = base_dir

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> RawRecord: ...

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {len(self)} records)"


class JsonlSource(RecordSource):
    """One JSON object per line; blank lines are skipped but counted for line numbers."""

    kind = "jsonl"

    def __init__(self, path: str, base_dir: str):
        super().__init__(path, base_dir)
        with open(path, "rb") as f:
            raw = f.read()
        if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
            raw = raw[3:]
        self._lines: list[tuple[int, bytes]] = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if line.strip():
                self._lines.append((number, line))

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> RawRecord:
        number, line = self._lines[index]
        try:
            return RawRecord(index, number, json.loads(line))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return RawRecord(index, number, error=f"invalid JSON: {e}")
        except RecursionError:
            return RawRecord(index, number, error="invalid JSON: nested too deeply")


class JsonArraySource(RecordSource):
    """A JSON file holding a list of records (LLaVA and AMP ship their data this way)."""

    kind = "json"

    def __init__(self, path: str, base_dir: str):
        super().__init__(path, base_dir)
        with open(path, "rb") as f:
            records = json.loads(f.read())
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> RawRecord:
        return RawRecord(index, index + 1, self._records[index])


class ParquetSource(RecordSource):
    kind = "parquet"

    def __init__(self, path: str, base_dir: str):
        super().__init__(path, base_dir)
        import pyarrow.parquet as pq

        self._table = pq.read_table(path)

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index: int) -> RawRecord:
        return RawRecord(index, index + 1, self._table.slice(index, 1).to_pylist()[0])


class HFDiskSource(RecordSource):
    """A ``datasets.Dataset`` saved with ``save_to_disk`` (a ``DatasetDict`` needs ``split``)."""

    kind = "datasets"

    def __init__(self, path: str, base_dir: str, split: str | None = None):
        super().__init__(path, base_dir)
        import datasets

        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1 and "train" not in ds:
                    raise ValueError(f"{path}: a DatasetDict with splits {list(ds)}; choose one with split=")
                split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        # Arrow rows: image features stay {"bytes", "path"} instead of being decoded to PIL.
        self._ds = ds.with_format("arrow")

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> RawRecord:
        return RawRecord(index, index + 1, self._ds[index : index + 1].to_pylist()[0])


def detect_kind(path: str) -> str:
    """``jsonl`` | ``json`` | ``parquet`` | ``datasets`` from the path (a directory is a saved dataset)."""
    if os.path.isdir(path):
        return "datasets"
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".json"):
        # a JSON array file or JSON lines with a .json name: peek at the first non-space byte
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        return "json" if head.startswith(b"[") else "jsonl"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(
        f"{path}: unknown data file type (expected .jsonl, .json, .parquet or a datasets directory)"
    )


def open_records(path: str, *, image_root: str | None = None, split: str | None = None) -> RecordSource:
    """Open a data file. Relative image paths resolve against ``image_root``, by default the directory that
    holds ``path`` (for a ``datasets`` directory: the directory that holds it).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such data file or directory")
    if not (os.path.isfile(path) or os.path.isdir(path)):  # a FIFO or a device would block or never end
        raise ValueError(f"{path}: not a regular file or a datasets directory")
    base_dir = image_root or os.path.dirname(os.path.abspath(path.rstrip("/")))
    kind = detect_kind(path)
    if kind == "jsonl":
        return JsonlSource(path, base_dir)
    if kind == "json":
        return JsonArraySource(path, base_dir)
    if kind == "parquet":
        return ParquetSource(path, base_dir)
    return HFDiskSource(path, base_dir, split=split)
