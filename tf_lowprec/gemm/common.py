"""Operand checks, batch broadcasting and im2col shared by the GEMM ops.

`dfp_gemm` (INT16 GEMM) and `bf16_gemm` (BF16 GEMM) both run rank-3 kernels
`[batch or 1, rows, cols]` under `tf.linalg.matmul`'s batch broadcasting, and
both compute `conv2d` as a GEMM of image patches.
"""

import tensorflow as tf


def as_float32_operand(x, name):
    """x as a float32 tensor of rank >= 2; ValueError for other dtypes or ranks.

    Arrays and tensors keep their dtype (an int array is an error, not a
    silent conversion); Python lists become float32.
    """
    x = tf.convert_to_tensor(x) if hasattr(x, "dtype") else tf.convert_to_tensor(
        x, dtype_hint=tf.float32)
    if x.dtype != tf.float32:
        raise ValueError(
            f"{name} must be float32, got {x.dtype.name}; cast it first (float16 and "
            "bfloat16 convert to float32 exactly)"
        )
    if x.shape.rank is not None and x.shape.rank < 2:
        raise ValueError(f"{name} must have rank >= 2 ([..., rows, cols]), got shape {x.shape}")
    return x


def check_inner_dims(a, b, transpose_a, transpose_b):
    ka = a.shape[-2] if transpose_a else a.shape[-1]
    kb = b.shape[-1] if transpose_b else b.shape[-2]
    if ka is not None and kb is not None and ka != kb:
        raise ValueError(
            f"inner dimensions of a {a.shape} (transpose_a={transpose_a}) and b {b.shape} "
            f"(transpose_b={transpose_b}) differ: {ka} != {kb}"
        )


def batch_shape(x):
    static = x.shape[:-2]
    if static.is_fully_defined():
        return tf.constant(static.as_list(), tf.int32)
    return tf.shape(x)[:-2]


def to_rank3(x, batch):
    """x[..., r, c] broadcast to the batch shape and flattened to [B or 1, r, c]."""
    rows_cols = tf.shape(x)[-2:]
    if x.shape.rank == 2:
        return tf.reshape(x, tf.concat([[1], rows_cols], 0))
    if x.shape[:-2].is_fully_defined() and all(d == 1 for d in x.shape[:-2]):
        return tf.reshape(x, tf.concat([[1], rows_cols], 0))
    x = tf.broadcast_to(x, tf.concat([batch, rows_cols], 0))
    return tf.reshape(x, tf.concat([[-1], rows_cols], 0))


def from_rank3(product, a, b, batch, transpose_a, transpose_b):
    """The [B, m, n] kernel output reshaped to [*batch, m, n]."""
    m = tf.shape(a)[-1] if transpose_a else tf.shape(a)[-2]
    n = tf.shape(b)[-2] if transpose_b else tf.shape(b)[-1]
    product = tf.reshape(product, tf.concat([batch, [m, n]], 0))
    if a.shape.rank is not None and b.shape.rank is not None:
        product = tf.ensure_shape(product, [None] * max(a.shape.rank, b.shape.rank))
    return product


def reduce_to_shape(grad, shape_of, batch_other):
    """Sums a broadcast gradient back to the batch shape of `shape_of`."""
    own = batch_shape(shape_of)
    if shape_of.shape.rank == 2 and grad.shape.rank == 2:
        return grad
    reduce_own, _ = tf.raw_ops.BroadcastGradientArgs(s0=own, s1=batch_other)
    grad = tf.reduce_sum(grad, axis=reduce_own)
    return tf.reshape(grad, tf.shape(shape_of))


def matmul_gradients(product, x, y, dy, transpose_a, transpose_b):
    """(dx, dy) of `product(x, y, transpose_a, transpose_b)` for an error dy.

    `product(p, q, ta, tb)` is the GEMM itself; both backward GEMMs run
    through it, and broadcast batch dimensions are summed back.
    """
    if not transpose_a and not transpose_b:  # out = x y
        dx, dw = product(dy, y, False, True), product(x, dy, True, False)
    elif transpose_a and not transpose_b:  # out = x^T y
        dx, dw = product(y, dy, False, True), product(x, dy, False, False)
    elif not transpose_a and transpose_b:  # out = x y^T
        dx, dw = product(dy, y, False, False), product(dy, x, True, False)
    else:  # out = x^T y^T
        dx, dw = product(y, dy, True, True), product(dy, x, True, True)
    batch = tf.broadcast_dynamic_shape(batch_shape(x), batch_shape(y))
    return reduce_to_shape(dx, x, batch), reduce_to_shape(dw, y, batch)


