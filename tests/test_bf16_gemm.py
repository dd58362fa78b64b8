"""bf16_matmul / bf16_conv2d: bit-exact against a NumPy model of VDPBF16PS.

The reference below is written from the definition in docs/bf16_gemm.md
(which a probe of the real instruction established), independently of the
C++ kernels: operands rounded by the NumPy rounding reference, then a loop
over K vectorised over the outputs.  Every kernel tier the CPU runs (the
VDPBF16PS one where the CPU has AVX512_BF16, the AVX2 FMA one, the portable
emulation) must equal it bit for bit, NaN payloads and signed zeros included,
and the accelerated tiers must equal portable on larger and nastier inputs.
Runtime ~1 min.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import kernel_tiers
from conv_testing import im2col_tf
import tf_lowprec as lp
from tf_lowprec.numerics import reference

MIN_NORMAL = np.float64(2.0**-126)
FLUSH_BELOW = np.float64(2.0**-126 - 2.0**-151)  # 24-bit rounding below 2^-126
DEFAULT_NAN = np.uint32(0xFFC00000)
QUIET_BIT = np.uint32(0x00400000)


# Every tier of the kernel this CPU runs; they must agree bit for bit.
ISAS = kernel_tiers.available("bf16_gemm")


def bf16_operand(x):
    """The BF16 values the GEMM multiplies: round_to_format(x, BF16), then DAZ."""
    r = reference.round_to_format(np.asarray(x, np.float32), lp.BF16)
    tiny = np.abs(r.astype(np.float64)) < MIN_NORMAL
    return np.where(tiny, np.copysign(np.float32(0), r), r).astype(np.float32)


def step(acc, x, y):
    """acc + x * y (float32 arrays, broadcast) as one VDPBF16PS half-step."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = acc.astype(np.float64) + x.astype(np.float64) * y.astype(np.float64)
        r = v.astype(np.float32)
    r = np.where(np.abs(v) < FLUSH_BELOW, np.copysign(np.float32(0), r), r).astype(np.float32)
    bits = r.view(np.uint32)
    acc_bits, x_bits, y_bits = (np.broadcast_to(t, r.shape).view(np.uint32) for t in (acc, x, y))
    nan = np.isnan(v)
    chosen = np.where(np.isnan(np.broadcast_to(x, r.shape)), x_bits | QUIET_BIT,
                      np.where(np.isnan(np.broadcast_to(y, r.shape)), y_bits | QUIET_BIT,
                               np.where(np.isnan(np.broadcast_to(acc, r.shape)),
                                        acc_bits | QUIET_BIT, DEFAULT_NAN)))
    return np.where(nan, chosen, bits).astype(np.uint32).view(np.float32)


def reference_matmul(a, b):
    """The model for 2-D a [m, k], b [k, n] (already transposed as needed)."""
    a, b = bf16_operand(a), bf16_operand(b)
    m, k = a.shape
    n = b.shape[1]
    if k % 2:
        a = np.concatenate([a, np.zeros((m, 1), np.float32)], 1)
        b = np.concatenate([b, np.zeros((1, n), np.float32)], 0)
    acc = np.zeros((m, n), np.float32)
    for p in range(a.shape[1] // 2):
        acc = step(acc, a[:, 2 * p + 1, None], b[None, 2 * p + 1, :])
        acc = step(acc, a[:, 2 * p, None], b[None, 2 * p, :])
    return acc


def reference_batched(a, b, ta=False, tb=False):
    a = np.swapaxes(a, -1, -2) if ta else a
    b = np.swapaxes(b, -1, -2) if tb else b
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:]).reshape((-1,) + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:]).reshape((-1,) + b.shape[-2:])
    out = np.stack([reference_matmul(x, y) for x, y in zip(a, b)])
    return out.reshape(batch + out.shape[-2:])


def assert_bits_equal(actual, expected):
    actual = np.asarray(actual, np.float32)
    expected = np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    diff = actual.view(np.uint32) != expected.view(np.uint32)
    assert not diff.any(), (
        f"{int(diff.sum())} of {diff.size} differ, e.g. at {np.argwhere(diff)[0]}: "
        f"{actual[diff][:3].view(np.uint32)} != {expected[diff][:3].view(np.uint32)}"
    )


