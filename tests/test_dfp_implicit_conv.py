"""dfp_conv2d as implicit INT16 GEMMs: bit-exact against written-out NumPy references.

Forward and d(filters) are the GEMMs of the materialized patch matrix (the
im2col path's bits); d(x) is one INT16 GEMM of the dilated, padded error's
patches with the flipped filters (INT32 chunk sums over kh * kw * O).
Every kernel tier this CPU runs; the others are skipped naming the ISA.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec._op_library import load as load_ops
from tf_lowprec.gemm import reference as reference_gemm
from conv_testing import (check_filter_gradient_gemm_orientations, conv_gradients,
                          dfp_implicit_conv_references, im2col, im2col_tf, pads_of, quantized,
                          rand)
from kernel_tiers import params as tier_params


references = dfp_implicit_conv_references
run = functools.partial(conv_gradients, lp.dfp_conv2d)  # (x, w, g, strides, padding, dilations)


CASES = [
    # (x shape, filter shape, strides, padding, dilations)
    ((2, 9, 8, 3), (3, 3, 3, 5), (1, 1), "VALID", (1, 1)),
    ((1, 10, 11, 4), (3, 2, 4, 6), (2, 3), "SAME", (1, 1)),
    ((2, 12, 12, 2), (3, 3, 2, 4), (1, 1), "SAME", (2, 2)),
    ((1, 13, 9, 3), (2, 3, 3, 7), (2, 1), "VALID", (2, 3)),
    ((1, 7, 7, 1), (1, 1, 1, 3), (3, 3), "VALID", (1, 1)),  # stride > kernel, C = 1
    ((3, 8, 8, 2), (2, 2, 2, 17), (3, 3), "SAME", (1, 1)),  # stride > kernel, O = 17
    ((1, 5, 6, 130), (3, 3, 130, 2), (1, 1), "SAME", (1, 1)),  # K = 1170: long rows
    ((2, 16, 16, 32), (3, 3, 32, 64), (1, 1), "VALID", (1, 1)),  # the CNN's second layer
]


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations", CASES)
def test_forward_and_gradients_bit_exact(xs, ws, strides, padding, dilations, isa):
    x, w = rand(xs, 1), rand(ws, 2, scale=0.2)
    y_shape = tf.nn.conv2d(x, w, strides, padding, dilations=dilations).shape
    g = rand(y_shape, 3, scale=1e-2)
    y, dx, dw = run(x, w, g, strides, padding, dilations, isa=isa)
    want_y, want_dx, want_dw = references(x, w, g, strides, padding, dilations)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dw, want_dw)
    np.testing.assert_array_equal(dx, want_dx)
    # Sanity: within DFP16's error of FP32 (stride > kernel: d(x) is 0 off the patches).
    fp32 = tf.nn.conv2d(x, w, strides, padding, dilations=dilations)
    np.testing.assert_allclose(y, fp32, atol=2e-3 * np.abs(fp32).max())


@pytest.mark.parametrize("xs,ws,strides,padding,dilations", CASES[:6])
def test_forward_and_filter_gradient_equal_the_im2col_path(xs, ws, strides, padding,
                                                           dilations):
    """The stock-TF twin still materializes the patches: the same y and d(filters) bits."""
    x, w = rand(xs, 4), rand(ws, 5, scale=0.3)
    g = rand(tf.nn.conv2d(x, w, strides, padding, dilations=dilations).shape, 6)
    y, _, dw = run(x, w, g, strides, padding, dilations)
    y_tf, _, dw_tf = run(x, w, g, strides, padding, dilations, implementation="tf")
    np.testing.assert_array_equal(y, y_tf)
    np.testing.assert_array_equal(dw, dw_tf)


def test_uncovered_elements_set_the_exponent():
    """Stride 3 over a 1x1 kernel skips x's largest element: it still sets the exponent."""
    x = rand((1, 7, 7, 1), 7)
    x[0, 1, 1, 0] = 1000.0  # outside every patch
    w = rand((1, 1, 1, 2), 8)
    y = np.asarray(lp.dfp_conv2d(x, w, strides=3))
    (xq, ex), (wq, ew) = quantized(x), quantized(w)
    assert ex.item() == np.asarray(lp.quantize_dfp(np.float32([1000.0]),
                                                   return_exponents=True)[1]).item()
    cols, _ = im2col(xq, 1, 1, (3, 3), (0, 0, 0, 0), (1, 1))
    want = reference_gemm.dfp_matmul_quantized(cols, ex, wq.reshape(1, 2), ew)
    np.testing.assert_array_equal(y.reshape(-1, 2), want)


