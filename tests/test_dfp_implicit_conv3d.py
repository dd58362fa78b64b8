"""dfp_conv3d as implicit INT16 GEMMs: bit-exact against written-out NumPy references.

Forward and d(filters) are the GEMMs of the materialized volume patches
(order kd, kh, kw, C: the bits of the 3-D im2col path); d(x) is one INT16
GEMM of the stride-dilated, padded error's patches with the flipped,
transposed filters (INT32 chunk sums over kd * kh * kw * O).  Every kernel
tier this CPU runs; the others are skipped naming the ISA.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec._op_library import load as load_ops
from tf_lowprec.gemm import dfp_conv
from conv_testing import (check_filter_gradient_gemm_orientations, conv_gradients,
                          dfp_implicit_conv_references, im2col_nd, pads_of, rand)
from kernel_tiers import params as tier_params


references = dfp_implicit_conv_references
run = functools.partial(conv_gradients, lp.dfp_conv3d)  # (x, w, g, strides, padding, dilations)


def output_shape(x, w, strides, padding, dilations):
    """[N, OD, OH, OW, O] (TF's CPU conv3d has no dilations to ask)."""
    return (x.shape[0], *(pads_of(n, k, s, d, padding)[2] for n, k, s, d in
                          zip(x.shape[1:-1], w.shape[:3], strides, dilations)), w.shape[-1])


CASES = [
    # (x shape, filter shape, strides, padding, dilations)
    ((2, 4, 5, 4, 3), (2, 3, 2, 3, 4), (1, 1, 1), "VALID", (1, 1, 1)),
    ((1, 5, 4, 6, 2), (3, 2, 2, 2, 5), (2, 1, 2), "SAME", (1, 2, 1)),
    ((1, 6, 5, 5, 2), (2, 2, 3, 2, 3), (1, 2, 1), "VALID", (2, 1, 2)),
    # Stride > kernel: the largest element of x is in no patch (it sets the exponent).
    ((1, 5, 5, 5, 2), (1, 2, 1, 2, 3), (3, 1, 2), "VALID", (1, 1, 1)),
    ((2, 4, 4, 4, 1), (1, 1, 1, 1, 17), (3, 3, 3), "SAME", (1, 1, 1)),  # C = 1, O = 17
    ((1, 3, 3, 4, 40), (2, 2, 2, 40, 2), (1, 1, 1), "SAME", (1, 1, 1)),  # K = 320
]


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations", CASES)
def test_forward_and_gradients_bit_exact(xs, ws, strides, padding, dilations, isa):
    x, w = rand(xs, 1), rand(ws, 2, scale=0.2)
    x.reshape(-1)[-1] = 8.0  # the largest element; in no patch in the stride > kernel cases
    g = rand(output_shape(x, w, strides, padding, dilations), 3, scale=1e-2)
    y, dx, dw = run(x, w, g, strides, padding, dilations, isa=isa)
    want_y, want_dx, want_dw = references(x, w, g, strides, padding, dilations)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dw, want_dw)
    np.testing.assert_array_equal(dx, want_dx)
    # Sanity: within DFP16's error of the float64 convolution.
    axes = [pads_of(n, k, s, d, padding)[:2]
            for n, k, s, d in zip(xs[1:-1], ws[:3], strides, dilations)]
    cols, _ = im2col_nd(x.astype(np.float64), ws[:3], strides, axes, dilations)
    exact = (cols @ w.reshape(-1, ws[-1]).astype(np.float64)).reshape(y.shape)
    np.testing.assert_allclose(y, exact, atol=2e-3 * np.abs(exact).max())


