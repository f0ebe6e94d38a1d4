"""The one module that touches the disk for data: scanning inputs and publishing outputs atomically.

A published directory is either the complete previous one or the complete new one: everything is
written into a hidden staging directory beside the target, ``_SUCCESS`` last, and the two are then
swapped with one ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it).
"""

import bisect
import ctypes
import datetime as dt
import glob
import hashlib
import itertools
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
SMALL_CHUNK_ROWS = 10_000  # a frame read with chunks smaller than this on average is rechunked
# Scans in one query (the streaming engine's cost grows with their square: 1,000 scans took
# seconds a query, 100 a few tenths of a second) before hive values are read from file paths.
MAX_SCANS = 64
_PATH = "__klrank_path"  # a scan's file paths, while hive values are read from them


@dataclass(frozen=True)
class ParquetFile:
    """One file of an input: its rows, where they start in the input, and its hive key values.

    ``schema`` is a digest of its columns and their types: consecutive files alike in it (and
    in their hive values) are read by one Polars scan.
    """

    path: str
    n_rows: int
    offset: int
    hive: dict[str, str]
    schema: str

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


Window = Callable[[int, int], pl.LazyFrame]  # (start, length) -> the query for those rows


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
        return _combine(_scans(files), self.path)

    def windows(self, columns: Sequence[str], files: Sequence[ParquetFile] | None = None) -> Window:
        """Queries of ``columns`` of rows ``[start, start + length)`` of ``files`` (default: all).

        Each window scans only the files that hold its rows, in the dtypes of the frame over all
        of ``files`` (:meth:`subset`), so reading an input a window at a time costs in all what
        reading it whole does, whatever its number of files. An input read into memory (no
        files) is sliced.
        """
        if not self.files:
            return self.frame.select(columns).slice
        chosen = self.files if files is None else tuple(files)
        whole = self.frame if files is None else self.subset(chosen)
        return _Windows(chosen, whole.collect_schema(), list(columns))


def _is_visible(path: Path, root: Path) -> bool:
    # Spark, Hive and Polars all skip files and folders whose names start with "." or "_".
    return not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


_Listed = tuple[
    str, tuple[str, ...]
]  # a file, and the folders between it and where hive keys start


def _list_files(path: str) -> list[_Listed]:
    """The Parquet files named by ``path``, in path order, with the folders hive keys are read in."""
    if _GLOB_CHARS & set(path) and not Path(path).exists():  # "run [1]/" is a folder's name
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
        root = Path(*parts[:fixed])
        matches = [Path(p) for p in sorted(glob.glob(path, recursive=True))]
        files = [
            p for p in matches if p.is_file() and p.suffix == ".parquet" and _is_visible(p, root)
        ]
        return [(str(p), p.parent.relative_to(root).parts) for p in files]
    target = Path(path)
    if target.is_dir():
        found: list[tuple[tuple[str, ...], str]] = []
        _walk(str(target), (), found)
        # The order of sorted(target.rglob(...)): Paths compare part by part.
        return [(file, parts[:-1]) for parts, file in sorted(found)]
    if target.is_file():
        return [(path, ())]
    raise UsageError(f"input path {path!r} does not exist")


def _walk(folder: str, parts: tuple[str, ...], found: list[tuple[tuple[str, ...], str]]) -> None:
    """Add the visible ``*.parquet`` files below ``folder`` (``parts`` below the root) to ``found``.

    What ``Path.rglob`` lists, with one ``scandir`` a folder and no ``stat`` a file: folders
    that are links are not followed, unreadable folders are skipped, and hidden files and
    folders (:func:`_is_visible`) are left out as they are met.
    """
    try:
        with os.scandir(folder) as scanned:
            entries = list(scanned)
    except PermissionError:
        return
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        child = entry.name if folder == "." else os.path.join(folder, entry.name)  # as Path does
        if entry.is_dir(follow_symlinks=False):
            _walk(child, (*parts, entry.name), found)
        elif entry.name.endswith(".parquet") and entry.is_file():
            found.append(((*parts, entry.name), child))


def _hive_values(folders: Sequence[str]) -> dict[str, str]:
    """The ``key=value`` folder names among ``folders``."""
    values = {}
    for part in folders:
        key, sep, value = part.partition("=")
        if sep and key:
            values[key] = unquote(value)
    return values