def test_stochastic_rounding_uses_the_seeded_quantization():
    x, w = rand((2, 6, 6, 3), 9), rand((3, 3, 3, 4), 10, scale=0.2)
    g = rand((2, 4, 4, 4), 11, scale=1e-3)
    seed = tf.constant([5, 7], tf.int64)
    y, dx, dw = run(x, w, g, (1, 1), "VALID", (1, 1), rounding="stochastic", seed=seed,
                    backward_rounding="stochastic")
    xs = np.asarray(lp.quantize_dfp(x, rounding="stochastic", seed=seed))
    ws = np.asarray(lp.quantize_dfp(w, rounding="stochastic", seed=seed + [0, 1]))
    gs = np.asarray(lp.quantize_dfp(g, rounding="stochastic", seed=seed + [0, 2]))
    want_y, want_dx, want_dw = references(xs, ws, gs, (1, 1), "VALID", (1, 1))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dw, want_dw)


def test_non_finite_values():
    x, w = rand((1, 6, 6, 2), 12), rand((3, 3, 2, 3), 13)
    x[0, 0, 0, 1] = np.nan
    x[0, 5, 5, 0] = np.inf
    g = rand((1, 4, 4, 3), 14)
    y, dx, dw = run(x, w, g, (1, 1), "VALID", (1, 1))
    # Output pixels whose patch holds a non-finite value are NaN (all channels).
    assert np.isnan(y[0, 0, 0]).all() and np.isnan(y[0, 3, 3]).all()
    assert np.isfinite(y[0, 1:3]).all() and np.isfinite(y[0, 0, 1:]).all()
    # d(filters): the taps (i, j, c) that saw NaN / Inf in some patch.
    assert np.isnan(dw[0, 0, 1]).all() and np.isnan(dw[2, 2, 0]).all()
    assert np.isfinite(dw[1, 1]).all()
    assert np.isfinite(dx).all()  # the error and the filters are finite
    w[1, 1, 0, 2] = np.nan  # a NaN filter value: that input channel's d(x) is NaN
    _, dx, _ = run(x, w, g, (1, 1), "VALID", (1, 1))
    assert np.isnan(dx[..., 0]).all() and np.isfinite(dx[..., 1]).all()


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
def test_non_finite_values_in_long_patch_rows(isa):
    """K = 360 (patch rows past the short-K path): the NaN / Inf lanes of a panel."""
    x, w = rand((1, 5, 5, 40), 15), rand((3, 3, 40, 2), 16)
    x[0, 0, 0, 3] = np.nan
    x[0, 4, 4, 39] = np.inf
    y = np.asarray(lp.dfp_conv2d(x, w, (1, 1), "VALID", (1, 1), isa=isa))
    bad = np.zeros((3, 3), bool)
    bad[0, 0] = bad[2, 2] = True
    assert np.isnan(y[0][bad]).all() and np.isfinite(y[0][~bad]).all()


def test_counters_move_and_graph_has_no_im2col():
    x, w = rand((2, 8, 8, 3), 15), rand((3, 3, 3, 4), 16)
    lp.dfp_gemm_counters(reset=True)
    run(x, w, rand((2, 6, 6, 4), 17), (1, 1), "VALID", (1, 1))
    assert lp.dfp_gemm_counters()["calls"] == 3  # forward, d(x), d(filters)

    @tf.function(autograph=False)  # (autograph's first conversion of the library: ~10 s)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(lp.dfp_conv2d(x, w, padding="SAME"))
        return tape.gradient(loss, [x, w])

    graph = step.get_concrete_function(tf.constant(x), tf.constant(w)).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    assert {"LowprecDfpConv2d", "LowprecDfpConv2dBackpropFilter"} <= types
    assert not types & {"ConcatV2", "ExtractImagePatches", "AddN", "MatMul", "Conv2D",
                        "ReverseV2", "Transpose"}, types  # d(x) flips the filters in the op


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
def test_raw_op_flip_filters(isa):
    """flip_filters=True equals passing flip(filters)^T bit for bit (the same
    values, so the same shared exponent); its channel check."""
    ops = load_ops()
    dy, w = rand((2, 5, 4, 6), 30), rand((3, 2, 5, 6), 31)  # w: [kh, kw, C=5, O=6]
    dy[0, 1, 2, 3] = 40.0  # a large value: many chunks need their checkpoints
    flipped = np.ascontiguousarray(np.transpose(w[::-1, ::-1], (0, 1, 3, 2)))
    want, want_overflows = ops.lowprec_dfp_conv2d(dy, flipped, pads=[2, 2, 1, 1], isa=isa)
    got, overflows = ops.lowprec_dfp_conv2d(dy, w, pads=[2, 2, 1, 1], isa=isa,
                                            flip_filters=True)
    assert got.shape == (2, 7, 5, 5)
    np.testing.assert_array_equal(got.numpy().view(np.int32), want.numpy().view(np.int32))
    assert int(overflows) == int(want_overflows)
    with pytest.raises(tf.errors.InvalidArgumentError, match="flipped filters"):
        ops.lowprec_dfp_conv2d(dy, flipped, flip_filters=True)  # last dimension 5, not 6


