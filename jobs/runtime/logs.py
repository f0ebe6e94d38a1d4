"""How klrank's events (:mod:`klrank.runtime.events`) are shown on stderr.

Two formats: ``text`` (one readable line an event) and ``json`` (one JSON object a line, with
``timestamp``, ``level`` and ``event`` first, then the event's fields), and a live progress line
drawn only when stderr is a terminal, so that cron mails and Airflow logs never get one. Only
the CLI calls :func:`configure`; used as a library, klrank logs nothing until its caller does.
"""

import datetime as dt
import json
import logging
from typing import Any, Literal, TextIO

from klrank.runtime.events import FIELDS, LOGGER, PROGRESS

LogFormat = Literal["text", "json"]


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = getattr(record, FIELDS, {})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp (UTC), level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        document: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        document |= {k: v for k, v in _fields(record).items() if k not in document}
        return json.dumps(document, default=str)


def _text(value: Any) -> str:
    # Bare only when nothing in it could split the field or the line, or reach a terminal as a
    # control sequence (ESC, U+2028, ...): else as JSON, which escapes all of them.
    if isinstance(value, str) and value and value.isprintable() and not set(' "=') & set(value):
        return value
    return json.dumps(value, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIMESTAMP LEVEL event key=value ...`` (values with spaces or structure as JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one readable line."""
        fields = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname.lower():<7} {record.getMessage()}"
        return f"{line} {fields}" if fields else line


class StderrHandler(logging.Handler):
    """Writes events at ``threshold`` or above, and draws progress events in place on a TTY."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter, threshold: int, live: bool):
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.stream = stream
        self.threshold = threshold
        self.live = live
        self._drawn = False  # a progress line is on screen, without its newline

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` (or redraw the progress line)."""
        try:
            if record.getMessage() == PROGRESS:
                if self.live:
                    self._draw(_fields(record))
                return
            if record.levelno < self.threshold:
                return
            text = self.format(record)
            if self._drawn:  # the line goes above a progress line that is redrawn next time
                self.stream.write("\r\x1b[K")
                self._drawn = False
            self.stream.write(text + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)

    def _draw(self, fields: dict[str, Any]) -> None:
        done, total = int(fields["done"]), max(int(fields["total"]), 1)
        self.stream.write(
            f"\r\x1b[Kklrank: {fields['phase']} {done}/{total} ({100 * done // total}%)"
        )
        self._drawn = done < total
        if not self._drawn:
            self.stream.write("\n")
        self.stream.flush()


_state: dict[str, LogFormat] = {"format": "text"}


def configure(log_format: LogFormat, quiet: bool, stream: TextIO) -> None:
    """Send klrank's events to ``stream`` (stderr) in ``log_format``.

    ``quiet`` keeps warnings and errors only, and no progress line; progress is drawn only when
    ``stream`` is a terminal and the format is text.
    """
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    # JSON logs promise one JSON object a line: no progress line to redraw in place.
    live = not quiet and log_format == "text" and stream.isatty()
    threshold = logging.WARNING if quiet else logging.INFO
    for handler in list(LOGGER.handlers):
        if isinstance(handler, StderrHandler):
            LOGGER.removeHandler(handler)
    LOGGER.addHandler(StderrHandler(stream, formatter, threshold, live))
    LOGGER.setLevel(logging.DEBUG if live else threshold)
    LOGGER.propagate = False
    _state["format"] = log_format


def structured() -> bool:
    """Whether stderr carries JSON lines, so that nothing else may be written to it."""
    return _state["format"] == "json"
