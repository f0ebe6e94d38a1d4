"""Student's t distribution in pure Python, for p-values and confidence intervals.

Only the standard library's :mod:`math` is used, so the report can be produced without
scipy at run time. The survival function goes through the regularized incomplete beta
function I_x(df/2, 1/2): its continued fraction (modified Lentz), or for large df near the
centre of the distribution the asymptotic expansion of DiDonato and Morris (ACM TOMS 18,
1992), where the continued fraction would cancel. Everything is kept in log space, so the
quantile search is steered correctly even where a tail probability underflows.
"""

import math

__all__ = ["student_t_ppf", "student_t_sf", "two_sided_p_value"]

_LOG_HALF = -math.log(2.0)
# Lentz's method divides by these quantities; a zero is replaced by a tiny number.
_TINY = 1e-300
# Relative size of the last continued-fraction factor at which we stop (a few ulps).
_CF_EPS = 2.0**-52
# Newton's method on the quantile stops once the step in log(t) is this small.
_PPF_TOL = 1e-12
# Beyond these bounds on r = |t| / sqrt(df), r * r would overflow or underflow.
_R_HUGE = 1e150
_R_TINY = 1e-150
_LOG_MAX_FLOAT = math.log(1.7976931348623157e308)
# Outside these bounds on df the results no longer change in double precision, so df is
# clamped to them. Above 1e30 any tail probability above the smallest double moves by a
# relative t**4 / (4 df) < 1e-24; the clamp keeps t**2 / df and its products with df clear of
# underflow, and lets df = inf stand for the normal distribution. Below 1e-300 all the mass
# but O(df) sits at infinity, so P(T > t) rounds to 1/2 for every finite t != 0, and df / 2
# would underflow to 0 for a subnormal df.
_DF_MIN = 1e-300
_DF_MAX = 1e30


def _checked_df(df: float) -> float:
    """Reject a df that is not positive; clamp it to [`_DF_MIN`, `_DF_MAX`] otherwise."""
    # `not df > 0` also rejects NaN.
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got df={df!r}")
    return min(max(df, _DF_MIN), _DF_MAX)


def _stirling_correction(z: float) -> float:
    """Return lgamma(z) - [(z - 1/2) log z - z + log(2 pi) / 2] for z >= 10."""
    w = 1.0 / (z * z)
    series = 1.0 / 156.0
    for coefficient in (691.0 / 360360.0, 1.0 / 1188.0, 1.0 / 1680.0, 1.0 / 1260.0, 1.0 / 360.0):
        series = coefficient - w * series
    return (1.0 / 12.0 - w * series) / z


def _log_gamma_ratio(big: float, small: float) -> float:
    """Return lgamma(big + small) - lgamma(big) for big >= 10 and 0 < small <= big.

    Both terms are huge and nearly equal for large ``big``; Stirling's series lets their
    difference be formed analytically, keeping full relative accuracy.
    """
    return (
        (big - 0.5) * math.log1p(small / big)
        + small * math.log(big + small)
        - small
        + _stirling_correction(big + small)
        - _stirling_correction(big)
    )


def _log_beta(a: float, b: float) -> float:
    """Return log B(a, b) for positive a and b.

    With plain lgamma, df = 1e6 would lose three digits to cancellation between
    lgamma(a + b) and lgamma(a); see `_log_gamma_ratio`.
    """
    small, big = min(a, b), max(a, b)
    if big < 10.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return math.lgamma(small) - _log_gamma_ratio(big, small)


def _beta_continued_fraction(a: float, b: float, x: float, y: float) -> float:
    """Evaluate the continued fraction of I_x(a, b) by the modified Lentz method.

    ``y`` is ``1 - x``, passed separately because the caller knows it to full relative
    precision even when ``x`` is close to 1. The fraction converges quickly for
    ``x <= (a + 1) / (a + b + 2)``; the caller arranges that.
    """
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    # 1 - qab * x / qap, rewritten with y where x is close to 1.
    d = 1.0 - qab * x / qap if x <= 0.5 else ((1.0 - b) + qab * y) / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    # Convergence takes O(sqrt(max(a, b))) steps at worst; allow plenty more.
    max_iterations = 1000 + 20 * math.isqrt(int(min(qab, 1e12)))
    for m in range(1, max_iterations + 1):
        m2 = 2 * m
        # Even step of the fraction.
        numerator = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + numerator * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + numerator / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        h *= d * c
        # Odd step of the fraction.
        numerator = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + numerator * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + numerator / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= _CF_EPS:
            return h
    raise ArithmeticError(
        f"incomplete beta continued fraction did not converge for a={a!r}, b={b!r}, x={x!r}"
    )