def _hand_cases():
    """(a [1, k], b [k, 1], expected output bits), worked out from the definition."""
    cases = []
    # Pairs (a0, a1) = (1, 0), (a2, a3) = (1, 2^24).  Odd element first:
    # acc = 0 + 0, + 1 = 1; then 1 + 2^24 ties to 2^24 (even), + 1 ties to 2^24.
    # (K order, or even-first, would give 2^24 + 2.)
    cases.append(([1.0, 0.0, 1.0, 2.0**24], [1.0] * 4, 0x4B800000))
    # DAZ: a BF16 subnormal operand counts as zero (4 * 2^-130 would be normal).
    cases.append(([2.0**-130], [4.0], 0x00000000))
    # FTZ: a sum below 2^-126 is flushed, keeping its sign.
    cases.append(([-(2.0**-70)], [2.0**-60], 0x80000000))
    # Pair 0 makes acc = 2^-126, then pair 1's odd product is added:
    # 2^-126 - 2^-152 and the tie 2^-126 - 2^-151 round (24 bits) to 2^-126 and
    # are kept; 2^-126 - 2^-150 is a 24-bit number below 2^-126: flushed to +0
    # (IEEE gradual underflow would have rounded it up to 2^-126).
    for b3_exponent, expected in [(-77, 0x00800000), (-76, 0x00800000), (-75, 0x00000000)]:
        cases.append(([2.0**-63, 0.0, 0.0, -(2.0**-75)],
                      [2.0**-63, 0.0, 0.0, 2.0**b3_exponent], expected))
    # The initial accumulator is +0: a -0 product leaves +0.
    cases.append(([-0.0], [1.0], 0x00000000))
    # NaN: a's NaN wins over b's; Inf * 0 gives the default NaN 0xFFC00000.
    cases.append(([np.nan], [-np.nan], 0x7FC00000))
    cases.append(([-np.nan], [np.nan], 0xFFC00000))
    cases.append(([np.inf], [0.0], 0xFFC00000))
    cases.append(([1.0, np.inf], [1.0, -np.inf], 0xFF800000))
    return cases


@pytest.mark.parametrize("isa", ["reference"] + ISAS)
def test_hand_worked_cases(isa):
    for a, b, expected in _hand_cases():
        a = np.float32(a)[None, :]
        b = np.float32(b)[:, None]
        out = reference_matmul(a, b) if isa == "reference" else lp.bf16_matmul(a, b, isa=isa)
        got = int(np.asarray(out, np.float32).view(np.uint32)[0, 0])
        assert got == expected, (a, b, hex(got), hex(expected))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "m, k, n, ta, tb",
    [
        (1, 1, 1, False, False),
        (5, 7, 3, False, False),       # odd K
        (13, 64, 33, False, False),    # M, N past one micro-tile
        (25, 129, 70, True, False),
        (12, 200, 32, False, True),
        (30, 385, 17, True, True),
        (13, 1500, 40, False, False),  # K beyond one K piece (1024 elements):
        (14, 2051, 33, True, True),    # the tile is stored and reloaded
        (50, 2, 100, False, False),
        (100, 1100, 20, False, False),  # one column block: rows converted per work item
        (100, 1100, 20, True, False),
    ],
)
def test_matches_reference(isa, m, k, n, ta, tb):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    out = lp.bf16_matmul(a, b, transpose_a=ta, transpose_b=tb, isa=isa)
    assert_bits_equal(out, reference_batched(a, b, ta, tb))


