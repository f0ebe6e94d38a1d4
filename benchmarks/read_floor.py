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
        pl.scan_parquet(path, hive_partitioning=False).select(pl.all().sum()).collect()


if __name__ == "__main__":
    main()
