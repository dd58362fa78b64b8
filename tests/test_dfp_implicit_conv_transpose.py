"""dfp_conv_transpose (1-D, 2-D, 3-D) as implicit INT16 GEMMs: bit-exact against NumPy.

A transposed convolution is the input gradient of the convolution of its
output with the filters, so each pass is one INT16 GEMM of patches written
out here in NumPy (im2col, then the INT16/INT32 GEMM reference):

* y: patches of x dilated by the strides and padded, times the filters
  flipped in every spatial axis as [*k, C, O] (K = prod(k) * C);
* d(x): patches of the error (stride s, TF's pads) times the filters as
  [prod(k) * O, C];
* d(filters): the same patches transposed times x ([prod(k) * O, C]).

Every kernel tier this CPU runs; the others are skipped naming the ISA.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import dfp_conv
from tf_lowprec.gemm import reference as reference_gemm
from kernel_tiers import params as tier_params
from conv_testing import im2col_nd
from test_dfp_implicit_conv import im2col, quantized, rand


def conv_pads(spatial, x_spatial, ksize, strides, padding, dilations):
    """TF's (before, after) pads of the convolution of the output whose windows are x's."""
    pads = []
    for n, o, k, s, d in zip(spatial, x_spatial, ksize, strides, dilations):
        needed = (o - 1) * s + (k - 1) * d + 1 - n
        before = max(needed, 0) // 2 if padding == "SAME" else 0
        pads.append((before, max(needed - before, 0)))  # needed < 0: output padding
    return pads


def references(x, w, g, spatial, strides, padding, dilations):
    """(y, dx, dw) of the 2-D transposed convolution, NHWC, w [kh, kw, O, C]."""
    kh, kw, cout, cin = w.shape
    n, height, width, _ = x.shape
    (top, bottom), (left, right) = conv_pads(spatial, (height, width), (kh, kw), strides,
                                             padding, dilations)
    (xq, ex), (wq, ew), (gq, eg) = quantized(x), quantized(w), quantized(g)
    gemm = reference_gemm.dfp_matmul_quantized
    # y: x with s - 1 zeros between its rows (columns), padded so that a stride-1
    # convolution with the flipped filters gives the output's size.
    dilated = np.zeros((n, (height - 1) * strides[0] + 1, (width - 1) * strides[1] + 1, cin),
                       np.float32)
    dilated[:, ::strides[0], ::strides[1], :] = xq
    span_h, span_w = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    first_h, first_w = span_h - 1 - top, span_w - 1 - left
    pads = (first_h, spatial[0] - 1 + span_h - dilated.shape[1] - first_h,
            first_w, spatial[1] - 1 + span_w - dilated.shape[2] - first_w)
    cols, (_, oh, ow) = im2col(dilated, kh, kw, (1, 1), pads, dilations)
    assert (oh, ow) == tuple(spatial)
    flipped = np.transpose(wq[::-1, ::-1], (0, 1, 3, 2)).reshape(-1, cout).copy()
    y = gemm(cols, ex, flipped, ew).reshape(n, oh, ow, cout)
    # d(x) and d(filters): the convolution of the error (stride s, TF's pads).
    gcols, (_, gh, gw) = im2col(gq, kh, kw, strides, (top, bottom, left, right), dilations)
    assert (gh, gw) == (height, width)
    dx = gemm(gcols, eg, wq.reshape(-1, cin).copy(), ew).reshape(x.shape)
    dw = gemm(gcols.T.copy(), eg, xq.reshape(-1, cin).copy(), ex).reshape(w.shape)
    return y, dx, dw


def references_1d(x, w, g, spatial, strides, padding, dilations):
    """The 1-D transposed convolution as the 2-D one of height 1 (the same sums)."""
    got = references(x[:, None], w[None], g[:, None], (1,) + tuple(spatial), (1,) + strides,
                     padding, (1,) + dilations)
    return got[0][:, 0], got[1][:, 0], got[2][0]


def run(x, w, g, spatial, strides, padding, dilations, **kwargs):
    x, w = tf.constant(x), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = lp.dfp_conv_transpose(x, w, [x.shape[0], *spatial, w.shape[-2]], strides, padding,
                                  dilations, **kwargs)
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])
    return np.asarray(y), np.asarray(dx), np.asarray(dw)


def float64_transpose(x, w, spatial, strides, padding, dilations):
    """The transposed convolution summed in float64: each x pixel times each tap, scattered
    to output position p * s + i * d - before (a sanity reference, any dilation)."""
    if x.ndim == 3:
        return float64_transpose(x[:, None], w[None], (1, *spatial), (1, *strides), padding,
                                 (1, *dilations))[:, 0]
    (top, _), (left, _) = conv_pads(spatial, x.shape[1:3], w.shape[:2], strides, padding,
                                    dilations)
    y = np.zeros((x.shape[0], *spatial, w.shape[2]))
    for p in range(x.shape[1]):
        for q in range(x.shape[2]):
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    r = p * strides[0] + i * dilations[0] - top
                    c = q * strides[1] + j * dilations[1] - left
                    if 0 <= r < spatial[0] and 0 <= c < spatial[1]:
                        y[:, r, c] += x[:, p, q].astype(np.float64) @ w[i, j].T
    return y


def check(case, seed, isa, **kwargs):
    xs, ws, spatial, strides, padding, dilations = case
    x, w = rand(xs, seed), rand(ws, seed + 1, scale=0.3)
    g = rand((xs[0], *spatial, ws[-2]), seed + 2, scale=1e-2)
    got = run(x, w, g, spatial, strides, padding, dilations, isa=isa, **kwargs)
    written_out = references_1d if len(xs) == 3 else references
    for have, want in zip(got, written_out(x, w, g, spatial, strides, padding, dilations)):
        np.testing.assert_array_equal(have, want)
    exact = float64_transpose(x, w, spatial, strides, padding, dilations)
    np.testing.assert_allclose(got[0], exact, atol=2e-3 * np.abs(exact).max())


CASES = [
    # (x shape, filter shape [*k, O, C], output spatial, strides, padding, dilations)
    ((2, 4, 5, 3), (3, 3, 4, 3), (8, 10), (2, 2), "SAME", (1, 1)),
    ((1, 3, 4, 2), (3, 2, 5, 2), (5, 5), (1, 1), "VALID", (1, 1)),
    ((1, 3, 3, 2), (3, 2, 3, 2), (6, 6), (2, 2), "SAME", (1, 2)),
    # Output padding: 9 > 8 rows (VALID), 7 < 9 (SAME); stride 3 > kernel 2.
    ((2, 3, 3, 3), (2, 2, 2, 3), (9, 10), (3, 3), "VALID", (1, 1)),
    ((1, 3, 4, 2), (3, 3, 2, 2), (7, 11), (3, 3), "SAME", (1, 1)),
    ((2, 5, 3), (3, 4, 3), (9,), (2,), "SAME", (1,)),  # Conv1DTranspose (stride 2)
    ((1, 4, 70), (2, 3, 70), (12,), (3,), "VALID", (2,)),  # K = 140: several chunks
]


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_bit_exact(case, isa):
    check(case, 1, isa)


@pytest.mark.parametrize("case", CASES)
def test_backward_bits_equal_the_col2im_path(case, monkeypatch):
    """d(x) and d(filters) are the col2im path's GEMMs (K in the same order): the same bits.
    So is the forward where no two windows overlap (stride >= span) and the K = C GEMM there
    is one chunk (C <= 64): each output is then one INT32 sum in both."""
    xs, ws, spatial, strides, padding, dilations = case
    x, w = rand(xs, 3), rand(ws, 4, scale=0.3)
    g = rand((xs[0], *spatial, ws[-2]), 5, scale=1e-2)
    implicit = run(x, w, g, spatial, strides, padding, dilations)
    monkeypatch.setattr(dfp_conv, "transpose_applies", lambda *args: False)
    col2im = run(x, w, g, spatial, strides, padding, dilations)
    np.testing.assert_array_equal(implicit[1], col2im[1])
    np.testing.assert_array_equal(implicit[2], col2im[2])
    spans = [(k - 1) * d + 1 for k, d in zip(ws, dilations)]
    if all(s >= span for s, span in zip(strides, spans)):
        # (The 1-D case with C = 70: the K = 140 chunks cut the channels elsewhere.)
        assert np.array_equal(implicit[0], col2im[0]) == (xs[-1] <= 64)


def _random_geometries(count, seed=321):
    """Seeded geometries: kernels 1-4, strides 1-3, dilations 1-2, every output size that
    fits (output padding), 1-D and 2-D."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        rank = int(rng.integers(1, 3))
        ksize = tuple(int(v) for v in rng.integers(1, 5, rank))
        strides = tuple(int(v) for v in rng.integers(1, 4, rank))
        dilations = tuple(int(v) for v in rng.integers(1, 3, rank))
        x_spatial = tuple(int(v) for v in rng.integers(1, 6, rank))
        padding = ("VALID", "SAME")[int(rng.integers(2))]
        spatial = []
        for n, k, s, d in zip(x_spatial, ksize, strides, dilations):
            span = (k - 1) * d + 1
            low = (n - 1) * s + (span if padding == "VALID" else 1)
            spatial.append(low + int(rng.integers(s)))  # all s sizes whose conv gives n
        n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 9))
        found.append(((n, *x_spatial, c), (*ksize, o, c), tuple(spatial), strides, padding,
                      dilations))
    return found


