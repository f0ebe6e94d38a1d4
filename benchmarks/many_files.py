"""Many one-row part files: klrank's time against Polars' own read of the same files.

Spark and Hive writers can leave thousands of part files of a few rows each. For each N (default
100, 1,000 and 10,000) this generates, once, N label rows as N one-row files and each model's
predictions as N more (``labels/part-NNNNN.parquet``, ``predictions/model=m<j>/part-NNNNN.parquet``),
then times in the same run

- ``klrank run`` on them, as its own process under the ``measure.py`` launcher (interpreter
  start-up included), its mean KL per model checked against numpy's from the generated values;
- Polars' own read of the same two folders, ``pl.scan_parquet(folder).collect()``, in this
  process after one untimed read that warms the page cache (no start-up in it).

and prints one Markdown table: seconds, cost per file, and the cost of each file added between
successive sizes (the slope, free of fixed costs such as start-up), klrank's as a multiple of
Polars'. A klrank that scales linearly has a flat cost per added file::

    .venv/bin/python benchmarks/many_files.py                          # 100, 1,000, 10,000
    .venv/bin/python benchmarks/many_files.py --files 1000,2000 --models 3 --timeout 600
    .venv/bin/python benchmarks/many_files.py --klrank /path/to/other/venv/bin/klrank
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from run import BenchmarkError, Run, default_klrank, timed

HERE = Path(__file__).resolve().parent
GENERATOR_VERSION = 1
MARKER = "dataset.json"
SEED = 20261203


@dataclass(frozen=True)
class Spec:
    """N label rows, one file each, and M models of N one-row files each, K classes."""

    n_rows: int
    n_models: int
    n_classes: int

    @property
    def name(self) -> str:
        """The data set's folder name."""
        return f"one-row-files-{self.n_rows}x{self.n_models}m{self.n_classes}k"

    @property
    def n_files(self) -> int:
        """Files in both inputs together."""
        return self.n_rows * (1 + self.n_models)


def _distributions(spec: Spec) -> tuple[np.ndarray, list[np.ndarray]]:
    """P (rows × classes) and each model's Q = 0.8 P + 0.2 noise, from a fixed seed."""
    rng = np.random.default_rng(SEED)
    p = rng.dirichlet(np.full(spec.n_classes, 0.5), size=spec.n_rows)
    noise = [rng.dirichlet(np.ones(spec.n_classes), size=spec.n_rows) for _ in range(spec.n_models)]
    return p, [0.8 * p + 0.2 * n for n in noise]


def ensure(spec: Spec, data_dir: Path) -> Path:
    """Generate ``spec`` under ``data_dir`` unless it is there with the same parameters."""
    folder = data_dir / spec.name
    expected = {"generator_version": GENERATOR_VERSION, "seed": SEED, **vars(spec)}
    try:
        if json.loads((folder / MARKER).read_text()) == expected:
            return folder
    except (OSError, ValueError):
        pass
    print(f"generating {spec.n_files:,} one-row files under {folder} ...", file=sys.stderr)
    partial = folder.with_name(f".{folder.name}.partial")  # renamed into place when complete
    for path in (folder, partial):
        shutil.rmtree(path, ignore_errors=True)
    p, qs = _distributions(spec)
    schema = pa.schema(
        [("id", pa.int64())] + [(f"prob_{k}", pa.float64()) for k in range(spec.n_classes)]
    )
    targets = [(partial / "labels", p)] + [
        (partial / "predictions" / f"model=m{j}", q) for j, q in enumerate(qs)
    ]
    for target, values in targets:
        target.mkdir(parents=True)
        for i in range(spec.n_rows):
            columns = [pa.array([i], pa.int64()), *[pa.array([v]) for v in values[i]]]
            pq.write_table(
                pa.Table.from_arrays(columns, schema=schema), target / f"part-{i:05d}.parquet"
            )
    (partial / MARKER).write_text(json.dumps(expected, indent=2) + "\n")
    partial.rename(folder)
    return folder


def expected_mean_kl(spec: Spec) -> dict[str, float]:
    """Model -> mean KL in bits, from the generated values by numpy (no zeros: Q > 0)."""
    p, qs = _distributions(spec)
    return {f"m{j}": float(np.mean(np.sum(p * np.log2(p / q), axis=1))) for j, q in enumerate(qs)}


