"""The one module that touches the disk for data: scanning inputs and publishing outputs atomically.

A published directory is either the complete previous one or the complete new one: everything is
written into a hidden staging directory beside the target, ``_SUCCESS`` last, and the two are then
swapped with one ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it).
"""

import ctypes
import glob
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.errors import UsageError

_GLOB_CHARS = frozenset("*?[")
STAGING_PREFIX = ".klrank-staging-"


@dataclass(frozen=True)
class ParquetInput:
    """A scanned input: the lazy frame, the files behind it and their row count from the footers."""

    path: str
    files: tuple[str, ...]
    n_rows: int
    frame: pl.LazyFrame


def _is_visible(path: Path, root: Path) -> bool:
    # Spark, Hive and Polars all skip files and folders whose names start with "." or "_".
    return not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def _list_files(path: str) -> tuple[list[str], bool]:
    """Return the Parquet files named by ``path`` and whether they may carry hive keys."""
    if _GLOB_CHARS & set(path):
        return sorted(glob.glob(path, recursive=True)), True
    target = Path(path)
    if target.is_dir():
        files = [
            p for p in sorted(target.rglob("*.parquet")) if p.is_file() and _is_visible(p, target)
        ]
        return [str(p) for p in files], True
    if target.is_file():
        return [path], False
    raise UsageError(f"input path {path!r} does not exist")


def _hive_keys(files: list[str]) -> list[str]:
    keys: dict[str, None] = {}
    for file in files:
        for part in Path(file).parent.parts:
            key, sep, _ = part.partition("=")
            if sep and key:
                keys[key] = None
    return list(keys)


def scan_parquet(path: str) -> ParquetInput:
    """Scan a Parquet file, a directory (recursively) or a glob, with hive keys read as strings.

    Every file's footer is read up front, so that a missing, empty or corrupt input is a usage
    error before any work starts, and the row counts for the manifest cost nothing.
    """
    files, may_have_hive_keys = _list_files(path)
    if not files:
        raise UsageError(f"input path {path!r} matches no .parquet files")
    n_rows = 0
    for file in files:
        try:
            n_rows += pq.read_metadata(file).num_rows
        except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
            raise UsageError(f"cannot read {file!r} as Parquet: {error}") from None
    keys = _hive_keys(files) if may_have_hive_keys else []
    frame = pl.scan_parquet(
        files,
        hive_partitioning=bool(keys),
        hive_schema=dict.fromkeys(keys, pl.String) or None,
    )
    try:
        frame.collect_schema()
    except pl.exceptions.PolarsError as error:
        raise UsageError(f"cannot read the Parquet files under {path!r}: {error}") from None
    return ParquetInput(path=path, files=tuple(files), n_rows=n_rows, frame=frame)


def write_parquet(
    frame: pl.DataFrame, path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write one Parquet file, with optional key-value metadata in its footer."""
    frame.write_parquet(path, metadata=dict(metadata) if metadata else None)


def write_text(text: str, path: Path) -> None:
    """Write a UTF-8 text file."""
    path.write_text(text, encoding="utf-8")


def write_json(document: Mapping[str, Any], path: Path) -> None:
    """Write a JSON document, keys in insertion order, with a trailing newline."""
    write_text(json.dumps(document, indent=2, default=str) + "\n", path)


def read_parquet_metadata(path: Path) -> dict[str, str]:
    """Return the key-value metadata stored in a Parquet file's footer."""
    raw = pq.read_metadata(path).metadata or {}
    return {key.decode(): value.decode() for key, value in raw.items()}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step; False where the kernel or libc cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(result == 0)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a staging directory with ``write``, add ``_SUCCESS``, and swap it in for ``target``.

    If ``write`` raises, or the process dies, ``target`` is untouched; the staging directory is
    removed on an exception (a killed run leaves a hidden ``.klrank-staging-*`` folder that no
    Parquet reader lists).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f"{STAGING_PREFIX}{target.name}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write(staging)
        write_text("", staging / "_SUCCESS")
        for file in staging.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if not target.exists():
            staging.rename(target)
        elif _exchange(staging, target):
            shutil.rmtree(staging)  # now holds the previous report
        else:
            retired = target.parent / f"{STAGING_PREFIX}{target.name}-{uuid.uuid4().hex}-old"
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write one file through a temporary sibling and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
