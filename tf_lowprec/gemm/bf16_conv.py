"""NHWC conv2d on the BF16 GEMM as implicit GEMMs (no im2col, no col2im).

`conv2d` is what `tf_lowprec.gemm.bf16.bf16_conv2d` runs for one group and
static height and width: three GEMMs in `bf16_matmul`'s arithmetic (BF16
operands, FP32 sums in the VDPBF16PS order), whose packing gathers the
patch matrix straight from its NHWC input and rounds it to BF16
(custom_ops/kernels/conv_gather.h, Problem::a_patches of bf16_gemm.h):

* forward: y = patches(x) @ filters (K = kh * kw * C, in the order (kh, kw,
  C)), bit for bit `bf16_matmul` of the materialized patches;
* d(filters) = patches(x)^T @ dy (K = N * OH * OW), bit for bit likewise;
* d(x) = patches(dilate(dy, strides)) @ flip(filters)^T: the convolution of
  the error, dilated by the strides and padded, with the spatially flipped,
  transposed filters (K = kh * kw * O, in the order (kh, kw, O) of the
  flipped filters).  Every input gradient is one GEMM output, summed in the
  VDPBF16PS order over all kh * kw * O terms, instead of FP32 sums of the
  d(patches) columns (col2im).  docs/bf16_gemm.md states the arithmetic.

Where the C++ kernel cannot run (`implementation="tf"`, XLA, a visible GPU)
the same three GEMMs run on the stock-TF twin (`tf_bf16_gemm.matmul`) with
the patches written out: the same bits.

>>> import numpy as np
>>> x = np.ones((1, 3, 3, 1), np.float32); w = np.ones((2, 2, 1, 1), np.float32)
>>> conv2d(x, w, (1, 1), "VALID", (1, 1))[0, :, :, 0].numpy()
array([[4., 4.],
       [4., 4.]], dtype=float32)
"""

import tensorflow as tf

from tf_lowprec._op_library import load as _load_ops
from tf_lowprec.gemm import common as _gemm_common
from tf_lowprec.gemm import tf_bf16 as tf_bf16_gemm
from tf_lowprec.gemm.implicit_conv import geometry, input_gradient_pads
from tf_lowprec.numerics import rounding as rounding_lib


def _dilate(v, strides, out_h, out_w):
    """NHWC v [N, out_h, out_w, C] with s - 1 zeros (+0) between its rows and columns."""
    sh, sw = strides
    if sh == 1 and sw == 1:
        return v
    spread = tf.pad(v[:, :, None, :, None, :],
                    [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]])
    shape = tf.shape(v)
    spread = tf.reshape(spread, [shape[0], out_h * sh, out_w * sw, shape[3]])
    return spread[:, :(out_h - 1) * sh + 1, :(out_w - 1) * sw + 1, :]


def _twin_patches(x, kh, kw, strides, pads, dilations):
    """The patch matrix [N * OH * OW, kh * kw * C] of x padded by pads, written out."""
    top, bottom, left, right = pads
    padded = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    patches = _gemm_common.image_patches(padded, kh, kw, strides, "VALID", dilations)
    return tf.reshape(patches, [-1, tf.shape(patches)[-1]])


