"""One run at a time per output partition: an exclusive ``flock`` on a hidden file beside it.

A run without ``--run-date`` replaces the whole ``--out`` tree, so the tree has a lock too, the
one beside ``OUT`` (:func:`run_lock`): an undated run holds it exclusively, a dated run holds it
shared, beside its own partition's. Dated runs of different nights still run side by side, and
an undated run and a dated one on the same ``--out`` exclude each other.

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

from klrank.pipeline.errors import LockBusyError, storage_error
from klrank.runtime import events

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
def partition_lock(target: Path, timeout: float, *, shared: bool = False) -> Iterator[Path]:
    """Hold the lock of ``target`` for the block, waiting up to ``timeout`` seconds for it.

    With ``shared``, other shared holders are let in; only an exclusive holder excludes them.

    Raises
    ------
    LockBusyError
        Another process still holds the lock after ``timeout`` seconds (0: do not wait).
    StorageError
        The lock file cannot be created (a read-only or missing output location, a name too long).
    """
    path = lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise storage_error(error, "create the lock file") from None
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
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


@contextmanager
def run_lock(out: Path, target: Path, timeout: float) -> Iterator[None]:
    """Hold what a run publishing ``target`` under ``out`` needs, within one ``timeout``.

    ``target`` is ``out`` itself (an undated run: the tree's lock, exclusively) or a partition in
    it (the tree's lock shared, then the partition's exclusively; always in this order, so two
    runs never wait for each other in a circle).
    """
    deadline = time.monotonic() + timeout
    if target == out:
        with partition_lock(out, timeout):
            yield
        return
    with partition_lock(out, timeout, shared=True):
        with partition_lock(target, max(0.0, deadline - time.monotonic())):
            yield
