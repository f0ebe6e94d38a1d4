"""Scanning inputs and publishing atomically."""

import math
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import corrupt_first_page, expect, invoke, klrank
from klrank.io import publishing, reading, storage, targets, writing
from klrank.pipeline.errors import StorageError, UsageError
from klrank.pipeline.layout import ROW
from polars.testing import assert_frame_equal


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _publish(target: Path, content: str, name: str = "report.txt") -> None:
    with publishing.staging(target, _out(target)) as folder:
        writing.write_text(content, folder / name)


def _out(target: Path) -> Path:
    """The ``--out`` folder of ``target``: itself, or the folder of its nightly partition."""
    return target.parent if target.name.startswith("run_date=") else target


def test_publish_creates_the_target_with_success_marker(tmp_path: Path) -> None:
    target = tmp_path / "out" / "run_date=2026-01-01"
    _publish(target, "v1")
    assert _files(target) == {"_SUCCESS": b"", "report.txt": b"v1"}
    assert [p.name for p in target.parent.iterdir()] == ["run_date=2026-01-01"]


def test_publish_replaces_the_previous_report_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _publish(target, "v1")
    _publish(target, "other", "other.txt")
    assert _files(target) == {"_SUCCESS": b"", "other.txt": b"other"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or retired folder left


def test_a_failing_write_leaves_the_previous_report_byte_identical(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _publish(target, "v1")
    before = _files(target)

    with (
        pytest.raises(RuntimeError, match="disk full"),
        publishing.staging(target, _out(target)) as folder,
    ):
        writing.write_text("partial", folder / "report.txt")
        raise RuntimeError("disk full")
    assert _files(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_run_leaves_the_previous_report_byte_identical(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _publish(target, "v1")
    before = _files(target)
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from klrank.io import publishing, writing

        with publishing.staging(Path({str(target)!r}), Path({str(target)!r})) as folder:
            writing.write_text("partial", folder / "report.txt")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == -9
    assert _files(target) == before
    # The dead run's staging folder stays behind, hidden from Parquet readers.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftovers) == 1 and leftovers[0].startswith(targets.STAGING_PREFIX)


def test_scan_reads_directories_recursively_with_hive_keys_as_strings(tmp_path: Path) -> None:
    for model in ("a", "007"):
        folder = tmp_path / f"model={model}" / "nested"
        folder.mkdir(parents=True)
        pl.DataFrame({"id": [1, 2]}).write_parquet(folder / "part-0.parquet")
    (tmp_path / "_ignored").mkdir()
    pl.DataFrame({"x": [1.0]}).write_parquet(tmp_path / "_ignored" / "part-0.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    frame = scanned.frame.collect().sort("model", "id")
    assert frame.schema == pl.Schema({ROW: pl.Int64, "id": pl.Int64, "model": pl.String})
    assert frame.get_column("model").to_list() == ["007", "007", "a", "a"]  # "007", not 7
    assert scanned.n_rows == 4 and len(scanned.files) == 2


def test_scan_reads_folders_whose_names_look_like_glob_patterns(tmp_path: Path) -> None:
    # A file found by name was handed to Polars as a pattern: model=*a* matched nothing.
    for model in ("*a*", "[b]", "c?"):
        folder = tmp_path / "predictions" / f"model={model}"
        folder.mkdir(parents=True)
        pl.DataFrame({"id": [1, 2]}).write_parquet(folder / "part-0.parquet")
    scanned = reading.scan_parquet(str(tmp_path / "predictions"))
    models = scanned.frame.collect().get_column("model").sort().to_list()
    assert models == ["*a*", "*a*", "[b]", "[b]", "c?", "c?"]
    report = tmp_path / "out[1]" / "report.parquet"
    report.parent.mkdir()
    pl.DataFrame({"slice": ["ALL"]}).write_parquet(report)
    frame, _ = reading.read_report(report, ["slice"])
    assert frame.get_column("slice").to_list() == ["ALL"]


def test_scan_reads_a_glob(tmp_path: Path) -> None:
    for part in range(3):
        pl.DataFrame({"id": [part]}).write_parquet(tmp_path / f"part-{part}.parquet")
    scanned = reading.scan_parquet(str(tmp_path / "part-*.parquet"))
    assert sorted(scanned.frame.collect().get_column("id")) == [0, 1, 2]


def _many_files(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """Files of 0 to 4 rows, in two model folders, some with Int32 ids or an extra column.

    Returned in path order with their hive values, as an oracle reads them one by one.
    """
    written = []
    for model in ("a", "b"):
        for part in range(12):
            n = (part * 7 + len(model)) % 5  # 0..4 rows; some files are empty
            frame = pl.DataFrame(
                {"id": [100 * part + i for i in range(n)], "p": [float(i) for i in range(n)]}
            )
            if part % 3 == 1:  # alternating types: the whole input reads ids as Int64
                frame = frame.with_columns(pl.col("id").cast(pl.Int32))
            if part % 4 == 2:  # a column only some files have: null elsewhere
                frame = frame.with_columns(note=pl.lit("x"))
            path = root / f"model={model}" / f"part-{part:02d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path)
            written.append((path, {"model": model}))
    return written


def _read_one_by_one(files: list[tuple[Path, dict[str, str]]], offset: int = 0) -> pl.DataFrame:
    """The oracle: each file read whole, its hive values added, positions counted by hand."""
    frames, position = [], offset
    for path, hive in files:
        frame = pl.read_parquet(path)
        positions = pl.Series(ROW, range(position, position + frame.height), dtype=pl.Int64)
        frames.append(frame.with_columns(positions, **{k: pl.lit(v) for k, v in hive.items()}))
        position += frame.height
    return pl.concat(frames, how="diagonal_relaxed")


@pytest.mark.parametrize("max_scans", [reading.MAX_SCANS, 1], ids=["scan-a-folder", "from-paths"])
def test_windows_of_many_files_are_slices_of_the_files_read_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_scans: int
) -> None:
    # With one scan at most, files alike in all but their folders are one scan, which reads
    # their hive values from their paths.
    monkeypatch.setattr(reading, "MAX_SCANS", max_scans)
    files = _many_files(tmp_path)
    scanned = reading.scan_parquet(str(tmp_path))
    columns = [ROW, "id", "p", "note", "model"]
    whole = _read_one_by_one(files).select(columns)
    assert_frame_equal(scanned.frame.select(columns).collect(), whole)
    window = scanned.windows(columns)
    for start in range(0, whole.height + 2):
        for length in (1, 2, 3, 7, whole.height):
            assert_frame_equal(window(start, length).collect(), whole.slice(start, length))
    # Some files: model b's, with their positions in the whole input and their own dtypes.
    b_files = [f for f in scanned.files if f.hive == {"model": "b"}]
    b_rows = whole.filter(pl.col("model") == "b")
    b_window = scanned.windows(columns, b_files)
    assert_frame_equal(scanned.subset(b_files).select(columns).collect(), b_rows)
    for start in range(0, b_rows.height + 1, 3):
        assert_frame_equal(b_window(start, 5).collect(), b_rows.slice(start, 5))
    # Files alike but not following on in the input: each keeps its own positions.
    some = [f for f in scanned.files if f.schema == scanned.files[0].schema][::2]
    assert len({f.hive["model"] for f in some}) == 2 and len(some) > 4
    alike = [ROW, "id", "p", "model"]  # these files have no "note"
    rows = pl.concat(
        [whole.filter(pl.col(ROW).is_between(f.offset, f.offset + f.n_rows - 1)) for f in some]
    ).select(alike)
    assert_frame_equal(scanned.subset(some).select(alike).collect(), rows)
    for start in range(0, rows.height + 1, 2):
        assert_frame_equal(scanned.windows(alike, some)(start, 3).collect(), rows.slice(start, 3))


def _array_files(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """Files of a distribution column (``logit``, an Array) in row groups of 3 rows.

    Some hold it as Float16 or Float64 (the whole input reads Float64), as a List, or lack the
    ``note`` column; some have NaN, -inf or null in it; some are empty.
    """
    rng, written = np.random.default_rng(7), []
    for model in ("a", "b"):
        for part in range(6):
            n = (part * 5 + len(model) + 1) % 8  # 0..7 rows: row groups of 3 split most files
            values = rng.normal(size=(n, 4))
            values[values > 1.5] = math.nan
            values[values < -1.5] = -math.inf
            dtype = (pl.Float32, pl.Float16, pl.Float64)[part % 3]
            rows: list[list[float] | None] = values.tolist()
            if part == 4 and n:  # a null row
                rows[0] = None
            logit = pl.Series("logit", rows, dtype=pl.Array(pl.Float64, 4))
            logit = logit.cast(pl.Array(dtype, 4))
            frame = pl.DataFrame({"id": [100 * part + i for i in range(n)]}).with_columns(logit)
            if part % 2:
                frame = frame.with_columns(note=pl.lit("x"))
            path = root / f"model={model}" / f"part-{part:02d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path, row_group_size=3)
            written.append((path, {"model": model}))
    return written


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "polars"])
def test_windows_of_an_array_input_are_slices_of_the_files_read_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrow: bool
) -> None:
    # Read with pyarrow's streaming reader (or by Polars' scan of each batch): windows that
    # start inside the row group the last one ended in, or before it, read the same rows.
    monkeypatch.setattr(reading, "ARROW_READS", arrow)
    files = _array_files(tmp_path)
    assert max(pq.read_metadata(path).num_row_groups for path, _ in files) == 3  # 7 rows
    scanned = reading.scan_parquet(str(tmp_path))
    columns = ["id", "logit", "note", "model", ROW]
    whole = _read_one_by_one(files).select(columns)
    assert whole.schema["logit"] == pl.Array(pl.Float64, 4)
    for size in (1, 2, 4, 5, whole.height):
        window = scanned.windows(columns)
        batches = list(reading.batches(window, scanned, size))
        assert_frame_equal(pl.concat(batches), whole)
        assert all(b.n_chunks() == 1 for b in batches)
    a_files = [f for f in scanned.files if f.hive == {"model": "a"}]
    a_rows = whole.filter(pl.col("model") == "a")
    for start in range(0, a_rows.height + 1, 2):
        window = scanned.windows(columns, a_files)
        assert_frame_equal(window(start, 3).collect(), a_rows.slice(start, 3))


def test_a_file_a_batch_enters_at_its_end_is_read_in_batches_of_the_window_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two files of 7 rows read 4 rows a batch: the second file opens for the 1 row the second
    # batch takes of it, and must not be read one row a record batch from then on.
    for part in range(2):
        ids = np.arange(7) + 7 * part
        frame = pl.DataFrame({"id": ids, "logit": np.ones((7, 3))})
        frame.write_parquet(tmp_path / f"part-{part}.parquet")
    sizes: list[int] = []
    opened = storage.parquet_file

    def recording(path: str, buffer_size: int) -> pq.ParquetFile:
        reader = opened(path, buffer_size)
        iter_batches = reader.iter_batches

        def batches(**options: Any) -> Any:
            sizes.append(options["batch_size"])
            return iter_batches(**options)

        reader.iter_batches = batches  # type: ignore[method-assign]
        return reader

    monkeypatch.setattr(storage, "parquet_file", recording)
    source = reading.scan_parquet(str(tmp_path))
    read = list(reading.batches(source.windows(["id", "logit"]), source, 4))
    assert pl.concat(read).get_column("id").to_list() == list(range(14))
    assert sizes == [4, 4]


def test_one_window_read_out_of_order_gives_the_rows_asked_for(tmp_path: Path) -> None:
    # The pyarrow reader continues from where the last window ended; a window before that, or
    # in a later row group, opens the file again: every order reads the same rows.
    files = _array_files(tmp_path)
    scanned = reading.scan_parquet(str(tmp_path))
    columns = ["id", "logit", "note", "model", ROW]
    whole = _read_one_by_one(files).select(columns)
    window = scanned.windows(columns)
    for start, length in [(0, 2), (2, 2), (1, 3), (9, 1), (10, 5), (30, 4), (3, 20), (33, 9)]:
        assert_frame_equal(window(start, length).collect(), whole.slice(start, length))


def test_an_array_input_in_one_big_row_group_is_read_a_batch_at_a_time(tmp_path: Path) -> None:
    # pyarrow's pool peaks at about a batch of rows, not at the row group: 4,000 rows of 1,000
    # Float64 values (32 MB) in one row group, read in batches of 100 rows (0.8 MB).
    path = tmp_path / "logits.parquet"
    values = np.random.default_rng(3).normal(size=(4_000, 1_000))
    frame = pl.DataFrame({"id": np.arange(4_000), "logit": values})
    frame.write_parquet(path, row_group_size=4_000)
    assert pq.read_metadata(path).num_row_groups == 1
    script = textwrap.dedent(f"""
        import pyarrow as pa
        from klrank.io import reading
        source = reading.scan_parquet({str(path)!r})
        rows = sum(b.height for b in reading.batches(source.windows(["id", "logit"]), source, 100))
        print(rows, pa.default_memory_pool().max_memory())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows, peak = map(int, done.stdout.split())
    assert rows == 4_000
    assert peak < 8_000_000, f"pyarrow's pool peaked at {peak:,} bytes"


def test_a_list_input_read_with_pyarrow_keeps_every_dtype_as_polars_reads_it(
    tmp_path: Path,
) -> None:
    # pyarrow reads the file's Arrow schema as written by Polars: an Enum or a Categorical
    # comes back as a dictionary, which must become the same Polars dtype again.
    n = 7
    frame = pl.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "region": pl.Series(["eu", "us"] * 3 + ["eu"], dtype=pl.Enum(["eu", "us"])),
            "tag": pl.Series(["a", "b"] * 3 + ["a"], dtype=pl.Categorical),
            "logit": pl.Series(
                [[float(i), 1.0, -math.inf] for i in range(n)], dtype=pl.List(pl.Float32)
            ),
            "at": pl.datetime_range(
                pl.datetime(2026, 1, 1), pl.datetime(2026, 1, 7), "1d", eager=True, time_zone="UTC"
            ),
        }
    )
    frame.write_parquet(tmp_path / "labels.parquet", row_group_size=3)
    scanned = reading.scan_parquet(str(tmp_path / "labels.parquet"))
    columns = [*frame.columns, ROW]
    batches = list(reading.batches(scanned.windows(columns), scanned, 2))
    expected = frame.with_columns(pl.int_range(n, dtype=pl.Int64).alias(ROW))
    assert_frame_equal(pl.concat(batches), expected)


def test_a_damaged_array_file_is_a_usage_error_naming_the_input(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": [1, 2]}).with_columns(
        pl.Series("logit", [[0.0, 1.0], [1.0, 0.0]], dtype=pl.Array(pl.Float32, 2))
    )
    frame.write_parquet(tmp_path / "part-0.parquet")
    corrupt_first_page(tmp_path / "part-0.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    message = f"cannot read the Parquet data of {str(tmp_path)!r}"
    with pytest.raises(UsageError, match=re.escape(message)):
        list(reading.batches(scanned.windows(["id", "logit"]), scanned, 1))


def _uneven_files(root: Path, width: int | None) -> list[tuple[Path, dict[str, str]]]:
    """Files of a ``logit`` Array of ``width`` (None: a List), in row groups of varying sizes.

    A ``write_table`` a row group: some are empty, one file has one row and one none. Every
    fourth row is null and, in a List, every fifth from the first an empty list.
    """
    dtype = pa.list_(pa.float32(), width) if width else pa.list_(pa.float64())
    rng, written = np.random.default_rng(17), []
    for part, groups in enumerate([(3, 0, 5, 1), (1,), (0,), (7, 7, 2), (0, 4), (10,)]):
        hive = {"model": "ab"[part % 2]}
        path = root / f"model={hive['model']}" / f"part-{part}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, pa.schema({"id": pa.int64(), "logit": dtype})) as writer:
            for n in groups:
                rows = [rng.normal(size=width or i % 5).tolist() for i in range(n)]
                rows = [None if i % 4 == 3 else row for i, row in enumerate(rows)]
                ids = pa.array(range(n), pa.int64())
                writer.write_table(pa.table({"id": ids, "logit": pa.array(rows, dtype)}))
        written.append((path, hive))
    return sorted(written)  # in path order, as the input is read


@pytest.mark.parametrize("width", [3, None], ids=["array", "list"])
def test_windows_in_any_order_over_uneven_row_groups_are_slices_of_the_files(
    tmp_path: Path, width: int | None
) -> None:
    # The pyarrow reader continues, skips inside a row group, or opens the file again, and
    # passes empty row groups and files: every window reads what each file read whole holds.
    files = _uneven_files(tmp_path, width)
    scanned = reading.scan_parquet(str(tmp_path))
    columns = ["id", "logit", "model", ROW]
    whole = _read_one_by_one(files).select(columns)
    assert whole.height == 40 and whole.get_column("logit").null_count() == 6
    window = scanned.windows(columns)
    rng = np.random.default_rng(4)
    for start, length in rng.integers(0, whole.height + 3, size=(300, 2)).tolist():
        assert_frame_equal(window(start, length).collect(), whole.slice(start, length))
    for size in (1, 3, 7):
        assert_frame_equal(pl.concat(reading.batches(window, scanned, size)), whole)


def test_one_window_read_by_two_threads_gives_each_the_rows_it_asked_for(tmp_path: Path) -> None:
    # reading.batches reads ahead in a thread: a window's reader is shared, under a lock.
    files = _uneven_files(tmp_path, 3)
    scanned = reading.scan_parquet(str(tmp_path))
    columns = ["id", "logit", ROW]
    whole = _read_one_by_one(files).select(columns)
    window = scanned.windows(columns)
    wrong: list[tuple[int, int]] = []

    def read(seed: int) -> None:
        for start, length in np.random.default_rng(seed).integers(0, 42, size=(150, 2)).tolist():
            if not window(start, length).collect().equals(whole.slice(start, length)):
                wrong.append((start, length))

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "polars"])
def test_a_file_lacking_every_column_of_a_window_still_counts_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrow: bool
) -> None:
    # Without ROW among the columns, pyarrow's rows of such a file were one literal null row.
    monkeypatch.setattr(reading, "ARROW_READS", arrow)
    logit = pl.Series("logit", [[0.0, 1.0], [1.0, 0.0]], dtype=pl.Array(pl.Float32, 2))
    files = [(tmp_path / "a.parquet", {}), (tmp_path / "b.parquet", {})]
    pl.DataFrame([logit]).write_parquet(files[0][0])
    pl.DataFrame({"id": [3, 4, 5]}).write_parquet(files[1][0])
    scanned = reading.scan_parquet(str(tmp_path))
    whole = _read_one_by_one(files).select("logit")
    for start, length in [(0, 5), (1, 3), (2, 3), (3, 1)]:
        assert_frame_equal(
            scanned.windows(["logit"])(start, length).collect(), whole.slice(start, length)
        )


def _logits_first(path: Path) -> Path:
    """An Array file whose first column is the logits: :func:`corrupt_first_page` damages them."""
    logit = pl.Series("logit", [[0.0, 1.0], [1.0, 0.0]] * 3, dtype=pl.Array(pl.Float32, 2))
    pl.DataFrame([logit, pl.Series("id", range(6))]).write_parquet(path, row_group_size=4)
    corrupt_first_page(path)
    assert pl.read_parquet(path, columns=["id"]).height == 6  # the failure is in the logits
    return path


def test_read_rows_of_a_damaged_array_file_is_a_usage_error_naming_the_input(
    tmp_path: Path,
) -> None:
    # The Ray engine's reads: pyarrow reads when the window is made, which was outside the
    # try, so the ComputeError escaped ("internal error", exit 70, from klrank run --engine ray).
    path = _logits_first(tmp_path / "part-0.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    message = f"cannot read the Parquet data of {str(tmp_path)!r}"
    with pytest.raises(UsageError, match=re.escape(message)):
        reading.read_rows(str(tmp_path), scanned.files, ["id", "logit"], 0, 6)
    assert path.exists()


@pytest.mark.parametrize(
    "rewritten",
    [
        pl.DataFrame({"id": range(10)}),  # the logits gone: they must not read as nulls
        pl.DataFrame({"id": range(10), "logit": [[str(i), "1"] for i in range(10)]}),  # strings
        pl.DataFrame(  # more rows: the first ten need not be the rows the scan counted
            {"id": range(12), "logit": [[float(i), 1.0] for i in range(12)]},
            schema_overrides={"logit": pl.Array(pl.Float64, 2)},
        ),
    ],
    ids=["column-gone", "retyped", "grown"],
)
def test_an_array_file_rewritten_with_other_columns_since_the_scan_is_a_usage_error(
    tmp_path: Path, rewritten: pl.DataFrame
) -> None:
    frame = pl.DataFrame({"id": range(10), "logit": [[float(i), 1.0] for i in range(10)]})
    frame = frame.with_columns(pl.col("logit").cast(pl.Array(pl.Float64, 2)))
    frame.write_parquet(tmp_path / "part-0.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    rewritten.write_parquet(tmp_path / "part-0.parquet")
    message = f"'{tmp_path / 'part-0.parquet'}' has changed since the input was scanned"
    with pytest.raises(UsageError, match=re.escape(message)):
        list(reading.batches(scanned.windows(["id", "logit", ROW]), scanned, 3))


def test_an_array_file_with_fewer_rows_than_when_scanned_is_a_usage_error(tmp_path: Path) -> None:
    # pyarrow's rows of it were short of the window: Polars raised a ShapeError (a traceback).
    frame = pl.DataFrame({"id": range(10), "logit": [[float(i), 1.0] for i in range(10)]})
    frame = frame.with_columns(pl.col("logit").cast(pl.Array(pl.Float64, 2)))
    frame.write_parquet(tmp_path / "part-0.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    frame.head(4).write_parquet(tmp_path / "part-0.parquet")
    message = f"'{tmp_path / 'part-0.parquet'}' has changed since the input was scanned"
    with pytest.raises(UsageError, match=re.escape(message)):
        list(reading.batches(scanned.windows(["id", "logit", ROW]), scanned, 3))


def _wide_file(path: Path, rows: int = 10) -> None:
    """Rows of two class columns, as the column layout has them."""
    pl.DataFrame(
        {"id": range(rows), "prob_0": [0.25] * rows, "prob_1": [0.75] * rows}
    ).write_parquet(path)


@pytest.mark.parametrize(
    "rewritten",
    [
        pl.DataFrame({"id": range(10)}),  # a class column gone: ColumnNotFoundError, a traceback
        pl.DataFrame({"id": range(10), "prob_0": ["0.25"] * 10, "prob_1": ["0.75"] * 10}),  # read
        pl.DataFrame({"id": range(12), "prob_0": [0.5] * 12, "prob_1": [0.5] * 12}),  # read
        pl.DataFrame({"id": range(4), "prob_0": [0.5] * 4, "prob_1": [0.5] * 4}),  # short batches
    ],
    ids=["column-gone", "retyped", "grown", "shrunk"],
)
def test_a_column_file_rewritten_since_the_scan_is_a_usage_error(
    tmp_path: Path, rewritten: pl.DataFrame
) -> None:
    # Polars' scan read each file as it was at the time of the read: strings for the floats,
    # the first ten of twelve rows as if they were the ten the scan counted, or batches of 3 and
    # 1 rows for 10 rows scanned.
    path = tmp_path / "part-0.parquet"
    _wide_file(path)
    scanned = reading.scan_parquet(str(tmp_path))
    rewritten.write_parquet(path)
    message = f"'{path}' has changed since the input was scanned"
    with pytest.raises(UsageError, match=re.escape(message)):
        list(reading.batches(scanned.windows(["id", "prob_0", "prob_1", ROW]), scanned, 3))
    with pytest.raises(UsageError, match=re.escape(message)):  # the Ray engine's reads
        reading.read_rows(str(tmp_path), scanned.files, ["id", "prob_0"], 0, 3)


def test_a_column_file_removed_since_the_scan_is_a_usage_error(tmp_path: Path) -> None:
    _wide_file(tmp_path / "part-0.parquet")
    _wide_file(tmp_path / "part-1.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    (tmp_path / "part-1.parquet").unlink()
    message = f"cannot read the Parquet data of {str(tmp_path)!r}: "
    with pytest.raises(UsageError, match=re.escape(message) + ".*No such file"):
        list(reading.batches(scanned.windows(["id", "prob_0", ROW]), scanned, 3))
    # A read of the whole input (the ids, say) is Polars' own scan: its error is a usage error.
    with pytest.raises(UsageError, match=re.escape(message)):
        reading.collect(scanned.frame.select("id"), scanned)


@pytest.mark.parametrize("arrow", [True, False], ids=["pyarrow", "polars"])
def test_a_file_rewritten_with_other_values_alone_since_the_scan_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrow: bool
) -> None:
    # The same columns, types and row groups: its footer alone passed, and the second batch was
    # read from the new values, the first from the old.
    monkeypatch.setattr(reading, "ARROW_READS", arrow)
    path = tmp_path / "part-0.parquet"
    frame = pl.DataFrame({"id": range(10), "prob": [[0.25, 0.75]] * 10})
    frame.with_columns(pl.col("prob").cast(pl.Array(pl.Float64, 2))).write_parquet(path)
    scanned = reading.scan_parquet(str(tmp_path))
    window = scanned.windows(["id", "prob", ROW])
    assert window(0, 5).collect().get_column("prob").to_list()[0] == [0.25, 0.75]
    frame = frame.with_columns(pl.lit([0.5, 0.5]).alias("prob"))
    frame.with_columns(pl.col("prob").cast(pl.Array(pl.Float64, 2))).write_parquet(path)
    assert pq.read_metadata(path).num_rows == 10
    message = (
        f"'{path}' has changed since the input was scanned (its size, modification or change time)"
    )
    with pytest.raises(pl.exceptions.ComputeError, match=re.escape(message)):
        window(5, 5)


def test_klrank_run_on_a_damaged_array_input_exits_2_naming_it(tmp_path: Path) -> None:
    # The ids read, the logits do not: pyarrow's reader fails, in the batch loop.
    labels = pl.DataFrame({"id": range(6), "logit": [[0.0, 1.0], [1.0, 0.0]] * 3})
    labels.with_columns(pl.col("logit").cast(pl.Array(pl.Float32, 2))).write_parquet(
        tmp_path / "labels.parquet"
    )
    (tmp_path / "predictions" / "model=m").mkdir(parents=True)
    _logits_first(tmp_path / "predictions" / "model=m" / "part-0.parquet")
    predictions = tmp_path / "predictions"
    result = klrank(
        "run", "--labels", tmp_path / "labels.parquet", "--predictions", predictions,
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 2, str(result)
    assert f"cannot read the Parquet data of {str(predictions)!r}" in result.stderr
    assert "Deserializing page header failed" in result.stderr  # pyarrow's words, not Polars'
    assert not (tmp_path / "out").exists()


def test_a_report_read_a_row_a_batch_is_the_report_read_in_one_batch(tmp_path: Path) -> None:
    # Batches of one row cross every row group and file boundary of the pyarrow reads (row
    # groups of 5 in the labels, 3 and 4 in the predictions, model b in two files).
    rng, n, k = np.random.default_rng(12), 23, 6
    truth = rng.normal(size=(n, k))
    pl.DataFrame({"id": range(n), "logit": truth}).write_parquet(
        tmp_path / "labels.parquet", row_group_size=5
    )
    for model, parts in (("a", [range(n)]), ("b", [range(9), range(9, n)])):
        for i, ids in enumerate(parts):
            logits = truth[list(ids)] + rng.normal(size=(len(ids), k))
            path = tmp_path / "predictions" / f"model={model}" / f"part-{i}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pl.DataFrame({"id": ids, "logit": logits}).write_parquet(path, row_group_size=3 + i)
    found = {}
    for batch_bytes in (k * 8, 10**9):
        out = tmp_path / f"out-{batch_bytes}"
        result = invoke(
            "run", "--labels", tmp_path / "labels.parquet", "--predictions",
            tmp_path / "predictions", "--batch-bytes", str(batch_bytes), "--out", out,
        )  # fmt: skip
        expect(result, 0)
        found[batch_bytes] = [
            pl.read_parquet(out / "report.parquet"),
            pl.read_parquet(out / "rows.parquet").sort("model", "id"),
        ]
    (report, rows), (whole_report, whole_rows) = found.values()
    assert rows.height == 2 * n
    assert_frame_equal(rows, whole_rows, check_exact=False, rel_tol=1e-12)
    assert_frame_equal(report, whole_report, check_exact=False, rel_tol=1e-12)


def test_batches_of_many_files_are_the_rows_in_order(tmp_path: Path) -> None:
    files = _many_files(tmp_path)
    scanned = reading.scan_parquet(str(tmp_path))
    whole = _read_one_by_one(files).select(ROW, "id", "model")
    batches = list(reading.batches(scanned.windows([ROW, "id", "model"]), scanned, 4))
    assert [b.height for b in batches[:-1]] == [4] * (len(batches) - 1)
    # Read from several files, yet one chunk: later steps would pay for each chunk.
    assert [b.n_chunks() for b in batches] == [1] * len(batches)
    assert_frame_equal(pl.concat(batches), whole)


def test_a_file_whose_name_looks_like_a_pattern_is_read_as_itself(tmp_path: Path) -> None:
    # Regression: each file was scanned with Polars' globbing on, so "part[1].parquet" read
    # part1.parquet's rows a second time.
    pl.DataFrame({"id": [1]}).write_parquet(tmp_path / "part[1].parquet")
    pl.DataFrame({"id": [2]}).write_parquet(tmp_path / "part1.parquet")
    scanned = reading.scan_parquet(str(tmp_path))
    assert [Path(f.path).name for f in scanned.files] == ["part1.parquet", "part[1].parquet"]
    assert scanned.frame.collect().get_column("id").to_list() == [2, 1]


def test_scan_orders_files_folder_by_folder_as_paths_compare(tmp_path: Path) -> None:
    # Row positions follow this order: "a/b" before "a b" and "a-c" (which sort before "a/" as
    # strings), as pathlib sorts them part by part; links to folders are not followed.
    for i, name in enumerate(["a-c/p.parquet", "a b/p.parquet", "a/b/p.parquet", "a/0.parquet"]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"id": [i]}).write_parquet(tmp_path / name)
    (tmp_path / "z").symlink_to(tmp_path / "a", target_is_directory=True)
    scanned = reading.scan_parquet(str(tmp_path))
    names = [str(Path(f.path).relative_to(tmp_path)) for f in scanned.files]
    assert names == ["a/0.parquet", "a/b/p.parquet", "a b/p.parquet", "a-c/p.parquet"]
    assert scanned.frame.collect().get_column("id").to_list() == [3, 2, 1, 0]


def test_a_damaged_file_among_many_is_a_usage_error_naming_the_input(tmp_path: Path) -> None:
    for part in range(30):
        pl.DataFrame({"id": [part]}).write_parquet(tmp_path / f"part-{part:02d}.parquet")
    corrupt_first_page(tmp_path / "part-17.parquet")
    scanned = reading.scan_parquet(str(tmp_path))  # the footers are fine
    message = f"cannot read the Parquet data of {str(tmp_path)!r}"
    with pytest.raises(UsageError, match=re.escape(message)):
        list(reading.batches(scanned.windows(["id"]), scanned, 1_000))
    with pytest.raises(UsageError, match=re.escape(message)):
        reading.collect(scanned.frame.select("id"), scanned)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda folder: None, "does not exist"),
        (lambda folder: folder.mkdir(), "matches no .parquet files"),
        (lambda folder: folder.write_text("not parquet"), "cannot read"),
    ],
    ids=["missing", "empty-directory", "not-parquet"],
)
def test_unreadable_inputs_are_usage_errors(tmp_path: Path, setup: object, message: str) -> None:
    path = tmp_path / "input"
    setup(path)  # type: ignore[operator]
    with pytest.raises(UsageError, match=message):
        reading.scan_parquet(str(path))


def test_truncated_parquet_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pl.DataFrame({"id": list(range(1000))}).write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="cannot read"):
        reading.scan_parquet(str(path))


def test_write_atomically_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "failures" / "failures.parquet"

    def fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError("boom")

    with pytest.raises(StorageError, match=f"cannot write '{path}': boom"):
        writing.write_atomically(path, fail)
    assert not path.exists() and os.listdir(path.parent) == []


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count descriptors")
def test_rows_writer_appends_frames_in_order_and_leaves_nothing_open(tmp_path: Path) -> None:
    # Polars opens a few descriptors for its runtime the first time a sink runs, for good.
    warm_up = writing.RowsWriter(tmp_path / "warm-up.parquet")
    warm_up.write(pl.DataFrame({"id": [0]}))
    warm_up.close()
    before = _open_descriptors()
    writer = writing.RowsWriter(tmp_path / "rows.parquet", pending=1)  # write waits for the sink
    frames = [
        pl.DataFrame({"id": [3 * i, 3 * i + 1, 3 * i + 2], "kl": [0.5, 0.25, i / 7]})
        for i in range(5)
    ]
    frames[2] = frames[2].clear()  # a batch may hold no rows
    frames.append(pl.DataFrame({"id": [15], "kl": [float("inf")]}))
    for frame in frames:
        writer.write(frame)
    writer.close()
    assert _open_descriptors() == before
    assert "klrank-rows" not in [t.name for t in threading.enumerate()]
    assert_frame_equal(pl.read_parquet(tmp_path / "rows.parquet"), pl.concat(frames))


def test_rows_writer_given_no_rows_makes_no_file(tmp_path: Path) -> None:
    writer = writing.RowsWriter(tmp_path / "rows.parquet")
    writer.close()
    assert not (tmp_path / "rows.parquet").exists()


def test_rows_writer_raises_what_stopped_it_in_the_callers_thread(tmp_path: Path) -> None:
    writer = writing.RowsWriter(tmp_path / "no such folder" / "rows.parquet")
    with pytest.raises(StorageError, match="no such folder/rows.parquet': No such file"):
        writer.write(pl.DataFrame({"id": [1]}))
        writer.close()


def test_rows_writer_refuses_a_frame_of_another_schema(tmp_path: Path) -> None:
    writer = writing.RowsWriter(tmp_path / "rows.parquet")
    writer.write(pl.DataFrame({"id": [1], "kl": [0.5]}))
    with pytest.raises(pl.exceptions.SchemaError):
        writer.write(pl.DataFrame({"id": ["a"], "kl": [0.5]}))
        writer.close()


def test_rows_writer_refuses_a_frame_after_close(tmp_path: Path) -> None:
    writer = writing.RowsWriter(tmp_path / "rows.parquet")
    writer.write(pl.DataFrame({"id": [1]}))
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(pl.DataFrame({"id": [2]}))
    assert pl.read_parquet(tmp_path / "rows.parquet").get_column("id").to_list() == [1]


def test_a_stop_signal_during_close_is_raised_after_the_writer_has_ended(tmp_path: Path) -> None:
    # The caller removes the staging folder once close() is left: the sink must be done by then.
    script = textwrap.dedent(
        f"""
        import os, signal, threading
        from pathlib import Path
        import polars as pl
        from klrank.io import writing
        from klrank.pipeline.errors import Interrupted
        from klrank.runtime import interrupts

        class SignalledOnClose(writing.RowsWriter):
            def _put(self, item):
                if item is None:  # close() is about to queue the end: SIGTERM lands here
                    os.kill(os.getpid(), signal.SIGTERM)
                super()._put(item)

        interrupts.install()
        writer = SignalledOnClose(Path({str(tmp_path / "rows.parquet")!r}))
        writer.write(pl.DataFrame({{"id": range(1_000_000)}}))
        try:
            writer.close()
        except Interrupted:
            alive = [t.name for t in threading.enumerate() if t.name == "klrank-rows"]
            print("interrupted; writer threads alive:", len(alive))
            print("rows:", pl.read_parquet({str(tmp_path / "rows.parquet")!r}).height)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "interrupted; writer threads alive: 0" in done.stdout
    assert "rows: 1000000" in done.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_rows_writer_raises_a_full_disk_at_the_latest_on_close() -> None:
    # Polars reports a write error when its sink ends, so close() is where it surfaces.
    writer = writing.RowsWriter(Path("/dev/full"))
    # An environment problem, named as such (exit 74 in the CLI), with the path and the cause.
    with pytest.raises(
        StorageError, match=r"cannot write '/dev/full': No space left on device \(ENOSPC\)"
    ):
        for _ in range(3):
            writer.write(pl.DataFrame({"id": range(100_000)}))
        writer.close()


def _plain(frame: pl.DataFrame, path: Path) -> None:
    """``frame`` uncompressed and without statistics: other values in it take the same bytes."""
    pq.write_table(frame.to_arrow(), path, compression="none", write_statistics=False)


def _several_models(folder: Path) -> pl.DataFrame:
    """Labels of 40 rows in ``folder``, and the predictions of two models in one file."""
    rng = np.random.default_rng(5)
    p = rng.uniform(0.05, 0.95, 40)
    pl.DataFrame({"id": range(40), "prob_a": p, "prob_b": 1 - p}).write_parquet(
        folder / "labels.parquet"
    )
    (folder / "predictions").mkdir()
    q = np.clip(np.concatenate([p, p]) + rng.normal(0, 0.2, 80), 0.01, 0.99)
    return pl.DataFrame(
        {"id": [*range(40)] * 2, "model": ["a"] * 40 + ["b"] * 40, "prob_a": q, "prob_b": 1 - q}
    )


def test_a_file_of_several_models_rewritten_since_the_scan_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file holding several models is read by filtering the whole input, not by windows: it
    # went unchecked, and the run published the new values as if they were the scanned ones.
    predictions = _several_models(tmp_path)
    path = tmp_path / "predictions" / "part-0.parquet"
    _plain(predictions, path)
    rewritten = predictions.with_columns(pl.col("prob_a", "prob_b").reverse())
    result = _run_changed_after_the_scan(tmp_path, monkeypatch, lambda: _plain(rewritten, path))
    assert f"'{path}' has changed since the input was scanned" in result.stderr


def _run_changed_after_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[], object]
) -> Any:
    """``klrank run`` of ``tmp_path``'s inputs, ``change`` made as the predictions are scanned.

    The run must exit 2 and publish nothing.
    """
    scan = reading.scan_parquet

    def changed_after_the_scan(source: str) -> reading.ParquetInput:
        scanned = scan(source)
        if source.endswith("predictions"):
            change()
        return scanned

    monkeypatch.setattr(reading, "scan_parquet", changed_after_the_scan)
    result = invoke(
        "run", "--labels", tmp_path / "labels.parquet", "--predictions", tmp_path / "predictions",
        "--out", tmp_path / "out", "--bootstrap", "0",
    )  # fmt: skip
    assert result.returncode == 2, str(result)
    assert not (tmp_path / "out").exists()
    return result


@pytest.mark.parametrize("change", ["removed", "not-parquet"])
def test_a_file_of_one_model_changed_before_its_model_is_read_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # Each file's model is read from its footer's statistics after the scan (constant): a file
    # removed by then exited 74 ("cannot use"), one rewritten as other bytes 70 (a bug).
    predictions = _several_models(tmp_path)
    for model in ("a", "b"):
        frame = predictions.filter(pl.col("model") == model)
        frame.write_parquet(tmp_path / "predictions" / f"{model}.parquet")
    path = tmp_path / "predictions" / "b.parquet"

    def changed() -> None:
        path.unlink() if change == "removed" else path.write_bytes(b"not Parquet" * 10)

    result = _run_changed_after_the_scan(tmp_path, monkeypatch, changed)
    assert f"'{path}'" in result.stderr


def test_a_file_rewritten_between_the_check_and_the_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polars' error for the rewritten file (a column gone) named the input alone, with its
    # query plan: the check after the read, which names the file, ran only after a panic.
    path = tmp_path / "part-0.parquet"
    _wide_file(path)
    scanned = reading.scan_parquet(str(tmp_path))
    read = reading._Windows._scan_rows

    def rewritten_before_the_read(self: Any, *args: Any) -> pl.LazyFrame:
        pl.DataFrame({"id": range(10), "prob_0": [0.5] * 10}).write_parquet(path)
        return read(self, *args)

    monkeypatch.setattr(reading._Windows, "_scan_rows", rewritten_before_the_read)
    message = f"'{path}' has changed since the input was scanned"
    with pytest.raises(UsageError, match=re.escape(message)):
        list(reading.batches(scanned.windows(["id", "prob_0", "prob_1", ROW]), scanned, 3))


def test_a_file_rewritten_with_the_same_size_and_modification_time_is_refused(
    tmp_path: Path,
) -> None:
    # What cp -p, rsync -t or touch -r leave: other values in the same bytes, the old mtime.
    path = tmp_path / "part-0.parquet"
    frame = pl.DataFrame({"id": range(10), "prob_0": np.linspace(0, 1, 10)})
    _plain(frame, path)
    scanned = reading.scan_parquet(str(tmp_path))
    window = scanned.windows(["id", "prob_0", ROW])
    assert window(0, 5).collect().get_column("prob_0").to_list()[1] == pytest.approx(1 / 9)
    before = os.stat(path)
    _plain(frame.with_columns(pl.col("prob_0").reverse()), path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    message = f"'{path}' has changed since the input was scanned"
    with pytest.raises(pl.exceptions.ComputeError, match=re.escape(message)):
        window(5, 5)


def test_a_model_read_whole_to_join_rewritten_since_the_scan_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Predictions in another order than the labels are read whole (collect) and joined to them,
    # not in windows: a file rewritten since the scan went unchecked and its values published.
    predictions = _several_models(tmp_path).sample(fraction=1.0, shuffle=True, seed=3)
    for model in ("a", "b"):
        (tmp_path / "predictions" / f"model={model}").mkdir()
        frame = predictions.filter(pl.col("model") == model).drop("model")
        _plain(frame, tmp_path / "predictions" / f"model={model}" / "part-0.parquet")
    path = tmp_path / "predictions" / "model=a" / "part-0.parquet"
    rewritten = pl.read_parquet(path).with_columns(pl.col("prob_a", "prob_b").reverse())
    result = _run_changed_after_the_scan(tmp_path, monkeypatch, lambda: _plain(rewritten, path))
    assert f"'{path}' has changed since the input was scanned" in result.stderr


def test_a_file_of_several_models_rewritten_between_two_batches_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model's batches of a file of several are slices of a filter of the whole input: the
    # second batch was read from the new values, the first from the old, and published.
    predictions = _several_models(tmp_path)
    path = tmp_path / "predictions" / "part-0.parquet"
    _plain(predictions, path)
    read = reading.Batches._read

    def rewritten_after_the_first_batch(self: reading.Batches, start: int) -> pl.DataFrame:
        batch = read(self, start)
        if self._source.path.endswith("predictions") and start == 0:
            _plain(predictions.with_columns(pl.col("prob_a", "prob_b").reverse()), path)
        return batch

    monkeypatch.setattr(reading.Batches, "_read", rewritten_after_the_first_batch)
    result = invoke(
        "run", "--labels", tmp_path / "labels.parquet", "--predictions", tmp_path / "predictions",
        "--out", tmp_path / "out", "--bootstrap", "0", "--batch-bytes", "500",
    )  # fmt: skip
    assert result.returncode == 2, str(result)
    assert f"'{path}' has changed since the input was scanned" in result.stderr
    assert not (tmp_path / "out").exists()
