"""BF16 GEMM with a defined FP32 summation order: the VDPBF16PS order.

`bf16_matmul` rounds both operands to BF16 (nearest even, exactly as
`round_to_format(x, BF16)`), and accumulates every output in FP32 over pairs
of K elements in the order of one lane of the AVX512_BF16 instruction
VDPBF16PS: for each pair, the odd element's product is added first, then the
even one's, each addition rounded to nearest even, BF16 subnormals taken as
zero and tiny sums flushed to zero.  Where the CPU has AVX512_BF16 the kernel
runs that instruction; elsewhere a portable kernel emulates it, and the two
are bit-identical by construction (docs/bf16_gemm.md states the arithmetic
and how it was established on real hardware).  The result does not depend on
the number of threads or the blocking.

>>> import tensorflow as tf, tf_lowprec as lp
>>> a = tf.constant([[1.0, 2.0], [3.0, 4.0]])
>>> lp.bf16_matmul(a, a).numpy()
array([[ 7., 10.],
       [15., 22.]], dtype=float32)
"""

import tensorflow as tf

from tf_lowprec.gemm import bf16_conv as _bf16_conv
from tf_lowprec.gemm import common as _gemm_common
from tf_lowprec.gemm import conv_nd as _conv_nd
from tf_lowprec.numerics import rounding as rounding_lib
from tf_lowprec.gemm import tf_bf16 as tf_bf16_gemm
from tf_lowprec._op_library import check_isa as _check_isa
from tf_lowprec._op_library import load as _load_ops


def _check_transposes(transpose_a, transpose_b):
    if not isinstance(transpose_a, bool) or not isinstance(transpose_b, bool):
        raise ValueError(
            f"transpose_a and transpose_b must be True or False, got {transpose_a!r} and "
            f"{transpose_b!r}"
        )


def _product(a, b, transpose_a, transpose_b, isa, implementation):
    """The kernel on [..., rows, cols] operands with broadcast batch dimensions."""
    if not rounding_lib.use_kernel(implementation):
        return tf_bf16_gemm.matmul(a, b, transpose_a, transpose_b)
    if a.shape.rank == 2 and b.shape.rank == 2:  # the common case, in fewer ops
        product = _load_ops().lowprec_bf16_matmul(
            a[None], b[None], transpose_a=transpose_a, transpose_b=transpose_b, isa=isa)
        return product[0]
    batch = tf.broadcast_dynamic_shape(_gemm_common.batch_shape(a),
                                       _gemm_common.batch_shape(b))
    product = _load_ops().lowprec_bf16_matmul(
        _gemm_common.to_rank3(a, batch), _gemm_common.to_rank3(b, batch),
        transpose_a=transpose_a, transpose_b=transpose_b, isa=isa,
    )
    return _gemm_common.from_rank3(product, a, b, batch, transpose_a, transpose_b)


def bf16_matmul(a, b, transpose_a=False, transpose_b=False, isa="auto",
                implementation="auto", name=None):
    """`tf.linalg.matmul(a, b)` with BF16 operands and the VDPBF16PS summation order.

    Both operands are rounded to BF16 with round-to-nearest-even (NaN stays
    NaN); for each output element, with K padded to even length by zeros:

        acc = +0
        for p in range(K // 2):
            acc = step(acc, a[2p+1], b[2p+1])
            acc = step(acc, a[2p], b[2p])

    where `step` is one FP32 multiply-add with a single rounding to nearest
    even, BF16 subnormal operands count as zero (DAZ) and results below
    2^-126 are flushed to zero with their sign (FTZ); docs/bf16_gemm.md has
    the details (NaN propagation, the exact tininess rule).

    The gradient runs both backward GEMMs through this same op: for
    `out = a @ b`, `da = bf16_matmul(dout, b^T)` and `db = bf16_matmul(a^T,
    dout)`, so the error is rounded to BF16 too; the rounding of the operands
    themselves is straight-through.

    Args:
      a, b: float32 tensors `[..., m, k]` and `[..., k, n]` (before the
        transposes); batch dimensions broadcast as in `tf.linalg.matmul`.
      transpose_a, transpose_b: as in `tf.linalg.matmul`.
      isa: "auto" (the fastest tier the CPU runs: VDPBF16PS where the CPU has
        AVX512_BF16, else the AVX2 emulation, else the portable one),
        "portable" (scalar emulation, any CPU), "avx2" (AVX2+FMA emulation) or
        "avx512" (the instruction); a tier the CPU lacks is an error.  All
        give the same bits.
      implementation: "auto" (the C++ kernel on CPU; where it cannot run —
        a visible GPU, XLA — the stock-TF twin `tf_bf16_gemm`), "op" or "tf"
        (the twin: the same bits, without the op library, but a loop of K
        steps: for export and XLA, not for speed).
      name: name scope.

    Returns:
      float32 `[..., m, n]`.

    >>> import numpy as np, tensorflow as tf, tf_lowprec as lp
    >>> x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> lp.bf16_matmul(x, x, transpose_b=True).numpy()
    array([[ 5., 14.],
           [14., 50.]], dtype=float32)
    >>> lp.bf16_matmul([[1.0 + 2**-9]], [[1.0]]).numpy()  # 1 + 2^-9 rounds to 1 in BF16
    array([[1.]], dtype=float32)
    """
    _check_isa(isa)
    rounding_lib.check_implementation(implementation)
    _check_transposes(transpose_a, transpose_b)
    with tf.name_scope(name or "bf16_matmul"):
        a = _gemm_common.as_float32_operand(a, "a")
        b = _gemm_common.as_float32_operand(b, "b")
        _gemm_common.check_inner_dims(a, b, transpose_a, transpose_b)

        def product(x, y, ta, tb):
            return _product(x, y, ta, tb, isa, implementation)

        @tf.custom_gradient
        def matmul(x, y):
            def grad(dy):
                return _gemm_common.matmul_gradients(product, x, y, dy, transpose_a,
                                                     transpose_b)

            return product(x, y, transpose_a, transpose_b), grad

        return matmul(a, b)


