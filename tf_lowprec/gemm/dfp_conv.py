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

`grouped_convolution` (grouped conv2d / conv3d, `grouped_applies` says
which) runs `convolution` once per group on the channel slices of x, the
filters and the error, each quantized once as a whole tensor first.

`conv_transpose` (what `tf_lowprec.gemm.dfp.dfp_conv_transpose` runs for 1-,
2- and 3-D transposed convolutions) is the input gradient of a convolution,
so it runs on the same ops: its forward pass is the d(x) above (x dilated by
the strides and padded, the flipped filters, K = prod(k) * C), its d(x) that
convolution's forward pass and its d(filters) that convolution's filter
gradient with the roles of x and the error exchanged.

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


def quantize_once(x, filters, fmt, rounding, backward_rounding, seed):
    """(seed, x, filters) of an implicit DFP convolution: its seed tensor and its operands.

    Rounded to nearest, the kernels quantize x and the filters themselves (the
    same values as `quantize_dfp`); other roundings quantize x (seed) and the
    filters (seed + [0, 1]) once here, with straight-through gradients
    (quantize_dfp's), and the kernels' own quantization is then lossless.
    """
    seed = rounding_lib.seed_tensor(
        seed, "stochastic" if "stochastic" in (rounding, backward_rounding) else "nearest_even")
    if rounding != "nearest_even":
        x = rounding_lib.quantize_dfp(x, fmt, rounding, seed=seed)
        filters = rounding_lib.quantize_dfp(filters, fmt, rounding,
                                            seed=seed + tf.constant([0, 1], tf.int64))
    return seed, x, filters


def quantized_error(dy, fmt, backward_rounding, seed):
    """The error as the backward kernels must see it: rounded here (seed + [0, 2]) unless
    to nearest, which the kernels do themselves."""
    if backward_rounding == "nearest_even":
        return dy
    return rounding_lib.quantize_dfp(dy, fmt, backward_rounding,
                                     seed=seed + tf.constant([0, 2], tf.int64))


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
    seed, x, filters = quantize_once(x, filters, fmt, rounding, backward_rounding, seed)
    dx_pads = []
    for size, k, s, d, before, count in zip(x.shape[1:-1], ksize, strides, dilations,
                                            pads[::2], out):
        dx_pads += input_gradient_pads(size, k, s, d, before, count)

    @tf.custom_gradient
    def conv(xv, wv):
        y, _ = conv_op(xv, wv, input_dilations=ones, **geometry_attrs, **options)

        def grad(dy):
            dy = quantized_error(dy, fmt, backward_rounding, seed)
            # With flip_filters the op uses flip(wv)^T ([*k, O, C], taps
            # reversed in every spatial axis), written by the kernel itself
            # instead of ReverseV2 + Transpose ops.
            dx, _ = conv_op(dy, wv, strides=ones, dilations=list(dilations),
                            input_dilations=list(strides), pads=dx_pads, flip_filters=True,
                            **options)
            dw, _ = filter_op(xv, dy, filter_size=ksize, input_dilations=ones,
                              **geometry_attrs, **options)
            return dx, dw

        return y, grad

    return conv(x, filters)


def transpose_applies(x, geometry):
    """Whether `conv_transpose` can take a transposed convolution of `geometry`.

    `geometry` is `conv_nd.transpose_geometry`'s (static sizes by then): 1, 2
    or 3 spatial axes (a 1-D one runs as a 2-D one of height 1, a 3-D one on
    the conv3d ops) and a non-empty x.
    """
    return len(geometry.spatial) <= 3 and all(n > 0 for n in x.shape[1:-1])


