"""Dynamic fixed point (quantize_dfp): shared exponents, blocks, no overflow.

Must show 3: the op (both ISAs) and the pure-TF path equal the NumPy
reference exactly (values and shared exponents) for per-tensor and blocked
exponents along every kind of axis, in all three rounding modes; and no
mantissa ever exceeds 2^(bits-1) - 1, also on adversarial inputs.
"""

import numpy as np
import pytest

import tf_lowprec as lp
from rounding_testing import as_bits, float32_from_bits, quantize_dfp_everywhere
from tf_lowprec.numerics import reference

DfpFormat = lp.DfpFormat
ROUNDINGS = ["nearest_even", "stochastic", "toward_zero"]


def wide_range_data(shape, seed=0):
    """Random values over ~2^-40 .. 2^40, both signs, some exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.uniform(-40, 40, shape))
    x[rng.random(shape) < 0.05] = 0.0
    return x.astype(np.float32)


def block_exponents_per_element(exponents, fmt, shape):
    """Expands shared exponents to x's shape (the element -> block map)."""
    if fmt.block_size is None:
        return np.broadcast_to(exponents.reshape((1,) * len(shape)), shape)
    axis = fmt.axis % len(shape)
    expanded = np.repeat(exponents, fmt.block_size, axis=axis)
    return np.take(expanded, np.arange(shape[axis]), axis=axis)


def assert_mantissas_fit(x, y, exponents, fmt):
    """y = I * 2^E with integer |I| <= 2^(bits-1) - 1 for every finite element.

    Also checks that each block's exponent is as fine as the definition
    allows: its largest magnitude M satisfies 2^(bits-3-extra_shift) <=
    M / 2^E < 2^(bits-1-extra_shift), and M / 2^E <= 2^(bits-1) - 1 when
    extra_shift is 0 (so that rounding cannot carry past the limit).
    """
    e = block_exponents_per_element(exponents, fmt, x.shape).astype(np.int64)
    scaled = np.isfinite(x) & (e != reference.DFP_NO_SCALE)
    assert np.all(np.isfinite(y[scaled])), "a finite input became non-finite"
    mantissas = np.ldexp(y[scaled].astype(np.float64), -e[scaled])
    np.testing.assert_array_equal(mantissas, np.round(mantissas), err_msg=f"{fmt!r}: not integers")
    assert np.all(np.abs(mantissas) <= fmt.max_mantissa), (
        f"{fmt!r}: mantissa {np.abs(mantissas).max()} exceeds {fmt.max_mantissa}"
    )
    # Block maxima, grouped by block index.
    block_ids = block_exponents_per_element(
        np.arange(exponents.size).reshape(exponents.shape), fmt, x.shape)
    magnitude = np.where(np.isfinite(x), np.abs(x.astype(np.float64)), 0.0)
    maxima = np.zeros(exponents.size)
    np.maximum.at(maxima, block_ids.reshape(-1), magnitude.reshape(-1))
    has_values = maxima > 0
    assert np.all((exponents.reshape(-1) == reference.DFP_NO_SCALE) == ~has_values)
    ratio = np.ldexp(maxima[has_values], -exponents.reshape(-1)[has_values].astype(np.int64))
    assert np.all(ratio >= 2.0 ** (fmt.bits - 3 - fmt.extra_shift)), f"{fmt!r}: E too coarse"
    assert np.all(ratio < 2.0 ** (fmt.bits - 1 - fmt.extra_shift)), f"{fmt!r}: E too fine"
    if fmt.extra_shift == 0:
        assert np.all(ratio <= fmt.max_mantissa), f"{fmt!r}: rounding could carry"


# ----------------------------------------------------------------------------
# Agreement with the reference: per-tensor and blocked along every axis.

SHAPE = (7, 11, 37)
BLOCKED = [
    DfpFormat(16),
    DfpFormat(8),
    *[DfpFormat(16, block_size=bs, axis=axis) for axis in (0, 1, -1) for bs in (1, 3, 32, 64)],
    DfpFormat(12, block_size=5, axis=-2, extra_shift=3),
]


