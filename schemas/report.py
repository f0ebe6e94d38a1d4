"""Pandera schema of the published ``report.parquet``: the contract with its readers.

Changing a column, its dtype or its meaning bumps ``REPORT_SCHEMA_VERSION`` and gets a CHANGELOG
entry. Every float is Float64 and every count Int64 (Spark has no unsigned integers). Columns that
are undefined for a row are null, never NaN: the spread of a mean with infinite values, the
p-value of the best model against itself.

Divergences carry no ``>= 0`` check on purpose: inputs may sum to 1 only within the tolerance and
are never renormalised, so a divergence can honestly come out slightly below zero.
"""

import pandera.polars as pa
import polars as pl

REPORT_SCHEMA_VERSION = "4"
UNIT_NAMES = ("bits", "nats", "bans")

_non_negative = [pa.Check.ge(0.0)]
_probability = [pa.Check.in_range(0.0, 1.0)]


def _float(nullable: bool = False, checks: list[pa.Check] | None = None) -> pa.Column:
    return pa.Column(pl.Float64, nullable=nullable, checks=checks or [])


REPORT_COLUMNS: dict[str, pa.Column] = {
    "slice": pa.Column(pl.String, nullable=False),
    "rank": pa.Column(pl.Int64, checks=[pa.Check.ge(1)]),
    "model": pa.Column(pl.String, nullable=False),
    "n_rows": pa.Column(pl.Int64, checks=[pa.Check.ge(1)]),
    "mean_kl": _float(),
    "std_kl": _float(nullable=True, checks=_non_negative),
    "sem_kl": _float(nullable=True, checks=_non_negative),
    "ci95_low": _float(nullable=True),
    "ci95_high": _float(nullable=True),
    "min_kl": _float(),
    "median_kl": _float(),
    "p90_kl": _float(),
    "p95_kl": _float(),
    "p99_kl": _float(),
    "max_kl": _float(),
    "n_infinite": pa.Column(pl.Int64, checks=[pa.Check.ge(0)]),
    "mean_reverse_kl": _float(),
    "mean_js": _float(),
    "mean_cross_entropy": _float(checks=_non_negative),
    "mean_entropy": _float(checks=_non_negative),
    "marginal_kl": _float(),
    "top1_agreement": _float(checks=_probability),
    "delta_vs_best": _float(nullable=True),
    "delta_vs_best_sem": _float(nullable=True, checks=_non_negative),
    "p_value_vs_best": _float(nullable=True, checks=_probability),
    "unit": pa.Column(pl.String, checks=[pa.Check.isin(UNIT_NAMES)]),
    # Version 2: the comparison with a baseline run (null without one, or for a new model).
    "prev_mean_kl": _float(nullable=True),
    "change_mean_kl": _float(nullable=True),
    "change_mean_kl_pct": _float(nullable=True),
    "p_value_change": _float(nullable=True, checks=_probability),
    # Version 3: the ranking's uncertainty. Clusters (null without --cluster-by), Holm's
    # adjustment of p_value_vs_best, the bootstrap's p_best and rank interval (null without
    # --bootstrap), and the comparison with the prior, which predicts the slice's mean P.
    "n_clusters": pa.Column(pl.Int64, nullable=True, checks=[pa.Check.ge(1)]),
    "p_value_vs_best_holm": _float(nullable=True, checks=_probability),
    "p_best": _float(nullable=True, checks=_probability),
    "rank_low": pa.Column(pl.Int64, nullable=True, checks=[pa.Check.ge(1)]),
    "rank_high": pa.Column(pl.Int64, nullable=True, checks=[pa.Check.ge(1)]),
    "prior_mean_kl": _float(),
    "delta_vs_prior": _float(nullable=True),
    "delta_vs_prior_sem": _float(nullable=True, checks=_non_negative),
    "p_value_vs_prior": _float(nullable=True, checks=_probability),
    # Version 4: the token measures of soft truth with the token that came next (null without a
    # label column): the mean nll (the run's unit), PPL = exp(mean nll in nats), the ln of
    # PPL(Q)/PPL(P) (nats) and that ratio, the mean and RMS of Δp = q(token) − p(token), with
    # their standard errors (clustered with --cluster-by).
    "mean_nll": _float(nullable=True),
    "mean_nll_sem": _float(nullable=True, checks=_non_negative),
    "ppl": _float(nullable=True, checks=_non_negative),
    "ppl_sem": _float(nullable=True, checks=_non_negative),
    "ln_ppl_ratio": _float(nullable=True),
    "ln_ppl_ratio_sem": _float(nullable=True, checks=_non_negative),
    "ppl_ratio": _float(nullable=True, checks=_non_negative),
    "mean_delta_p": _float(nullable=True),
    "mean_delta_p_sem": _float(nullable=True, checks=_non_negative),
    "rms_delta_p": _float(nullable=True, checks=_non_negative),
    "rms_delta_p_sem": _float(nullable=True, checks=_non_negative),
}

REPORT_SCHEMA = pa.DataFrameSchema(
    REPORT_COLUMNS,
    unique=["slice", "model"],
    strict=True,
    ordered=True,
    coerce=False,
    name="report",
)


_FLOAT_COLUMNS = frozenset(
    name
    for name in REPORT_COLUMNS
    if name
    not in (
        "slice",
        "model",
        "unit",
        "rank",
        "n_rows",
        "n_infinite",
        "n_clusters",
        "rank_low",
        "rank_high",
    )
)
_not_nan = pa.Check(lambda data: data.lazyframe.select(~pl.col(data.key).is_nan()), name="not_nan")


def report_columns_schema(columns: tuple[str, ...]) -> pa.DataFrameSchema:
    """The report's rules for some of its columns: what reading back an earlier report checks.

    Floats may not be NaN (the report writes null for an undefined value), and (slice, model)
    is unique where both are read.
    """
    chosen = {}
    for name in columns:
        column = REPORT_COLUMNS[name]
        checks = list(column.checks)
        if name in _FLOAT_COLUMNS:
            checks.append(_not_nan)
        chosen[name] = pa.Column(column.dtype, nullable=column.nullable, checks=checks)
    unique = ["slice", "model"] if {"slice", "model"} <= set(columns) else None
    return pa.DataFrameSchema(chosen, unique=unique, coerce=False, name="report")
