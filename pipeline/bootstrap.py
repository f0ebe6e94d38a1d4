"""Poisson-bootstrap weights drawn from hashes, and the rank uncertainty they give.

klrank says how sure its ranking is with a Poisson bootstrap done in the same single pass over
the data: in replicate ``b`` each unit (a row, or a cluster of rows) counts ``w`` times, where
``w`` is a Poisson(1) draw determined by the unit's key, ``b`` and a seed alone. So the
replicates come out the same whatever the batching, the row order or the engine, and partial
sums merge by addition.

``unit_hashes`` turns keys into 64-bit hashes, ``poisson_weights`` gives the weights of those
hashes, ``replicate_sums`` the weighted column sums of a batch (without forming the weights), and
``rank_uncertainty`` reads ``p_best``, ``rank_low`` and ``rank_high`` off per-replicate values.

Notes
-----
*The uniform of a cell.* ``mix64`` is SplitMix64's output function (Stafford's Mix13),
``γ = 0x9E3779B97F4A7C15`` and ``k(s, j) = mix64((2 j + s + 1) γ mod 2**64)``. For a unit of
hash ``h`` and replicate ``b``, a 48-bit uniform ``u`` has as its top 16 bits the bits
``16 (b mod 4)`` to ``16 (b mod 4) + 15`` of ``mix64(h ^ k(0, b // 4))`` and as its low 32 bits
the bits ``32 (b mod 2)`` to ``32 (b mod 2) + 31`` of ``mix64(h ^ k(1, b // 2))``. A cell thus
depends on ``(h, b)`` alone, not on the number of replicates; one 64-bit mix gives the top bits
of four replicates, and the low bits are computed only where the top bits leave the weight open.

*The inverse CDF.* ``N_k = round(2**48 F(k)) - round(2**48 F(k - 1))`` of the 2**48 values of
``u`` give weight ``k`` (``F`` is the Poisson(1) CDF, in exact rational arithmetic from a
60-term series for ``1/e``): every ``P(w = k)`` is right to within ``2**-48``, and no weight
exceeds 16 (``P(w > 16) < 2**-49``). The map is laid out for speed rather than monotone in ``u``.
The top 16 bits of ``u`` pick one of 65,536 cells: the first ``q`` cells give weight 0, the next
``q`` weight 1 (``q`` the smaller of ``N_0 >> 32`` and ``N_1 >> 32``, so that these two read as
``cell // q``), then ``N_k >> 32`` cells each give weight ``k`` for ``k = 2, ..., 5``. What is
left of every class fills the top 42 cells (0.064 % of them), where the whole of ``u`` picks the
weight, the classes in increasing order of ``k``.
"""

import math
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

__all__ = ["poisson_weights", "rank_uncertainty", "replicate_sums", "unit_hashes"]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

_GAMMA: Final = np.uint64(0x9E3779B97F4A7C15)
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_ONE: Final = np.uint64(1)
_TWO: Final = np.uint64(2)
_S30: Final = np.uint64(30)
_S27: Final = np.uint64(27)
_S31: Final = np.uint64(31)
_MASK64: Final = (1 << 64) - 1
# XORed into a null integer key's first mix: null then differs from every integer key but the
# one whose first mix is the null's, a single 64-bit value for a given seed.
_NULL_MARK: Final = np.uint64(0xD6E8FEB86659FD93)
# Keys whose values are hashed as 64-bit integers (version-stable); others go through Polars.
_INTEGER_KEYS: Final = frozenset(
    {pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64}
)

_UNIFORM_BITS: Final = 48
_LOW_BITS: Final = 32
_CELLS: Final = 1 << 16
# Classes 0..5 own whole cells; the sparse cells give the other classes and the rest of these.
_DENSE_CLASSES: Final = 6
_SPARSE_BASE: Final = _DENSE_CLASSES - 1  # what the dense thresholds make of a sparse cell