def polars_read(folder: Path, repeat: int) -> float:
    """Median seconds of Polars reading both folders whole (the page cache warmed first)."""

    def read() -> None:
        pl.scan_parquet(folder / "labels").collect()
        pl.scan_parquet(folder / "predictions").collect()

    read()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        read()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def klrank_run(
    folder: Path, spec: Spec, klrank: str, work: Path, timeout_s: int, rtol: float
) -> Run:
    """One timed ``klrank run``; its mean KL per model must agree with numpy's to ``rtol``."""
    out = work / f"out-{spec.name}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [klrank, "run", "--quiet", "--labels", str(folder / "labels")]
    argv += ["--predictions", str(folder / "predictions"), "--out", str(out)]
    result = timed(argv, work / f"{spec.name}.log", timeout_s)
    if result.timed_out:
        return result
    report = pl.read_parquet(out / "report.parquet").filter(pl.col("slice") == "ALL")
    got = dict(report.select("model", "mean_kl").iter_rows())
    want = expected_mean_kl(spec)
    if set(got) != set(want) or any(abs(got[m] - want[m]) > rtol * want[m] for m in want):
        raise BenchmarkError(f"klrank's mean KL {got} disagrees with numpy's {want}")
    rows = set(report.get_column("n_rows"))
    if rows != {spec.n_rows}:
        raise BenchmarkError(f"klrank measured {rows} rows a model, not {spec.n_rows}")
    return result


@dataclass(frozen=True)
class Measured:
    """One size: klrank's runs and Polars' read seconds."""

    spec: Spec
    klrank: list[Run]
    polars_s: float

    @property
    def klrank_s(self) -> float | None:
        """Median wall seconds of klrank, None if a run timed out."""
        if any(r.timed_out for r in self.klrank):
            return None
        return statistics.median(r.seconds for r in self.klrank)


def _us(seconds: float, files: int) -> str:
    return f"{seconds / files * 1e6:,.0f}"


def table(measured: Sequence[Measured], timeout_s: int) -> str:
    """The Markdown table: seconds, µs a file, µs an added file, klrank as a multiple of Polars."""
    lines = [
        "| label rows N | files | klrank s | Polars read s | klrank µs/file | Polars µs/file "
        "| ratio | klrank µs/added file | Polars µs/added file | ratio | klrank peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    previous: Measured | None = None
    for m in measured:
        files, klrank_s = m.spec.n_files, m.klrank_s
        if klrank_s is None:
            cells = [f"timed out ({timeout_s} s)", "–", _us(m.polars_s, files), "–"]
        else:
            ratio = f"{klrank_s / m.polars_s:.1f}×"
            cells = [f"{klrank_s:.2f}", _us(klrank_s, files), _us(m.polars_s, files), ratio]
        slope = ["–", "–", "–"]
        if previous is not None and klrank_s is not None and previous.klrank_s is not None:
            added = files - previous.spec.n_files
            k = klrank_s - previous.klrank_s
            p = m.polars_s - previous.polars_s
            slope = [_us(k, added), _us(p, added), f"{k / p:.1f}×" if p > 0 else "–"]
        rss = "–" if klrank_s is None else f"{max(r.peak_rss_mib for r in m.klrank):.0f}"
        lines.append(
            f"| {m.spec.n_rows:,} | {files:,} | {cells[0]} | {m.polars_s:.2f} | {cells[1]} "
            f"| {cells[2]} | {cells[3]} | {' | '.join(slope)} | {rss} |"
        )
        previous = m
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, time and print the table; exit 1 if klrank failed or disagreed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--files",
        default="100,1000,10000",
        help="label rows N, one file each (default: %(default)s)",
    )
    parser.add_argument("--models", type=int, default=2, help="models (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=3, help="classes (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (default: 1)")
    parser.add_argument(
        "--data-dir", type=Path, default=HERE / "data", help="data cache (default: %(default)s)"
    )
    parser.add_argument("--klrank", default=default_klrank(), help="klrank executable")
    parser.add_argument(
        "--timeout",
        type=int,
        default=0,
        help="kill a klrank run after this many seconds (0: never)",
    )
    parser.add_argument("--rtol", type=float, default=1e-9, help="mean KL agreement tolerance")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    sizes = sorted({int(n) for n in args.files.split(",")})
    if args.repeat < 1 or args.models < 1 or args.classes < 2 or min(sizes) < 1:
        parser.error("--repeat, --models and every N must be at least 1, --classes at least 2")
    measured = []
    with tempfile.TemporaryDirectory(prefix="klrank-many-files-") as work:
        for n in sizes:
            spec = Spec(n, args.models, args.classes)
            folder = ensure(spec, args.data_dir)
            polars_s = polars_read(folder, args.repeat)
            try:
                runs = [
                    klrank_run(folder, spec, args.klrank, Path(work), args.timeout, args.rtol)
                    for _ in range(args.repeat)
                ]
            except BenchmarkError as error:
                print(f"klrank failed: {error}", file=sys.stderr)
                return 1
            measured.append(Measured(spec, runs, polars_s))
            print(f"N={n:,}: done", file=sys.stderr)
    text = "\n".join(
        [
            f"## klrank on one-row part files ({args.models} models, {args.classes} classes)",
            "",
            f"- klrank: `{args.klrank}`; Polars {pl.__version__}; median of {args.repeat} "
            "repetition(s); klrank's seconds include interpreter start-up, Polars' are the read "
            "alone; an added file's cost is the slope between this size and the one above",
            "",
            table(measured, args.timeout),
        ]
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