@pytest.mark.parametrize("isa", ISAS)
def test_large_output(isa):
    """Outputs of 8 MiB and more are written with streaming stores (aligned rows)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2050, 5)).astype(np.float32)
    b = rng.standard_normal((5, 1024)).astype(np.float32)
    assert_bits_equal(lp.bf16_matmul(a, b, isa=isa), reference_matmul(a, b))


@pytest.mark.parametrize("isa", ISAS)
def test_batch_broadcast(isa):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 1, 9, 11)).astype(np.float32)
    b = rng.standard_normal((3, 11, 5)).astype(np.float32)
    out = lp.bf16_matmul(a, b, isa=isa)
    assert out.shape == (2, 3, 9, 5)
    assert_bits_equal(out, reference_batched(a, b))
    c = rng.standard_normal((4, 6, 11)).astype(np.float32)
    assert_bits_equal(lp.bf16_matmul(c, b[0], transpose_b=False, isa=isa),
                      reference_batched(c, b[0]))
    d = rng.standard_normal((4, 13, 6)).astype(np.float32)  # batch and both transposes
    assert_bits_equal(lp.bf16_matmul(c, d, transpose_a=True, transpose_b=True, isa=isa),
                      reference_batched(c, d, ta=True, tb=True))


def adversarial(rng, shape):
    """Values that exercise ties, cancellation, subnormals, overflow, Inf and NaN."""
    palette = np.float32([
        0.0, -0.0, 1.0, -1.0, 1.0 + 2.0**-7, 3.0, -3.0, 2.0**-63, -(2.0**-63), 2.0**-64,
        1.5 * 2.0**-63, 2.0**-126, 2.0**-127, -(2.0**-130), 2.0**-149, 1.17e-38,
        2.0**24, -(2.0**24), 1.0 + 2.0**-8,
        1.0 + 3 * 2.0**-9, 65504.0, 2.0**-75, 2.0**-76,
    ])
    values = rng.choice(palette, size=shape)
    scale = np.exp2(rng.integers(-20, 20, size=shape)).astype(np.float32)
    mixed = (rng.standard_normal(shape) * scale).astype(np.float32)
    x = np.where(rng.random(shape) < 0.6, values, mixed).astype(np.float32)
    # A few huge and non-finite values (overflow, Inf - Inf, NaN), so that
    # most outputs stay finite.
    specials = np.float32([2.0**63, 2.0**64, -(2.0**64), 3.0e38, -3.0e38, np.inf, -np.inf,
                           np.nan, -np.nan])
    where = rng.random(shape) < 0.01
    x[where] = rng.choice(specials, size=int(where.sum()))
    return x


def bottom_of_range(rng, shape):
    """Products near 2^-126: sums at the FTZ threshold, subnormal products."""
    e = rng.integers(-66, -60, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    mantissa = 1 + rng.integers(0, 128, size=shape) / 128
    return (sign * mantissa * np.exp2(e)).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["adversarial", "bottom", "mixed_bottom"])
def test_adversarial_values(isa, kind):
    rng = np.random.default_rng(hash(kind) % 2**32)
    m, k, n = 23, 41, 37
    if kind == "adversarial":
        a, b = adversarial(rng, (m, k)), adversarial(rng, (k, n))
    elif kind == "bottom":
        a, b = bottom_of_range(rng, (m, k)), bottom_of_range(rng, (k, n))
    else:
        a = bottom_of_range(rng, (m, k))
        a[:, ::3] = adversarial(rng, (m, len(range(0, k, 3))))
        b = bottom_of_range(rng, (k, n))
    out = lp.bf16_matmul(a, b, isa=isa).numpy()
    expected = reference_matmul(a, b)
    assert_bits_equal(out, expected)
    # The cases did occur.
    if kind == "adversarial":
        assert np.isnan(expected).any() and np.isinf(expected).any()
        assert np.isfinite(expected).mean() > 0.3
    elif kind == "bottom":
        assert (expected.view(np.uint32) == 0x80000000).any() and (expected == 0).any()
        assert (np.abs(expected) >= 2.0**-126).any()


@pytest.mark.parametrize("isa", kernel_tiers.params("bf16_gemm", kernel_tiers.ACCELERATED))
def test_isas_agree_on_larger_problem(isa):
    rng = np.random.default_rng(7)
    a = adversarial(rng, (2, 100, 301))
    b = bottom_of_range(rng, (301, 90)) * np.float32(2.0**60)
    assert_bits_equal(lp.bf16_matmul(a, b, isa=isa).numpy(),
                      lp.bf16_matmul(a, b, isa="portable").numpy())


# --- accelerated tiers against portable ---------------------------------------
# The avx2 tier is an FP32 FMA GEMM (6 x 16 micro-tiles, K pieces of 256) that
# is exact only where the packing proves no tiny sum and no NaN can arise
# (bf16_gemm_fma_impl.h); the other outputs are recomputed by the definition.
# These tests aim at both paths, their boundary, and every tile edge.
ACCELERATED = kernel_tiers.params("bf16_gemm", kernel_tiers.ACCELERATED)


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_every_tile_edge_matches_portable(isa):
    """m 1..13, n 1..33 (two 6 x 16 tiles and one more), K around the piece sizes."""
    rng = np.random.default_rng(31)
    ks = [1, 2, 3, 5, 8, 17, 255, 256, 257, 511, 513, 1025]
    case = 0
    for m in range(1, 14):
        for n in range(1, 34):
            k = ks[case % len(ks)]
            ta, tb = bool(case & 1), bool(case & 2)
            case += 1
            scale = np.exp2(rng.integers(-30, 30)).astype(np.float32)
            a = (rng.standard_normal((k, m) if ta else (m, k)) * scale).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            out = lp.bf16_matmul(a, b, transpose_a=ta, transpose_b=tb, isa=isa)
            want = lp.bf16_matmul(a, b, transpose_a=ta, transpose_b=tb, isa="portable")
            assert_bits_equal(out, want)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_batches_and_transposes_match_portable(isa):
    rng = np.random.default_rng(32)
    a = rng.standard_normal((3, 1, 70, 40)).astype(np.float32)  # [.., k, m] for transpose_a
    b = rng.standard_normal((4, 50, 70)).astype(np.float32)     # [.., n, k] for transpose_b
    for ta, tb in [(True, True), (True, False), (False, True)]:
        x = a if ta else np.swapaxes(a, -1, -2)
        y = b if tb else np.swapaxes(b, -1, -2)
        out = lp.bf16_matmul(x, y, transpose_a=ta, transpose_b=tb, isa=isa)
        assert out.shape == (3, 4, 40, 50)
        assert_bits_equal(out, lp.bf16_matmul(x, y, transpose_a=ta, transpose_b=tb,
                                              isa="portable"))


def _cancelling_pairs(rng, count):
    """`count` K pairs (x0, x1), (y0, y1) of BF16 mantissas (integers 128..255,
    signed) with x1 * y1 + x0 * y0 = a random one of 0, ±1, ±2, ±3: after the
    odd element's step, the even one cancels it down to a few units."""
    products = {}
    for m1 in range(128, 256):
        for m2 in range(128, 256):
            products.setdefault(m1 * m2, (m1, m2))
    pairs = [(products[p + d], products[p]) for p in sorted(products) for d in (0, 1, 2, 3)
             if p + d in products]
    x, y = np.empty((count, 2)), np.empty((count, 2))
    for row, idx in enumerate(rng.choice(len(pairs), size=count)):
        (mx1, my1), (mx0, my0) = pairs[idx]
        sign = rng.choice([-1.0, 1.0])
        x[row] = [mx0 * sign, mx1 * sign]
        y[row] = [-my0, my1]
    return x, y


