"""INT16 shared-exponent GEMM (DFP16) as real integer arithmetic.

`dfp_matmul` converts both operands to INT16 mantissas with shared exponents
(exactly `quantize_dfp`'s), multiplies them with INT16 x INT16 -> INT32
instructions (AVX512_VNNI `vpdpwssds` where the CPU has it, portable C++
elsewhere, bit-identical) and returns FP32.  The reduction axis is cut into
chunks of `chunk_size` elements; each chunk's integer sum is exact (INT32
chains, checked for overflow and recomputed in INT64 where a chain would have
overflowed), chunk sums are added in FP32 in K order and the total is scaled
by 2^(Ea + Eb) once per exponent block.  docs/dfp_gemm.md states the
arithmetic precisely; `tf_lowprec.gemm.reference` reproduces it in NumPy.

>>> import tensorflow as tf, tf_lowprec as lp
>>> a = tf.constant([[1.0, 2.0], [3.0, 4.0]])
>>> lp.dfp_matmul(a, a).numpy()
array([[ 7., 10.],
       [15., 22.]], dtype=float32)
"""

import numpy as np
import tensorflow as tf

from tf_lowprec.gemm import common as _gemm_common
from tf_lowprec.gemm import conv_nd as _conv_nd
from tf_lowprec.gemm import dfp_conv as _dfp_conv
from tf_lowprec.gemm import dfp_depthwise as _dfp_depthwise
from tf_lowprec import _op_library
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib
from tf_lowprec.gemm import tf_dfp as tf_dfp_gemm
from tf_lowprec._op_library import load as _load_ops

MAX_BITS = 16  # the mantissas must fit INT16
_as_float32 = _gemm_common.as_float32_operand
_batch_shape = _gemm_common.batch_shape
_to_rank3 = _gemm_common.to_rank3
_check_inner_dims = _gemm_common.check_inner_dims
_reduce_to_shape = _gemm_common.reduce_to_shape


def _check_format(fmt):
    fmt = formats_lib.get(fmt)
    if not isinstance(fmt, formats_lib.DfpFormat):
        raise ValueError(f"fmt must be a DfpFormat such as lp.DFP16, got {fmt!r}")
    if fmt.bits > MAX_BITS:
        raise ValueError(
            f"fmt.bits must be at most {MAX_BITS} for the INT16 GEMM, got {fmt.bits}"
        )
    return fmt


def _check_options(rounding, backward_rounding, chunk_size, isa):
    formats_lib.check_rounding(rounding)
    formats_lib.check_rounding(backward_rounding, "backward_rounding")
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 2
        or chunk_size % 2
        or chunk_size > 2**20
    ):
        raise ValueError(f"chunk_size must be an even int in 2..2^20, got {chunk_size!r}")
    _op_library.check_isa(isa)


def _offset_seed(seed, offset):
    """seed + [0, offset]: distinct, reproducible streams for each operand."""
    return seed + tf.constant([0, offset], tf.int64)


def quantize_operand(x, fmt, reduction_axis, rounding="nearest_even", seed=None,
                     implementation="auto"):
    """DFP values and exponents of one GEMM operand.

    Per-block exponents run along the reduction axis (fmt.axis is replaced).
    Returns `quantize_dfp(x, fmt, rounding, seed=seed, return_exponents=True)`.
    """
    if fmt.block_size is not None:
        fmt = fmt.replace(axis=reduction_axis)
    return rounding_lib.quantize_dfp(x, fmt, rounding, seed=seed, return_exponents=True,
                                     implementation=implementation)


def _exponents_rank3(e, x, transposed_k_last, per_block, batch):
    """Exponents as [B or 1, lanes, blocks] (a) / [B or 1, blocks, lanes] (b)."""
    if not per_block:
        return tf.reshape(e, [1, 1, 1])
    if transposed_k_last:
        e = tf.linalg.matrix_transpose(e)
    return _to_rank3(e, batch)


