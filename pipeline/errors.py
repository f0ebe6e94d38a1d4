"""The errors klrank raises on purpose, each with the exit code the CLI ends with.

:class:`ExitCode` is the one table of klrank's exit codes; each error class names its code in
``exit_code`` (as click's ``ClickException.exit_code`` does), and the CLI exits with it.
"""

import enum
import errno
from typing import ClassVar

import polars as pl


class ExitCode(enum.IntEnum):
    """Every exit status of ``klrank``; a scheduler retries only what a retry can fix.

    The codes above 3 follow sysexits.h where one fits, and a stopping signal gives 128 + its
    number, as a shell reports it.
    """

    OK = 0
    """Success: the report is published (``run``), the inputs are valid (``validate``)."""
    INVALID_DATA = 1
    """The data failed validation; nothing is published. Retrying cannot help."""
    USAGE = 2
    """A bad option, path or config file. Retrying cannot help."""
    GATE_FAILED = 3
    """A gate failed; the report IS published. Someone should look at it."""
    ENGINE = 69
    """EX_UNAVAILABLE: the Ray engine failed (the cluster, not the data). Retry later."""
    INTERNAL = 70
    """EX_SOFTWARE: a bug in klrank. Retry (it may be transient) and report it."""
    STORAGE = 74
    """EX_IOERR: the machine refused an I/O step (no space, read-only, permission). Retry."""
    LOCK_BUSY = 75
    """EX_TEMPFAIL: another run holds the output partition's lock. Retry later."""
    SIGINT = 130
    """128 + SIGINT: stopped by Ctrl-C or SIGINT; temporary files removed. Retry."""
    SIGTERM = 143
    """128 + SIGTERM: stopped by SIGTERM (a scheduler's timeout); temporary files removed. Retry."""

    @classmethod
    def for_signal(cls, signum: int) -> "ExitCode":
        """The code of a run that signal ``signum`` stopped: 128 + ``signum``.

        >>> ExitCode.for_signal(15)
        <ExitCode.SIGTERM: 143>
        """
        return cls(128 + signum)


class KlrankError(Exception):
    """Base of every error klrank raises on purpose (anything else is a bug)."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL
    """A subclass without a code of its own is still not a crash, but no retry policy knows it."""


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

    @property
    def exit_code(self) -> ExitCode:
        """128 + the signal's number: :attr:`ExitCode.SIGINT` or :attr:`ExitCode.SIGTERM`."""
        return ExitCode.for_signal(self.signum)