def _describe(file: str, folders: Sequence[str], offset: int) -> ParquetFile:
    try:
        metadata = pq.read_metadata(file)
        schema = metadata.schema.to_arrow_schema()
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
        raise UsageError(f"cannot read {file!r} as Parquet: {one_line(str(error))}") from None
    hive = _hive_values(folders)
    clash = sorted(set(hive) & set(metadata.schema.names))
    if clash:
        raise UsageError(f"{file!r} has columns {clash} that its folder names also set; keep one")
    # The fields with their metadata (Polars keeps an Enum's categories there), not the file's
    # own metadata (pandas records each file's index in it).
    fields = schema.remove_metadata().serialize().to_pybytes()
    digest = hashlib.blake2b(fields, digest_size=16).hexdigest()
    return ParquetFile(path=file, n_rows=metadata.num_rows, offset=offset, hive=hive, schema=digest)


def _runs(files: Sequence[ParquetFile]) -> list[list[ParquetFile]]:
    """``files`` cut where one Polars scan must end.

    That is at a change of columns or types, or at a gap in the input's rows (one row index
    counts through a scan), and at a change of hive values, unless that would make more than
    ``MAX_SCANS`` scans (a folder a day for years): then only where the hive keys change, and
    a scan reads the values from its files' paths.
    """
    by_values = _cut(files, lambda a, b: a.hive == b.hive)
    if len(by_values) <= MAX_SCANS:
        return by_values
    return _cut(files, lambda a, b: list(a.hive) == list(b.hive))


def _cut(
    files: Sequence[ParquetFile], same_hive: Callable[[ParquetFile, ParquetFile], bool]
) -> list[list[ParquetFile]]:
    runs: list[list[ParquetFile]] = []
    for file in files:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last.schema == file.schema
            and last.offset + last.n_rows == file.offset
            and same_hive(last, file)
        ):
            runs[-1].append(file)
        else:
            runs.append([file])
    return runs


def _scan(run: Sequence[ParquetFile], start: int = 0, length: int | None = None) -> pl.LazyFrame:
    """Rows ``[start, start + length)`` of one run (:func:`_runs`): one scan of all its files.

    A query has one scan per run, not per file: the streaming engine's cost grows with the
    square of the scans in a query (a thousand one-row files took seconds a query), and a slice
    of a union of scans reads every scan before it, where one scan skips whole files and row
    groups by their row counts.
    """
    varying = any(file.hive != run[0].hive for file in run)
    frame = pl.scan_parquet(
        [file.path for file in run],
        hive_partitioning=False,  # klrank reads the hive keys (_hive_values)
        glob=False,  # the paths are files: a "[" or "*" in a name is no pattern
        row_index_name=ROW,
        row_index_offset=run[0].offset,
        include_file_paths=_PATH if varying else None,
    )
    if start or length is not None:
        frame = frame.slice(start, length)
    frame = frame.with_columns(pl.col(ROW).cast(pl.Int64))
    if not varying:  # a literal: a filter on it can skip the whole scan
        return frame.with_columns(pl.lit(v, pl.String).alias(k) for k, v in run[0].hive.items())
    values = [
        pl.col(_PATH).replace_strict({f.path: f.hive[k] for f in run}, return_dtype=pl.String)
        for k in run[0].hive
    ]
    return frame.with_columns(v.alias(k) for v, k in zip(values, run[0].hive, strict=True)).drop(
        _PATH
    )


def _scans(files: Sequence[ParquetFile]) -> list[pl.LazyFrame]:
    return [_scan(run) for run in _runs(files)]


def _combine(frames: list[pl.LazyFrame], path: str) -> pl.LazyFrame:
    try:
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        frame.collect_schema()
    except pl.exceptions.PolarsError as error:
        raise UsageError(
            f"cannot combine the Parquet files under {path!r}: {one_line(str(error))}"
        ) from None
    return frame


class _Windows:
    """Windows of rows of some files, each a query over only the files it needs.

    Where the files differ in columns or types, a window is given ``schema``, that of the frame
    over all the files, so every window has its columns in the same order and dtypes (a file may
    lack a column, or hold a narrower type).
    """

    def __init__(self, files: Sequence[ParquetFile], schema: pl.Schema, columns: list[str]):
        self._files = [file for file in files if file.n_rows]  # the rest add no rows
        self._ends = list(itertools.accumulate(file.n_rows for file in self._files))
        self._schema, self._columns = schema, columns
        self._alike = len({(file.schema, tuple(file.hive)) for file in files}) == 1

    def __call__(self, start: int, length: int) -> pl.LazyFrame:
        """The query for rows ``[start, start + length)`` of the files."""
        first = bisect.bisect_right(self._ends, start)  # the first file ending after start
        last = bisect.bisect_left(self._ends, start + length) + 1  # past the file holding stop
        position = self._ends[first - 1] if first else 0  # where files[first] starts
        frames = []
        for run in _runs(self._files[first:last]):
            rows = sum(file.n_rows for file in run)
            skip = max(start - position, 0)
            take = min(start + length - position, rows) - skip
            if take > 0:
                frames.append(_scan(run, skip, take))
            position += rows
        if not self._alike or not frames:
            frames.insert(0, pl.LazyFrame(schema=self._schema))
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        return frame.select(self._columns)