def _exponent_window_operands(rng, a_exponent, b_exponent, size):
    """a [size, 2] and b [2, size] at fixed exponents; the diagonal outputs are
    cancelling pairs (a few units of 2^(a_exponent + b_exponent - 14)), the
    others random."""
    a, b_t = _cancelling_pairs(rng, size)
    a = np.where(rng.random(a.shape) < 0.3, rng.integers(128, 256, a.shape), a)
    a *= np.exp2(a_exponent - 7.0)
    b = b_t.T * np.exp2(b_exponent - 7.0)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("isa", ACCELERATED)
@pytest.mark.parametrize("exponent_sum", [-112, -113])
def test_fast_path_boundary(isa, exponent_sum):
    """Exponents adding up to -112 (fields to 142): the FMA path, sums down to
    exactly 2^-126 and +0; one less: sums of 2^-127 that must be flushed,
    recomputed by the definition."""
    rng = np.random.default_rng(33)
    a, b = _exponent_window_operands(rng, -56, exponent_sum + 56, 40)
    out = lp.bf16_matmul(a, b, isa=isa).numpy()
    expected = reference_matmul(a, b)
    assert_bits_equal(out, expected)
    assert_bits_equal(out, lp.bf16_matmul(a, b, isa="portable"))
    diagonal = np.abs(np.diag(expected).astype(np.float64))
    if exponent_sum == -112:
        assert (diagonal == 2.0**-126).any() and (diagonal == 0).any()
        assert (diagonal < 2.0**-124).sum() >= 10
    else:
        assert (diagonal == 0).sum() >= 10 and (diagonal == 2.0**-126).any()


