"""The measures as Polars expressions, for your own queries: ``klrank.expr.kl_divergence(p, q)``.

Each function takes the distributions of one row in either of two forms, and returns one
``pl.Expr`` (a Float64 per row):

* a list of per-class columns: names or expressions, in the same class order for P and Q
  (``["p_cat", "p_dog"]`` against ``["q_cat", "q_dog"]``);
* one Array or List column of the class probabilities: a name or an expression (``"p"``
  against ``"q"``), the classes in the same positions, as many in P as in Q.

``base`` is the logarithm's base: 2 (bits, the default, as ``klrank run``), ``"e"`` (nats) or
10 (bans); any other positive number also works.

Notes
-----
These are the conventions of information theory, the same as ``klrank run``'s, with no clipping
and no renormalisation:

* a class with p = 0 contributes 0 (0 · log 0 = 0), whatever q is;
* a class with p > 0 and q = 0 makes D(P‖Q) and H(P,Q) +inf;
* D(Q‖P) mirrors that: q > 0 with p = 0 makes it +inf;
* JS(P, Q) compares each side with M = (P + Q)/2 and is always finite, at most log 2;
* identical P and Q give exactly 0 for every divergence;
* rows are used as they are: a row that does not sum to 1 is not rescaled, and a divergence of
  such rows can come out below 0. ``klrank run`` validates the sums first; these functions
  check nothing. Nulls propagate; NaN gives NaN.

Arithmetic is Float64 whatever the inputs' float width. D(P‖Q) is summed term by term as
p · (log p − log q), never as H(P,Q) − H(P), which cancels catastrophically when D ≪ H.

Examples
--------
>>> import polars as pl
>>> from klrank import expr
>>> frame = pl.DataFrame({"p_a": [0.5], "p_b": [0.5], "q_a": [0.25], "q_b": [0.75]})
>>> round(frame.select(expr.kl_divergence(["p_a", "p_b"], ["q_a", "q_b"], base="e")).item(), 6)
0.143841
"""

import math
from collections.abc import Callable, Sequence

import polars as pl
from klrank.pipeline import divergence

__all__ = [
    "cross_entropy",
    "entropy",
    "jensen_shannon_divergence",
    "kl_divergence",
    "reverse_kl_divergence",
]

Distribution = str | pl.Expr | Sequence[str | pl.Expr]
"""One row's distribution: per-class columns (a list), or one Array or List column."""
Base = float | str

_FLOAT_LIST = pl.List(pl.Float64)
_LN2 = math.log(2.0)


def _log_of_base(base: Base) -> float:
    if isinstance(base, str):
        if base not in divergence.LOG_BASES:
            raise ValueError(f"base must be 2, 'e', 10 or a positive number, got {base!r}")
        return math.log(divergence.LOG_BASES[base])
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise ValueError(f"base must be a positive number other than 1, got {base!r}")
    return math.log(base)


def _in_base(nats: pl.Expr, base: Base) -> pl.Expr:
    if base in ("e", math.e):
        return nats
    return nats / _log_of_base(base)


def _columns(distribution: Sequence[str | pl.Expr]) -> list[pl.Expr]:
    return [(pl.col(c) if isinstance(c, str) else c).cast(pl.Float64) for c in distribution]


def _is_one_column(distribution: Distribution) -> bool:
    return isinstance(distribution, str | pl.Expr)


# Inside list.eval over P's values followed by Q's: each side's elements, position by position.
_ELEMENT = pl.element()
_HALF = pl.len() // 2
_P, _Q = _ELEMENT.slice(0, _HALF), _ELEMENT.slice(_HALF, _HALF)


def _as_list(column: str | pl.Expr) -> pl.Expr:
    return (pl.col(column) if isinstance(column, str) else column).cast(_FLOAT_LIST)


def _pairwise_sum(p: str | pl.Expr, q: str | pl.Expr, term: Callable[..., pl.Expr]) -> pl.Expr:
    """Σ over classes of ``term(p_i, q_i)``, for one Array or List column each."""
    both = pl.concat_list(_as_list(p), _as_list(q))
    return both.list.eval(term(_P, _Q)).list.sum()


def _kl_term(p: pl.Expr, q: pl.Expr) -> pl.Expr:
    return pl.when(p > 0).then(p * (p.log() - q.log())).otherwise(0.0)


def _cross_entropy_term(p: pl.Expr, q: pl.Expr) -> pl.Expr:
    return pl.when(p > 0).then(p * -q.log()).otherwise(0.0)


