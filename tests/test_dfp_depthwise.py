"""The direct DFP16 depthwise kernels (LowprecDfpDepthwiseConv2d and its filter gradient).

References written out in NumPy from quantize_dfp's mantissas: im2col
patches, exact int64 sums per chunk of `chunk_size` K indices, FP32 sums of
the chunk sums in K order, one scaling by 2^(E_a + E_b) (docs/dfp_gemm.md).
Forward and d(filters) must also equal the grouped INT16 GEMM they replace
(`conv2d_as_gemm` on `dfp_matmul`) bit for bit; d(x) is the dilated error's
depthwise convolution with the flipped filters (K = kh * kw * M).
"""

import numpy as np
import pytest
import tensorflow as tf

import kernel_tiers
import tf_lowprec as lp
from conv_testing import im2col, pads_of, rand
from tf_lowprec.gemm import common as gemm_common
from tf_lowprec.gemm.implicit_conv import input_gradient_pads


def mantissas(v):
    """quantize_dfp(v)'s INT16 mantissas (as int64) and exponent."""
    q, e = lp.quantize_dfp(v, return_exponents=True)
    e = int(np.asarray(e).reshape(-1)[0])
    scale = 0.0 if e == -1024 else 2.0 ** -e
    return np.rint(np.asarray(q, np.float64) * scale).astype(np.int64), e


def chunked(products, chunk, ea, eb):
    """The GEMM's arithmetic over the last axis (K) of exact integer products."""
    k = products.shape[-1]
    acc = np.zeros(products.shape[:-1], np.float32)
    for start in range(0, max(k, 1), chunk):
        s = products[..., start:start + chunk].sum(axis=-1)  # exact (int64)
        acc = (acc + s.astype(np.float32)).astype(np.float32)
    return ((acc.astype(np.float64) * 2.0 ** ea) * 2.0 ** eb).astype(np.float32)


def reference(x, w, dy, strides, padding, dilations, chunk):
    """(y, d(x), d(filters)) of the depthwise conv of x [N,H,W,C], w [kh,kw,C,M], error dy."""
    kh, kw, c, m = w.shape
    (ix, ex), (iw, ew), (idy, edy) = mantissas(x), mantissas(w), mantissas(dy)
    pads = [p for size, k, s, d in zip(x.shape[1:3], (kh, kw), strides, dilations)
            for p in pads_of(size, k, s, d, padding)[:2]]
    cols, (n, oh, ow) = im2col(ix.astype(np.float32), kh, kw, strides, pads, dilations)
    cols = cols.astype(np.int64).reshape(-1, kh * kw, c)  # [P, T, C]
    taps = iw.reshape(kh * kw, c, m)
    # forward: [P, C, M, T]; the grouped GEMM's a = the filters, b = the patches
    y = chunked(cols.transpose(0, 2, 1)[:, :, None, :] * taps.transpose(1, 2, 0)[None], chunk,
                ew, ex).reshape(n, oh, ow, c * m)
    # d(filters): [T, C, M, P]; a = the error, b = the patches
    e = idy.reshape(-1, c, m)
    dw = chunked(cols.transpose(1, 2, 0)[:, :, None, :] * e.transpose(1, 2, 0)[None], chunk,
                 edy, ex).reshape(kh, kw, c, m)
    # d(x): the error dilated by the strides, padded, with the flipped filters; K = (i, j, m)
    dilated = np.zeros((n, (oh - 1) * strides[0] + 1, (ow - 1) * strides[1] + 1, c * m),
                       np.float32)
    dilated[:, ::strides[0], ::strides[1]] = idy
    dx_pads = [p for size, k, s, d, before, out in zip(
        x.shape[1:3], (kh, kw), strides, dilations, pads[::2], (oh, ow))
        for p in input_gradient_pads(size, k, s, d, before, out)]
    dcols, _ = im2col(dilated, kh, kw, (1, 1), dx_pads, dilations)
    dcols = dcols.astype(np.int64).reshape(-1, kh * kw, c, m)  # [Px, T, C, M]
    flipped = iw[::-1, ::-1].reshape(kh * kw, c, m)
    products = (dcols * flipped[None]).transpose(0, 2, 1, 3).reshape(-1, c, kh * kw * m)
    dx = chunked(products, chunk, edy, ew).reshape(x.shape)
    return y, dx, dw


