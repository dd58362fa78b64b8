"""3-D and transposed convolutions on the INT16 (DFP16), BF16 and FP16-sum GEMMs, bit for bit.

The references are written out in NumPy: N-D im2col, the INT16/INT32 GEMM
of `tf_lowprec.gemm.reference` (operands quantized once per whole tensor),
the VDPBF16PS-order model of test_bf16_gemm or the exact (Fraction) reference
of `lp.matmul` with FP16 chunked sums, and col2im as FP32 sums in
the order `tf_lowprec.gemm.conv_nd` states (per element: +0, then its
contributions by descending kernel offset).
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import accumulation
from tf_lowprec.gemm import accumulation_reference
from tf_lowprec.gemm import conv_nd
from tf_lowprec.gemm import reference as reference_gemm
from test_bf16_gemm import reference_matmul as bf16_reference_matmul
from test_dfp_conv2d import rand
import test_dfp_implicit_conv_transpose as implicit_transpose
from test_dfp_implicit_conv3d import references as implicit_conv3d_references
import test_bf16_implicit_conv as bf16_implicit
from conv_testing import dfp_grouped_implicit_conv_references


def dfp_gemm(a, b):
    """INT16 GEMM, each operand quantized with one exponent for the whole tensor."""
    (aq, ea), (bq, eb) = (lp.quantize_dfp(v, return_exponents=True) for v in (a, b))
    exponent = lambda e: np.full((1, 1, 1), np.asarray(e).reshape(-1)[0])  # noqa: E731
    return reference_gemm.dfp_matmul_quantized(np.asarray(aq), exponent(ea), np.asarray(bq),
                                               exponent(eb))


def bf16_gemm(a, b):
    if a.ndim == 2:
        return bf16_reference_matmul(a, b)
    return np.stack([bf16_reference_matmul(x, y) for x, y in zip(a, b)])


ACCUMULATOR = lp.Accumulator(lp.FP16, chunk_size=4)


def fp16_sum_gemm(a, b):
    """`lp.matmul(a, b, accumulator=ACCUMULATOR)` from the exact (Fraction) reference."""
    batched = a.ndim == 3
    a, b = (v if batched else v[None] for v in (a, b))
    y = accumulation_reference.matmul(a, b, ACCUMULATOR.format, ACCUMULATOR.chunk_size)
    return y if batched else y[0]


GEMMS = {"dfp": dfp_gemm, "bf16": bf16_gemm, "fp16_sum": fp16_sum_gemm}


def conv3d_op(kernel):
    if kernel != "fp16_sum":
        return {"dfp": lp.dfp_conv3d, "bf16": lp.bf16_conv3d}[kernel]
    return lambda x, w, strides, padding, dilations, groups: accumulation.conv3d(
        x, w, accumulator=ACCUMULATOR, strides=strides, padding=padding, dilations=dilations,
        groups=groups)


def conv_transpose_op(kernel):
    if kernel == "dfp":
        # 1-D, 2-D and 3-D ones run as implicit GEMMs with the C++ kernels (written-out
        # references in test_dfp_implicit_conv_transpose.py); col2im's arithmetic, checked
        # here, is that of the stock-TF twin (XLA, GPUs).
        def dfp(x, w, shape, strides, padding, dilations, implementation=None):
            if implementation is None:
                implementation = "tf"
            return lp.dfp_conv_transpose(x, w, shape, strides, padding, dilations,
                                         implementation=implementation)

        return dfp
    if kernel != "fp16_sum":
        return {"bf16": lp.bf16_conv_transpose}[kernel]
    return lambda x, w, shape, strides, padding, dilations: accumulation.conv_transpose(
        x, w, shape, accumulator=ACCUMULATOR, strides=strides, padding=padding,
        dilations=dilations)


def windows(spatial, ksize, strides, padding, dilations, out=None):
    """(out sizes, pads before, pads after) of a convolution over `spatial`: TF's rules."""
    spans = [(k - 1) * d + 1 for k, d in zip(ksize, dilations)]
    if out is None:
        out = [-(-n // s) if padding == "SAME" else (n - span) // s + 1
               for n, s, span in zip(spatial, strides, spans)]
    needed = [(o - 1) * s + span - n for n, o, s, span in zip(spatial, out, strides, spans)]
    before = [max(t, 0) // 2 if padding == "SAME" else 0 for t in needed]
    after = [max(t - b, 0) for t, b in zip(needed, before)]
    return out, before, after


def window(offset, out, strides, dilations):
    return (slice(None),) + tuple(slice(i * d, i * d + (o - 1) * s + 1, s) for i, o, s, d in
                                  zip(offset, out, strides, dilations)) + (slice(None),)


def im2col(x, ksize, strides, padding, dilations, out=None):
    """[N, *out, prod(k) * C] patches in the order (kernel offsets, c)."""
    out, before, after = windows(x.shape[1:-1], ksize, strides, padding, dilations, out)
    x = np.pad(x, [(0, 0)] + list(zip(before, after)) + [(0, 0)])
    offsets = list(itertools.product(*(range(k) for k in ksize)))
    return np.concatenate([x[window(o, out, strides, dilations)] for o in offsets], axis=-1)


def col2im(cols, spatial, ksize, strides, padding, dilations):
    """FP32 scatter-add onto [N, *spatial, C]: descending kernel offsets, from +0."""
    out = cols.shape[1:-1]
    _, before, after = windows(spatial, ksize, strides, padding, dilations, out)
    offsets = list(itertools.product(*(range(k) for k in ksize)))
    channels = cols.shape[-1] // len(offsets)
    frame = [b + n + a for n, b, a in zip(spatial, before, after)]
    total = np.zeros([cols.shape[0]] + frame + [channels], np.float32)
    for index in reversed(range(len(offsets))):
        part = cols[..., index * channels:(index + 1) * channels].astype(np.float32)
        total[window(offsets[index], out, strides, dilations)] += part
    return total[(slice(None),) + tuple(slice(b, b + n) for n, b in zip(spatial, before))]


def flat(a):
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))