def _log_ibeta_cf(a: float, b: float, x: float, y: float, log_x: float, log_y: float) -> float:
    """Return log I_x(a, b) from the continued fraction; needs x <= (a + 1) / (a + b + 2)."""
    log_front = a * log_x + b * log_y - _log_beta(a, b) - math.log(a)
    return log_front + math.log(_beta_continued_fraction(a, b, x, y))


def _scaled_upper_gamma_half(u: float) -> float:
    """Return Q(1/2, u) / h(u) for u > 0, with h(u) = u**(1/2) * exp(-u) / Gamma(1/2).

    Q(1/2, u) = erfc(sqrt(u)) is the regularized upper incomplete gamma function. Above
    u = 2 Legendre's continued fraction gives the ratio directly, with no underflow and no
    rounding of sqrt(u) amplified by the steep tail.
    """
    if u < 2.0:
        return math.erfc(math.sqrt(u)) * math.exp(u) * math.sqrt(math.pi / u)
    b = u + 0.5
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        numerator = -i * (i - 0.5)
        b += 2.0
        d = numerator * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + numerator / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge for u={u!r}")


def _bgrat_coefficients(b: float, count: int) -> tuple[float, ...]:
    """Return the coefficients p_n of DiDonato and Morris's expansion (their eq. 9.4)."""
    odd_factorials = [float(math.factorial(2 * m + 1)) for m in range(count)]
    p = [1.0]
    for n in range(1, count):
        total = sum((m * b - n) * p[n - m] / odd_factorials[m] for m in range(1, n))
        p.append(total / n + (b - 1.0) / odd_factorials[n])
    return tuple(p)


# Thirty terms give double precision for a >= 15 (Boost's table size for doubles).
_BGRAT_P = _bgrat_coefficients(0.5, 30)


def _log_ibeta_large_a(a: float, log_x: float) -> float:
    """Return log I_x(a, 1/2) for a >= 15 and x >= 0.7.

    This is the asymptotic expansion of DiDonato and Morris (1992, ACM TOMS 18, eq. 9; the
    BGRAT routine of TOMS 708) with b = 1/2. There the continued fraction would have to
    cancel terms close to -1 against 1, losing about log10(1 / (1 - x)) digits: already
    eight at df = 1e8.
    """
    b = 0.5
    big_t = a + (b - 1.0) / 2.0
    u = -big_t * log_x
    # log h(u), h(u) = u**b * exp(-u) / Gamma(b).
    log_h = b * math.log(u) - u - math.lgamma(b)
    j = _scaled_upper_gamma_half(u)
    total = j
    lx2 = (0.5 * log_x) ** 2
    lx_power = 1.0
    t4 = 4.0 * big_t * big_t
    b_plus_2n = b
    for p_n in _BGRAT_P[1:]:
        j = (b_plus_2n * (b_plus_2n + 1.0) * j + (u + b_plus_2n + 1.0) * lx_power) / t4
        lx_power *= lx2
        b_plus_2n += 2.0
        term = p_n * j
        total += term
        if abs(term) <= _CF_EPS * abs(total):
            break
    log_prefix = log_h + _log_gamma_ratio(a, b) - b * math.log(big_t)
    return log_prefix + math.log(total)


def _log_x_and_y(t: float, df: float) -> tuple[float, float]:
    """Return (log x, log y) for x = df / (df + t**2) and y = t**2 / (df + t**2), 0 < t < inf.

    Both logarithms keep full relative precision, whichever of x and y is close to 1, and
    neither t**2 nor t / sqrt(df) is allowed to overflow or underflow.
    """
    r = t / math.sqrt(df)
    if _R_TINY < r < _R_HUGE:
        r2 = r * r
        return -math.log1p(r2), -math.log1p(1.0 / r2)
    # r**2 is below 1e-300 or above 1e300: log(1 + r**2) is r**2 or 2 log r to double precision.
    log_r = math.log(t) - 0.5 * math.log(df)
    if r >= _R_HUGE:
        return -2.0 * log_r, 0.0
    return 0.0, 2.0 * log_r


