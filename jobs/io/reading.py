"""Reading Parquet inputs: listing files, scanning them, and reading rows in batches in the background."""

import bisect
import dataclasses
import datetime as dt
import glob
import hashlib
import itertools
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from klrank.io import storage
from klrank.pipeline.errors import StorageError, UsageError
from klrank.pipeline.layout import ROW
from klrank.pipeline.text import one_line
from klrank.schemas.outputs import RUN_DATE_KEY

_GLOB_CHARS = frozenset("*?[")


SMALL_CHUNK_ROWS = 10_000  # a frame read with chunks smaller than this on average is rechunked


# Scans in one query (the streaming engine's cost grows with their square: 1,000 scans took
# seconds a query, 100 a few tenths of a second) before hive values are read from file paths.
MAX_SCANS = 64


REMOTE_FOOTERS = 16  # footers of an object-store input read at a time

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
    row_groups: tuple[int, ...] = ()  # the rows of each of its row groups
    # A local file's size, modification and change times (ns) before its footer was read: a read
    # that finds others refuses the file, which changed since the scan (:func:`_check_file`).
    stamp: tuple[int, ...] | None = None

    def constant(self, column: str) -> str | None:
        """The single value ``column`` holds in every row, if the hive path or statistics say so.

        Raises
        ------
        UsageError
            The file changed since the scan, or is gone (:func:`_check_file`): its footer is
            read again here, after the scan.
        """
        if column in self.hive:
            return self.hive[column]
        try:
            _check_file(self)
            metadata = storage.read_metadata(self.path)
        except (pl.exceptions.ComputeError, OSError, ValueError) as error:
            if storage.is_remote(self.path) and isinstance(error, OSError):
                if not isinstance(error, FileNotFoundError):  # as in the scan (_describe)
                    raise StorageError(
                        f"cannot read {self.path!r}: {one_line(str(error))}"
                    ) from None
            raise UsageError(f"cannot read {self.path!r}: {one_line(str(error))}") from None
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

# What Polars raises reading a file damaged past its footer, or changed since the scan: a column
# gone or retyped, the file removed. Each becomes a usage error naming the input.
READ_ERRORS = (
    pl.exceptions.ComputeError,
    pl.exceptions.ColumnNotFoundError,
    pl.exceptions.SchemaError,
    FileNotFoundError,
)


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
    """The Parquet files named by ``path``, in path order, with the folders hive keys are read in.

    ``path`` is local, a ``file://`` URL (read as the local path it names), or an object-store
    URL, listed by :func:`klrank.io.storage.list_files` by the same rules.
    """
    if storage.is_remote(path):
        return storage.list_files(path)
    if storage.scheme(path) == "file":
        return _list_files(storage.local_path(path))
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


def _schema_digest(schema: pa.Schema) -> str:
    """A digest of a file's columns and their types (:attr:`ParquetFile.schema`)."""
    # The fields with their metadata (Polars keeps an Enum's categories there), not the file's
    # own metadata (pandas records each file's index in it).
    fields = schema.remove_metadata().serialize().to_pybytes()
    return hashlib.blake2b(fields, digest_size=16).hexdigest()


def _describe(file: str, folders: Sequence[str], offset: int) -> ParquetFile:
    try:
        stamp = None if storage.is_remote(file) else _stamp(file)
        metadata = storage.read_metadata(file)
        schema = metadata.schema.to_arrow_schema()
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
        if storage.is_remote(file) and not isinstance(error, ValueError):
            # The store or the network (not the file's bytes): a retry may succeed.
            raise StorageError(f"cannot read {file!r}: {one_line(str(error))}") from None
        raise UsageError(f"cannot read {file!r} as Parquet: {one_line(str(error))}") from None
    hive = _hive_values(folders)
    clash = sorted(set(hive) & set(metadata.schema.names))
    if clash:
        raise UsageError(f"{file!r} has columns {clash} that its folder names also set; keep one")
    digest = _schema_digest(schema)
    groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    return ParquetFile(
        path=file,
        n_rows=metadata.num_rows,
        offset=offset,
        hive=hive,
        schema=digest,
        row_groups=groups,
        stamp=stamp,
    )