def run(x, w, strides, padding, dilations, dy, **options):
    """y, d(x), d(filters) of lp.dfp_conv2d as a depthwise conv (w [kh, kw, C, M])."""
    kh, kw, c, m = w.shape
    x, w4 = tf.constant(x), tf.constant(w.reshape(kh, kw, 1, c * m))
    with tf.GradientTape() as tape:
        tape.watch([x, w4])
        y = lp.dfp_conv2d(x, w4, strides, padding, dilations, groups=c, **options)
        loss = tf.reduce_sum(y * dy)
    dx, dw = tape.gradient(loss, [x, w4])
    return np.asarray(y), np.asarray(dx), np.asarray(dw).reshape(w.shape)


CASES = [
    # (x shape, filters [kh, kw, C, M], strides, padding, dilations, chunk_size)
    ((2, 7, 6, 5), (3, 3, 5, 1), (1, 1), "SAME", (1, 1), 64),
    ((1, 8, 7, 3), (3, 2, 3, 2), (2, 1), "VALID", (1, 2), 64),
    ((2, 9, 9, 4), (3, 3, 4, 3), (2, 2), "SAME", (2, 1), 4),  # chunks split (tap, m)
    ((3, 5, 6, 17), (2, 3, 17, 1), (3, 2), "SAME", (1, 1), 2),  # odd lanes, tiny chunks
    ((1, 6, 6, 2), (1, 1, 2, 2), (3, 3), "VALID", (1, 1), 64),  # inputs outside every patch
]


