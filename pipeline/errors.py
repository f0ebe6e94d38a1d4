"""The errors klrank raises on purpose; the CLI maps each class to one exit code."""

import errno

import polars as pl


class KlrankError(Exception):
    """Base of every error klrank raises on purpose (anything else is a bug)."""


class UsageError(KlrankError):
    """The command cannot run as asked: a bad option, a missing path, a file that is not Parquet."""


class InvalidDataError(KlrankError):
    """The inputs were read but broke the input contract; ``failures`` holds every failing case."""

    def __init__(self, message: str, failures: pl.DataFrame) -> None:
        super().__init__(message)
        self.failures = failures


class LockBusyError(KlrankError):
    """Another run holds the lock of the same output partition, past ``--lock-timeout``."""


class StorageError(KlrankError):
    """The machine, not the data or the command: no space, read-only, no permission, a name too long.

    Also a path that is a folder where a file is needed, or a file where a folder is. The message
    names the path and the cause, as the operating system gave it.
    """

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


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped the run; a BaseException, so that no ``except Exception`` eats it.

    Cleanup (``finally`` blocks, the staging folder) runs as the exception unwinds.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