def _stamp(path: str) -> tuple[int, ...]:
    """A local file's size and modification and change times in ns (:attr:`ParquetFile.stamp`).

    The change time too: ``cp -p``, ``rsync -t`` and ``touch -r`` give a file rewritten in place
    or renamed over it its old modification time, and no one can set the change time. (Not the
    inode, which a FUSE mount of a bucket may number anew, and another machine of a Ray cluster
    sees otherwise.)
    """
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def aligned_rows(size: int, files: Sequence[ParquetFile]) -> int:
    """Rows per batch at most ``size``: a multiple of the files' row groups where they agree.

    Where the row groups of all ``files`` (but each file's last) hold the same number of rows,
    a batch of a multiple of that many starts and ends on row group boundaries, in an input of
    one file (the usual layout of logits, written a row group at a time): it is read without
    decoding a row group twice or joining two into one chunk. Else, or where a row group holds
    more than ``size`` rows, ``size``: any size reads the same rows, only not as cheaply.

    >>> files = [ParquetFile("a", 10, 0, {}, "", (4, 4, 2)), ParquetFile("b", 5, 10, {}, "", (5,))]
    >>> aligned_rows(9, files), aligned_rows(3, files)
    (8, 3)
    """
    groups = {rows for file in files for rows in file.row_groups[:-1]}
    if len(groups) != 1:
        return size
    (group,) = groups
    return size if group > size else size - size % group


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
        storage_options=storage.polars_options(run[0].path),
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


def _changed(file: ParquetFile, what: str) -> pl.exceptions.ComputeError:
    """The error for ``file`` changed since the scan (refused as a damaged file is)."""
    return pl.exceptions.ComputeError(
        f"{file.path!r} has changed since the input was scanned ({what})"
    )


def _check_unchanged(file: ParquetFile, metadata: pq.FileMetaData) -> tuple[int, ...]:
    """The row group sizes of ``file``'s footer (``metadata``), if they and its schema are the scan's.

    Raises
    ------
    polars.exceptions.ComputeError
        The file was rewritten since the scan (a column gone or retyped, rows added or
        dropped): its rows would not be the rows the scan counted.
    """
    sizes = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
    if _schema_digest(metadata.schema.to_arrow_schema()) != file.schema or sizes != file.row_groups:
        raise _changed(file, "other columns, types or row groups")
    return sizes


def _check_file(file: ParquetFile) -> None:
    """Refuse ``file`` if it changed since the scan, or is gone.

    A local file by its size, modification and change times: a file rewritten with other
    values in the same columns and row groups would be read as if it held the rows the scan
    counted, mixed with the rows read of it before. A file in a bucket, where no such stamp is
    at hand, by its footer (:func:`_check_unchanged`): there such a rewrite goes unseen.
    """
    try:
        if file.stamp is not None:
            if _stamp(file.path) != file.stamp:
                raise _changed(file, "its size, modification or change time")
            return
        metadata = storage.read_metadata(file.path)
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
        if storage.is_remote(file.path) and not isinstance(error, FileNotFoundError | ValueError):
            # The store or the network, as in the scan (_describe): a retry may succeed.
            raise StorageError(f"cannot read {file.path!r}: {one_line(str(error))}") from None
        raise pl.exceptions.ComputeError(one_line(str(error))) from None  # removed, cut short
    _check_unchanged(file, metadata)


def _check_files(files: Sequence[ParquetFile]) -> None:
    """:func:`_check_file` of each file; those in a bucket side by side, as the scan read them."""
    for file in files:
        if file.stamp is not None:
            _check_file(file)
    remote = [file for file in files if file.stamp is None]
    if remote:
        threads = min(REMOTE_FOOTERS, len(remote))
        with ThreadPoolExecutor(threads, thread_name_prefix="klrank-footer") as pool:
            list(pool.map(_check_file, remote))


def _read_checked(
    read: Callable[[], pl.DataFrame], files: Sequence[ParquetFile], after: Sequence[ParquetFile]
) -> pl.DataFrame:
    """``read()``, then :func:`_check_files` of ``after``.

    If the read fails, ``files`` are checked first, so that a file rewritten under the reader
    (a column gone, a Polars panic) is named instead of the reader's own error.
    """
    try:
        rows = read()
    except (Exception, pl.exceptions.PanicException):  # a panic is a BaseException
        _check_files(files)
        raise
    _check_files(after)
    return rows


