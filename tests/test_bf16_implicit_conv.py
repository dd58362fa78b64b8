"""bf16_conv2d, bf16_conv3d and bf16_conv_transpose (1-3 spatial axes) as implicit BF16
GEMMs: bit-exact against a written-out NumPy model.

The model: operands rounded to BF16 with ml_dtypes (nearest even; NaN the
quiet NaN with its sign; then DAZ), every output summed in the documented
VDPBF16PS order (docs/bf16_gemm.md: K pairs, the odd element's step first;
`step` of test_bf16_gemm).  Forward and d(filters) are the GEMMs of the
materialized patch matrix (the im2col path's bits); d(x) is one GEMM of the
stride-dilated, padded error's patches with the flipped, transposed filters
(K = kh * kw * O, in that order); a transposed convolution is the input
gradient of a convolution (`transpose_references`).  Every kernel tier this CPU runs; the
others are skipped naming the missing extension.
"""

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec._op_library import load as load_ops
from conv_testing import conv_gradients, im2col, im2col_nd, pads_of, rand
from kernel_tiers import params as tier_params
from test_bf16_gemm import step

MIN_NORMAL = 2.0**-126


def bf16(x):
    """The BF16 values the GEMM multiplies: ml_dtypes' nearest-even rounding, then DAZ."""
    x = np.asarray(x, np.float32)
    r = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    quiet_nan = np.where(np.signbit(x), np.uint32(0xFFC00000), np.uint32(0x7FC00000))
    r = np.where(np.isnan(x), quiet_nan.view(np.float32), r)
    return np.where(np.abs(r) < MIN_NORMAL, np.copysign(np.float32(0), r), r).astype(np.float32)


