"""The fused DFP GEMM (quantize_dfp inside the packing) against the two-step path.

`dfp_matmul` with nearest_even rounding and one exponent per tensor runs
`LowprecDfpMatmulFused`, which rounds the operands itself; it must give the
results and overflow counts of `quantize_dfp` followed by `LowprecDfpMatmul`
bit for bit, including where it falls back to rounding into temporaries
(exponents outside [-125, 125]).  Runtime: ~3 s.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import dfp as dfp_gemm
from tf_lowprec._op_library import load
from test_dfp_matmul import ISAS, bits, rand, reference


def two_step(a, b, fmt, ta=False, tb=False, isa="auto", chunk_size=64):
    aq, ea = dfp_gemm.quantize_operand(tf.constant(a), fmt, -2 if ta else -1)
    bq, eb = dfp_gemm.quantize_operand(tf.constant(b), fmt, -1 if tb else -2)
    return dfp_gemm.gemm_quantized(aq, ea, bq, eb, fmt, transpose_a=ta, transpose_b=tb,
                                   isa=isa, chunk_size=chunk_size)


def fused(a, b, fmt, ta=False, tb=False, isa="auto", chunk_size=64):
    return dfp_gemm.gemm_fused(tf.constant(a), tf.constant(b), fmt, transpose_a=ta,
                               transpose_b=tb, isa=isa, chunk_size=chunk_size)


def assert_same(got, want):
    np.testing.assert_array_equal(bits(got[0]), bits(want[0]))
    assert int(got[1]) == int(want[1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
def test_fused_equals_two_step(isa, ta, tb):
    a = rand((2, 70, 31) if ta else (2, 31, 70), 1)
    b = rand((1, 9, 70) if tb else (1, 70, 9), 2, scale=3e-3)
    a[0, 3, 5] = 2e-41  # a subnormal beside normal values
    b[0, 4, 6] = -np.inf  # its column becomes NaN
    a[1, 7, 2] = np.nan
    for fmt in (lp.DFP16, lp.DfpFormat(12, extra_shift=2), lp.DfpFormat(8)):
        assert_same(fused(a, b, fmt, ta, tb, isa), two_step(a, b, fmt, ta, tb, isa))


@pytest.mark.parametrize("isa", ISAS)
def test_fused_falls_back_outside_the_exact_exponent_range(isa):
    tiny = rand((5, 40), 3, scale=1e-39)  # subnormal maximum: E < -125
    huge = rand((40, 6), 4, scale=1e38)  # bits=2: E = 127 > 125
    normal = rand((40, 6), 5)
    for a, b, fmt in ((tiny, normal, lp.DFP16), (normal.T.copy(), huge, lp.DfpFormat(2))):
        assert_same(fused(a, b, fmt, isa=isa), two_step(a, b, fmt, isa=isa))
    zeros = np.zeros((5, 40), np.float32)  # no exponent at all
    assert_same(fused(zeros, normal, lp.DFP16, isa=isa), two_step(zeros, normal, lp.DFP16, isa=isa))


@pytest.mark.parametrize("isa", ISAS)
def test_fused_saturates_as_quantize_dfp_near_float32_max(isa):
    """A row holding FLT_MAX: quantize_dfp saturates it to 16383 * 2^114
    (not Inf), and the fused packing clamps its mantissa to the same 16383,
    so both paths give the same finite products."""
    a = rand((3, 20), 8)
    a[1, 4] = np.finfo(np.float32).max
    a[2, 7] = -np.finfo(np.float32).max
    b = rand((20, 5), 9, scale=1e-30)
    want = two_step(a, b, lp.DFP16, isa=isa)
    assert np.all(np.isfinite(np.asarray(want[0])))
    assert_same(fused(a, b, lp.DFP16, isa=isa), want)
    np.testing.assert_array_equal(bits(want[0]), bits(reference(a, b)))


def test_full_scale_gaussian_long_k_matches_reference():
    """Full-scale Gaussian operands: most chunk proofs need their checkpoints,
    some fail and finish with tracked steps; some chunks really overflow."""
    a, b = rand((36, 4096), 6), rand((4096, 96), 7)
    a *= 3.99 / np.abs(a).max()  # largest mantissa ~32700 (full scale), sigma ~6900
    b *= 3.99 / np.abs(b).max()
    want, count = reference(a, b, count=True, chunk_size=512)
    assert count > 0
    for isa in ISAS:
        got, overflowed = lp.dfp_matmul(a, b, isa=isa, chunk_size=512, return_overflow_count=True)
        np.testing.assert_array_equal(bits(got), bits(want))
        assert int(overflowed) == count
    want64 = reference(a, b)
    for isa in ISAS:
        np.testing.assert_array_equal(bits(lp.dfp_matmul(a, b, isa=isa)), bits(want64))


def test_fused_op_rejects_bad_attributes():
    a, b = tf.zeros([1, 2, 4]), tf.zeros([1, 4, 3])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="bits"):
        load().lowprec_dfp_matmul_fused(a, b, bits=20)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="chunk_size"):
        load().lowprec_dfp_matmul_fused(a, b, chunk_size=3)
    with pytest.raises(ValueError, match="one exponent per tensor"):
        dfp_gemm.gemm_fused(a, b, lp.DfpFormat(16, block_size=2))