def test_raw_op_bad_arguments():
    ops = load_ops()
    x, w = np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="channels"):
        ops.lowprec_dfp_conv2d(x, np.ones((3, 3, 3, 4), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="strides"):
        ops.lowprec_dfp_conv2d(x, w, strides=[0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="pads"):
        ops.lowprec_dfp_conv2d(x, w, pads=[-1, 0, 0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_dilations"):
        ops.lowprec_dfp_conv2d(x, w, input_dilations=[1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="bits"):
        ops.lowprec_dfp_conv2d(x, w, bits=20)
    with pytest.raises(tf.errors.InvalidArgumentError, match="chunk_size"):
        ops.lowprec_dfp_conv2d(x, w, chunk_size=3)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 4"):
        ops.lowprec_dfp_conv2d(x[0], w)
    with pytest.raises(tf.errors.InvalidArgumentError, match="dy must have shape"):
        ops.lowprec_dfp_conv2d_backprop_filter(x, np.ones((1, 2, 3, 4), np.float32),
                                               filter_size=[3, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter_size"):
        ops.lowprec_dfp_conv2d_backprop_filter(x, np.ones((1, 3, 3, 4), np.float32),
                                               filter_size=[0, 3])


def _random_geometries(count, seed=123):
    """Seeded random conv2d geometries (kernel, stride, dilation, padding, sizes) with outputs."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, 4, 4))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        h, w = int(rng.integers(kh * dh, 12)), int(rng.integers(kw * dw, 12))
        n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 20))
        padding = ("VALID", "SAME")[int(rng.integers(2))]
        found.append(((n, h, w, c), (kh, kw, c, o), (sh, sw), padding, (dh, dw)))
    return found


@pytest.mark.parametrize("isa", tier_params("dfp_gemm", ("portable", "avx2")))
@pytest.mark.parametrize("index, case", list(enumerate(_random_geometries(10))))
def test_random_geometries_bit_exact(index, case, isa):
    xs, ws, strides, padding, dilations = case
    x, w = rand(xs, index), rand(ws, index + 100, scale=0.3)
    g = rand(tf.nn.conv2d(x, w, strides, padding, dilations=dilations).shape, index + 200)
    got = run(x, w, g, strides, padding, dilations, isa=isa)
    for have, want in zip(got, references(x, w, g, strides, padding, dilations)):
        np.testing.assert_array_equal(have, want)


# d(filters) in both GEMM orientations (gemm_a): a = patches^T packed
# transposed (few input channels: gathered along the pixels; C >= 8: per
# pixel pair) times dy, and (dy^T @ patches)^T.
GEMM_A_CASES = [
    # (x shape, filter shape, strides, padding, dilations, input dilations, non-finite)
    ((3, 23, 21, 1), (3, 3, 1, 4), (1, 1), "VALID", (1, 1), (1, 1), None),  # 1197 pixels (odd)
    ((2, 9, 8, 3), (3, 2, 3, 7), (2, 1), "SAME", (1, 2), (1, 1), "x"),
    ((1, 11, 10, 5), (2, 3, 5, 3), (1, 3), "SAME", (2, 1), (1, 1), "dy"),
    ((2, 7, 9, 5), (3, 3, 5, 2), (3, 2), "VALID", (1, 1), (1, 1), None),  # stride = kernel
    ((1, 6, 5, 1), (3, 2, 1, 3), (1, 2), "SAME", (1, 1), (2, 3), None),  # input dilations
    ((1, 6, 6, 12), (3, 3, 12, 5), (1, 1), "SAME", (1, 1), (1, 1), "x"),  # C >= 8
    # K >= 4096 pixels: packed in K slices by several threads.
    ((3, 40, 40, 2), (3, 3, 2, 33), (1, 1), "VALID", (1, 1), (1, 1), "big"),  # overflows
    ((5, 31, 31, 1), (3, 3, 1, 5), (1, 1), "VALID", (1, 1), (1, 1), "both"),  # 4205 pixels
    ((2, 46, 46, 8), (1, 1, 8, 3), (1, 1), "SAME", (1, 1), (1, 1), "x"),  # C >= 8
]


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("case", range(len(GEMM_A_CASES)))
def test_filter_gradient_gemm_orientations_bit_exact(case, isa):
    """gemm_a 'patches' and 'dy' (and 'auto'): the written-out reference's bits and
    overflow count (the same integer chunk sums, in the same order)."""
    xs, ws, strides, padding, dilations, lx, special = GEMM_A_CASES[case]
    x = rand(xs, 40 + case)
    out = [pads_of((n - 1) * l + 1, k, s, d, padding)[2]
           for n, l, k, s, d in zip(xs[1:3], lx, ws[:2], strides, dilations)]
    g = rand([xs[0]] + out + [ws[3]], 60 + case, scale=1e-2)
    if special in ("x", "both"):
        x[0, 1, 1, -1] = np.nan
        x[-1, -1, 0, 0] = -np.inf
    if special in ("dy", "both"):
        g[0, 0, 1, 2] = np.inf
    elif special == "big":  # same-signed large mantissas: INT32 chains overflow
        x, g = np.abs(x) + 1.0, np.abs(g) + 1e-2
    _, overflow = check_filter_gradient_gemm_orientations(x, g, ws[:2], strides, padding,
                                                          dilations, lx, isa=isa)
    assert (overflow > 0) == (special == "big")
    if special == "big":  # chunks of 256 (K slices are whole chunks) and of 6
        for chunk_size in (256, 6):
            check_filter_gradient_gemm_orientations(x, g, ws[:2], strides, padding, dilations,
                                                    lx, isa=isa, chunk_size=chunk_size)


def test_filter_gradient_gemm_a_must_be_known():
    x, g = rand((1, 5, 5, 2), 1), rand((1, 3, 3, 4), 2)
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="gemm_a"):
        ops = load_ops()
        ops.lowprec_dfp_conv2d_backprop_filter(x, g, filter_size=[3, 3], gemm_a="rows")


# Few channels (kw * C <= 32, no dilation along the width): each kernel row of
# a patch row is one span of the input row, gathered whole (dfp_gemm_conv_pack.h
# GatherShortSpanRows); the others fall back to the run-by-run gather.
SHORT_SPAN_CASES = [
    # (x shape, filter shape, strides, padding, dilations)
    ((2, 9, 13, 1), (3, 3, 1, 5), (1, 1), "VALID", (1, 1)),  # C = 1, out_w 11: panels span rows
    ((1, 7, 10, 2), (3, 3, 2, 4), (1, 1), "SAME", (1, 1)),  # C = 2, spans cut by the padding
    ((2, 8, 7, 3), (3, 3, 3, 6), (1, 1), "SAME", (1, 1)),  # C = 3 (RGB), K = 27
    ((2, 6, 12, 3), (3, 3, 3, 4), (1, 1), "VALID", (1, 1)),  # C = 3: windows of 24 floats
    ((1, 5, 13, 4), (3, 3, 4, 3), (1, 1), "VALID", (1, 1)),  # C = 4: windows of 32 floats
    ((1, 9, 11, 3), (5, 5, 3, 4), (2, 2), "SAME", (1, 1)),  # C = 3, 5x5, stride 2
    ((1, 12, 12, 1), (3, 3, 1, 3), (1, 1), "SAME", (2, 1)),  # height dilation: still spans
    ((2, 9, 13, 1), (3, 3, 1, 2), (1, 1), "VALID", (2, 1)),  # (and whole windows)
    ((1, 12, 12, 2), (3, 3, 2, 3), (1, 1), "SAME", (1, 2)),  # width dilation: falls back
    ((1, 6, 20, 4), (2, 8, 4, 3), (1, 1), "VALID", (1, 1)),  # span 32, the longest
    ((1, 6, 20, 3), (2, 11, 3, 3), (1, 1), "SAME", (1, 1)),  # span 33: falls back
    ((1, 3, 2, 1), (3, 3, 1, 2), (1, 1), "SAME", (1, 1)),  # image narrower than the kernel
]


def _forward_reference(x, w, strides, padding, dilations):
    (xq, ex), (wq, ew) = quantized(x), quantized(w)
    cols, (n, oh, ow) = im2col_tf(xq, w.shape[0], w.shape[1], strides, padding, dilations)
    y = reference_gemm.dfp_matmul_quantized(cols, ex, wq.reshape(-1, w.shape[3]), ew)
    return y.reshape(n, oh, ow, w.shape[3])


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations", SHORT_SPAN_CASES)
def test_few_channel_forward_bit_exact(xs, ws, strides, padding, dilations, isa):
    x, w = rand(xs, 40), rand(ws, 41, scale=0.3)
    y = np.asarray(lp.dfp_conv2d(x, w, strides, padding, dilations, isa=isa))
    np.testing.assert_array_equal(y, _forward_reference(x, w, strides, padding, dilations))


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("c", [1, 2, 3])
def test_few_channel_non_finite_values(c, isa):
    """NaN / Inf in x: the NaN output pixels and the other bits of the im2col path."""
    x, w = rand((2, 7, 9, c), 42), rand((3, 3, c, 4), 43)
    x[0, 0, 0, 0] = np.nan  # a corner: one patch (VALID), four (SAME)
    x[0, 3, 8, c - 1] = np.inf  # the last column
    x[1, 6, 4, 0] = -np.inf  # the last row of the second image
    for padding in ("VALID", "SAME"):
        y = np.asarray(lp.dfp_conv2d(x, w, 1, padding, isa=isa))
        want = np.asarray(lp.dfp_conv2d(x, w, 1, padding, isa=isa, implementation="tf"))
        np.testing.assert_array_equal(y, want)
        bad = np.asarray(tf.nn.conv2d(np.float32(~np.isfinite(x)), np.ones((3, 3, c, 1),
                                                                           np.float32),
                                      1, padding))[..., 0] > 0
        assert np.isnan(y[bad]).all() and np.isfinite(y[~bad]).all()


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
def test_few_channel_input_dilations(isa):
    """The raw op's input dilations: holes in the height keep the spans, in the
    width fall back; both equal the convolution of the explicitly dilated x."""
    ops = load_ops()
    for (xs, ws), pads in ((((2, 5, 6, 2), (3, 3, 2, 3)), [1, 1, 1, 1]),
                           (((2, 5, 9, 1), (3, 3, 1, 3)), [1, 1, 0, 0])):
        x, w = rand(xs, 44), rand(ws, 45)
        for lh, lw in ((2, 1), (1, 2), (3, 2)):
            dilated = np.zeros((2, 4 * lh + 1, (xs[2] - 1) * lw + 1, xs[3]), np.float32)
            dilated[:, ::lh, ::lw] = x
            got, _ = ops.lowprec_dfp_conv2d(x, w, pads=pads, input_dilations=[lh, lw], isa=isa)
            want, _ = ops.lowprec_dfp_conv2d(dilated, w, pads=pads, isa=isa)
            np.testing.assert_array_equal(got.numpy().view(np.int32),
                                          want.numpy().view(np.int32))


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
def test_long_patch_rows_from_the_input_image(isa):
    """Long patch rows (K = 216) with overlapping windows are copied from an
    int16 image of x's mantissas, made once per call (dfp_gemm_driver.h,
    WantsInputImage): bit-exact against the written-out reference, with input
    dilations against the explicitly dilated x, and with a NaN in x (no
    image: converted from the floats) NaN exactly where its windows reach."""
    x, w = rand((2, 7, 6, 24), 61), rand((3, 3, 24, 5), 62, scale=0.2)
    y_shape = tf.nn.conv2d(x, w, 1, "SAME").shape
    g = rand(y_shape, 63, scale=1e-2)
    y, dx, dw = run(x, w, g, (1, 1), "SAME", (1, 1), isa=isa)
    want_y, want_dx, want_dw = references(x, w, g, (1, 1), "SAME", (1, 1))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dw, want_dw)
    ops = load_ops()
    for lh, lw in ((2, 1), (2, 3)):
        dilated = np.zeros((2, 6 * lh + 1, 5 * lw + 1, 24), np.float32)
        dilated[:, ::lh, ::lw] = x
        got, _ = ops.lowprec_dfp_conv2d(x, w, pads=[1, 1, 1, 1], input_dilations=[lh, lw],
                                        isa=isa)
        want, _ = ops.lowprec_dfp_conv2d(dilated, w, pads=[1, 1, 1, 1], isa=isa)
        np.testing.assert_array_equal(got.numpy().view(np.int32), want.numpy().view(np.int32))
    x[1, 3, 2, 7] = np.nan
    y = np.asarray(lp.dfp_conv2d(x, w, (1, 1), "SAME", (1, 1), isa=isa))
    reached = np.zeros((7, 6), bool)
    reached[2:5, 1:4] = True
    assert np.isnan(y[1][reached]).all() and np.isfinite(y[1][~reached]).all()
    assert np.isfinite(y[0]).all()
