"""A mergeable quantile sketch with a relative-error guarantee, for engines that cannot sort.

The local engine sorts each model's kl column and its quantiles are exact. A distributed engine
keeps, per partition, only counts of values in logarithmic bins (the bins of DDSketch, Masson et
al., VLDB 2019), which add up across partitions; a quantile is then read from the merged counts.

Notes
-----
With ``γ = (1 + α)/(1 − α)``, a value x > 0 falls in bin ``i = ceil(log_γ x)``, the interval
(γ^(i−1), γ^i], which stands for ``2γ^i/(γ + 1)``: within α·x of every value in the bin. Negative
values mirror this; 0, ±inf and NaN have bins of their own and are returned exactly. So the value
this sketch gives for the order statistic of rank r is within α·|x_(r)| of it, and a quantile
interpolated between ranks ``lo`` and ``hi`` (as the local engine does) is within
``α · max(|x_(lo)|, |x_(hi)|)`` of the exact one. Estimates are clamped to the exact minimum and
maximum, which can only bring them closer. Bins are counted with ``group_by``: a few thousand
rows per model, whatever the number of rows.
"""

import math
from collections.abc import Sequence

import polars as pl

# Relative accuracy α: estimates are within 0.1 % of the true order statistics.
RELATIVE_ACCURACY = 1e-3
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
METHOD = f"ddsketch(relative_accuracy={RELATIVE_ACCURACY})"
SIGN, INDEX, COUNT = "sign", "index", "count"
# sign: -2 = -inf, -1 negative, 0 zero, 1 positive, 2 = +inf, 3 = NaN (polars sorts NaN last)
_NEG_INF, _NEGATIVE, _ZERO, _POSITIVE, _POS_INF, _NAN = -2, -1, 0, 1, 2, 3


def _bins(value: pl.Expr) -> list[pl.Expr]:
    """The ``sign`` and ``index`` of each value's bin (index 0 for the exact bins)."""
    magnitude = value.abs()
    index = (magnitude.log() / math.log(GAMMA)).ceil()
    finite = value.is_finite()
    sign = (
        pl.when(value.is_nan())
        .then(_NAN)
        .when(value == math.inf)
        .then(_POS_INF)
        .when(value == -math.inf)
        .then(_NEG_INF)
        .when(value > 0)
        .then(_POSITIVE)
        .when(value < 0)
        .then(_NEGATIVE)
        .otherwise(_ZERO)
    )
    exact = ~finite | (value == 0)
    return [
        sign.cast(pl.Int8).alias(SIGN),
        pl.when(exact).then(0).otherwise(index).cast(pl.Int32).alias(INDEX),
    ]


def bin_counts(frame: pl.DataFrame, value: str, keys: Sequence[str]) -> pl.DataFrame:
    """Counts of ``value`` per bin and ``keys`` (columns ``*keys``, ``sign``, ``index``, ``count``)."""
    return (
        frame.lazy()
        .select(*keys, *_bins(pl.col(value)))
        .group_by(*keys, SIGN, INDEX)
        .agg(pl.len().cast(pl.Int64).alias(COUNT))
        .collect(engine="in-memory")
    )


def merge(counts: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Bin counts of disjoint partitions added up: the sketch of their union."""
    return counts.group_by(*keys, SIGN, INDEX).agg(pl.col(COUNT).sum())


def _ordered(counts: pl.DataFrame) -> pl.DataFrame:
    # Bins in value order: a larger index is a larger magnitude, so negative bins go downwards.
    order = pl.when(pl.col(SIGN) == _NEGATIVE).then(-pl.col(INDEX)).otherwise(pl.col(INDEX))
    return counts.sort(pl.col(SIGN), order).with_columns(pl.col(COUNT).cum_sum().alias("_through"))


def _value(sign: int, index: int) -> float:
    if sign == _POSITIVE:
        return 2 * GAMMA**index / (GAMMA + 1)
    if sign == _NEGATIVE:
        return -2 * GAMMA**index / (GAMMA + 1)
    return {_ZERO: 0.0, _POS_INF: math.inf, _NEG_INF: -math.inf, _NAN: math.nan}[sign]


class Sketch:
    """The merged bins of one set of values, answering order statistics and quantiles."""

    def __init__(self, counts: pl.DataFrame, minimum: float, maximum: float) -> None:
        ordered = _ordered(counts)
        self._signs = ordered.get_column(SIGN).to_list()
        self._indexes = ordered.get_column(INDEX).to_list()
        self._through = ordered.get_column("_through").to_list()
        self.n = self._through[-1] if self._through else 0
        self._min, self._max = minimum, maximum

    def order_statistic(self, rank: int) -> float:
        """The value of 0-based ``rank`` in sorted order, within α of the true one."""
        bin_ = next(i for i, through in enumerate(self._through) if through > rank)
        value = _value(self._signs[bin_], self._indexes[bin_])
        if math.isnan(value):
            return value
        return min(max(value, self._min), self._max)

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolating linearly between order statistics like the local engine."""
        if self.n == 0:
            return None
        position = (self.n - 1) * q
        low, high = math.floor(position), math.ceil(position)
        below, above = self.order_statistic(low), self.order_statistic(high)
        if below == above or position == low:  # also keeps inf from becoming inf - inf = NaN
            return below
        return below + (position - low) * (above - below)

    def ecdf(self, points: int) -> pl.DataFrame:
        """The empirical CDF at up to ``points`` evenly spaced ranks of the finite values.

        As :func:`klrank.pipeline.aggregate.ecdf_points`, with each value within α of the true one;
        the share of rows at or below 0 is exact.
        """
        schema = {"kl": pl.Float64, "ecdf": pl.Float64}
        finite = [
            (sign, through)
            for sign, through in zip(self._signs, self._through, strict=True)
            if sign in (_NEGATIVE, _ZERO, _POSITIVE)
        ]
        if not finite or points < 1:
            return pl.DataFrame(schema=schema)
        first = self._signs.index(finite[0][0])
        first_rank = self._through[first - 1] if first else 0  # after the -inf rows
        n_finite = finite[-1][1] - first_rank
        steps = max(points - 1, 1)
        ranks = sorted({first_rank + round(k * (n_finite - 1) / steps) for k in range(steps + 1)})
        rows = {self.order_statistic(r): (r + 1) / self.n for r in ranks}
        at_or_below_zero = [t for s, t in zip(self._signs, self._through, strict=True) if s <= 0]
        if at_or_below_zero and min(rows) < 0 < max(rows):
            rows[0.0] = at_or_below_zero[-1] / self.n
        values = sorted(rows)
        return pl.DataFrame({"kl": values, "ecdf": [rows[v] for v in values]}, schema=schema)