CONV3D_CASES = [
    # (x shape, filter shape, groups, strides, padding, dilations)
    ((2, 4, 5, 4, 3), (2, 3, 2, 3, 4), 1, (1, 1, 1), "VALID", (1, 1, 1)),
    ((1, 5, 4, 6, 4), (3, 2, 2, 2, 6), 2, (2, 1, 2), "SAME", (1, 2, 1)),
    # Stride 3 over a kernel of 1 skips elements: x is rounded before its patches.
    ((1, 5, 5, 5, 2), (1, 2, 1, 2, 3), 1, (3, 1, 2), "VALID", (1, 1, 1)),
]


@pytest.mark.parametrize("kernel", ["dfp", "bf16", "fp16_sum"])
@pytest.mark.parametrize("xs,ws,groups,strides,padding,dilations", CONV3D_CASES)
def test_conv3d_matches_written_out_reference(kernel, xs, ws, groups, strides, padding,
                                              dilations):
    conv3d, gemm = conv3d_op(kernel), GEMMS[kernel]
    x = rand(xs, 1)
    x.reshape(-1)[-1] = 8.0  # the largest element; in no patch in the skipping case
    x, w = tf.constant(x), tf.constant(rand(ws, 2, scale=0.3))
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = conv3d(x, w, strides, padding, dilations, groups=groups)
        g = rand(y.shape, 3, scale=1e-2)
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])

    ksize, cg, cout = ws[:3], ws[3], ws[4]
    kprod = int(np.prod(ksize))
    quantize = (lambda v: np.asarray(lp.quantize_dfp(v))) if kernel == "dfp" else np.asarray
    xr, wr, gr = quantize(x), quantize(w), quantize(g)
    cols = im2col(xr, ksize, strides, padding, dilations)
    # Each group's columns [groups, P, prod(k) * cg] and filters [groups, prod(k) * cg, o].
    columns = flat(cols).reshape(-1, kprod, groups, cg).transpose(2, 0, 1, 3).reshape(
        groups, -1, kprod * cg)
    filters = wr.reshape(kprod * cg, groups, cout // groups).transpose(1, 0, 2)
    errors = gr.reshape(-1, groups, cout // groups).transpose(1, 0, 2)
    want_y = gemm(columns, filters).transpose(1, 0, 2).reshape(y.shape)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    want_dw = gemm(columns.transpose(0, 2, 1).copy(), errors).transpose(1, 0, 2).reshape(ws)
    np.testing.assert_array_equal(np.asarray(dw), want_dw)
    dcols = gemm(errors, filters.transpose(0, 2, 1).copy())  # [groups, P, prod(k) * cg]
    dcols = dcols.reshape(groups, -1, kprod, cg).transpose(1, 2, 0, 3).reshape(cols.shape)
    want_dx = col2im(dcols, xs[1:-1], ksize, strides, padding, dilations)
    if kernel == "dfp" and groups == 1:
        # The implicit GEMM's d(x) (test_dfp_implicit_conv3d): one INT16 GEMM of the
        # stride-dilated error with the flipped filters, no col2im.
        want_dx = implicit_conv3d_references(np.asarray(x), np.asarray(w), g, strides, padding,
                                             dilations)[1]
    elif kernel == "dfp":
        # Grouped: one implicit GEMM convolution a group (test_dfp_grouped_implicit).
        want_dx = dfp_grouped_implicit_conv_references(np.asarray(x), np.asarray(w), g, groups,
                                                       strides, padding, dilations)[1]
    if kernel == "bf16" and groups == 1:
        # Likewise BF16 (test_bf16_implicit_conv): one GEMM in the VDPBF16PS order over
        # kd * kh * kw * O per input gradient, no col2im.
        want_dx = bf16_implicit.references_nd(np.asarray(x), np.asarray(w), g, strides,
                                              padding, dilations)[1]
    np.testing.assert_array_equal(np.asarray(dx), want_dx)
    exact = np.asarray(tf.nn.conv3d(x, w, (1,) + strides + (1,), padding,
                                    dilations=(1,) + dilations + (1,))) if groups == 1 else None
    if exact is not None:
        np.testing.assert_allclose(np.asarray(y), exact, atol=2e-2 * np.abs(exact).max())


TRANSPOSE_CASES = [
    # (x shape, filter shape [*k, out, in], output spatial, strides, padding, dilations)
    ((2, 5, 3), (3, 4, 3), (9,), (2,), "SAME", (1,)),  # Conv1DTranspose (stride 2)
    ((2, 3, 4, 3), (3, 3, 2, 3), (5, 6), (1, 1), "VALID", (1, 1)),
    ((1, 3, 3, 2), (3, 2, 3, 2), (6, 6), (2, 2), "SAME", (1, 2)),
    # Stride 3 over a kernel of 2: output elements in no window (the error is rounded
    # before its patches are gathered), and output padding (VALID, 10 > 9).
    ((2, 3, 3), (2, 2, 3), (10,), (3,), "VALID", (1,)),
    ((1, 2, 3, 2, 2), (2, 2, 3, 3, 2), (4, 6, 4), (2, 2, 2), "SAME", (1, 1, 1)),
]


@pytest.mark.parametrize("kernel", ["dfp", "bf16", "fp16_sum"])
@pytest.mark.parametrize("xs,ws,spatial,strides,padding,dilations", TRANSPOSE_CASES)
def test_conv_transpose_matches_written_out_reference(kernel, xs, ws, spatial, strides,
                                                      padding, dilations):
    op, gemm = conv_transpose_op(kernel), GEMMS[kernel]
    x, w = tf.constant(rand(xs, 4)), tf.constant(rand(ws, 5, scale=0.3))
    out_shape = [xs[0], *spatial, ws[-2]]
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = op(x, w, out_shape, strides, padding, dilations)
        g = rand(y.shape, 6, scale=1e-2)
        g.reshape(-1)[-1] = 0.5  # the largest error; in no window in the case with gaps
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])

    rank, cout, cin = len(spatial), ws[-2], ws[-1]
    ksize = ws[:rank]
    quantize = (lambda v: np.asarray(lp.quantize_dfp(v))) if kernel == "dfp" else np.asarray
    xr, wr, gr = quantize(x), quantize(w), quantize(g)
    # filters [*k, O, C] as [C, prod(k) * O]: the GEMM's columns in the patches' order.
    weights = np.ascontiguousarray(np.moveaxis(wr, -1, 0).reshape(cin, -1))
    cols = gemm(flat(xr), weights).reshape(xs[:-1] + (-1,))
    want_y = col2im(cols, spatial, ksize, strides, padding, dilations)
    if kernel == "bf16":
        # Implicit GEMMs (test_bf16_implicit_conv): y is one VDPBF16PS-order GEMM of x,
        # dilated and padded, with the flipped filters (K = prod(k) * C), no col2im; d(x)
        # and d(filters) keep the bits written out below.
        want_y = bf16_implicit.transpose_references(np.asarray(x), np.asarray(w), g, spatial,
                                                    strides, padding, dilations)[0]
    np.testing.assert_array_equal(np.asarray(y), want_y)
    dcols = flat(im2col(gr, ksize, strides, padding, dilations, out=xs[1:-1]))
    want_dx = gemm(dcols, weights.T.copy()).reshape(xs)
    np.testing.assert_array_equal(np.asarray(dx), want_dx)
    want_dw = gemm(flat(xr).T.copy(), dcols)  # [C, prod(k) * O]
    want_dw = np.moveaxis(want_dw.reshape((cin,) + tuple(ksize) + (cout,)), 0, -1)
    np.testing.assert_array_equal(np.asarray(dw), want_dw)
    if max(dilations) == 1:  # TensorFlow's CPU kernels have no dilated transposed conv
        exact = np.asarray(tf.nn.conv_transpose(x, w, out_shape, strides, padding))
        np.testing.assert_allclose(np.asarray(y), exact, atol=2e-2 * np.abs(exact).max())