def _random_geometries(count, seed=321):
    """Seeded random conv3d geometries (kernel, stride, dilation, padding, sizes) with outputs."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        ksize = [int(v) for v in rng.integers(1, 4, 3)]
        strides = tuple(int(v) for v in rng.integers(1, 4, 3))
        dilations = tuple(int(v) for v in rng.integers(1, 3, 3))
        sizes = [int(rng.integers(k * d, 8)) for k, d in zip(ksize, dilations)]
        n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 12))
        padding = ("VALID", "SAME")[int(rng.integers(2))]
        found.append(((n, *sizes, c), (*ksize, c, o), strides, padding, dilations))
    return found


@pytest.mark.parametrize("isa", tier_params("dfp_gemm", ("portable", "avx2")))
@pytest.mark.parametrize("index, case", list(enumerate(_random_geometries(10))))
def test_random_geometries_bit_exact(index, case, isa):
    xs, ws, strides, padding, dilations = case
    x, w = rand(xs, index), rand(ws, index + 100, scale=0.3)
    g = rand(output_shape(x, w, strides, padding, dilations), index + 200)
    got = run(x, w, g, strides, padding, dilations, isa=isa)
    for have, want in zip(got, references(x, w, g, strides, padding, dilations)):
        np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic", "toward_zero"])
@pytest.mark.parametrize("xs,ws,strides,padding,dilations", [CASES[3]])
def test_every_rounding_keeps_the_seed_contract(xs, ws, strides, padding, dilations, rounding):
    """y and d(filters): the im2col path's bits; x, W, the error use seed, + [0, 1], + [0, 2]."""
    x, w = rand(xs, 4), rand(ws, 5, scale=0.3)
    g = rand(output_shape(x, w, strides, padding, dilations), 6, scale=1e-2)
    seed = tf.constant([5, 7], tf.int64)
    options = dict(rounding=rounding, backward_rounding=rounding, seed=seed)
    y, dx, dw = run(x, w, g, strides, padding, dilations, **options)
    y_tf, _, dw_tf = run(x, w, g, strides, padding, dilations, implementation="tf", **options)
    np.testing.assert_array_equal(y, y_tf)
    np.testing.assert_array_equal(dw, dw_tf)
    if rounding != "nearest_even":
        x, w, g = (np.asarray(lp.quantize_dfp(v, rounding=rounding, seed=seed + [0, i]))
                   for i, v in enumerate((x, w, g)))
    want_y, want_dx, want_dw = references(x, w, g, strides, padding, dilations)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dw, want_dw)


def test_non_finite_values():
    x, w = rand((1, 4, 4, 4, 2), 12), rand((2, 2, 2, 2, 3), 13)
    x[0, 0, 0, 0, 1] = np.nan
    g = rand((1, 3, 3, 3, 3), 14)
    y, dx, dw = run(x, w, g, (1, 1, 1), "VALID", (1, 1, 1))
    # Only output pixel (0, 0, 0)'s patch holds the NaN: NaN in all its channels.
    assert np.isnan(y[0, 0, 0, 0]).all() and np.isfinite(y.reshape(-1, 3)[1:]).all()
    assert np.isnan(dw[0, 0, 0, 1]).all() and np.isfinite(dw[..., 0, :]).all()
    assert np.isfinite(dx).all()  # the error and the filters are finite


def test_counters_move_and_graph_has_no_im2col():
    x, w = rand((2, 4, 4, 4, 3), 15), rand((2, 2, 2, 3, 4), 16)
    lp.dfp_gemm_counters(reset=True)
    run(x, w, rand((2, 3, 3, 3, 4), 17), (1, 1, 1), "VALID", (1, 1, 1))
    assert lp.dfp_gemm_counters()["calls"] == 3  # forward, d(x), d(filters)

    @tf.function(autograph=False)  # (autograph's conversion of the library: tens of seconds)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(lp.dfp_conv3d(x, w, padding="SAME"))
        return tape.gradient(loss, [x, w])

    graph = step.get_concrete_function(tf.constant(x), tf.constant(w)).graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types.update(node.op for node in function.node_def)
    assert {"LowprecDfpConv3d", "LowprecDfpConv3dBackpropFilter"} <= types
    assert not types & {"ConcatV2", "StridedSliceGrad", "LowprecDfpMatmulFused", "Conv3D"}, types


def test_keras_conv3d_trains_a_step_under_dfp16():
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv3D(3, 2, strides=(1, 2, 1), padding="same",
                                dtype=lp.Policy("dfp16"))
    model = keras.Sequential([keras.Input((4, 5, 4, 2)), layer,
                              keras.layers.Flatten(dtype="float32")])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = rand((2, 4, 5, 4, 2), 18)
    target = rand((2,) + model.output_shape[1:], 19)
    before = np.asarray(layer.kernel).copy()
    lp.dfp_gemm_counters(reset=True)
    loss = model.train_on_batch(x, target)
    assert lp.dfp_gemm_counters()["calls"] >= 2  # forward, d(kernel) (x needs no gradient)
    assert np.isfinite(loss) and not np.array_equal(np.asarray(layer.kernel), before)


