"""NHWC conv2d and NDHWC conv3d on the INT16 GEMM as implicit GEMMs (no im2col, no col2im).

`conv2d` / `conv3d` are what `tf_lowprec.gemm.dfp.dfp_conv2d` / `dfp_conv3d`
run where the C++ kernels can (one group, static spatial sizes): three INT16
GEMMs whose packing gathers the patch matrix straight from its channels-last
input while rounding it to the tensor's shared exponent
(custom_ops/kernels/dfp_gemm_conv_pack.h; below for conv2d, and conv3d
likewise with kd * kh * kw taps in the order (kd, kh, kw, C)):

* forward: y = patches(x) @ filters (K = kh * kw * C), bit for bit the GEMM
  of the materialized patches;
* d(filters) = patches(x)^T @ dy (K = N * OH * OW), bit for bit likewise;
* d(x) = patches(dilate(dy, strides)) @ flip(filters)^T: the convolution of
  the error, dilated by the strides and padded, with the spatially flipped,
  transposed filters (K = kh * kw * O).  Every input gradient is then one
  INT16 GEMM output: exact INT32 chunk sums over all kh * kw * O terms, FP32
  only between chunks, instead of FP32 sums of the d(patches) columns
  (col2im).  docs/dfp_gemm.md states the arithmetic.

The shared exponent of x (and of dy) is that of the whole tensor: where a
stride longer than the kernel leaves elements of x outside every patch, the
paper's per-tensor quantization still sees them (it quantizes the tensor,
then multiplies).

>>> import numpy as np
>>> x = np.ones((1, 3, 3, 1), np.float32); w = np.ones((2, 2, 1, 1), np.float32)
>>> conv2d(x, w, (1, 1), "VALID", (1, 1))[0, :, :, 0].numpy()
array([[4., 4.],
       [4., 4.]], dtype=float32)
"""

import tensorflow as tf

from tf_lowprec._op_library import load as _load_ops
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib


def _padding(size, k, s, d, padding):
    """(before, after, output size) of one spatial axis, as tf.nn.conv2d pads."""
    span = (k - 1) * d + 1
    if padding == "VALID":
        return 0, 0, max((size - span) // s + 1, 0)
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    return total // 2, total - total // 2, out


def geometry(x, filters, strides, padding, dilations):
    """The pads and output sizes of a conv2d / conv3d, or None.

    For a conv2d, [top, bottom, left, right] and (OH, OW); for a conv3d,
    (before, after) of depth, height and width in turn and (OD, OH, OW).
    None where the implicit path cannot take the call: an unknown spatial
    or filter size, or an empty output.
    """
    rank = x.shape.rank - 2
    sizes, ksize = list(x.shape[1:-1]), list(filters.shape[:rank])
    if None in sizes or None in ksize:
        return None
    pads, out = [], []
    for size, k, s, d in zip(sizes, ksize, strides, dilations):
        before, after, count = _padding(size, k, s, d, padding)
        pads += [before, after]
        out.append(count)
    if 0 in out:
        return None
    return pads, tuple(out)


def _input_gradient_pads(size, k, s, d, before, out):
    """Pads of the dilated error so that its stride-1 convolution has `size` outputs."""
    span = (k - 1) * d + 1
    extent = (out - 1) * s + 1
    first = span - 1 - before  # the flipped kernel's first tap on input row 0
    return first, size - 1 + span - extent - first


def conv2d(x, filters, strides, padding, dilations, fmt=formats_lib.DFP16, **options):
    """`tf.nn.conv2d` (NHWC, one group) as implicit INT16 GEMMs: `convolution` of 4-D x."""
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4:
        raise ValueError(f"conv2d needs x [batch, height, width, channels], got {x.shape}")
    return convolution(x, filters, strides, padding, dilations, fmt, **options)


def conv3d(x, filters, strides, padding, dilations, fmt=formats_lib.DFP16, **options):
    """`tf.nn.conv3d` (NDHWC, one group) as implicit INT16 GEMMs: `convolution` of 5-D x.

    >>> import numpy as np
    >>> x = np.ones((1, 2, 3, 3, 1), np.float32); w = np.ones((2, 2, 2, 1, 1), np.float32)
    >>> conv3d(x, w, (1, 1, 1), "VALID", (1, 1, 1))[0, 0, :, :, 0].numpy()
    array([[8., 8.],
           [8., 8.]], dtype=float32)
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 5:
        raise ValueError(f"conv3d needs x [batch, depth, height, width, channels], got {x.shape}")
    return convolution(x, filters, strides, padding, dilations, fmt, **options)


def convolution(x, filters, strides, padding, dilations, fmt=formats_lib.DFP16, *,
                rounding="nearest_even", seed=None, backward_rounding="nearest_even",
                chunk_size=64, isa="auto"):
    """A conv2d or conv3d (channels last, one group) as implicit INT16 GEMMs, with its gradient.

    Arguments as `tf_lowprec.dfp_conv2d` / `dfp_conv3d` (checked there);
    `geometry(x, filters, ...)` must not be None.  Rounded to nearest, x, the
    filters and the error are quantized inside the kernels (the same values
    as `quantize_dfp`); other roundings quantize them once here (x with
    seed, the filters with seed + [0, 1], the error with seed + [0, 2], as
    the GEMM path of `dfp_conv2d` / `dfp_conv3d` does), and the kernels' own
    quantization is then lossless.
    """
    x, filters = tf.convert_to_tensor(x), tf.convert_to_tensor(filters)
    rank = x.shape.rank - 2
    pads, out = geometry(x, filters, strides, padding, dilations)
    ops = _load_ops()
    conv_op, filter_op = {
        2: (ops.lowprec_dfp_conv2d, ops.lowprec_dfp_conv2d_backprop_filter),
        3: (ops.lowprec_dfp_conv3d, ops.lowprec_dfp_conv3d_backprop_filter)}[rank]
    ksize = list(filters.shape[:rank])
    ones = [1] * rank
    options = dict(bits=fmt.bits, extra_shift=fmt.extra_shift, chunk_size=chunk_size, isa=isa)
    geometry_attrs = dict(strides=list(strides), dilations=list(dilations), pads=pads)
    seed = rounding_lib.seed_tensor(
        seed, "stochastic" if "stochastic" in (rounding, backward_rounding) else "nearest_even")
    if rounding != "nearest_even":
        # Straight-through gradients (quantize_dfp's): d(x) and d(filters) pass.
        x = rounding_lib.quantize_dfp(x, fmt, rounding, seed=seed)
        filters = rounding_lib.quantize_dfp(filters, fmt, rounding,
                                            seed=seed + tf.constant([0, 1], tf.int64))
    dx_pads = []
    for size, k, s, d, before, count in zip(x.shape[1:-1], ksize, strides, dilations,
                                            pads[::2], out):
        dx_pads += _input_gradient_pads(size, k, s, d, before, count)
    axes = list(range(rank))

    @tf.custom_gradient
    def conv(xv, wv):
        y, _ = conv_op(xv, wv, input_dilations=ones, **geometry_attrs, **options)

        def grad(dy):
            if backward_rounding != "nearest_even":
                dy = rounding_lib.quantize_dfp(dy, fmt, backward_rounding,
                                               seed=seed + tf.constant([0, 2], tf.int64))
            # flip(filters)^T: [*k, O, C], taps reversed in every spatial axis.
            flipped = tf.transpose(tf.reverse(wv, axes), axes + [rank + 1, rank])
            dx, _ = conv_op(dy, flipped, strides=ones, dilations=list(dilations),
                            input_dilations=list(strides), pads=dx_pads, **options)
            dw, _ = filter_op(xv, dy, filter_size=ksize, input_dilations=ones,
                              **geometry_attrs, **options)
            return dx, dw

        return y, grad

    return conv(x, filters)