@pytest.mark.parametrize("strides,padding,dilations", [
    ((1, 1), "SAME", (1, 1)), ((2, 1), "VALID", (1, 2)), ((2, 3), "SAME", (1, 1))])
def test_col2im_has_the_bits_of_extract_patches_gradient(strides, padding, dilations):
    """The stated order is ExtractImagePatches' own (a segment sum over the patches)."""
    x = tf.zeros([2, 7, 8, 3])
    geometry = conv_nd.Geometry((7, 8), 3, (3, 2), strides, padding, dilations)
    options = dict(sizes=[1, 3, 2, 1], strides=[1, *strides, 1], rates=[1, *dilations, 1],
                   padding=padding)
    with tf.GradientTape() as tape:
        tape.watch(x)
        reference = tf.image.extract_patches(x, **options)
    # Magnitudes spread over 2^-20..2^20 so that the order of the additions shows.
    rng = np.random.default_rng(7)
    dcols = (rng.normal(size=reference.shape) * 2.0 ** rng.integers(-20, 20, reference.shape))
    dcols = tf.constant(dcols.astype(np.float32))
    want = tape.gradient(reference, x, output_gradients=dcols)
    got = conv_nd.col2im(dcols, geometry)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(conv_nd.patches(x + 1, geometry)),
                                  np.asarray(tf.image.extract_patches(x + 1, **options)))


