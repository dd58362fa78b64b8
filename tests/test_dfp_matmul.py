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