def gemm(a, b):
    """a [m, k] @ b [k, n] in the VDPBF16PS order: K padded to even, odd element first."""
    a, b = bf16(a), bf16(b)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        b = np.pad(b, ((0, 1), (0, 0)))
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for p in range(a.shape[1] // 2):
        acc = step(acc, a[:, 2 * p + 1, None], b[None, 2 * p + 1, :])
        acc = step(acc, a[:, 2 * p, None], b[None, 2 * p, :])
    return acc


def references(x, w, g, strides, padding, dilations):
    """(y, dx, dw) of the implicit-GEMM conv2d, written out."""
    kh, kw, cin, cout = w.shape
    n, height, width, _ = x.shape
    top, bottom, oh = pads_of(height, kh, strides[0], dilations[0], padding)
    left, right, ow = pads_of(width, kw, strides[1], dilations[1], padding)
    cols, _ = im2col(x, kh, kw, strides, (top, bottom, left, right), dilations)
    y = gemm(cols, w.reshape(-1, cout)).reshape(n, oh, ow, cout)
    dw = gemm(cols.T, g.reshape(-1, cout)).reshape(w.shape)
    # d(x): the error dilated by the strides (+0 between its rows and columns),
    # padded so that a stride-1 convolution gives x's size, times the filters
    # flipped in both spatial axes as [kh, kw, O, C].
    dilated = np.zeros((n, (oh - 1) * strides[0] + 1, (ow - 1) * strides[1] + 1, cout),
                       np.float32)
    dilated[:, ::strides[0], ::strides[1], :] = g
    span_h, span_w = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    first_h, first_w = span_h - 1 - top, span_w - 1 - left
    pads = (first_h, height - 1 + span_h - dilated.shape[1] - first_h,
            first_w, width - 1 + span_w - dilated.shape[2] - first_w)
    dcols, _ = im2col(dilated, kh, kw, (1, 1), pads, dilations)
    flipped = np.transpose(w[::-1, ::-1], (0, 1, 3, 2)).reshape(-1, cin)
    dx = gemm(dcols, flipped).reshape(x.shape)
    return y, dx, dw


def _flipped_gemm_of_dilated(v, w, size, before, strides, dilations):
    """One VDPBF16PS-order GEMM: v [N, *out, O'] dilated by the strides (+0 between its
    elements), padded so that a stride-1 convolution has `size` outputs, times w
    [*k, C', O'] flipped in every spatial axis as [*k, O', C'] -> [N, *size, C']."""
    rank = v.ndim - 2
    ksize = w.shape[:rank]
    dilated = np.zeros([v.shape[0]] + [(o - 1) * s + 1 for o, s in zip(v.shape[1:-1], strides)]
                       + [v.shape[-1]], np.float32)
    dilated[(slice(None),) + tuple(slice(None, None, s) for s in strides)] = v
    pads = []
    for n, k, d, b, extent in zip(size, ksize, dilations, before, dilated.shape[1:-1]):
        span = (k - 1) * d + 1
        first = span - 1 - b  # the flipped kernel's first tap on row 0
        pads.append((first, n - 1 + span - extent - first))
    cols, _ = im2col_nd(dilated, ksize, (1,) * rank, pads, dilations)
    flipped = np.swapaxes(w[(slice(None, None, -1),) * rank], -1, -2)
    return gemm(cols, flipped.reshape(-1, w.shape[-2])).reshape(
        [v.shape[0], *size, w.shape[-2]])


def references_nd(x, w, g, strides, padding, dilations):
    """(y, dx, dw) of the implicit-GEMM conv2d / conv3d (filters [*k, C, O]), written out:
    `references` with any number of spatial axes."""
    rank = x.ndim - 2
    axes = [pads_of(n, k, s, d, padding)
            for n, k, s, d in zip(x.shape[1:-1], w.shape[:rank], strides, dilations)]
    cols, out = im2col_nd(x, w.shape[:rank], strides, [(b, a) for b, a, _ in axes], dilations)
    cout = w.shape[-1]
    y = gemm(cols, w.reshape(-1, cout)).reshape([x.shape[0]] + out + [cout])
    dw = gemm(cols.T, g.reshape(-1, cout)).reshape(w.shape)
    dx = _flipped_gemm_of_dilated(g, w, x.shape[1:-1], [b for b, _, _ in axes], strides,
                                  dilations)
    return y, dx, dw


def transpose_references(x, w, g, spatial, strides, padding, dilations):
    """(y, dx, dw) of the implicit-GEMM conv_transpose (x [N, *X, C], filters [*k, O, C],
    output [N, *spatial, O]), written out.  With conv the convolution of z [N, *spatial,
    O] by the filters with TF's pads whose outputs are X: y = conv's d(z) (x dilated,
    padded, times the flipped filters as [*k, C, O]), dx = conv(g), dw = patches(g)^T @ x."""
    rank = x.ndim - 2
    ksize = w.shape[:rank]
    out = x.shape[1:-1]
    pads = []
    for n, k, s, d, o in zip(spatial, ksize, strides, dilations, out):
        needed = (o - 1) * s + (k - 1) * d + 1 - n
        before = max(needed, 0) // 2 if padding == "SAME" else 0
        pads.append((before, max(needed - before, 0)))
    y = _flipped_gemm_of_dilated(x, w, spatial, [b for b, _ in pads],
                                 strides, dilations)
    cols, _ = im2col_nd(g, ksize, strides, pads, dilations)
    dx = gemm(cols, w.reshape(-1, x.shape[-1])).reshape(x.shape)
    dw = gemm(cols.T, x.reshape(-1, x.shape[-1])).reshape(w.shape)
    return y, dx, dw


def run(x, w, g, strides, padding, dilations, **kwargs):
    x, w = tf.constant(x), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = lp.bf16_conv2d(x, w, strides, padding, dilations, **kwargs)
    dx, dw = tape.gradient(y, [x, w], output_gradients=tf.constant(g))
    return np.asarray(y), np.asarray(dx), np.asarray(dw)


def assert_bits(actual, expected, what):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape, what
    diff = actual.view(np.uint32) != expected.view(np.uint32)
    assert not diff.any(), (f"{what}: {int(diff.sum())} of {diff.size} differ, first at "
                            f"{np.argwhere(diff)[0]}")


def check(x, w, g, strides, padding, dilations, **kwargs):
    got = run(x, w, g, strides, padding, dilations, **kwargs)
    for have, want, what in zip(got, references(x, w, g, strides, padding, dilations),
                                ("y", "dx", "dw")):
        assert_bits(have, want, what)
    return got


CASES = [
    # (x shape, filter shape, strides, padding, dilations)
    ((2, 9, 8, 3), (3, 3, 3, 5), (1, 1), "VALID", (1, 1)),
    ((1, 10, 11, 4), (3, 2, 4, 6), (2, 3), "SAME", (1, 1)),
    ((2, 12, 12, 2), (3, 3, 2, 4), (1, 1), "SAME", (2, 2)),
    ((1, 13, 9, 3), (2, 3, 3, 7), (2, 1), "VALID", (2, 3)),
    ((1, 7, 7, 1), (1, 1, 1, 3), (3, 3), "VALID", (1, 1)),  # stride > kernel, C = 1
    ((3, 8, 8, 2), (2, 2, 2, 17), (3, 3), "SAME", (1, 1)),  # stride > kernel, O = 17
    ((2, 4, 3, 5), (2, 2, 5, 40), (1, 1), "VALID", (1, 1)),  # several column blocks
    ((1, 5, 6, 65), (3, 3, 65, 3), (1, 1), "SAME", (1, 1)),  # K = 585: several K pieces
    ((2, 12, 12, 16), (3, 3, 16, 24), (1, 1), "VALID", (1, 1)),  # 200 pixels, 144 rows
]


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations", CASES)
def test_forward_and_gradients_bit_exact(xs, ws, strides, padding, dilations, isa):
    x, w = rand(xs, 1), rand(ws, 2, scale=0.2)
    g = rand(tf.nn.conv2d(x, w, strides, padding, dilations=dilations).shape, 3, scale=1e-2)
    y, _, _ = check(x, w, g, strides, padding, dilations, isa=isa)
    fp32 = tf.nn.conv2d(x, w, strides, padding, dilations=dilations)  # sanity: BF16's error
    np.testing.assert_allclose(y, fp32, atol=2e-2 * np.abs(fp32).max())


def test_long_k_pieces_bit_exact():
    """d(filters) over 2 * 14 * 14 = 392 pixels (two K pieces of the AVX2 kernel, 256)."""
    x, w = rand((2, 16, 16, 8), 4), rand((3, 3, 8, 16), 5, scale=0.2)
    check(x, w, rand((2, 14, 14, 16), 6, scale=1e-2), (1, 1), "VALID", (1, 1))


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
def test_tiny_and_huge_values_bit_exact(isa):
    """Magnitudes whose products the AVX2 kernel cannot prove (FTZ, overflow): its fix-up."""
    x, w = rand((1, 6, 5, 3), 7, scale=1e-19), rand((2, 3, 3, 4), 8, scale=1e-19)
    x[0, 2] *= 1e36  # some rows of normal size
    g = rand((1, 5, 3, 4), 9, scale=3e-20)
    check(x, w, g, (1, 1), "VALID", (1, 1), isa=isa)
    g = rand((1, 3, 5, 4), 23, scale=1e30)  # products overflow to Inf, sums to NaN
    check(x * 1e20, w * 1e20, g, (2, 1), "SAME", (1, 1), isa=isa)


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
def test_nan_and_inf_bit_exact(isa):
    """NaN payloads and signs, Inf * 0 and Inf - Inf: as the model, in all three passes."""
    x, w = rand((2, 6, 6, 2), 10), rand((3, 3, 2, 3), 11)
    x[0, 0, 0, 1] = np.nan
    x[0, 5, 5, 0] = np.inf
    x[1, 2, 3, 0] = -np.inf
    x[1, 3, 3, 1] = np.float32(-np.nan)
    g = rand((2, 3, 3, 3), 12)
    g[0, 1, 1, 2] = np.float32(-np.nan)
    g[1, 0, 0, 0] = np.inf
    y, dx, dw = check(x, w, g, (2, 2), "SAME", (1, 1), isa=isa)
    assert np.isnan(y[0, 0, 0]).all() and np.isfinite(y[0, 1, 1]).all()
    assert not np.isfinite(y[0, 2, 2]).any()  # the patch with x's Inf
    assert np.isnan(dw).any() and np.isnan(dx[0]).any()
    w[1, 1, 0, 2] = np.inf  # an infinite filter value: Inf, or NaN where it meets +0 holes
    _, dx, _ = check(x, w, g, (2, 2), "SAME", (1, 1), isa=isa)
    assert not np.isfinite(dx[..., 0]).any() and np.isnan(dx[0, 0, :, 0]).all()


def _random_geometries(count, seed=321):
    """Seeded random conv2d geometries (kernel, stride, dilation, padding, sizes) with outputs."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, 4, 4))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        h, w = int(rng.integers(kh * dh, 12)), int(rng.integers(kw * dw, 12))
        n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 36))
        padding = ("VALID", "SAME")[int(rng.integers(2))]
        found.append(((n, h, w, c), (kh, kw, c, o), (sh, sw), padding, (dh, dw)))
    return found


@pytest.mark.parametrize("isa", tier_params("bf16_gemm", ("portable", "avx2")))
@pytest.mark.parametrize("index, case", list(enumerate(_random_geometries(10))))
def test_random_geometries_bit_exact(index, case, isa):
    xs, ws, strides, padding, dilations = case
    x, w = rand(xs, index), rand(ws, index + 100, scale=0.3)
    g = rand(tf.nn.conv2d(x, w, strides, padding, dilations=dilations).shape, index + 200)
    check(x, w, g, strides, padding, dilations, isa=isa)


TWIN_CASES = [  # small: the twin is a loop of K steps, run eagerly here
    ((1, 5, 4, 2), (3, 2, 2, 3), (2, 1), "SAME", (1, 2)),
    ((1, 6, 6, 1), (1, 1, 1, 2), (3, 3), "VALID", (1, 1)),  # stride > kernel
    ((2, 4, 5, 3), (2, 2, 3, 2), (1, 1), "VALID", (1, 1)),
]


@pytest.mark.parametrize("xs,ws,strides,padding,dilations", TWIN_CASES)
def test_stock_tf_twin_and_im2col_agree(xs, ws, strides, padding, dilations):
    """The twin (implementation="tf": XLA, export) gives the kernel's bits in all three
    passes; y and d(filters) are also bf16_matmul's on the materialized patches."""
    x, w = rand(xs, 13), rand(ws, 14, scale=0.3)
    g = rand(tf.nn.conv2d(x, w, strides, padding, dilations=dilations).shape, 15)
    kernel = run(x, w, g, strides, padding, dilations)
    twin = run(x, w, g, strides, padding, dilations, implementation="tf")
    for a, b, what in zip(kernel, twin, ("y", "dx", "dw")):
        assert_bits(b, a, what)
    kh, kw, _, cout = w.shape
    top, bottom, _ = pads_of(xs[1], kh, strides[0], dilations[0], padding)
    left, right, _ = pads_of(xs[2], kw, strides[1], dilations[1], padding)
    cols, _ = im2col(x, kh, kw, strides, (top, bottom, left, right), dilations)
    assert_bits(kernel[0].reshape(-1, cout), lp.bf16_matmul(cols, w.reshape(-1, cout)), "y")
    assert_bits(kernel[2].reshape(-1, cout),
                lp.bf16_matmul(cols, g.reshape(-1, cout), transpose_a=True), "dw")


def test_graph_has_no_im2col():
    x, w = tf.constant(rand((2, 8, 8, 4), 16)), tf.constant(rand((3, 3, 4, 4), 17))

    def op_types(groups, filters):  # (groups > 1 keep im2col: tests/test_grouped_conv.py)
        @tf.function(autograph=False)  # (no control flow to convert: faster tracing)
        def step(x, w):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                loss = tf.reduce_sum(lp.bf16_conv2d(x, w, padding="SAME", groups=groups))
            return tape.gradient(loss, [x, w])

        graph = step.get_concrete_function(x, filters).graph.as_graph_def()
        types = {node.op for node in graph.node}
        for function in graph.library.function:
            types.update(node.op for node in function.node_def)
        return types

    types = op_types(1, w)
    assert {"LowprecBf16Conv2d", "LowprecBf16Conv2dBackpropFilter"} <= types
    # (d(x)'s flipped filters are written by the op: no ReverseV2 / Transpose)
    assert not types & {"ExtractImagePatches", "LowprecBf16Matmul", "Conv2D", "ReverseV2",
                        "Transpose"}, types


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
def test_raw_op_flip_filters(isa):
    """flip_filters=True equals passing flip(filters)^T; its shape and channel checks."""
    ops = load_ops()
    dy, w = rand((2, 5, 4, 6), 30), rand((3, 2, 5, 6), 31)  # w: [kh, kw, C=5, O=6]
    flipped = np.ascontiguousarray(np.transpose(w[::-1, ::-1], (0, 1, 3, 2)))
    want = ops.lowprec_bf16_conv2d(dy, flipped, pads=[2, 2, 1, 1], isa=isa)
    got = ops.lowprec_bf16_conv2d(dy, w, pads=[2, 2, 1, 1], isa=isa, flip_filters=True)
    assert got.shape == (2, 7, 5, 5)
    assert_bits(got, want, "flip_filters")
    with pytest.raises(tf.errors.InvalidArgumentError, match="flipped filters"):
        ops.lowprec_bf16_conv2d(dy, flipped, flip_filters=True)


def test_raw_op_bad_arguments():
    ops = load_ops()
    x, w = np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="channels"):
        ops.lowprec_bf16_conv2d(x, np.ones((3, 3, 3, 4), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="strides"):
        ops.lowprec_bf16_conv2d(x, w, strides=[0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="pads"):
        ops.lowprec_bf16_conv2d(x, w, pads=[-1, 0, 0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_dilations"):
        ops.lowprec_bf16_conv2d(x, w, input_dilations=[1])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 4"):
        ops.lowprec_bf16_conv2d(x[0], w)
    with pytest.raises(tf.errors.InvalidArgumentError, match="dy must have shape"):
        ops.lowprec_bf16_conv2d_backprop_filter(x, np.ones((1, 2, 3, 4), np.float32),
                                                filter_size=[3, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter_size"):
        ops.lowprec_bf16_conv2d_backprop_filter(x, np.ones((1, 3, 3, 4), np.float32),
                                                filter_size=[0, 3])
    missing = [t for t in ("avx2", "avx512") if t not in lp.kernel_tiers()["bf16_gemm"][
        "available"]]
    for tier in missing:
        with pytest.raises(tf.errors.InvalidArgumentError, match="not supported by this CPU"):
            ops.lowprec_bf16_conv2d(x, w, isa=tier)
    with pytest.raises(ValueError, match="padding"):
        lp.bf16_conv2d(x, w, padding="FULL")


@pytest.mark.parametrize("implementation", ["op", "tf"])
def test_empty_batch_gives_zero_filter_gradient(implementation):
    """d(filters) sums over K = 0 terms: +0 on the kernels and the twin (whose loop over
    the K pairs is then empty), for conv2d and a transposed convolution."""
    x, w = tf.zeros((0, 5, 5, 2)), tf.constant(rand((3, 3, 2, 4), 18))
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = lp.bf16_conv2d(x, w, implementation=implementation)
    dx, dw = tape.gradient(y, [x, w], output_gradients=tf.zeros(y.shape))
    assert y.shape == (0, 3, 3, 4) and dx.shape == (0, 5, 5, 2)
    assert_bits(dw, np.zeros((3, 3, 2, 4), np.float32), "dw")
    y, dx, dw = conv_gradients(lp.bf16_conv_transpose, np.zeros((0, 3, 2), np.float32),
                               rand((2, 3, 2), 19), np.zeros((0, 7, 3), np.float32),
                               [0, 7, 3], 2, "VALID", 1, implementation=implementation)
    assert y.shape == (0, 7, 3) and dx.shape == (0, 3, 2)
    assert_bits(dw, np.zeros((2, 3, 2), np.float32), "transposed dw")


def test_keras_conv2d_trains_under_bf16_native():
    keras.utils.set_random_seed(19)
    policy = lp.Policy("bf16_native")
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              keras.layers.Conv2D(6, 3, strides=2, padding="same",
                                                  dtype=policy),
                              keras.layers.Conv2D(4, 3, dtype=policy),
                              keras.layers.Flatten(),
                              keras.layers.Dense(2, dtype=policy)])
    model.compile(keras.optimizers.SGD(0.1), "mse", run_eagerly=True)  # (no tracing: fast)
    x, y = rand((4, 8, 8, 3), 20), rand((4, 2), 21)
    before = [np.array(v) for v in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = model.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    # The second layer's error reaches the first through the implicit d(x).
    second = model.layers[1]
    h = tf.constant(model.layers[0](x))
    g = rand((4, 2, 2, 4), 22)
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = second(h)
    dh = tape.gradient(out, h, output_gradients=tf.constant(g))
    _, want_dx, _ = references(np.asarray(h), np.asarray(second.kernel), g, (1, 1), "VALID",
                               (1, 1))
    assert_bits(dh, want_dx, "the layer's d(x)")


def _patches_3d(x, k, strides, pads, dilations, input_dilations=(1, 1, 1)):
    """NumPy patch matrix [N*OD*OH*OW, kd*kh*kw*C] (columns (kd, kh, kw, C)) of NDHWC x,
    dilated by input_dilations (zeros between planes / rows / columns) and padded."""
    n, *size, c = x.shape
    dilated = np.zeros([n] + [(s - 1) * l + 1 for s, l in zip(size, input_dilations)] + [c],
                       np.float32)
    dilated[:, ::input_dilations[0], ::input_dilations[1], ::input_dilations[2]] = x
    padded = np.pad(dilated, [(0, 0)] + [(pads[2 * a], pads[2 * a + 1]) for a in range(3)]
                    + [(0, 0)])
    spans = [(kk - 1) * d + 1 for kk, d in zip(k, dilations)]
    out = [(padded.shape[1 + a] - spans[a]) // strides[a] + 1 for a in range(3)]
    cols = np.empty((n, *out, *k, c), np.float32)
    for t in range(k[0]):
        for i in range(k[1]):
            for j in range(k[2]):
                z0, y0, x0 = t * dilations[0], i * dilations[1], j * dilations[2]
                cols[:, :, :, :, t, i, j, :] = padded[
                    :, z0:z0 + (out[0] - 1) * strides[0] + 1:strides[0],
                    y0:y0 + (out[1] - 1) * strides[1] + 1:strides[1],
                    x0:x0 + (out[2] - 1) * strides[2] + 1:strides[2], :]
    return cols.reshape(n * int(np.prod(out)), -1), out


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
def test_raw_conv3d_ops_bit_exact(isa):
    """LowprecBf16Conv3d (forward; flip_filters on the dilated error: d(x)) and
    LowprecBf16Conv3dBackpropFilter against the NumPy VDPBF16PS-order model."""
    from tf_lowprec.gemm.implicit_conv import input_gradient_pads
    ops = load_ops()
    x, w = rand((2, 4, 5, 4, 3), 40), rand((2, 3, 2, 3, 5), 41, scale=0.3)
    strides, dilations, pads = (1, 2, 1), (1, 1, 2), (0, 1, 1, 1, 1, 0)
    cols, out = _patches_3d(x, w.shape[:3], strides, pads, dilations)
    y = ops.lowprec_bf16_conv3d(x, w, strides=strides, dilations=dilations, pads=pads, isa=isa)
    assert_bits(y, gemm(cols, w.reshape(-1, 5)).reshape(2, *out, 5), "y")
    g = rand((2, *out, 5), 42)
    dw = ops.lowprec_bf16_conv3d_backprop_filter(x, g, filter_size=w.shape[:3], strides=strides,
                                                  dilations=dilations, pads=pads, isa=isa)
    assert_bits(dw, gemm(cols.T, g.reshape(-1, 5)).reshape(w.shape), "dw")
    dx_pads = []
    for a in range(3):
        dx_pads += input_gradient_pads(x.shape[1 + a], w.shape[a], strides[a], dilations[a],
                                       pads[2 * a], out[a])
    dx = ops.lowprec_bf16_conv3d(g, w, dilations=dilations, input_dilations=strides,
                                 pads=dx_pads, flip_filters=True, isa=isa)
    dcols, dx_out = _patches_3d(g, w.shape[:3], (1, 1, 1), dx_pads, dilations, strides)
    assert dx_out == list(x.shape[1:4])
    flipped = np.transpose(w[::-1, ::-1, ::-1], (0, 1, 2, 4, 3)).reshape(-1, 3)
    assert_bits(dx, gemm(dcols, flipped).reshape(x.shape), "dx")
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter_size"):
        ops.lowprec_bf16_conv3d_backprop_filter(x, g, filter_size=[2, 3])


def test_conv3d_runs_the_ops_and_the_twin_has_their_bits():
    """bf16_conv3d with the kernels: all three GEMMs on the 3-D implicit-GEMM ops (d(x):
    LowprecBf16Conv3d with flip_filters); the stock-TF twin gives the same bits."""
    x, w = rand((1, 4, 3, 4, 2), 50), rand((2, 2, 3, 2, 3), 51, scale=0.3)
    g = rand((1, 2, 3, 4, 3), 52)  # (SAME, strides (2, 1, 1))

    def run3d(**kwargs):
        xv, wv = tf.constant(x), tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch([xv, wv])
            y = lp.bf16_conv3d(xv, wv, strides=(2, 1, 1), padding="SAME", **kwargs)
        return (y, *tape.gradient(y, [xv, wv], output_gradients=tf.constant(g)))

    for a, b, what in zip(run3d(), run3d(implementation="tf"), ("y", "dx", "dw")):
        assert_bits(a, b, what)

    @tf.function(autograph=False)
    def step(xv, wv):
        with tf.GradientTape() as tape:
            tape.watch([xv, wv])
            loss = tf.reduce_sum(lp.bf16_conv3d(xv, wv, padding="SAME"))
        return tape.gradient(loss, [xv, wv])

    graph = step.get_concrete_function(tf.constant(x), tf.constant(w)).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    assert {"LowprecBf16Conv3d", "LowprecBf16Conv3dBackpropFilter"} <= types, types


CONV3D_CASES = [
    # (x shape, filter shape, strides, padding, dilations)
    ((1, 4, 3, 4, 2), (2, 2, 3, 2, 3), (2, 1, 1), "SAME", (1, 1, 1)),
    ((2, 5, 4, 5, 3), (2, 1, 2, 3, 2), (3, 2, 1), "VALID", (1, 1, 2)),
]


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations", CONV3D_CASES)
def test_conv3d_bit_exact(xs, ws, strides, padding, dilations, isa):
    """bf16_conv3d: forward, d(filters) and the implicit d(x) (one GEMM of the dilated
    error's patches with the flipped filters) against the written-out model."""
    x, w = rand(xs, 60), rand(ws, 61, scale=0.3)
    out = [pads_of(n, k, s, d, padding)[2]
           for n, k, s, d in zip(xs[1:-1], ws[:3], strides, dilations)]
    g = rand((xs[0], *out, ws[-1]), 62)
    want = references_nd(x, w, g, strides, padding, dilations)
    got = conv_gradients(lp.bf16_conv3d, x, w, g, strides, padding, dilations, isa=isa)
    for a, b, what in zip(got, want, ("y", "dx", "dw")):
        assert_bits(a, b, what)


TRANSPOSE_CASES = [
    # (x shape, filters [*k, O, C], output spatial, strides, padding, dilations)
    ((2, 5, 3), (3, 4, 3), (9,), (2,), "SAME", (1,)),
    ((2, 3, 3), (2, 2, 3), (10,), (3,), "VALID", (1,)),  # output padding, gaps
    ((1, 3, 3, 2), (3, 2, 3, 2), (6, 6), (2, 2), "SAME", (1, 2)),
    ((2, 3, 4, 3), (3, 3, 2, 3), (5, 6), (1, 1), "VALID", (1, 1)),
    ((1, 2, 3, 2, 2), (2, 2, 3, 3, 2), (4, 6, 4), (2, 2, 2), "SAME", (1, 1, 1)),
]


@pytest.mark.parametrize("isa", tier_params("bf16_gemm"))
@pytest.mark.parametrize("xs,ws,spatial,strides,padding,dilations", TRANSPOSE_CASES)
def test_conv_transpose_bit_exact(xs, ws, spatial, strides, padding, dilations, isa):
    """bf16_conv_transpose (1-3 spatial axes) as implicit GEMMs against the written-out
    model; the stock-TF twin gives the same bits."""
    x, w = rand(xs, 63), rand(ws, 64, scale=0.3)
    g = rand((xs[0], *spatial, ws[-2]), 65)
    want = transpose_references(x, w, g, spatial, strides, padding, dilations)
    shape = [xs[0], *spatial, ws[-2]]
    for options in (dict(isa=isa), dict(implementation="tf")):
        got = conv_gradients(lp.bf16_conv_transpose, x, w, g, shape, strides, padding,
                             dilations, **options)
        for a, b, what in zip(got, want, ("y", "dx", "dw")):
            assert_bits(a, b, f"{what} {options}")


def _op_types(fn, *args):
    """The op type of every node of fn's graph and its functions (with repeats)."""
    graph = tf.function(fn, autograph=False).get_concrete_function(*args).graph.as_graph_def()
    types = [node.op for node in graph.node]
    for function in graph.library.function:
        types += [node.op for node in function.node_def]
    return types


def test_conv3d_and_transpose_graphs_have_no_im2col():
    """Forward and both gradients of bf16_conv3d and bf16_conv_transpose (1-D / 3-D): the
    implicit-GEMM ops only, no patch extraction, scatter (col2im) or BF16 matmul op."""
    def gradients(conv):
        def step(xv, wv):
            with tf.GradientTape() as tape:
                tape.watch([xv, wv])
                loss = tf.reduce_sum(conv(xv, wv))
            return tape.gradient(loss, [xv, wv])
        return step

    x3, w3 = tf.constant(rand((1, 4, 3, 4, 2), 66)), tf.constant(rand((2, 2, 3, 2, 3), 67))
    x1, w1 = tf.constant(rand((2, 3, 3), 68)), tf.constant(rand((2, 2, 3), 69))
    for step, args, ops in (
            (gradients(lambda a, b: lp.bf16_conv3d(a, b, strides=2, padding="SAME")),
             (x3, w3), {"LowprecBf16Conv3d", "LowprecBf16Conv3dBackpropFilter"}),
            (gradients(lambda a, b: lp.bf16_conv_transpose(a, b, [1, 4, 6, 4, 3], 2, "SAME")),
             (tf.constant(rand((1, 2, 3, 2, 2), 70)), tf.constant(rand((2, 2, 3, 3, 2), 71))),
             {"LowprecBf16Conv3d", "LowprecBf16Conv3dBackpropFilter"}),
            (gradients(lambda a, b: lp.bf16_conv_transpose(a, b, [2, 10, 2], 3, "VALID")),
             (x1, w1), {"LowprecBf16Conv2d", "LowprecBf16Conv2dBackpropFilter"})):
        types = _op_types(step, *args)
        assert ops <= set(types), types
        # im2col: patch ops or slices concatenated; col2im: StridedSliceGrad per offset.
        banned = {"ExtractImagePatches", "ExtractVolumePatches", "LowprecBf16Matmul",
                  "StridedSliceGrad", "ConcatV2"}
        assert not banned & set(types), banned & set(types)
