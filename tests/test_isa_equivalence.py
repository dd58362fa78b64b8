"""The AVX2 and AVX-512 loops of the rounding ops give the same bits as the portable ones.

The portable loops compile rounding.h's per-element functions as written;
the AVX2 and AVX-512 loops are hand-written intrinsics (rounding_avx2.h,
rounding_avx512.h, philox_*.h) with shortcuts for common lanes.  Every tier
this CPU runs is compared with the portable loops (a tier it cannot run is
reported as a skip, with the reason).  They run on the same
inputs here: a million random bit patterns (every exponent, sign and
mantissa pattern, NaN payloads, subnormals) plus the special values and
rounding boundaries of each format, and every one of the 65,536 upper halves
of a float32 (every sign, exponent and top 7 mantissa bits: each bf16 value,
each binade of every format) with several lower halves, for several formats
and every rounding mode, and for dynamic fixed point with one exponent per
tensor and per block.  Lengths and offsets are chosen so that vector tails
(of 8 and 16 lanes) and stochastic words that do not start on a Philox block
are exercised too.
"""

import numpy as np
import pytest
import tensorflow as tf

import kernel_tiers
import tf_lowprec as lp

_ROUNDINGS = ("nearest_even", "stochastic", "toward_zero")
_RANDOM_PATTERNS = 1_000_003  # not a multiple of 16: the vector tail runs too

_FORMATS = {
    "bf16": lp.BF16,
    "fp16": lp.FP16,
    "e4m3": lp.E4M3,
    "e5m2": lp.E5M2,
    "e4m3fnuz": lp.E4M3FNUZ,
    "bf16_intel": lp.BF16_INTEL,  # no subnormals, flushes input denormals
    "e3m0_nan_overflow": lp.FloatFormat(3, 0, overflow="nan", name="e3m0"),
    "e8m22": lp.FloatFormat(8, 22, name="e8m22"),
    # Tiny magnitudes (below the subnormal step) that are normal float32,
    # with nearest-even by the integer form (the float form would overflow).
    "e7m2_bias0": lp.FloatFormat(7, 2, exponent_bias=0, name="e7m2_bias0"),
    # Tiny results flushed (no subnormals) and input denormals flushed.
    "e4m3_flush": lp.FloatFormat(4, 3, subnormals=False, input_denormals="flush",
                                 name="e4m3_flush"),
    "fp32": lp.FP32,  # mantissa_bits 23: nothing is rounded but specials
}


@pytest.fixture(params=kernel_tiers.params("rounding", kernel_tiers.ACCELERATED))
def tier(request):
    """An accelerated tier of the rounding loops, compared with "portable"."""
    return request.param


def _special_bits():
    """Signed zeros, Inf, NaNs, float32 extremes and powers of two with neighbours."""
    base = [0x00000000, 0x00000001, 0x00000002, 0x007FFFFF, 0x00800000, 0x00800001,
            0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x3F800000]
    powers = [(e + 127) << 23 for e in range(-126, 128)]
    neighbours = [p + d for p in powers for d in (-1, 1, 0x7FFF, 0x8000, 0x8001, 0x100000)]
    magnitudes = np.array(base + powers + neighbours, np.int64) & 0x7FFFFFFF
    return np.concatenate([magnitudes, magnitudes | 0x80000000]).astype(np.uint32)


@pytest.fixture(scope="module")
def patterns():
    rng = np.random.default_rng(20261123)
    random = rng.integers(0, 1 << 32, _RANDOM_PATTERNS, dtype=np.uint64).astype(np.uint32)
    # Normal-looking data too, so the loops' common-case shortcuts see whole
    # vectors of ordinary values, mixed with the occasional small one.
    gaussian = rng.standard_normal(65_536).astype(np.float32).view(np.uint32)
    # Whole vectors at other scales: FP8 subnormals, values below FP8's
    # subnormal step, float32 denormals (small data, gradients); and values
    # near 2^111 and float32's largest, where the float-addition forms'
    # sums approach float32's range.
    scaled = [(rng.standard_normal(16_384) * scale).astype(np.float32).view(np.uint32)
              for scale in (1e-3, 1e-6, 1e-39, 2e33, 5e37)]
    # Whole vectors of the 16 largest significands of each binade: rounding
    # carries into the next binade, and near float32's top, out of its range.
    binade_tops = ((np.arange(1, 254, dtype=np.uint32)[:, None] << 23)
                   | (0x7FFFFF - np.arange(16, dtype=np.uint32))).ravel()
    bits = np.concatenate([_special_bits(), random, gaussian, *scaled, binade_tops])
    return tf.constant(bits.view(np.float32))


