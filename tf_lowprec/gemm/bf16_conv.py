"""NHWC conv2d, NDHWC conv3d and transposed convolutions on the BF16 GEMM as implicit
GEMMs (no im2col, no col2im).

`conv2d` / `conv3d` are what `tf_lowprec.gemm.bf16.bf16_conv2d` /
`bf16_conv3d` run for one group and static spatial sizes: three GEMMs in
`bf16_matmul`'s arithmetic (BF16 operands, FP32 sums in the VDPBF16PS
order), whose packing gathers the patch matrix straight from its NHWC input and rounds it to BF16
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

(conv3d: the same with a third spatial axis.)  `conv_transpose`, which
`bf16_conv_transpose` runs (1 to 3 spatial axes; a 1-D one as a 2-D one of
height 1), is the input gradient of a convolution: the same three GEMMs with
the roles exchanged (its docstring).

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


def _dilate(v, strides, size):
    """[N, *size, C] v with s - 1 zeros (+0) between its elements along each spatial axis."""
    for axis, (s, n) in enumerate(zip(strides, size), start=1):
        if s == 1:
            continue
        paddings = [[0, 0]] * (len(size) + 3)
        paddings[axis + 1] = [0, s - 1]
        spread = tf.pad(tf.expand_dims(v, axis + 1), paddings)
        shape = tf.shape(v)
        spread = tf.reshape(spread, tf.concat([shape[:axis], [n * s], shape[axis + 1:]], 0))
        v = spread[(slice(None),) * axis + (slice(0, (n - 1) * s + 1),)]
    return v


def _twin_patches(x, ksize, strides, pads, dilations):
    """The patch matrix [N * prod(out), prod(ksize) * C] of x padded by pads, written out
    (columns in the order (*ksize, C), as the ops gather them)."""
    pairs = [list(pads[i:i + 2]) for i in range(0, len(pads), 2)]
    padded = tf.pad(x, [[0, 0]] + pairs + [[0, 0]])
    if len(ksize) == 2:
        patches = _gemm_common.image_patches(padded, *ksize, strides, "VALID", dilations)
    else:
        from tf_lowprec.gemm import conv_nd  # noqa: PLC0415  (conv_nd imports bf16 users)
        spatial = [n + a + b for n, (a, b) in zip(x.shape[1:-1], pairs)]
        patches = conv_nd.patches(padded, conv_nd.Geometry(spatial, x.shape[-1], ksize,
                                                           strides, "VALID", dilations))
    return tf.reshape(patches, [-1, tf.shape(patches)[-1]])


def _twin_conv(x, size, filters, strides, pads, dilations):
    """The forward GEMM on the stock-TF twin: patches(x) @ filters (size: x's spatial sizes)."""
    ksize = tuple(filters.shape[:len(size)])
    columns = _twin_patches(x, ksize, strides, pads, dilations)
    channels_out = tf.shape(filters)[-1]
    y = tf_bf16_gemm.matmul(columns, tf.reshape(filters, [-1, channels_out]))
    out = [(n + pads[2 * i] + pads[2 * i + 1] - (k - 1) * d - 1) // s + 1
           for i, (n, k, s, d) in enumerate(zip(size, ksize, strides, dilations))]
    return tf.reshape(y, tf.concat([tf.shape(x)[:1], out, [channels_out]], 0))


def _flip(filters):
    """flip(filters)^T: [*k, O, C], the taps reversed in every spatial axis (d(x)'s filters)."""
    rank = filters.shape.rank - 2
    axes = list(range(rank))
    return tf.transpose(tf.reverse(filters, axes), axes + [rank + 1, rank])


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
    if any(s != 1 for s in input_dilations):
        x = _dilate(x, input_dilations, size)
        size = tuple((n - 1) * s + 1 for n, s in zip(size, input_dilations))
    return _twin_conv(x, size, filters, strides, pads, dilations)


def _filter_gradient(x, dy, ksize, strides, pads, dilations, isa, use_ops):
    """The GEMM patches(x)^T @ dy: d(filters) [*ksize, C, O] (2 or 3 spatial axes)."""
    if use_ops:
        op = _load_ops().lowprec_bf16_conv3d_backprop_filter if len(ksize) == 3 else \
            _load_ops().lowprec_bf16_conv2d_backprop_filter
        return op(x, dy, filter_size=list(ksize), strides=list(strides),
                  dilations=list(dilations), input_dilations=[1] * len(ksize), pads=list(pads),
                  isa=isa)
    columns = _twin_patches(x, ksize, strides, pads, dilations)
    dw = tf_bf16_gemm.matmul(columns, tf.reshape(dy, [-1, tf.shape(dy)[-1]]), transpose_a=True)
    return tf.reshape(dw, [*ksize, tf.shape(x)[-1], tf.shape(dy)[-1]])


def _implicit_conv(x, filters, strides, padding, dilations, isa, implementation):
    """conv2d / conv3d (rank from x) as three implicit GEMMs, with its gradient."""
    pads, out = geometry(x, filters, strides, padding, dilations)
    rank = len(x.shape) - 2
    ksize = tuple(filters.shape[:rank])
    size = tuple(x.shape[1:-1])
    dx_pads = []
    for n, k, s, d, before, count in zip(size, ksize, strides, dilations, pads[::2], out):
        dx_pads += input_gradient_pads(n, k, s, d, before, count)
    ones = (1,) * rank
    use_ops = rounding_lib.use_kernel(implementation)

    @tf.custom_gradient
    def conv(xv, wv):
        y = _conv(xv, size, wv, strides, pads, dilations, ones, isa, use_ops)

        def grad(dy):
            dx = _conv(dy, out, wv, ones, dx_pads, dilations, strides, isa, use_ops,
                       flip_filters=True)
            dw = _filter_gradient(xv, dy, ksize, strides, pads, dilations, isa, use_ops)
            return dx, dw

        return y, grad

    return conv(x, filters)


def conv2d(x, filters, strides, padding, dilations, isa="auto", implementation="auto"):
    """`tf.nn.conv2d` (NHWC, one group) as implicit BF16 GEMMs, with its gradient.

    Arguments as `tf_lowprec.bf16_conv2d` (checked there); `geometry(x,
    filters, ...)` must not be None.  The rounding of x, the filters and the
    error to BF16 is straight-through, as in `bf16_matmul`.  Each of the three
    GEMMs is one call of `_conv` or `_filter_gradient` (tests count them).
    """
    return _implicit_conv(x, filters, strides, padding, dilations, isa, implementation)


def conv3d(x, filters, strides, padding, dilations, isa="auto", implementation="auto"):
    """`tf.nn.conv3d` (NDHWC, one group) as implicit BF16 GEMMs, with its gradient.

    conv2d's three GEMMs with a third spatial axis: y = patches(x) @ filters
    (K = kd * kh * kw * C), d(filters) = patches(x)^T @ dy, and d(x) =
    patches(dilate(dy, strides)) @ flip(filters)^T (K = kd * kh * kw * O, one
    VDPBF16PS-order sum per input gradient, no col2im).  `geometry(x,
    filters, ...)` must not be None; the caller checks the arguments.

    >>> x = tf.ones((1, 3, 3, 3, 1)); w = tf.ones((2, 2, 2, 1, 1))
    >>> conv3d(x, w, (1, 1, 1), "VALID", (1, 1, 1))[0, 0, :, :, 0].numpy()
    array([[8., 8.],
           [8., 8.]], dtype=float32)
    """
    return _implicit_conv(x, filters, strides, padding, dilations, isa, implementation)


def transpose_applies(x, geometry):
    """Whether `conv_transpose` can take a transposed convolution of `geometry`
    (`conv_nd.transpose_geometry`'s, static sizes by then): a non-empty x."""
    return all(n > 0 for n in x.shape[1:-1])


def conv_transpose(x, filters, geometry, isa="auto", implementation="auto"):
    """`tf.nn.conv_transpose` (channels last, 1-3 spatial axes) as implicit BF16 GEMMs.

    `x` [N, *X, C] and `filters` [*k, O, C] as `bf16_conv_transpose` checked
    them; `geometry` (`conv_nd.transpose_geometry`) is that of the convolution
    `conv(z [N, *spatial, O], filters)` whose input gradient this is, and
    `transpose_applies` holds.  With `conv` that convolution (a 1-D one runs
    as a 2-D one of height 1):

    * y = conv's d(z): x dilated by the strides, padded, convolved with the
      filters reversed in every spatial axis as `[*k, C, O]` (K = prod(k) *
      C, in the order (*k, C)); output elements in no window of conv (output
      padding past the last window) are +0;
    * d(x) = conv(dy, filters), stride s (K = prod(k) * O);
    * d(filters) = conv's filter gradient of (dy, x): patches(dy)^T @ x
      (K = N * prod(X)).

    Each is one GEMM in `bf16_matmul`'s arithmetic (VDPBF16PS order), on the
    ops or, where they cannot run, on the stock-TF twin with the same bits.

    >>> from tf_lowprec.gemm import conv_nd
    >>> x = tf.ones((1, 2, 1)); w = tf.ones((2, 1, 1))
    >>> g = conv_nd.transpose_geometry(x, w, (3,), (1,), "VALID", (1,))
    >>> conv_transpose(x, w, g)[0, :, 0].numpy()
    array([1., 2., 1.], dtype=float32)
    """
    one_d = len(geometry.spatial) == 1

    def lifted(values, first):
        return (first, *values) if one_d else tuple(values)

    spatial, ksize = lifted(geometry.spatial, 1), lifted(geometry.ksize, 1)
    strides, dilations = lifted(geometry.strides, 1), lifted(geometry.dilations, 1)
    conv_pairs = lifted(geometry.pads, (0, 0))
    conv_pads = [p for pair in conv_pairs for p in pair]
    if one_d:
        # (expand_dims / squeeze: gradients are reshapes, no StridedSliceGrad)
        x, filters = tf.expand_dims(x, 1), tf.expand_dims(filters, 0)
    size = tuple(x.shape[1:-1])
    ones = (1,) * len(spatial)
    # The forward pass is conv's d(z): pads of the dilated x so that a stride-1
    # convolution of it has the output's size.
    forward_pads = []
    for n, k, s, d, (before, _), count in zip(spatial, ksize, strides, dilations, conv_pairs,
                                              size):
        forward_pads += input_gradient_pads(n, k, s, d, before, count)
    use_ops = rounding_lib.use_kernel(implementation)

    @tf.custom_gradient
    def transpose(xv, wv):
        # flip_filters: [*k, O, C] -> taps reversed, [*k, C, O]: conv's d(z) filters.
        y = _conv(xv, size, wv, ones, forward_pads, dilations, strides, isa, use_ops,
                  flip_filters=True)

        def grad(dy):
            dx = _conv(dy, spatial, wv, strides, conv_pads, dilations, ones, isa, use_ops)
            dw = _filter_gradient(dy, xv, ksize, strides, conv_pads, dilations, isa, use_ops)
            return dx, dw

        return y, grad

    y = transpose(x, filters)
    return tf.squeeze(y, 1) if one_d else y
