"""``pipeline.interrupts``: SIGTERM as an exception, held during a block that must not be cut."""

import os
import signal
from collections.abc import Iterator

import pytest
from klrank.pipeline.errors import Interrupted
from klrank.runtime import interrupts


@pytest.fixture
def installed() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in interrupts.STOP_SIGNALS}
    interrupts.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    interrupts._stopping[0] = False


def test_signal_raises_interrupted_with_its_number(installed: None) -> None:
    with pytest.raises(Interrupted) as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # CPython runs the handler as kill returns
        raise AssertionError("the signal did not stop the code")
    assert stop.value.signum == signal.SIGTERM


def test_signal_inside_deferred_block_is_raised_after_it(installed: None) -> None:
    finished = []
    with pytest.raises(Interrupted) as stop:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("block")
    assert finished == ["block"]
    assert stop.value.signum == signal.SIGINT


def test_second_signal_does_not_interrupt_the_cleanup(installed: None) -> None:
    cleaned = []
    with pytest.raises(Interrupted):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the signal did not stop the code")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append("staging removed")
    assert cleaned == ["staging removed"]