@pytest.mark.parametrize("isa", kernel_tiers.params("rounding"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations,chunk", CASES)
def test_matches_written_out_int16_reference(isa, xs, ws, strides, padding, dilations, chunk):
    x, w = rand(xs, 1), rand(ws, 2, scale=0.3)
    dy_shape = lp.dfp_conv2d(x, w.reshape(ws[0], ws[1], 1, -1), strides, padding, dilations,
                             groups=ws[2]).shape
    dy = rand(dy_shape, 3, scale=1e-2)
    y, dx, dw = run(x, w, strides, padding, dilations, dy, chunk_size=chunk, isa=isa)
    want_y, want_dx, want_dw = reference(x, w, dy, strides, padding, dilations, chunk)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dw, want_dw)
    np.testing.assert_array_equal(dx, want_dx)
    # Sanity: close to the float64 convolution.
    kh, kw, c, m = ws
    pads = [p for size, k, s, d in zip(xs[1:3], (kh, kw), strides, dilations)
            for p in pads_of(size, k, s, d, padding)[:2]]
    cols, _ = im2col(x, kh, kw, strides, pads, dilations)
    exact = np.einsum("ptc,tcm->pcm", cols.reshape(-1, kh * kw, c).astype(np.float64),
                      w.reshape(kh * kw, c, m)).reshape(y.shape)
    np.testing.assert_allclose(y, exact, atol=1e-3 * np.abs(exact).max())


@pytest.mark.parametrize("xs,ws,strides,padding,dilations,chunk", CASES[:3])
def test_forward_and_filter_gradient_equal_the_grouped_gemm(xs, ws, strides, padding,
                                                            dilations, chunk):
    """The bits of the grouped INT16 GEMM they replace (conv2d_as_gemm on dfp_matmul)."""
    x, w = rand(xs, 4), rand(ws, 5, scale=0.3)
    kh, kw, c, m = ws
    w4 = w.reshape(kh, kw, 1, c * m)
    xq, wq = tf.constant(lp.quantize_dfp(x)), tf.constant(lp.quantize_dfp(w4))
    dy = rand(lp.dfp_conv2d(x, w4, strides, padding, dilations, groups=c).shape, 6, 1e-2)
    with tf.GradientTape() as tape:
        tape.watch(wq)
        old = gemm_common.conv2d_as_gemm(
            lambda a, b: lp.dfp_matmul(a, b, chunk_size=chunk), xq, wq, strides, padding,
            dilations, groups=c)
        loss = tf.reduce_sum(old * dy)
    old_dw = tape.gradient(loss, wq)
    y, _, dw = run(x, w, strides, padding, dilations, dy, chunk_size=chunk)
    np.testing.assert_array_equal(y, np.asarray(old))
    np.testing.assert_array_equal(dw, np.asarray(old_dw).reshape(ws))


def test_counts_one_gemm_call_per_op():
    x, w = rand((2, 6, 6, 4), 7), rand((3, 3, 1, 4), 8)
    lp.dfp_gemm_counters(reset=True)
    run(x, w.reshape(3, 3, 4, 1), (1, 1), "SAME", (1, 1), np.ones((2, 6, 6, 4), np.float32))
    counters = lp.dfp_gemm_counters()
    assert counters["calls"] == 3  # forward, d(x), d(filters): the GEMMs they replace
    # chains: outputs x chunks (one chunk each here: K = 9, 9 and 72 <= 64 + 8)
    assert counters["chains"] == 2 * 36 * 4 + 2 * 36 * 4 + 9 * 4 * 2


def test_nan_and_inf_reach_exactly_the_outputs_they_touch():
    x = rand((1, 5, 5, 3), 9)
    w = rand((3, 3, 3, 2), 10)
    x[0, 0, 0, 1] = np.nan
    w[1, 1, 2, 0] = np.inf
    dy = rand((1, 5, 5, 6), 11, 1e-2)
    y, dx, dw = run(x, w, (1, 1), "SAME", (1, 1), dy)
    bad_y = np.zeros(y.shape, bool)
    bad_y[0, :2, :2, 1 * 2: 1 * 2 + 2] = True  # the patches holding x[0, 0, 0, 1]
    bad_y[..., 2 * 2 + 0] = True  # the Inf's filter column
    np.testing.assert_array_equal(np.isnan(y), bad_y)
    # d(filters): every tap that reads x[0, 0, 0, 1] for channel 1; the Inf is in w only
    bad_dw = np.zeros(dw.shape, bool)
    bad_dw[:2, :2, 1, :] = True
    np.testing.assert_array_equal(np.isnan(dw), bad_dw)
    # d(x): channel 2 reads the Inf's filter column everywhere
    assert np.isnan(dx[..., 2]).all() and np.isfinite(dx[..., :2]).all()
    # Finite outputs equal the reference with the bad values' rows left out.
    x0, w0 = x.copy(), w.copy()
    x0[0, 0, 0, 1], w0[1, 1, 2, 0] = 0, 0
    want_y, _, _ = reference(x0, w0, dy, (1, 1), "SAME", (1, 1), 64)
    np.testing.assert_array_equal(y[~bad_y], want_y[~bad_y])


def _op(name, *args, **attrs):
    ops = lp._op_library.load()
    return getattr(ops, name)(*args, **attrs)


@pytest.mark.parametrize("name,args,attrs,match", [
    ("lowprec_dfp_depthwise_conv2d", ((1, 5, 5, 3), (3, 3, 2, 1)), {}, "x must have 2 channels"),
    ("lowprec_dfp_depthwise_conv2d", ((1, 5, 5, 3), (3, 3, 3, 2)),
     {"reduce_multiplier": True}, "x must have 6 channels"),
    ("lowprec_dfp_depthwise_conv2d", ((1, 5, 5, 3), (3, 3, 3, 1)), {"chunk_size": 3},
     "chunk_size must be an even number"),
    ("lowprec_dfp_depthwise_conv2d", ((1, 5, 5, 3), (3, 3, 3, 1)), {"strides": [1, 0]},
     "strides must be 2 positive ints"),
    ("lowprec_dfp_depthwise_conv2d", ((1, 5, 5, 3), (3, 3, 3, 1)), {"pads": [1, 1]},
     "pads must be 4 ints"),
    ("lowprec_dfp_depthwise_conv2d", ((1, 5, 5, 3), (3, 3, 3, 1)), {"bits": 20},
     "bits must be at most 16"),
    ("lowprec_dfp_depthwise_conv2d", ((5, 5, 3), (3, 3, 3, 1)), {}, "x must have rank 4"),
    ("lowprec_dfp_depthwise_conv2d_backprop_filter", ((1, 5, 5, 3), (1, 3, 3, 4)),
     {"filter_size": [3, 3]}, "dy must have a positive multiple of x's 3 channels"),
    ("lowprec_dfp_depthwise_conv2d_backprop_filter", ((1, 5, 5, 3), (1, 4, 3, 3)),
     {"filter_size": [3, 3]}, r"dy must have shape \[1, 3, 3"),
    ("lowprec_dfp_depthwise_conv2d_backprop_filter", ((1, 5, 5, 3), (1, 3, 3, 3)),
     {"filter_size": [3]}, "filter_size must be 2"),
])
def test_bad_arguments_name_the_argument(name, args, attrs, match):
    tensors = [np.ones(shape, np.float32) for shape in args]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=match):
        _op(name, *tensors, **attrs)


