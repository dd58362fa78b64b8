"""Exact-arithmetic reference of `tf_lowprec.matmul` (low-precision accumulation).

Written from the definition (docs/accumulation.md), with none of the
kernels' devices (no TwoSum, no round-to-odd, no float32 fast path): every
product and sum is a `fractions.Fraction`, and each sum is rounded to the
format directly from `FloatFormat`'s fields:

* grid step 2^k at x with k = max(floor(log2 |x|), min_exponent) - mantissa_bits;
* nearest_even: the nearer multiple, ties to the even multiple; toward_zero:
  truncate; stochastic: F = floor(frac * 2^32) of the fractional part frac
  of |x| / 2^k, rounded up iff F + U >= 2^32 with U the step's random word
  (16 random bits, `tf_lowprec.numerics.reference.random_words`);
* without subnormals, results below the smallest normal become zero; beyond
  the largest finite value, the format's overflow mode (toward_zero
  saturates); inputs below 2^-126 count as zero where the format flushes
  input denormals;
* a zero sum is -0 only when both terms are -0 (IEEE addition), and only in
  formats with -0; NaN results are the quiet NaN 0x7FC00000; Inf follows
  IEEE addition and then the format's rules for an infinite input.

Slow (Python loops over every step): for tests on small shapes.

>>> import numpy as np, tf_lowprec as lp
>>> from tf_lowprec.gemm import accumulation_reference
>>> ones = np.ones((1, 1, 8), np.float32)
>>> accumulation_reference.matmul(ones, ones, lp.FloatFormat(5, 2), transpose_b=True)
array([[[8.]]], dtype=float32)
"""

import fractions
import math

import numpy as np

from tf_lowprec.numerics import reference as numerics_reference

_NAN = np.uint32(0x7FC00000).view(np.float32)
_MIN_FLOAT32_NORMAL = fractions.Fraction(2) ** -126


def _floor_log2(x):
    """floor(log2 x) of a positive Fraction, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if fractions.Fraction(2) ** e > x:
        e -= 1
    return e


def round_exact(x, negative, fmt, rounding, word=0):
    """The float value of `fmt` that `rounding` gives for the exact value x.

    x: a non-negative Fraction (the magnitude) and `negative` its sign (also
    for zero); or a float NaN / Inf (its own sign).  Returns a Python float
    (exact).
    """
    if isinstance(x, float):
        if math.isnan(x):
            return float("nan")
        if fmt.infinities:
            value = math.inf
        elif fmt.overflow == "nan":
            return float("nan")
        else:
            value = fmt.max_value
        return -value if x < 0 else value
    if fmt.input_denormals == "flush" and x < _MIN_FLOAT32_NORMAL:
        x = fractions.Fraction(0)
    if x == 0:
        result = fractions.Fraction(0)
    else:
        k = max(_floor_log2(x), fmt.min_exponent) - fmt.mantissa_bits
        scaled = x / fractions.Fraction(2) ** k
        kept = scaled.numerator // scaled.denominator
        frac = scaled - kept
        if rounding == "nearest_even":
            up = frac > fractions.Fraction(1, 2) or (frac == fractions.Fraction(1, 2)
                                                      and kept % 2 == 1)
        elif rounding == "stochastic":
            f32 = (frac * 2**32).numerator // (frac * 2**32).denominator
            up = f32 + int(word) >= 2**32
        else:
            up = False
        result = (kept + up) * fractions.Fraction(2) ** k
        if not fmt.subnormals and result < fractions.Fraction(fmt.min_normal):
            result = fractions.Fraction(0)
        if result > fractions.Fraction(fmt.max_value):
            if rounding == "toward_zero" or fmt.overflow == "saturate":
                result = fractions.Fraction(fmt.max_value)
            elif fmt.overflow == "infinity":
                return -math.inf if negative else math.inf
            else:
                return float("nan")
    value = float(result)
    if value == 0 and not fmt.negative_zero:
        return 0.0
    return -value if negative else value


def add_exact(acc, term, fmt, rounding, word=0):
    """fmt(acc + term): acc a float (a value of fmt), term a (magnitude, negative) pair.

    The magnitude is a Fraction for a finite term, else a float (Inf, NaN;
    `negative` is then ignored).
    """
    value, negative = term
    if isinstance(value, float) or not math.isfinite(acc):
        term_float = value if isinstance(value, float) else (
            -float(value) if negative else float(value))
        return round_exact(acc + term_float, None, fmt, rounding, word)
    exact = fractions.Fraction(acc) + (-value if negative else value)
    if exact == 0:
        both_negative_zero = (acc == 0 and math.copysign(1.0, acc) < 0 and value == 0
                              and negative)
        return round_exact(exact, both_negative_zero, fmt, rounding, word)
    return round_exact(abs(exact), exact < 0, fmt, rounding, word)


def _product(x, y):
    """The exact product of float32 x and y: (Fraction magnitude, negative) or a float."""
    x, y = float(x), float(y)
    if not (math.isfinite(x) and math.isfinite(y)):
        return x * y, False  # Inf * 0 is NaN, as in IEEE
    negative = (math.copysign(1.0, x) < 0) != (math.copysign(1.0, y) < 0)
    return abs(fractions.Fraction(x) * fractions.Fraction(y)), negative


def matmul(a, b, fmt, chunk_size=None, rounding="nearest_even", seed=None,
           transpose_a=False, transpose_b=False):
    """Reference of `lp.matmul(a, b, accumulator=fmt, ...)` on rank-3 float32 arrays.

    a: [batch or 1, m, k] (or [.., k, m] with transpose_a); b: [batch or 1,
    k, n] (or [.., n, k]).  `seed` (a pair of ints) keys stochastic rounding:
    element e's step t takes word e * S + t of `random_words` with 16 bits.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if transpose_a:
        a = np.swapaxes(a, 1, 2)
    if transpose_b:
        b = np.swapaxes(b, 1, 2)
    batch = max(a.shape[0], b.shape[0])
    m, k_total, n = a.shape[1], a.shape[2], b.shape[2]
    chunk = k_total if not chunk_size or chunk_size >= k_total else chunk_size
    chunks = -(-k_total // chunk) if k_total else 0
    steps = k_total + chunks - 1 if k_total else 0
    words = None
    if rounding == "stochastic":
        words = numerics_reference.random_words([batch * m * n * steps], seed, 16)
    out = np.zeros((batch, m, n), np.float32)
    for bi in range(batch):
        a_mat = a[bi if a.shape[0] > 1 else 0]
        b_mat = b[bi if b.shape[0] > 1 else 0]
        for i in range(m):
            for j in range(n):
                first = ((bi * m + i) * n + j) * steps

                def word(t):
                    return 0 if words is None else int(words[first + t])

                total = 0.0
                for c in range(chunks):
                    acc = 0.0
                    for kk in range(c * chunk, min(k_total, (c + 1) * chunk)):
                        acc = add_exact(acc, _product(a_mat[i, kk], b_mat[kk, j]), fmt,
                                        rounding, word(kk))
                    if c == 0:
                        total = acc
                    else:
                        term = ((abs(fractions.Fraction(acc)), math.copysign(1.0, acc) < 0)
                                if math.isfinite(acc) else (acc, False))
                        total = add_exact(total, term, fmt, rounding, word(k_total + c - 1))
                out[bi, i, j] = _NAN if math.isnan(total) else total
    return out