def conv_transpose(x, filters, geometry, fmt=formats_lib.DFP16, *,
                   rounding="nearest_even", seed=None, backward_rounding="nearest_even",
                   chunk_size=64, isa="auto"):
    """`tf.nn.conv_transpose` (channels last) as implicit INT16 GEMMs, with its gradient.

    `x` [N, *X, C] and `filters` [*k, O, C] as `dfp_conv_transpose` checked
    them; `geometry` (`conv_nd.transpose_geometry`) is that of the convolution
    `conv(z [N, *spatial, O], filters)` whose input gradient this is (its
    `pads` are TF's, its windows x's positions); `transpose_applies` holds.
    1-D runs as 2-D of height 1 (LowprecDfpConv2d*), 3-D on LowprecDfpConv3d*.
    With `conv` that convolution:

    * y = the d(z) of `conv`: x dilated by the strides, padded, convolved with
      the filters reversed in every spatial axis as `[*k, C, O]` (K =
      prod(k) * C); output elements in no window of conv (output padding
      past the last window) are 0;
    * d(x) = conv(dy, filters), stride s (K = prod(k) * O);
    * d(filters) = conv's filter gradient of (dy, x): patches(dy)^T @ x
      (K = N * prod(X)).

    Rounded to nearest, every operand is quantized inside the kernels (one
    exponent per tensor, the same values as `quantize_dfp`); other roundings
    quantize x (seed), the filters (seed + [0, 1]) and the error (seed +
    [0, 2]) once here, and the kernels' own quantization is then lossless.
    """
    one_d = len(geometry.spatial) == 1

    def lifted(values, first):
        return [first, *values] if one_d else list(values)

    spatial, ksize = lifted(geometry.spatial, 1), lifted(geometry.ksize, 1)
    strides, dilations = lifted(geometry.strides, 1), lifted(geometry.dilations, 1)
    conv_pads = lifted(geometry.pads, (0, 0))
    if one_d:
        x, filters = x[:, None], filters[None]
    rank = len(spatial)
    ops = _load_ops()
    conv_op, filter_op = {
        2: (ops.lowprec_dfp_conv2d, ops.lowprec_dfp_conv2d_backprop_filter),
        3: (ops.lowprec_dfp_conv3d, ops.lowprec_dfp_conv3d_backprop_filter)}[rank]
    ones, axes = [1] * rank, list(range(rank))
    options = dict(bits=fmt.bits, extra_shift=fmt.extra_shift, chunk_size=chunk_size, isa=isa)
    conv_attrs = dict(strides=strides, dilations=dilations, input_dilations=ones,
                      pads=[p for pair in conv_pads for p in pair])
    # The forward pass is conv's d(z): pads of the dilated x so that a stride-1
    # convolution of it has the output's size.
    forward_pads = []
    for size, k, s, d, (before, _), out in zip(spatial, ksize, strides, dilations, conv_pads,
                                              x.shape[1:-1]):
        forward_pads += input_gradient_pads(size, k, s, d, before, out)
    seed, x, filters = quantize_once(x, filters, fmt, rounding, backward_rounding, seed)

    @tf.custom_gradient
    def transpose(xv, wv):
        # [*k, O, C] -> flipped taps, [*k, C, O]: conv's d(z) filters.
        flipped = tf.transpose(tf.reverse(wv, axes), axes + [rank + 1, rank])
        y, _ = conv_op(xv, flipped, strides=ones, dilations=dilations,
                       input_dilations=strides, pads=forward_pads, **options)

        def grad(dy):
            dy = quantized_error(dy, fmt, backward_rounding, seed)
            dx, _ = conv_op(dy, wv, **conv_attrs, **options)
            dw, _ = filter_op(dy, xv, filter_size=ksize, **conv_attrs, **options)
            return dx, dw

        return y, grad

    y = transpose(x, filters)
    return y[:, 0] if one_d else y


# Where one implicit convolution per group beats the batched grouped GEMM
# (im2col + col2im): at most this many groups, or at least this many input
# channels per group (benchmarks/results/dfp16_grouped.md, Zen 4, avx512:
# batch 16, 16x16x64 3x3: 0.40x-0.62x the GEMM path's CPU time for 2-16
# groups, 1.03x for 32 groups of 2 channels; 4x4x512: 0.81x-0.93x for 128
# groups of 4, 1.26x-1.37x for 256 groups of 2; missed: 1.2x for 64 groups
# of 8 there, a 10 ms step).  Per-group op calls cost a fixed overhead each;
# the grouped GEMM's cost is mostly its im2col / col2im copies.
MAX_ALWAYS_IMPLICIT_GROUPS = 16
MIN_IMPLICIT_GROUP_CHANNELS = 4