def test_bad_isa_is_refused():
    with pytest.raises(tf.errors.InvalidArgumentError, match="isa='avx9'|isa"):
        _op("lowprec_dfp_depthwise_conv2d", np.ones((1, 3, 3, 1), np.float32),
            np.ones((1, 1, 1, 1), np.float32), isa="avx9")


def test_keras_depthwise_layer_under_dfp16_runs_the_direct_kernels():
    """DepthwiseConv2D under the dfp16 policy reaches the new op (no im2col patches)."""
    import keras

    keras.utils.set_random_seed(0)
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)
    layer.dtype_policy = lp.Policy("dfp16")
    x = tf.constant(rand((2, 6, 5, 3), 12))
    layer.build(x.shape)
    graph = tf.function(lambda v: layer(v)).get_concrete_function(x).graph
    kinds = {op.type for op in graph.get_operations()}
    assert "LowprecDfpDepthwiseConv2d" in kinds and "ExtractImagePatches" not in kinds


@pytest.mark.parametrize("rounding", ["stochastic", "toward_zero"])
def test_other_roundings(rounding):
    """x, the filters (and the error) quantized once with the grouped path's seeds.

    Forward and d(W) equal the stock-TF grouped path's bits, except that a
    stochastically rounded error is drawn in dy's own NHWC layout (seed + [0, 2])
    where the grouped GEMM drew it in its transposed [C, M, pixels] layout: the
    d(W) reference rounds dy so.
    """
    from tf_lowprec.numerics import rounding as rounding_lib

    x, w4 = rand((2, 6, 5, 3), 13), rand((3, 3, 1, 6), 14, scale=0.3)
    dy = rand((2, 6, 5, 6), 15, 1e-2)
    results = []
    for implementation in ("auto", "tf"):
        xv, wv = tf.constant(x), tf.constant(w4)
        with tf.GradientTape() as tape:
            tape.watch([xv, wv])
            y = lp.dfp_conv2d(xv, wv, 1, "SAME", groups=3, rounding=rounding, seed=7,
                              backward_rounding=rounding, implementation=implementation)
            loss = tf.reduce_sum(y * dy)
        results.append((np.asarray(y), np.asarray(tape.gradient(loss, wv)).reshape(3, 3, 3, 2)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    if rounding == "toward_zero":
        np.testing.assert_array_equal(results[0][1], results[1][1])
    seed = rounding_lib.seed_tensor(7, rounding)
    xq = np.asarray(lp.quantize_dfp(x, lp.DFP16, rounding, seed=seed))
    wq = np.asarray(lp.quantize_dfp(w4, lp.DFP16, rounding, seed=seed + [0, 1]))
    dyq = np.asarray(lp.quantize_dfp(dy, lp.DFP16, rounding, seed=seed + [0, 2]))
    _, _, want_dw = reference(xq, wq.reshape(3, 3, 3, 2), dyq, (1, 1), "SAME", (1, 1), 64)
    np.testing.assert_array_equal(results[0][1], want_dw)
