"""NHWC depthwise conv2d on INT16 mantissas (DFP16), computed directly: no GEMM, no im2col.

`depthwise_conv2d` is what `tf_lowprec.gemm.dfp.dfp_conv2d` runs for a
depthwise convolution (groups equal to the input channels, one input channel
per group; Keras DepthwiseConv2D / DepthwiseConv1D and the depthwise half of
SeparableConv under a dfp16 policy) where the C++ kernels run and the
height, width and filter size are static.  Per channel such a convolution is
a GEMM with K = kh * kw and N = the depth multiplier M: too small for the
GEMM's panels.  The ops `LowprecDfpDepthwiseConv2d` and
`LowprecDfpDepthwiseConv2dBackpropFilter` (custom_ops/kernels/
dfp_depthwise_kernels.cc) run across the channels of each pixel instead, with
the GEMM's arithmetic (INT16 x INT16 products, exact chunk sums of
`chunk_size` K indices, FP32 between chunks in K order, one scaling by
2^(E_a + E_b)); docs/dfp_gemm.md states it.  With `filters` [kh, kw, C, M]:

* forward: y[.., c * M + m] sums over the taps (i, j) (K = kh * kw):
  bit for bit the grouped INT16 GEMM of the patches (`conv2d_as_gemm`);
* d(filters)[i, j, c, m] sums x-patch * dy over the output pixels (b, oy, ox)
  (K = N * OH * OW): bit for bit the grouped GEMM's d(filters);
* d(x) = the depthwise convolution of the error, dilated by the strides and
  padded, with the filters reversed in both spatial axes, each channel c
  summing over (i, j, m) (K = kh * kw * M): every input gradient is one chunked
  integer sum, instead of FP32 sums of the d(patches) columns (col2im).  New
  bits, as for `tf_lowprec.gemm.dfp_conv`'s d(x).

Each call counts as one GEMM in `lp.dfp_gemm_counters()` (calls, and chains
= outputs x chunks each); overflowed chains are not counted (the chunk sums
are formed in INT64, with nothing to recompute).

>>> import numpy as np
>>> x = np.ones((1, 3, 3, 2), np.float32); w = np.ones((2, 2, 2, 1), np.float32)
>>> depthwise_conv2d(x, w, (1, 1), "VALID", (1, 1))[0, :, :, 1].numpy()
array([[4., 4.],
       [4., 4.]], dtype=float32)
"""

import tensorflow as tf

from tf_lowprec._op_library import load as _load_ops
from tf_lowprec.gemm.dfp_conv import quantize_once, quantized_error
from tf_lowprec.gemm.implicit_conv import geometry, input_gradient_pads
from tf_lowprec.numerics import formats as formats_lib


def applies(x, filters, groups, strides, padding, dilations):
    """Whether `depthwise_conv2d` takes `dfp_conv2d(x, filters, groups=groups)`.

    A depthwise convolution: `groups` equal to x's (static) channels and one
    input channel per group (filters [kh, kw, 1, C * M]), static height,
    width and filter size, a non-empty output.
    """
    channels = x.shape[-1]
    return (x.shape.rank == 4 and channels is not None and groups == channels and groups > 1
            and filters.shape[-2] == 1
            and geometry(x, filters, strides, padding, dilations) is not None)


def depthwise_conv2d(x, filters, strides, padding, dilations, fmt=formats_lib.DFP16, *,
                     rounding="nearest_even", seed=None, backward_rounding="nearest_even",
                     chunk_size=64, isa="auto"):
    """Depthwise NHWC conv2d on INT16 mantissas, with its gradient.

    `x` [N, H, W, C]; `filters` [kh, kw, C, M] (Keras' depthwise kernel), the
    output [N, OH, OW, C * M].  Arguments as `lp.dfp_conv2d` (checked there);
    `geometry(x, filters, ...)` must not be None.  Rounded to nearest, x, the
    filters and the error are quantized inside the kernels (the same values
    as `quantize_dfp`); other roundings quantize them once here (x with
    seed, the filters with seed + [0, 1], the error with seed + [0, 2], as
    the grouped-GEMM path does), and the kernels' own quantization is then
    lossless.
    """
    x, filters = tf.convert_to_tensor(x), tf.convert_to_tensor(filters)
    pads, out = geometry(x, filters, strides, padding, dilations)
    ops = _load_ops()
    ksize = list(filters.shape[:2])
    options = dict(bits=fmt.bits, extra_shift=fmt.extra_shift, chunk_size=chunk_size, isa=isa)
    geometry_attrs = dict(strides=list(strides), dilations=list(dilations), pads=pads)
    seed, x, filters = quantize_once(x, filters, fmt, rounding, backward_rounding, seed)
    dx_pads = []
    for size, k, s, d, before, count in zip(x.shape[1:3], ksize, strides, dilations,
                                            pads[::2], out):
        dx_pads += input_gradient_pads(size, k, s, d, before, count)

    @tf.custom_gradient
    def conv(xv, wv):
        y = ops.lowprec_dfp_depthwise_conv2d(xv, wv, input_dilations=[1, 1], **geometry_attrs,
                                              **options)

        def grad(dy):
            dy = quantized_error(dy, fmt, backward_rounding, seed)
            dx = ops.lowprec_dfp_depthwise_conv2d(
                dy, tf.reverse(wv, [0, 1]), reduce_multiplier=True, strides=[1, 1],
                dilations=list(dilations), input_dilations=list(strides), pads=dx_pads,
                **options)
            dw = ops.lowprec_dfp_depthwise_conv2d_backprop_filter(
                xv, dy, filter_size=ksize, input_dilations=[1, 1], **geometry_attrs, **options)
            return dx, dw

        return y, grad

    return conv(x, filters)
