"""SIGTERM and SIGINT as an exception, so that a stopped run unwinds through its cleanup.

A scheduler stops a task with SIGTERM (Airflow's timeout, ``kill``) or SIGINT (Ctrl-C). Python's
default for SIGTERM ends the process on the spot, leaving the staging folder and any temporary
file behind; with :func:`install`, either signal raises :class:`~pipeline.errors.Interrupted` in
the main thread instead, and every ``finally`` and ``except BaseException`` cleanup runs.

The few steps that swap a finished report in must not be cut in half, so they run inside
:func:`deferred`: a signal that arrives there is held and raised as soon as the block ends.
"""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from klrank.pipeline.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_depth = 0  # nesting depth of deferred() blocks
_held: list[int] = []  # signals that arrived inside one
_stopping = [False]  # Interrupted has been raised: the run is unwinding


def _raise(signum: int, frame: FrameType | None) -> None:
    if _stopping[0]:
        return  # a second signal (Ctrl-C twice, a retried kill) must not cut the cleanup short
    if _depth:
        _held.append(signum)
        return
    _stopping[0] = True
    raise Interrupted(signum)


def install() -> None:
    """Raise :class:`Interrupted` on SIGTERM and SIGINT (call once, from the main thread)."""
    for signum in STOP_SIGNALS:
        # A signal ignored from the start stays ignored (a shell's background job, nohup).
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise)


def ignore() -> None:
    """Ignore SIGTERM and SIGINT from now on: the outcome is decided and the process is exiting.

    Python restores the default handlers while it shuts down (thread pools, modules), and the
    default for SIGTERM would then end a finished run with -15 instead of its exit code.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block has finished, then raise the first one held."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _held:
        signum = _held[0]
        _held.clear()
        _stopping[0] = True
        raise Interrupted(signum)