def checked(window: Window, files: Sequence[ParquetFile]) -> Window:
    """``window``, each query read at once and refused if one of ``files`` changed since the scan.

    For windows that are slices of a query over a whole input (the rows of one model among
    files of several), which :class:`_Windows` does not read: its files are checked before and
    after each read, as a window's are (:func:`_check_files`).
    """

    def read(start: int, length: int) -> pl.LazyFrame:
        _check_files(files)
        return _read_checked(window(start, length).collect, files, files).lazy()

    return read


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
        wide = any(isinstance(schema.get(c), pl.Array | pl.List) for c in columns)
        self._arrow = _ArrowRows() if wide and ARROW_READS else None

    def __call__(self, start: int, length: int) -> pl.LazyFrame:
        """Rows ``[start, start + length)`` of the files, read (as a lazy frame over them).

        A file rewritten since the scan would be read as it is now (more rows, strings for
        floats, other values in the same columns) or fail with a traceback, so each file is
        checked before its rows are read, and a local one after too, against a rewrite during
        the read (:func:`_check_file`). pyarrow's reader checks the footer of a file in a
        bucket as it opens it (:class:`_Cursor`).
        """
        first = bisect.bisect_right(self._ends, start)  # the first file ending after start
        last = bisect.bisect_left(self._ends, start + length) + 1  # past the file holding stop
        position = self._ends[first - 1] if first else 0  # where files[first] starts
        files = self._files[first:last]
        local = [file for file in files if file.stamp is not None]
        _check_files(files if self._arrow is None else local)
        if self._arrow is not None:
            rows = _read_checked(
                lambda: self._arrow_rows(files, position, start, length), files, local
            )
        else:
            rows = _read_checked(
                self._scan_rows(files, position, start, length).collect, files, local
            )
        return rows.lazy()

    def _scan_rows(
        self, files: Sequence[ParquetFile], position: int, start: int, length: int
    ) -> pl.LazyFrame:
        """The query for the window's rows by Polars' scans, one a run of files (:func:`_runs`)."""
        frames = []
        for run in _runs(files):
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

    def _arrow_rows(
        self, files: Sequence[ParquetFile], position: int, start: int, length: int
    ) -> pl.DataFrame:
        """The window's rows read with pyarrow (:class:`_ArrowRows`).

        As the Polars query gives them: the columns in ``schema``'s dtypes (nulls where a file
        lacks one), the hive values, and ``ROW``.
        """
        assert self._arrow is not None
        frames = []
        for file in files:
            skip = max(start - position, 0)
            take = min(start + length - position, file.n_rows) - skip
            position += file.n_rows
            if take <= 0:
                continue
            present = [c for c in self._columns if c not in file.hive and c != ROW]
            read = self._arrow.rows(file, present, skip, take, length)
            frames.append(self._conformed(read, file, file.offset + skip, take))
        if not frames:  # past the end
            return pl.DataFrame(schema=self._schema).select(self._columns)
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def _conformed(
        self, read: pl.DataFrame, file: ParquetFile, first_row: int, rows: int
    ) -> pl.DataFrame:
        """A file's ``rows`` as the Polars query gives them: ``schema``'s columns, dtypes, ``ROW``.

        ``read`` may have none of its columns (a file lacking them all): the rows still count,
        with or without ``ROW`` among the columns.
        """

        def column(name: str) -> pl.Expr:
            if name == ROW:
                return pl.int_range(first_row, first_row + rows, dtype=pl.Int64).alias(ROW)
            if name in read.columns:
                return pl.col(name).cast(self._schema[name])
            # A hive key, or a column this file lacks (null, as Polars' scan reads it); repeated,
            # not a literal: a literal alone would make one row.
            return pl.repeat(file.hive.get(name), rows, dtype=self._schema[name]).alias(name)

        return read.select(column(c) for c in self._columns)


# Whether Array/List inputs are read with pyarrow (:class:`_ArrowRows`); else by Polars' scan
# of each batch (a switch for tests and benchmarks/read_paths.py).
ARROW_READS = True
# pyarrow's read buffer: a file's pages are read as they are decoded, this much at a time. An
# object store answers a request per read: from moto's S3 server on loopback, the four files of
# 1,000 rows at K = 32,000 (one row group each, 480 MB) streamed in 41 s with 1 MiB reads,
# 6.8 s with 8 MiB and 3.4 s with 32 MiB, where Polars read them whole in 6.8 s.
_LOCAL_BUFFER_BYTES = 1 << 20
_REMOTE_BUFFER_BYTES = 32 << 20