@pytest.mark.parametrize("isa", tier_params("dfp_gemm", ("portable", "avx2")))
@pytest.mark.parametrize("index, case", list(enumerate(_random_geometries(12))))
def test_random_geometries_bit_exact(index, case, isa):
    check(case, 10 * index, isa)


def test_stochastic_rounding_uses_the_seeded_quantization():
    """x uses seed, the filters seed + [0, 1], the error seed + [0, 2] (the documented
    contract); the kernels' own nearest rounding of them is then lossless."""
    xs, ws, spatial, strides = (2, 3, 4, 3), (3, 3, 2, 3), (6, 8), (2, 2)
    x, w, g = rand(xs, 9), rand(ws, 10, scale=0.2), rand((2, *spatial, 2), 11, scale=1e-3)
    seed = tf.constant([5, 7], tf.int64)
    got = run(x, w, g, spatial, strides, "SAME", (1, 1), rounding="stochastic", seed=seed,
              backward_rounding="stochastic")
    xr = np.asarray(lp.quantize_dfp(x, rounding="stochastic", seed=seed))
    wr = np.asarray(lp.quantize_dfp(w, rounding="stochastic", seed=seed + [0, 1]))
    gr = np.asarray(lp.quantize_dfp(g, rounding="stochastic", seed=seed + [0, 2]))
    for have, want in zip(got, references(xr, wr, gr, spatial, strides, "SAME", (1, 1))):
        np.testing.assert_array_equal(have, want)
    toward_zero = run(x, w, g, spatial, strides, "SAME", (1, 1), rounding="toward_zero",
                      backward_rounding="toward_zero")
    xr, wr, gr = (np.asarray(lp.quantize_dfp(v, rounding="toward_zero")) for v in (x, w, g))
    for have, want in zip(toward_zero, references(xr, wr, gr, spatial, strides, "SAME",
                                                  (1, 1))):
        np.testing.assert_array_equal(have, want)