@pytest.mark.parametrize("fmt", BLOCKED, ids=repr)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_matches_reference(fmt, rounding):
    x = wide_range_data(SHAPE, seed=1)
    y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=(11, 12))
    if fmt.block_size is None:
        assert e.shape == (1, 1, 1)
    else:
        axis = fmt.axis % 3
        expected = list(SHAPE)
        expected[axis] = -(-SHAPE[axis] // fmt.block_size)
        assert e.shape == tuple(expected)
    assert_mantissas_fit(x, y, e, fmt)


@pytest.mark.parametrize("fmt", [DfpFormat(16), DfpFormat(16, block_size=32, axis=0),
                                 DfpFormat(16, block_size=32, axis=-1),
                                 DfpFormat(8, block_size=7, axis=1)], ids=repr)
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
def test_matches_reference_on_large_tensors(fmt, rounding):
    # Large enough for the kernels to shard over threads; the block maxima
    # sit in different shards.
    x = wide_range_data((300, 1001), seed=2)
    x[299, 1000] = 3e9  # the per-tensor maximum is the very last element
    y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=(5, 6))
    assert_mantissas_fit(x, y, e, fmt)


def test_shared_exponent_examples():
    # max|x| = 3: E = 1 - 14 = -13; 1e-5 is below half a step and becomes 0.
    y, e = quantize_dfp_everywhere(np.float32([3.0, 1e-5, -1e-5]), lp.DFP16)
    assert e.tolist() == [-13]
    np.testing.assert_array_equal(as_bits(y), as_bits(np.float32([3.0, 0.0, -0.0])))
    # max|x| = 32767 * 2^-3 is exactly representable: E = 11 - 14 = -3, kept.
    y, e = quantize_dfp_everywhere(np.float32([32767 / 8, 1 / 8]), lp.DFP16)
    assert e.tolist() == [-3]
    np.testing.assert_array_equal(y, [32767 / 8, 1 / 8])
    # The next float32 above it could round to 32768 * 2^-3: E is raised.
    above = np.nextafter(np.float32(32767 / 8), np.float32(np.inf))
    y, e = quantize_dfp_everywhere(np.float32([above, 1 / 8]), lp.DFP16)
    assert e.tolist() == [-2]
    np.testing.assert_array_equal(y, [4096.0, 0.0])  # 1/8 = half a step of 1/4: even 0


# ----------------------------------------------------------------------------
# No mantissa overflow on adversarial inputs.


