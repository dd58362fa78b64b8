"""Helpers of the numerics tests: run every implementation, compare bits.

Every rounding result is checked on three implementations at once: the C++
op (both instruction sets of its loops), the pure-TF path and the NumPy
reference (`tf_lowprec.numerics.reference`, written from the definitions in value
arithmetic, not from the kernels' bit tricks).
"""


import numpy as np
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.numerics import reference

# (implementation, isa) pairs of the TF-side implementations.
TF_SIDE = (("op", "portable"), ("op", "avx2"), ("op", "avx512"), ("tf", "auto"))


def tf_side():
    """The (implementation, isa) pairs that can run here: every tier of the
    rounding loops this CPU runs (tests/test_kernel_tiers.py checks which)."""
    tiers = lp.kernel_tiers()["rounding"]["available"]
    return [p for p in TF_SIDE if p[0] == "tf" or p[1] in tiers]


def label(implementation, isa):
    return implementation if implementation == "tf" else f"{implementation}/{isa}"


def as_bits(values):
    """uint32 view of float32 values (a copy, contiguous)."""
    return np.ascontiguousarray(np.asarray(values, np.float32)).view(np.uint32)


def float32_from_bits(bits):
    return np.ascontiguousarray(np.asarray(bits, np.uint32)).view(np.float32)


def assert_same_bits(actual, expected, what, inputs=None, limit=5):
    """Asserts bit-identical float32 arrays; shows the first mismatches."""
    a, e = as_bits(actual), as_bits(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    bad = np.flatnonzero(a.reshape(-1) != e.reshape(-1))
    if bad.size:
        rows = []
        for i in bad[:limit]:
            source = ""
            if inputs is not None:
                x = np.asarray(inputs, np.float32).reshape(-1)[i]
                source = f"x={x!r} (0x{as_bits(x).item():08X}) -> "
            rows.append(
                f"  [{i}] {source}got 0x{a.reshape(-1)[i]:08X}, want 0x{e.reshape(-1)[i]:08X}"
            )
        raise AssertionError(f"{what}: {bad.size} of {a.size} differ\n" + "\n".join(rows))


def assert_same_values(actual, expected, what, inputs=None, nan_sign=True, limit=5):
    """Bit equality except that NaNs only need to agree in NaN-ness (and sign)."""
    a = np.asarray(actual, np.float32).reshape(-1)
    e = np.asarray(expected, np.float32).reshape(-1)
    a_nan, e_nan = np.isnan(a), np.isnan(e)
    bad = (a_nan != e_nan) | (~a_nan & (as_bits(a) != as_bits(e)))
    if nan_sign:
        bad |= a_nan & e_nan & (np.signbit(a) != np.signbit(e))
    index = np.flatnonzero(bad)
    if index.size:
        x = None if inputs is None else np.asarray(inputs, np.float32).reshape(-1)
        rows = [
            f"  [{i}] "
            + ("" if x is None else f"x={x[i]!r} (0x{as_bits(x[i]).item():08X}) -> ")
            + f"got {a[i]!r}, want {e[i]!r}"
            for i in index[:limit]
        ]
        raise AssertionError(f"{what}: {index.size} of {a.size} differ\n" + "\n".join(rows))


def seed_words(shape, rounding, seed, random_bits):
    """The per-element random words the ops draw (stochastic rounding only)."""
    return reference.random_words(shape, seed, random_bits) if rounding == "stochastic" else None


def round_everywhere(x, fmt, rounding="nearest_even", seed=(0, 0), random_bits=16):
    """round_to_format on every implementation; asserts they agree bit for bit.

    Returns the reference result.
    """
    x = np.asarray(x, np.float32)
    expected = reference.round_to_format(
        x, fmt, rounding, seed_words(x.shape, rounding, seed, random_bits), random_bits
    )
    for implementation, isa in tf_side():
        got = lp.round_to_format(
            x, fmt, rounding, seed=seed, random_bits=random_bits,
            implementation=implementation, isa=isa,
        )
        assert_same_bits(got.numpy(), expected,
                         f"{label(implementation, isa)} vs reference, {fmt!r} {rounding}", x)
    return expected


def quantize_dfp_everywhere(x, fmt, rounding="nearest_even", seed=(0, 0), random_bits=16):
    """quantize_dfp on every implementation; asserts values and exponents agree.

    Returns the reference (values, exponents).
    """
    x = np.asarray(x, np.float32)
    expected, exponents = reference.quantize_dfp(
        x, fmt, rounding, seed_words(x.shape, rounding, seed, random_bits), random_bits
    )
    for implementation, isa in tf_side():
        got, got_exponents = lp.quantize_dfp(
            x, fmt, rounding, seed=seed, random_bits=random_bits, return_exponents=True,
            implementation=implementation, isa=isa,
        )
        what = f"{label(implementation, isa)} vs reference, {fmt!r} {rounding}"
        assert got_exponents.dtype == tf.int32
        np.testing.assert_array_equal(got_exponents.numpy(), exponents, err_msg=what)
        assert_same_bits(got.numpy(), expected, what, x)
    return expected, exponents


def low16_patterns(lows=(0x0000, 0x7FFF, 0x8000, 0x8001, 0xFFFF)):
    """float32 values whose bit patterns have the given low 16 bits (65536 each)."""
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    return float32_from_bits(np.concatenate([high | np.uint32(low) for low in lows]))


def specials():
    """Zeros, infinities, NaNs (quiet, signalling, with payloads), float32 extremes."""
    bits = np.array(
        [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
         0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00001,
         0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00800000, 0x80800000,
         0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000, 0xBF800000],
        np.uint32,
    )
    return float32_from_bits(bits)


def ulp_neighbourhood(values, radius=1):
    """float32 values within `radius` ulps of each (finite) value, both signs."""
    bits = as_bits(np.abs(np.asarray(values, np.float32))).astype(np.int64)
    offsets = np.arange(-radius, radius + 1, dtype=np.int64)
    around = (bits[:, None] + offsets[None, :]).reshape(-1)
    around = around[(around >= 0) & (around < 0x7F800000)].astype(np.uint32)
    return np.concatenate([float32_from_bits(around), -float32_from_bits(around)])


def tie_points(fmt, per_binade=None):
    """Midpoints between consecutive finite values of `fmt` (positive).

    All of them by default; with `per_binade`, that many evenly spread ones
    per binade (for wide mantissas).  Includes the midpoint between the
    largest finite value and the next grid point above it, where overflow
    begins.  Computed in float64 from the format's definition, then kept
    where exact in float32.
    """
    m = fmt.mantissa_bits
    j = np.arange(2**m, dtype=np.float64)
    if per_binade is not None and j.size > per_binade:
        j = np.unique(np.linspace(0, 2**m - 1, per_binade).round())
    points = [np.ldexp(j + 0.5, fmt.min_exponent - m)]  # subnormal range
    top = int(np.floor(np.log2(fmt.max_value))) if fmt.max_value > 0 else fmt.min_exponent
    for e in range(fmt.min_exponent, top + 1):
        points.append(np.ldexp(2**m + j + 0.5, e - m))
    points = np.concatenate(points)
    points = points[points <= fmt.max_value + 2.0 ** (top - m)]
    with np.errstate(over="ignore"):
        as32 = points.astype(np.float32)
    return as32[(as32.astype(np.float64) == points) & np.isfinite(as32)]


def boundary_values(fmt):
    """max normal, min normal, min subnormal of `fmt` as float32."""
    return np.array([fmt.max_value, fmt.min_normal, fmt.min_subnormal], np.float32)
