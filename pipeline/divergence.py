"""Expression builders for the per-row measures between a true distribution P and a model's Q.

Every builder takes one expression per class, in the same class order for P and Q, and returns a
single ``pl.Expr``. Logarithms are taken by the caller (``log_p``, ``log_q``) so that logits can
supply log Q from a log-softmax directly, without an ``exp`` followed by a ``log``.

Notes
-----
All arithmetic is Float64 and in nats; :func:`to_base` converts a sum to bits or bans at the end.
The conventions are the ones of information theory, with no clipping and no renormalisation:

* a term with p = 0 contributes 0 (0 · log 0 = 0), whatever q is;
* a term with p > 0 and q = 0 contributes +inf to D(P‖Q) and H(P,Q), because log q = -inf;
* D(Q‖P) mirrors that: q = 0 contributes 0, q > 0 with p = 0 contributes +inf;
* the Jensen–Shannon divergence compares each side with M = (P + Q)/2, which is positive
  wherever either side is, so it is always finite.

D(P‖Q) is summed as p · (log p − log q) term by term, never as H(P,Q) − H(P), which cancels
catastrophically when D is much smaller than H.

Identical inputs give exactly 0: with Q = P, log q and log p are the same floats, so every term
of D(P‖Q) and D(Q‖P) is 0, H(P,Q) − H(P) is 0, and a class with p = q contributes exactly 0 to
the Jensen–Shannon divergence (log M is not taken there, as log(2p) − log 2 need not round to
log p). Otherwise a divergence is computed to rounding and never clamped at 0: where P and Q
both sum to exactly 1 it comes out below 0 only by rounding, by a few times 1e-16·(1 + H(P) +
H(P,Q)) nats (for Q within rounding of P, about half the rows do). Rows that do not sum to
exactly 1 (validation allows a tolerance; 65 times 1/65 in Float64 is not 1) can have a true
D(P‖Q) a little below 0, since Gibbs' inequality needs Σq ≤ Σp; it is kept as it is.
"""

import math
from collections.abc import Sequence
from functools import reduce
from typing import Literal

import polars as pl

Base = Literal["2", "e", "10"]
LOG_BASES: dict[str, float] = {"2": 2.0, "e": math.e, "10": 10.0}
UNITS: dict[str, str] = {"2": "bits", "e": "nats", "10": "bans"}


def sum_terms(terms: Sequence[pl.Expr]) -> pl.Expr:
    """The terms added left to right: a fixed (class) order, so results are reproducible."""
    return reduce(lambda total, term: total + term, terms)


def _xlogy_difference(x: pl.Expr, log_x: pl.Expr, log_y: pl.Expr) -> pl.Expr:
    # x · (log x − log y), and 0 where x = 0 (0 · log 0 = 0), whatever y is; where x > 0 and
    # y = 0 it is x·(+inf) = +inf. The choice is made before multiplying: 0·(-inf) would be NaN,
    # and filling NaN afterwards (fill_nan) costs polars about four times as much as the product.
    return pl.when(x > 0).then(x * (log_x - log_y)).otherwise(0.0)


def kl_divergence(
    p: Sequence[pl.Expr], log_p: Sequence[pl.Expr], log_q: Sequence[pl.Expr]
) -> pl.Expr:
    """D(P‖Q) = Σ p·(log p − log q) in nats; +inf when some p > 0 has q = 0.

    Examples
    --------
    >>> import polars as pl
    >>> df = pl.DataFrame({"p": [0.5], "q": [0.25], "p2": [0.5], "q2": [0.75]})
    >>> p, q = [pl.col("p"), pl.col("p2")], [pl.col("q"), pl.col("q2")]
    >>> round(df.select(kl_divergence(p, [e.log() for e in p], [e.log() for e in q])).item(), 6)
    0.143841
    """
    return sum_terms(kl_terms(p, log_p, log_q))


def kl_terms(
    p: Sequence[pl.Expr], log_p: Sequence[pl.Expr], log_q: Sequence[pl.Expr]
) -> list[pl.Expr]:
    """Each class's term p·(log p − log q) of D(P‖Q), in nats (0 where p = 0)."""
    return [_xlogy_difference(pi, lpi, lqi) for pi, lpi, lqi in zip(p, log_p, log_q, strict=True)]


def reverse_kl_divergence(
    q: Sequence[pl.Expr],
    log_q: Sequence[pl.Expr],
    log_p: Sequence[pl.Expr],
    *,
    q_has_full_support: bool = False,
) -> pl.Expr:
    """D(Q‖P) in nats; +inf when some q > 0 has p = 0 (always so for a hard label and a full Q).

    With ``q_has_full_support`` (Q from a softmax, which is 0 only at a logit of −inf, where
    log q = −inf) the result is +inf wherever some p = 0 has log q > −inf, even if that q
    rounded to 0.0 in Float64.
    """
    divergence = kl_divergence(q, log_q, log_p)
    if not q_has_full_support:
        return divergence
    supported = pl.any_horizontal(
        [(lp == -math.inf) & (lq > -math.inf) for lp, lq in zip(log_p, log_q, strict=True)]
    )
    return pl.when(supported).then(math.inf).otherwise(divergence)