def adversarial_blocks(bits):
    """Rows of 8 values, one row per adversarial case (blocks along axis -1)."""
    big = 2 ** (bits - 1)
    rows = {
        "powers_of_two": [2.0**j for j in (-3, 0, 1, 5, 7, 8, 10, 4)],
        "negative_power_of_two_max": [-(2.0**20), 2.0**19, 3.0, 1.0, -1.0, 0.5, 0.25, 0.0],
        # The first element is the block maximum in these three rows.
        "max_exactly_representable": [(big - 1) * 2.0**-7, -(2.0**-7), 2.0**-9 * 1.75,
                                      2.0**-14, 0, 0, 0, 0],
        "rounding_carry": [(big - 0.5) * 2.0**-7, -(big - 1.5) * 2.0**-7, 2.0**-9 * 1.5,
                           -(2.0**-8), 0, 0, 0, 0],
        "just_above_representable": [(big - 1) * 2.0**-7 + 2.0**-30, 2.0**-8 * 1.5,
                                     0, 0, 0, 0, 0, 0],
        "all_zeros": [0.0, -0.0, 0.0, 0.0, -0.0, 0.0, 0.0, 0.0],
        # (Maxima closer to float32's largest value can round to 2^128 for few
        # bits: test_float32_overflow_of_the_rounded_maximum.)
        "huge_outlier": [1e38, 1.0, -1e-3, 7.0, -2e30, 1e37, 0.0, 5e-40],
        "float32_subnormals": [1e-45, -3e-45, 1e-40, -5.9e-39, 1.1e-38, 0.0, -0.0, 2e-44],
        "mixed_signs": [-7.25, 7.25, -0.001, 1000.0, -999.5, 3.0, -3.0, 0.5],
        "near_float32_max": [1.7e38, -1.6e38, 2.0**127, 1.0, 0, 0, 0, 0],
    }
    names = list(rows)
    x = np.array([rows[n] for n in names], np.float64).astype(np.float32)
    return names, x


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 12, 16, 24])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_no_mantissa_overflow_on_adversarial_inputs(bits, rounding):
    names, x = adversarial_blocks(bits)
    fmt = DfpFormat(bits, block_size=8, axis=-1)
    # Several seeds: stochastic rounding may round any element up.
    for seed in ([(0, 1), (2, 3), (4, 5)] if rounding == "stochastic" else [(0, 0)]):
        y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=seed)
        assert_mantissas_fit(x, y, e, fmt)
    zeros = names.index("all_zeros")
    assert e[zeros, 0] == reference.DFP_NO_SCALE
    np.testing.assert_array_equal(as_bits(y[zeros]), as_bits(x[zeros]))  # signs kept
    # E = floor(log2 max) - (bits - 2): -7 for the exactly representable
    # maximum; the rounding-carry row needs the extra step.
    assert e[names.index("max_exactly_representable"), 0] == -7
    assert e[names.index("rounding_carry"), 0] == -7 + 1


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_repeated_maxima_and_per_tensor_adversarial(rounding):
    for bits in (2, 4, 16):
        big = 2 ** (bits - 1)
        x = np.float32([(big - 0.5) * 2.0**-7] * 64 + [-(big - 0.5) * 2.0**-7] * 64)
        y, e = quantize_dfp_everywhere(x, DfpFormat(bits), rounding, seed=(8, 9))
        assert_mantissas_fit(x, y, e, DfpFormat(bits))


FLT_MAX = np.finfo(np.float32).max  # (2^24 - 1) * 2^104


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_rounding_saturates_below_float32_overflow(rounding):
    """A finite input never becomes Inf: I * 2^E past FLT_MAX saturates.

    FLT_MAX = (2 - 2^-23) * 2^127 has E = 114 in DFP16 and rounds (nearest
    even) to 2^14 * 2^114 = 2^128: the mantissa 16384 fits in 16 bits, the
    float32 does not.  The result is the largest value of the block's grid
    that is at most FLT_MAX, 16383 * 2^114, with the input's sign, on every
    tier, the pure-TF twin and the NumPy reference (quantize_dfp_everywhere);
    also inside vectors of 8 and 16 lanes and per block.
    """
    saturated = np.float32(16383 * 2.0**114)
    x = np.float32([FLT_MAX, 1.0, -FLT_MAX, np.nextafter(FLT_MAX, 0, dtype=np.float32)] * 9)
    seeds = [(0, 1), (2, 3), (4, 5)] if rounding == "stochastic" else [(0, 0)]
    for seed in seeds:
        y, e = quantize_dfp_everywhere(x, lp.DFP16, rounding, seed=seed)
        assert e.tolist() == [114]
        assert np.all(np.isfinite(y))
        assert np.all(np.abs(y[0::4]) == saturated) and np.all(y[2::4] < 0)
        y, e = quantize_dfp_everywhere(x.reshape(4, 9), DfpFormat(16, block_size=2, axis=0),
                                       rounding, seed=seed)
        assert np.all(np.isfinite(y)) and np.abs(y).max() == saturated
    # DFP24: E = 106, the largest grid value (2^22 - 1) * 2^106.
    y, e = quantize_dfp_everywhere(np.float32([FLT_MAX, 3.0]), DfpFormat(24), rounding)
    assert e.tolist() == [106] and y[0] == np.float32((2**22 - 1) * 2.0**106)
    # bits=2 puts the exponent at 2^128 for any maximum above 1.5 * 2^127:
    # the grid {0, ±2^128} has no nonzero float32, so the values saturate to 0.
    y, e = quantize_dfp_everywhere(np.float32([2.0**127 * 1.75, -(2.0**127)]), DfpFormat(2),
                                   rounding)
    assert e.tolist() == [128] and as_bits(y).tolist() == [0, 0x80000000]


