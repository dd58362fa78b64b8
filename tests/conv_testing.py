"""NumPy convolution helpers the conv tests share: TF's padding and the patch matrix.

The references of the implicit-GEMM and im2col convolution tests are GEMMs of
the patch matrix written out here, so that they do not depend on the
library's own gather.

"""

import itertools

import numpy as np
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import reference as reference_gemm


def rand(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def pads_of(size, k, s, d, padding):
    """(before, after, output size) of one spatial axis, as tf.nn.conv2d pads it."""
    span = (k - 1) * d + 1
    if padding == "VALID":
        return 0, 0, (size - span) // s + 1
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    return total // 2, total - total // 2, out


def im2col(x, kh, kw, strides, pads, dilations):
    """Patches [n*oh*ow, kh*kw*c] in (kh, kw, c) order of NHWC x padded (+0) by pads.

    pads: (top, bottom, left, right).  Returns (patches, (n, oh, ow)).
    """
    (sh, sw), (dh, dw), (top, bottom, left, right) = strides, dilations, pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    cols = np.empty((n, oh, ow, kh, kw, c), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i * dh: i * dh + (oh - 1) * sh + 1: sh,
                                       j * dw: j * dw + (ow - 1) * sw + 1: sw, :]
    return cols.reshape(n * oh * ow, kh * kw * c), (n, oh, ow)


def im2col_nd(x, ksize, strides, pads, dilations):
    """Patches [n * prod(out), prod(k) * c], columns (kernel offset, c), of x padded (+0).

    Any number of spatial axes, channels last; pads: (before, after) per axis.
    Returns (patches, out), out the output's spatial sizes.
    """
    x = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
    out = [(n - (k - 1) * d - 1) // s + 1
           for n, k, s, d in zip(x.shape[1:-1], ksize, strides, dilations)]
    parts = [x[(slice(None),) + tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                                      for i, o, s, d in zip(offset, out, strides, dilations))]
             for offset in itertools.product(*(range(k) for k in ksize))]
    cols = np.stack(parts, axis=-2)  # [n, *out, prod(k), c]
    return cols.reshape(-1, len(parts) * x.shape[-1]), out


def im2col_tf(x, kh, kw, strides, padding, dilations):
    """`im2col` with the pads tf.nn.conv2d gives `padding` ("SAME" or "VALID")."""
    top, bottom, _ = pads_of(x.shape[1], kh, strides[0], dilations[0], padding)
    left, right, _ = pads_of(x.shape[2], kw, strides[1], dilations[1], padding)
    return im2col(x, kh, kw, strides, (top, bottom, left, right), dilations)


def quantized(x):
    """quantize_dfp(x) (per tensor, nearest even) and its exponent as [1, 1, 1]."""
    q, e = lp.quantize_dfp(x, return_exponents=True)
    return np.asarray(q), np.full((1, 1, 1), np.asarray(e).reshape(-1)[0], np.int32)


def dfp_implicit_conv_references(x, w, g, strides, padding, dilations):
    """(y, dx, dw) of an implicit-GEMM DFP convolution, written out with the NumPy GEMM.

    Any number of spatial axes (filters [*k, C, O]).  Forward and d(filters)
    are the INT16 GEMMs of the materialized patches (the im2col path's bits);
    d(x) is one INT16 GEMM of the patches of the error, dilated by the strides
    (zeros between its planes, rows and columns) and padded so that a stride-1
    convolution gives x's size, with the filters flipped in every spatial axis
    and [*k, O, C] (INT32 chunk sums over prod(k) * O).
    """
    return dfp_implicit_conv_references_quantized(quantized(x), quantized(w), quantized(g),
                                                  strides, padding, dilations)


def dfp_implicit_conv_references_quantized(x, w, g, strides, padding, dilations):
    """`dfp_implicit_conv_references` of operands already quantized: x, w and g are
    (values, exponent [1, 1, 1]) pairs, the values on their exponent's grid (for a
    grouped convolution: a group's channel slices with the whole tensors' exponents)."""
    (xq, ex), (wq, ew), (gq, eg) = x, w, g
    rank = xq.ndim - 2
    ksize, (cin, cout) = wq.shape[:rank], wq.shape[rank:]
    axes = [pads_of(n, k, s, d, padding)
            for n, k, s, d in zip(xq.shape[1:-1], ksize, strides, dilations)]
    out = [o for _, _, o in axes]
    cols, _ = im2col_nd(xq, ksize, strides, [(b, a) for b, a, _ in axes], dilations)
    gemm = reference_gemm.dfp_matmul_quantized
    y = gemm(cols, ex, wq.reshape(-1, cout), ew).reshape([xq.shape[0]] + out + [cout])
    dw = gemm(cols.T.copy(), ex, gq.reshape(-1, cout), eg).reshape(wq.shape)
    dilated = np.zeros([xq.shape[0]] + [(o - 1) * s + 1 for o, s in zip(out, strides)] + [cout],
                       np.float32)
    dilated[(slice(None),) + tuple(slice(None, None, s) for s in strides)] = gq
    pads = []
    for size, k, d, (before, _, _), extent in zip(xq.shape[1:-1], ksize, dilations, axes,
                                                  dilated.shape[1:-1]):
        span = (k - 1) * d + 1
        first = span - 1 - before  # the flipped kernel's first tap on input row 0
        pads.append((first, size - 1 + span - extent - first))
    dcols, _ = im2col_nd(dilated, ksize, (1,) * rank, pads, dilations)
    flipped = np.swapaxes(wq[(slice(None, None, -1),) * rank], -1, -2).reshape(-1, cin)
    dx = gemm(dcols, eg, flipped.copy(), ew).reshape(xq.shape)
    return y, dx, dw