class _ArrowRows:
    """Rows of Parquet files read in order with pyarrow's streaming reader.

    For inputs with a distribution in one Array/List column: read so, a run's batches took about
    half the CPU time of Polars 2.1's scan of each (``benchmarks/read_paths.py --repeat 3`` at
    b46ad17: 1.46 against 3.02 CPU s at K = 32,000, 2.97 against 5.69 s at K = 128,000), as
    pyarrow decodes such a column faster. The reader decodes
    pages as its record batches need them (no pre-buffering), so memory holds a batch of rows
    whatever the size of the row groups: a file of one 489 MiB row group (1,000 rows at
    K = 128,000) is read in batches as one of 16 row groups is, where reading whole row groups,
    or Polars' scan of each batch, holds the row group decoded. A batch that starts where the
    last one ended continues the same reader; a start before it, or in a later row group, opens
    the file again at the row group that holds it. Record batches become Polars frames without
    a copy and are sliced there: Polars 2.1 cannot convert a slice of an Arrow fixed-size list
    with nulls ("validity mask length must be equal to ...").
    """

    def __init__(self) -> None:
        self._cursor: _Cursor | None = None
        self._lock = threading.Lock()  # a window may be shared by readers of several batches

    def rows(
        self, file: ParquetFile, columns: Sequence[str], skip: int, take: int, batch: int
    ) -> pl.DataFrame:
        """Rows ``[skip, skip + take)`` of the file's ``columns`` it has (maybe none of them).

        ``batch``: the rows a window reads (``take`` may be the few of them in this file); a
        file opened here is read in record batches of that many rows.
        """
        with self._lock:
            cursor = self._cursor
            if cursor is None or not cursor.continues(file.path, tuple(columns), skip):
                self._cursor = None  # let it go before the next one is opened
                cursor = self._cursor = _Cursor(file, tuple(columns), skip, batch)
            return cursor.read(skip, take)


class _Cursor:
    """One file's rows from a row group on, read a record batch at a time (:class:`_ArrowRows`)."""

    def __init__(self, file: ParquetFile, columns: tuple[str, ...], start: int, batch: int) -> None:
        path = file.path
        buffer = _REMOTE_BUFFER_BYTES if storage.is_remote(path) else _LOCAL_BUFFER_BYTES
        try:
            reader = storage.parquet_file(path, buffer)
        except (OSError, pa.ArrowException) as error:  # changed since its footer was read
            raise pl.exceptions.ComputeError(str(error)) from None
        sizes = _check_unchanged(file, reader.metadata)
        names = set(reader.schema_arrow.names)
        self.path, self.columns = path, columns
        self.wanted = [c for c in columns if c in names]
        self._ends = list(itertools.accumulate(sizes))
        group = bisect.bisect_right(self._ends, start)  # the row group holding row `start`
        self.position = self._ends[group - 1] if group else 0  # the next row to come
        self._batches = reader.iter_batches(
            batch_size=max(batch, 1),
            row_groups=range(group, len(self._ends)),
            columns=self.wanted,
            use_threads=False,
        )
        self._pending = pl.DataFrame()  # rows from `position` on, read and not yet returned

    def continues(self, path: str, columns: tuple[str, ...], start: int) -> bool:
        """Whether row ``start`` is ahead of this reader and in the row group it is in."""
        return (
            (path, columns) == (self.path, self.columns)
            and self.position <= start
            and bisect.bisect_right(self._ends, start)
            == bisect.bisect_right(self._ends, self.position)
        )

    def read(self, skip: int, take: int) -> pl.DataFrame:
        """Rows ``[skip, skip + take)``, ``skip`` at or past ``position``.

        Raises
        ------
        polars.exceptions.ComputeError
            The file ends before them (its footer counts rows its pages do not hold), as a
            damaged file does.
        """
        if not self.wanted:  # the file lacks every column asked for: the rows still count
            self.position = skip + take
            return pl.DataFrame()
        pieces = []
        while take > 0:
            if not self._pending.height and not self._next():
                raise pl.exceptions.ComputeError(
                    f"{self.path!r} ends at row {self.position}, before row {skip}"
                )
            if skip > self.position:  # rows before the window, in its row group
                dropped = min(skip - self.position, self._pending.height)
                self._pending = self._pending.slice(dropped)
                self.position += dropped
                continue
            piece = self._pending.slice(0, take)
            self._pending = self._pending.slice(piece.height)
            pieces.append(piece)
            self.position += piece.height
            skip, take = skip + piece.height, take - piece.height
        return pieces[0] if len(pieces) == 1 else pl.concat(pieces).rechunk()

    def _next(self) -> bool:
        """Read the next record batch into ``_pending``; False at the end of the file."""
        try:
            batch = next(self._batches, None)
        except (OSError, pa.ArrowException) as error:
            raise pl.exceptions.ComputeError(str(error)) from None  # as Polars' scan
        if batch is None:
            return False
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        self._pending = frame
        return True


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
    if storage.is_remote(path):
        # One request a footer: side by side (2,000 files on a loopback S3 server took 20 s
        # one after another).
        with ThreadPoolExecutor(REMOTE_FOOTERS, thread_name_prefix="klrank-footer") as pool:
            described = list(pool.map(lambda item: _describe(item[0], item[1], 0), listed))
    else:
        described = [_describe(file, folders, 0) for file, folders in listed]
    files, offset = [], 0
    for file in described:
        files.append(dataclasses.replace(file, offset=offset))
        offset += file.n_rows
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
    window = _Windows(files, schema, [*[c for c in columns if c in schema], ROW])
    try:  # an Array/List input is read by the window itself (_ArrowRows), not by collect
        return _compacted(window(start, length).collect())
    except READ_ERRORS as error:
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


