"""NumPy convolution helpers the conv tests share: TF's padding and the patch matrix.

The references of the implicit-GEMM and im2col convolution tests are GEMMs of
the patch matrix written out here, so that they do not depend on the
library's own gather.

"""

import numpy as np

import tf_lowprec as lp


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


def im2col_tf(x, kh, kw, strides, padding, dilations):
    """`im2col` with the pads tf.nn.conv2d gives `padding` ("SAME" or "VALID")."""
    top, bottom, _ = pads_of(x.shape[1], kh, strides[0], dilations[0], padding)
    left, right, _ = pads_of(x.shape[2], kw, strides[1], dilations[1], padding)
    return im2col(x, kh, kw, strides, (top, bottom, left, right), dilations)


def quantized(x):
    """quantize_dfp(x) (per tensor, nearest even) and its exponent as [1, 1, 1]."""
    q, e = lp.quantize_dfp(x, return_exponents=True)
    return np.asarray(q), np.full((1, 1, 1), np.asarray(e).reshape(-1)[0], np.int32)