def check_filter_gradient_gemm_orientations(x, g, ksize, strides, padding, dilations,
                                            input_dilations=None, isa="auto", chunk_size=64):
    """LowprecDfpConv{2,3}dBackpropFilter with gemm_a 'patches', 'dy' and 'auto': the
    written-out reference's d(filters) and overflow count, and the same bits each.

    x [N, *spatial, C], g the error [N, *out, O]; input_dilations (per axis)
    dilate x (zeros between its elements) before the convolution, written out
    here for the reference (the zeros do not change x's exponent).
    """
    from tf_lowprec._op_library import load as load_ops

    rank = x.ndim - 2
    lx = tuple(input_dilations or (1,) * rank)
    dilated = np.zeros((x.shape[0],) + tuple((n - 1) * l + 1 for n, l in zip(x.shape[1:-1], lx))
                       + (x.shape[-1],), np.float32)
    dilated[(slice(None),) + tuple(slice(None, None, l) for l in lx)] = x
    axes = [pads_of(n, k, s, d, padding)
            for n, k, s, d in zip(dilated.shape[1:-1], ksize, strides, dilations)]
    assert tuple(g.shape[1:-1]) == tuple(o for _, _, o in axes), "error shape"
    (xq, ex), (gq, eg) = quantized(dilated), quantized(g)
    cols, _ = im2col_nd(xq, ksize, strides, [(b, a) for b, a, _ in axes], dilations)
    want, want_overflow = reference_gemm.dfp_matmul_quantized(
        cols.T.copy(), ex, gq.reshape(-1, g.shape[-1]), eg, chunk_size=chunk_size,
        return_overflow_count=True)
    want = want.reshape(tuple(ksize) + (x.shape[-1], g.shape[-1]))
    ops = load_ops()
    op = {2: ops.lowprec_dfp_conv2d_backprop_filter,
          3: ops.lowprec_dfp_conv3d_backprop_filter}[rank]
    got = {}
    for gemm_a in ("patches", "dy", "auto"):
        dw, overflow = op(x, g, filter_size=list(ksize), strides=list(strides),
                          dilations=list(dilations), input_dilations=list(lx),
                          pads=[v for b, a, _ in axes for v in (b, a)], isa=isa,
                          chunk_size=chunk_size, gemm_a=gemm_a)
        got[gemm_a] = np.asarray(dw)
        np.testing.assert_array_equal(got[gemm_a], want, err_msg=gemm_a)
        assert int(overflow) == want_overflow, (gemm_a, int(overflow), want_overflow)
    for gemm_a in ("dy", "auto"):  # bit for bit (signed zeros, NaN payloads)
        np.testing.assert_array_equal(got[gemm_a].view(np.uint32),
                                      got["patches"].view(np.uint32), err_msg=gemm_a)
    return want, want_overflow


def conv_gradients(conv, x, w, g, *args, **kwargs):
    """(y, dx, dw) of `conv(x, w, *args, **kwargs)` with upstream gradient g, as NumPy."""
    x, w = tf.constant(x), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = conv(x, w, *args, **kwargs)
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])
    return np.asarray(y), np.asarray(dx), np.asarray(dw)


def dfp_grouped_implicit_conv_references(x, w, g, groups, strides, padding, dilations,
                                         quantize=quantized):
    """(y, dx, dw) of a grouped DFP convolution run as one implicit GEMM convolution a group.

    x, w [*k, C / groups, O] and g are quantized as whole tensors (`quantize`:
    values and exponent [1, 1, 1]); group i convolves x's channel slice i with
    the filters' output slice i (`dfp_implicit_conv_references_quantized`, the
    whole tensors' exponents); outputs and gradients are concatenated.
    """
    (xq, ex), (wq, ew), (gq, eg) = quantize(x), quantize(w), quantize(g)
    parts = [dfp_implicit_conv_references_quantized((xs, ex), (ws, ew), (gs, eg), strides,
                                                    padding, dilations)
             for xs, ws, gs in zip(np.split(xq, groups, -1), np.split(wq, groups, -1),
                                   np.split(gq, groups, -1))]
    return tuple(np.concatenate(part, axis=-1) for part in zip(*parts))