def collect(
    frame: pl.LazyFrame, source: ParquetInput, files: Sequence[ParquetFile] = ()
) -> pl.DataFrame:
    """Read the columns selected from ``source``; a file damaged past its footer is a usage error.

    So is one of ``files``, those ``frame`` reads, changed since the scan (:func:`_check_files`,
    after the read: a local file's times only grow, so one unchanged then was unchanged
    throughout). Rows kept instead of read again in windows need it: a model read whole to be
    joined to the labels. Reads of a whole input that its windows read again later (its ids,
    its model column) need not: each window checks its files against the scan, and in a
    bucket each check reads a footer.
    """
    try:
        return _compacted(_read_checked(frame.collect, files, files))
    except READ_ERRORS as error:
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
        except READ_ERRORS as error:
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


def read_parquet_metadata(path: Path) -> dict[str, str]:
    """Return the key-value metadata stored in a Parquet file's footer."""
    raw = pq.read_metadata(path).metadata or {}
    return {key.decode(): value.decode() for key, value in raw.items()}


_RUN_DATE_FOLDER = re.compile(rf"{RUN_DATE_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})")


def run_partitions(root: Path | str, report_file: str) -> list[tuple[dt.date, Path | str]]:
    """The ``root/run_date=YYYY-MM-DD/`` folders holding ``report_file``, oldest first.

    Folders whose names start with ``.`` or ``_`` (staging folders, failure records) and
    folders that are not a ``run_date=`` partition with an ISO date are skipped. ``root`` may be
    an ``s3://`` URL: its folders are then URLs too.
    """
    remote = isinstance(root, str) and storage.is_remote(root)
    if remote:
        assert isinstance(root, str)
        names = storage.folders(root)
    elif not Path(root).is_dir():
        return []
    else:
        names = [folder.name for folder in Path(root).iterdir()]
    found: list[tuple[dt.date, Path | str]] = []
    for name in names:
        if name.startswith((".", "_")):
            continue
        # Only YYYY-MM-DD: Python's fromisoformat also reads 20260205 and 2026-W06-5.
        match = _RUN_DATE_FOLDER.fullmatch(unquote(name))
        if match is None:
            continue
        if remote:
            assert isinstance(root, str)
            folder: Path | str = storage.join(root, name)
            if storage.kind(storage.join(root, name, report_file)) != "file":
                continue
        else:
            folder = Path(root) / name
            if not (folder / report_file).is_file():
                continue
        try:
            found.append((dt.date.fromisoformat(match.group(1)), folder))
        except ValueError:  # 2026-02-30
            continue
    return sorted(found, key=lambda night: night[0])


def report_version(path: Path | str) -> str | None:
    """The report schema version a report.parquet records (None: none)."""
    metadata = storage.read_metadata(os.fspath(path)).metadata or {}
    found = metadata.get(b"klrank.report_schema_version")
    return found.decode() if found is not None else None


def read_report(path: Path | str, columns: Sequence[str]) -> tuple[pl.DataFrame, dict[str, str]]:
    """Read ``columns`` of a published report and its footer metadata.

    Raises
    ------
    UsageError
        The file is missing, not Parquet, or lacks one of ``columns``.
    """
    try:
        footer = storage.read_metadata(os.fspath(path))
        metadata = {k.decode(): v.decode() for k, v in (footer.metadata or {}).items()}
        missing = [c for c in columns if c not in footer.schema.to_arrow_schema().names]
        if missing:  # say so plainly, rather than with Polars' query plan
            raise UsageError(
                f"cannot read the report {str(path)!r}: no column {missing[0]!r} (is it a "
                "klrank report.parquet?)"
            )
        options = storage.polars_options(os.fspath(path))
        frame = pl.read_parquet(path, columns=list(columns), glob=False, storage_options=options)
    except (OSError, ValueError, pl.exceptions.PolarsError) as error:
        raise UsageError(f"cannot read the report {str(path)!r}: {one_line(str(error))}") from None
    return frame, metadata