def _log_tail_and_center(t: float, df: float) -> tuple[float, float]:
    """Return (log P(T > t), log P(0 < T < t)) for 0 <= t <= inf.

    P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t**2); P(0 < T < t) is its complement
    in 1/2, I_y(1/2, df/2) / 2 with y = 1 - x. Whichever of the two is evaluated directly is
    accurate to a few ulps; the other is formed by subtraction from 1/2, which costs little
    because it is then the larger of the two (except for df far below 1, where the centre
    mass next to a directly evaluated tail can be small).
    """
    if t == 0.0:
        return _LOG_HALF, -math.inf
    if math.isinf(t):
        return -math.inf, _LOG_HALF
    a = 0.5 * df
    b = 0.5
    log_x, log_y = _log_x_and_y(t, df)
    x = math.exp(log_x)
    y = math.exp(log_y)
    # x <= (a + 1) / (a + b + 2), tested on y because that bound rounds to 1 for huge df.
    if y >= (b + 1.0) / (a + b + 2.0):
        if a >= 15.0 and y < 0.3:
            log_tail = _LOG_HALF + _log_ibeta_large_a(a, log_x)
        else:
            log_tail = _LOG_HALF + _log_ibeta_cf(a, b, x, y, log_x, log_y)
        center = 0.5 - math.exp(log_tail)
        log_center = math.log(center) if center > 0.0 else -math.inf
        return log_tail, log_center
    log_i = _log_ibeta_cf(b, a, y, x, log_y, log_x)
    return _LOG_HALF + math.log1p(-math.exp(log_i)), _LOG_HALF + log_i


def _log_pdf(t: float, df: float) -> float:
    """Return the log density of Student's t distribution at t, for finite t."""
    log_x = 0.0 if t == 0.0 else _log_x_and_y(abs(t), df)[0]
    # pdf = x ** ((df + 1) / 2) / (sqrt(df) * B(df/2, 1/2)).
    return 0.5 * (df + 1.0) * log_x - 0.5 * math.log(df) - _log_beta(0.5 * df, 0.5)


def student_t_sf(t: float, df: float) -> float:
    """Return the survival function P(T > t) of Student's t distribution.

    Parameters
    ----------
    t : float
        Point at which to evaluate; may be ``+inf`` (gives 0) or ``-inf`` (gives 1).
    df : float
        Degrees of freedom, positive, need not be an integer; ``inf`` means the normal.

    Returns
    -------
    float
        Upper-tail probability, accurate to about 1e-13 relative, also in the far tail
        down to the smallest normal double (about 2.2e-308). NaN if ``t`` is NaN.

    Raises
    ------
    ValueError
        If ``df`` is not positive (or is NaN).

    Notes
    -----
    Uses P(T > t) = I_x(df/2, 1/2) / 2 for t > 0 with x = df / (df + t**2), and the symmetry
    P(T > -t) = 1 - P(T > t). The regularized incomplete beta function I_x(a, b) comes from
    its continued fraction (modified Lentz), switched to 1 - I_{1-x}(b, a) when
    x > (a + 1) / (a + b + 2); for df >= 30 and x > 0.7 it comes from DiDonato and Morris's
    asymptotic expansion instead. Relative accuracy is a few ulps times |log p|, so about
    1e-13 for the tiniest p. ``df = inf`` gives the normal distribution; beyond df = 1e30
    nothing changes in double precision.

    Examples
    --------
    >>> student_t_sf(0.0, 5.0)
    0.5
    >>> round(student_t_sf(1.0, 1.0), 12)  # Cauchy: 1/2 - atan(1)/pi
    0.25
    """
    df = _checked_df(df)
    if math.isnan(t):
        return math.nan
    log_tail, log_center = _log_tail_and_center(abs(t), df)
    if t >= 0.0:
        return math.exp(log_tail)
    return 0.5 + math.exp(log_center)


def two_sided_p_value(t: float, df: float) -> float:
    """Return the two-sided p-value P(|T| > |t|) of a t statistic.

    Parameters
    ----------
    t : float
        Observed t statistic; its sign does not matter.
    df : float
        Degrees of freedom, positive, need not be an integer (Welch's test).

    Returns
    -------
    float
        ``2 * student_t_sf(abs(t), df)``, capped at 1. NaN if ``t`` is NaN.

    Raises
    ------
    ValueError
        If ``df`` is not positive (or is NaN).

    Examples
    --------
    >>> two_sided_p_value(0.0, 10.0)
    1.0
    >>> round(two_sided_p_value(-1.0, 1.0), 12)  # Cauchy: P(|T| > 1) = 1/2
    0.5
    """
    # min(p, 1.0), not min(1.0, p): the former passes a NaN through.
    return min(2.0 * student_t_sf(abs(t), df), 1.0)


