"""Orbax logs a full traceback (through absl) for every failed background save thread before the same error
reaches the caller. Callers that turn that error into one line (checkpoints, model directories) install this
filter so the failure is reported once, briefly; other Orbax log records pass unchanged."""

from __future__ import annotations

import logging
import os


class _OrbaxErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


_FILTER = _OrbaxErrorFilter()


def quiet_orbax_errors() -> None:
    for name in ("absl", "orbax"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
