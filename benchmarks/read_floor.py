"""The read floor: read every input column once with Polars and sum it.

No job can be faster than reading its inputs, so the other contenders are also shown as a
multiple of this.
"""

import argparse
from pathlib import Path

import polars as pl


def main() -> None:
    """Sum every column of the labels and of each prediction file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    args = parser.parse_args()
    files = [args.labels, *sorted(args.predictions.rglob("*.parquet"))]
    for path in files:
        frame = pl.scan_parquet(path, hive_partitioning=False)
        # An Array column (one distribution per row) is summed per row, then over the rows.
        sums = [
            pl.col(name).arr.sum().sum() if isinstance(dtype, pl.Array) else pl.col(name).sum()
            for name, dtype in frame.collect_schema().items()
        ]
        frame.select(sums).collect()


if __name__ == "__main__":
    main()
