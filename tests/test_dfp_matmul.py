"""dfp_matmul: bit-exact against the NumPy reference, overflow, gradients, bad input."""

import numpy as np
import pytest
import tensorflow as tf

import kernel_tiers
import tf_lowprec as lp
from tf_lowprec._op_library import load
from tf_lowprec.gemm import dfp as dfp_gemm
from tf_lowprec.gemm import reference as reference_gemm
from tf_lowprec.numerics import rounding as rounding_lib

MAX_MANTISSA_VALUE = np.float32(32767 / 32768)  # DFP16 mantissa 32767, exponent -15


# Every tier of the kernel this CPU runs; they must agree bit for bit.
ISAS = kernel_tiers.available("dfp_gemm")


def bits(x):
    x = np.asarray(x, np.float32)
    return np.where(np.isnan(x), np.uint32(0x7FC00000), x.view(np.uint32))


def logical(x, transposed):
    return np.swapaxes(x, -1, -2) if transposed else x


def reference(a, b, fmt=lp.DFP16, ta=False, tb=False, rounding="nearest_even", seed=None,
              chunk_size=64, count=False):
    """Reference built from quantize_dfp's own outputs (the same mantissas)."""
    seed_t = rounding_lib.seed_tensor(seed, rounding)
    aq, ea = dfp_gemm.quantize_operand(a, fmt, -2 if ta else -1, rounding, seed_t)
    bq, eb = dfp_gemm.quantize_operand(b, fmt, -1 if tb else -2, rounding,
                                       seed_t + tf.constant([0, 1], tf.int64))
    aq, ea, bq, eb = (np.asarray(t) for t in (aq, ea, bq, eb))
    if fmt.block_size is None:
        ea3 = np.full((1, 1, 1), ea.reshape(-1)[0])
        eb3 = np.full((1, 1, 1), eb.reshape(-1)[0])
    else:
        ea3 = logical(ea, ta).reshape((-1,) + logical(ea, ta).shape[-2:])
        eb3 = logical(eb, tb).reshape((-1,) + logical(eb, tb).shape[-2:])
    al, bl = logical(aq, ta), logical(bq, tb)
    batch = np.broadcast_shapes(al.shape[:-2], bl.shape[:-2])
    if batch:
        al = np.broadcast_to(al, batch + al.shape[-2:]).reshape((-1,) + al.shape[-2:])
        bl = np.broadcast_to(bl, batch + bl.shape[-2:]).reshape((-1,) + bl.shape[-2:])
        if fmt.block_size is not None:
            ea3 = np.broadcast_to(logical(ea, ta), batch + ea3.shape[-2:]).reshape(
                (-1,) + ea3.shape[-2:])
            eb3 = np.broadcast_to(logical(eb, tb), batch + eb3.shape[-2:]).reshape(
                (-1,) + eb3.shape[-2:])
    elif fmt.block_size is not None:
        ea3, eb3 = ea3[None] if ea3.ndim == 2 else ea3, eb3[None] if eb3.ndim == 2 else eb3
    out = reference_gemm.dfp_matmul_quantized(
        al, ea3, bl, eb3, block_size=fmt.block_size, chunk_size=chunk_size,
        return_overflow_count=count)
    if count:
        out, n = out
        return out.reshape(batch + out.shape[-2:]), n
    return out.reshape(batch + out.shape[-2:])


