"""``jobs.logs``: events formatted as text or JSON lines, and progress only on a terminal."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
from klrank.runtime import events, logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    yield
    for handler in list(events.LOGGER.handlers):
        events.LOGGER.removeHandler(handler)
    events.LOGGER.setLevel(logging.NOTSET)
    events.LOGGER.propagate = True
    logs._state["format"] = "text"


def test_json_lines_have_timestamp_level_event_then_fields() -> None:
    stream = io.StringIO()
    logs.configure("json", quiet=False, stream=stream)
    events.emit("inputs.scanned", rows=3, path="a b")
    events.emit("event", level="shadowed")  # a field never overwrites the core keys
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == ["timestamp", "level", "event", "rows", "path"]
    assert first["event"] == "inputs.scanned" and first["rows"] == 3
    assert second["level"] == "info"
    assert logs.structured()


def test_text_lines_quote_values_with_spaces() -> None:
    stream = io.StringIO()
    logs.configure("text", quiet=False, stream=stream)
    events.emit("published", target="out dir", seconds=1.5)
    assert stream.getvalue().endswith(' info    published target="out dir" seconds=1.5\n')
    assert not logs.structured()


def test_text_lines_quote_values_with_control_characters() -> None:
    # Without a space, such a value was written bare: ESC reached the terminal, U+2028 split the
    # line for readers that honour it.
    stream = io.StringIO()
    logs.configure("text", quiet=False, stream=stream)
    events.emit("published", target="out\x1b[2J", other="a\u2028b", plain="x/y")
    assert stream.getvalue().endswith(
        ' info    published target="out\\u001b[2J" other="a\\u2028b" plain=x/y\n'
    )


def test_quiet_keeps_warnings_and_errors() -> None:
    stream = io.StringIO()
    logs.configure("text", quiet=True, stream=stream)
    events.emit("published")
    events.emit("validation.failed", logging.ERROR, checks=["x"])
    (line,) = stream.getvalue().splitlines()
    assert "validation.failed" in line


def test_progress_only_on_a_terminal_and_cleared_before_a_line() -> None:
    piped, terminal = io.StringIO(), Terminal()
    logs.configure("text", quiet=False, stream=piped)
    events.progress("batches", 1, 2)
    assert piped.getvalue() == ""
    logs.configure("text", quiet=False, stream=terminal)
    events.progress("batches", 1, 2)
    events.emit("note")
    events.progress("batches", 2, 2)
    shown = terminal.getvalue()
    assert shown.startswith("\r\x1b[Kklrank: batches 1/2 (50%)\r\x1b[K")
    assert shown.endswith("\r\x1b[Kklrank: batches 2/2 (100%)\n")