def gemm_quantized(aq, ea, bq, eb, fmt, *, transpose_a=False, transpose_b=False,
                   chunk_size=64, isa="auto", implementation="auto"):
    """The INT16 GEMM of operands already in DFP form (no gradient).

    `aq, ea` and `bq, eb` are `quantize_operand` outputs.  Returns
    `(product, overflowed_chunks)`.  With implementation "tf" (or "auto" where
    the kernel cannot run: a GPU, XLA) the bit-identical stock-TF twin in
    `tf_lowprec.gemm.tf_dfp` runs instead; it does not count overflows.
    """
    per_block = fmt.block_size is not None
    batch = tf.broadcast_dynamic_shape(_batch_shape(aq), _batch_shape(bq))
    a3 = _to_rank3(aq, batch)
    b3 = _to_rank3(bq, batch)
    # a's exponents: [.., m, blocks] (blocks along k = last axis) unless transposed.
    ea3 = _exponents_rank3(ea, aq, transpose_a, per_block, batch)
    eb3 = _exponents_rank3(eb, bq, transpose_b, per_block, batch)
    if rounding_lib.use_kernel(implementation):
        product, overflowed = _load_ops().lowprec_dfp_matmul(
            a3, ea3, b3, eb3, transpose_a=transpose_a, transpose_b=transpose_b,
            block_size=fmt.block_size or 0, chunk_size=chunk_size, isa=isa,
        )
    else:
        product, overflowed = tf_dfp_gemm.gemm_quantized(
            a3, ea3, b3, eb3, transpose_a=transpose_a, transpose_b=transpose_b,
            block_size=fmt.block_size or 0, chunk_size=chunk_size,
        )
    product = _gemm_common.from_rank3(product, aq, bq, batch, transpose_a, transpose_b)
    return product, overflowed


def gemm_fused(x, y, fmt, *, transpose_a=False, transpose_b=False, chunk_size=64,
               isa="auto"):
    """`gemm_quantized` of `quantize_operand(x)` and `quantize_operand(y)`, one op.

    For one exponent per tensor and nearest_even rounding only: the kernel
    takes each operand's exponent from its largest finite magnitude (as
    `quantize_dfp` does) and rounds the mantissas while packing them, so no
    quantized copy of x or y is written.  Bit-identical to the two-step path.
    Returns `(product, overflowed_chunks)`.
    """
    if fmt.block_size is not None:
        raise ValueError(f"gemm_fused needs one exponent per tensor, got {fmt!r}")
    batch = tf.broadcast_dynamic_shape(_batch_shape(x), _batch_shape(y))
    product, overflowed = _load_ops().lowprec_dfp_matmul_fused(
        _to_rank3(x, batch), _to_rank3(y, batch), bits=fmt.bits,
        extra_shift=fmt.extra_shift, transpose_a=transpose_a, transpose_b=transpose_b,
        chunk_size=chunk_size, isa=isa,
    )
    return _gemm_common.from_rank3(product, x, y, batch, transpose_a, transpose_b), overflowed