def _js_term(p: pl.Expr, q: pl.Expr) -> pl.Expr:
    # As in klrank.pipeline.divergence: log m = log(p + q) − log 2 (halving first would round
    # the smallest subnormals to 0), and a class with p = q contributes exactly 0.
    log_m = (p + q).log() - _LN2
    differs = pl.when(p > 0).then(p * (p.log() - log_m)).otherwise(0.0) + pl.when(q > 0).then(
        q * (q.log() - log_m)
    ).otherwise(0.0)
    return pl.when(p == q).then(0.0).otherwise(differs)


def _pair(p: Distribution, q: Distribution) -> tuple[list[pl.Expr], list[pl.Expr]] | None:
    """Both as per-class columns, or None when both are one column each."""
    if _is_one_column(p) and _is_one_column(q):
        return None
    if _is_one_column(p) or _is_one_column(q):
        raise TypeError("p and q must both be lists of per-class columns or both one column")
    assert not isinstance(p, str | pl.Expr) and not isinstance(q, str | pl.Expr)
    if len(p) != len(q):
        raise ValueError(f"p has {len(p)} classes and q {len(q)}: they must be the same classes")
    if not p:
        raise ValueError("p and q list no classes")
    return _columns(p), _columns(q)


def kl_divergence(p: Distribution, q: Distribution, *, base: Base = 2) -> pl.Expr:
    """D(P‖Q) = Σ p·log(p/q): how far the prediction Q is from the truth P.

    +inf when some class has p > 0 and q = 0; 0 for Q = P. See the module's Notes.

    Examples
    --------
    >>> import polars as pl
    >>> frame = pl.DataFrame({"p": [[1.0, 0.0]], "q": [[0.5, 0.5]]})
    >>> frame.select(kl_divergence("p", "q")).item()  # one bit
    1.0
    """
    pair = _pair(p, q)
    if pair is None:
        assert isinstance(p, str | pl.Expr) and isinstance(q, str | pl.Expr)
        return _in_base(_pairwise_sum(p, q, _kl_term), base)
    ps, qs = pair
    return _in_base(
        divergence.kl_divergence(ps, [e.log() for e in ps], [e.log() for e in qs]), base
    )


def reverse_kl_divergence(p: Distribution, q: Distribution, *, base: Base = 2) -> pl.Expr:
    """D(Q‖P) = Σ q·log(q/p), the reverse divergence: +inf when some q > 0 has p = 0."""
    return kl_divergence(q, p, base=base)


def cross_entropy(p: Distribution, q: Distribution, *, base: Base = 2) -> pl.Expr:
    """H(P,Q) = −Σ p·log q = H(P) + D(P‖Q): +inf when some p > 0 has q = 0."""
    pair = _pair(p, q)
    if pair is None:
        assert isinstance(p, str | pl.Expr) and isinstance(q, str | pl.Expr)
        return _in_base(_pairwise_sum(p, q, _cross_entropy_term), base)
    ps, qs = pair
    return _in_base(divergence.cross_entropy(ps, [e.log() for e in qs]), base)


def entropy(p: Distribution, *, base: Base = 2) -> pl.Expr:
    """H(P) = −Σ p·log p: 0 for a one-hot P, log K for a uniform one over K classes."""
    if _is_one_column(p):
        assert isinstance(p, str | pl.Expr)
        term = pl.when(_ELEMENT > 0).then(_ELEMENT * -_ELEMENT.log()).otherwise(0.0)
        return _in_base(_as_list(p).list.eval(term).list.sum(), base)
    assert not isinstance(p, str | pl.Expr)
    ps = _columns(p)
    return _in_base(divergence.entropy(ps, [e.log() for e in ps]), base)


def jensen_shannon_divergence(p: Distribution, q: Distribution, *, base: Base = 2) -> pl.Expr:
    """JS(P,Q) = ½·D(P‖M) + ½·D(Q‖M) with M = (P + Q)/2: symmetric, finite, at most log 2."""
    pair = _pair(p, q)
    if pair is None:
        assert isinstance(p, str | pl.Expr) and isinstance(q, str | pl.Expr)
        return _in_base(_pairwise_sum(p, q, _js_term) * 0.5, base)
    ps, qs = pair
    nats = divergence.jensen_shannon_divergence(
        ps, [e.log() for e in ps], qs, [e.log() for e in qs]
    )
    return _in_base(nats, base)