def pair(value, name):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return tuple(value)
    raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")


def conv_options(strides, padding, dilations):
    """Checked (strides pair, padding, dilations pair) of a conv2d call."""
    strides = pair(strides, "strides")
    dilations = pair(dilations, "dilations")
    if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    return strides, padding.upper(), dilations


def check_conv_operands(x, filters, name):
    if x.shape.rank != 4 or filters.shape.rank != 4:
        raise ValueError(
            f"x must be [batch, height, width, channels] and filters [kh, kw, in, out]; "
            f"got shapes {x.shape} and {filters.shape}"
        )
    if None not in (x.shape[3], filters.shape[2]) and x.shape[3] != filters.shape[2]:
        raise ValueError(f"x has {x.shape[3]} channels but filters expect {filters.shape[2]}")
    if filters.shape[0] is None or filters.shape[1] is None:
        raise ValueError(f"{name} needs the filter's height and width statically")


def _patches_by_slices(x, kh, kw, strides, padding, dilations):
    """`tf.image.extract_patches(x, ...)` as kh * kw strided slices, concatenated.

    The same values in the same order (kh, kw, C), about twice as fast as the
    ExtractImagePatches kernel on the shapes of small CNNs; needs the spatial
    dimensions statically (else None).
    """
    (sh, sw), (dh, dw) = strides, dilations
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return None

    def extent(size, k, s, d):
        span = (k - 1) * d + 1
        if padding == "VALID":
            out = max((size - span) // s + 1, 0)
            return out, 0, 0
        out = -(-size // s)
        total = max((out - 1) * s + span - size, 0)
        return out, total // 2, total - total // 2

    out_h, top, bottom = extent(height, kh, sh, dh)
    out_w, left, right = extent(width, kw, sw, dw)
    if out_h == 0 or out_w == 0:
        return None
    if top or bottom or left or right:
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    parts = [x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
             for i in range(kh) for j in range(kw)]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


def image_patches(x, kh, kw, strides, padding, dilations):
    """The patches of `tf.image.extract_patches`, with that op's gradient (col2im).

    The forward pass copies the values by strided slices (faster); the
    gradient is ExtractImagePatches' own, so the FP32 sums of the patch
    gradients onto x are those of `tf.image.extract_patches` in any case.
    """
    (sh, sw), (dh, dw) = strides, dilations
    options = dict(sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1],
                   padding=padding)
    sliced = _patches_by_slices(x, kh, kw, strides, padding, dilations)
    if sliced is None:
        return tf.image.extract_patches(x, **options)

    @tf.custom_gradient
    def patches(v):
        def grad(dpatches):
            with tf.GradientTape() as tape:
                tape.watch(v)
                # Only its op and shapes are read by the gradient: the forward
                # computation is pruned from graphs.
                reference = tf.image.extract_patches(v, **options)
            return tape.gradient(reference, v, output_gradients=dpatches)

        return sliced, grad

    return patches(x)


def conv2d_as_gemm(matmul, x, filters, strides, padding, dilations):
    """NHWC conv2d as matmul(patches [N*H'*W', kh*kw*C], filters [kh*kw*C, O]).

    The patches are those of `tf.image.extract_patches`, whose gradient sums
    the patch gradients back onto x in FP32 (col2im).
    """
    kh, kw = filters.shape[0], filters.shape[1]
    patches = image_patches(x, kh, kw, strides, padding, dilations)
    out_spatial = tf.shape(patches)[:3]
    columns = tf.reshape(patches, [-1, tf.shape(patches)[3]])
    channels_in, channels_out = tf.shape(filters)[2], tf.shape(filters)[3]
    weights = tf.reshape(filters, [kh * kw * channels_in, channels_out])
    y = matmul(columns, weights)
    return tf.reshape(y, tf.concat([out_spatial, [channels_out]], 0))
