"""The one module that touches the disk for data: scanning inputs and publishing outputs atomically.

A published directory is either the complete previous one or the complete new one: everything is
written into a hidden staging directory beside the target, ``_SUCCESS`` last, and the two are then
swapped with one ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it).
"""

import ctypes
import datetime as dt
import glob
import json
import os
import queue
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import polars as pl
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from pipeline import interrupts, targets
from pipeline.errors import StorageError, UsageError, storage_error
from pipeline.targets import RUN_DATE_KEY as RUN_DATE_KEY
from pipeline.targets import STAGING_PREFIX as STAGING_PREFIX
from pipeline.targets import TEMPORARY_PREFIX
from pipeline.text import one_line

_GLOB_CHARS = frozenset("*?[")
ROW = "__klrank_row"  # 0-based position of a row in its input
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@dataclass(frozen=True)
class ParquetFile:
    """One file of an input: its rows, where they start in the input, and its hive key values."""

    path: str
    n_rows: int
    offset: int
    hive: dict[str, str]

    def constant(self, column: str) -> str | None:
        """The single value ``column`` holds in every row, if the hive path or statistics say so."""
        if column in self.hive:
            return self.hive[column]
        metadata = pq.read_metadata(self.path)
        names = metadata.schema.names
        if column not in names:
            return None
        index = names.index(column)
        values = set()
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(index).statistics
            if stats is None or not stats.has_min_max or stats.null_count or stats.min != stats.max:
                return None
            values.add(stats.min)
        return str(values.pop()) if len(values) == 1 else None


@dataclass(frozen=True)
class ParquetInput:
    """A scanned input: its files, their total rows, and a lazy frame over all of them.

    The frame carries ``ROW``, each row's 0-based position in the input (files in path order).
    """

    path: str
    files: tuple[ParquetFile, ...]
    n_rows: int
    frame: pl.LazyFrame

    def subset(self, files: Sequence[ParquetFile]) -> pl.LazyFrame:
        """A lazy frame over some of the files, with their ``ROW`` positions in the whole input."""
        return _combine([_scan(file) for file in files], self.path)


def _is_visible(path: Path, root: Path) -> bool:
    # Spark, Hive and Polars all skip files and folders whose names start with "." or "_".
    return not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def _list_files(path: str) -> tuple[list[str], Path | None]:
    """Return the Parquet files named by ``path`` and the folder hive keys are read below."""
    if _GLOB_CHARS & set(path) and not Path(path).exists():  # "run [1]/" is a folder's name
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
        root = Path(*parts[:fixed])
        matches = [Path(p) for p in sorted(glob.glob(path, recursive=True))]
        files = [
            p for p in matches if p.is_file() and p.suffix == ".parquet" and _is_visible(p, root)
        ]
        return [str(p) for p in files], root
    target = Path(path)
    if target.is_dir():
        files = [
            p for p in sorted(target.rglob("*.parquet")) if p.is_file() and _is_visible(p, target)
        ]
        return [str(p) for p in files], target
    if target.is_file():
        return [path], None
    raise UsageError(f"input path {path!r} does not exist")


def _hive_values(file: str, root: Path | None) -> dict[str, str]:
    """The ``key=value`` folder names between ``root`` and ``file``."""
    if root is None:
        return {}
    values = {}
    for part in Path(file).parent.relative_to(root).parts:
        key, sep, value = part.partition("=")
        if sep and key:
            values[key] = unquote(value)
    return values


def _describe(file: str, root: Path | None, offset: int) -> ParquetFile:
    try:
        metadata = pq.read_metadata(file)
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
        raise UsageError(f"cannot read {file!r} as Parquet: {one_line(str(error))}") from None
    hive = _hive_values(file, root)
    clash = sorted(set(hive) & set(metadata.schema.names))
    if clash:
        raise UsageError(f"{file!r} has columns {clash} that its folder names also set; keep one")
    return ParquetFile(path=file, n_rows=metadata.num_rows, offset=offset, hive=hive)


def _scan(file: ParquetFile) -> pl.LazyFrame:
    return (
        pl.scan_parquet(file.path, glob=False)  # a listed file: "[1]" in its name is no pattern
        .with_row_index(ROW, offset=file.offset)
        .with_columns(pl.col(ROW).cast(pl.Int64))
        .with_columns(pl.lit(v, pl.String).alias(k) for k, v in file.hive.items())
    )


