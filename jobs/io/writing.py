"""Writing output files: atomically one by one, and rows.parquet from a background thread."""

import json
import os
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl
from klrank.io import buckets, targets
from klrank.io.oserrors import as_storage_error, storage
from klrank.io.targets import TEMPORARY_PREFIX
from klrank.pipeline.errors import StorageError
from klrank.runtime import interrupts
from polars.io.plugins import register_io_source


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


def write_to(
    destination: Path | str, write: Callable[[Path], None], optional: bool = False
) -> None:
    """Write one file to a local path (atomically) or to an ``s3://`` URL (one whole object).

    A URL's file is written to a local temporary file first, then uploaded. With ``optional``,
    a ``write`` that made no file makes none.

    Raises
    ------
    StorageError
        The operating system or the store refused a step.
    """
    if isinstance(destination, Path):
        write_atomically(destination, write, optional=optional)
        return
    folder = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))
    try:
        local = folder / "file"
        with storage(local):
            write(local)
        if local.exists() or not optional:
            buckets.upload(local, buckets.place(destination))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
