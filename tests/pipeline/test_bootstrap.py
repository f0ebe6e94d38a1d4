"""The Poisson bootstrap's kernel, against independent oracles.

The weights against scipy's Poisson(1) (goodness of fit, independence) and against a plain
re-implementation of the construction the module documents (SplitMix64 in pure Python, the
published SplitMix64 outputs, the inverse-CDF layout rebuilt from exact decimal probabilities);
the sums against ``w.T @ values`` from numpy; the ranks against a brute-force count in Python.
"""

import itertools
import math
import subprocess
import sys
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from klrank.pipeline import bootstrap
from klrank.pipeline.bootstrap import (
    poisson_weights,
    rank_uncertainty,
    replicate_sums,
    unit_hashes,
)
from polars.testing import assert_frame_equal
from scipy import stats

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
M1, M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bootstrap_kernel.py"


# --- The documented construction, re-implemented plainly -------------------------------------


def mix64(z: int) -> int:
    """SplitMix64's output function (Stafford's Mix13), on Python ints."""
    z ^= z >> 30
    z = (z * M1) & MASK
    z ^= z >> 27
    z = (z * M2) & MASK
    return z ^ (z >> 31)


def _unshift(z: int, shift: int) -> int:
    """The inverse of ``z -> z ^ (z >> shift)`` on 64-bit words."""
    x = z
    for _ in range(64 // shift + 1):
        x = z ^ (x >> shift)
    return x


def unmix64(z: int) -> int:
    """The inverse of ``mix64``: crafts a hash whose mix has chosen bits."""
    z = _unshift(z, 31)
    z = (z * pow(M2, -1, 1 << 64)) & MASK
    z = _unshift(z, 27)
    z = (z * pow(M1, -1, 1 << 64)) & MASK
    return _unshift(z, 30)


def unmix64_array(z: np.ndarray) -> np.ndarray:
    """``unmix64`` on a uint64 array."""

    def unshift(v: np.ndarray, shift: int) -> np.ndarray:
        x = v
        for _ in range(64 // shift + 1):
            x = v ^ (x >> np.uint64(shift))
        return x

    x = unshift(z.astype(np.uint64), 31) * np.uint64(pow(M2, -1, 1 << 64))
    x = unshift(x, 27) * np.uint64(pow(M1, -1, 1 << 64))
    return unshift(x, 30)


def crafted_hashes(words: np.ndarray, b: int) -> np.ndarray:
    """Hashes whose lane of replicate ``b`` (``mix64(h ^ k(0, b // 4))``) is ``words``."""
    return unmix64_array(words) ^ np.uint64(lane_key(0, b // 4))


def lane_key(stream: int, j: int) -> int:
    return mix64(((2 * j + stream + 1) * GAMMA) & MASK)


def mix64_array(x: np.ndarray) -> np.ndarray:
    """The same on a uint64 array, written out step by step (wrapping arithmetic)."""
    z = x.astype(np.uint64)
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(M1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(M2)
    return z ^ (z >> np.uint64(31))


def documented_uniforms(hashes: np.ndarray, replicates: int) -> np.ndarray:
    """The 48-bit uniform of each (unit, replicate) cell, one mix per bit field."""
    b = np.arange(replicates)
    top_keys = np.array([lane_key(0, int(j)) for j in b // 4], dtype=np.uint64)
    low_keys = np.array([lane_key(1, int(j)) for j in b // 2], dtype=np.uint64)
    h = hashes.astype(np.uint64)[:, None]
    top = (mix64_array(h ^ top_keys) >> (16 * (b % 4)).astype(np.uint64)) & np.uint64(0xFFFF)
    low = (mix64_array(h ^ low_keys) >> (32 * (b % 2)).astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    return (top << np.uint64(32)) | low


def exact_counts() -> list[int]:
    """``round(2**48 F(k))`` differences, from 1/e to 80 decimal digits."""
    with localcontext() as context:
        context.prec = 80
        inverse_e = Decimal(-1).exp()
        total = 1 << 48
        counts, through, partial, k = [], 0, Decimal(0), 0
        while through < total:
            partial += Decimal(1) / math.factorial(k)
            upto = min(total, int((inverse_e * partial * total).to_integral_value()))
            counts.append(upto - through)
            through, k = upto, k + 1
    return counts


COUNTS = exact_counts()


def documented_weights(uniforms: np.ndarray) -> np.ndarray:
    """The weight of each 48-bit uniform by the layout of the module's notes."""
    cell_size = 1 << 32
    q = min(COUNTS[0], COUNTS[1]) // cell_size
    whole = [q, q] + [c // cell_size for c in COUNTS[2:6]]
    dense = np.repeat(np.arange(6), whole)
    first_sparse = len(dense)
    left = [c - w * cell_size for c, w in zip(COUNTS, whole, strict=False)] + COUNTS[6:]
    cumulative = np.cumsum(left)
    cells = (uniforms >> np.uint64(32)).astype(np.int64)
    offset = uniforms.astype(np.int64) - first_sparse * cell_size
    in_sparse = np.searchsorted(cumulative, offset, side="right")
    return np.where(cells < first_sparse, dense[np.minimum(cells, first_sparse - 1)], in_sparse)


def random_hashes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


# --- The construction ---------------------------------------------------------------------------


def test_mix64_gives_the_published_splitmix64_outputs() -> None:
    # SplitMix64 seeded with 0 (Vigna's splitmix64.c): its first outputs are mix64(k * γ).
    published = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    states = np.array([GAMMA * k & MASK for k in (1, 2, 3)], dtype=np.uint64)
    assert [int(v) for v in bootstrap._mix64(states)] == published
    assert [mix64(int(s)) for s in states] == published
    samples = [0, 1, MASK, GAMMA, 12345678901234567]
    assert all(unmix64(mix64(v)) == v for v in samples)
    mixed = np.array([mix64(v) for v in samples], dtype=np.uint64)
    assert [int(v) for v in unmix64_array(mixed)] == samples


def test_weight_counts_are_the_poisson_probabilities_rounded_to_48_bits() -> None:
    assert list(bootstrap._COUNTS) == COUNTS
    assert sum(COUNTS) == 1 << 48
    pmf = stats.poisson(1).pmf(np.arange(len(COUNTS) + 5))
    assert np.all(np.abs(np.array(COUNTS) - pmf[: len(COUNTS)] * 2.0**48) <= 1)
    assert pmf[len(COUNTS) :].sum() < 2.0**-49  # the weights never reached


def test_weights_are_the_documented_construction() -> None:
    hashes = random_hashes(600, seed=1)
    # 203: the last lane's padding replicates are dropped.
    weights = poisson_weights(hashes, 203)
    assert weights.dtype == np.uint8 and weights.shape == (600, 203)
    np.testing.assert_array_equal(weights, documented_weights(documented_uniforms(hashes, 203)))


def test_every_cell_of_the_top_bits_gives_the_documented_weight() -> None:
    # Hashes crafted so that replicate b's top 16 bits run through all 65,536 cells, twice, with
    # random bits elsewhere: every dense threshold, and the sparse cells with random low bits.
    rng = np.random.default_rng(2)
    for b in (0, 3, 6):
        cells = np.tile(np.arange(1 << 16, dtype=np.uint64), 2)
        upper = rng.integers(0, 2**48, size=len(cells), dtype=np.uint64)
        field = np.uint64(16 * (b % 4))
        fixed = np.uint64(0xFFFF) << field
        words = (upper << np.uint64(16)) & ~fixed | (cells << field)
        hashes = crafted_hashes(words, b)
        uniforms = documented_uniforms(hashes, b + 1)[:, b]
        np.testing.assert_array_equal(uniforms >> np.uint64(32), cells)
        got = poisson_weights(hashes, b + 1)[:, b]
        np.testing.assert_array_equal(got, documented_weights(uniforms))


def test_sparse_cells_take_their_weight_from_all_48_bits() -> None:
    # Many draws in the top cells: their weights spread over every class in the documented shares.
    rng = np.random.default_rng(3)
    first_sparse = bootstrap._FIRST_SPARSE
    cells = rng.integers(first_sparse, 1 << 16, size=20_000, dtype=np.uint64)
    upper = rng.integers(0, 2**48, size=len(cells), dtype=np.uint64)
    hashes = crafted_hashes((upper << np.uint64(16)) | cells, 0)
    got = poisson_weights(hashes, 1)[:, 0]
    np.testing.assert_array_equal(got, documented_weights(documented_uniforms(hashes, 1)[:, 0]))
    assert set(np.unique(got)) >= {0, 1, 2, 3, 4, 5, 6, 7}


def test_sparse_cells_at_the_edges_of_their_classes() -> None:
    # The low 32 bits come from the lane k(1, b // 2): crafted here so that the 48-bit offsets
    # land on, just below and just above each edge between classes in the sparse cells.
    cell_size = 1 << 32
    first_sparse = bootstrap._FIRST_SPARSE
    whole = [c // cell_size for c in COUNTS[:6]]
    whole[0] = whole[1] = min(whole[:2])
    left = [c - w * cell_size for c, w in zip(COUNTS, whole, strict=False)] + COUNTS[6:]
    edges = np.cumsum(left)
    offsets = np.unique(np.clip(np.add.outer(edges, [-1, 0, 1]).ravel(), 0, edges[-1] - 1))
    tops = (first_sparse + offsets // cell_size).astype(np.uint64)
    lows = (offsets % cell_size).astype(np.uint64)
    low_keys = np.array([lane_key(1, j) for j in range(3)], dtype=np.uint64)
    noise = np.random.default_rng(4).integers(0, 2**32, size=len(offsets), dtype=np.uint64)
    for b in (0, 1, 5):
        shift = np.uint64(32 * (b % 2))
        words = (lows << shift) | (noise << (np.uint64(32) - shift))
        hashes = unmix64_array(words) ^ low_keys[b // 2]
        replicate = np.full(len(offsets), b, dtype=np.int64)
        got = bootstrap._sparse_weights(hashes, replicate, tops, low_keys)
        expected = documented_weights((tops << np.uint64(32)) | lows)
        np.testing.assert_array_equal(got, expected)
        assert set(expected) == set(range(len(COUNTS))) - {k for k, n in enumerate(left) if not n}


# --- The distribution ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def consecutive_weights() -> np.ndarray:
    """Weights of 5,000 consecutive integer keys in 200 replicates (1,000,000 cells)."""
    return poisson_weights(unit_hashes(pl.Series(np.arange(5_000)), seed=0), 200)


def test_weights_follow_poisson_one(consecutive_weights: np.ndarray) -> None:
    w = consecutive_weights.ravel().astype(np.int64)
    observed = np.bincount(np.minimum(w, 7), minlength=8)
    pmf = stats.poisson(1).pmf(np.arange(7))
    expected = np.append(pmf, 1 - pmf.sum()) * len(w)
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected)
    # Standard errors 0.001 (mean) and 0.0017 (variance).
    assert abs(w.mean() - 1) < 0.006
    assert abs(w.var() - 1) < 0.01


def _pairs_independent(first: np.ndarray, second: np.ndarray) -> float:
    """p-value of a chi-square test of independence of two weight samples (capped at 3)."""
    table = np.zeros((4, 4))
    np.add.at(table, (np.minimum(first, 3), np.minimum(second, 3)), 1)
    return float(stats.chi2_contingency(table).pvalue)


def test_replicates_of_a_key_are_independent(consecutive_weights: np.ndarray) -> None:
    w = consecutive_weights.astype(np.float64)
    keys = len(w)
    correlations = np.corrcoef(w, rowvar=False)[np.triu_indices(w.shape[1], k=1)]
    assert np.abs(correlations).max() < 6 / math.sqrt(keys)
    assert abs(correlations.mean()) < 5 / math.sqrt(keys * len(correlations))
    for lag in (1, 2, 4):  # one lane's fields, one low word's halves, consecutive lanes
        first, second = consecutive_weights[:, :-lag], consecutive_weights[:, lag:]
        assert _pairs_independent(first.ravel(), second.ravel()) > 1e-3, lag


def test_consecutive_integer_keys_are_independent(consecutive_weights: np.ndarray) -> None:
    first, second = consecutive_weights[:-1], consecutive_weights[1:]
    assert _pairs_independent(first.ravel(), second.ravel()) > 1e-3
    # One correlation per pair of keys over 200 replicates, each with standard error 0.07.
    a = first - first.mean(axis=1, keepdims=True)
    b = second - second.mean(axis=1, keepdims=True)
    per_pair = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    assert abs(per_pair.mean()) < 5 * 0.071 / math.sqrt(len(per_pair))


def test_seeds_give_unrelated_weights(consecutive_weights: np.ndarray) -> None:
    other = poisson_weights(unit_hashes(pl.Series(np.arange(5_000)), seed=1), 200)
    pmf = stats.poisson(1).pmf(np.arange(20))
    same = (other == consecutive_weights).mean()
    # P(two independent draws agree) = sum of pmf**2; standard error 0.0005.
    assert abs(same - (pmf**2).sum()) < 0.003
    assert abs(np.corrcoef(other.ravel(), consecutive_weights.ravel())[0, 1]) < 0.006
    assert _pairs_independent(other.ravel(), consecutive_weights.ravel()) > 1e-3


# --- Keys and determinism -----------------------------------------------------------------------

KEY_SERIES = {
    "Int64": pl.Series([3, -1, None, 3, 2**62, None, 0], dtype=pl.Int64),
    "Int128": pl.Series([3, -(2**100), None, 3, 2**100, None, 0], dtype=pl.Int128),
    "UInt64": pl.Series([3, 2**64 - 1, None, 3, 2**63, None, 0], dtype=pl.UInt64),
    "Int8": pl.Series([3, -1, None, 3, 127, None, 0], dtype=pl.Int8),
    "String": pl.Series(["a", "", None, "a", "é" * 40, None, "0"], dtype=pl.String),
    "Categorical": pl.Series(["a", "", None, "a", "zz", None, "0"], dtype=pl.Categorical),
    "Boolean": pl.Series([True, False, None, True, None], dtype=pl.Boolean),
    "Date": pl.Series([3, -1, None, 3, 9_000, None, 0], dtype=pl.Int32).cast(pl.Date),
    "Float64": pl.Series([1.5, -0.0, None, 1.5, float("inf"), None, float("nan")]),
    "List": pl.Series([[1], [], None, [1], [1, 2], None, [0]], dtype=pl.List(pl.Int64)),
}


@pytest.mark.parametrize("dtype", KEY_SERIES)
def test_equal_keys_hash_equal_and_null_is_a_key_of_its_own(dtype: str) -> None:
    keys = KEY_SERIES[dtype]
    hashes = unit_hashes(keys, seed=7)
    assert hashes.dtype == np.uint64 and hashes.shape == (len(keys),)
    as_text = [repr(v) for v in keys.to_list()]
    for i in range(len(keys)):
        for j in range(len(keys)):
            assert (hashes[i] == hashes[j]) == (as_text[i] == as_text[j]), (i, j)
    assert not np.array_equal(hashes, unit_hashes(keys, seed=8))


@pytest.mark.parametrize("dtype", KEY_SERIES)
def test_hashes_do_not_depend_on_batching_or_order(dtype: str) -> None:
    keys = KEY_SERIES[dtype]
    whole = unit_hashes(keys, seed=11)
    order = np.random.default_rng(5).permutation(len(keys))
    np.testing.assert_array_equal(unit_hashes(keys.gather(order), seed=11), whole[order])
    parts = [unit_hashes(keys.slice(start, 2), seed=11) for start in range(0, len(keys), 2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_categorical_keys_hash_as_their_strings_whatever_the_categories() -> None:
    first = pl.Series(["x", "y"], dtype=pl.Categorical)
    second = pl.Series(["q", "y", "x"], dtype=pl.Categorical)
    np.testing.assert_array_equal(unit_hashes(first, 3), unit_hashes(second, 3)[[2, 1]])
    np.testing.assert_array_equal(unit_hashes(first, 3), unit_hashes(first.cast(pl.String), 3))


def test_integer_keys_hash_by_the_documented_formula() -> None:
    seed = -12345  # taken modulo 2**64
    s = seed & MASK
    first, second = mix64(s), mix64(s ^ GAMMA)
    values = [0, 1, -1, 2**63 - 1, -(2**63), None]
    expected = []
    for v in values:
        a = mix64(((0 if v is None else v) & MASK) ^ first)
        if v is None:
            a ^= int(bootstrap._NULL_MARK)
        expected.append(mix64((a + second) & MASK))
    got = unit_hashes(pl.Series(values, dtype=pl.Int64), seed)
    assert [int(h) for h in got] == expected
    # Equal values of other integer dtypes agree; the 64-bit word is what is hashed.
    assert unit_hashes(pl.Series([1], dtype=pl.UInt8), seed)[0] == expected[1]
    assert unit_hashes(pl.Series([2**64 - 1], dtype=pl.UInt64), seed)[0] == expected[2]
    assert unit_hashes(pl.Series([1], dtype=pl.Int64), seed + 2**64)[0] == expected[1]


def test_weights_do_not_depend_on_order_batching_or_the_number_of_replicates() -> None:
    hashes = unit_hashes(pl.Series(np.arange(3_000)), seed=4)
    weights = poisson_weights(hashes, 13)
    order = np.random.default_rng(6).permutation(len(hashes))
    np.testing.assert_array_equal(poisson_weights(hashes[order], 13), weights[order])
    parts = [poisson_weights(hashes[a:b], 13) for a, b in [(0, 1), (1, 1_000), (1_000, 3_000)]]
    np.testing.assert_array_equal(np.concatenate(parts), weights)
    np.testing.assert_array_equal(poisson_weights(hashes, 5), weights[:, :5])
    np.testing.assert_array_equal(poisson_weights(hashes, 1), weights[:, :1])
    assert poisson_weights(hashes, 0).shape == (3_000, 0)
    assert poisson_weights(hashes[:0], 13).shape == (0, 13)


# --- Replicate sums -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "replicates", "columns"),
    [(6_000, 200, 6), (5_001, 203, 3), (777, 1, 1), (1, 4, 8), (300, 1_001, 2)],
)
def test_replicate_sums_are_the_weights_times_the_values(
    rows: int, replicates: int, columns: int
) -> None:
    hashes = random_hashes(rows, seed=rows)
    values = np.random.default_rng(rows).normal(size=(rows, columns)) * 10.0
    got = replicate_sums(hashes, values, replicates)
    assert got.dtype == np.float64 and got.shape == (replicates, columns)
    weights = poisson_weights(hashes, replicates).astype(np.float64)
    expected = weights.T @ values
    # Both are float64 sums of the same products in different orders.
    assert np.all(np.abs(got - expected) <= 1e-13 * (weights.T @ np.abs(values)))


def test_replicate_sums_through_many_chunks_and_sparse_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small chunks, products and groups of sparse cells: every boundary is crossed many times.
    monkeypatch.setattr(bootstrap, "_CHUNK_CELLS", 3_000)
    monkeypatch.setattr(bootstrap, "_PRODUCT_CELLS", 1_000)
    monkeypatch.setattr(bootstrap, "_SPARSE_GROUP", 5)
    hashes = random_hashes(4_321, seed=9)
    values = np.random.default_rng(9).uniform(-1, 1, size=(4_321, 3))
    values_f = np.asfortranarray(values)  # any memory layout
    got = replicate_sums(hashes, values_f, 37)
    expected = poisson_weights(hashes, 37).astype(np.float64).T @ values
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(
        poisson_weights(hashes, 37), documented_weights(documented_uniforms(hashes, 37))
    )


def test_replicate_sums_of_batches_add_up_to_the_sums_of_their_union() -> None:
    hashes = unit_hashes(pl.Series(np.arange(20_000)), seed=2)
    values = np.random.default_rng(8).exponential(size=(20_000, 4))
    whole = replicate_sums(hashes, values, 100)
    cuts = [0, 1, 4_000, 4_001, 13_000, 20_000]
    parts = sum(replicate_sums(hashes[a:b], values[a:b], 100) for a, b in itertools.pairwise(cuts))
    np.testing.assert_allclose(parts, whole, rtol=1e-12)
    order = np.random.default_rng(1).permutation(20_000)
    np.testing.assert_allclose(replicate_sums(hashes[order], values[order], 100), whole, rtol=1e-12)


def test_identical_columns_get_identical_sums() -> None:
    # Two models with the same values should tie exactly in every replicate. The products run
    # equal rows of V^T through the same operations in OpenBLAS; another BLAS could round them
    # apart, which this would show.
    hashes = random_hashes(10_000, seed=12)
    column = np.random.default_rng(12).normal(size=10_000)
    for columns in range(2, 9):
        values = np.tile(column[:, None], (1, columns))
        got = replicate_sums(hashes, values, 150)
        assert (got == got[:, :1]).all(), columns


def test_replicate_sums_edge_shapes_and_errors() -> None:
    hashes = random_hashes(10, seed=0)
    assert replicate_sums(hashes[:0], np.zeros((0, 3)), 5).shape == (5, 3)
    assert not replicate_sums(hashes, np.zeros((10, 0)), 5).size
    assert replicate_sums(hashes, np.ones((10, 2)), 0).shape == (0, 2)
    with pytest.raises(ValueError, match="shape"):
        replicate_sums(hashes, np.ones((9, 2)), 5)
    with pytest.raises(ValueError, match="replicates"):
        replicate_sums(hashes, np.ones((10, 2)), -1)
    for bad in (math.nan, math.inf):
        values = np.ones((10, 2))
        values[7, 1] = bad
        with pytest.raises(ValueError, match="finite"):
            replicate_sums(hashes, values, 5)


def test_benchmark_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "5000", "--batch", "2000", "--repeat", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("5,000 rows x 200 replicates x 6 columns, 3 batch(es)")
    assert lines[-1].startswith("replicate_sums / baseline (best wall): ")


# --- Rank uncertainty ---------------------------------------------------------------------------


def brute_force_ranks(
    stats_rows: list[tuple[str, str, int, float | None]], higher_is_better: bool
) -> dict[tuple[str, str], tuple[float | None, int | None, int | None]]:
    values: dict[tuple[str, int, str], float | None] = {(s, r, m): v for s, m, r, v in stats_rows}
    slices = sorted({s for s, _, _, _ in stats_rows})
    out: dict[tuple[str, str], tuple[float | None, int | None, int | None]] = {}
    for s in slices:
        models = sorted({m for t, m, _, _ in stats_rows if t == s})
        replicates = sorted({r for t, _, r, _ in stats_rows if t == s})
        ranks: dict[str, list[int]] = {m: [] for m in models}
        firsts: dict[str, float] = dict.fromkeys(models, 0.0)
        kept = 0
        for r in replicates:
            raw = {m: values.get((s, r, m)) for m in models}
            defined = {m: v for m, v in raw.items() if v is not None and not math.isnan(v)}
            if not defined:
                continue
            kept += 1
            for m in models:
                if m in defined:
                    better = [
                        o
                        for o, v in defined.items()
                        if (v > defined[m] if higher_is_better else v < defined[m])
                    ]
                    ranks[m].append(1 + len(better))
                else:
                    ranks[m].append(len(defined) + 1)
            tied_first = [m for m in models if ranks[m][-1] == 1]
            for m in tied_first:
                firsts[m] += 1 / len(tied_first)
        for m in models:
            if not kept:
                out[s, m] = (None, None, None)
                continue
            ordered = sorted(ranks[m])
            low = ordered[math.floor(0.025 * (kept - 1))]
            high = ordered[math.ceil(0.975 * (kept - 1))]
            out[s, m] = (firsts[m] / kept, low, high)
    return out


VALUES = st.sampled_from(
    [0.0, -0.0, 1.0, 1.0, 2.5, -3.0, math.inf, -math.inf, math.nan, None, 1e300]
)


@st.composite
def stats_frames(draw: st.DrawFn) -> list[tuple[str, str, int, float | None]]:
    rows = []
    for s in range(draw(st.integers(1, 3))):
        models = draw(st.integers(1, 4))
        replicates = draw(st.integers(1, 45))
        for r in range(replicates):
            for m in range(models):
                if draw(st.integers(0, 30)) == 0:
                    continue  # a missing row counts as undefined
                rows.append((f"s{s}", f"m{m}", r, draw(VALUES)))
    return rows


def _as_frame(rows: list[tuple[str, str, int, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"slice": pl.String, "model": pl.String, "replicate": pl.Int64, "value": pl.Float64},
        orient="row",
    )


@settings(max_examples=150, deadline=None)
@given(rows=stats_frames(), higher_is_better=st.booleans())
def test_rank_uncertainty_matches_brute_force(
    rows: list[tuple[str, str, int, float | None]], higher_is_better: bool
) -> None:
    got = rank_uncertainty(_as_frame(rows), higher_is_better)
    assert got.schema == pl.Schema(
        {
            "slice": pl.String,
            "model": pl.String,
            "p_best": pl.Float64,
            "rank_low": pl.Int64,
            "rank_high": pl.Int64,
        }
    )
    expected = brute_force_ranks(rows, higher_is_better)
    assert got.select("slice", "model").rows() == sorted(expected)
    for s, m, p_best, low, high in got.iter_rows():
        want_p, want_low, want_high = expected[s, m]
        assert (low, high) == (want_low, want_high), (s, m)
        if want_p is None:
            assert p_best is None
        else:
            assert p_best == pytest.approx(want_p, abs=1e-12), (s, m)
    shares = got.drop_nulls().group_by("slice").agg(pl.col("p_best").sum())
    assert all(total == pytest.approx(1.0, abs=1e-12) for total in shares["p_best"])


def test_rank_uncertainty_on_a_small_example() -> None:
    rows = [
        # replicate 0: b best; replicate 1: a and b tie for first; replicate 2: c alone defined
        ("x", "a", 0, 2.0),
        ("x", "b", 0, 1.0),
        ("x", "c", 0, math.nan),
        ("x", "a", 1, 1.0),
        ("x", "b", 1, 1.0),
        ("x", "c", 1, math.inf),
        ("x", "a", 2, None),
        ("x", "b", 2, math.nan),
        ("x", "c", 2, -math.inf),
        # replicate 3: nothing defined, dropped
        ("x", "a", 3, None),
        ("x", "b", 3, None),
        ("x", "c", 3, math.nan),
        ("y", "a", 0, None),  # a slice with nothing defined
    ]
    got = rank_uncertainty(_as_frame(rows), higher_is_better=False)
    expected = pl.DataFrame(
        {
            "slice": ["x", "x", "x", "y"],
            "model": ["a", "b", "c", "a"],
            "p_best": [1 / 6, 1 / 2, 1 / 3, None],
            "rank_low": [1, 1, 1, None],
            "rank_high": [2, 2, 3, None],
        },
        schema_overrides={"rank_low": pl.Int64, "rank_high": pl.Int64},
    )
    assert_frame_equal(got, expected)


def test_rank_uncertainty_rejects_duplicate_rows() -> None:
    frame = _as_frame([("x", "a", 0, 1.0), ("x", "a", 0, 2.0)])
    with pytest.raises(ValueError, match="more than one row"):
        rank_uncertainty(frame, higher_is_better=True)