def test_graph_has_no_col2im_and_three_gemms():
    x, w = rand((2, 3, 3, 2), 12), rand((3, 3, 4, 2), 13)

    @tf.function(autograph=False)  # (autograph's first conversion of the library: ~10 s)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(lp.dfp_conv_transpose(x, w, [2, 6, 6, 4], 2, "SAME"))
        return [loss] + tape.gradient(loss, [x, w])

    concrete = step.get_concrete_function(tf.constant(x), tf.constant(w))
    lp.dfp_gemm_counters(reset=True)
    concrete(tf.constant(x), tf.constant(w))
    assert lp.dfp_gemm_counters()["calls"] == 3  # forward, d(x), d(filters)
    graph = concrete.graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    assert {"LowprecDfpConv2d", "LowprecDfpConv2dBackpropFilter"} <= types
    assert not types & {"StridedSliceGrad", "LowprecDfpMatmulFused", "ConcatV2",
                        "Conv2DBackpropInput"}, types


def references_nd(x, w, g, spatial, strides, padding, dilations):
    """(y, dx, dw) of the transposed convolution with any number of spatial axes,
    channels last, w [*k, O, C]: `references` written with the rank-generic im2col."""
    rank = x.ndim - 2
    ksize, (cout, cin) = w.shape[:rank], w.shape[rank:]
    pads = conv_pads(spatial, x.shape[1:-1], ksize, strides, padding, dilations)
    (xq, ex), (wq, ew), (gq, eg) = quantized(x), quantized(w), quantized(g)
    gemm = reference_gemm.dfp_matmul_quantized
    dilated = np.zeros([x.shape[0]] + [(n - 1) * s + 1 for n, s in zip(x.shape[1:-1], strides)]
                       + [cin], np.float32)
    dilated[(slice(None),) + tuple(slice(None, None, s) for s in strides)] = xq
    forward_pads = []
    for size, k, d, (before, _), extent in zip(spatial, ksize, dilations, pads,
                                               dilated.shape[1:-1]):
        span = (k - 1) * d + 1
        first = span - 1 - before
        forward_pads.append((first, size - 1 + span - extent - first))
    cols, out = im2col_nd(dilated, ksize, (1,) * rank, forward_pads, dilations)
    assert tuple(out) == tuple(spatial)
    flipped = np.swapaxes(wq[(slice(None, None, -1),) * rank], -1, -2).reshape(-1, cout)
    y = gemm(cols, ex, flipped.copy(), ew).reshape(x.shape[0], *spatial, cout)
    gcols, gout = im2col_nd(gq, ksize, strides, pads, dilations)
    assert tuple(gout) == tuple(x.shape[1:-1])
    dx = gemm(gcols, eg, wq.reshape(-1, cin).copy(), ew).reshape(x.shape)
    dw = gemm(gcols.T.copy(), eg, xq.reshape(-1, cin).copy(), ex).reshape(w.shape)
    return y, dx, dw