def _combine(frames: list[pl.LazyFrame], path: str) -> pl.LazyFrame:
    try:
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        frame.collect_schema()
    except pl.exceptions.PolarsError as error:
        raise UsageError(
            f"cannot combine the Parquet files under {path!r}: {one_line(str(error))}"
        ) from None
    return frame


def scan_parquet(path: str) -> ParquetInput:
    """Scan a Parquet file, a directory (recursively) or a glob, with hive keys read as strings.

    Every file's footer is read up front, so that a missing, empty or corrupt input is a usage
    error before any work starts, and the row counts for the manifest cost nothing. Files may
    differ in their columns (a column missing from a file reads as nulls there) and in float or
    integer widths (the wider one wins); the validation then judges the combined columns.
    """
    paths, root = _list_files(path)
    if not paths:
        raise UsageError(f"input path {path!r} matches no .parquet files")
    files, offset = [], 0
    for file in paths:
        files.append(_describe(file, root, offset))
        offset += files[-1].n_rows
    frame = _combine([_scan(file) for file in files], path)
    return ParquetInput(path=path, files=tuple(files), n_rows=offset, frame=frame)


def in_memory(frame: pl.DataFrame, path: str) -> ParquetInput:
    """Rows already read (a partition of an input, with their ``ROW`` positions) as an input."""
    return ParquetInput(path=path, files=(), n_rows=frame.height, frame=frame.lazy())


def read_rows(
    source: str, file: ParquetFile, columns: list[str], start: int, length: int
) -> pl.DataFrame:
    """``length`` rows of ``file`` from its row ``start``: ``columns`` (hive keys too) and ``ROW``.

    Raises
    ------
    UsageError
        The file is damaged past its footer (the message names the input, ``source``, as
        :func:`collect` does).
    """
    frame = _scan(file).slice(start, length)
    present = frame.collect_schema().names()
    try:
        return frame.select(*[c for c in columns if c in present], ROW).collect()
    except pl.exceptions.ComputeError as error:
        raise UsageError(
            f"cannot read the Parquet data of {source!r}: {one_line(str(error))}"
        ) from None


def collect(frame: pl.LazyFrame, source: ParquetInput) -> pl.DataFrame:
    """Read the columns selected from ``source``; a file damaged past its footer is a usage error."""
    try:
        return frame.collect()
    except pl.exceptions.ComputeError as error:
        raise UsageError(
            f"cannot read the Parquet data of {source.path!r}: {one_line(str(error))}"
        ) from None


class Batches(Iterator[pl.DataFrame]):
    """``frame`` in batches of exactly ``size`` rows (the last may be shorter), read one ahead.

    Equal sizes let batches of different inputs in the same row order be paired one to one.
    Each batch is its own sliced query, which reads only the row groups it needs: a streaming
    reader would decode ahead of a slower consumer and hold gigabytes. Each batch is read in a
    background thread, one ahead of the caller and no more; the first starts at once, so the
    first batches of all inputs load side by side while the caller checks the ids. Call
    :meth:`close` when done early: it drops the batch read ahead and ends the thread.
    """

    def __init__(self, frame: pl.LazyFrame, source: ParquetInput, size: int) -> None:
        self._frame, self._source, self._size = frame, source, size
        self._start = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klrank-read")
        self._ahead: Future[pl.DataFrame] | None = self._pool.submit(self._read, 0)

    def _read(self, start: int) -> pl.DataFrame:
        try:
            return self._frame.slice(start, self._size).collect()
        except pl.exceptions.ComputeError as error:
            path = self._source.path
            raise UsageError(
                f"cannot read the Parquet data of {path!r}: {one_line(str(error))}"
            ) from None

    def __next__(self) -> pl.DataFrame:
        if self._ahead is None:
            raise StopIteration
        try:
            batch = self._ahead.result()
        except BaseException:
            self.close()
            raise
        self._start += self._size
        if batch.height == self._size:
            self._ahead = self._pool.submit(self._read, self._start)
        else:
            self.close()
        if batch.height == 0:
            raise StopIteration
        return batch

    def close(self) -> None:
        """Stop reading: the batch read ahead, if any, is dropped and the thread ends."""
        self._ahead = None
        self._pool.shutdown(wait=False, cancel_futures=True)


def batches(frame: pl.LazyFrame, source: ParquetInput, size: int) -> Batches:
    """Read ``frame`` in batches of ``size`` rows, starting now (see :class:`Batches`)."""
    return Batches(frame, source, size)