def test_bad_arguments_are_refused():
    x5, w5 = np.ones((1, 3, 3, 3, 2), np.float32), np.ones((2, 2, 2, 2, 4), np.float32)
    with pytest.raises(ValueError, match="strides must be a positive int or 3"):
        lp.dfp_conv3d(x5, w5, strides=(1, 1))
    with pytest.raises(ValueError, match="padding must be 'VALID' or 'SAME'"):
        lp.bf16_conv3d(x5, w5, padding="full")
    with pytest.raises(ValueError, match="x has 2 channels but the filters expect 4"):
        lp.dfp_conv3d(x5, np.ones((2, 2, 2, 2, 4), np.float32), groups=2)
    with pytest.raises(ValueError, match="one exponent per tensor"):
        lp.dfp_conv3d(x5, w5, fmt=lp.DfpFormat(16, block_size=8))
    x3, w3 = np.ones((1, 3, 2), np.float32), np.ones((2, 4, 2), np.float32)
    with pytest.raises(ValueError, match="does not fit x's spatial shape"):
        lp.dfp_conv_transpose(x3, w3, [1, 9, 4], strides=2)
    with pytest.raises(ValueError, match="output_shape has 5 channels"):
        lp.bf16_conv_transpose(x3, w3, [1, 4, 5])
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        lp.dfp_conv_transpose(np.ones((1, 2), np.float32), w3, [4])


# Keras layers under the dfp16 / bf16_native policies: the same written-out references ------