# Weights are made in chunks of about this many cells (rows x replicates, rounded up to a
# multiple of four); each chunk's few MB of scratch space stay in a core's L2 and L3 caches.
_CHUNK_CELLS: Final = 1 << 19
# replicate_sums adds them into the sums by matrix products of rows x replicates x columns
# < 2**19 multiply-adds, which OpenBLAS runs on one thread however many cores there are (it
# wants 2**18 a thread). Threaded, such products ran ten times slower on a 2-core machine
# whose other core was busy, and no faster when it was idle.
_PRODUCT_CELLS: Final = (1 << 19) - 1
# Sparse cells are resolved in groups of this many at most, which bounds their memory.
_SPARSE_GROUP: Final = 1 << 16


def _mix64(x: U64) -> U64:
    """SplitMix64's output function of each element, as a new array."""
    z = x ^ (x >> _S30)
    _mix64_rest(z, np.empty_like(z))
    return z


def _mix64_rest(z: U64, scratch: U64) -> None:
    """The steps of ``mix64`` after its first xorshift, in place (``scratch``: same shape).

    ``x -> x ^ (x >> 30)`` distributes over XOR, so ``mix64(h ^ k)`` is this applied to
    ``h' ^ k'``, with the first step done once per unit (``h'``) and once per lane key (``k'``).
    """
    np.multiply(z, _M1, out=z)
    np.right_shift(z, _S27, out=scratch)
    np.bitwise_xor(z, scratch, out=z)
    np.multiply(z, _M2, out=z)
    np.right_shift(z, _S31, out=scratch)
    np.bitwise_xor(z, scratch, out=z)


def _lane_keys(stream: int, lanes: U64) -> U64:
    """``k(stream, j)`` for each ``j`` in ``lanes``."""
    return _mix64((lanes * _TWO + np.uint64(stream + 1)) * _GAMMA)


def _poisson_counts() -> tuple[int, ...]:
    """``N_k``: how many of the 2**48 uniforms give weight ``k``, for ``k = 0, 1, ..., 16``."""
    # The alternating series for 1/e: its 60th term is below 1e-81.
    inverse_e = sum((Fraction((-1) ** m, math.factorial(m)) for m in range(60)), Fraction(0))
    total = 1 << _UNIFORM_BITS
    counts: list[int] = []
    through, partial = 0, Fraction(0)
    while through < total:
        partial += Fraction(1, math.factorial(len(counts)))
        upto = min(total, round(total * inverse_e * partial))
        counts.append(upto - through)
        through = upto
    return tuple(counts)


