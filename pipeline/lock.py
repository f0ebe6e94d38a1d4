"""One run at a time per output partition: an exclusive ``flock`` on a hidden file beside it.

The lock file is ``.<partition>.klrank.lock`` next to the published folder (for
``OUT/run_date=2026-01-02`` it is ``OUT/.run_date=2026-01-02.klrank.lock``): never inside what
is published, which is swapped out whole, and hidden, so Parquet readers skip it. The kernel
drops a ``flock`` when its holder exits in any way, SIGKILL included, so a lock can never be
left stuck by a dead run; the empty file itself stays (deleting a lock file others may have
opened would let two runs hold "the" lock at once).
"""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import events
from pipeline.errors import LockBusyError, UsageError

LOCK_SUFFIX = ".klrank.lock"
POLL_S = 0.1  # how often a waiting run retries


def lock_path(target: Path) -> Path:
    """The lock file of the partition published at ``target``."""
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _holder(fd: int) -> str:
    """The pid holding a ``flock`` on the file open as ``fd``, from /proc/locks ('' if unknown).

    The file itself stays empty: what it holds would change with every run, and it sits beside
    the published partition.
    """
    info = os.fstat(fd)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                if "FLOCK" in fields and inode in fields:
                    return fields[fields.index(inode) - 1]
    except OSError:
        pass
    return ""


@contextmanager
def partition_lock(target: Path, timeout: float) -> Iterator[Path]:
    """Hold the lock of ``target`` for the block, waiting up to ``timeout`` seconds for it.

    Raises
    ------
    LockBusyError
        Another process still holds the lock after ``timeout`` seconds (0: do not wait).
    UsageError
        The lock file cannot be created (a read-only or missing output location).
    """
    path = lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise UsageError(f"cannot create the lock file {str(path)!r}: {error.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = _holder(fd)
                    raise LockBusyError(
                        f"another run{f' (pid {holder})' if holder else ''} is publishing "
                        f"{str(target)!r}: its lock {str(path)!r} was still held after "
                        f"{timeout:g} s (--lock-timeout); retry later"
                    ) from None
                if not waited:
                    waited = True
                    events.emit(
                        "lock.waiting", lock=str(path), holder=_holder(fd), timeout_s=timeout
                    )
                time.sleep(min(POLL_S, remaining))
        events.emit("lock.acquired", lock=str(path), waited=waited)
        yield path
    finally:
        os.close(fd)  # releases the lock