class RowsWriter:
    """Appends frames of one schema to a Parquet file, as Polars writes it, in a background thread.

    Polars' streaming Parquet sink reads the frames from a queue through an IO source
    (``register_io_source``), so the file is one Parquet file however many frames come, and the
    encoding overlaps with the computation of the next batch on all cores. It took a third less
    CPU than pyarrow's ``ParquetWriter`` for the same rows, with the same Arrow schema and
    encodings (``benchmarks/cpu_breakdown.py``; BENCHMARKS.md). Polars 2.1 marks IO sources
    unstable: every CLI test writes ``rows.parquet`` through this class, so a change of that
    API fails CI, not a night. At most ``pending`` frames wait, so memory stays bounded.

    What the sink fails on is raised in the caller's thread. A failure at the start (a missing
    folder) is raised by the next ``write``; one while writing (a full disk) only by ``close``,
    as Polars reports it when the sink ends. The file is not synced here: :func:`publish`
    syncs every file it publishes.
    """

    def __init__(self, path: Path, pending: int = 2) -> None:
        self._path = path
        self._queue: queue.Queue[pl.DataFrame | None] = queue.Queue(maxsize=pending)  # None: end
        self._sink: threading.Thread | None = None  # started by the first frame (its schema)
        self._error: BaseException | None = None  # what stopped the sink
        self._sources = 0  # times Polars asked for the frames: once, or they would be split
        self._closed = False

    def _frames(
        self,
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        # A sink of the whole frame asks once for every column and row; anything else would be
        # a change in Polars that this writer must not silently follow.
        self._sources += 1
        if self._sources > 1 or predicate is not None or n_rows is not None:
            raise RuntimeError(
                f"rows writer: Polars asked for the frames again ({self._sources}), or with a "
                f"filter ({predicate}) or a row limit ({n_rows})"
            )
        while (frame := self._queue.get()) is not None:
            yield frame if with_columns is None else frame.select(with_columns)

    def _write_all(self, schema: pl.Schema) -> None:
        try:
            frames = register_io_source(self._frames, schema=schema, validate_schema=True)
            frames.sink_parquet(self._path, compression="snappy")
        except BaseException as error:  # raised in the caller's thread by write or close
            self._error = as_storage_error(error, self._path) or error

    def _put(self, item: pl.DataFrame | None) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self._raise_if_stopped()  # a stopped sink takes nothing more

    def _raise_if_stopped(self) -> None:
        if self._sink is not None and not self._sink.is_alive():
            if self._error is not None:
                raise self._error
            raise RuntimeError(f"the writer of {str(self._path)!r} stopped early")

    def write(self, frame: pl.DataFrame) -> None:
        """Queue ``frame`` to be appended (raises what stopped the writer, if it stopped)."""
        if self._closed:
            raise RuntimeError(f"the writer of {str(self._path)!r} is closed")
        if self._sink is None:
            self._sink = threading.Thread(
                target=self._write_all, args=(frame.schema,), name="klrank-rows", daemon=True
            )
            self._sink.start()
        self._put(frame)

    def close(self) -> None:
        """Wait for every queued frame and finish the file (none is made if nothing was written).

        A stop signal arriving meanwhile is held until the sink has ended (the caller may remove
        the folder next), then raised.
        """
        self._closed = True
        if self._sink is None:
            return
        with interrupts.deferred():
            if self._sink.is_alive():
                self._put(None)
                self._sink.join()
        if self._error is not None:
            raise self._error
        if not self._queue.empty():
            raise RuntimeError(f"the writer of {str(self._path)!r} ended before every frame")


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


def remove_file(path: Path) -> None:
    """Delete a file if it exists."""
    path.unlink(missing_ok=True)


def write_parquet(
    frame: pl.DataFrame, path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write one Parquet file, with optional key-value metadata in its footer."""
    with storage(path):
        frame.write_parquet(path, metadata=dict(metadata) if metadata else None)


def write_text(text: str, path: Path) -> None:
    """Write a UTF-8 text file."""
    with storage(path):
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


def publish(target: Path, out: Path, write: Callable[[Path], None]) -> None:
    """Fill a staging directory with ``write``, add ``_SUCCESS``, and swap it in for ``target``.

    ``target`` is ``out`` or a folder in it; the staging directory is made in ``out``'s parent,
    outside the reports tree, so that no reader's glob under ``out`` ever lists it (see
    :mod:`pipeline.targets`). If ``write`` raises, or the process dies, ``target`` is untouched;
    the staging directory is removed on an exception, and the next run of the same target removes
    one that a SIGKILL left. Call it holding ``target``'s lock.

    Raises
    ------
    StorageError
        The operating system refused a step (no space, read-only, permission); ``target`` is
        untouched.
    """
    with storage(out.parent, "create a staging folder in"):
        target.parent.mkdir(parents=True, exist_ok=True)
        targets.remove_stale_staging(target, out)
        staging = (
            out.parent / f"{STAGING_PREFIX}{targets.staging_key(target, out)}-{uuid.uuid4().hex}"
        )
        staging.mkdir()
    try:
        write(staging)
        write_text("", staging / "_SUCCESS")
        with storage(staging, "sync"):
            for file in staging.rglob("*"):  # a folder too: the Ray engine's rows.parquet/
                if file.is_dir():
                    _fsync_dir(file)
                    continue
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        # A SIGTERM between the two renames of the fallback would leave no report at all.
        with interrupts.deferred(), storage(target, "publish"):
            if not target.exists():
                staging.rename(target)
            elif _exchange(staging, target):
                shutil.rmtree(staging)  # now holds the previous report
            else:
                retired = staging.with_name(f"{staging.name[:-32]}{uuid.uuid4().hex}")
                target.rename(retired)
                staging.rename(target)
                shutil.rmtree(retired)
            _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _discard(path: Path) -> None:
    # On a read-only file system even removing a file that was never made fails (EROFS).
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_atomically(
    path: Path, write: Callable[[Path], None], optional: bool = False, make_parent: bool = True
) -> None:
    """Write one file through a temporary sibling and an atomic rename.

    With ``optional``, a ``write`` that made no file (a writer given no rows) makes none; without
    ``make_parent``, a missing folder is an error (FileNotFoundError) instead of being made.

    Raises
    ------
    StorageError
        The operating system refused a step: ``path`` is a folder, or no space, read-only,
        permission, a name too long.
    """
    with storage(path):
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, os.strerror(21), str(path))
        if path.exists() and not path.is_file():  # /dev/null, a FIFO: write to it, never replace it
            write(path)
            return
        temporary = path.parent / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
        try:
            write(temporary)
            if optional and not temporary.exists():
                return
            os.replace(temporary, path)
        except StorageError as error:  # name the file the user knows, not the temporary one
            _discard(temporary)
            raise StorageError(str(error).replace(str(temporary), str(path)), str(path)) from None
        except BaseException:
            _discard(temporary)
            raise


_RUN_DATE_FOLDER = re.compile(rf"{RUN_DATE_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})")


def run_partitions(root: Path, report_file: str) -> list[tuple[dt.date, Path]]:
    """The ``root/run_date=YYYY-MM-DD/`` folders holding ``report_file``, oldest first.

    Folders whose names start with ``.`` or ``_`` (staging folders, failure records) and
    folders that are not a ``run_date=`` partition with an ISO date are skipped.
    """
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith((".", "_")):
            continue
        # Only YYYY-MM-DD: Python's fromisoformat also reads 20260205 and 2026-W06-5.
        match = _RUN_DATE_FOLDER.fullmatch(unquote(folder.name))
        if match is None or not (folder / report_file).is_file():
            continue
        try:
            found.append((dt.date.fromisoformat(match.group(1)), folder))
        except ValueError:  # 2026-02-30
            continue
    return sorted(found)


def read_report(path: Path, columns: Sequence[str]) -> tuple[pl.DataFrame, dict[str, str]]:
    """Read ``columns`` of a published report and its footer metadata.

    Raises
    ------
    UsageError
        The file is missing, not Parquet, or lacks one of ``columns``.
    """
    try:
        footer = pq.read_metadata(path)
        metadata = {k.decode(): v.decode() for k, v in (footer.metadata or {}).items()}
        missing = [c for c in columns if c not in footer.schema.to_arrow_schema().names]
        if missing:  # say so plainly, rather than with Polars' query plan
            raise UsageError(
                f"cannot read the report {str(path)!r}: no column {missing[0]!r} (is it a "
                "klrank report.parquet?)"
            )
        frame = pl.read_parquet(path, columns=list(columns), glob=False)
    except (OSError, ValueError, pl.exceptions.PolarsError) as error:
        raise UsageError(f"cannot read the report {str(path)!r}: {one_line(str(error))}") from None
    return frame, metadata
