"""The errors klrank raises on purpose; the CLI maps each class to one exit code."""

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


class EngineError(KlrankError):
    """The distributed engine failed: its cluster was unreachable or a task kept failing."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped the run; a BaseException, so that no ``except Exception`` eats it.

    Cleanup (``finally`` blocks, the staging folder) runs as the exception unwinds.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