def grouped_applies(x, filters, groups, strides, padding, dilations):
    """Whether `grouped_convolution` takes a grouped conv2d / conv3d.

    `groups` > 1 with static channels and `geometry` not None (static
    spatial and filter sizes, a non-empty output), and the implicit path the
    faster one: groups <= `MAX_ALWAYS_IMPLICIT_GROUPS` or C / groups >=
    `MIN_IMPLICIT_GROUP_CHANNELS` (measured; see those constants).  Other
    grouped convolutions run on the batched grouped GEMM (im2col).

    >>> import numpy as np
    >>> x = np.zeros((1, 8, 8, 64), np.float32)
    >>> grouped_applies(x, np.zeros((3, 3, 16, 64), np.float32), 4, (1, 1), "SAME", (1, 1))
    True
    >>> grouped_applies(x, np.zeros((3, 3, 2, 64), np.float32), 32, (1, 1), "SAME", (1, 1))
    False
    """
    channels = x.shape[-1]
    if groups < 2 or channels is None or filters.shape[-1] is None:
        return False
    if groups > MAX_ALWAYS_IMPLICIT_GROUPS and channels // groups < MIN_IMPLICIT_GROUP_CHANNELS:
        return False
    return geometry(x, filters, strides, padding, dilations) is not None


def grouped_convolution(x, filters, groups, strides, padding, dilations,
                        fmt=formats_lib.DFP16, *, rounding="nearest_even", seed=None,
                        backward_rounding="nearest_even", chunk_size=64, isa="auto"):
    """A grouped conv2d / conv3d (channels last) as implicit INT16 GEMMs, one `convolution` a group.

    filters [*k, C / groups, O]; group g convolves x[..., g * Cg:(g + 1) * Cg]
    with filters[..., g * Og:(g + 1) * Og] and the outputs are concatenated.
    x, the filters and (in the gradient) the error are quantized once here
    as whole tensors (one exponent each, as the grouped GEMM path and the
    paper's arithmetic quantize them; seeds as `convolution`'s).  Each group's
    kernels then quantize their slice again with the slice's own exponent
    E_s <= E: lossless (the values lie on the 2^E grid and fit), and the
    mantissas are those of the whole tensor times 2^(E - E_s), so every exact
    integer chunk sum is scaled by a power of two, and so (no overflow or
    underflow of FP32) are its FP32 conversion, the FP32 sums of chunks and
    the result before the final 2^(Ex + Ew) scale: the same FP32 bits as
    with the whole tensors' exponents.  Forward and d(filters) are therefore
    the grouped GEMM path's bits; d(x) is each group's implicit input
    gradient (INT32 chunk sums over prod(k) * O / groups terms, no col2im).
    """
    x, filters = tf.convert_to_tensor(x), tf.convert_to_tensor(filters)
    seed = rounding_lib.seed_tensor(
        seed, "stochastic" if "stochastic" in (rounding, backward_rounding) else "nearest_even")
    # Straight-through gradients (quantize_dfp's).
    x = rounding_lib.quantize_dfp(x, fmt, rounding, seed=seed)
    filters = rounding_lib.quantize_dfp(filters, fmt, rounding,
                                        seed=seed + tf.constant([0, 1], tf.int64))
    options = dict(chunk_size=chunk_size, isa=isa)
    # tf.split: its gradient concatenates the groups' d(x) / d(filters).
    outputs = [convolution(xg, wg, strides, padding, dilations, fmt, **options)
               for xg, wg in zip(tf.split(x, groups, axis=-1),
                                 tf.split(filters, groups, axis=-1))]
    error_seed = seed + tf.constant([0, 2], tf.int64)

    @tf.custom_gradient
    def whole_error_quantized(y):
        def grad(dy):
            return rounding_lib.quantize_dfp(dy, fmt, backward_rounding, seed=error_seed)

        return tf.identity(y), grad

    return whole_error_quantized(tf.concat(outputs, axis=-1))