CASES_3D = [
    # (x shape, filter shape [kd, kh, kw, O, C], output spatial, strides, padding, dilations)
    ((2, 2, 3, 2, 3), (2, 3, 2, 4, 3), (4, 6, 4), (2, 2, 2), "SAME", (1, 1, 1)),
    ((1, 2, 2, 3, 2), (2, 2, 3, 3, 2), (3, 5, 7), (1, 2, 1), "VALID", (1, 1, 2)),
    # Output padding (stride 3 > kernel 2: VALID 7 > 6) and K = 8 * 20 = 160: three chunks.
    ((1, 2, 2, 2, 20), (2, 2, 2, 3, 20), (7, 6, 7), (3, 3, 3), "VALID", (1, 1, 1)),
]


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("case", CASES_3D)
def test_3d_forward_and_gradients_bit_exact(case, isa):
    xs, ws, spatial, strides, padding, dilations = case
    x, w = rand(xs, 21), rand(ws, 22, scale=0.3)
    g = rand((xs[0], *spatial, ws[-2]), 23, scale=1e-2)
    got = run(x, w, g, spatial, strides, padding, dilations, isa=isa)
    for have, want in zip(got, references_nd(x, w, g, spatial, strides, padding, dilations)):
        np.testing.assert_array_equal(have, want)
    exact = tf.nn.conv_transpose(x, w, [xs[0], *spatial, ws[-2]], strides, padding,
                                 dilations=dilations)
    np.testing.assert_allclose(got[0], np.asarray(exact), atol=2e-3 * np.abs(exact).max())


def test_nd_reference_is_the_2d_one():
    """The rank-generic reference gives the 2-D reference's bits (so it writes the same sums)."""
    xs, ws, spatial, strides, padding, dilations = CASES[0]
    x, w = rand(xs, 24), rand(ws, 25, scale=0.3)
    g = rand((xs[0], *spatial, ws[-2]), 26, scale=1e-2)
    for nd, two in zip(references_nd(x, w, g, spatial, strides, padding, dilations),
                       references(x, w, g, spatial, strides, padding, dilations)):
        np.testing.assert_array_equal(nd, two)


