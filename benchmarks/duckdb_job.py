"""The klrank job as a careful DuckDB user would write it, in SQL, with DuckDB's default threads.

1. Load both inputs into tables (every later step reads them again).
2. Check them, collecting every failure before stopping: nulls, NaN, values outside [0, 1], row
   sums within ``--tolerance`` of 1, unique label ids, unique (id, model), the same classes in
   both inputs, and every model covering exactly the label ids. Any failure: exit 1.
3. Join, compute per-row KL divergence, cross-entropy and entropy in bits (0·log 0 = 0; p > 0
   with q = 0 gives +inf), write them to ``rows.parquet`` (unordered: SQL users rarely sort).
4. Per model: n, mean / sample stddev / median / p99 / max of KL and the mean cross-entropy and
   entropy, to ``report.parquet``.

The SQL is generated from the labels' ``prob_*`` columns. Sums and ORs over the classes are
written as balanced trees: a left-deep chain of a thousand terms would pass DuckDB's default
``max_expression_depth`` of 1000.
"""

import argparse
import sys
from pathlib import Path

import duckdb

PREFIX = "prob_"


def main() -> None:
    """Run the job; exit 1 if the inputs fail a check."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    con = duckdb.connect()
    con.execute(f"CREATE TABLE labels AS SELECT * FROM read_parquet({_literal(args.labels)})")
    predictions = _literal(f"{args.predictions}/**/*.parquet")
    con.execute(
        f"CREATE TABLE predictions AS SELECT * FROM read_parquet({predictions}, hive_partitioning = true)"
    )
    classes = _classes(con, "labels")
    failures = _check(con, classes, _classes(con, "predictions"), args.tolerance)
    if failures:
        print(f"validation failed: {len(failures)} failed checks", file=sys.stderr)
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)

    con.execute(f"CREATE TABLE rows AS {_rows_sql(classes)}")
    con.execute(f"COPY rows TO {_literal(args.out / 'rows.parquet')} (FORMAT parquet)")
    con.execute(
        f"COPY ({_report_sql()}) TO {_literal(args.out / 'report.parquet')} (FORMAT parquet)"
    )


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _fold(op: str, terms: list[str]) -> str:
    """``terms`` joined by the binary operator ``op`` as a balanced tree."""
    if len(terms) == 1:
        return terms[0]
    middle = len(terms) // 2
    return f"({_fold(op, terms[:middle])} {op} {_fold(op, terms[middle:])})"


def _classes(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    names = [
        row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()
    ]
    return [name[len(PREFIX) :] for name in names if name.startswith(PREFIX)]


def _row_checks(columns: list[str], tolerance: float) -> str:
    """Aggregates counting the rows that fail each check of a table's probability columns."""
    nulls = _fold("OR", [f"{c} IS NULL" for c in columns])
    nans = _fold("OR", [f"isnan({c})" for c in columns])
    # NaN sorts above every number in DuckDB, so it is excluded here and counted on its own.
    outside = _fold("OR", [f"(NOT isnan({c}) AND ({c} < 0 OR {c} > 1))" for c in columns])
    bad_sum = f"abs({_fold('+', columns)} - 1) > {tolerance!r}"
    return (
        f"count(*) - count(id) AS null_id, count(id) - count(DISTINCT id) AS duplicate_id, "
        f"count_if({nulls}) AS null_prob, count_if({nans}) AS nan_prob, "
        f"count_if({outside}) AS outside_0_1, count_if({bad_sum}) AS bad_row_sum, "
        f"count(*) AS n_rows"
    )


def _check(
    con: duckdb.DuckDBPyConnection,
    label_classes: list[str],
    prediction_classes: list[str],
    tolerance: float,
) -> list[str]:
    failures = []
    if not label_classes or set(label_classes) != set(prediction_classes):
        return [f"class sets differ: labels {label_classes}, predictions {prediction_classes}"]
    columns = [_ident(PREFIX + c) for c in label_classes]
    checks = _row_checks(columns, tolerance)
    queries = [
        f"SELECT 'labels' AS what, {checks} FROM labels",
        f"SELECT 'model ' || model AS what, {checks} FROM predictions GROUP BY model ORDER BY model",
    ]
    for query in queries:
        result = con.execute(query)
        names = [d[0] for d in result.description]
        for row in result.fetchall():
            counts = dict(zip(names, row, strict=True))
            what = counts.pop("what")
            if counts.pop("n_rows") == 0:
                failures.append(f"{what}: no rows")
            failures += [f"{what}: {check}: {n} rows" for check, n in counts.items() if n]
    # One outer join instead of an anti join per direction: label ids are unique (checked
    # above), so a model misses exactly the label ids it did not match.
    coverage = con.execute(
        """
        SELECT p.model, count(DISTINCT l.id) AS matched, count(*) - count(l.id) AS extra
        FROM predictions p LEFT JOIN labels l ON p.id = l.id
        GROUP BY p.model ORDER BY p.model
        """
    ).fetchall()
    n_labels = con.execute("SELECT count(*) FROM labels").fetchone()[0]
    for model, matched, extra in coverage:
        if matched < n_labels:
            failures.append(
                f"model {model}: label ids without a prediction: {n_labels - matched} ids"
            )
        if extra:
            failures.append(f"model {model}: predicted ids not in the labels: {extra} ids")
    return failures


def _rows_sql(classes: list[str]) -> str:
    p = [f"l.{_ident(PREFIX + c)}" for c in classes]
    q = [f"p.{_ident(PREFIX + c)}" for c in classes]
    kl = [
        f"CASE WHEN {pc} = 0 THEN 0 WHEN {qc} = 0 THEN 'inf'::DOUBLE "
        f"ELSE {pc} * (log2({pc}) - log2({qc})) END"
        for pc, qc in zip(p, q, strict=True)
    ]
    cross_entropy = [
        f"CASE WHEN {pc} = 0 THEN 0 WHEN {qc} = 0 THEN 'inf'::DOUBLE ELSE -{pc} * log2({qc}) END"
        for pc, qc in zip(p, q, strict=True)
    ]
    entropy = [f"CASE WHEN {pc} = 0 THEN 0 ELSE -{pc} * log2({pc}) END" for pc in p]
    return f"""
        SELECT p.id, p.model,
            {_fold("+", kl)} AS kl,
            {_fold("+", cross_entropy)} AS cross_entropy,
            {_fold("+", entropy)} AS entropy
        FROM predictions p JOIN labels l ON p.id = l.id
    """


def _report_sql() -> str:
    return """
        SELECT model, count(*) AS n_rows,
            avg(kl) AS mean_kl, stddev_samp(kl) AS std_kl,
            quantile_cont(kl, 0.5) AS median_kl, quantile_cont(kl, 0.99) AS p99_kl,
            max(kl) AS max_kl,
            avg(cross_entropy) AS mean_cross_entropy, avg(entropy) AS mean_entropy
        FROM rows GROUP BY model ORDER BY mean_kl, model
    """


if __name__ == "__main__":
    main()
