"""dfp_conv2d: forward and both backward passes against references built from dfp_matmul."""

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import reference as reference_gemm
from conv_testing import im2col_tf as im2col, rand


def per_tensor(x):
    q, e = lp.quantize_dfp(x, return_exponents=True)
    return np.asarray(q), np.full((1, 1, 1), np.asarray(e).reshape(-1)[0])


def gemm_ref(a, b):
    """Reference DFP GEMM of two float operands (each quantized per tensor)."""
    (aq, ea), (bq, eb) = per_tensor(a), per_tensor(b)
    return reference_gemm.dfp_matmul_quantized(aq, ea, bq, eb)


CASES = [
    # (x shape, filter shape, strides, padding, dilations)
    ((2, 9, 8, 3), (3, 3, 3, 5), (1, 1), "VALID", (1, 1)),
    ((1, 10, 11, 4), (3, 2, 4, 6), (2, 3), "SAME", (1, 1)),
    ((2, 12, 12, 2), (3, 3, 2, 4), (1, 1), "SAME", (2, 2)),
    ((1, 13, 9, 3), (2, 3, 3, 7), (2, 1), "VALID", (2, 3)),
]


@pytest.mark.parametrize("xs,ws,strides,padding,dilations", CASES)
def test_forward_and_backward_against_dfp_matmul_reference(xs, ws, strides, padding, dilations):
    x = tf.constant(rand(xs, 1))
    w = tf.constant(rand(ws, 2, scale=0.2))
    g = rand((1,), 3)  # replaced below once the output shape is known
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = lp.dfp_conv2d(x, w, strides, padding, dilations)
        g = rand(y.shape, 3, scale=1e-2)
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])

    kh, kw, cin, cout = ws
    xq = np.asarray(lp.quantize_dfp(x))
    wq = np.asarray(lp.quantize_dfp(w)).reshape(kh * kw * cin, cout)
    cols, (n, oh, ow) = im2col(xq, kh, kw, strides, padding, dilations)
    want_y = gemm_ref(cols, wq).reshape(n, oh, ow, cout)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    # Sanity: the DFP16 conv is within DFP16's error of the FP32 one.
    fp32 = tf.nn.conv2d(x, w, strides, padding, dilations=dilations)
    np.testing.assert_allclose(np.asarray(y), np.asarray(fp32), atol=2e-3 * np.abs(fp32).max())

    gq = np.asarray(lp.quantize_dfp(g)).reshape(-1, cout)
    want_dw = gemm_ref(cols.T.copy(), gq).reshape(ws)
    np.testing.assert_array_equal(np.asarray(dw), want_dw)

    dcols = gemm_ref(gq, wq.T.copy())  # INT16 GEMM of the error, then col2im in FP32
    want_dx = np.zeros(xs, np.float64)
    idx, _ = im2col(np.arange(np.prod(xs), dtype=np.float32).reshape(xs) + 1, kh, kw,
                    strides, padding, dilations)
    idx = idx.astype(np.int64) - 1  # source element of each patch entry (-1: padding)
    valid = idx >= 0
    np.add.at(want_dx.reshape(-1), idx[valid], dcols[valid].astype(np.float64))
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-7)


def test_both_isas_agree():
    x, w = rand((2, 16, 16, 8), 4), rand((3, 3, 8, 16), 5)
    a = lp.dfp_conv2d(x, w, padding="SAME", isa="portable")
    b = lp.dfp_conv2d(x, w, padding="SAME")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_input():
    x, w = np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="channels"):
        lp.dfp_conv2d(x, np.ones((3, 3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="padding"):
        lp.dfp_conv2d(x, w, padding="FULL")
    with pytest.raises(ValueError, match="strides"):
        lp.dfp_conv2d(x, w, strides=0)
    with pytest.raises(ValueError, match="dilations"):
        lp.dfp_conv2d(x, w, dilations=(1, 2, 3))
    with pytest.raises(ValueError, match="block_size"):
        lp.dfp_conv2d(x, w, fmt=lp.DfpFormat(16, block_size=8))
    with pytest.raises(ValueError, match="x must be"):
        lp.dfp_conv2d(np.ones((5, 5, 2), np.float32), w)
    with pytest.raises(ValueError, match="float32"):
        lp.dfp_conv2d(x.astype(np.int32), w)
