"""Shared test helpers: random distributions with exact zeros, and running the real job on them.

Nothing here computes a divergence: oracles live in the tests, from scipy and numpy.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from hypothesis import strategies as st
from klrank.config import InputOptions, RunOptions
from klrank.run import RunSummary, run
from klrank.schemas.outputs import REPORT_FILE, ROWS_FILE


def normalised(weights: np.ndarray) -> np.ndarray:
    """Rows of ``weights`` divided by their sums, in Float64 (every row needs a positive sum)."""
    weights = np.asarray(weights, dtype=np.float64)
    totals = weights.sum(axis=1, keepdims=True)
    assert (totals > 0).all(), "every row needs at least one positive weight"
    return weights / totals


def random_distributions(
    rng: np.random.Generator,
    n_rows: int,
    n_classes: int,
    *,
    zero_fraction: float = 0.0,
    alpha: float = 0.7,
) -> np.ndarray:
    """``n_rows`` Dirichlet(``alpha``) distributions, with about ``zero_fraction`` exact zeros.

    Each row keeps at least one positive entry, and rows sum to 1 in Float64 up to rounding.
    """
    weights = rng.dirichlet(np.full(n_classes, alpha), size=n_rows)
    zeros = rng.random((n_rows, n_classes)) < zero_fraction
    keep = rng.integers(0, n_classes, size=n_rows)
    zeros[np.arange(n_rows), keep] = False
    weights[zeros] = 0.0
    return normalised(weights)


# A denominator for distributions that sum to exactly 1 in Float64 (multiples of 2**-20 add
# without rounding), so that Gibbs' inequality D(P‖Q) ≥ 0 holds for the floats themselves.
DYADIC = 2**20


@st.composite
def dyadic_distributions(draw: st.DrawFn, k: int) -> tuple[float, ...]:
    """A distribution over ``k`` classes of multiples of 2**-20 summing to exactly 1; zeros allowed."""
    cuts = sorted(draw(st.lists(st.integers(0, DYADIC), min_size=k - 1, max_size=k - 1)))
    edges = [0, *cuts, DYADIC]
    return tuple((b - a) / DYADIC for a, b in zip(edges, edges[1:], strict=False))


def extreme_logits(k: int) -> st.SearchStrategy[tuple[float, ...]]:
    """``k`` finite logits at the extremes of Float64.

    Either a small pattern on an offset (up to ±1e16, or anywhere up to ±1.8e308, where the
    pattern is lost to rounding and the row ties), or each logit anywhere up to ±1.8e308 (so
    that z − max z can fall below the Float64 range).
    """
    finite = st.floats(allow_nan=False, allow_infinity=False)
    offset = st.one_of(
        st.sampled_from([1e15, -1e15, 1e16, 1e308, -1e308, 1.7976931348623157e308]),
        st.floats(-1e16, 1e16),
        finite,
    )
    pattern = st.lists(st.floats(-40.0, 40.0), min_size=k, max_size=k)
    shifted = st.builds(lambda c, zs: tuple(c + z for z in zs), offset, pattern)
    spread = st.lists(finite, min_size=k, max_size=k).map(tuple)
    return st.one_of(shifted, spread).filter(lambda zs: all(map(math.isfinite, zs)))


def class_frame(values: np.ndarray, classes: Sequence[str], prefix: str) -> dict[str, np.ndarray]:
    """Columns ``<prefix><class>`` of a (rows × classes) array, as a dict for ``pl.DataFrame``."""
    assert values.shape[1] == len(classes)
    return {f"{prefix}{c}": values[:, k] for k, c in enumerate(classes)}


def run_job(
    tmp_path: Path,
    labels: pl.DataFrame,
    predictions: pl.DataFrame,
    *,
    name: str = "run",
    **options: Any,
) -> tuple[RunSummary, Path]:
    """Write both inputs to Parquet under ``tmp_path/name``, run the job, return its summary and output dir.

    ``options`` go to :class:`RunOptions` (``base``, ``epsilon``, ...), except ``inputs``, which
    may hold keyword arguments for :class:`InputOptions` (``truth``, ``label_col``, ...).
    """
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=False)
    labels_path, predictions_path = folder / "labels.parquet", folder / "predictions.parquet"
    labels.write_parquet(labels_path)
    predictions.write_parquet(predictions_path)
    input_options = options.pop("inputs", {})
    out = folder / "out"
    summary = run(
        RunOptions(
            inputs=InputOptions(
                labels=str(labels_path), predictions=str(predictions_path), **input_options
            ),
            out=out,
            **options,
        )
    )
    return summary, out


def read_rows(out: Path) -> pl.DataFrame:
    """The published per-row measures."""
    return pl.read_parquet(out / ROWS_FILE)


def read_report(out: Path) -> pl.DataFrame:
    """The published report."""
    return pl.read_parquet(out / REPORT_FILE)
