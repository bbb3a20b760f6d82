"""One line per expected failure: ``jax-align COMMAND: FILE[:RECORD]: FIELD: message``, exit status 2.

Every sub-command runs through :func:`run_command` (see :mod:`jax_align.cli.main`). Bad input (data, config, YAML,
JSON, image decode, safetensors header, missing or unwritable files, a locked run directory, a corrupt or full
checkpoint) is printed as one line on stderr and exits 2; anything else is a bug and keeps its traceback.
``--debug`` (or ``JAX_ALIGN_DEBUG=1``) re-raises everything, traceback included.

Code that knows which file or field it is reading wraps the reading in ``with located(path, "model"):`` so that
library errors that do not name their file (a safetensors header, a JSON document, an Orbax restore) still do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2
_WHERE = "_jax_align_where"
_MAX_MESSAGE = 600


class CommandError(ValueError):
    """A located fault raised by CLI code: ``FILE[:RECORD]: FIELD: message``."""

    def __init__(self, message: str, *, file: str | None = None, record: int | None = None,
                 field: str | None = None):
        self.file, self.record, self.field, self.message = file, record, field, message
        super().__init__(message)

    def location(self) -> str:
        return _join(self.file, self.record, self.field)


def _join(file, record=None, field=None) -> str:
    where = "" if file is None else str(file)
    if record is not None:
        where += f":{record}"
    if field:
        where = f"{where}: {field}" if where else str(field)
    return where


@contextlib.contextmanager
def located(path: str | None, field: str | None = None):
    """Attribute exceptions raised inside to ``path`` (and ``field``) unless they already carry a location."""
    try:
        yield
    except Exception as e:
        if getattr(e, _WHERE, None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(e, _WHERE, (path, field))
        raise


def _first_line(text: str) -> str:
    """The message on one line: its lines joined, capped at a readable length."""
    line = " ".join(ln.strip() for ln in str(text).strip().splitlines() if ln.strip())
    if len(line) > _MAX_MESSAGE:
        line = line[: _MAX_MESSAGE - 30] + "... (--debug shows all)"
    return line


def _expected_types() -> tuple[type, ...]:
    types: list[type] = [ValueError, OSError, EOFError]
    for mod, name in (("jax_align.run_lock", "LockedError"), ("jax_align.train.checkpointing", "CheckpointError"),
                      ("yaml", "YAMLError"), ("safetensors", "SafetensorError"),
                      ("PIL.Image", "DecompressionBombError"), ("jax_align.train.trainer", "TrainingDiverged")):
        module = sys.modules.get(mod)  # only what is already imported can have been raised
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def describe(exc: BaseException) -> str | None:
    """``FILE[:RECORD]: FIELD: message`` for an expected failure, ``None`` for a bug (keep its traceback)."""
    where = getattr(exc, _WHERE, None)
    path, field = where if where else (None, None)
    name = type(exc).__name__
    if isinstance(exc, CommandError):
        loc = exc.location() or _join(path, None, field)
        return f"{loc}: {_first_line(exc.message)}" if loc else _first_line(exc.message)
    problems = getattr(exc, "problems", None)
    if problems and all(hasattr(p, "path") and hasattr(p, "field") for p in problems):  # DataError
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return _first_line(str(problems[0])) + more
    if isinstance(exc, json.JSONDecodeError):
        if path is None or os.path.isdir(path):  # the file inside is unknown: no misleading line number
            return (f"{_join(path, None, field or 'json')}: invalid JSON (line {exc.lineno}, column {exc.colno}): "
                    f"{exc.msg}")
        return f"{_join(path, exc.lineno)}: {field or 'json'}: invalid JSON: {exc.msg} (column {exc.colno})"
    if name in ("YAMLError", "ScannerError", "ParserError", "ComposerError", "ConstructorError", "MarkedYAMLError") \
            or any(c.__name__ == "YAMLError" for c in type(exc).__mro__):
        mark = getattr(exc, "problem_mark", None)
        file = path or (mark.name if mark is not None and not str(mark.name).startswith("<") else None)
        line = None if mark is None else mark.line + 1
        problem = getattr(exc, "problem", None) or str(exc)
        return f"{_join(file, line, field or 'yaml')}: invalid YAML: {_first_line(problem)}"
    from jax_align.disk import free_space, is_enospc

    if is_enospc(exc):
        target = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
        target = target or path
        loc = _join(target, None, field or "file") if target else "disk"
        detail = exc.strerror if isinstance(exc, OSError) and "free" in str(exc.strerror) else None
        detail = detail or ("No space left on device" + (f", {free_space(target)}" if target else ""))
        return f"{loc}: disk full ({detail}); nothing complete was replaced"
    if name == "SafetensorError":
        return f"{_join(path, None, field)}: safetensors: {_first_line(str(exc))}"
    if isinstance(exc, RecursionError) and "JSON" in str(exc):
        return f"{_join(path, None, field or 'json')}: invalid JSON: nested too deeply"
    if not isinstance(exc, _expected_types()):
        if where and isinstance(exc, (KeyError, TypeError, AttributeError, IndexError)):
            # raised while reading a named input (inside ``located``): a malformed file, not a bug of ours
            return f"{_join(path, None, field)}: malformed input ({name}: {_first_line(str(exc))})"
        return None
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        reason = exc.strerror or _first_line(str(exc))
        if exc.errno == errno.ENOSPC:
            reason = f"disk full ({reason})"
        return f"{_join(exc.filename, None, field or 'file')}: {reason}"
    message = _first_line(str(exc)) or name
    if path and not message.startswith(str(path)):
        return f"{_join(path, None, field)}: {message}"
    return message


def format_error(command: str, exc: BaseException) -> str | None:
    what = describe(exc)
    return None if what is None else f"jax-align {command}: {what}"


def debug_enabled(argv: list[str] | None = None) -> bool:
    return "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("JAX_ALIGN_DEBUG") == "1"


def run_command(command: str, fn: Callable, args, *, debug: bool = False) -> int:
    """``fn(args)`` with expected failures turned into one line on stderr and exit status 2."""
    try:
        return int(fn(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"jax-align {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        line = format_error(command, e)
        if line is None:
            raise
        print(line, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
