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

A language-model set (:class:`LmDataSet`, the sizes ``lm-tiny``, ``lm1k``, ``lm32k``, ``lm128k``) is one
folder ``<data dir>/<name>/`` with, for N tokens and a vocabulary of K:

- ``labels.parquet``: ``id`` (int64), ``label`` (int32, the token that came next, drawn from
  the base distribution) and ``logit`` (Array(Float32, K), the base model's logits);
- ``labels-prob.parquet``: ``id``, ``label`` and ``prob`` (Array(Float64, K)), the same base as
  probabilities, softmax of the Float32 logits computed in Float64 (for a klrank that cannot
  read logits as truth; Float32 probabilities would move the mean KL by about 1e-7 relative,
  past the harness's 1e-9 agreement check);
- ``predictions/model=m<j>/part-0.parquet``: ``id`` and ``logit`` (Array(Float32, K)) of
  candidate ``m<j>``, the base logits plus Gaussian noise whose size grows with j;
- ``dataset.json``, as above.

Base logits have a language model's shape: row r gives the token of rank i the logit
-s_r·log i plus Gaussian noise (a Zipf-like head and a long tail, with a per-row exponent s_r
from flat to peaked rows), its K values shuffled into a token order of the row's own, shifted by a
per-row constant (which softmax ignores). Row groups hold at most ``MAX_LM_CELLS_PER_GROUP``
values, so at most a few such (rows, K) arrays are in memory at once.
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

# Bump when the language-model generator changes what it writes (the others keep their caches).
LM_GENERATOR_VERSION = 1
LM_NOISE_SD = (0.05, 0.2, 0.6)  # candidate m<j> adds N(0, sd²) to every base logit
ZIPF_EXPONENT_RANGE = (0.8, 2.4)  # per row, uniform: top-token probability ~0.03 to ~0.7
LM_LOGIT_NOISE_SD = 0.5  # around the Zipf profile, before the shuffle
LM_LOGIT_SHIFT_RANGE = (0.0, 20.0)  # per row, uniform: logits are not centred
MAX_LM_CELLS_PER_GROUP = 1 << 23  # 32 MiB of Float32 a row group and column


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


@dataclass(frozen=True)
class LmDataSet:
    """A language model's next-token distributions: N tokens, a vocabulary of K, M candidates."""

    name: str
    n_rows: int
    n_classes: int  # the vocabulary size K
    n_models: int
    seed: int

    @property
    def rows_per_group(self) -> int:
        """Rows per Parquet row group (and per generated chunk)."""
        return max(1, min(MAX_ROWS_PER_GROUP, MAX_LM_CELLS_PER_GROUP // self.n_classes))

    @property
    def folders(self) -> dict[str, str]:
        """Layout to folder name: one folder holds both labels files."""
        return {"lm": self.name}


SIZES: dict[str, DataSet | LmDataSet] = {
    spec.name: spec
    for spec in (
        DataSet("tiny", 2_000, 10, 3, seed=20261126),
        DataSet("2m", 2_000_000, 10, 3, seed=20261127),
        DataSet("20m", 20_000_000, 10, 3, seed=20261128, run_pandas=False),
        DataSet("wide", 200_000, 1000, 2, seed=20261129, array_variant=True, run_pandas=False),
        LmDataSet("lm-tiny", 300, 50, 3, seed=20261130),
        # As many values as lm128k, over a small vocabulary: the cost per value at K = 1,000.
        LmDataSet("lm1k", 128_000, 1_000, 3, seed=20261133),
        LmDataSet("lm32k", 2_000, 32_000, 3, seed=20261131),
        LmDataSet("lm128k", 1_000, 128_000, 3, seed=20261132),
    )
}


def labels_path(folder: Path) -> Path:
    """The labels file of a data set folder."""
    return folder / "labels.parquet"


def prob_labels_path(folder: Path) -> Path:
    """The labels file of a language-model set with the base as probabilities (``prob``)."""
    return folder / "labels-prob.parquet"


def predictions_path(folder: Path) -> Path:
    """The predictions folder (hive ``model=<name>/``) of a data set folder."""
    return folder / "predictions"


def ensure(
    spec: DataSet | LmDataSet, data_dir: Path, progress: Callable[[str], None] = print
) -> Path:
    """Generate ``spec`` under ``data_dir`` unless it is already there; return its folder.

    The wide-column folder (a language-model set's only folder) is returned; an array
    variant sits beside it.
    """
    folders = {layout: data_dir / name for layout, name in spec.folders.items()}
    main = folders["lm" if isinstance(spec, LmDataSet) else "columns"]
    if all(_marker(folder) == _expected_marker(spec, layout) for layout, folder in folders.items()):
        return main
    progress(f"generating {spec.name} under {data_dir} ...")
    # Write beside the target and rename into place, so an interrupted run leaves no half set.
    partial = {
        layout: folder.with_name(f".{folder.name}.partial") for layout, folder in folders.items()
    }
    for folder in [*folders.values(), *partial.values()]:
        shutil.rmtree(folder, ignore_errors=True)
    if isinstance(spec, LmDataSet):
        _write_lm(spec, partial["lm"])
    else:
        _write(spec, partial)
    for layout, folder in partial.items():
        (folder / MARKER).write_text(json.dumps(_expected_marker(spec, layout), indent=2) + "\n")
        folder.rename(folders[layout])
    return main


def _expected_marker(spec: DataSet | LmDataSet, layout: str) -> dict[str, object]:
    version = LM_GENERATOR_VERSION if isinstance(spec, LmDataSet) else GENERATOR_VERSION
    return {"generator_version": version, "layout": layout, **asdict(spec)}


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


def zipf_logits(rng: np.random.Generator, n_rows: int, n_classes: int) -> np.ndarray:
    """Float32 base logits of shape (n_rows, n_classes): a Zipf-like profile shuffled per row.

    Row r gives its token of rank i (1-based) the logit -s_r·log i + N(0, LM_LOGIT_NOISE_SD²),
    s_r uniform in ``ZIPF_EXPONENT_RANGE``, then shuffles the row's K values into an order of
    its own and adds a per-row shift from ``LM_LOGIT_SHIFT_RANGE``.
    """
    exponents = rng.uniform(*ZIPF_EXPONENT_RANGE, size=(n_rows, 1))
    profile = -np.log(np.arange(1, n_classes + 1, dtype=np.float64))
    logits = exponents * profile + rng.normal(0.0, LM_LOGIT_NOISE_SD, size=(n_rows, n_classes))
    logits = rng.permuted(logits, axis=1)
    logits += rng.uniform(*LM_LOGIT_SHIFT_RANGE, size=(n_rows, 1))
    return logits.astype(np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in Float64, shifted by the row maximum."""
    shifted: np.ndarray = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def _lm_chunks(
    spec: LmDataSet,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Ids, next tokens, base logits and [candidate logits] of one row group at a time."""
    base_seed, token_seed, *model_seeds = np.random.SeedSequence(spec.seed).spawn(2 + spec.n_models)
    base_rng, token_rng = np.random.default_rng(base_seed), np.random.default_rng(token_seed)
    model_rngs = [np.random.default_rng(seed) for seed in model_seeds]
    for start in range(0, spec.n_rows, spec.rows_per_group):
        n = min(spec.rows_per_group, spec.n_rows - start)
        base = zipf_logits(base_rng, n, spec.n_classes)
        # Gumbel-max: argmax(z + Gumbel noise) is a draw from softmax(z).
        noisy = base.astype(np.float64) + token_rng.gumbel(size=base.shape)
        tokens = noisy.argmax(axis=1).astype(np.int32)
        del noisy
        candidates = [
            (base + rng.normal(0.0, sd, size=base.shape)).astype(np.float32)
            for sd, rng in zip(LM_NOISE_SD[: spec.n_models], model_rngs, strict=True)
        ]
        yield np.arange(start, start + n, dtype=np.int64), tokens, base, candidates


def _array(values: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows, K) array as the fixed-size list column Array(dtype, K)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def _write_lm(spec: LmDataSet, folder: Path) -> None:
    k = spec.n_classes
    ids_and_label = [("id", pa.int64()), ("label", pa.int32())]
    labels_schema = pa.schema([*ids_and_label, ("logit", pa.list_(pa.float32(), k))])
    prob_schema = pa.schema([*ids_and_label, ("prob", pa.list_(pa.float64(), k))])
    model_schema = pa.schema([("id", pa.int64()), ("logit", pa.list_(pa.float32(), k))])
    model_paths = [
        predictions_path(folder) / f"model=m{j}" / "part-0.parquet" for j in range(spec.n_models)
    ]
    for path in [labels_path(folder), *model_paths]:
        path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        labels = stack.enter_context(pq.ParquetWriter(labels_path(folder), labels_schema))
        probs = stack.enter_context(pq.ParquetWriter(prob_labels_path(folder), prob_schema))
        models = [stack.enter_context(pq.ParquetWriter(p, model_schema)) for p in model_paths]
        for ids, tokens, base, candidates in _lm_chunks(spec):
            id_column, token_column = pa.array(ids), pa.array(tokens)
            rows = len(ids)
            labels.write_table(
                pa.Table.from_arrays([id_column, token_column, _array(base)], schema=labels_schema),
                row_group_size=rows,
            )
            prob = np.exp(log_softmax(base))
            probs.write_table(
                pa.Table.from_arrays([id_column, token_column, _array(prob)], schema=prob_schema),
                row_group_size=rows,
            )
            del prob
            for writer, logits in zip(models, candidates, strict=True):
                table = pa.Table.from_arrays([id_column, _array(logits)], schema=model_schema)
                writer.write_table(table, row_group_size=rows)
