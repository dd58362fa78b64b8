"""Round-to-nearest-even, toward-zero and format flags of round_to_format.

Every check runs the C++ op (portable and AVX-512 loops), the pure-TF path
and the NumPy reference and requires identical bits (rounding_testing).

Must show 1: the result equals ml_dtypes' conversion bit for bit for every
format ml_dtypes has, on (a) every float32 whose low 16 bits are 0x0000,
0x7FFF, 0x8000, 0x8001 or 0xFFFF, (b) +-1 ulp around every tie point and the
format's max normal, min normal and min subnormal, (c) 10^7 random bit
patterns.
"""

import ml_dtypes
import numpy as np
import pytest

import tf_lowprec as lp
from rounding_testing import (
    as_bits,
    assert_same_values,
    boundary_values,
    float32_from_bits,
    low16_patterns,
    round_everywhere,
    specials,
    tie_points,
    ulp_neighbourhood,
)
from tf_lowprec.numerics import reference

FloatFormat = lp.FloatFormat

# ml_dtypes type -> the FloatFormat with the same numerics.  ml_dtypes' "fn"
# and "fnuz" types turn overflow into NaN; its float6/float4 types have no
# NaN and saturate.
ML_DTYPES_FORMATS = {
    "bfloat16": FloatFormat(8, 7),
    "float16": FloatFormat(5, 10),
    "float8_e4m3fn": FloatFormat(4, 3, infinities=False, nan="all_ones", overflow="nan"),
    "float8_e5m2": FloatFormat(5, 2),
    "float8_e4m3fnuz": FloatFormat(4, 3, 8, infinities=False, nan="negative_zero",
                                   overflow="nan"),
    "float8_e5m2fnuz": FloatFormat(5, 2, 16, infinities=False, nan="negative_zero",
                                   overflow="nan"),
    "float8_e4m3b11fnuz": FloatFormat(4, 3, 11, infinities=False, nan="negative_zero",
                                      overflow="nan"),
    "float8_e3m4": FloatFormat(3, 4),
    "float8_e4m3": FloatFormat(4, 3),
    "float6_e2m3fn": FloatFormat(2, 3, infinities=False, nan="none", overflow="saturate"),
    "float6_e3m2fn": FloatFormat(3, 2, infinities=False, nan="none", overflow="saturate"),
    "float4_e2m1fn": FloatFormat(2, 1, infinities=False, nan="none", overflow="saturate"),
}


def ml_dtype(name):
    return np.float16 if name == "float16" else getattr(ml_dtypes, name)


def ml_dtypes_round(x, name):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, np.float32).astype(ml_dtype(name)).astype(np.float32)


def check_against_ml_dtypes(x, name):
    """All implementations agree with each other and with ml_dtypes on x.

    Divergences from ml_dtypes, by design:
    * NaN inputs: the ops keep NaN in every format (FloatFormat docstring).
      ml_dtypes' float6/float4 types have no NaN and turn it into -0, so NaN
      inputs are compared only for types that have NaN.
    * fnuz types have a single unsigned NaN (ml_dtypes returns it as -NaN):
      only NaN-ness is compared for them; their zeros must be +0 on both sides.
    """
    fmt = ML_DTYPES_FORMATS[name]
    x = np.asarray(x, np.float32)
    ours = round_everywhere(x, fmt)
    if fmt.nan == "none":
        keep = ~np.isnan(x)
        x, ours = x[keep], ours[keep]
    theirs = ml_dtypes_round(x, name)
    assert_same_values(ours, theirs, f"ops vs ml_dtypes.{name}", x,
                       nan_sign=fmt.nan != "negative_zero")


@pytest.mark.parametrize("name", sorted(ML_DTYPES_FORMATS))
def test_ml_dtypes_low16_patterns(name):
    check_against_ml_dtypes(np.concatenate([low16_patterns(), specials()]), name)


@pytest.mark.parametrize("name", sorted(ML_DTYPES_FORMATS))
def test_ml_dtypes_tie_points_and_boundaries(name):
    fmt = ML_DTYPES_FORMATS[name]
    ties = tie_points(fmt)
    # Sanity of the generator: a tie lies half a grid step from both neighbours.
    assert ties.size >= 2 ** fmt.mantissa_bits
    x = np.concatenate([
        ulp_neighbourhood(ties, radius=1),
        ulp_neighbourhood(boundary_values(fmt), radius=2),
    ])
    check_against_ml_dtypes(x, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ML_DTYPES_FORMATS))