def bf16_conv2d(x, filters, strides=1, padding="VALID", dilations=1, isa="auto",
                implementation="auto", name=None, *, groups=1):
    """`tf.nn.conv2d` (NHWC) computed by `bf16_matmul`'s GEMM on image patches.

    The patches of x `[N * H' * W', kh * kw * C]` are multiplied by the
    filters reshaped to `[kh * kw * C, O]` in `bf16_matmul`'s arithmetic (so
    both are rounded to BF16 and summed in the VDPBF16PS order along kh * kw
    * C, in the order (kh, kw, C)), and d(filters) = patches^T @ error
    likewise.  With one group and static height and width these are implicit
    GEMMs (`tf_lowprec.gemm.bf16_conv`: the C++ GEMM gathers the patches while
    packing; the stock-TF twin writes them out), and d(x) is one GEMM of the
    stride-dilated, padded error's patches with the flipped, transposed
    filters (summed in the VDPBF16PS order along kh * kw * O).  Otherwise
    (groups, dynamic sizes) the patches are extracted (im2col) for
    `bf16_matmul`, d(patches) = error @ filters^T, and the patch gradients
    are summed back onto x in FP32 (col2im).

    Args:
      x: float32 `[batch, height, width, in_channels]`.
      filters: float32 `[kh, kw, in_channels, out_channels]` (kh, kw static).
      strides, dilations: an int or a pair (height, width).
      padding: "VALID" or "SAME".
      isa, implementation: as for `bf16_matmul`.
      groups: grouped convolution: channels split into `groups` groups,
        filters `[kh, kw, in_channels / groups, out_channels]`; one batched
        `bf16_matmul` over the groups, each output summed over its group's
        patch columns in the order (kh, kw, c).

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 3, 3, 1), np.float32); w = np.ones((2, 2, 1, 1), np.float32)
    >>> lp.bf16_conv2d(x, w)[0, :, :, 0].numpy()
    array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    _check_isa(isa)
    rounding_lib.check_implementation(implementation)
    strides, padding, dilations = _gemm_common.conv_options(strides, padding, dilations)
    with tf.name_scope(name or "bf16_conv2d"):
        x = _gemm_common.as_float32_operand(x, "x")
        filters = _gemm_common.as_float32_operand(filters, "filters")
        groups = _gemm_common.check_groups(groups)
        _gemm_common.check_conv_operands(x, filters, "bf16_conv2d", groups)

        if groups == 1 and _bf16_conv.geometry(x, filters, strides, padding,
                                               dilations) is not None:
            # Implicit GEMMs: patches gathered while packing, no im2col / col2im.
            return _bf16_conv.conv2d(x, filters, strides, padding, dilations, isa,
                                     implementation)

        def matmul(columns, weights):
            return bf16_matmul(columns, weights, isa=isa, implementation=implementation)

        return _gemm_common.conv2d_as_gemm(matmul, x, filters, strides, padding, dilations,
                                            groups)


def bf16_conv3d(x, filters, strides=1, padding="VALID", dilations=1, isa="auto",
                implementation="auto", name=None, *, groups=1):
    """`tf.nn.conv3d` (NDHWC) computed by `bf16_matmul` on volume patches (3-D im2col).

    As `bf16_conv2d`: patches `[N * D' * H' * W', kd * kh * kw * C]`, summed
    in the VDPBF16PS order along (kd, kh, kw, C), and d(filters) =
    patches^T @ error.  With one group these are implicit GEMMs
    (`tf_lowprec.gemm.bf16_conv`), and d(x) is one GEMM of the stride-dilated,
    padded error's patches with the flipped, transposed filters (summed in
    the VDPBF16PS order along kd * kh * kw * O).  With groups, d(patches) =
    error @ filters^T, summed onto x in FP32 in the order
    `tf_lowprec.gemm.conv_nd` states (col2im).

    Args:
      x: float32 `[batch, depth, height, width, in_channels]` (static sizes
        but the batch).
      filters: float32 `[kd, kh, kw, in_channels / groups, out_channels]`.
      strides, dilations: an int or three.
      padding, isa, implementation, groups: as for `bf16_conv2d`.

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 3, 3, 3, 1), np.float32); w = np.ones((2, 2, 2, 1, 1), np.float32)
    >>> lp.bf16_conv3d(x, w)[0, 0, :, :, 0].numpy()
    array([[8., 8.],
           [8., 8.]], dtype=float32)
    """
    _check_isa(isa)
    rounding_lib.check_implementation(implementation)
    strides, padding, dilations = _conv_nd.conv_options(strides, padding, dilations, 3)
    with tf.name_scope(name or "bf16_conv3d"):
        x = _gemm_common.as_float32_operand(x, "x")
        filters = _gemm_common.as_float32_operand(filters, "filters")
        groups = _gemm_common.check_groups(groups)
        _conv_nd.check_operands(x, filters, 3, "bf16_conv3d", groups)

        if groups == 1 and _bf16_conv.geometry(x, filters, strides, padding,
                                               dilations) is not None:
            # Implicit GEMMs (d(x) on the dilated error's patches), no im2col / col2im.
            return _bf16_conv.conv3d(x, filters, strides, padding, dilations, isa,
                                     implementation)

        def matmul(columns, weights):
            return bf16_matmul(columns, weights, isa=isa, implementation=implementation)

        return _conv_nd.conv_as_gemm(matmul, x, filters, strides, padding, dilations, groups)


def bf16_conv_transpose(x, filters, output_shape, strides=1, padding="VALID", dilations=1,
                        isa="auto", implementation="auto", name=None):
    """`tf.nn.conv_transpose` (channels last, 1-3 spatial axes) on `bf16_matmul`.

    The transposed convolution is the input gradient of the convolution
    `conv(z [N, *output spatial, O], filters)`, and runs as its implicit
    GEMMs (`tf_lowprec.gemm.bf16_conv.conv_transpose`, no im2col or col2im):
    y = one GEMM of x, dilated by the strides and padded, with the filters
    reversed in every spatial axis (summed in the VDPBF16PS order along
    prod(k) * C, in the order (*k, C)); d(x) = conv(error) (summed along
    prod(k) * O) and d(filters) = patches(error)^T @ x (summed along
    N * prod(X)), so the error is rounded to BF16 too.  The stock-TF twin
    (`implementation="tf"`) gives the same bits.

    Args:
      x: float32 `[batch, *spatial, in_channels]`, 1 to 3 spatial axes
        (static sizes but the batch).
      filters: float32 `[*k, out_channels, in_channels]` (TensorFlow's layout).
      output_shape: as for `dfp_conv_transpose`.
      strides, dilations: an int or one per spatial axis.
      padding: "VALID" or "SAME".
      isa, implementation: as for `bf16_matmul`.

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 2, 1), np.float32); w = np.ones((2, 1, 1), np.float32)
    >>> lp.bf16_conv_transpose(x, w, [1, 3, 1])[0, :, 0].numpy()
    array([1., 2., 1.], dtype=float32)
    """
    _check_isa(isa)
    rounding_lib.check_implementation(implementation)
    with tf.name_scope(name or "bf16_conv_transpose"):
        x = _gemm_common.as_float32_operand(x, "x")
        filters = _gemm_common.as_float32_operand(filters, "filters")
        strides, padding, dilations, geometry = _conv_nd.transpose_operands(
            x, filters, output_shape, strides, padding, dilations, "bf16_conv_transpose")
        if _bf16_conv.transpose_applies(x, geometry):
            # Implicit GEMMs: the input gradient of a convolution, no col2im.
            return _bf16_conv.conv_transpose(x, filters, geometry, isa, implementation)

        def matmul(rows, weights):
            return bf16_matmul(rows, weights, isa=isa, implementation=implementation)

        return _conv_nd.conv_transpose_as_gemm(matmul, x, filters, geometry)