def _layer_gradients(layer, x, seed, transpose=None):
    """(y, dx, d(kernel), upstream) for an upstream gradient drawn in channels-last layout
    (`transpose`: the permutation from that layout to the layer's)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        if transpose is None:
            upstream = rand(y.shape, seed, scale=1e-2)
        else:
            last = [y.shape[i] for i in np.argsort(transpose)]
            upstream = rand(last, seed, scale=1e-2).transpose(transpose)
        loss = tf.reduce_sum(y * upstream)
    dx, dkernel = tape.gradient(loss, [x, layer.kernel])
    return y, dx, dkernel, upstream


LAYERS = [
    # (layer, x shape, (strides, padding, dilations) as the op sees them)
    (lambda: keras.layers.Conv3D(3, (2, 3, 2), strides=(1, 2, 1), padding="same",
                                 use_bias=False), (2, 4, 5, 3, 2)),
    (lambda: keras.layers.Conv1DTranspose(3, 3, strides=2, padding="same", use_bias=False),
     (2, 4, 2)),
    (lambda: keras.layers.Conv2DTranspose(2, 3, strides=2, output_padding=1, use_bias=False),
     (2, 3, 2, 3)),
    (lambda: keras.layers.Conv3DTranspose(2, 2, strides=(1, 2, 1), use_bias=False),
     (1, 2, 3, 2, 2)),
]


@pytest.mark.parametrize("preset", ["dfp16", "bf16_native"])
@pytest.mark.parametrize("make,shape", LAYERS)
def test_layers_equal_the_written_out_reference(preset, make, shape):
    kernel_name = {"dfp16": "dfp", "bf16_native": "bf16"}[preset]
    gemm = GEMMS[kernel_name]
    keras.utils.set_random_seed(0)
    layer = make()
    layer.dtype_policy = lp.Policy(preset)
    x = tf.constant(rand(shape, 8))
    layer.build(x.shape)
    lp.dfp_gemm_counters(reset=True)
    y, dx, dkernel, upstream = _layer_gradients(layer, x, 9)
    assert (lp.dfp_gemm_counters()["calls"] == 3) == (preset == "dfp16")

    quantize = (lambda v: np.asarray(lp.quantize_dfp(v))) if preset == "dfp16" else np.asarray
    xr, wr, gr = quantize(x), quantize(layer.kernel), quantize(upstream)
    ksize, strides = layer.kernel_size, layer.strides
    padding, dilations = layer.padding.upper(), layer.dilation_rate
    if preset == "dfp16" and (len(shape) < 5
                              or isinstance(layer, keras.layers.Conv3DTranspose)):
        # Transposed: implicit INT16 GEMMs, no col2im (their written-out reference).
        written_out = {3: implicit_transpose.references_1d, 4: implicit_transpose.references,
                       5: implicit_transpose.references_nd}[len(shape)]
        want = written_out(np.asarray(x), np.asarray(layer.kernel), upstream,
                           tuple(y.shape[1:-1]), tuple(strides), padding, tuple(dilations))
        for got, expected in zip((y, dx, dkernel), want):
            np.testing.assert_array_equal(np.asarray(got), expected)
        return
    if isinstance(layer, keras.layers.Conv3D) and not isinstance(
            layer, keras.layers.Conv3DTranspose):
        cols = flat(im2col(xr, ksize, strides, padding, dilations))
        weights = wr.reshape(cols.shape[1], -1)
        np.testing.assert_array_equal(np.asarray(y), gemm(cols, weights).reshape(y.shape))
        np.testing.assert_array_equal(np.asarray(dkernel),
                                      gemm(cols.T.copy(), flat(gr)).reshape(wr.shape))
        dcols = gemm(flat(gr), weights.T.copy()).reshape(tuple(y.shape[:-1]) + (-1,))
        want_dx = col2im(dcols, shape[1:-1], ksize, strides, padding, dilations)
        if preset == "dfp16":  # the implicit GEMMs' d(x) (test_dfp_implicit_conv3d)
            want_dx = implicit_conv3d_references(np.asarray(x), np.asarray(layer.kernel),
                                                 upstream, strides, padding, dilations)[1]
        else:  # BF16's implicit d(x) (test_bf16_implicit_conv)
            want_dx = bf16_implicit.references_nd(np.asarray(x), np.asarray(layer.kernel),
                                                  upstream, strides, padding, dilations)[1]
        np.testing.assert_array_equal(np.asarray(dx), want_dx)
        return
    spatial = tuple(y.shape[1:-1])
    weights = np.ascontiguousarray(np.moveaxis(wr, -1, 0).reshape(shape[-1], -1))
    cols = gemm(flat(xr), weights).reshape(shape[:-1] + (-1,))
    want_y = col2im(cols, spatial, ksize, strides, padding, dilations)
    if preset == "bf16_native":  # implicit GEMMs: y without col2im (test_bf16_implicit_conv)
        want_y = bf16_implicit.transpose_references(
            np.asarray(x), np.asarray(layer.kernel), upstream, spatial, tuple(strides), padding,
            tuple(dilations))[0]
    np.testing.assert_array_equal(np.asarray(y), want_y)
    dcols = flat(im2col(gr, ksize, strides, padding, dilations, out=shape[1:-1]))
    np.testing.assert_array_equal(np.asarray(dx),
                                  gemm(dcols, weights.T.copy()).reshape(shape))
    want_dw = gemm(flat(xr).T.copy(), dcols).reshape((shape[-1],) + tuple(ksize) + (-1,))
    np.testing.assert_array_equal(np.asarray(dkernel), np.moveaxis(want_dw, 0, -1))


@pytest.mark.parametrize("preset", ["dfp16", "bf16_native"])
@pytest.mark.parametrize("make", [
    lambda data_format: keras.layers.Conv3D(2, 2, padding="same", data_format=data_format),
    lambda data_format: keras.layers.Conv2DTranspose(2, 3, strides=2,
                                                     data_format=data_format),
    lambda data_format: keras.layers.Conv2D(3, 3, data_format=data_format),
])
def test_channels_first_has_the_bits_of_channels_last(preset, make):
    last, first = make("channels_last"), make("channels_first")
    x = rand((2, 3, 4, 5, 2) if isinstance(last, keras.layers.Conv3D) else (2, 4, 5, 2), 10)
    for layer, shape in ((last, x.shape), (first, (x.shape[0], x.shape[-1]) + x.shape[1:-1])):
        layer.dtype_policy = lp.Policy(preset)
        layer.build(shape)
    for w_first, w_last in zip(first.weights, last.weights):
        w_first.assign(w_last)
    to_first = [0, x.ndim - 1] + list(range(1, x.ndim - 1))
    lp.dfp_gemm_counters(reset=True)
    y, dx, dkernel, _ = _layer_gradients(last, tf.constant(x), 11)
    y_first, dx_first, dkernel_first, _ = _layer_gradients(
        first, tf.constant(x.transpose(to_first)), 11, to_first)
    assert (lp.dfp_gemm_counters()["calls"] == 6) == (preset == "dfp16")
    np.testing.assert_array_equal(np.asarray(y_first), np.transpose(y, to_first))
    np.testing.assert_array_equal(np.asarray(dx_first), np.transpose(dx, to_first))
    np.testing.assert_array_equal(np.asarray(dkernel_first), np.asarray(dkernel))


@pytest.mark.parametrize("kernel", ["dfp", "bf16"])
def test_stock_tf_twins_give_the_same_bits(kernel):
    """implementation="tf" (export, XLA, GPUs): the same bits as the C++ GEMM."""
    conv3d, transpose = conv3d_op(kernel), conv_transpose_op(kernel)
    x3, w3 = rand((1, 3, 4, 3, 2), 12), rand((2, 2, 2, 2, 3), 13, scale=0.3)
    x1, w1 = rand((2, 3, 3), 14), rand((2, 2, 3), 15, scale=0.3)
    runs = {}
    for implementation in ("op", "tf"):
        results = []
        for fn, x, w in (
                (lambda x, w: conv3d(x, w, 1, "SAME", 1, implementation=implementation),
                 x3, w3),
                (lambda x, w: transpose(x, w, [10], 3, "VALID", 1,
                                        implementation=implementation), x1, w1)):
            x, w = tf.constant(x), tf.constant(w)
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = fn(x, w)
                loss = tf.reduce_sum(y * rand(y.shape, 16, scale=1e-2))
            results += [y] + tape.gradient(loss, [x, w])
        runs[implementation] = results
    for index, (got, want) in enumerate(zip(runs["tf"], runs["op"])):
        got, want = np.asarray(got), np.asarray(want)
        if kernel == "dfp" and index == 1:
            # dfp_conv3d's d(x): one implicit INT16 GEMM (INT32 sums over kd*kh*kw*O) in the
            # op path, im2col's GEMM and FP32 col2im in the twin: the same up to FP32 sums.
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
            continue
        np.testing.assert_array_equal(got, want)