def test_ml_dtypes_random_bit_patterns(name):
    rng = np.random.default_rng(20240611)
    total, chunk = 10**7, 2 * 10**6  # chunks keep the float64 reference under ~200 MB
    for _ in range(total // chunk):
        bits = rng.integers(0, 1 << 32, chunk, dtype=np.uint64).astype(np.uint32)
        check_against_ml_dtypes(float32_from_bits(bits), name)


def test_ties_round_to_even_examples():
    # 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: even is 1.
    x = np.float32([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 2.0**-134])
    got = round_everywhere(x, lp.BF16)
    np.testing.assert_array_equal(got, [1.0, 1 + 2**-6, 1 + 2**-7, -1.0, 0.0])
    # E4M3: 464 is halfway between 448 (max) and 480: it saturates.
    np.testing.assert_array_equal(round_everywhere(np.float32([464.0, 465.0]), lp.E4M3),
                                  [448.0, 448.0])


# ----------------------------------------------------------------------------
# Every IEEE-like (exponent_bits, mantissa_bits) pair, and the other flags.


def moderate_inputs():
    """~200k values: three low-16-bit families, specials and a few ties."""
    return np.concatenate([low16_patterns((0x0000, 0x8000, 0xFFFF)), specials()])


@pytest.mark.slow
@pytest.mark.parametrize("exponent_bits", range(1, 9))
def test_every_ieee_like_format(exponent_bits):
    x = moderate_inputs()
    for mantissa_bits in range(0, 24):
        fmt = FloatFormat(exponent_bits, mantissa_bits)
        round_everywhere(x, fmt)


FLAG_SAMPLE = [
    FloatFormat(8, 7, subnormals=False),
    FloatFormat(8, 7, input_denormals="flush"),
    FloatFormat(5, 10, subnormals=False, input_denormals="flush"),
    FloatFormat(5, 10, overflow="saturate"),
    FloatFormat(5, 10, overflow="nan"),
    FloatFormat(5, 2, overflow="saturate", subnormals=False),
    FloatFormat(4, 3, infinities=False, nan="all_ones"),
    FloatFormat(4, 3, infinities=False, nan="all_ones", overflow="nan"),
    FloatFormat(4, 0, infinities=False, nan="all_ones"),  # all_ones with no mantissa
    FloatFormat(4, 3, infinities=False, nan="none"),
    FloatFormat(3, 2, infinities=False, nan="negative_zero", overflow="nan"),
    FloatFormat(4, 3, exponent_bias=11, infinities=False, nan="negative_zero"),
    FloatFormat(3, 4, exponent_bias=1, subnormals=False, overflow="nan"),
    FloatFormat(8, 23, exponent_bias=127),  # float32 itself: identity on non-NaN
    FloatFormat(6, 9, exponent_bias=40),
    FloatFormat(6, 9, exponent_bias=-30),
    FloatFormat(5, 10, exponent_bias=0, infinities=False, nan="none"),
    FloatFormat(1, 5, infinities=False, nan="none", subnormals=False),
    FloatFormat(1, 5),  # only subnormal codes are finite
    FloatFormat(1, 0, subnormals=False),  # no finite non-zero value at all
    FloatFormat(2, 1, exponent_bias=-124, infinities=False, nan="none"),  # up to 2^127
    FloatFormat(2, 22, exponent_bias=127, infinities=False, nan="all_ones"),  # near 2^-126
    lp.E4M3, lp.E5M2, lp.HFP8_FORWARD, lp.E4M3FNUZ, lp.E5M2FNUZ, lp.BF16_INTEL,
]


@pytest.mark.parametrize("fmt", FLAG_SAMPLE, ids=repr)
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero"])
def test_format_flags(fmt, rounding):
    x = np.concatenate([
        moderate_inputs(),
        ulp_neighbourhood(tie_points(fmt, per_binade=64)),
        ulp_neighbourhood(boundary_values(fmt), radius=2),
    ])
    got = round_everywhere(x, fmt, rounding)
    finite_in = np.isfinite(x)
    # Whatever the flags: results are in the format's range, NaN stays NaN.
    assert np.all(np.isnan(got[np.isnan(x)]))
    finite_out = np.isfinite(got)
    assert np.all(np.abs(got[finite_out]) <= fmt.max_value)
    if not fmt.negative_zero:
        assert not np.any(np.signbit(got[got == 0]))
    if rounding == "toward_zero":
        # Never away from zero, and finite inputs stay finite (saturation).
        assert np.all(finite_out[finite_in])
        assert np.all(np.abs(got[finite_in]) <= np.abs(x[finite_in]))


def test_float32_format_is_identity():
    x = moderate_inputs()
    got = round_everywhere(x, lp.FP32)
    numbers = ~np.isnan(x)
    np.testing.assert_array_equal(as_bits(got[numbers]), as_bits(x[numbers]))


def test_flush_flags_examples():
    tiny = np.float32([1e-39, -1e-39, 2.0**-130 * 1.5, 2.0**-126])
    keep = round_everywhere(tiny, lp.BF16)
    # BF16 keeps float32 subnormals, rounded to its subnormal step 2^-133
    # (1e-39 -> 1.0101e-39, like tf.cast).
    step = 2.0**-133
    np.testing.assert_array_equal(keep, (np.round(tiny.astype(np.float64) / step) * step))
    assert keep[0] != 0 and keep[2] == tiny[2]
    flushed = round_everywhere(tiny, lp.BF16_INTEL)
    np.testing.assert_array_equal(as_bits(flushed), as_bits(np.float32([0, -0.0, 0, 2.0**-126])))
    # subnormals=False: round as if subnormals existed, then flush.  Just below
    # FP16's smallest normal 2^-14 rounds up to it; a quarter of it flushes.
    fp16_ftz = FloatFormat(5, 10, subnormals=False)
    x = np.float32([2.0**-14 * (1 - 2**-12), 2.0**-16, -(2.0**-16)])
    got = round_everywhere(x, fp16_ftz)
    np.testing.assert_array_equal(as_bits(got), as_bits(np.float32([2.0**-14, 0.0, -0.0])))


# ----------------------------------------------------------------------------
# toward_zero against the reference, on random data.


@pytest.mark.parametrize("fmt", [lp.BF16, lp.FP16, lp.E4M3, lp.E5M2, lp.HFP8_FORWARD,
                                 lp.E4M3FNUZ, lp.BF16_INTEL], ids=repr)
def test_toward_zero_random(fmt):
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 32, 400_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([float32_from_bits(bits), specials()])
    got = round_everywhere(x, fmt, "toward_zero")
    finite = np.isfinite(x)
    # Truncation: never larger in magnitude; the next grid point is above |x|.
    assert np.all(np.abs(got[finite]) <= np.abs(x[finite]))


def test_toward_zero_examples():
    x = np.float32([1.99, -1.99, 1e6, -np.inf, 2.0**-10 * 1.9])
    got = round_everywhere(x, lp.E4M3, "toward_zero")
    np.testing.assert_array_equal(got, [1.875, -1.875, 448.0, -448.0, 0.0])
    got = round_everywhere(np.float32([7e4, -np.inf, np.inf]), lp.FP16, "toward_zero")
    np.testing.assert_array_equal(got, [65504.0, -np.inf, np.inf])  # Inf input stays Inf


# ----------------------------------------------------------------------------
# BF16_INTEL equals the VCVTNEPS2BF16 pseudocode (docs/papers.md section 0.1).


def vcvtneps2bf16(x):
    """Intel's VCVTNEPS2BF16 on float32 input, widened back to float32."""
    u = as_bits(x).astype(np.uint64)
    exponent = (u >> 23) & 0xFF
    mantissa = u & 0x7FFFFF
    zero_or_denormal = exponent == 0
    is_inf = (exponent == 0xFF) & (mantissa == 0)
    is_nan = (exponent == 0xFF) & (mantissa != 0)
    lsb = (u >> 16) & 1
    rounded = ((u + 0x7FFF + lsb) >> 16) & 0xFFFF
    out = np.where(zero_or_denormal, (u & 0x80000000) >> 16, rounded)
    out = np.where(is_inf, u >> 16, out)
    out = np.where(is_nan, (u >> 16) | 0x0040, out)
    return float32_from_bits((out << 16).astype(np.uint32))


def test_bf16_intel_matches_vcvtneps2bf16():
    rng = np.random.default_rng(11)
    random_bits = rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([low16_patterns(), specials(), float32_from_bits(random_bits)])
    ours = round_everywhere(x, lp.BF16_INTEL)
    # The instruction keeps NaN payloads; the ops return the quiet NaN with the
    # input's sign.  NaN-ness and sign must agree, every other value exactly.
    assert_same_values(ours, vcvtneps2bf16(x), "BF16_INTEL vs VCVTNEPS2BF16", x)
    assert np.all(as_bits(ours[np.isnan(ours)]) & 0x7FFFFFFF == 0x7FC00000)


def test_bf16_keep_differs_from_intel_only_on_float32_subnormals():
    x = np.concatenate([low16_patterns(), specials()])
    keep = round_everywhere(x, lp.BF16)
    intel = reference.round_to_format(x, lp.BF16_INTEL)
    differs = as_bits(keep) != as_bits(intel)
    subnormal = (np.abs(x) < 2.0**-126) & (x != 0)
    assert differs.any()
    assert np.all(subnormal[differs])