def dfp_matmul(
    a,
    b,
    fmt=formats_lib.DFP16,
    *,
    transpose_a=False,
    transpose_b=False,
    rounding="nearest_even",
    seed=None,
    backward_rounding="nearest_even",
    chunk_size=64,
    isa="auto",
    implementation="auto",
    return_overflow_count=False,
    name=None,
):
    """`tf.linalg.matmul(a, b)` computed with INT16 mantissas and INT32 chains.

    Both operands are quantized with `quantize_dfp(x, fmt, rounding)` (one
    exponent per tensor, or per block of `fmt.block_size` elements along the
    reduction axis; `fmt.axis` is ignored).  The gradient rounds the incoming
    error to `fmt` with `backward_rounding` and runs both backward GEMMs
    through this same integer GEMM.

    Args:
      a, b: float32 tensors `[..., m, k]` and `[..., k, n]` (before the
        transposes); batch dimensions broadcast as in `tf.linalg.matmul`.
      fmt: a `DfpFormat` with bits <= 16 (default `lp.DFP16`).
      transpose_a, transpose_b: as in `tf.linalg.matmul`.
      rounding: "nearest_even", "stochastic" or "toward_zero" for a and b.
      seed: for stochastic rounding (an int, a pair or an int64[2] tensor);
        a uses seed, b uses seed + [0, 1], the error seed + [0, 2].
      backward_rounding: rounding of the error in the gradient.
      chunk_size: elements per INT32 chain (even); part of the arithmetic:
        chunk sums are added in FP32.
      isa: "auto" (the fastest tier the CPU runs), "portable", "avx2" (the
        vpmaddwd kernel) or "avx512" (the VNNI kernel); all give the same bits.
      implementation: "auto", "op" (the C++ kernels) or "tf" (stock TF ops,
        bit-identical; used for SavedModel export, XLA and GPUs).
      return_overflow_count: also return an int64 scalar, how many (output,
        chunk) INT32 chains would have overflowed (the result is exact anyway).

    A row of `op(a)` or column of `op(b)` holding NaN or Inf gives NaN in the
    whole output row or column.

    >>> import numpy as np, tensorflow as tf, tf_lowprec as lp
    >>> x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> lp.dfp_matmul(x, x, transpose_b=True).numpy()
    array([[ 5., 14.],
           [14., 50.]], dtype=float32)
    """
    fmt = _check_format(fmt)
    _check_options(rounding, backward_rounding, chunk_size, isa)
    if not isinstance(transpose_a, bool) or not isinstance(transpose_b, bool):
        raise ValueError("transpose_a and transpose_b must be True or False")
    with tf.name_scope(name or "dfp_matmul"):
        a = _as_float32(a, "a")
        b = _as_float32(b, "b")
        _check_inner_dims(a, b, transpose_a, transpose_b)
        stochastic = rounding == "stochastic" or backward_rounding == "stochastic"
        seed = rounding_lib.seed_tensor(seed, "stochastic" if stochastic else "nearest_even")
        options = dict(chunk_size=chunk_size, isa=isa, implementation=implementation)

        def product(x, y, ta, tb, x_rounding, y_rounding, x_seed, y_seed):
            if (fmt.block_size is None and x_rounding == y_rounding == "nearest_even"
                    and rounding_lib.use_kernel(implementation)):
                # quantize_dfp fused into the kernel's packing (same results).
                return gemm_fused(x, y, fmt, transpose_a=ta, transpose_b=tb,
                                  chunk_size=chunk_size, isa=isa)
            xq, ex = quantize_operand(x, fmt, -2 if ta else -1, x_rounding, x_seed,
                                      implementation)
            yq, ey = quantize_operand(y, fmt, -1 if tb else -2, y_rounding, y_seed,
                                      implementation)
            return gemm_quantized(xq, ex, yq, ey, fmt, transpose_a=ta, transpose_b=tb,
                                  **options)

        seed_b, seed_dy = _offset_seed(seed, 1), _offset_seed(seed, 2)
        overflow = {}

        @tf.custom_gradient
        def matmul(x, y):
            out, overflowed = product(x, y, transpose_a, transpose_b, rounding, rounding,
                                      seed, seed_b)
            overflow["count"] = overflowed

            def grad(dy):
                # Rounded to nearest, a per-tensor error is quantized by each
                # backward GEMM while it packs it (the fused kernel: one
                # quantization per GEMM, no rounded copy of dy).  Stochastic
                # rounding draws once, here, for both GEMMs, which then
                # quantize it again losslessly (DFP is idempotent).  Per-block
                # formats round it inside each GEMM, along that GEMM's
                # reduction axis.
                if (fmt.block_size is None and backward_rounding == "nearest_even"
                        and rounding_lib.use_kernel(implementation)):
                    dyq, dr = dy, "nearest_even"
                elif fmt.block_size is None:
                    dyq = quantize_operand(dy, fmt, -1, backward_rounding, seed_dy,
                                           implementation)[0]
                    dr = "nearest_even"
                else:
                    dyq, dr = dy, backward_rounding
                r = rounding
                if not transpose_a and not transpose_b:  # y = x w
                    dx = product(dyq, y, False, True, dr, r, seed_dy, seed_b)[0]
                    dw = product(x, dyq, True, False, r, dr, seed, seed_dy)[0]
                elif transpose_a and not transpose_b:  # y = x^T w
                    dx = product(y, dyq, False, True, r, dr, seed_b, seed_dy)[0]
                    dw = product(x, dyq, False, False, r, dr, seed, seed_dy)[0]
                elif not transpose_a and transpose_b:  # y = x w^T
                    dx = product(dyq, y, False, False, dr, r, seed_dy, seed_b)[0]
                    dw = product(dyq, x, True, False, dr, r, seed_dy, seed)[0]
                else:  # y = x^T w^T
                    dx = product(y, dyq, True, True, r, dr, seed_b, seed_dy)[0]
                    dw = product(dyq, x, True, True, dr, r, seed_dy, seed)[0]
                batch = tf.broadcast_dynamic_shape(_batch_shape(x), _batch_shape(y))
                return _reduce_to_shape(dx, x, batch), _reduce_to_shape(dw, y, batch)

            return out, grad

        out = matmul(a, b)
        if return_overflow_count:
            return out, overflow["count"]
        return out