def _twin_conv(x, size, filters, strides, pads, dilations):
    """The forward GEMM on the stock-TF twin: patches(x) @ filters (size: x's (H, W))."""
    kh, kw = filters.shape[0], filters.shape[1]
    columns = _twin_patches(x, kh, kw, strides, pads, dilations)
    channels_out = tf.shape(filters)[3]
    y = tf_bf16_gemm.matmul(columns, tf.reshape(filters, [-1, channels_out]))
    out_h = (size[0] + pads[0] + pads[1] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    out_w = (size[1] + pads[2] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    return tf.reshape(y, [tf.shape(x)[0], out_h, out_w, channels_out])


def _flip(filters):
    """flip(filters)^T: [kh, kw, O, C], the taps reversed in both axes (d(x)'s filters)."""
    return tf.transpose(tf.reverse(filters, [0, 1]), [0, 1, 3, 2])


def _conv(x, size, filters, strides, pads, dilations, input_dilations, isa, use_ops,
          flip_filters=False):
    """One implicit GEMM: patches(x) @ filters, x of spatial size `size` dilated by
    `input_dilations` and padded by `pads` (the forward pass, or d(x) on the error,
    then with flip_filters: the GEMM's filters are `_flip(filters)`, which the op
    writes itself while the twin runs ReverseV2 and Transpose)."""
    if use_ops:
        op = _load_ops().lowprec_bf16_conv3d if len(strides) == 3 else \
            _load_ops().lowprec_bf16_conv2d
        return op(x, filters, strides=list(strides), dilations=list(dilations),
                  input_dilations=list(input_dilations), pads=list(pads), isa=isa,
                  flip_filters=flip_filters)
    if flip_filters:
        filters = _flip(filters)
    if tuple(input_dilations) != (1, 1):
        x = _dilate(x, input_dilations, *size)
        size = tuple((n - 1) * s + 1 for n, s in zip(size, input_dilations))
    return _twin_conv(x, size, filters, strides, pads, dilations)


def _filter_gradient(x, dy, ksize, strides, pads, dilations, isa, use_ops):
    """The GEMM patches(x)^T @ dy: d(filters) [*ksize, C, O] (2 or 3 spatial axes; the
    stock-TF twin: 2)."""
    if use_ops:
        op = _load_ops().lowprec_bf16_conv3d_backprop_filter if len(ksize) == 3 else \
            _load_ops().lowprec_bf16_conv2d_backprop_filter
        return op(x, dy, filter_size=list(ksize), strides=list(strides),
                  dilations=list(dilations), input_dilations=[1] * len(ksize), pads=list(pads),
                  isa=isa)
    kh, kw = ksize
    columns = _twin_patches(x, kh, kw, strides, pads, dilations)
    dw = tf_bf16_gemm.matmul(columns, tf.reshape(dy, [-1, tf.shape(dy)[3]]), transpose_a=True)
    return tf.reshape(dw, [kh, kw, tf.shape(x)[3], tf.shape(dy)[3]])


def conv2d(x, filters, strides, padding, dilations, isa="auto", implementation="auto"):
    """`tf.nn.conv2d` (NHWC, one group) as implicit BF16 GEMMs, with its gradient.

    Arguments as `tf_lowprec.bf16_conv2d` (checked there); `geometry(x,
    filters, ...)` must not be None.  The rounding of x, the filters and the
    error to BF16 is straight-through, as in `bf16_matmul`.  Each of the three
    GEMMs is one call of `_conv` or `_filter_gradient` (tests count them).
    """
    pads, (out_h, out_w) = geometry(x, filters, strides, padding, dilations)
    kh, kw = filters.shape[0], filters.shape[1]
    height, width = x.shape[1], x.shape[2]
    top, _, left, _ = pads
    dx_pads = (input_gradient_pads(height, kh, strides[0], dilations[0], top, out_h)
               + input_gradient_pads(width, kw, strides[1], dilations[1], left, out_w))
    use_ops = rounding_lib.use_kernel(implementation)

    @tf.custom_gradient
    def conv(xv, wv):
        y = _conv(xv, (height, width), wv, strides, pads, dilations, (1, 1), isa, use_ops)

        def grad(dy):
            dx = _conv(dy, (out_h, out_w), wv, (1, 1), dx_pads, dilations, strides, isa,
                       use_ops, flip_filters=True)
            dw = _filter_gradient(xv, dy, (kh, kw), strides, pads, dilations, isa, use_ops)
            return dx, dw

        return y, grad

    return conv(x, filters)


def conv3d(x, filters, strides, padding, dilations, isa="auto"):
    """`tf.nn.conv3d` (NDHWC, one group) with the C++ kernels: forward and d(filters)
    as implicit BF16 GEMMs, d(x) as the im2col path computes it.

    The bits of `bf16_conv3d`'s im2col path in all three passes: y and
    d(filters) are the GEMMs of the materialized volume patches (gathered while
    packing instead), and d(x) is still d(patches) = error @ filters^T summed
    onto x by `conv_nd.col2im` in its stated FP32 order (an implicit d(x), one
    VDPBF16PS-order sum per input gradient as conv2d's, would change its bits:
    docs/bf16_gemm.md).  `geometry(x, filters, ...)` must not be None; the
    caller checks the arguments and runs the im2col path elsewhere (twin, groups).

    >>> x = tf.ones((1, 3, 3, 3, 1)); w = tf.ones((2, 2, 2, 1, 1))
    >>> conv3d(x, w, (1, 1, 1), "VALID", (1, 1, 1))[0, 0, :, :, 0].numpy()
    array([[8., 8.],
           [8., 8.]], dtype=float32)
    """
    from tf_lowprec.gemm import bf16 as bf16_lib  # noqa: PLC0415  (bf16 imports this module)
    from tf_lowprec.gemm import conv_nd  # noqa: PLC0415

    pads, out = geometry(x, filters, strides, padding, dilations)
    ksize = tuple(filters.shape[:3])
    size = tuple(x.shape[1:4])
    patch_geometry = conv_nd.conv_geometry(x, filters, strides, padding, dilations)

    @tf.custom_gradient
    def conv(xv, wv):
        y = _conv(xv, size, wv, strides, pads, dilations, (1, 1, 1), isa, True)

        def grad(dy):
            channels_out = tf.shape(wv)[-1]
            # d(patches): bf16_matmul's gradient of patches @ filters, then col2im.
            dcols = bf16_lib.bf16_matmul(tf.reshape(dy, [-1, channels_out]),
                                         tf.reshape(wv, [-1, channels_out]), transpose_b=True,
                                         isa=isa)
            dcols = tf.reshape(dcols, tf.concat([tf.shape(dy)[:-1], [-1]], 0))
            dx = conv_nd.col2im(dcols, patch_geometry)
            dw = _filter_gradient(xv, dy, ksize, strides, pads, dilations, isa, True)
            return dx, dw

        return y, grad

    return conv(x, filters)
