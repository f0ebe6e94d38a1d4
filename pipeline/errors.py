"""The errors klrank raises on purpose; the CLI maps each class to one exit code."""

import enum
import errno
from typing import ClassVar

import polars as pl


class ExitCode(enum.IntEnum):
    """The exit codes of ``klrank``: the one table of them (sysexits.h where one fits)."""

    OK = 0
    INVALID_DATA = 1  # the data broke the input contract: fix the data, do not retry
    USAGE = 2  # the command cannot run as asked: fix the command
    GATE_FAILED = 3  # published, but a quality gate failed
    ENGINE = 69  # EX_UNAVAILABLE: the cluster, not the data or the command
    INTERNAL = 70  # EX_SOFTWARE: a bug in klrank
    STORAGE = 74  # EX_IOERR: the machine (disk, permissions), not the data or a bug
    LOCK_BUSY = 75  # EX_TEMPFAIL: another run held the partition's lock
    SIGNAL_BASE = 128  # + the signal's number, as a shell reports a process a signal ended


class KlrankError(Exception):
    """Base of every error klrank raises on purpose (anything else is a bug)."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL


class UsageError(KlrankError):
    """The command cannot run as asked: a bad option, a missing path, a file that is not Parquet."""

    exit_code = ExitCode.USAGE


class InvalidDataError(KlrankError):
    """The inputs were read but broke the input contract; ``failures`` holds every failing case."""

    exit_code = ExitCode.INVALID_DATA

    def __init__(self, message: str, failures: pl.DataFrame) -> None:
        super().__init__(message)
        self.failures = failures


class LockBusyError(KlrankError):
    """Another run holds the lock of the same output partition, past ``--lock-timeout``."""

    exit_code = ExitCode.LOCK_BUSY


class StorageError(KlrankError):
    """The machine, not the data or the command: no space, read-only, no permission, a name too long.

    Also a path that is a folder where a file is needed, or a file where a folder is. The message
    names the path and the cause, as the operating system gave it.
    """

    exit_code = ExitCode.STORAGE

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def storage_error(error: OSError, doing: str = "write") -> StorageError:
    """A :class:`StorageError` naming the path and the cause of ``error``.

    >>> str(storage_error(OSError(28, "No space left on device", "/out/report.parquet")))
    "cannot write '/out/report.parquet': No space left on device (ENOSPC)"
    """
    code = errno.errorcode.get(error.errno or 0)
    cause = error.strerror or str(error)
    where = f" {str(error.filename)!r}" if error.filename is not None else ""
    return StorageError(
        f"cannot {doing}{where}: {cause}{f' ({code})' if code else ''}",
        None if error.filename is None else str(error.filename),
    )


class EngineError(KlrankError):
    """The distributed engine failed: its cluster was unreachable or a task kept failing."""

    exit_code = ExitCode.ENGINE


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped the run; a BaseException, so that no ``except Exception`` eats it.

    Cleanup (``finally`` blocks, the staging folder) runs as the exception unwinds.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
