"""``pipeline.interrupts``: SIGTERM as an exception, held during a block that must not be cut."""

import signal
import threading
from collections.abc import Iterator

import pytest
from klrank.pipeline.errors import Interrupted
from klrank.runtime import interrupts


def _signal(signum: int) -> None:
    """Send ``signum`` to the main thread, whose handler runs as this returns.

    ``os.kill`` of the process lets the kernel pick any thread (Polars' pool, a reader a test
    left behind), and CPython then runs the handler when the main thread next checks: in one
    full run the block's test failed (no Interrupted), as a handler run after the block would.
    """
    signal.pthread_kill(threading.main_thread().ident or 0, signum)


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
        _signal(signal.SIGTERM)  # CPython runs the handler as the call returns
        raise AssertionError("the signal did not stop the code")
    assert stop.value.signum == signal.SIGTERM


def test_signal_inside_deferred_block_is_raised_after_it(installed: None) -> None:
    finished = []
    with pytest.raises(Interrupted) as stop:
        with interrupts.deferred():
            _signal(signal.SIGINT)
            finished.append("block")
    assert finished == ["block"]
    assert stop.value.signum == signal.SIGINT


def test_second_signal_does_not_interrupt_the_cleanup(installed: None) -> None:
    cleaned = []
    with pytest.raises(Interrupted):
        try:
            _signal(signal.SIGTERM)
            raise AssertionError("the signal did not stop the code")
        finally:
            _signal(signal.SIGTERM)
            cleaned.append("staging removed")
    assert cleaned == ["staging removed"]
