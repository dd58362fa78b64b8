"""Grouped, depthwise and 1-D convolutions on the accumulators' GEMMs (INT16 DFP, BF16).

References are written out per group in NumPy: im2col patches, the group's
columns and filters, the INT16/INT32 GEMM of `tf_lowprec.gemm.reference`
(or the VDPBF16PS-order model of test_bf16_gemm), col2im for the input
gradient.  DFP16 depthwise convolutions (groups = channels, one input
channel per group) run on the direct depthwise kernels: their forward and
d(filters) are still these grouped GEMMs' bits; their d(x) is one chunked
integer sum per input gradient (tests/test_dfp_depthwise.py has it bit for
bit), which col2im's FP32 sum matches here only within rounding.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import reference as reference_gemm
from test_bf16_gemm import reference_matmul as bf16_reference_matmul
from test_dfp_conv2d import im2col, rand


def dfp_reference(a, b):
    """INT16 GEMM of batched operands, each quantized with one exponent for the whole tensor."""
    (aq, ea), (bq, eb) = (lp.quantize_dfp(v, return_exponents=True) for v in (a, b))
    exponent = lambda e: np.full((1, 1, 1), np.asarray(e).reshape(-1)[0])  # noqa: E731
    return reference_gemm.dfp_matmul_quantized(np.asarray(aq), exponent(ea), np.asarray(bq),
                                               exponent(eb))


def bf16_reference(a, b):
    return np.stack([bf16_reference_matmul(x, y) for x, y in zip(a, b)])


def grouped_columns(cols, kh, kw, groups):
    """[P, kh*kw*C] patches -> [groups, P, kh*kw*C/groups] (each group's columns, (kh, kw, c))."""
    p = cols.shape[0]
    return cols.reshape(p, kh * kw, groups, -1).transpose(2, 0, 1, 3).reshape(groups, p, -1)


def grouped_filters(w, groups):
    kh, kw, cg, cout = w.shape
    return w.reshape(kh * kw * cg, groups, cout // groups).transpose(1, 0, 2)


def col2im(dcols, shape, kh, kw, strides, padding, dilations):
    dx = np.zeros(shape, np.float64)
    idx, _ = im2col(np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1, kh, kw,
                    strides, padding, dilations)
    idx = idx.astype(np.int64) - 1  # source element of each patch entry (-1: padding)
    valid = idx >= 0
    np.add.at(dx.reshape(-1), idx[valid], dcols[valid].astype(np.float64))
    return dx


CASES = [
    # (x shape, filter shape, groups, strides, padding, dilations)
    ((2, 7, 6, 4), (3, 3, 2, 6), 2, (1, 1), "SAME", (1, 1)),
    ((1, 8, 7, 3), (3, 2, 1, 6), 3, (2, 1), "VALID", (1, 2)),  # depthwise, multiplier 2
    # 8 outputs per group: the untransposed batched GEMM (conv2d_as_gemm).
    ((1, 5, 5, 4), (2, 2, 2, 16), 2, (1, 1), "SAME", (1, 1)),
]


@pytest.mark.parametrize("kernel", ["dfp", "bf16"])
@pytest.mark.parametrize("xs,ws,groups,strides,padding,dilations", CASES)
def test_grouped_conv2d_matches_written_out_reference(kernel, xs, ws, groups, strides, padding,
                                                      dilations):
    conv2d, gemm = {"dfp": (lp.dfp_conv2d, dfp_reference),
                    "bf16": (lp.bf16_conv2d, bf16_reference)}[kernel]
    x, w = tf.constant(rand(xs, 1)), tf.constant(rand(ws, 2, scale=0.3))
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = conv2d(x, w, strides, padding, dilations, groups=groups)
        g = rand(y.shape, 3, scale=1e-2)
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])

    kh, kw, _, cout = ws
    # The GEMMs read the operands as the kernels do: DFP16 operands are
    # quantized once per whole tensor (the patches hold the same values).
    xr = np.asarray(lp.quantize_dfp(x)) if kernel == "dfp" else np.asarray(x)
    wr = np.asarray(lp.quantize_dfp(w)) if kernel == "dfp" else np.asarray(w)
    gr = np.asarray(lp.quantize_dfp(g)) if kernel == "dfp" else g
    cols, (n, oh, ow) = im2col(xr, kh, kw, strides, padding, dilations)
    columns, filters = grouped_columns(cols, kh, kw, groups), grouped_filters(wr, groups)
    errors = gr.reshape(-1, groups, cout // groups).transpose(1, 0, 2)
    want_y = gemm(columns, filters).transpose(1, 0, 2).reshape(n, oh, ow, cout)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    want_dw = gemm(columns.transpose(0, 2, 1).copy(), errors)  # [groups, kh*kw*cg, o]
    want_dw = want_dw.transpose(1, 0, 2).reshape(ws)
    np.testing.assert_array_equal(np.asarray(dw), want_dw)
    dcols = gemm(errors, filters.transpose(0, 2, 1).copy())  # [groups, P, kh*kw*cg]
    dcols = dcols.transpose(1, 2, 0)  # [P, kh*kw*cg, groups] -> back to (kh, kw, c) order
    dcols = dcols.reshape(-1, kh * kw, ws[2], groups).transpose(0, 1, 3, 2).reshape(cols.shape)
    np.testing.assert_allclose(np.asarray(dx), col2im(dcols, xs, kh, kw, strides, padding,
                                                      dilations), rtol=1e-5, atol=1e-7)
    # Sanity: close to the exact grouped convolution.
    exact_cols, _ = im2col(np.asarray(x, np.float64), kh, kw, strides, padding, dilations)
    exact = np.matmul(grouped_columns(exact_cols, kh, kw, groups),
                      grouped_filters(np.asarray(w, np.float64), groups))
    exact = exact.transpose(1, 0, 2).reshape(y.shape)
    np.testing.assert_allclose(np.asarray(y), exact, atol=2e-2 * np.abs(exact).max())


def test_groups_are_checked():
    x = np.ones((1, 5, 5, 4), np.float32)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        lp.dfp_conv2d(x, np.ones((3, 3, 2, 4), np.float32), groups=0)
    with pytest.raises(ValueError, match="per group and groups=2"):
        lp.bf16_conv2d(x, np.ones((3, 3, 1, 4), np.float32), groups=2)
    with pytest.raises(ValueError, match="not a multiple of groups=2"):
        lp.dfp_conv2d(x, np.ones((3, 3, 2, 3), np.float32), groups=2)


def _layer_reference(x, kernel, upstream, groups, kh, kw):
    """DFP16 forward and kernel gradient of a stride-1 VALID conv written out per group."""
    cols, (n, oh, ow) = im2col(np.asarray(lp.quantize_dfp(x)), kh, kw, (1, 1), "VALID", (1, 1))
    cout = kernel.shape[-1]
    columns = grouped_columns(cols, kh, kw, groups)
    filters = grouped_filters(np.asarray(lp.quantize_dfp(kernel)), groups)
    y = dfp_reference(columns, filters).transpose(1, 0, 2).reshape(n, oh, ow, cout)
    errors = np.asarray(lp.quantize_dfp(upstream)).reshape(-1, groups, cout // groups)
    dw = dfp_reference(columns.transpose(0, 2, 1).copy(), errors.transpose(1, 0, 2))
    return y, dw.transpose(1, 0, 2).reshape(kh, kw, -1, cout)


@pytest.mark.parametrize("make, shape, groups", [
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False), (2, 6, 5, 3),
     3),
    (lambda: keras.layers.Conv1D(4, 3, groups=2, use_bias=False), (2, 7, 4), 2),
])
def test_layers_under_dfp16_equal_the_int16_reference(make, shape, groups):
    keras.utils.set_random_seed(0)
    layer = make()
    layer.dtype_policy = lp.Policy("dfp16")
    x = tf.constant(rand(shape, 4))
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        upstream = rand(y.shape, 5, scale=1e-2)
        loss = tf.reduce_sum(y * upstream)
    (dkernel,) = tape.gradient(loss, layer.trainable_weights)
    kernel = layer.trainable_weights[0]
    if len(shape) == 3:  # Conv1D: a 2-D convolution of height 1
        want_y, want_dw = _layer_reference(x[:, None], kernel[None], upstream[:, None], groups,
                                           1, kernel.shape[0])
        want_y, want_dw = want_y[:, 0], want_dw[0]
    else:  # depthwise: groups = channels, the kernel [kh, kw, C, M] read as [kh, kw, 1, C*M]
        kh, kw, c, m = kernel.shape
        want_y, want_dw = _layer_reference(x, tf.reshape(kernel, [kh, kw, 1, c * m]), upstream,
                                           groups, kh, kw)
        want_dw = want_dw.reshape(kernel.shape)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    np.testing.assert_array_equal(np.asarray(dkernel), want_dw)


@pytest.mark.parametrize("preset", ["dfp16", "bf16_native"])
def test_grouped_conv2d_trains(preset):
    keras.utils.set_random_seed(1)
    keras.config.set_dtype_policy(lp.Policy(preset))
    try:
        model = keras.Sequential([keras.Input((6, 6, 4)),
                                  keras.layers.Conv2D(8, 3, groups=4, padding="same"),
                                  keras.layers.DepthwiseConv2D(3),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(1)])
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.SGD(0.05), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 4)).astype(np.float32)
    y = x.mean(axis=(1, 2, 3))[:, None]
    before = [w.numpy().copy() for w in model.trainable_weights]
    lp.dfp_gemm_counters(reset=True)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    calls = lp.dfp_gemm_counters()["calls"]
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert (calls > 0) == (preset == "dfp16")
