"""Memory and time of ``klrank run`` on language-model-shaped inputs, beside the read floor.

Synthetic data with a language model's shape: base logits over K tokens with a Zipf-like head and
a long tail, in a different token order on every row; candidates are the base logits plus noise
of increasing size; the next token is drawn from the base distribution. The labels hold ``id``,
``label`` (the next token, an integer) and ``logit`` (the base logits, an Array of Float32); each
candidate's file, ``predictions/model=NAME/part-0.parquet``, holds ``id`` and ``logit`` (the model
is the hive key, as in ``bench_data.py``). Files are written in row groups of
``--row-group`` rows.

The real CLI runs in a subprocess under ``/usr/bin/time -v`` (wall, user and system seconds, and
its own peak RSS), then the read floor (``read_floor.py``: every input column read and summed once
with Polars) the same way, and the ratios are printed::

    .venv/bin/python benchmarks/lm_memory.py --classes 32000 --rows 1000
    .venv/bin/python benchmarks/lm_memory.py --classes 128000 --rows 1000 --keep

The data goes to a temporary folder (``--data`` to choose one), removed afterwards unless
``--keep``; check the free disk first: K × rows × 4 bytes × 4 files (1.5 GB at 128k × 1,000).
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NOISE = {"q8": 0.05, "q4": 0.2, "q2": 0.8}  # candidate -> noise added to the base logits


def _logits(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    """Base logits: log of a Zipf(1.1) weight per rank, ranks shuffled per row, some noise."""
    ranks = np.arange(1, classes + 1, dtype=np.float64)
    head = -1.1 * np.log(ranks)
    out = np.empty((rows, classes), dtype=np.float32)
    for i in range(rows):
        out[i] = head[rng.permutation(classes)] + rng.normal(0.0, 0.5, classes)
    return out


def _table(ids: np.ndarray, columns: dict[str, object], logits: np.ndarray) -> pa.Table:
    flat = pa.array(logits.reshape(-1), type=pa.float32())
    values = pa.FixedSizeListArray.from_arrays(flat, logits.shape[1])
    return pa.table({"id": pa.array(ids), **columns, "logit": values})


def generate(folder: Path, rows: int, classes: int, row_group: int, seed: int) -> None:
    """Write labels.parquet and predictions/<model>.parquet, ``row_group`` rows at a time."""
    rng = np.random.default_rng(seed)
    for model in NOISE:
        (folder / "predictions" / f"model={model}").mkdir(parents=True)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            ids = np.arange(start, start + n, dtype=np.int64)
            base = _logits(rng, n, classes)
            shifted = base - base.max(axis=1, keepdims=True)
            p = np.exp(shifted.astype(np.float64))
            p /= p.sum(axis=1, keepdims=True)
            label = np.array([rng.choice(classes, p=row) for row in p], dtype=np.int64)
            tables = {"labels": _table(ids, {"label": pa.array(label)}, base)}
            for model, sigma in NOISE.items():
                noisy = base + rng.normal(0.0, sigma, base.shape).astype(np.float32)
                tables[model] = _table(ids, {}, noisy)
            for name, table in tables.items():
                if name not in writers:
                    path = folder / "labels.parquet"
                    if name != "labels":
                        path = folder / "predictions" / f"model={name}" / "part-0.parquet"
                    writers[name] = pq.ParquetWriter(path, table.schema, compression="snappy")
                writers[name].write_table(table, row_group_size=row_group)
    finally:
        for writer in writers.values():
            writer.close()


_FIELDS = {
    "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)",
    "user": r"User time \(seconds\): (\S+)",
    "system": r"System time \(seconds\): (\S+)",
    "rss_kib": r"Maximum resident set size \(kbytes\): (\d+)",
}


def timed(command: list[str]) -> dict[str, float]:
    """Run ``command`` under ``/usr/bin/time -v``: wall, user, system seconds and peak RSS (GiB)."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    found = {k: re.search(v, done.stderr) for k, v in _FIELDS.items()}
    values = {k: m.group(1) for k, m in found.items() if m is not None}
    clock = [float(part) for part in values["wall"].split(":")]
    wall = sum(value * 60**i for i, value in enumerate(reversed(clock)))
    return {
        "wall_s": wall,
        "user_s": float(values["user"]),
        "system_s": float(values["system"]),
        "peak_rss_gib": int(values["rss_kib"]) / 2**20,
    }


def main() -> None:
    """Generate, run klrank and the read floor, print the numbers as JSON lines."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=32_000)
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--row-group", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="folder for the data (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--klrank", default=str(Path(sys.executable).with_name("klrank")))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("klrank_args", nargs="*", help="more klrank run options, after --")
    args = parser.parse_args()
    folder = args.data or Path(tempfile.mkdtemp(prefix="klrank-lm-"))
    try:
        if not (folder / "labels.parquet").exists():
            generate(folder, args.rows, args.classes, args.row_group, args.seed)
        size = sum(f.stat().st_size for f in folder.rglob("*.parquet"))
        labels, predictions = str(folder / "labels.parquet"), str(folder / "predictions")
        floor_script = str(Path(__file__).with_name("read_floor.py"))
        klrank = [
            args.klrank, "run", "--labels", labels, "--predictions", predictions,
            "--out", str(folder / "out"), "--quiet", *args.klrank_args,
        ]  # fmt: skip
        floor = [sys.executable, floor_script, "--labels", labels, "--predictions", predictions]
        subprocess.run(floor, check=True)  # warms the page cache
        for _ in range(args.repeat):
            shutil.rmtree(folder / "out", ignore_errors=True)
            run = timed(klrank)
            read = timed(floor)
            values = args.classes * args.rows * (1 + len(NOISE))
            print(
                json.dumps(
                    {
                        "classes": args.classes,
                        "rows": args.rows,
                        "parquet_gib": round(size / 2**30, 3),
                        "klrank": run,
                        "read_floor": read,
                        "ratio_to_floor": round(run["wall_s"] / read["wall_s"], 2),
                        "system_share": round(
                            run["system_s"] / (run["user_s"] + run["system_s"]), 3
                        ),
                        "ns_per_value": round(run["wall_s"] / values * 1e9, 3),
                    }
                ),
                flush=True,
            )
    finally:
        if not args.keep and args.data is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