def test_3d_stochastic_rounding_uses_the_seeded_quantization():
    xs, ws, spatial, strides = (1, 2, 2, 2, 2), (2, 2, 2, 3, 2), (4, 4, 4), (2, 2, 2)
    x, w, g = rand(xs, 27), rand(ws, 28, scale=0.2), rand((1, *spatial, 3), 29, scale=1e-3)
    seed = tf.constant([5, 7], tf.int64)
    got = run(x, w, g, spatial, strides, "SAME", (1, 1, 1), rounding="stochastic", seed=seed,
              backward_rounding="stochastic")
    xr = np.asarray(lp.quantize_dfp(x, rounding="stochastic", seed=seed))
    wr = np.asarray(lp.quantize_dfp(w, rounding="stochastic", seed=seed + [0, 1]))
    gr = np.asarray(lp.quantize_dfp(g, rounding="stochastic", seed=seed + [0, 2]))
    for have, want in zip(got, references_nd(xr, wr, gr, spatial, strides, "SAME", (1, 1, 1))):
        np.testing.assert_array_equal(have, want)


def test_3d_graph_has_no_col2im_or_im2col():
    x, w = rand((1, 2, 2, 2, 2), 14), rand((2, 2, 2, 3, 2), 15)

    @tf.function(autograph=False)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(lp.dfp_conv_transpose(x, w, [1, 4, 4, 4, 3], 2, "SAME"))
        return [loss] + tape.gradient(loss, [x, w])

    concrete = step.get_concrete_function(tf.constant(x), tf.constant(w))
    lp.dfp_gemm_counters(reset=True)
    concrete(tf.constant(x), tf.constant(w))
    assert lp.dfp_gemm_counters()["calls"] == 3  # forward, d(x), d(filters)
    graph = concrete.graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    assert {"LowprecDfpConv3d", "LowprecDfpConv3dBackpropFilter"} <= types
    # col2im is a scatter-add / strided-slice gradient, im2col gathers or
    # extracts volume patches; the implicit path has none of them.
    assert not types & {"StridedSliceGrad", "LowprecDfpMatmulFused", "LowprecDfpMatmul",
                        "ConcatV2", "ExtractVolumePatches", "GatherV2", "ScatterNd",
                        "TensorScatterAdd", "UnsortedSegmentSum"}, types


@pytest.fixture
def float32_afterwards():
    yield
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("layer,shape", [
    (lambda: keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same",
                                          output_padding=1), (5, 4, 2)),
    (lambda: keras.layers.Conv1DTranspose(2, 4, strides=3), (6, 3)),
], ids=["conv2d_transpose", "conv1d_transpose"])
def test_keras_model_trains_one_step_on_the_implicit_gemms(layer, shape, float32_afterwards,
                                                           monkeypatch):
    implicit = []  # traced calls of the implicit path (the col2im path also counts GEMMs)

    def traced(*args, **kwargs):
        implicit.append(args[2].spatial)
        return conv_transpose(*args, **kwargs)

    conv_transpose = dfp_conv.conv_transpose
    monkeypatch.setattr(dfp_conv, "conv_transpose", traced)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy("dfp16"))
    model = keras.Sequential([keras.Input(shape), layer(), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = rand((4, *shape), 16), rand((4, 1), 17)
    before = [np.asarray(v) for v in model.layers[0].weights]
    lp.dfp_gemm_counters(reset=True)
    model.train_on_batch(x, y)
    # Transposed conv: forward, d(x) (not needed for the first layer, may be pruned),
    # d(filters); Dense: forward, d(x), d(W).
    assert lp.dfp_gemm_counters()["calls"] >= 5
    assert implicit and all(len(spatial) == len(shape) - 1 for spatial in implicit)
    after = [np.asarray(v) for v in model.layers[0].weights]
    assert all(np.isfinite(v).all() for v in after)
    assert not np.array_equal(before[0], after[0])