def cross_entropy(p: Sequence[pl.Expr], log_q: Sequence[pl.Expr]) -> pl.Expr:
    """H(P,Q) = −Σ p·log q in nats; +inf when some p > 0 has q = 0."""
    return sum_terms(
        [pl.when(pi > 0).then(pi * -lqi).otherwise(0.0) for pi, lqi in zip(p, log_q, strict=True)]
    )


def entropy(p: Sequence[pl.Expr], log_p: Sequence[pl.Expr]) -> pl.Expr:
    """H(P) = −Σ p·log p in nats (0 for a one-hot P)."""
    return cross_entropy(p, log_p)


def jensen_shannon_divergence(
    p: Sequence[pl.Expr],
    log_p: Sequence[pl.Expr],
    q: Sequence[pl.Expr],
    log_q: Sequence[pl.Expr],
) -> pl.Expr:
    """JS(P,Q) = ½·D(P‖M) + ½·D(Q‖M) with M = (P+Q)/2, in nats; finite, at most log 2.

    Notes
    -----
    log m is taken as log(p + q) − log 2: p + q never rounds below p, so m > 0 wherever p > 0
    (halving first would round the smallest subnormal to 0, and make the term +inf).

    A class with p = q contributes exactly 0, which is its true value: for p = q, log(p + q) −
    log 2 can differ from log p in the last bit, and left a JS(P,P) of −1e-16 instead of 0.
    """
    terms = []
    for pi, lpi, qi, lqi in zip(p, log_p, q, log_q, strict=True):
        log_m = (pi + qi).log() - math.log(2.0)
        differs = _xlogy_difference(pi, lpi, log_m) + _xlogy_difference(qi, lqi, log_m)
        terms.append(pl.when(pi == qi).then(0.0).otherwise(differs))
    return sum_terms(terms) * 0.5


def log_softmax(logits: Sequence[pl.Expr]) -> list[pl.Expr]:
    """Log-probabilities from logits, shifted by the row maximum so that no ``exp`` overflows.

    log q_i = (z_i − m) − log Σ_j exp(z_j − m), with m = max_j z_j.

    Notes
    -----
    The shift comes first: z_i − m is one rounding away from exact, and the log-sum, between 0
    and log K, is subtracted from that. Adding the log-sum to m first, as z_i − (m + log Σ),
    loses it wherever m is large: 1e308 + log 2 rounds to 1e308, so two equal logits of 1e308
    gave log q = 0 for both classes (a Q summing to 2), and at m = 1e16, where floats are 2
    apart, log 65 = 4.17 became 4.

    Where z_i − m is below the Float64 range (logits of ±1e308 in one row), log q_i = −inf and
    q_i = 0, the nearest floats to the true values; D(P‖Q) is then +inf if p_i > 0.

    Examples
    --------
    >>> import polars as pl
    >>> df = pl.DataFrame({"z0": [1e308], "z1": [1e308]})
    >>> df.select(log_softmax([pl.col("z0"), pl.col("z1")])).row(0) == (-math.log(2.0),) * 2
    True
    """
    shifted = shifted_logits(logits)
    log_sum = log_sum_exp_of_shifted(shifted)
    return [s - log_sum for s in shifted]


def shifted_logits(logits: Sequence[pl.Expr]) -> list[pl.Expr]:
    """z_i − max_j z_j: the first step of :func:`log_softmax`, 0 for the largest logit."""
    row_max = pl.max_horizontal(logits)
    return [z - row_max for z in logits]


def log_sum_exp_of_shifted(shifted: Sequence[pl.Expr]) -> pl.Expr:
    """The log-sum log Σ exp s_i of :func:`shifted_logits`: in [0, log K], as the largest s is 0."""
    return sum_terms([s.exp() for s in shifted]).log()


def smoothed(q: Sequence[pl.Expr], epsilon: float) -> list[pl.Expr]:
    """Additive smoothing q' = (q + ε)/(1 + K·ε), applied only when the user asks for it."""
    scale = 1.0 + len(q) * epsilon
    return [(qi + epsilon) / scale for qi in q]


def argmax_index(values: Sequence[pl.Expr]) -> pl.Expr:
    """Position of the largest value in a row; ties go to the first position (class order)."""
    row_max = pl.max_horizontal(values)
    return pl.coalesce(
        [pl.when(v == row_max).then(pl.lit(i, pl.Int32)) for i, v in enumerate(values)]
    )


def top1_match(p: Sequence[pl.Expr], q: Sequence[pl.Expr]) -> pl.Expr:
    """Whether Q's most likely class is P's most likely class (accuracy, for hard labels)."""
    return argmax_index(p) == argmax_index(q)


def nats_per_unit(base: str) -> float:
    """How many nats one unit of ``base`` is (1 for "e", ln 2 for bits): to convert back to nats."""
    return 1.0 if base == "e" else math.log(LOG_BASES[base])


def to_base(nats: pl.Expr, base: str) -> pl.Expr:
    """Convert a quantity in nats to the unit of ``base`` ("2" bits, "e" nats, "10" bans)."""
    if base == "e":
        return nats
    return nats / math.log(LOG_BASES[base])