# Lower halves combined with every upper half: zero, the smallest and the
# largest, the half-way point and its neighbours (ties and near-ties of
# every format that drops 16 bits), all ones; plus a random one per upper
# half.
_LOWER_HALVES = (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF)


@pytest.fixture(scope="module")
def every_upper_half():
    """All 65,536 upper halves, each with the lower halves above and a random one."""
    upper = np.arange(1 << 16, dtype=np.uint32) << 16
    random_lower = np.random.default_rng(65536).integers(0, 1 << 16, 1 << 16).astype(np.uint32)
    lower = np.concatenate(
        [np.broadcast_to(np.array(_LOWER_HALVES, np.uint32), (1 << 16, len(_LOWER_HALVES))),
         random_lower[:, None]], axis=1)
    # Upper-major, 7 lower halves per upper: vectors of 8 (or 16) lanes hold
    # neighbouring upper halves, so special lanes mix with ordinary ones.
    bits = (upper[:, None] | lower).ravel()
    return tf.constant(bits.view(np.float32))


def _assert_same_bits(portable, accelerated, what, tier):
    p = portable.numpy().view(np.uint32).ravel()
    a = accelerated.numpy().view(np.uint32).ravel()
    diff = np.flatnonzero(p != a)
    assert diff.size == 0, (
        f"{what}: {diff.size} elements differ, e.g. index {diff[0]}: portable "
        f"{p[diff[0]]:#010x}, {tier} {a[diff[0]]:#010x}"
    )


@pytest.mark.parametrize("rounding", _ROUNDINGS)
@pytest.mark.parametrize("name", sorted(_FORMATS))
def test_float_formats(patterns, tier, name, rounding):
    fmt = _FORMATS[name]
    # An odd start (stochastic words not aligned to Philox's 4-word blocks).
    x = patterns[3:]
    results = [
        lp.round_to_format(x, fmt, rounding, seed=(12345, -6789), implementation="op", isa=isa)
        for isa in ("portable", tier)
    ]
    _assert_same_bits(*results, f"{name} {rounding}", tier)


@pytest.mark.parametrize("rounding", _ROUNDINGS)
@pytest.mark.parametrize("name", sorted(_FORMATS))
def test_float_formats_every_upper_half(every_upper_half, tier, name, rounding):
    fmt = _FORMATS[name]
    x = every_upper_half[5:]  # 458,747 elements: not a multiple of 8 or 16
    results = [
        lp.round_to_format(x, fmt, rounding, seed=(2026, 12), implementation="op", isa=isa)
        for isa in ("portable", tier)
    ]
    _assert_same_bits(*results, f"{name} {rounding} over every upper half", tier)


@pytest.mark.parametrize("rounding", _ROUNDINGS)
@pytest.mark.parametrize("name", ["bf16", "fp16", "e4m3", "e4m3_flush"])
def test_float_formats_every_short_length(patterns, tier, name, rounding):
    """Lengths 1..40: vectors with every tail length, alone and after whole vectors,
    and Philox groups cut anywhere; the windows start among the special values."""
    fmt = _FORMATS[name]
    for length in range(1, 41):
        x = patterns[37 * length:38 * length]
        results = [
            lp.round_to_format(x, fmt, rounding, seed=(5, length), implementation="op",
                               isa=isa)
            for isa in ("portable", tier)
        ]
        _assert_same_bits(*results, f"{name} {rounding} length {length}", tier)


@pytest.mark.parametrize("random_bits", [1, 3, 16, 17, 23])  # half words up to 16, then words
def test_stochastic_random_bits(patterns, tier, random_bits):
    results = [
        lp.round_to_format(patterns, lp.E5M2, "stochastic", seed=7, random_bits=random_bits,
                           implementation="op", isa=isa)
        for isa in ("portable", tier)
    ]
    _assert_same_bits(*results, f"e5m2 stochastic random_bits={random_bits}", tier)


def _dfp_inputs(patterns, scale_exponents):
    """Finite random values across a few scales, with zeros, Inf and NaN mixed in."""
    rng = np.random.default_rng(5)
    n = 7 * 14_043  # rows of 7 (odd offsets), about 10^5 elements
    mantissas = rng.standard_normal(n).astype(np.float32)
    exps = rng.choice(scale_exponents, n).astype(np.float32)
    x = mantissas * np.exp2(exps)
    x[rng.integers(0, n, 64)] = 0.0
    x[rng.integers(0, n, 8)] = np.inf
    x[rng.integers(0, n, 8)] = np.nan
    x[rng.integers(0, n, 64)] = rng.integers(1, 1 << 23, 64).astype(np.uint32).view(np.float32)
    return tf.constant(x)


