"""What reading a language-model data set costs klrank, by the path its batches take.

Every input of a data set (``benchmarks/data/lm32k`` unless ``--data`` says otherwise; make it
with ``make bench-lm``) is read in klrank's batches (``klrank.io.reading.batches``, the batch
size a run uses) two ways: with pyarrow's streaming reader (what klrank does for a local
Array/List column), and by Polars' own scan of each batch (what it does for remote files, and
did for everything before). Beside them, the read floor's way:
each file read whole by Polars. The three alternate within each repetition; the medians of
wall and CPU time (this process, all threads) are printed::

    .venv/bin/python benchmarks/read_paths.py --data benchmarks/data/lm128k --repeat 5
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from klrank.engines.local import batch_rows
from klrank.io import reading
from klrank.pipeline.layout import ROW

HERE = Path(__file__).resolve().parent


def _inputs(data: Path) -> list[reading.ParquetInput]:
    files = [data / "labels.parquet", *sorted((data / "predictions").rglob("*.parquet"))]
    return [reading.scan_parquet(str(path)) for path in files]


def _batched(inputs: list[reading.ParquetInput], size: int) -> None:
    for source in inputs:
        columns = [*source.frame.collect_schema().names()]
        for _ in reading.batches(source.windows(columns), source, size):
            pass


def _whole(inputs: list[reading.ParquetInput]) -> None:
    for source in inputs:
        pl.read_parquet(source.path)


def _timed(step: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    """Time the reading paths, alternating, and print their medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=HERE / "data" / "lm32k")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    inputs = _inputs(args.data)
    width = inputs[1].frame.collect_schema()["logit"]
    assert isinstance(width, pl.Array)
    size = batch_rows(width.size)

    def polars_batches() -> None:
        reading.ARROW_READS = False
        try:
            _batched(inputs, size)
        finally:
            reading.ARROW_READS = True

    paths: dict[str, Callable[[], None]] = {
        "batches, pyarrow's streaming reader": lambda: _batched(inputs, size),
        "batches, Polars scans": polars_batches,
        "whole files, Polars (the read floor's read)": lambda: _whole(inputs),
    }
    _whole(inputs)  # the page cache, warm
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(args.repeat):
        for name, step in paths.items():
            times[name].append(_timed(step))
    n_rows = inputs[0].n_rows
    print(f"{args.data.name}: {len(inputs)} inputs of {n_rows:,} rows, batches of {size} rows")
    print(f"(median of {args.repeat}; column {ROW!r} and hive keys included)")
    print("| path | wall s | CPU s |")
    print("|---|---:|---:|")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