def _tail_quantile_start(log_p: float, df: float) -> float:
    """Return a rough log(t) with P(T > t) = p, for p <= 1/4, to start Newton's method."""
    # A normal quantile from the tail's leading term, mapped through
    # (1 + t**2 / df) ** (-df / 2) ~ exp(-z**2 / 2): exact in shape for large df and
    # right in the power-law tail for small df up to a constant factor.
    z_squared = -2.0 * log_p
    w = z_squared / df
    log_expm1_w = w if w > 700.0 else math.log(math.expm1(w))
    return 0.5 * (math.log(df) + log_expm1_w)


def student_t_ppf(q: float, df: float) -> float:
    """Return the quantile (inverse CDF) of Student's t distribution.

    Parameters
    ----------
    q : float
        Lower-tail probability, strictly between 0 and 1.
    df : float
        Degrees of freedom, positive, need not be an integer; ``inf`` means the normal.

    Returns
    -------
    float
        The t with P(T <= t) = q, accurate to about 1e-13 relative (less where the quantile
        is ill-conditioned, i.e. for df much below 1). ``inf`` (or ``-inf``) if the quantile
        exceeds the largest double, which only happens for tiny ``df`` and extreme ``q``.

    Raises
    ------
    ValueError
        If ``q`` is not strictly between 0 and 1, or ``df`` is not positive (or either is
        NaN).

    Notes
    -----
    Solves in u = log|t| by Newton's method, safeguarded by bisection on a bracket. In the
    tails (q < 1/4 or q > 3/4) the equation is log P(T > |t|) = log min(q, 1 - q); in the
    middle it is log P(0 < T < |t|) = log|q - 1/2|, so that quantiles near the median keep
    full relative precision rather than inheriting the absolute rounding of 1/2 - q.

    Examples
    --------
    >>> round(student_t_ppf(0.975, 10.0), 6)  # for a 95% confidence interval
    2.228139
    >>> student_t_ppf(0.5, 3.0)
    0.0
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be strictly between 0 and 1, got q={q!r}")
    df = _checked_df(df)
    if q == 0.5:
        return 0.0
    sign = 1.0 if q > 0.5 else -1.0
    # Both are exact in floating point for q in (0, 1) (Sterbenz's lemma for the larger one).
    tail = min(q, 1.0 - q)
    center = abs(q - 0.5)
    use_tail = tail < 0.25
    if use_tail:
        log_target = math.log(tail)
        u = _tail_quantile_start(log_target, df)
    else:
        log_target = math.log(center)
        # P(0 < T < t) ~ t * pdf(0) near 0; an underestimate, as the centre mass is concave.
        u = log_target - _log_pdf(0.0, df)
    u = min(u, _LOG_MAX_FLOAT)
    # g(u) = log(tail or centre mass at t = e**u) - log_target is monotone in u: decreasing
    # for the tail, increasing for the centre. Keep a bracket [lo, hi] around the root.
    lo = -math.inf
    hi = _LOG_MAX_FLOAT
    # Until it is evaluated, the top of the bracket (the largest double) is only a guess.
    hi_checked = False
    for _ in range(200):
        t = math.exp(u)
        log_tail, log_center = _log_tail_and_center(t, df)
        log_mass = log_tail if use_tail else log_center
        g = log_mass - log_target
        if g == 0.0:
            return sign * t
        # Positive g means t is still too small for the tail, too large for the centre.
        if (g > 0.0) == use_tail:
            if u >= _LOG_MAX_FLOAT:
                return sign * math.inf
            lo = u
        else:
            hi = u
            hi_checked = True
        # d log(mass) / du = -+ t * pdf(t) / mass.
        slope = math.exp(u + _log_pdf(t, df) - log_mass) if math.isfinite(log_mass) else 0.0
        if use_tail:
            slope = -slope
        step = -g / slope if slope != 0.0 else math.nan
        # Newton's method converges quadratically, so once a step is this small the error
        # left after taking it is far below rounding noise. The step is taken on t rather
        # than on u, whose own ulp would cap t's accuracy at |u| * 2**-52.
        if abs(step) <= _PPF_TOL:
            return sign * t * math.exp(step)
        u_next = u + step
        if not lo < u_next < hi:
            # Newton left the bracket: check its top, bisect it, or widen it downwards.
            if not hi_checked:
                u_next = hi
            elif math.isfinite(lo):
                u_next = 0.5 * (lo + hi)
            else:
                u_next = hi - max(1.0, abs(hi))
        if hi_checked and hi - lo <= _PPF_TOL:
            # Rounding noise in the log probability can keep Newton's steps above the
            # tolerance; the bracket is then what bounds the error.
            return sign * math.exp(u_next)
        u = u_next
    raise ArithmeticError(f"quantile search did not converge for q={q!r}, df={df!r}")
