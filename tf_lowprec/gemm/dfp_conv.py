"""NHWC conv2d on the INT16 GEMM as implicit GEMMs (no im2col, no col2im).

`conv2d` is what `tf_lowprec.gemm.dfp.dfp_conv2d` runs where the C++ kernels
can (one group, static height and width): three INT16 GEMMs whose packing
gathers the patch matrix straight from its NHWC input while rounding it to
the tensor's shared exponent (custom_ops/kernels/dfp_gemm_conv_pack.h):

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
from tf_lowprec.gemm.implicit_conv import geometry, input_gradient_pads
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib


def conv2d(x, filters, strides, padding, dilations, fmt=formats_lib.DFP16, *,
           rounding="nearest_even", seed=None, backward_rounding="nearest_even",
           chunk_size=64, isa="auto"):
    """`tf.nn.conv2d` (NHWC, one group) as implicit INT16 GEMMs, with its gradient.

    Arguments as `tf_lowprec.dfp_conv2d` (checked there); `geometry(x,
    filters, ...)` must not be None.  Rounded to nearest, x, the filters and
    the error are quantized inside the kernels (the same values as
    `quantize_dfp`); other roundings quantize them once here (x with seed,
    the filters with seed + [0, 1], the error with seed + [0, 2], as
    `dfp_conv2d`'s GEMM path does), and the kernels' own quantization is then
    lossless.
    """
    pads, (out_h, out_w) = geometry(x, filters, strides, padding, dilations)
    ops = _load_ops()
    kh, kw = filters.shape[0], filters.shape[1]
    height, width = x.shape[1], x.shape[2]
    options = dict(bits=fmt.bits, extra_shift=fmt.extra_shift, chunk_size=chunk_size, isa=isa)
    geometry_attrs = dict(strides=list(strides), dilations=list(dilations), pads=pads)
    seed = rounding_lib.seed_tensor(
        seed, "stochastic" if "stochastic" in (rounding, backward_rounding) else "nearest_even")
    if rounding != "nearest_even":
        # Straight-through gradients (quantize_dfp's): d(x) and d(filters) pass.
        x = rounding_lib.quantize_dfp(x, fmt, rounding, seed=seed)
        filters = rounding_lib.quantize_dfp(filters, fmt, rounding,
                                            seed=seed + tf.constant([0, 1], tf.int64))
    top, _, left, _ = pads
    dx_top, dx_bottom = input_gradient_pads(height, kh, strides[0], dilations[0], top, out_h)
    dx_left, dx_right = input_gradient_pads(width, kw, strides[1], dilations[1], left, out_w)

    @tf.custom_gradient
    def conv(xv, wv):
        y, _ = ops.lowprec_dfp_conv2d(xv, wv, input_dilations=[1, 1], **geometry_attrs,
                                      **options)

        def grad(dy):
            if backward_rounding != "nearest_even":
                dy = rounding_lib.quantize_dfp(dy, fmt, backward_rounding,
                                               seed=seed + tf.constant([0, 2], tf.int64))
            # flip(filters)^T: [kh, kw, O, C], taps reversed in both axes.
            flipped = tf.transpose(tf.reverse(wv, [0, 1]), [0, 1, 3, 2])
            dx, _ = ops.lowprec_dfp_conv2d(
                dy, flipped, strides=[1, 1], dilations=list(dilations),
                input_dilations=list(strides), pads=[dx_top, dx_bottom, dx_left, dx_right],
                **options)
            dw, _ = ops.lowprec_dfp_conv2d_backprop_filter(
                xv, dy, filter_size=[kh, kw], input_dilations=[1, 1], **geometry_attrs,
                **options)
            return dx, dw

        return y, grad

    return conv(x, filters)