def rand(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_bit_exact_against_reference(isa, ta, tb):
    m, k, n = 13, 203, 53  # edges of every tile dimension; odd K
    a = rand((k, m) if ta else (m, k), 1)
    b = rand((n, k) if tb else (k, n), 2, scale=1e-3)
    got = lp.dfp_matmul(a, b, transpose_a=ta, transpose_b=tb, isa=isa)
    np.testing.assert_array_equal(bits(got), bits(reference(a, b, ta=ta, tb=tb)))


@pytest.mark.parametrize("chunk_size", [2, 6, 64, 512])
@pytest.mark.parametrize("block_size", [None, 7, 32, 100])
def test_bit_exact_blocks_and_chunks(chunk_size, block_size):
    fmt = lp.DfpFormat(16, block_size=block_size)
    a = rand((19, 150), 3, scale=50.0)
    a[:, 40:80] *= 1e-4  # blocks of very different magnitudes
    b = rand((150, 70), 4)
    want = reference(a, b, fmt, chunk_size=chunk_size)
    for isa in ISAS:
        got = lp.dfp_matmul(a, b, fmt, chunk_size=chunk_size, isa=isa)
        np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("rounding", ["stochastic", "toward_zero"])
def test_mantissas_are_quantize_dfps(rounding):
    a, b = rand((9, 77), 5), rand((77, 11), 6)
    got = lp.dfp_matmul(a, b, rounding=rounding, seed=(7, 8))
    want = reference(a, b, rounding=rounding, seed=(7, 8))
    np.testing.assert_array_equal(bits(got), bits(want))
    # The reference's operands are quantize_dfp's outputs, so the GEMM saw them.
    aq = lp.quantize_dfp(a, lp.DFP16, rounding, seed=(7, 8))
    assert not np.array_equal(np.asarray(aq), a)


def test_batch_broadcast():
    a = rand((2, 1, 5, 40), 7)
    b = rand((3, 40, 6), 8)
    for isa in ISAS:
        got = lp.dfp_matmul(a, b, isa=isa)
        assert got.shape == (2, 3, 5, 6)
        np.testing.assert_array_equal(bits(got), bits(reference(a, b)))


def test_error_level_against_float64():
    """|y - a@b| <= sum_k (|a||db| + |da||b| + |da||db|) + FP32 roundings, da <= 2^(Ea-1)."""
    a, b = rand((64, 512), 9), rand((512, 32), 10)
    got = np.asarray(lp.dfp_matmul(a, b), np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    _, ea = lp.quantize_dfp(a, return_exponents=True)
    _, eb = lp.quantize_dfp(b, return_exponents=True)
    da, db = 2.0 ** (int(np.asarray(ea).flat[0]) - 1), 2.0 ** (int(np.asarray(eb).flat[0]) - 1)
    abs_a, abs_b = np.abs(a).astype(np.float64), np.abs(b).astype(np.float64)
    bound = abs_a @ np.full_like(abs_b, db) + np.full_like(abs_a, da) @ abs_b + 512 * da * db
    chunks = 512 // 64
    bound += chunks * 2.0**-24 * (abs_a @ abs_b) + 2.0**-24 * np.abs(exact)
    assert np.all(np.abs(got - exact) <= bound)
    # The level: relative error ~ 2^-15 of the operands' scale (measured ~1e-5).
    assert np.abs(got - exact).max() / np.abs(exact).max() < 2e-4


@pytest.mark.parametrize("isa", ISAS)
def test_adversarial_long_reduction_of_maximal_mantissas(isa):
    k = 65536
    a = np.full((3, k), MAX_MANTISSA_VALUE, np.float32)
    a[1] *= -1
    a[2, : k // 2] *= -1  # the chain climbs past INT32 and comes back down
    b = np.full((k, 5), MAX_MANTISSA_VALUE, np.float32)
    b[:, 1] *= -1
    b[1::2, 2] *= -1  # products alternate in sign: no overflow
    b[: k // 4, 3] = 0
    b[0, 4] = -b[0, 4]
    got, overflowed = lp.dfp_matmul(a, b, isa=isa, return_overflow_count=True)
    want, want_overflowed = reference(a, b, count=True)
    np.testing.assert_array_equal(bits(got), bits(want))
    assert int(overflowed) == want_overflowed > 0
    # Exact integer sums: 32767^2 * k * 2^-30 is representable, so the row of
    # all-positive products equals float64's value.
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(np.asarray(got), exact, rtol=2**-20, atol=1e-3)
    assert np.asarray(got)[0, 0] == np.float32(32767.0**2 * k * 2.0**-30)


def test_saturate_then_recover_is_detected():
    """A chunk whose running sum leaves INT32 and returns: exact, counted."""
    half = 32
    a = np.concatenate([np.full(half, 1.0), np.full(half, -1.0)]).astype(np.float32)[None]
    a *= MAX_MANTISSA_VALUE
    b = np.full((2 * half, 48), MAX_MANTISSA_VALUE, np.float32)
    for isa in ISAS:
        got, overflowed = lp.dfp_matmul(a, b, isa=isa, return_overflow_count=True)
        np.testing.assert_array_equal(np.asarray(got), np.zeros((1, 48), np.float32))
        assert int(overflowed) == 48


def test_isas_agree_with_many_overflows():
    rng = np.random.default_rng(11)
    a = rng.uniform(-1, 1, (40, 700)).astype(np.float32)
    b = rng.uniform(-1, 1, (700, 100)).astype(np.float32)
    results = [lp.dfp_matmul(a, b, isa=isa, return_overflow_count=True) for isa in ISAS]
    want, want_count = reference(a, b, count=True)
    for got, count in results:
        np.testing.assert_array_equal(bits(got), bits(want))
        assert int(count) == want_count > 0


@pytest.mark.parametrize("n", [20, 48, 64, 300])  # tiles of 32, 48, 64 and 48 columns
def test_every_tile_width_with_overflows(n):
    rng = np.random.default_rng(n)
    a = rng.uniform(-1, 1, (13, 300)).astype(np.float32)
    b = rng.uniform(-1, 1, (300, n)).astype(np.float32)
    want, want_count = reference(a, b, count=True)
    assert want_count > 0
    for isa in ISAS:
        got, count = lp.dfp_matmul(a, b, isa=isa, return_overflow_count=True)
        np.testing.assert_array_equal(bits(got), bits(want))
        assert int(count) == want_count


def test_certified_and_checked_chunks_agree():
    """Small mantissas (one outlier per tensor) run the VNNI chains without
    tracking (bounded in advance); a full-scale block beside them is checked."""
    a, b = rand((30, 600), 19), rand((600, 60), 20)
    a[0, 0] = 500.0  # the per-tensor exponent follows the outlier: tiny mantissas
    b[0, 0] = -500.0
    a[12:18, 300:364] = MAX_MANTISSA_VALUE * 500.0 / 1.0001  # full-scale block
    b[300:364, :48] = MAX_MANTISSA_VALUE * 500.0 / 1.0001
    want, count = reference(a, b, count=True)
    assert count > 0
    for isa in ISAS:
        got, overflowed = lp.dfp_matmul(a, b, isa=isa, return_overflow_count=True)
        np.testing.assert_array_equal(bits(got), bits(want))
        assert int(overflowed) == count


def test_nan_and_inf_propagate_to_their_rows_and_columns():
    a, b = rand((4, 30), 12), rand((30, 5), 13)
    a[1, 3] = np.nan
    b[7, 2] = np.inf
    for isa in ISAS:
        got = np.asarray(lp.dfp_matmul(a, b, isa=isa))
        assert np.isnan(got[1]).all() and np.isnan(got[:, 2]).all()
        rest = np.delete(np.delete(got, 1, 0), 2, 1)
        assert np.isfinite(rest).all()
        np.testing.assert_array_equal(bits(got), bits(reference(a, b)))


def test_empty_matrices():
    assert lp.dfp_matmul(np.zeros((0, 4), np.float32), np.ones((4, 3), np.float32)).shape == (0, 3)
    assert lp.dfp_matmul(np.ones((2, 4), np.float32), np.ones((4, 0), np.float32)).shape == (2, 0)
    got = lp.dfp_matmul(np.ones((2, 0), np.float32), np.ones((0, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(got), np.zeros((2, 3), np.float32))
    zeros = lp.dfp_matmul(np.zeros((2, 5), np.float32), np.ones((5, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(zeros), np.zeros((2, 3), np.float32))


def test_bad_input():
    with pytest.raises(ValueError, match="inner dimensions"):
        lp.dfp_matmul(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="a must be float32"):
        lp.dfp_matmul(np.ones((2, 3), np.int32), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="b must be float32"):
        lp.dfp_matmul(np.ones((2, 3), np.float32), np.ones((3, 5), np.float64))
    with pytest.raises(ValueError, match="rank"):
        lp.dfp_matmul(np.ones((3,), np.float32), np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="DfpFormat"):
        lp.dfp_matmul(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32), lp.BF16)
    with pytest.raises(ValueError, match="bits"):
        lp.dfp_matmul(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32),
                      lp.DfpFormat(20))
    with pytest.raises(ValueError, match="chunk_size"):
        lp.dfp_matmul(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32), chunk_size=7)
    with pytest.raises(ValueError, match="isa"):
        lp.dfp_matmul(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32), isa="sse")

    @tf.function(input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, None])])
    def dynamic(a, b):
        return lp.dfp_matmul(a, b)

    with pytest.raises(tf.errors.InvalidArgumentError, match="inner dimensions"):
        dynamic(tf.ones((2, 3)), tf.ones((4, 5)))


def test_op_rejects_values_that_are_not_dfp():
    e = tf.zeros([1, 1, 1], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="quantize_dfp"):
        load().lowprec_dfp_matmul(tf.fill([1, 1, 2], 0.5), e, tf.ones([1, 2, 1]), e)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gradient_runs_both_backward_gemms_in_dfp(ta, tb):
    m, k, n = 7, 45, 9
    a = tf.constant(rand((k, m) if ta else (m, k), 14))
    b = tf.constant(rand((n, k) if tb else (k, n), 15))
    g = rand((m, n), 16, scale=1e-3)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        y = lp.dfp_matmul(a, b, transpose_a=ta, transpose_b=tb)
        loss = tf.reduce_sum(y * g)
    da, db = tape.gradient(loss, [a, b])
    gq = np.asarray(lp.quantize_dfp(g))
    an, bn = a.numpy(), b.numpy()
    # d/da of sum(op(a) op(b) * g) = op(b) g^T reshaped: GEMMs of the quantized error.
    want_a = reference(gq, bn, tb=not tb) if not ta else reference(bn, gq, ta=tb, tb=True)
    want_b = reference(an, gq, ta=not ta) if not tb else reference(gq, an, ta=True, tb=ta)
    np.testing.assert_array_equal(bits(da), bits(want_a))
    np.testing.assert_array_equal(bits(db), bits(want_b))


def test_gradient_with_batch_broadcast():
    a = tf.constant(rand((3, 4, 20), 17))
    b = tf.constant(rand((20, 6), 18))
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = tf.reduce_sum(lp.dfp_matmul(a, b))
    da, db = tape.gradient(loss, [a, b])
    ones = np.ones((3, 4, 6), np.float32)
    want_b = sum(reference(a.numpy()[i], ones[i], ta=True).astype(np.float64) for i in range(3))
    np.testing.assert_array_equal(bits(da), bits(reference(ones, b.numpy(), tb=True)))
    # dW is the FP32 sum over the batch of the per-batch DFP GEMMs.
    np.testing.assert_allclose(np.asarray(db), want_b, rtol=1e-6)


def test_counters():
    dfp_gemm.dfp_gemm_counters(reset=True)
    a = np.full((2, 256), MAX_MANTISSA_VALUE, np.float32)
    lp.dfp_matmul(a, a.T.copy())
    c = dfp_gemm.dfp_gemm_counters(reset=True)
    assert c == {"calls": 1, "chains": 2 * 2 * 4, "overflowed": 16,
                 "recomputed_tiles": c["recomputed_tiles"]}
    assert dfp_gemm.dfp_gemm_counters()["calls"] == 0


# ---------------------------------------------------------------------------
# The accelerated tiers against portable, where their code differs from it:
# micro-tile edges (avx2: 6 x 16 tiles; avx512: 6 x 32/48/64), certified,
# tracked and recomputed chunks, the vectorized packing and fused rounding.

ACCELERATED = kernel_tiers.params("dfp_gemm", kernel_tiers.ACCELERATED)


def _both_paths(a, b, isa, ta=False, tb=False, chunk_size=64, fmt=lp.DFP16):
    """(bits, overflow count) of the unfused GEMM (quantize_dfp, then the op)
    and, for per-tensor formats, of the fused one (rounding in the packing)."""
    aq, ea = dfp_gemm.quantize_operand(tf.constant(a), fmt, -2 if ta else -1)
    bq, eb = dfp_gemm.quantize_operand(tf.constant(b), fmt, -1 if tb else -2)
    runs = [dfp_gemm.gemm_quantized(aq, ea, bq, eb, fmt, transpose_a=ta, transpose_b=tb,
                                    chunk_size=chunk_size, isa=isa)]
    if fmt.block_size is None:
        runs.append(dfp_gemm.gemm_fused(tf.constant(a), tf.constant(b), fmt, transpose_a=ta,
                                        transpose_b=tb, chunk_size=chunk_size, isa=isa))
    return [(bits(out), int(count)) for out, count in runs]


def _assert_tier_matches_portable(a, b, isa, **kwargs):
    for (got, got_count), (want, want_count) in zip(_both_paths(a, b, isa, **kwargs),
                                                    _both_paths(a, b, "portable", **kwargs)):
        np.testing.assert_array_equal(got, want)
        assert got_count == want_count


def _full_scale(shape, seed):
    """Uniform mantissas up to full scale: many INT32 chains of 64 overflow,
    others are certified or need their checkpoints."""
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_matches_portable_on_every_tile_edge(isa):
    a, b = _full_scale((13, 131), 21), _full_scale((131, 33), 22)
    a[4, :] *= 1e-3  # small rows: certified chains beside overflowing ones
    shapes = [(m, 33, 131) for m in range(1, 14)] + [(13, n, 131) for n in range(1, 34)]
    shapes += [(m, n, k) for m in (1, 6, 7) for n in (1, 15, 16, 17) for k in (1, 2, 3, 63, 65, 130)]
    for m, n, k in shapes:
        _assert_tier_matches_portable(a[:m, :k].copy(), b[:k, :n].copy(), isa)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_matches_portable_with_transposes_blocks_chunks_and_batches(isa):
    a, b = _full_scale((2, 1, 19, 150), 23), _full_scale((3, 150, 37), 24)
    a[..., 40:80] *= 1e-4  # blocks of very different magnitudes
    for ta, tb in [(False, False), (True, False), (False, True), (True, True)]:
        x = np.swapaxes(a, -1, -2).copy() if ta else a
        y = np.swapaxes(b, -1, -2).copy() if tb else b
        _assert_tier_matches_portable(x, y, isa, ta=ta, tb=tb)
    for block_size in (7, 32, 100):
        for chunk_size in (2, 6, 64, 512):
            _assert_tier_matches_portable(a[0], b[1], isa, chunk_size=chunk_size,
                                          fmt=lp.DfpFormat(16, block_size=block_size))


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_matches_portable_on_wide_b_and_large_outputs(isa):
    # 129 B panels: AVX2 packs them in groups of 32 (the last group one
    # partial panel); 2^21 outputs or more: AVX2 streams whole aligned
    # output lines (n = 2048: every row; n = 2063: only some lines).
    a, b = _full_scale((1030, 40), 27), _full_scale((40, 2063), 28)
    b[3, 2050] = np.nan  # a NaN column among the streamed outputs
    _assert_tier_matches_portable(a, b, isa)
    _assert_tier_matches_portable(a, np.swapaxes(b, 0, 1).copy(), isa, tb=True)
    _assert_tier_matches_portable(a[:1024], b[:, :2048].copy(), isa)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_matches_portable_with_subnormal_scales_nan_and_inf(isa):
    a, b = rand((13, 70), 25), rand((70, 33), 26, scale=1e-3)
    for scale in (1e-38, 1e-41):  # E below -126; below -125: the fused path falls back
        _assert_tier_matches_portable(a * np.float32(scale), b, isa)
    a[6, 69] = np.nan  # first row of the second 6-row tile
    b[0, 16] = np.inf  # first column of the second 16-column tile
    b[35, 32] = -np.inf  # the last column alone in its tile
    _assert_tier_matches_portable(a, b, isa)
    out = np.asarray(lp.dfp_matmul(a, b, isa=isa))
    assert np.isnan(out[6]).all() and np.isnan(out[:, [16, 32]]).all()
    assert np.isfinite(np.delete(np.delete(out, 6, 0), [16, 32], 1)).all()


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_adversarial_k_65536_exact_and_counted(isa):
    """Mantissas all +-32767 of one sign along whole rows and columns: the
    INT32 chains overflow (once per chunk of 64, and many times over when a
    chunk is all of K); the sums must still be exact."""
    k = 65536
    signs_a = np.ones((7, k), np.int64)
    signs_a[1] = -1
    signs_a[2, : k // 2] = -1  # climbs past INT32 and comes back down
    signs_a[3, 1::2] = -1
    signs_a[4, k // 3:] = 0
    signs_a[6, ::3] = -1
    signs_b = np.ones((k, 17), np.int64)
    signs_b[:, 1] = -1
    signs_b[1::2, 2] = -1
    signs_b[: k // 4, 3] = 0
    signs_b[k // 2:, 16] = -1  # the column alone in its 16-column tile
    ia, ib = 32767 * signs_a, 32767 * signs_b
    a = (ia * 2.0**-15).astype(np.float32)  # quantize_dfp keeps these: E = -15
    b = (ib * 2.0**-15).astype(np.float32)
    exact = ia @ ib  # INT64: |S| <= 65536 * 32767^2 < 2^47
    for chunk_size in (64, k):
        got, count = lp.dfp_matmul(a, b, isa=isa, chunk_size=chunk_size,
                                   return_overflow_count=True)
        want, want_count = lp.dfp_matmul(a, b, isa="portable", chunk_size=chunk_size,
                                         return_overflow_count=True)
        np.testing.assert_array_equal(bits(got), bits(want))
        assert int(count) == int(want_count) > 0
        if chunk_size == k:  # one chunk: out = float32(S) * 2^-30, exactly
            np.testing.assert_array_equal(np.asarray(got),
                                          exact.astype(np.float32) * np.float32(2.0**-30))
            # ...and the count is that of the chains some prefix of which leaves INT32.
            overflowed = 0
            for j in range(ib.shape[1]):
                prefix = np.cumsum(ia * ib[:, j], axis=1)
                overflowed += int(np.any((prefix > 2**31 - 1) | (prefix < -(2**31)), axis=1).sum())
            assert int(count) == overflowed
        else:  # dfp_gemm.h: FP32 sum, in chunk order, of float32(exact chunk sum)
            chunks = np.einsum("icq,jcq->ijc", ia.reshape(7, -1, 64), ib.T.reshape(17, -1, 64))
            acc = np.zeros((7, 17), np.float32)
            for c in range(chunks.shape[-1]):
                acc = acc + chunks[..., c].astype(np.float32)
            np.testing.assert_array_equal(np.asarray(got), acc * np.float32(2.0**-30))


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_tracked_chunks_at_the_coarse_sum_limit(isa):
    """Unproved chunks of 65,535 pairs (the longest whose exact sums AVX2 takes
    from a coarse sum beside the wrapping one) and of 65,536 pairs (counted
    wraps instead), with every pair sum at its extremes: exact and counted."""
    k = 131072
    signs_a = np.ones((6, k), np.int64)
    signs_a[1] = -1
    signs_a[2, : k // 2] = -1  # climbs past INT32 and comes back down
    signs_a[3, 1::2] = -1
    signs_a[4, k // 3:] = 0
    signs_a[5, ::5] = -1
    signs_b = np.ones((k, 3), np.int64)
    signs_b[:, 1] = -1
    signs_b[1::2, 2] = -1
    ia, ib = 32767 * signs_a, 32767 * signs_b
    a = (ia * 2.0**-15).astype(np.float32)
    b = (ib * 2.0**-15).astype(np.float32)
    for chunk_size in (131070, 131072):
        got, count = lp.dfp_matmul(a, b, isa=isa, chunk_size=chunk_size,
                                   return_overflow_count=True)
        want, want_count = lp.dfp_matmul(a, b, isa="portable", chunk_size=chunk_size,
                                         return_overflow_count=True)
        np.testing.assert_array_equal(bits(got), bits(want))
        assert int(count) == int(want_count) > 0


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_tracked_chains_at_the_int32_limits(isa):
    """Unproved chains whose prefixes end exactly at INT32_MAX / INT32_MIN or
    one past them, or step one past INT32_MAX and come back: AVX2 decides most
    tracked chains from coarse sums, which leave such chains undecided (they
    are recomputed with the per-step sign test); exact and counted."""
    k = 64
    ia = np.zeros((6, k), np.int64)
    ia[0, :63], ia[0, 63] = 32767, 1
    ia[1, :], ia[1, 3] = 32767, 1
    ia[2:] = np.random.default_rng(31).integers(-32767, 32768, (4, k))
    ib = np.zeros((k, 6), np.int64)
    for j, last in enumerate((1, 2)):  # pair sums: 2 * 32767^2, 4 * 32767, ..., last
        ib[:3, j], ib[63, j] = (32767, 32767, 4), last
    for j, last in enumerate((-2, -3), 2):
        ib[:3, j], ib[63, j] = (-32767, -32767, -4), last
    ib[:5, 4] = (32767, 32767, 4, 2, -32767)  # row 1: INT32_MAX + 1, then back down
    ib[:, 5] = 32767
    a = (ia * 2.0**-15).astype(np.float32)  # quantize_dfp keeps these: E = -15
    b = (ib * 2.0**-15).astype(np.float32)
    pair_sums = (ia[:, None, :] * ib.T[None]).reshape(6, 6, k // 2, 2).sum(-1)
    prefix = np.cumsum(pair_sums, axis=-1)
    left = np.any((prefix > 2**31 - 1) | (prefix < -(2**31)), axis=-1)
    assert prefix[0, :4, -1].tolist() == [2**31 - 1, 2**31, -(2**31), -(2**31) - 1]
    assert left[0, :4].tolist() == [False, True, False, True] and left[1, 4]
    got, count = lp.dfp_matmul(a, b, isa=isa, return_overflow_count=True)
    want, want_count = reference(a, b, count=True)
    np.testing.assert_array_equal(bits(got), bits(want))
    assert int(count) == want_count == int(left.sum())
    np.testing.assert_array_equal(np.asarray(got),
                                  prefix[..., -1].astype(np.float32) * np.float32(2.0**-30))



@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_lanes_with_contiguous_k(isa):
    """A row-major a and a transposed b hold each lane's K values back to
    back: the VNNI tier packs them 16 pairs x 16 lanes at a time, transposed
    in registers.  Every K tail of the 32-value steps, odd K, lane counts that
    are not multiples of 6 or 16, NaN and Inf in single lanes, per-block
    exponents and the checked (unfused) conversion: portable's bits and
    counts."""
    rng = np.random.default_rng(53)
    for k in (1, 2, 31, 32, 33, 63, 1025):
        for m, n in ((7, 17), (13, 50)):
            a = _full_scale((m, k), int(rng.integers(1 << 30)))
            b = _full_scale((n, k), int(rng.integers(1 << 30)))
            _assert_tier_matches_portable(a, b, isa, tb=True)
    a, b = _full_scale((11, 100), 54), _full_scale((49, 100), 55)
    a[3, 40], b[17, 99], b[48, 0] = np.nan, np.inf, -np.inf
    _assert_tier_matches_portable(a, b, isa, tb=True)
    fmt = lp.DfpFormat(bits=16, block_size=32)
    a, b = _full_scale((9, 96), 56), _full_scale((33, 96), 57)
    a[:, 32:64] *= 1e-3  # a block with another exponent
    _assert_tier_matches_portable(a, b, isa, tb=True, fmt=fmt)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_large_outputs_streamed(isa):
    """Outputs of 2^21 elements or more with one exponent block are written
    with streaming stores where a tile row covers whole aligned lines (AVX2,
    AVX-512); rows of 1000 columns are aligned only every 16th row.  The same
    bits as portable."""
    rng = np.random.default_rng(47)
    for m, n in ((2048, 1024), (2100, 1000)):
        a = rng.standard_normal((m, 12)).astype(np.float32)
        b = rng.standard_normal((12, n)).astype(np.float32)
        got = lp.dfp_matmul(a, b, isa=isa)
        want = lp.dfp_matmul(a, b, isa="portable")
        np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_chunks_that_fail_after_a_proved_first_segment(isa):
    """Chunks whose first 16 elements are small (a proved first segment) and
    whose rest is full scale and of one sign: the checkpoints fail, the
    tracked chains saturate and the whole micro-tile chunk is computed again
    (VNNI: on the split chains up to 512 pairs, in INT64 past them; AVX2:
    its coarse sums, nothing recomputed).  Exact and counted, against
    portable; on VNNI the recomputations are counted once per micro-tile
    chunk."""
    rng = np.random.default_rng(43)
    a = rng.uniform(0.5, 1, (13, 4100)).astype(np.float32)
    b = rng.uniform(0.5, 1, (4100, 70)).astype(np.float32)
    for chunk_size in (64, 2048):
        head = (np.arange(a.shape[1]) % chunk_size) < 16
        a[:, head] *= 1e-3
        b[head] *= 1e-3
        dfp_gemm.dfp_gemm_counters(reset=True)
        out, count = lp.dfp_matmul(a, b, isa=isa, chunk_size=chunk_size, return_overflow_count=True)
        recomputed = dfp_gemm.dfp_gemm_counters(reset=True)["recomputed_tiles"]
        want, want_count = lp.dfp_matmul(a, b, isa="portable", chunk_size=chunk_size,
                                         return_overflow_count=True)
        np.testing.assert_array_equal(bits(out), bits(want))
        assert int(count) == int(want_count) > 0
        if isa == "avx512":
            # At most 3 x 3 micro-tiles (6 rows x 32 or 48 columns) per chunk.
            tiles = 3 * 3 * -(-a.shape[1] // chunk_size)
            assert 0 < recomputed <= tiles
        a[:, head] *= 1e3
        b[head] *= 1e3


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_unproved_first_segments_of_non_negative_operands(isa):
    """A full-scale non-negative operand (ReLU outputs, pixels) times a
    signed one: no segment of a chunk of 64 can be proved and many chains
    really overflow, so every chunk is tracked from its start (VNNI: the split
    chains of a >> 2 and a for chunks up to 1,024 elements, the coarse sums
    for longer ones; prefixes near the limits and saturated chains of a >> 2
    recomputed in INT64).  Odd K: chunks of every length up to the last.
    Exact and counted, against portable."""
    rng = np.random.default_rng(41)
    a = rng.uniform(0, 1, (13, 2051)).astype(np.float32)
    b = rng.uniform(-1, 1, (2051, 70)).astype(np.float32)
    a[3] = 1.0  # with the all-positive column below: the chains of a >> 2 saturate
    b[:, 5] = 1.0
    for chunk_size in (64, 66, 1024, 2048):
        out, count = lp.dfp_matmul(a, b, isa=isa, chunk_size=chunk_size, return_overflow_count=True)
        want, want_count = lp.dfp_matmul(a, b, isa="portable", chunk_size=chunk_size,
                                         return_overflow_count=True)
        np.testing.assert_array_equal(bits(out), bits(want))
        assert int(count) == int(want_count) > 0
    a, b = a[:, :300], b[:300]
    _assert_tier_matches_portable(a.T.copy(), b, isa, ta=True)
    _assert_tier_matches_portable(a, b.T.copy(), isa, tb=True)


@pytest.mark.parametrize("isa", ACCELERATED)
def test_tier_transposed_a_panels_with_odd_k_nan_and_inf(isa):
    """A stored transposed (lanes contiguous for each k: packed 8 panels of 6
    rows at a time): odd K (a zero high half in the last pair word), a
    partial last group and panel, NaN and Inf rows, per-block exponents;
    fused and two-step rounding, against portable."""
    a, b = _full_scale((131, 57), 51), _full_scale((131, 21), 52)  # op(a) = a.T: 57 x 131
    _assert_tier_matches_portable(a, b, isa, ta=True)
    _assert_tier_matches_portable(a[:, :14].copy(), b, isa, ta=True,
                                  fmt=lp.DfpFormat(16, block_size=32))
    a[130, 7] = np.nan  # the last (odd) k of row 7
    a[3, 55] = -np.inf  # row 55: in the partial last panel (rows 54..56) of the second group
    _assert_tier_matches_portable(a, b, isa, ta=True)
    out = np.asarray(lp.dfp_matmul(a, b, transpose_a=True, isa=isa))
    assert np.isnan(out[[7, 55]]).all() and np.isfinite(np.delete(out, [7, 55], 0)).all()

@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("block_size", [None, 32])
def test_wide_b_packed_in_groups_of_panels(tb, block_size):
    """b is packed several panels at a time (128+ columns): groups with a
    partial last panel and a partial last group, per-column exponents."""
    fmt = lp.DfpFormat(16, block_size=block_size)
    a = rand((13, 150), 27)
    b = rand((261, 150) if tb else (150, 261), 28)
    b[..., 200:] *= 1e-3  # columns of very different magnitudes
    b[(250, 7) if tb else (7, 250)] = np.nan  # a column of the last group
    want = reference(a, b, fmt, tb=tb)
    for isa in ISAS:
        got = lp.dfp_matmul(a, b, fmt, transpose_b=tb, isa=isa)
        np.testing.assert_array_equal(bits(got), bits(want))
