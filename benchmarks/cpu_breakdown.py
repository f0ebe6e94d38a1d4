"""Where a local ``klrank run`` spends its CPU time, one piece of work at a time.

Times each step of the local engine on the first batch of the labels and of one model of a data
set (``2m`` unless ``--data`` says otherwise), in this process, with Polars on all cores, and
scales it by the number of times a run does it. Then runs ``klrank run`` once on the same data
and prints its CPU time beside the sum, so a reader sees what the steps leave out (threads
waiting on each other, the kernel's share of reading). Generate the data first (``make bench``).

One step is not klrank's: the measure query restricted to what the DuckDB job computes (KL,
cross-entropy and entropy, no reverse KL, Jensen–Shannon or top-1 agreement), to show what the
extra measures cost.
"""

import argparse
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from klrank.config import InputOptions
from klrank.engines.local import batch_rows, model_inputs
from klrank.evaluation import Timings, open_inputs
from klrank.io import writing
from klrank.pipeline import aggregate, divergence
from klrank.pipeline.fold import Measures, ModelState, measure_batch
from klrank.pipeline.layout import (
    ROW,
    Layout,
    cross_entropy,
    kl_term_col,
    kl_terms,
    log_p_col,
    log_q_col,
    prepare_labels,
    prepare_predictions,
)
from klrank.pipeline.validation import check_rows, label_columns

DATA = Path(__file__).resolve().parent / "data" / "2m"
KLRANK = Path(sys.executable).with_name("klrank")
INSET = "  "  # a line that is not a step of the run, not added to the sum


def _timed(step: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds (every thread of this process) of ``step``."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _kl_only_rows(labels: pl.DataFrame, batch: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    # The local engine's measure query (klrank.pipeline.fold.measure_batch) without reverse KL,
    # Jensen-Shannon and top-1 agreement.
    n = len(layout.classes)
    kl = divergence.to_base(divergence.sum_terms([pl.col(kl_term_col(i)) for i in range(n)]), "2")
    return (
        pl.concat([labels.lazy(), prepare_predictions(batch.lazy(), layout, 0.0)], how="horizontal")
        .with_columns(kl_terms(layout))
        .with_columns(kl.alias("kl"))
        .with_columns(cross_entropy())
        .drop(*[log_p_col(i) for i in range(n)], *[log_q_col(i) for i in range(n)])
        .collect()
    )


def _run_cpu(data: Path, klrank: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one ``klrank run`` on ``data``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [str(klrank), "run", "--quiet", "--labels", str(data / "labels.parquet")]
            + ["--predictions", str(data / "predictions"), "--out", f"{out}/report"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Print one line per step: per call, calls per run, CPU s per run; then the run's own CPU."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA, help="a data set folder (default: 2m)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each step")
    parser.add_argument("--klrank", type=Path, default=KLRANK, help="the klrank to run whole")
    args = parser.parse_args()
    inputs = open_inputs(
        InputOptions(str(args.data / "labels.parquet"), str(args.data / "predictions")),
        None,
        Timings(),
    )  # as the CLI opens them, with its default options
    labels, predictions, layout = inputs.labels, inputs.predictions, inputs.layout
    measures = Measures()
    size = batch_rows(len(layout.classes))
    models = model_inputs(predictions, layout)
    model = models[0].name
    assert model is not None
    label_frame = labels.frame.select(*label_columns(layout), ROW).slice(0, size)
    model_frame = models[0].frame.slice(0, size)  # read as the engine reads it
    label_batch, model_batch = label_frame.collect(), model_frame.collect()
    prepared = prepare_labels(label_batch.lazy(), layout, measures.base).collect()
    prepared = prepared.with_columns(label_batch.get_column(ROW))
    n_models = len(models)
    label_batches = math.ceil(labels.n_rows / size)
    model_batches = math.ceil(predictions.n_rows / size)

    def measure() -> pl.DataFrame:
        target = ModelState(model, iter(()))
        rows: list[pl.DataFrame] = []
        measure_batch(target, prepared, model_batch, layout, measures, [], rows.append)
        return rows[0]

    rows = measure()
    kl = pl.concat([rows.get_column("kl")] * math.ceil(labels.n_rows / rows.height))
    kl_frame = pl.DataFrame({"a": kl, "b": kl.reverse()})

    def kl_only() -> pl.DataFrame:
        return _kl_only_rows(prepared, model_batch, layout)

    def write_rows() -> None:
        with tempfile.TemporaryDirectory() as folder:
            writer = writing.RowsWriter(Path(folder) / "rows.parquet")
            writer.write(rows)
            writer.close()

    def check_labels() -> pl.DataFrame:
        return check_rows(label_batch, "labels", layout, measures.tolerance)

    def check_model() -> pl.DataFrame:
        return check_rows(model_batch, "predictions", layout, measures.tolerance)

    def prepare() -> pl.DataFrame:
        return prepare_labels(label_batch.lazy(), layout, measures.base).collect()

    def paired() -> pl.DataFrame:
        return kl_frame.select(aggregate._moments(pl.col("a") - pl.col("b"), "d"))

    steps: list[tuple[str, Callable[[], Any], int]] = [
        ("read a label batch", label_frame.collect, label_batches),
        ("read a model batch", model_frame.collect, model_batches),
        ("check a label batch", check_labels, label_batches),
        ("check a model batch", check_model, model_batches),
        ("prepare a label batch", prepare, label_batches),
        ("measure a model batch (query, states, worst rows)", measure, model_batches),
        (f"{INSET}the query with KL, cross-entropy, entropy only", kl_only, model_batches),
        ("write a model batch to rows.parquet", write_rows, model_batches),
        ("sort a model's kl column (exact quantiles)", kl.sort, n_models),
        ("paired-test states of a model", paired, n_models),
    ]
    print(
        f"data: {args.data} ({labels.n_rows:,} label rows, {n_models} models, {size:,} rows a batch)"
    )
    print("| step | wall ms a call | CPU ms a call | calls a run | CPU s a run |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for name, step, calls in steps:
        wall, cpu = _timed(step, args.repeat)
        if not name.startswith(INSET):  # a variant, not a step of the run
            total += cpu * calls
        print(f"| {name} | {wall * 1000:.1f} | {cpu * 1000:.1f} | {calls} | {cpu * calls:.2f} |")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import klrank.cli"], check=True)
    imports = time.perf_counter() - start
    print(
        f"| start the interpreter and import klrank's CLI | {imports * 1000:.0f} | – | 1 | {imports:.2f} |"
    )
    total += imports
    wall, cpu = _run_cpu(args.data, args.klrank)
    print(
        f"\nsteps above: {total:.2f} CPU s; `klrank run` on the same data: {wall:.2f} s, {cpu:.2f} CPU s"
    )


if __name__ == "__main__":
    main()