def scan_parquet(path: str) -> ParquetInput:
    """Scan a Parquet file, a directory (recursively) or a glob, with hive keys read as strings.

    Every file's footer is read up front, so that a missing, empty or corrupt input is a usage
    error before any work starts, and the row counts for the manifest cost nothing. Files may
    differ in their columns (a column missing from a file reads as nulls there) and in float or
    integer widths (the wider one wins); the validation then judges the combined columns.
    """
    listed = _list_files(path)
    if not listed:
        raise UsageError(f"input path {path!r} matches no .parquet files")
    files, offset = [], 0
    for file, folders in listed:
        files.append(_describe(file, folders, offset))
        offset += files[-1].n_rows
    frame = _combine(_scans(files), path)
    return ParquetInput(path=path, files=tuple(files), n_rows=offset, frame=frame)


def in_memory(frame: pl.DataFrame, path: str) -> ParquetInput:
    """Rows already read (a partition of an input, with their ``ROW`` positions) as an input."""
    return ParquetInput(path=path, files=(), n_rows=frame.height, frame=frame.lazy())


def read_rows(
    source: str, files: Sequence[ParquetFile], columns: list[str], start: int, length: int
) -> pl.DataFrame:
    """Rows ``[start, start + length)`` of ``files`` read one after another.

    Of ``columns``, those the files have (hive keys too), and ``ROW``; in the dtypes of those
    files combined.

    Raises
    ------
    UsageError
        A file is damaged past its footer (the message names the input, ``source``, as
        :func:`collect` does).
    """
    schema = _combine(_scans(files), source).collect_schema()
    query = _Windows(files, schema, [*[c for c in columns if c in schema], ROW])(start, length)
    try:
        return _compacted(query.collect())
    except pl.exceptions.ComputeError as error:
        raise UsageError(
            f"cannot read the Parquet data of {source!r}: {one_line(str(error))}"
        ) from None


def _compacted(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` in one chunk a column if its chunks are small (rows read from many small files).

    A scan returns a chunk a file at least: 10,000 one-row files make 10,000 chunks, and every
    later operation pays for each (the checks and measures of such a batch took seconds instead
    of milliseconds). A batch of big files has a few large chunks, left as they are.
    """
    if frame.n_chunks() * SMALL_CHUNK_ROWS > frame.height and frame.n_chunks() > 1:
        return frame.rechunk()
    return frame


def collect(frame: pl.LazyFrame, source: ParquetInput) -> pl.DataFrame:
    """Read the columns selected from ``source``; a file damaged past its footer is a usage error."""
    try:
        return _compacted(frame.collect())
    except pl.exceptions.ComputeError as error:
        raise UsageError(
            f"cannot read the Parquet data of {source.path!r}: {one_line(str(error))}"
        ) from None


class Batches(Iterator[pl.DataFrame]):
    """Rows in batches of exactly ``size`` rows (the last may be shorter), read one ahead.

    ``window(start, size)`` is the query for one batch (:meth:`ParquetInput.windows`, or a lazy
    frame's ``slice``). Equal sizes let batches of different inputs in the same row order be
    paired one to one. Each batch is its own query, which reads only the files and row groups
    it needs: a streaming reader would decode ahead of a slower consumer and hold gigabytes.
    Each batch is read in a background thread, one ahead of the caller and no more; the first
    starts at once, so the first batches of all inputs load side by side while the caller checks
    the ids. Call :meth:`close` when done early: it drops the batch read ahead and ends the
    thread.
    """

    def __init__(self, window: Window, source: ParquetInput, size: int) -> None:
        self._window, self._source, self._size = window, source, size
        self._start = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klrank-read")
        self._ahead: Future[pl.DataFrame] | None = self._pool.submit(self._read, 0)

    def _read(self, start: int) -> pl.DataFrame:
        try:
            return _compacted(self._window(start, self._size).collect())
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


def batches(window: Window, source: ParquetInput, size: int) -> Batches:
    """Read rows in batches of ``size`` rows, starting now (see :class:`Batches`)."""
    return Batches(window, source, size)


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
    if path.is_symlink():  # write the file it names: replacing the link would lose it
        path = targets.real(path)
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