def _long_k_operands(rng, m, k, n):
    """Rows and columns for K = 65,536: cancellations and the FTZ boundary."""
    a = np.empty((m, k), np.float32)
    a[0] = rng.standard_normal(k) * 2.0**20
    a[0, ::997] = rng.choice([2.0**60, -(2.0**60)], size=len(range(0, k, 997)))
    r = rng.standard_normal(k // 2) * 2.0**10
    a[1] = 1.0
    a[1, 0:2 * (k // 2):2], a[1, 1::2] = r, -r * (1 + 2.0**-8 * rng.integers(-1, 2, k // 2))
    # Rows 2, 3 against column 2: K/2 cancelling pairs, the accumulator a few
    # units of 2^-126 after every pair (row 2: exponents adding up to -112, the
    # FMA path) or of 2^-127 (row 3: flushed sums, recomputed).
    x, y = _cancelling_pairs(rng, k // 2)
    a[2], a[2, :2 * (k // 2)] = 2.0**-56, x.ravel() * 2.0**-63
    a[3] = a[2] * 0.5
    a[4] = rng.standard_normal(k)
    a[4, k // 2] = np.nan
    a[5] = bottom_of_range(rng, (k,))
    b = np.empty((k, n), np.float32)
    b[:, 0] = 1.0
    b[:, 1] = -0.0
    b[:, 2] = 0.0
    b[:2 * (k // 2), 2] = y.ravel() * 2.0**-63
    for j in range(3, 12):  # a random walk against rows 2 and 3
        b[:, j] = rng.choice([-1, 1], k) * rng.integers(128, 256, k) * 2.0**-63
    b[:, 12:20] = rng.standard_normal((k, 8))
    b[:, 20:] = bottom_of_range(rng, (k, n - 20))
    b[k // 3, 13] = np.inf
    b[1000:1010, 14] = 2.0**-140  # BF16 subnormals: zero after DAZ
    return a, b


@pytest.mark.parametrize("isa", ACCELERATED)
def test_long_k_adversarial_matches_portable(isa):
    rng = np.random.default_rng(34)
    m, k, n = 7, 65537, 40  # odd K past 256 pieces
    a, b = _long_k_operands(rng, m - 1, k, n)
    a = np.concatenate([a, rng.standard_normal((1, k)).astype(np.float32) * 1e-20])
    out = lp.bf16_matmul(a, b, isa=isa).numpy()
    want = lp.bf16_matmul(a, b, isa="portable").numpy()
    assert_bits_equal(out, want)
    # The cases did occur: NaN, Inf, flushed sums, results near 2^-126.
    assert np.isnan(want[4]).all() and np.isinf(want[:, 13]).any()
    assert 0 < np.abs(want[2, 2]) < 2.0**-115 and np.abs(want[3, 2]) < 2.0**-115
    assert np.isfinite(want[:4]).mean() > 0.5


@pytest.mark.parametrize("isa", ACCELERATED)
def test_sparse_specials_match_portable(isa):
    """Mostly ordinary data with a few NaN, Inf, tiny and subnormal entries: most
    outputs on the FMA path, the affected rows and columns recomputed.  (n =
    290: more than one column block, a converted once; with one column block,
    a is converted per work item: the tile-edge and long-K tests.)"""
    rng = np.random.default_rng(35)
    a = rng.standard_normal((90, 301)).astype(np.float32)
    b = rng.standard_normal((301, 290)).astype(np.float32)
    a[3, 7], a[10, 300], a[11, 0] = np.nan, -np.inf, -np.nan
    a[20, 5], a[21, 6] = 2.0**-100, -(2.0**-130)
    b[9, 2], b[100, 33], b[7, 269] = np.inf, np.nan, 2.0**-90
    a[30] = 0.0
    b[:, 40] = -0.0
    for ta, tb in [(False, False), (True, True)]:
        x = a.T.copy() if ta else a
        y = b.T.copy() if tb else b
        out = lp.bf16_matmul(x, y, transpose_a=ta, transpose_b=tb, isa=isa).numpy()
        assert_bits_equal(out, lp.bf16_matmul(x, y, transpose_a=ta, transpose_b=tb,
                                              isa="portable"))
        assert_bits_equal(out, reference_matmul(a, b))


# No test of the kernel's MXCSR guard (nearest even whatever the caller set):
# TensorFlow runs every kernel with round-to-nearest and FTZ/DAZ set
# (ScopedSetRound, ScopedFlushDenormal), so a caller's fesetround never
# reaches it through the op.


_THREADS_SCRIPT = """
import sys, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
import tf_lowprec as lp
rng = np.random.default_rng(3)
a = rng.standard_normal((300, 257)).astype(np.float32)
b = rng.standard_normal((257, 200)).astype(np.float32)
a[5, 9], a[77, 0], b[3, 150], a[200, 100] = np.nan, np.inf, -np.nan, 2.0**-110
np.save(sys.argv[1], lp.bf16_matmul(a, b, isa=sys.argv[2]).numpy())
"""


def test_one_thread_equals_two(tmp_path):
    """One intra-op thread (another process) gives the bits of the default pool."""
    assert tf.config.threading.get_intra_op_parallelism_threads() != 1
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 257)).astype(np.float32)
    b = rng.standard_normal((257, 200)).astype(np.float32)
    # Rows and a column off the FMA path (avx2), recomputed in parallel too.
    a[5, 9], a[77, 0], b[3, 150], a[200, 100] = np.nan, np.inf, -np.nan, 2.0**-110
    isa = ISAS[-1]
    path = str(tmp_path / "one_thread.npy")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, path, isa], check=True, env=env,
                   timeout=120)
    assert_bits_equal(np.load(path), lp.bf16_matmul(a, b, isa=isa))


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gradients(ta, tb):
    rng = np.random.default_rng(11)
    m, k, n = 7, 10, 5
    a = tf.constant(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32))
    b = tf.constant(rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32))
    dy = rng.standard_normal((m, n)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        out = lp.bf16_matmul(a, b, transpose_a=ta, transpose_b=tb)
    da, db = tape.gradient(out, [a, b], output_gradients=tf.constant(dy))
    an, bn = a.numpy(), b.numpy()
    a_logical = an.T if ta else an
    b_logical = bn.T if tb else bn
    # out = A B: dA = dy B^T, dB = A^T dy, each itself a bf16_matmul (rounding dy).
    da_logical = reference_matmul(dy, b_logical.T)
    db_logical = reference_matmul(a_logical.T, dy)
    assert_bits_equal(da, da_logical.T if ta else da_logical)
    assert_bits_equal(db, db_logical.T if tb else db_logical)


def test_gradient_of_broadcast_batch():
    rng = np.random.default_rng(12)
    a = tf.constant(rng.standard_normal((3, 4, 6)).astype(np.float32))
    b = tf.constant(rng.standard_normal((6, 2)).astype(np.float32))
    dy = rng.standard_normal((3, 4, 2)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        out = lp.bf16_matmul(a, b)
    da, db = tape.gradient(out, [a, b], output_gradients=tf.constant(dy))
    assert_bits_equal(da, reference_batched(dy, b.numpy(), tb=True))
    per_batch = reference_batched(a.numpy(), dy, ta=True)
    np.testing.assert_allclose(db, per_batch.sum(0), rtol=1e-6)


def test_empty_and_zero_k():
    assert lp.bf16_matmul(np.zeros((0, 3), np.float32), np.ones((3, 4), np.float32)).shape == (0, 4)
    out = lp.bf16_matmul(np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32)).numpy()
    assert_bits_equal(out, np.zeros((2, 3), np.float32))  # +0: the initial accumulator


def test_graph_mode_and_dynamic_shapes():
    f = tf.function(lambda a, b: lp.bf16_matmul(a, b, transpose_b=True),
                    input_signature=[tf.TensorSpec([None, None, 8]), tf.TensorSpec([None, 8])])
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 8)).astype(np.float32)
    b = rng.standard_normal((4, 8)).astype(np.float32)
    assert_bits_equal(f(a, b), reference_batched(a, b, tb=True))


def test_bad_input():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        lp.bf16_matmul(a, a)
    with pytest.raises(ValueError, match="float32"):
        lp.bf16_matmul(np.ones((2, 3), np.int32), a.T)
    with pytest.raises(ValueError, match="float32"):
        lp.bf16_matmul(a, tf.ones((3, 2), tf.float64))
    with pytest.raises(ValueError, match="isa must be one of"):
        lp.bf16_matmul(a, a.T, isa="sse4")
    with pytest.raises(ValueError, match="implementation must be one of 'auto', 'op', 'tf'"):
        lp.bf16_matmul(a, a.T, implementation="xla")
    with pytest.raises(ValueError, match="transpose_a and transpose_b"):
        lp.bf16_matmul(a, a, transpose_b=1)
    with pytest.raises(ValueError, match="rank >= 2"):
        lp.bf16_matmul(np.ones(3, np.float32), a)
    for isa in ("avx2", "avx512"):
        if isa not in ISAS:
            with pytest.raises(tf.errors.InvalidArgumentError, match="not supported by this CPU"):
                lp.bf16_matmul(a, a.T, isa=isa)


# --- conv2d -----------------------------------------------------------------


@pytest.mark.parametrize(
    "strides, dilations, padding",
    [(1, 1, "VALID"), (2, 1, "SAME"), ((1, 2), (2, 1), "SAME"), (3, 1, "VALID")],
)
def test_conv2d_forward_and_backward(strides, dilations, padding):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    s = strides if isinstance(strides, tuple) else (strides, strides)
    d = dilations if isinstance(dilations, tuple) else (dilations, dilations)
    cols, (n, oh, ow) = im2col_tf(x, 3, 3, s, padding, d)
    weights = w.reshape(-1, 4)
    xt, wt = tf.constant(x), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([xt, wt])
        y = lp.bf16_conv2d(xt, wt, strides=strides, padding=padding, dilations=dilations)
    expected = lp.bf16_matmul(cols, weights).numpy().reshape(n, oh, ow, 4)
    assert_bits_equal(y, expected)
    np.testing.assert_allclose(y, tf.nn.conv2d(x, w, s, padding, dilations=d), rtol=0.05,
                               atol=0.1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = tape.gradient(y, [xt, wt], output_gradients=tf.constant(dy))
    dy_cols = dy.reshape(-1, 4)
    assert_bits_equal(dw, lp.bf16_matmul(cols, dy_cols, transpose_a=True).numpy().reshape(w.shape))
    # d(x) is one BF16 GEMM of the dilated error with the flipped filters (its
    # bits: tests/test_bf16_implicit_conv.py); here, close to the im2col path's
    # d(patches) = bf16_matmul(dy, W^T) summed back onto x (col2im, in FP32).
    dcols = lp.bf16_matmul(dy_cols, weights, transpose_b=True).numpy()
    zeros_x = tf.constant(np.zeros_like(x))
    with tf.GradientTape() as t2:
        t2.watch(zeros_x)
        patches = tf.image.extract_patches(
            zeros_x, [1, 3, 3, 1], [1, *s, 1], [1, *d, 1], padding)
    expected_dx = t2.gradient(patches, zeros_x,
                              output_gradients=tf.constant(dcols.reshape(patches.shape)))
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-2, atol=1e-2)


def test_conv2d_bad_input():
    x = np.ones((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="channels"):
        lp.bf16_conv2d(x, np.ones((2, 2, 3, 1), np.float32))
    with pytest.raises(ValueError, match="padding"):
        lp.bf16_conv2d(x, np.ones((2, 2, 2, 1), np.float32), padding="FULL")
    with pytest.raises(ValueError, match="strides"):
        lp.bf16_conv2d(x, np.ones((2, 2, 2, 1), np.float32), strides=0)
    with pytest.raises(ValueError, match="isa"):
        lp.bf16_conv2d(x, np.ones((2, 2, 2, 1), np.float32), isa="gpu")


# The stock-TF twin (tf_bf16_gemm, implementation="tf"): the same bits without
# the op library, for XLA, GPUs and exported models.  It is a loop of K steps,
# so the shapes here stay small; traced once per shape with tf.function.

def _twin(a, b, ta=False, tb=False, jit_compile=False):
    fn = tf.function(lambda x, y: lp.bf16_matmul(x, y, transpose_a=ta, transpose_b=tb,
                                                 implementation="tf"),
                     jit_compile=jit_compile)
    return fn(tf.constant(a), tf.constant(b))


def test_stock_tf_twin_hand_worked_cases():
    for a, b, expected in _hand_cases():
        out = lp.bf16_matmul(np.float32(a)[None, :], np.float32(b)[:, None],
                             implementation="tf")
        got = int(np.asarray(out, np.float32).view(np.uint32)[0, 0])
        assert got == expected, (a, b, hex(got), hex(expected))


@pytest.mark.parametrize("kind", ["random", "adversarial", "bottom"])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, True)])
def test_stock_tf_twin_matches_reference(kind, ta, tb):
    rng = np.random.default_rng(abs(hash((kind, ta, tb))) % 2**32)
    make = {"random": lambda s: rng.standard_normal(s).astype(np.float32),
            "adversarial": lambda s: adversarial(rng, s),
            "bottom": lambda s: bottom_of_range(rng, s)}[kind]
    m, k, n = 9, 37, 11
    a = make((k, m) if ta else (m, k))
    b = make((n, k) if tb else (k, n))
    assert_bits_equal(_twin(a, b, ta, tb), reference_batched(a, b, ta, tb))


def test_stock_tf_twin_batches_gradients_and_xla():
    rng = np.random.default_rng(21)
    a = rng.standard_normal((2, 1, 5, 7)).astype(np.float32)
    b = rng.standard_normal((3, 7, 4)).astype(np.float32)
    assert_bits_equal(_twin(a, b), reference_batched(a, b))
    # Under XLA, implementation="auto" runs the twin: the kernel's bits.
    x = adversarial(rng, (6, 15))
    y = rng.standard_normal((15, 8)).astype(np.float32)
    xla = tf.function(lambda u, v: lp.bf16_matmul(u, v), jit_compile=True)
    assert_bits_equal(xla(tf.constant(x), tf.constant(y)), lp.bf16_matmul(x, y))
    # Gradients: both backward GEMMs through the twin.
    xs = [tf.constant(rng.standard_normal((4, 6)).astype(np.float32)),
          tf.constant(rng.standard_normal((6, 3)).astype(np.float32))]
    grads = {}
    for implementation in ("op", "tf"):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = lp.bf16_matmul(*xs, implementation=implementation)
        grads[implementation] = tape.gradient(out, xs, output_gradients=tf.ones([4, 3]) / 3)
    for g_op, g_tf in zip(grads["op"], grads["tf"]):
        assert_bits_equal(g_tf, g_op)


def test_stock_tf_twin_conv2d():
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    assert_bits_equal(lp.bf16_conv2d(x, w, padding="SAME", implementation="tf"),
                      lp.bf16_conv2d(x, w, padding="SAME"))
