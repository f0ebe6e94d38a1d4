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