def test_groups_run_one_implicit_conv_a_group(monkeypatch):
    """groups > 1: one implicit conv3d per group (test_dfp_grouped_implicit.py has the bits)."""
    groups_seen = []
    grouped = dfp_conv.grouped_convolution
    monkeypatch.setattr(dfp_conv, "grouped_convolution",
                        lambda *a, **k: groups_seen.append(a[2]) or grouped(*a, **k))
    x, w = rand((1, 3, 3, 3, 4), 20), rand((2, 2, 2, 2, 4), 21)
    y = lp.dfp_conv3d(x, w, groups=2)
    assert groups_seen == [2]
    exact = tf.nn.conv3d(x[..., :2], w[..., :2], (1,) * 5, "VALID")
    np.testing.assert_allclose(np.asarray(y)[..., :2], exact, atol=2e-3 * np.abs(exact).max())


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
def test_raw_op_flip_filters(isa):
    """flip_filters=True reverses the taps in all three axes and swaps the
    channel axes: the bits of passing flip(filters)^T; its channel check."""
    ops = load_ops()
    dy, w = rand((1, 4, 5, 3, 4), 40), rand((2, 3, 2, 3, 4), 41)  # w: [kd, kh, kw, C=3, O=4]
    flipped = np.ascontiguousarray(np.transpose(w[::-1, ::-1, ::-1], (0, 1, 2, 4, 3)))
    pads = [1, 1, 2, 2, 1, 1]
    want, _ = ops.lowprec_dfp_conv3d(dy, flipped, pads=pads, isa=isa)
    got, _ = ops.lowprec_dfp_conv3d(dy, w, pads=pads, isa=isa, flip_filters=True)
    assert got.shape == (1, 5, 7, 4, 3)
    np.testing.assert_array_equal(got.numpy().view(np.int32), want.numpy().view(np.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="flipped filters"):
        ops.lowprec_dfp_conv3d(dy, flipped, flip_filters=True)  # last dimension 4, not 3


def test_raw_op_bad_arguments():
    ops = load_ops()
    x, w = np.ones((1, 4, 5, 5, 2), np.float32), np.ones((2, 3, 3, 2, 4), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="channels"):
        ops.lowprec_dfp_conv3d(x, np.ones((2, 3, 3, 3, 4), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="strides must be 3 positive"):
        ops.lowprec_dfp_conv3d(x, w, strides=[1, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="dilations"):
        ops.lowprec_dfp_conv3d(x, w, dilations=[1, 0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="pads must be 6"):
        ops.lowprec_dfp_conv3d(x, w, pads=[0, 0, 0, 0])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank 5"):
        ops.lowprec_dfp_conv3d(x[0], w)
    with pytest.raises(tf.errors.InvalidArgumentError, match="dy must have shape"):
        ops.lowprec_dfp_conv3d_backprop_filter(x, np.ones((1, 3, 3, 4, 4), np.float32),
                                               filter_size=[2, 3, 3])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="filter_size"):
        ops.lowprec_dfp_conv3d_backprop_filter(x, np.ones((1, 3, 3, 3, 4), np.float32),
                                               filter_size=[2, 3])


@pytest.mark.parametrize("isa", tier_params("dfp_gemm"))
@pytest.mark.parametrize("xs,ws,strides,padding,dilations,special", [
    ((2, 5, 9, 7, 1), (2, 3, 2, 1, 4), (1, 2, 1), "SAME", (1, 1, 2), None),
    ((1, 4, 6, 5, 3), (3, 2, 2, 3, 5), (2, 1, 1), "VALID", (1, 1, 1), "dy"),
    ((1, 3, 4, 5, 9), (2, 2, 2, 9, 3), (1, 1, 1), "SAME", (1, 1, 1), "x"),  # C >= 8
])
def test_filter_gradient_gemm_orientations_bit_exact(xs, ws, strides, padding, dilations,
                                                     special, isa):
    """LowprecDfpConv3dBackpropFilter's gemm_a 'patches' / 'dy' / 'auto': the reference's
    bits and overflow count."""
    x = rand(xs, 7)
    g = rand(output_shape(x, np.empty(ws), strides, padding, dilations), 8, scale=1e-2)
    if special == "x":
        x[0, 1, 2, 3, 4] = np.nan
    elif special == "dy":
        g[0, -1, 0, 1, 2] = -np.inf
    check_filter_gradient_gemm_orientations(x, g, ws[:3], strides, padding, dilations, isa=isa)
