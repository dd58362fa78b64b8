"""The DFP GEMMs keep subnormal results, on every tier, whatever TensorFlow's FTZ/DAZ mode.

TensorFlow runs kernels with denormals flushed (MXCSR FTZ and DAZ on x86);
the GEMM kernels compute in IEEE mode instead (float_environment.h), so a
product of operands at 2^-70 is 2^-138 as docs/dfp_gemm.md promises, in the
fused and the unfused op alike.
"""

import numpy as np
import pytest

import kernel_tiers
import tf_lowprec as lp

TIERS = kernel_tiers.params("dfp_gemm")


def _expected(a, b):
    """float32 of the exact product of exactly representable small operands (float64 is
    exact here: K is small and every product is a power of two times a short integer)."""
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


@pytest.mark.parametrize("isa", TIERS)
@pytest.mark.parametrize("scale", [-70, -75, -66])
def test_subnormal_products_are_kept(isa, scale):
    rng = np.random.default_rng(-scale)
    a = (rng.integers(-8, 9, (5, 6)) * 2.0**scale).astype(np.float32)
    b = (rng.integers(-8, 9, (6, 7)) * 2.0**scale).astype(np.float32)
    expected = _expected(a, b)
    assert ((np.abs(expected) < 2.0**-126) & (expected != 0)).any()  # some are subnormal
    quantized = lp.dfp_matmul(a, b, isa=isa, implementation="op").numpy()
    np.testing.assert_array_equal(quantized, expected)


@pytest.mark.parametrize("isa", TIERS)
def test_fused_op_keeps_subnormal_products(isa):
    from tf_lowprec._op_library import load

    a = np.full((1, 2, 4), 2.0**-70, np.float32)
    b = np.full((1, 4, 3), 2.0**-70, np.float32)
    product, _ = load().lowprec_dfp_matmul_fused(a, b, isa=isa)
    np.testing.assert_array_equal(product.numpy()[0], np.full((2, 3), 2.0**-138, np.float32))


@pytest.mark.parametrize("isa", TIERS)
def test_subnormal_operands_are_read(isa):
    """Operands that are themselves float32 subnormals (quantize_dfp's outputs at tiny
    scale) are not read as zero (DAZ)."""
    a = np.array([[2.0**-140, 3 * 2.0**-140]], np.float32)
    b = np.array([[2.0**60], [2.0**60]], np.float32)
    np.testing.assert_array_equal(lp.dfp_matmul(a, b, isa=isa, implementation="op").numpy(),
                                  np.array([[2.0**-78]], np.float32))
