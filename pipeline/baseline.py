"""Compare tonight's report with a baseline report (usually the previous night's).

Rows are matched on (slice, model). For each, the report gains

- ``prev_mean_kl``: the baseline's mean KL, in this run's unit;
- ``change_mean_kl``: mean_kl − prev_mean_kl (absolute, in the unit);
- ``change_mean_kl_pct``: that change as a percentage of |prev_mean_kl| (what
  ``--max-regression`` compares);
- ``p_value_change``: a two-sided Welch t-test of the two means being equal, from each run's
  ``sem_kl`` and ``n_rows`` (``n_clusters`` for a clustered run: its errors have G − 1 degrees of
  freedom).

Everything is null for a model (or slice) the baseline lacks, and all four columns are null
when there is no baseline.
"""

import math
from typing import Any

import polars as pl
from klrank.pipeline.aggregate import KEYS
from klrank.pipeline.divergence import LOG_BASES, UNITS
from klrank.pipeline.stats import two_sided_p_value

BASELINE_COLUMNS = ("prev_mean_kl", "change_mean_kl", "change_mean_kl_pct", "p_value_change")
# What a baseline report must have; all of them exist since report schema version 1.
BASELINE_INPUT_COLUMNS = (*KEYS, "n_rows", "mean_kl", "sem_kl")
# Columns in the report's unit, each scaled by the same factor when the unit changes.
KL_VALUE_COLUMNS = ("mean_kl", "sem_kl", "ci95_low", "ci95_high")
_LOG_OF_BASE = {UNITS[base]: math.log(value) for base, value in LOG_BASES.items()}


def in_unit(report: pl.DataFrame, unit: str, to: str) -> pl.DataFrame:
    """``report``'s KL means, errors and intervals converted from ``unit`` to ``to``.

    A divergence in base b is the one in nats divided by ln b, so a change of unit is one
    factor (exact up to rounding), and the standard errors and intervals scale with the mean.
    """
    factor = _LOG_OF_BASE[unit] / _LOG_OF_BASE[to]
    if factor == 1.0:
        return report
    return report.with_columns(
        pl.col(c) * factor for c in KL_VALUE_COLUMNS if c in report.collect_schema()
    )


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def change_pct(change: float | None, previous: float) -> float | None:
    """The change as a percentage of |previous|; ±inf from 0, None from an infinite previous.

    Notes
    -----
    The absolute value keeps the sign of the change meaningful when a mean KL came out slightly
    below 0 (inputs sum to 1 only within the tolerance).
    """
    if change is None or math.isinf(previous):
        return None
    if previous == 0.0:
        return 0.0 if change == 0.0 else math.copysign(math.inf, change)
    return change / abs(previous) * 100.0


def welch_p_value(
    mean: float, sem: float | None, n: int, prev_mean: float, prev_sem: float | None, prev_n: int
) -> float | None:
    """Two-sided p-value of Welch's t-test of two means, from their standard errors.

    Parameters
    ----------
    mean, sem, n
        Tonight's mean KL, its standard error and row count.
    prev_mean, prev_sem, prev_n
        The same of the baseline.

    Returns
    -------
    float or None
        None when either standard error is undefined (n < 2 or infinite rows). With both
        standard errors 0 the means are exact: 1 when equal, else 0.

    Notes
    -----
    t = (mean − prev_mean) / sqrt(sem² + prev_sem²) with the Welch–Satterthwaite degrees of
    freedom (sem² + prev_sem²)² / (sem⁴/(n−1) + prev_sem⁴/(prev_n−1)); this is
    ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``. A t rather than a normal
    reference because a night may have few rows, where the normal overstates significance.
    The two nights are treated as independent samples: the rows may differ from night to
    night, and when they are the same rows a positive correlation only makes the test
    conservative. The squares are taken relative to their sum, so tiny errors cannot underflow.

    Examples
    --------
    >>> welch_p_value(1.0, 0.0, 10, 1.0, 0.0, 10)
    1.0
    >>> round(welch_p_value(1.0, 0.1, 10, 1.0, 0.1, 10), 12)
    1.0
    """
    if sem is None or prev_sem is None:
        return None
    change = mean - prev_mean
    variance = sem * sem + prev_sem * prev_sem
    if variance == 0.0:
        return 1.0 if change == 0.0 else 0.0
    share, prev_share = sem * sem / variance, prev_sem * prev_sem / variance
    df = 1.0 / (share * share / (n - 1) + prev_share * prev_share / (prev_n - 1))
    return two_sided_p_value(change / math.sqrt(variance), df)


def _units(row: dict[str, Any]) -> int:
    """The independent units behind a report row's sem_kl: its clusters, or its rows."""
    clusters: int | None = row.get("n_clusters")
    return clusters if clusters is not None else int(row["n_rows"])


def compare_with_baseline(report: pl.DataFrame, baseline: pl.DataFrame | None) -> pl.DataFrame:
    """``report`` with the :data:`BASELINE_COLUMNS`, matched on (slice, model).

    ``baseline`` has the :data:`BASELINE_INPUT_COLUMNS` (and ``n_clusters``, from a report of
    schema version 3 on), already in ``report``'s unit; None (no earlier run) gives null
    columns.
    """
    nulls = dict.fromkeys(BASELINE_COLUMNS, None)
    previous: dict[tuple[str, str], dict[str, Any]] = {}
    if baseline is not None:
        for row in baseline.iter_rows(named=True):
            previous[(row[KEYS[0]], row[KEYS[1]])] = row
    out = []
    for row in report.iter_rows(named=True):
        prev = previous.get((row[KEYS[0]], row[KEYS[1]]))
        if prev is None or prev["mean_kl"] is None or row["mean_kl"] is None:
            out.append(nulls)
            continue
        change = _finite_or_none(row["mean_kl"] - prev["mean_kl"])  # inf − inf is no change
        out.append(
            {
                "prev_mean_kl": prev["mean_kl"],
                "change_mean_kl": change,
                "change_mean_kl_pct": change_pct(change, prev["mean_kl"]),
                "p_value_change": welch_p_value(
                    row["mean_kl"],
                    row["sem_kl"],
                    _units(row),
                    prev["mean_kl"],
                    prev["sem_kl"],
                    _units(prev),
                ),
            }
        )
    columns = pl.DataFrame(out, schema=dict.fromkeys(BASELINE_COLUMNS, pl.Float64))
    return pl.concat([report, columns], how="horizontal")
