"""A hostile-input matrix through the whole CLI: odd paths, odd Parquet files, extreme numbers.

Every case states the exit code a user should get. Whatever the case, klrank must answer with a
documented code, never an internal error (70) or a Python traceback, and a success must publish
numbers that agree with an independent numpy oracle. The cases run one after another in this
process (:func:`invoke`), and every mismatch is reported at once.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import Result, invoke, prob_predictions, soft_labels, write

CLASSES = ("a", "b", "c")
DOCUMENTED = {0, 1, 2, 3, 69, 74, 75}


def _frames(
    p: list[tuple[float, ...]], q: dict[str, list[tuple[float, ...]]]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    labels = pl.DataFrame(
        {
            "id": list(range(len(p))),
            **{f"prob_{c}": [r[k] for r in p] for k, c in enumerate(CLASSES)},
        }
    )
    rows = [(m, i, r) for m, table in q.items() for i, r in enumerate(table)]
    predictions = pl.DataFrame(
        {
            "model": [m for m, _, _ in rows],
            "id": [i for _, i, _ in rows],
            **{f"prob_{c}": [r[k] for _, _, r in rows] for k, c in enumerate(CLASSES)},
        }
    )
    return labels, predictions


def _oracle_mean_kl_bits(p: list[tuple[float, ...]], q: list[tuple[float, ...]]) -> float:
    """Mean over rows of sum p * log2(p / q), with 0 log 0 = 0, in numpy (not klrank)."""
    pa, qa = np.array(p, dtype=np.float64), np.array(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pa > 0, pa * (np.log(pa) - np.log(qa)), 0.0)
    return float(terms.sum(axis=1).mean() / math.log(2))


@dataclass(frozen=True)
class Case:
    """Inputs made under a folder, the arguments after ``run``, and what should come of them."""

    make: Callable[[Path], list[str | Path]]
    code: int
    check: Callable[[Path, Result], None] | None = None


def _plain(root: Path) -> list[str | Path]:
    return ["-l", write(soft_labels(), root / "labels.parquet"),
            "-p", write(prob_predictions(), root / "predictions.parquet")]  # fmt: skip


def _odd_folder_names(root: Path) -> list[str | Path]:
    folder = root / "dáta dir [1] #x"
    return ["-l", write(soft_labels(), folder / "labels.parquet"),
            "-p", write(prob_predictions(), folder / "preds.parquet"), "--out", root / "out ü"]  # fmt: skip


def _quoted_hive_value(root: Path) -> list[str | Path]:
    predictions = prob_predictions()
    for (model,), part in predictions.group_by("model"):
        write(part.drop("model"), root / "p" / f"model={model}%20x" / "part-0.parquet")
    return ["-l", write(soft_labels(), root / "labels.parquet"), "-p", root / "p"]


def _models_named(names: set[str]) -> Callable[[Path, Result], None]:
    def check(out: Path, result: Result) -> None:
        got = set(pl.read_parquet(out / "report.parquet").get_column("model").to_list())
        assert got == names, got

    return check


def _spark_folder_named_parquet(root: Path) -> list[str | Path]:
    folder = root / "predictions.parquet"
    preds = prob_predictions()
    write(preds.head(4), folder / "part-00000.parquet")
    write(preds.tail(4), folder / "part-00001.parquet")
    (folder / "_SUCCESS").write_text("")
    write(preds.head(1), folder / ".part-00002.parquet.crc.parquet")  # hidden: skipped
    return ["-l", write(soft_labels(), root / "labels.parquet"), "-p", folder]


def _out_below_a_file(root: Path) -> list[str | Path]:
    (root / "file.txt").write_text("x")
    return [*_plain(root), "--out", root / "file.txt" / "out"]


def _relative_out_with_dots(root: Path) -> list[str | Path]:
    return [*_plain(root), "--out", root / "a" / ".." / "out"]


def _zero_row_labels(root: Path) -> list[str | Path]:
    return ["-l", write(soft_labels().head(0), root / "labels.parquet"),
            "-p", write(prob_predictions(), root / "predictions.parquet")]  # fmt: skip


def _an_empty_part_beside_full_ones(root: Path) -> list[str | Path]:
    write(prob_predictions().head(0), root / "p" / "part-0.parquet")
    write(prob_predictions(), root / "p" / "part-1.parquet")
    return ["-l", write(soft_labels(), root / "labels.parquet"), "-p", root / "p"]


def _truncated(root: Path) -> list[str | Path]:
    path = write(prob_predictions(), root / "predictions.parquet")
    path.write_bytes(path.read_bytes()[:100])
    return ["-l", write(soft_labels(), root / "labels.parquet"), "-p", path]


def _not_parquet(root: Path) -> list[str | Path]:
    (root / "predictions.parquet").write_text("id,prob_a\n1,0.5\n")
    return ["-l", write(soft_labels(), root / "labels.parquet"), "-p", root / "predictions.parquet"]


def _empty_folder(root: Path) -> list[str | Path]:
    (root / "nothing").mkdir()
    return ["-l", write(soft_labels(), root / "labels.parquet"), "-p", root / "nothing"]


def _categorical_ids(root: Path) -> list[str | Path]:
    labels = soft_labels().with_columns(pl.col("id").cast(pl.String).cast(pl.Categorical))
    preds = prob_predictions().with_columns(pl.col("id").cast(pl.String).cast(pl.Categorical))
    return [
        "-l",
        write(labels, root / "labels.parquet"),
        "-p",
        write(preds, root / "preds.parquet"),
    ]


def _float32_probabilities(root: Path) -> list[str | Path]:
    preds = prob_predictions().with_columns(pl.col("^prob_.*$").cast(pl.Float32))
    return [
        "-l",
        write(soft_labels(), root / "labels.parquet"),
        "-p",
        write(preds, root / "preds.parquet"),
    ]


def _internal_column_name(root: Path) -> list[str | Path]:
    labels = soft_labels().with_columns(pl.lit(7).alias("__klrank_row"))
    return [
        "-l",
        write(labels, root / "labels.parquet"),
        "-p",
        write(prob_predictions(), root / "preds.parquet"),
    ]


EXTREME_P = [(5e-324, 0.5, 0.5 - 5e-324), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (1 / 3, 1 / 3, 1 / 3)]
EXTREME_Q = {
    "subnormal": [(5e-324, 0.5, 0.5), (1e-300, 1e-300, 1.0), (1.0, 1e-310, 0.0), (0.2, 0.3, 0.5)],
    "same": EXTREME_P,
}


def _extreme_probabilities(root: Path) -> list[str | Path]:
    labels, predictions = _frames(EXTREME_P, EXTREME_Q)
    return [
        "-l",
        write(labels, root / "labels.parquet"),
        "-p",
        write(predictions, root / "preds.parquet"),
    ]


def _extreme_check(out: Path, result: Result) -> None:
    report = pl.read_parquet(out / "report.parquet").filter(pl.col("slice") == "ALL")
    got = dict(zip(report.get_column("model"), report.get_column("mean_kl"), strict=True))
    for model, q in EXTREME_Q.items():
        expected = _oracle_mean_kl_bits(EXTREME_P, q)
        assert got[model] == pytest.approx(expected, rel=1e-12, abs=1e-15), (model, got, expected)
    assert got["same"] == 0.0


def _a_zero_where_the_truth_is_not(root: Path) -> list[str | Path]:
    p = [(0.5, 0.5, 0.0), (0.2, 0.3, 0.5)]
    labels, predictions = _frames(p, {"m": [(1.0, 0.0, 0.0), (0.2, 0.3, 0.5)]})
    return [
        "-l",
        write(labels, root / "labels.parquet"),
        "-p",
        write(predictions, root / "preds.parquet"),
    ]


def _infinite_check(out: Path, result: Result) -> None:
    report = pl.read_parquet(out / "report.parquet").filter(pl.col("slice") == "ALL")
    assert report.get_column("n_infinite").to_list() == [1]
    assert report.get_column("mean_kl").to_list() == [math.inf]


def _nan_probability(root: Path) -> list[str | Path]:
    preds = prob_predictions().with_columns(
        pl.when(pl.col("id") == 2).then(float("nan")).otherwise(pl.col("prob_a")).alias("prob_a")
    )
    return [
        "-l",
        write(soft_labels(), root / "labels.parquet"),
        "-p",
        write(preds, root / "preds.parquet"),
    ]


def _unicode_model_names(root: Path) -> list[str | Path]:
    preds = prob_predictions().with_columns(
        pl.col("model").replace({"m": "modèle 🚀", "n": "模型"})
    )
    return [
        "-l",
        write(soft_labels(), root / "labels.parquet"),
        "-p",
        write(preds, root / "preds.parquet"),
    ]


CASES: dict[str, Case] = {
    "odd_folder_names": Case(_odd_folder_names, 0),
    "quoted_hive_value": Case(_quoted_hive_value, 0, _models_named({"m x", "n x"})),
    "spark_folder_named_parquet": Case(_spark_folder_named_parquet, 0, _models_named({"m", "n"})),
    "out_below_a_file": Case(_out_below_a_file, 74),
    "relative_out_with_dots": Case(_relative_out_with_dots, 0),
    "zero_row_labels": Case(_zero_row_labels, 1),
    "an_empty_part_beside_full_ones": Case(_an_empty_part_beside_full_ones, 0),
    "truncated_parquet": Case(_truncated, 2),
    "csv_named_parquet": Case(_not_parquet, 2),
    "empty_input_folder": Case(_empty_folder, 2),
    "categorical_ids": Case(_categorical_ids, 1),
    "float32_probabilities": Case(_float32_probabilities, 0),
    "internal_column_name": Case(_internal_column_name, 2),  # a name klrank keeps for itself
    "extreme_probabilities": Case(_extreme_probabilities, 0, _extreme_check),
    "a_zero_where_the_truth_is_not": Case(_a_zero_where_the_truth_is_not, 0, _infinite_check),
    "nan_probability": Case(_nan_probability, 1),
    "unicode_model_names": Case(_unicode_model_names, 0, _models_named({"modèle 🚀", "模型"})),
}


def test_hostile_matrix(tmp_path: Path) -> None:
    problems = []
    for name, case in CASES.items():
        root = tmp_path / name
        root.mkdir()
        args = case.make(root)
        if "--out" not in args:
            args = [*args, "--out", root / "out"]
        out = Path(args[args.index("--out") + 1])
        result = invoke("run", *args, "--no-html")
        if "Traceback" in result.stderr or result.returncode not in DOCUMENTED:
            problems.append(f"{name}: undocumented outcome\n{result}")
        elif result.returncode != case.code:
            problems.append(f"{name}: expected exit {case.code}\n{result}")
        elif case.code == 0 and case.check is not None:
            try:
                case.check(out, result)
            except AssertionError as error:
                problems.append(f"{name}: wrong output: {error}")
    assert not problems, "\n\n".join(problems)
