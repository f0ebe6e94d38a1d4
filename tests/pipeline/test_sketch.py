"""The quantile sketch of the Ray engine: its documented bound, against numpy's exact order statistics."""

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from klrank.pipeline import sketch

ALPHA = sketch.RELATIVE_ACCURACY
# ceil(log x / log γ) is itself rounded: a value on a bin's edge may land in the next bin, off by
# a few ulps more than α.
SLACK = 1e-12


def _sketch_of(values: np.ndarray) -> sketch.Sketch:
    frame = pl.DataFrame({"kl": values})
    counts = sketch.bin_counts(frame, "kl", [])
    finite_or_not = values[~np.isnan(values)]
    return sketch.Sketch(counts, float(finite_or_not.min()), float(finite_or_not.max()))


def _exact_quantile(ordered: np.ndarray, q: float) -> tuple[float, float, float]:
    """The linear quantile and the two order statistics it lies between."""
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    below, above = float(ordered[low]), float(ordered[high])
    if below == above or position == low:
        return below, below, above
    return below + (position - low) * (above - below), below, above


def _within_bound(estimate: float, exact: float, below: float, above: float) -> bool:
    if math.isinf(exact) or math.isinf(below) or math.isinf(above):
        return estimate == exact or (math.isinf(above) and estimate >= below)
    bound = (ALPHA + SLACK) * max(abs(below), abs(above))
    return abs(estimate - exact) <= bound


def _data(rng: np.random.Generator, n: int) -> np.ndarray:
    kl = rng.gamma(0.5, 0.1, n)  # mostly small, a long tail
    kl[rng.random(n) < 0.05] = 0.0  # P == Q
    kl[rng.random(n) < 0.02] *= -1e-15  # rounding just below 0
    kl[rng.random(n) < 0.01] = math.inf  # a true class with q = 0
    kl[rng.random(n) < 0.01] = 1e-310  # subnormal
    return kl


@pytest.mark.parametrize("seed", range(5))
def test_every_order_statistic_is_within_the_relative_accuracy(seed: int) -> None:
    values = _data(np.random.default_rng(seed), 5_000)
    ordered = np.sort(values)
    estimates = _sketch_of(values)
    for rank in range(len(ordered)):
        exact = float(ordered[rank])
        estimate = estimates.order_statistic(rank)
        if math.isinf(exact) or exact == 0:
            assert estimate == exact
        else:
            assert abs(estimate - exact) <= (ALPHA + SLACK) * abs(exact), (rank, exact, estimate)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-1e-9, max_value=1e6, allow_nan=False),
            st.just(math.inf),
        ),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_quantiles_are_within_the_documented_bound(values: list[float], q: float) -> None:
    array = np.array(values)
    ordered = np.sort(array)
    exact, below, above = _exact_quantile(ordered, q)
    estimate = _sketch_of(array).quantile(q)
    assert estimate is not None
    assert _within_bound(estimate, exact, below, above), (exact, estimate, below, above)


def test_merged_partitions_give_the_sketch_of_the_whole() -> None:
    values = _data(np.random.default_rng(7), 20_000)
    frame = pl.DataFrame({"part": np.arange(len(values)) % 5, "kl": values})
    whole = sketch.bin_counts(frame, "kl", [])
    parts = pl.concat(
        sketch.bin_counts(part, "kl", []) for _, part in frame.group_by("part", maintain_order=True)
    )
    merged = sketch.merge(parts, [])
    key = [sketch.SIGN, sketch.INDEX]
    assert merged.sort(key).equals(whole.sort(key))


def test_the_bins_hold_few_rows_whatever_the_number_of_values() -> None:
    values = np.random.default_rng(3).gamma(2.0, 0.05, 1_000_000)
    counts = sketch.bin_counts(pl.DataFrame({"kl": values}), "kl", [])
    # log_γ(max/min) bins at most: about 10^4 for values spanning six decades
    span = math.log(values.max() / values.min()) / math.log(sketch.GAMMA)
    assert counts.height <= span + 2
    assert counts.get_column(sketch.COUNT).sum() == len(values)


def test_the_ecdf_is_exact_at_zero_and_within_the_bound_elsewhere() -> None:
    values = np.concatenate([np.zeros(100), -np.full(50, 1e-16), np.linspace(0.001, 2.0, 850)])
    curve = _sketch_of(values).ecdf(50)
    shares = dict(zip(curve.get_column("kl"), curve.get_column("ecdf"), strict=True))
    assert shares[0.0] == 150 / 1000
    ordered = np.sort(values)
    for kl, share in shares.items():
        rank = round(share * len(values)) - 1
        assert abs(kl - ordered[rank]) <= (ALPHA + SLACK) * abs(ordered[rank]) or kl == 0.0