@pytest.mark.parametrize("rounding", _ROUNDINGS)
@pytest.mark.parametrize(
    "fmt",
    [
        lp.DFP16,
        lp.DfpFormat(8, extra_shift=2),
        lp.DfpFormat(2),
        lp.DfpFormat(16, block_size=32, axis=-1),
        lp.DfpFormat(12, block_size=5, axis=0),
    ],
    ids=["dfp16", "dfp8_shift2", "dfp2", "dfp16_block32_last", "dfp12_block5_axis0"],
)
@pytest.mark.parametrize("scales", [(-3, 0, 5), (-140, -130, -120), (100, 120, 127)],
                         ids=["ordinary", "subnormal", "huge"])
def test_dfp(patterns, tier, fmt, rounding, scales):
    x = tf.reshape(_dfp_inputs(patterns, scales), [-1, 7])  # inner rows of 7: odd offsets
    results = [
        lp.quantize_dfp(x, fmt, rounding, seed=(3, 4), implementation="op", isa=isa)
        for isa in ("portable", tier)
    ]
    _assert_same_bits(*results, f"{fmt} {rounding}", tier)


@pytest.mark.parametrize("random_bits", [16, 32])
def test_dfp_stochastic_odd_offsets(patterns, tier, random_bits):
    """Blocks along axis 0 of rows of 7: the kernel's calls start at odd element indices,
    so half-word streams start in the middle of a word."""
    x = tf.reshape(_dfp_inputs(patterns, (-3, 0, 5)), [-1, 7])
    results = [
        lp.quantize_dfp(x, lp.DfpFormat(12, block_size=5, axis=0), "stochastic", seed=(3, 4),
                        random_bits=random_bits, implementation="op", isa=isa)
        for isa in ("portable", tier)
    ]
    _assert_same_bits(*results, f"dfp12 blocks stochastic random_bits={random_bits}", tier)


def test_dfp_random_bit_patterns(patterns, tier):
    """Per-tensor DFP over arbitrary bit patterns (the shared exponent is set by the largest)."""
    for rounding in _ROUNDINGS:
        results = [
            lp.quantize_dfp(patterns[1:], lp.DfpFormat(24), rounding, seed=9,
                            implementation="op", isa=isa)
            for isa in ("portable", tier)
        ]
        _assert_same_bits(*results, f"dfp24 {rounding} over random bit patterns", tier)


@pytest.mark.parametrize("rounding", _ROUNDINGS)
@pytest.mark.parametrize(
    "fmt",
    [lp.DfpFormat(16, block_size=13, axis=-1), lp.DfpFormat(8, block_size=1, axis=0)],
    ids=["dfp16_block13_last", "dfp8_block1_axis0"],
)
def test_dfp_every_upper_half(every_upper_half, tier, fmt, rounding):
    """Blocks of 13 along rows of 112 (calls of 13 elements and of 8 at odd offsets),
    and blocks of one row of 112 (per-lane exponents), over every upper half."""
    x = tf.reshape(every_upper_half, [-1, 112])
    results = [
        lp.quantize_dfp(x, fmt, rounding, seed=(6, 7), implementation="op", isa=isa)
        for isa in ("portable", tier)
    ]
    _assert_same_bits(*results, f"{fmt} {rounding} over every upper half", tier)



@pytest.mark.parametrize("rounding", _ROUNDINGS)
@pytest.mark.parametrize("bits", [2, 8, 24])
def test_dfp_zero_vectors_beside_extreme_exponents(tier, bits, rounding):
    """Whole vectors of signed zeros in blocks whose exponent lies outside the fast
    form's range (maxima near float32's largest and smallest values, and blocks of
    zeros, Inf and NaN only, which have no exponent): the zeros must stay zeros."""
    zeros = np.zeros(64, np.float32)
    zeros[1::3] = -0.0
    blocks = []
    for largest in (3.4e38, 1.7e38, 1e-45, 1e-40, 1.0):
        block = zeros.copy()
        block[37] = largest
        blocks.append(block)
    special = zeros.copy()
    special[[5, 40]] = [np.inf, np.nan]
    blocks.append(special)
    x = tf.constant(np.stack(blocks))
    for fmt in (lp.DfpFormat(bits), lp.DfpFormat(bits, block_size=1, axis=0)):
        results = [
            lp.quantize_dfp(x, fmt, rounding, seed=(1, 2), implementation="op", isa=isa)
            for isa in ("portable", tier)
        ]
        _assert_same_bits(*results, f"{fmt} {rounding} zeros beside extreme exponents", tier)