def dfp_gemm_counters(reset=False):
    """Process-wide counters of the DFP GEMM since the last reset, as a dict.

    calls: GEMMs run; chains: (output, chunk) INT32 chains; overflowed: chains
    that would have overflowed INT32 (computed exactly all the same);
    recomputed_tiles: micro-tile chunks the VNNI kernel computed a second
    time (on its split chains or in INT64), wholly or some of their chains (a
    tuning figure: it depends on the tier).

    >>> import tf_lowprec as lp
    >>> sorted(lp.dfp_gemm_counters())
    ['calls', 'chains', 'overflowed', 'recomputed_tiles']
    """
    if not isinstance(reset, bool):
        raise ValueError(f"reset must be True or False, got {reset!r}")
    values = _load_ops().lowprec_dfp_gemm_counters(reset=reset)
    names = ("calls", "chains", "overflowed", "recomputed_tiles")
    return {k: int(v) for k, v in zip(names, np.asarray(values))}


def dfp_conv2d(
    x,
    filters,
    strides=1,
    padding="VALID",
    dilations=1,
    fmt=formats_lib.DFP16,
    *,
    groups=1,
    rounding="nearest_even",
    seed=None,
    backward_rounding="nearest_even",
    chunk_size=64,
    isa="auto",
    implementation="auto",
    name=None,
):
    """`tf.nn.conv2d` (NHWC) computed by the INT16 GEMM of `dfp_matmul`.

    The input and the filters are quantized to `fmt` (one exponent per tensor)
    and their patches multiplied by the INT16 GEMM; the gradient rounds the
    error to `fmt` (`backward_rounding`) before both backward GEMMs.  With the
    C++ kernels, one group and static height and width, these are implicit
    GEMMs (`tf_lowprec.gemm.dfp_conv`: patches gathered while packing):
    d(filters) = patches^T @ error, and d(x) one INT16 GEMM of the
    stride-dilated error's patches with the flipped filters.  A grouped
    convolution (several input channels a group) with static sizes runs as
    one such implicit convolution per group on x, the filters and the error
    quantized once as whole tensors (`dfp_conv.grouped_convolution`: forward
    and d(filters) the grouped GEMM's bits, d(x) without col2im), except more
    than 16 groups of fewer than 4 channels (`dfp_conv.grouped_applies`:
    the grouped GEMM is faster there).  Otherwise (those, dynamic sizes,
    `implementation="tf"`) the patches are extracted (im2col) for
    `dfp_matmul`, d(patches) = error @ filters^T, and the patch gradients
    are summed back onto the input in FP32 (col2im).  A depthwise
    convolution (`groups` = in_channels, filters [kh, kw, 1, C * M]) with
    the C++ kernels and static sizes runs on the direct depthwise kernels
    instead (`tf_lowprec.gemm.dfp_depthwise`): forward and d(filters) bit for
    bit the grouped GEMM's, d(x) one chunked integer sum per input gradient
    (the dilated error convolved with the flipped filters).

    Args:
      x: float32 `[batch, height, width, in_channels]`.
      filters: float32 `[kh, kw, in_channels, out_channels]`.
      strides, dilations: an int or a pair (height, width).
      padding: "VALID" or "SAME".
      fmt: a DfpFormat with one exponent per tensor (block_size None).
      groups: grouped convolution: x's channels and the output channels
        split into `groups` groups, filters `[kh, kw, in_channels / groups,
        out_channels]` (a depthwise convolution with multiplier M is
        `groups=in_channels` on filters reshaped to `[kh, kw, 1,
        in_channels * M]`).  One implicit convolution a group (or, for many
        small groups, one batched INT16 GEMM over the groups); x, the
        filters and the error keep one exponent per tensor.
      Other arguments as for `dfp_matmul` (x uses seed, filters seed + [0, 1]).

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 3, 3, 1), np.float32); w = np.ones((2, 2, 1, 1), np.float32)
    >>> lp.dfp_conv2d(x, w)[0, :, :, 0].numpy()
    array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    fmt = _check_conv_format(fmt, "dfp_conv2d")
    _check_options(rounding, backward_rounding, chunk_size, isa)
    strides, padding, dilations = _gemm_common.conv_options(strides, padding, dilations)
    with tf.name_scope(name or "dfp_conv2d"):
        x = _as_float32(x, "x")
        filters = _as_float32(filters, "filters")
        groups = _gemm_common.check_groups(groups)
        _gemm_common.check_conv_operands(x, filters, "dfp_conv2d", groups)
        stochastic = rounding == "stochastic" or backward_rounding == "stochastic"
        seed = rounding_lib.seed_tensor(seed, "stochastic" if stochastic else "nearest_even")
        if (groups == 1 and rounding_lib.use_kernel(implementation)
                and _dfp_conv.geometry(x, filters, strides, padding, dilations) is not None):
            # Implicit GEMMs: patches gathered while packing, no im2col / col2im.
            return _dfp_conv.conv2d(x, filters, strides, padding, dilations, fmt,
                                    rounding=rounding, seed=seed,
                                    backward_rounding=backward_rounding,
                                    chunk_size=chunk_size, isa=isa)
        if (groups > 1 and rounding_lib.use_kernel(implementation)
                and _dfp_depthwise.applies(x, filters, groups, strides, padding, dilations)):
            # Depthwise: the direct INT16 kernels (no patch matrix, no col2im);
            # filters [kh, kw, 1, C * M] -> [kh, kw, C, M] (output c * M + m).
            kh, kw = filters.shape[0], filters.shape[1]
            depthwise = tf.reshape(filters, [kh, kw, groups, -1])
            y = _dfp_depthwise.depthwise_conv2d(
                x, depthwise, strides, padding, dilations, fmt, rounding=rounding, seed=seed,
                backward_rounding=backward_rounding, chunk_size=chunk_size, isa=isa)
            return y
        if (groups > 1 and rounding_lib.use_kernel(implementation)
                and _dfp_conv.grouped_applies(x, filters, groups, strides, padding, dilations)):
            # One implicit convolution a group on whole-tensor-quantized operands.
            return _dfp_conv.grouped_convolution(
                x, filters, groups, strides, padding, dilations, fmt, rounding=rounding,
                seed=seed, backward_rounding=backward_rounding, chunk_size=chunk_size, isa=isa)
        kh, kw = filters.shape[0], filters.shape[1]
        covered = _gemm_common.patches_cover_input(x, kh, kw, strides, padding, dilations)
        xq, wq = _conv_operands(x, filters, fmt, rounding, seed, implementation, covered)

        def matmul(columns, weights):
            return dfp_matmul(columns, weights, fmt, seed=seed,
                              backward_rounding=backward_rounding, chunk_size=chunk_size,
                              isa=isa, implementation=implementation)

        return _gemm_common.conv2d_as_gemm(matmul, xq, wq, strides, padding, dilations,
                                            groups)


def _conv_operands(x, filters, fmt, rounding, seed, implementation, covered):
    """(x, filters) as a convolution's patches GEMM must receive them: one quantization each.

    `covered`: every element of x lies in some patch.
    """
    if rounding == "nearest_even" and rounding_lib.use_kernel(implementation) and covered:
        # The patches' largest magnitude is x's, so the GEMM's per-tensor
        # quantization (fused into its packing) is quantize_dfp(x)'s: the only one.
        return x, filters
    # Quantized once per tensor (straight-through gradients); the GEMM's own
    # per-tensor quantization of the patches is then lossless.
    xq = rounding_lib.quantize_dfp(x, fmt, rounding, seed=seed, implementation=implementation)
    wq = rounding_lib.quantize_dfp(filters, fmt, rounding, seed=_offset_seed(seed, 1),
                                   implementation=implementation)
    return xq, wq


def _check_conv_format(fmt, name):
    fmt = _check_format(fmt)
    if fmt.block_size is not None:
        raise ValueError(
            f"{name} needs one exponent per tensor (fmt.block_size=None); "
            f"got block_size={fmt.block_size}"
        )
    return fmt


def dfp_conv3d(
    x,
    filters,
    strides=1,
    padding="VALID",
    dilations=1,
    fmt=formats_lib.DFP16,
    *,
    groups=1,
    rounding="nearest_even",
    seed=None,
    backward_rounding="nearest_even",
    chunk_size=64,
    isa="auto",
    implementation="auto",
    name=None,
):
    """`tf.nn.conv3d` (NDHWC) computed by the INT16 GEMM of `dfp_matmul`.

    As `dfp_conv2d`, with volume patches `[N * D' * H' * W', kd * kh * kw *
    C]` in the order (kd, kh, kw, C).  With the C++ kernels these are
    implicit GEMMs (`tf_lowprec.gemm.dfp_conv`: patches gathered while
    packing): forward and d(filters) = patches^T @ error, and d(x) one INT16
    GEMM of the stride-dilated error's patches with the flipped filters (K =
    kd * kh * kw * O); grouped ones one implicit convolution per group on
    whole-tensor-quantized operands, as in `dfp_conv2d`.  Otherwise (more
    than 16 groups of fewer than 4 channels, `implementation="tf"`) the
    patches are extracted (3-D im2col,
    `tf_lowprec.gemm.conv_nd`), d(patches) = error @ filters^T, and the
    patch gradients are summed onto x in FP32 in the order conv_nd states.

    Args:
      x: float32 `[batch, depth, height, width, in_channels]` (static sizes
        but the batch).
      filters: float32 `[kd, kh, kw, in_channels / groups, out_channels]`.
      strides, dilations: an int or three.
      padding, fmt, groups and the other arguments: as for `dfp_conv2d`.

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 3, 3, 3, 1), np.float32); w = np.ones((2, 2, 2, 1, 1), np.float32)
    >>> lp.dfp_conv3d(x, w)[0, 0, :, :, 0].numpy()
    array([[8., 8.],
           [8., 8.]], dtype=float32)
    """
    fmt = _check_conv_format(fmt, "dfp_conv3d")
    _check_options(rounding, backward_rounding, chunk_size, isa)
    strides, padding, dilations = _conv_nd.conv_options(strides, padding, dilations, 3)
    with tf.name_scope(name or "dfp_conv3d"):
        x = _as_float32(x, "x")
        filters = _as_float32(filters, "filters")
        groups = _gemm_common.check_groups(groups)
        _conv_nd.check_operands(x, filters, 3, "dfp_conv3d", groups)
        stochastic = rounding == "stochastic" or backward_rounding == "stochastic"
        seed = rounding_lib.seed_tensor(seed, "stochastic" if stochastic else "nearest_even")
        if (groups == 1 and rounding_lib.use_kernel(implementation)
                and _dfp_conv.geometry(x, filters, strides, padding, dilations) is not None):
            # Implicit GEMMs: patches gathered while packing, no im2col / col2im.
            return _dfp_conv.conv3d(x, filters, strides, padding, dilations, fmt,
                                    rounding=rounding, seed=seed,
                                    backward_rounding=backward_rounding,
                                    chunk_size=chunk_size, isa=isa)
        if (groups > 1 and rounding_lib.use_kernel(implementation)
                and _dfp_conv.grouped_applies(x, filters, groups, strides, padding, dilations)):
            # One implicit convolution a group on whole-tensor-quantized operands.
            return _dfp_conv.grouped_convolution(
                x, filters, groups, strides, padding, dilations, fmt, rounding=rounding,
                seed=seed, backward_rounding=backward_rounding, chunk_size=chunk_size, isa=isa)
        geometry = _conv_nd.conv_geometry(x, filters, strides, padding, dilations)
        xq, wq = _conv_operands(x, filters, fmt, rounding, seed, implementation,
                                geometry.covers_image())

        def matmul(columns, weights):
            return dfp_matmul(columns, weights, fmt, seed=seed,
                              backward_rounding=backward_rounding, chunk_size=chunk_size,
                              isa=isa, implementation=implementation)

        return _conv_nd.conv_as_gemm(matmul, xq, wq, strides, padding, dilations, groups)


def dfp_conv_transpose(
    x,
    filters,
    output_shape,
    strides=1,
    padding="VALID",
    dilations=1,
    fmt=formats_lib.DFP16,
    *,
    rounding="nearest_even",
    seed=None,
    backward_rounding="nearest_even",
    chunk_size=64,
    isa="auto",
    implementation="auto",
    name=None,
):
    """`tf.nn.conv_transpose` (channels last, 1-3 spatial axes) on the INT16 GEMM.

    A transposed convolution is the input gradient of the convolution `conv`
    of its output with the filters.  With the C++ kernels (1-D as 2-D of
    height 1, 3-D on the conv3d ops) it runs as implicit GEMMs
    (`tf_lowprec.gemm.dfp_conv.conv_transpose`): the forward pass is one
    INT16 GEMM of x dilated by the strides and padded with the flipped
    filters (K = prod(k) * C: exact INT32 chunk sums, FP32 only between
    chunks), d(x) the INT16 GEMM of the error's patches with the filters
    (K = prod(k) * O: `conv` of the error) and d(filters) the INT16 GEMM
    `patches(error)^T @ x` (K = N * prod(X)).  Otherwise
    (`implementation="tf"`) the forward pass is the INT16 GEMM `x [N *
    prod(X), C] @ filters^T [C, prod(k) * O]` (K = C), whose outputs col2im
    adds onto the output in FP32 in the order `tf_lowprec.gemm.conv_nd`
    states, and the backward GEMMs take the error's patches (im2col).  The
    error is rounded to `fmt` once per tensor.

    Args:
      x: float32 `[batch, *spatial, in_channels]`, 1 to 3 spatial axes
        (static sizes but the batch).
      filters: float32 `[*k, out_channels, in_channels]` (TensorFlow's layout).
      output_shape: the output's `[batch, *spatial, out_channels]` (as
        `tf.nn.conv_transpose`; the batch entry is not read) or its spatial
        sizes alone, static ints; a convolution of it with these
        strides, padding and dilations must give x's spatial shape.
      strides, dilations: an int or one per spatial axis.
      padding: "VALID" or "SAME".
      Other arguments as for `dfp_matmul` (x uses seed, filters seed + [0, 1],
      the error seed + [0, 2]).

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 2, 1), np.float32); w = np.ones((2, 1, 1), np.float32)
    >>> lp.dfp_conv_transpose(x, w, [1, 3, 1])[0, :, 0].numpy()
    array([1., 2., 1.], dtype=float32)
    """
    fmt = _check_conv_format(fmt, "dfp_conv_transpose")
    _check_options(rounding, backward_rounding, chunk_size, isa)
    with tf.name_scope(name or "dfp_conv_transpose"):
        x = _as_float32(x, "x")
        filters = _as_float32(filters, "filters")
        strides, padding, dilations, geometry = _conv_nd.transpose_operands(
            x, filters, output_shape, strides, padding, dilations, "dfp_conv_transpose")
        stochastic = rounding == "stochastic" or backward_rounding == "stochastic"
        seed = rounding_lib.seed_tensor(seed, "stochastic" if stochastic else "nearest_even")
        if rounding_lib.use_kernel(implementation) and _dfp_conv.transpose_applies(x, geometry):
            # Implicit GEMMs: the input gradient of a convolution, no col2im.
            return _dfp_conv.conv_transpose(x, filters, geometry, fmt, rounding=rounding,
                                            seed=seed, backward_rounding=backward_rounding,
                                            chunk_size=chunk_size, isa=isa)
        quantizer, inner_rounding = None, backward_rounding
        if backward_rounding != "nearest_even" or not geometry.covers_image():
            # The GEMMs see the error's patches: where those miss some of its
            # elements (or the rounding is random), the error is rounded once,
            # here, as a whole tensor; the GEMMs' own quantization of its
            # patches is then lossless.
            def quantizer(dy):
                return rounding_lib.quantize_dfp(dy, fmt, backward_rounding,
                                                 seed=_offset_seed(seed, 2),
                                                 implementation=implementation)
            inner_rounding = "nearest_even"

        def matmul(rows, weights):
            # x and the filters enter this GEMM whole: its quantization is theirs.
            return dfp_matmul(rows, weights, fmt, rounding=rounding, seed=seed,
                              backward_rounding=inner_rounding, chunk_size=chunk_size,
                              isa=isa, implementation=implementation)

        return _conv_nd.conv_transpose_as_gemm(matmul, x, filters, geometry, quantizer)