# ----------------------------------------------------------------------------
# NaN and Inf: passed through, not part of the exponent.


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_nan_and_inf_pass_through(rounding):
    specials = float32_from_bits(np.array([0x7FC00000, 0xFF800001, 0x7F800000, 0xFF800000],
                                          np.uint32))
    x = np.concatenate([specials, np.float32([3.0, -1.3, 0.0, -0.0])]).reshape(2, 4)
    fmt = DfpFormat(8, block_size=4, axis=-1)
    y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=(1, 1))
    # First block: only NaN/Inf, nothing to scale; NaNs come out quiet with
    # their sign, infinities unchanged.
    assert e[0, 0] == reference.DFP_NO_SCALE
    np.testing.assert_array_equal(
        as_bits(y[0]), np.array([0x7FC00000, 0xFFC00000, 0x7F800000, 0xFF800000], np.uint32)
    )
    # Per tensor: the exponent comes from 3.0 alone.
    y, e = quantize_dfp_everywhere(x, DfpFormat(8), rounding, seed=(1, 1))
    assert e.reshape(-1).tolist() == [1 - 6]
    assert np.isnan(y[0, 0]) and np.isnan(y[0, 1]) and np.signbit(y[0, 1])
    assert y[0, 2] == np.inf and y[0, 3] == -np.inf
    assert as_bits(y[1, 3]) == as_bits(np.float32(-0.0))


# ----------------------------------------------------------------------------
# extra_shift and every bit width.


@pytest.mark.parametrize("extra_shift", [0, 1, 2, 5, 14])
def test_extra_shift(extra_shift):
    fmt = DfpFormat(16, block_size=16, axis=0, extra_shift=extra_shift)
    x = wide_range_data((64, 9), seed=3)
    x[:16, 0] = np.float32((2**15 - 0.5) * 2.0**-4)  # a carry case in one block
    for rounding in ROUNDINGS:
        y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=(3, 4))
        assert_mantissas_fit(x, y, e, fmt)
    no_shift = reference.quantize_dfp(x, DfpFormat(16, block_size=16, axis=0))[1]
    if extra_shift:
        # E = floor(log2 max) - 14 + extra_shift: no carry step (there is headroom).
        carry_block = e[0, 0]
        assert carry_block == -4 + extra_shift
        plain = e != reference.DFP_NO_SCALE
        assert np.all(e[plain] >= no_shift[plain] + extra_shift - 1)
        assert np.all(e[plain] <= no_shift[plain] + extra_shift)
        # The largest mantissa has at most 16 - 1 - extra_shift bits.
        y, e = reference.quantize_dfp(x, fmt)
        i = np.ldexp(y.astype(np.float64), -np.repeat(e, 16, axis=0).astype(np.int64))
        assert np.abs(i).max() <= 2.0 ** (15 - extra_shift)
    else:
        np.testing.assert_array_equal(e, no_shift)


@pytest.mark.parametrize("bits", range(2, 25))
def test_every_bit_width(bits):
    x = np.concatenate([wide_range_data((400,), seed=bits),
                        adversarial_blocks(bits)[1].reshape(-1)])
    for fmt in (DfpFormat(bits), DfpFormat(bits, block_size=8, axis=0)):
        for rounding in ROUNDINGS:
            y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=(bits, 1))
            assert_mantissas_fit(x, y, e, fmt)


def test_stochastic_leaves_grid_values_alone():
    # Values already on the grid never move, whatever the random words.
    x = np.float32(np.arange(-64, 64) * 2.0**-3)
    for seed in [(1, 2), (3, 4)]:
        y, e = quantize_dfp_everywhere(x, DfpFormat(8), "stochastic", seed=seed)
        assert e.tolist() == [-3]  # max |x| = 8 = 2^3: E = 3 - 6, and 8 <= 127 * 2^-3
        np.testing.assert_array_equal(as_bits(y), as_bits(x))
