"""Time the Poisson bootstrap's kernel, ``klrank.pipeline.bootstrap.replicate_sums``.

Calls it once per batch of rows, as the fold would, over ``--rows`` rows of ``--columns`` float64
values and ``--replicates`` replicates, and prints the best and median wall and CPU seconds of
``--repeat`` runs beside a baseline timed in the same run: numpy summing the same values once
(``values.sum(axis=0)`` per batch). Also times ``unit_hashes`` on Int64 keys, which the fold
calls once per batch as well. Nothing is written.

    .venv/bin/python benchmarks/bootstrap_kernel.py                 # 2,000,000 x 200 x 6
    .venv/bin/python benchmarks/bootstrap_kernel.py --rows 200000 --replicates 1000
"""

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import polars as pl
from klrank.pipeline.bootstrap import replicate_sums, unit_hashes


def _timed(step: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (every thread of this process) of ``repeat`` runs of ``step``."""
    step()  # warm: imports, page faults, OpenBLAS's threads
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def _line(name: str, walls: list[float], cpus: list[float]) -> str:
    return (
        f"{name:<34} wall best {min(walls):7.3f} s  median {statistics.median(walls):7.3f} s"
        f"   cpu best {min(cpus):7.3f} s  median {statistics.median(cpus):7.3f} s"
    )


def main() -> None:
    """Parse the options, make the data, time and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1_000_000, help="rows a call")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    keys = pl.Series("id", np.arange(args.rows, dtype=np.int64))
    values = rng.normal(size=(args.rows, args.columns))
    starts = range(0, args.rows, args.batch)
    hashes = unit_hashes(keys, seed=1)

    def kernel() -> None:
        for start in starts:
            stop = start + args.batch
            replicate_sums(hashes[start:stop], values[start:stop], args.replicates)

    def baseline() -> None:
        for start in starts:
            values[start : start + args.batch].sum(axis=0)

    def hashing() -> None:
        for start in starts:
            unit_hashes(keys.slice(start, args.batch), seed=1)

    print(
        f"{args.rows:,} rows x {args.replicates} replicates x {args.columns} columns, "
        f"{len(starts)} batch(es) of at most {args.batch:,} rows, best and median of {args.repeat}"
    )
    kernel_times = _timed(kernel, args.repeat)
    baseline_times = _timed(baseline, args.repeat)
    hashing_times = _timed(hashing, args.repeat)
    print(_line("replicate_sums", *kernel_times))
    print(_line("baseline: values.sum(axis=0)", *baseline_times))
    print(_line("unit_hashes (Int64 keys)", *hashing_times))
    ratio = min(kernel_times[0]) / min(baseline_times[0])
    print(f"replicate_sums / baseline (best wall): {ratio:.1f}x")


if __name__ == "__main__":
    main()
