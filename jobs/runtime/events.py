"""Structured events of a run, sent through the standard ``logging`` module.

The lower layers only *emit* events, each a name and some fields (rows read, seconds, ...); the
CLI decides whether and how they are shown (text or one JSON object a line, on stderr). Nothing
is shown until a handler is configured, so library use of klrank stays silent.

>>> emit("inputs.scanned", files=3, rows=1000)  # doctest: +SKIP
"""

import logging
from typing import Any

LOGGER = logging.getLogger("klrank")
FIELDS = "klrank_fields"  # the LogRecord attribute that carries an event's fields
PROGRESS = "progress"  # an event for a live display only: never logged as a line


def emit(event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (JSON-ready values) at ``level``."""
    LOGGER.log(level, event, extra={FIELDS: fields})


def progress(phase: str, done: int, total: int) -> None:
    """Report that ``done`` of ``total`` steps of ``phase`` are finished (DEBUG level)."""
    emit(PROGRESS, logging.DEBUG, phase=phase, done=done, total=total)
