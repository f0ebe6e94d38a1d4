"""Benchmark data sets: deterministic (fixed seeds), written row group by row group, cached.

Each data set is a folder ``<data dir>/<name>/`` with

- ``labels.parquet``: ``id`` (int64, 0..N-1) and ``prob_0..prob_{K-1}`` (Float64), soft labels
  drawn from a Dirichlet, each row summing to 1;
- ``predictions/model=m<j>/part-0.parquet``: ``id`` and ``prob_0..`` of model ``m<j>``, in the
  labels' row order, Q = (1 - w_j)·P + w_j·noise with Dirichlet noise and a weight w_j that grows
  with j (so m0 is the best model);
- ``dataset.json``: the parameters it was made with, written last; a folder without it, or with
  other parameters, is regenerated.

A data set with ``array_variant`` is also written as ``<name>-array/`` with the same numbers in
one column ``prob`` of type Array(Float64, K) instead of K columns.

Rows are generated and written one row group at a time, so the 20m set never has to fit in
memory; the random streams depend only on the seed and the (fixed) row-group size.
"""

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Bump when the generator changes what it writes, so cached data sets are regenerated.
GENERATOR_VERSION = 1
LABEL_ALPHA = 0.5  # fairly peaked soft labels
NOISE_ALPHA = 1.0
MODEL_NOISE_WEIGHTS = (0.05, 0.2, 0.5)  # model m<j> mixes in this much noise
MAX_ROWS_PER_GROUP = 1_000_000
MAX_CELLS_PER_GROUP = 10_000_000  # keeps a wide row group near 80 MB of Float64
MARKER = "dataset.json"


@dataclass(frozen=True)
class DataSet:
    """One benchmark input: N rows, K classes, M models."""

    name: str
    n_rows: int
    n_classes: int
    n_models: int
    seed: int
    array_variant: bool = False
    run_pandas: bool = True  # False where pandas+scipy would take many minutes or run out of memory

    @property
    def rows_per_group(self) -> int:
        """Rows per Parquet row group (and per generated chunk)."""
        return max(1, min(MAX_ROWS_PER_GROUP, MAX_CELLS_PER_GROUP // self.n_classes))

    @property
    def folders(self) -> dict[str, str]:
        """Layout ("columns" or "array") to folder name."""
        return {"columns": self.name} | (
            {"array": f"{self.name}-array"} if self.array_variant else {}
        )


SIZES = {
    spec.name: spec
    for spec in (
        DataSet("tiny", 2_000, 10, 3, seed=20261126),
        DataSet("2m", 2_000_000, 10, 3, seed=20261127),
        DataSet("20m", 20_000_000, 10, 3, seed=20261128, run_pandas=False),
        DataSet("wide", 200_000, 1000, 2, seed=20261129, array_variant=True, run_pandas=False),
    )
}


def labels_path(folder: Path) -> Path:
    """The labels file of a data set folder."""
    return folder / "labels.parquet"


def predictions_path(folder: Path) -> Path:
    """The predictions folder (hive ``model=<name>/``) of a data set folder."""
    return folder / "predictions"


def ensure(spec: DataSet, data_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """Generate ``spec`` under ``data_dir`` unless it is already there; return its folder.

    The wide-column folder is returned; an array variant sits beside it.
    """
    folders = {layout: data_dir / name for layout, name in spec.folders.items()}
    if all(_marker(folder) == _expected_marker(spec, layout) for layout, folder in folders.items()):
        return folders["columns"]
    progress(f"generating {spec.name} under {data_dir} ...")
    # Write beside the target and rename into place, so an interrupted run leaves no half set.
    partial = {
        layout: folder.with_name(f".{folder.name}.partial") for layout, folder in folders.items()
    }
    for folder in [*folders.values(), *partial.values()]:
        shutil.rmtree(folder, ignore_errors=True)
    _write(spec, partial)
    for layout, folder in partial.items():
        (folder / MARKER).write_text(json.dumps(_expected_marker(spec, layout), indent=2) + "\n")
        folder.rename(folders[layout])
    return folders["columns"]


def _expected_marker(spec: DataSet, layout: str) -> dict[str, object]:
    return {"generator_version": GENERATOR_VERSION, "layout": layout, **asdict(spec)}


def _marker(folder: Path) -> object:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _chunks(spec: DataSet) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Ids and [P, Q_0, ..., Q_{M-1}] of one row group at a time, each of shape (rows, K)."""
    label_seed, *model_seeds = np.random.SeedSequence(spec.seed).spawn(1 + spec.n_models)
    label_rng = np.random.default_rng(label_seed)
    model_rngs = [np.random.default_rng(seed) for seed in model_seeds]
    label_alpha = np.full(spec.n_classes, LABEL_ALPHA)
    noise_alpha = np.full(spec.n_classes, NOISE_ALPHA)
    for start in range(0, spec.n_rows, spec.rows_per_group):
        n = min(spec.rows_per_group, spec.n_rows - start)
        p = label_rng.dirichlet(label_alpha, size=n)
        qs = [
            (1.0 - weight) * p + weight * rng.dirichlet(noise_alpha, size=n)
            for weight, rng in zip(MODEL_NOISE_WEIGHTS[: spec.n_models], model_rngs, strict=True)
        ]
        yield np.arange(start, start + n, dtype=np.int64), [p, *qs]


def _schema(layout: str, n_classes: int) -> pa.Schema:
    if layout == "array":
        return pa.schema([("id", pa.int64()), ("prob", pa.list_(pa.float64(), n_classes))])
    return pa.schema([("id", pa.int64())] + [(f"prob_{k}", pa.float64()) for k in range(n_classes)])


def _table(ids: np.ndarray, probs: np.ndarray, schema: pa.Schema) -> pa.Table:
    if schema.names == ["id", "prob"]:
        # Row-major (rows, K) is exactly the flat child array of a fixed-size list.
        column = pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1])
        return pa.Table.from_arrays([pa.array(ids), column], schema=schema)
    by_class = np.ascontiguousarray(probs.T)
    return pa.Table.from_arrays([pa.array(ids), *map(pa.array, by_class)], schema=schema)


def _write(spec: DataSet, folders: dict[str, Path]) -> None:
    with ExitStack() as stack:
        writers: list[tuple[pq.ParquetWriter, int]] = []  # (writer, index into [P, Q_0, ...])
        for layout, folder in folders.items():
            schema = _schema(layout, spec.n_classes)
            paths = [labels_path(folder)] + [
                predictions_path(folder) / f"model=m{j}" / "part-0.parquet"
                for j in range(spec.n_models)
            ]
            for index, path in enumerate(paths):
                path.parent.mkdir(parents=True, exist_ok=True)
                writers.append((stack.enter_context(pq.ParquetWriter(path, schema)), index))
        for ids, tables in _chunks(spec):
            for writer, index in writers:
                table = _table(ids, tables[index], writer.schema)
                writer.write_table(table, row_group_size=len(ids))