def _layout(counts: tuple[int, ...]) -> tuple[int, tuple[int, int, int], int, I64]:
    """``q``, the first cells of weights 3, 4 and 5, the first sparse cell, the sparse table.

    The sparse table holds, in 48-bit units counted from the first sparse cell, the cumulative
    sizes of what is left of each class there: the weight is the number of entries <= offset.
    """
    cell = 1 << _LOW_BITS
    q = min(counts[0], counts[1]) // cell
    whole = [q, q] + [c // cell for c in counts[2:_DENSE_CLASSES]]
    left = [c - w * cell for c, w in zip(counts, whole, strict=False)] + list(counts[len(whole) :])
    starts = [sum(whole[:k]) for k in range(len(whole) + 1)]
    first_sparse = starts[-1]
    table = np.cumsum(np.array(left, dtype=np.int64))
    # `cell // q` must stay below 3 on the first 2q cells and be 2 above them.
    if not (3 * q > _CELLS - 1 and int(table[-1]) == (_CELLS - first_sparse) * cell):
        raise AssertionError("the Poisson(1) layout does not add up")  # pragma: no cover
    return q, (starts[3], starts[4], starts[5]), first_sparse, table


_COUNTS: Final = _poisson_counts()
_Q, _STARTS, _FIRST_SPARSE, _SPARSE_TABLE = _layout(_COUNTS)
_Q16: Final = np.uint16(_Q)
_STARTS16: Final = tuple(np.uint16(s) for s in _STARTS)
_FIRST_SPARSE16: Final = np.uint16(_FIRST_SPARSE)


def _integer_words(keys: pl.Series) -> U64:
    """The keys as 64-bit two's-complement words (null as 0)."""
    filled = keys.fill_null(0)
    if keys.dtype == pl.UInt64:
        return np.ascontiguousarray(filled.to_numpy(), dtype=np.uint64)
    return np.ascontiguousarray(filled.cast(pl.Int64).to_numpy(), dtype=np.int64).view(np.uint64)


def unit_hashes(keys: pl.Series, seed: int) -> U64:
    """A 64-bit hash of each key mixed with ``seed``: the unit a row's bootstrap weights follow.

    Parameters
    ----------
    keys
        One key per row: a row id, or the cluster whose rows share their weights. Any dtype
        Polars hashes; null is a key of its own.
    seed
        The bootstrap's seed; seeds equal modulo 2**64 give equal hashes.

    Returns
    -------
    numpy.ndarray
        ``uint64``, one hash per row. Equal keys of one dtype get equal hashes, in whatever
        batch, order or process they come.

    Notes
    -----
    Integer keys (Boolean, Int8 to Int64, UInt8 to UInt64, and Date, Datetime, Duration and
    Time through their physical integers) are hashed here, so their hashes do not depend on
    the Polars version: with ``v`` the key as a 64-bit two's-complement word (equal values of
    different integer dtypes agree) and ``s = seed mod 2**64``, the hash is
    ``mix64(a + mix64(s ^ γ))`` with ``a = mix64(v ^ mix64(s))``, where a null key has
    ``v = 0`` and ``a`` XORed with a constant. Other keys (strings, Int128, floats, lists...;
    Categorical and Enum as their strings) take ``v`` from Polars' ``Series.hash(seed=0)``,
    then the same two rounds: their hashes are reproducible for a given Polars version only.

    Examples
    --------
    >>> import polars as pl
    >>> hashes = unit_hashes(pl.Series([7, None, 7]), seed=1)
    >>> bool(hashes[0] == hashes[2]), bool(hashes[0] == hashes[1])
    (True, False)
    """
    word = np.uint64(seed & _MASK64)
    first = _mix64(np.array([word], dtype=np.uint64))[0]
    second = _mix64(np.array([word ^ _GAMMA], dtype=np.uint64))[0]
    if keys.dtype.is_temporal():
        keys = keys.to_physical()
    if keys.dtype == pl.Boolean:
        keys = keys.cast(pl.UInt8)
    if keys.dtype in _INTEGER_KEYS:
        mixed = _mix64(_integer_words(keys) ^ first)
        if keys.null_count():
            nulls = keys.is_null().to_numpy()
            mixed[nulls] ^= _NULL_MARK
    else:
        if isinstance(keys.dtype, pl.Categorical | pl.Enum):
            keys = keys.cast(pl.String)
        polars_hashes = np.ascontiguousarray(keys.hash(seed=0).to_numpy(), dtype=np.uint64)
        mixed = _mix64(polars_hashes ^ first)
    return _mix64(mixed + second)


def _sparse_weights(hashes: U64, replicates: I64, tops: U64, low_keys: U64) -> I64:
    """Weights of sparse cells from their units' hashes, replicates and top 16 bits.

    ``low_keys[j]`` is ``k(1, j)`` for every ``j <= max(replicates) // 2``.
    """
    b = replicates.astype(np.uint64)
    low = _mix64(hashes ^ low_keys[replicates >> 1])
    low = (low >> ((b & _ONE) << np.uint64(5))) & np.uint64(0xFFFFFFFF)
    offset = ((tops - np.uint64(_FIRST_SPARSE)) << np.uint64(_LOW_BITS)) | low
    found = np.searchsorted(_SPARSE_TABLE, offset.astype(np.int64), side="right")
    return found.astype(np.int64)


class _Kernel:
    """Scratch space for the weights of up to ``rows`` units over ``4 lanes`` replicates."""

    def __init__(self, rows: int, lanes: int) -> None:
        self.rows, self.lanes, self.columns = rows, lanes, 4 * lanes
        keys = _lane_keys(0, np.arange(lanes, dtype=np.uint64))
        self._keys = np.tile(keys ^ (keys >> _S30), rows).reshape(rows, lanes)
        self._lane = np.empty((rows, lanes), dtype=np.uint64)
        self._scratch = np.empty((rows, lanes), dtype=np.uint64)
        self.weights = np.empty((rows, self.columns), dtype=np.uint8)
        self.low_keys = _lane_keys(1, np.arange(2 * lanes, dtype=np.uint64))
        # A mask of the cells, padded to whole 64-bit words so that it can be scanned by word.
        cells = rows * self.columns
        self._mask = np.zeros(-(-cells // 8) * 8, dtype=np.bool_)

    def weights_of(self, hashes: U64) -> tuple[I64, U64]:
        """Dense weights of ``hashes`` (at most ``rows``) into ``self.weights[:len(hashes)]``.

        Returns the sparse cells, which read ``_SPARSE_BASE``: their flat indices
        (``row * columns + replicate``) and the top 16 bits of their uniforms.
        """
        n = len(hashes)
        lane = self._lane[:n]
        spread = np.repeat(hashes ^ (hashes >> _S30), self.lanes).reshape(n, self.lanes)
        np.bitwise_xor(spread, self._keys[:n], out=lane)
        _mix64_rest(lane, self._scratch[:n])
        tops = lane.view(np.uint16) if np.little_endian else lane.byteswap().view("<u2")
        weights = self.weights[:n]
        np.floor_divide(tops, _Q16, out=weights, casting="unsafe")
        cells = n * self.columns
        mask = self._mask[:cells].reshape(n, self.columns)
        for start in _STARTS16:
            np.greater_equal(tops, start, out=mask)
            np.add(weights, mask.view(np.uint8), out=weights)
        # The last mask marks weight 5 and the sparse cells (0.37 % of cells): find its 8-cell
        # words that hold one, then those cells, then keep the sparse ones.
        self._mask[cells:] = False
        words = np.flatnonzero(self._mask.view(np.uint64) != 0)
        within = np.flatnonzero(self._mask.reshape(-1, 8)[words])
        marked = words[within >> 3] * 8 + (within & 7)
        top = tops.reshape(-1)[marked]
        sparse = top >= _FIRST_SPARSE16
        return marked[sparse].astype(np.int64), top[sparse].astype(np.uint64)


def _chunk_rows(replicates: int, columns: int) -> tuple[int, int, int]:
    """Lanes, rows a chunk and rows a matrix product for ``replicates`` and ``columns``."""
    lanes = -(-replicates // 4)
    product = max(1, _PRODUCT_CELLS // (4 * lanes * max(1, columns)))
    chunk = max(1, _CHUNK_CELLS // (4 * lanes * product)) * product
    return lanes, chunk, product


def _checked(hashes: U64, replicates: int) -> U64:
    if replicates < 0:
        raise ValueError(f"replicates must be >= 0, got {replicates}")
    if hashes.ndim != 1:
        raise ValueError(f"hashes must be one-dimensional, got shape {hashes.shape}")
    return np.ascontiguousarray(hashes, dtype=np.uint64)


def poisson_weights(hashes: U64, replicates: int) -> U8:
    """The Poisson(1) weight of each unit in each replicate.

    Parameters
    ----------
    hashes
        ``uint64``, one per unit (``unit_hashes``).
    replicates
        How many replicates; replicate ``b``'s weights do not depend on it.

    Returns
    -------
    numpy.ndarray
        ``uint8`` of shape ``(len(hashes), replicates)``: entry ``(i, b)`` is a Poisson(1) draw
        determined by ``(hashes[i], b)`` alone.

    Raises
    ------
    ValueError
        If ``hashes`` is not one-dimensional or ``replicates`` is negative.

    Notes
    -----
    Exact inverse-CDF sampling at 48-bit resolution: each ``P(w = k)`` is the Poisson(1)
    probability to within ``2**-48``, and no weight exceeds 16 (module notes). Independence
    rests on SplitMix64's mixing: the replicates of a unit take ``mix64`` of its hash XORed
    with distinct keys, or disjoint bits of one such mix.
    """
    hashes = _checked(hashes, replicates)
    out = np.empty((len(hashes), replicates), dtype=np.uint8)
    if replicates == 0 or len(hashes) == 0:
        return out
    lanes, rows, _ = _chunk_rows(replicates, 1)
    kernel = _Kernel(min(rows, len(hashes)), lanes)
    for start in range(0, len(hashes), kernel.rows):
        chunk = hashes[start : start + kernel.rows]
        sparse, tops = kernel.weights_of(chunk)
        weights = kernel.weights[: len(chunk)]
        row, replicate = np.divmod(sparse, kernel.columns)
        found = _sparse_weights(chunk[row], replicate, tops, kernel.low_keys)
        weights.reshape(-1)[sparse] = found
        out[start : start + len(chunk)] = weights[:, :replicates]
    return out


def replicate_sums(hashes: U64, values: F64, replicates: int) -> F64:
    """Column sums of ``values`` weighted by each replicate's Poisson weights.

    Parameters
    ----------
    hashes
        ``uint64``, the hash of each row's unit (``unit_hashes``).
    values
        ``float64`` of shape ``(len(hashes), C)``, all finite (the caller puts 0 for a
        non-finite value and passes indicator columns for them).
    replicates
        How many replicates.

    Returns
    -------
    numpy.ndarray
        ``float64`` of shape ``(replicates, C)``: ``sum_i w[i, b] * values[i, c]`` with
        ``w = poisson_weights(hashes, replicates)``. The sums of disjoint batches add up to
        the sums of their union, up to rounding.

    Raises
    ------
    ValueError
        If ``values`` is not of shape ``(len(hashes), C)`` or not finite, or ``replicates``
        is negative.

    Notes
    -----
    The weights are never formed whole: chunks of about half a million cells are hashed and
    thresholded into ``uint8`` weights, which float64 matrix products of a few hundred rows
    each add into the sums; the rare sparse cells (0.064 %) count as weight 5 there and are
    corrected afterwards from their full 48-bit uniforms. The scratch space is a few MB
    whatever the number of rows. The sums carry the rounding of float64 products summed in
    another order than ``w.T @ values``.
    """
    hashes = _checked(hashes, replicates)
    if values.ndim != 2 or values.shape[0] != len(hashes):
        raise ValueError(f"values must have shape ({len(hashes)}, C), got {values.shape}")
    columns = values.shape[1]
    if replicates == 0 or len(hashes) == 0 or columns == 0:
        return np.zeros((replicates, columns), dtype=np.float64)
    lanes, rows, product = _chunk_rows(replicates, columns)
    kernel = _Kernel(min(rows, len(hashes)), lanes)
    as_float = np.empty((min(product, kernel.rows), kernel.columns), dtype=np.float64)
    sums = np.zeros((columns, kernel.columns), dtype=np.float64)  # transposed
    pending: list[tuple[I64, U64]] = []
    waiting = 0
    for start in range(0, len(hashes), kernel.rows):
        chunk = hashes[start : start + kernel.rows]
        n = len(chunk)
        sparse, tops = kernel.weights_of(chunk)
        if len(sparse):
            pending.append((sparse + start * kernel.columns, tops))
            waiting += len(sparse)
        block = np.ascontiguousarray(values[start : start + n], dtype=np.float64)
        if not np.isfinite(block).all():
            raise ValueError("values must be finite: put 0 for the others and flag them")
        for first in range(0, n, product):
            part = kernel.weights[first : min(n, first + product)]
            weights = as_float[: len(part)]
            np.copyto(weights, part)
            sums += block[first : first + len(part)].T @ weights
        if waiting >= _SPARSE_GROUP:
            _add_sparse(sums, pending, hashes, values, kernel, replicates)
            pending, waiting = [], 0
    _add_sparse(sums, pending, hashes, values, kernel, replicates)
    return np.ascontiguousarray(sums[:, :replicates].T)


def _add_sparse(
    sums: F64,
    pending: list[tuple[I64, U64]],
    hashes: U64,
    values: F64,
    kernel: _Kernel,
    replicates: int,
) -> None:
    """Correct the transposed ``sums`` for sparse cells, which the products took as weight 5."""
    if not pending:
        return
    flat = np.concatenate([cells for cells, _ in pending])
    tops = np.concatenate([top for _, top in pending])
    row, replicate = np.divmod(flat, kernel.columns)
    real = replicate < replicates  # not the padding up to a multiple of four replicates
    row, replicate, tops = row[real], replicate[real], tops[real]
    found = _sparse_weights(hashes[row], replicate, tops, kernel.low_keys)
    change = (found - _SPARSE_BASE).astype(np.float64)
    changed = values[row] * change[:, None]
    for c in range(values.shape[1]):
        sums[c, :replicates] += np.bincount(replicate, weights=changed[:, c], minlength=replicates)


SLICE, MODEL, REPLICATE, VALUE = "slice", "model", "replicate", "value"
P_BEST, RANK_LOW, RANK_HIGH = "p_best", "rank_low", "rank_high"
_LOW_Q, _HIGH_Q = 0.025, 0.975


def rank_uncertainty(stats: pl.DataFrame, higher_is_better: bool) -> pl.DataFrame:
    """Each model's chance of ranking first and its 95 % rank interval, over the replicates.

    Parameters
    ----------
    stats
        Columns ``slice`` (String), ``model`` (String), ``replicate`` (integer) and ``value``
        (Float64), one row per slice, model and replicate; a missing row counts as undefined.
    higher_is_better
        Whether the largest value ranks first (else the smallest does).

    Returns
    -------
    polars.DataFrame
        One row per slice and model, sorted by them: ``p_best`` (Float64), ``rank_low`` and
        ``rank_high`` (Int64).

    Raises
    ------
    ValueError
        If a slice, model and replicate has more than one row.

    Notes
    -----
    Within a replicate, models are ranked by the "min" method (1 = best; tied models share
    the best of their ranks); NaN and null are undefined and rank after every defined value,
    tied with each other; infinities rank as numbers do and -0.0 ties with 0.0. Replicates of
    a slice in which every model is undefined are dropped; a slice left with none gets nulls.
    ``p_best`` is the mean over replicates of ``1/k`` where the model is one of ``k`` tied
    for first, else 0, so a slice's ``p_best`` add up to 1 up to rounding. Over the ``R``
    replicates' ranks sorted ascending, ``rank_low`` is the one at 0-based index
    ``floor(0.025 (R - 1))`` and ``rank_high`` the one at ``ceil(0.975 (R - 1))`` (Polars'
    "lower" and "higher" quantiles): fewer than 2.5 % of replicates rank better than
    ``rank_low`` and fewer than 2.5 % worse than ``rank_high``.
    """
    keys = [SLICE, MODEL, REPLICATE]
    if stats.select(pl.struct(keys).is_duplicated().any()).item():
        raise ValueError("stats has more than one row for a slice, model and replicate")
    clean = stats.select(*keys, pl.col(VALUE).fill_nan(None))  # one undefined: null
    models = clean.select(SLICE, MODEL).unique()
    replicates = (
        clean.group_by(SLICE, REPLICATE)
        .agg(pl.col(VALUE).is_not_null().any().alias("_defined"))
        .filter("_defined")
        .drop("_defined")
    )
    within = [SLICE, REPLICATE]
    rank = pl.col(VALUE).rank(method="min", descending=higher_is_better).over(within)
    defined = pl.col(VALUE).is_not_null().sum().over(within)
    ranked = (
        models.join(replicates, on=SLICE)
        .join(clean, on=keys, how="left")
        .with_columns(rank.fill_null(defined + 1).cast(pl.Int64).alias("_rank"))
        .with_columns(
            pl.when(pl.col("_rank") == 1)
            .then(1.0 / (pl.col("_rank") == 1).sum().over(within))
            .otherwise(0.0)
            .alias("_share")
        )
    )
    summary = ranked.group_by(SLICE, MODEL).agg(
        pl.col("_share").mean().alias(P_BEST),
        pl.col("_rank").quantile(_LOW_Q, interpolation="lower").cast(pl.Int64).alias(RANK_LOW),
        pl.col("_rank").quantile(_HIGH_Q, interpolation="higher").cast(pl.Int64).alias(RANK_HIGH),
    )
    return (
        models.join(summary, on=[SLICE, MODEL], how="left")
        .select(SLICE, MODEL, P_BEST, RANK_LOW, RANK_HIGH)
        .sort(SLICE, MODEL)
    )
