"""The operating system's errors, raised as a StorageError that names the path and the cause."""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
from klrank.pipeline.errors import StorageError, storage_error

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_storage_error(error: BaseException, path: Path, doing: str = "write") -> StorageError | None:
    """``error`` as a :class:`StorageError` naming ``path``, if the operating system raised it.

    Polars reports an I/O error of its writers as a ``ComputeError`` whose message ends with
    ``(os error N)``; Python and pyarrow raise ``OSError``.
    """
    if isinstance(error, StorageError):
        return error
    match = _OS_ERROR.search(str(error))
    if match is not None and (not isinstance(error, OSError) or error.errno is None):
        # Polars' own message: "... (os error 30): <a shortened path>"; say it plainly.
        code = int(match.group(1))
        return storage_error(OSError(code, os.strerror(code), str(path)), doing)
    if isinstance(error, OSError):
        if error.filename is None:
            error = type(error)(error.errno, error.strerror or str(error), str(path))
        return storage_error(error, doing)
    return None


@contextmanager
def storage(path: Path, doing: str = "write") -> Iterator[None]:
    """Raise the operating system's errors in the block as a :class:`StorageError` on ``path``."""
    try:
        yield
    except (OSError, pl.exceptions.PolarsError) as error:
        converted = as_storage_error(error, path, doing)
        if converted is None:
            raise
        raise converted from None
