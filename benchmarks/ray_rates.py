"""Per-core rates of the Ray engine's two kinds of task, for docs/scaling.md.

Runs the split of one 1M-row chunk of each input of the ``2m`` data set, then one part's
validation and measures (with its ``rows.parquet`` part), in this process with Polars on one
thread, and prints rows per CPU second and the size of a part's mergeable states. No Ray needed:
the tasks' functions are called directly. Generate the data first (``make bench``).
"""

import os

os.environ["POLARS_MAX_THREADS"] = "1"  # before polars is imported: one core's rate

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import polars as pl
from klrank.config import InputOptions
from klrank.engines import ray as ray_engine
from klrank.engines.local import label_means
from klrank.evaluation import Timings, open_inputs
from klrank.io import reading
from klrank.pipeline.fold import Measures
from klrank.pipeline.layout import ROW
from klrank.pipeline.validation import label_columns, prediction_columns

DATA = Path(__file__).resolve().parent / "data" / "2m"
PARTS = 8


def _cpu() -> float:
    # CPU time of every thread of this process, to the nanosecond (os.times counts 10 ms ticks).
    return time.process_time()


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds / 1e6:.2f} M/s" if seconds > 0 else "too fast to time"


def main() -> None:
    """Print the split and part rates and the pickled size of one part's states."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA, help="a data set folder (default: 2m)")
    data = parser.parse_args().data
    inputs = open_inputs(
        InputOptions(str(data / "labels.parquet"), str(data / "predictions")), None, Timings()
    )  # as the CLI opens them, with its default options
    labels, predictions, layout = inputs.labels, inputs.predictions, inputs.layout

    def schema(source: reading.ParquetInput, columns: list[str]) -> pl.Schema:
        whole = source.frame.collect_schema()
        return pl.Schema([(c, whole[c]) for c in [*columns, ROW]])

    label_schema = schema(labels, label_columns(layout))
    prediction_schema = schema(predictions, prediction_columns(layout))
    start, pieces, counts, n_rows = _cpu(), [], [], 0
    for source, columns, model_col in (
        (labels, label_schema, None),
        (predictions, prediction_schema, layout.model_col),
    ):
        for file in source.files:
            chunk = ray_engine._Chunk((file,), 0, min(file.n_rows, 1_000_000))
            *parts, chunk_counts = ray_engine._split(
                source.path, chunk, columns, layout.id_col, PARTS, model_col
            )
            n_rows += chunk.length
            pieces.append(parts)
            if model_col is not None:
                counts.append(chunk_counts)
    seconds = _cpu() - start
    print(f"split: {n_rows:,} rows in {seconds:.2f} CPU s = {_rate(n_rows, seconds)}")
    frames = [pl.DataFrame(piece[0]) for piece in pieces]
    models = tuple(sorted({model for chunk in counts for model in chunk}))
    with tempfile.TemporaryDirectory() as rows_dir:
        spec = ray_engine._PartSpec(
            layout, Measures(), models, label_schema, prediction_schema,
            ray_engine._offsets(counts), rows_dir, True, None,
            label_means(labels, layout, Measures())[0],
        )  # fmt: skip
        for attempt in range(2):
            start = _cpu()
            partial = ray_engine._evaluate_part(spec, attempt, 1, *[piece[0] for piece in pieces])
            seconds = _cpu() - start
            model_rows = frames[0].height * len(models)
            print(
                f"part: {model_rows:,} model-rows in {seconds:.2f} CPU s = "
                f"{_rate(model_rows, seconds)}"
            )
    assert partial.sketches is not None
    print(
        f"partial states: {len(pickle.dumps(partial)) / 1024:.0f} KiB pickled, "
        f"{partial.sketches.height:,} sketch bins"
    )


if __name__ == "__main__":
    main()
