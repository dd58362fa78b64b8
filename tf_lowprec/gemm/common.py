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


def check_groups(groups):
    """groups as an int >= 1; ValueError otherwise."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return groups


def check_conv_operands(x, filters, name, groups=1):
    """Checks NHWC x against [kh, kw, in / groups, out] filters (static kh, kw)."""
    if x.shape.rank != 4 or filters.shape.rank != 4:
        raise ValueError(
            f"x must be [batch, height, width, channels] and filters [kh, kw, in, out]; "
            f"got shapes {x.shape} and {filters.shape}"
        )
    if None not in (x.shape[3], filters.shape[2]) and x.shape[3] != filters.shape[2] * groups:
        raise ValueError(
            f"x has {x.shape[3]} channels but filters expect {filters.shape[2]} per group "
            f"and groups={groups}"
        )
    if filters.shape[3] is not None and filters.shape[3] % groups:
        raise ValueError(
            f"filters have {filters.shape[3]} output channels, not a multiple of groups={groups}")
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


def patches_cover_input(x, kh, kw, strides, padding, dilations):
    """Whether every element of NHWC `x` lies in some patch of the convolution.

    False where a stride or dilation skips rows or columns (or VALID padding
    drops the last ones), and where the spatial sizes are not static.  Where
    True, the patches and x have the same largest magnitude.

    >>> import tensorflow as tf
    >>> x = tf.zeros([1, 5, 5, 1])
    >>> patches_cover_input(x, 3, 3, (1, 1), "VALID", (1, 1))
    True
    >>> patches_cover_input(x, 1, 1, (2, 2), "VALID", (1, 1))
    False
    """
    def covered(size, k, s, d):
        span = (k - 1) * d + 1
        if padding == "VALID":
            out, before = max((size - span) // s + 1, 0), 0
        else:
            out = -(-size // s)
            before = max((out - 1) * s + span - size, 0) // 2
        seen = {i * s + j * d - before for i in range(out) for j in range(k)}
        return all(p in seen for p in range(size))

    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return False
    return (covered(height, kh, strides[0], dilations[0])
            and covered(width, kw, strides[1], dilations[1]))


def _col2im_by_slices(dpatches, x, kh, kw, strides, padding, dilations):
    """ExtractImagePatches' gradient (col2im) for stride 1, without its transposes; else None.

    That gradient sums, for each input element, the patch gradients in the
    order of the flattened patches (h', w', i, j): ascending h' and w' is
    descending kernel offsets i, then j.  Here each offset's [N, H', W', C]
    slice is padded into place and added to a running FP32 sum in that same
    order, starting from zeros as the segment sum does: the same additions in
    the same order, so the same bits (tests/test_gemm_common.py), with no
    [H', W', kh, kw, N, C] transpose, index tensor or segment sum.
    """
    if tuple(strides) != (1, 1):
        return None
    (dh, dw), (height, width), channels = dilations, x.shape[1:3], x.shape[3]
    if height is None or width is None or channels is None:
        return None
    out_h, out_w = dpatches.shape[1], dpatches.shape[2]
    if out_h is None or out_w is None or out_h == 0 or out_w == 0:
        return None
    top = left = 0
    padded_h, padded_w = out_h + (kh - 1) * dh, out_w + (kw - 1) * dw
    if padding == "SAME":
        top, left = (padded_h - height) // 2, (padded_w - width) // 2
    total = tf.zeros(tf.stack([tf.shape(dpatches)[0], padded_h, padded_w, channels]),
                     dpatches.dtype)
    for i in reversed(range(kh)):
        for j in reversed(range(kw)):
            part = dpatches[..., (i * kw + j) * channels:(i * kw + j + 1) * channels]
            total = total + tf.pad(part, [[0, 0], [i * dh, padded_h - out_h - i * dh],
                                          [j * dw, padded_w - out_w - j * dw], [0, 0]])
    return total[:, top:top + height, left:left + width, :]


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
            summed = _col2im_by_slices(dpatches, v, kh, kw, strides, padding, dilations)
            if summed is not None:
                return summed
            with tf.GradientTape() as tape:
                tape.watch(v)
                # Only its op and shapes are read by the gradient: the forward
                # computation is pruned from graphs.
                reference = tf.image.extract_patches(v, **options)
            return tape.gradient(reference, v, output_gradients=dpatches)

        return sliced, grad

    return patches(x)


# Below this many output channels per group, grouped convolutions multiply the transposed way.
_FEW_OUTPUTS_PER_GROUP = 8


def conv2d_as_gemm(matmul, x, filters, strides, padding, dilations, groups=1):
    """NHWC conv2d as matmul(patches [N*H'*W', kh*kw*C], filters [kh*kw*C, O]).

    The patches are those of `tf.image.extract_patches`, whose gradient sums
    the patch gradients back onto x in FP32 (col2im).  With `groups` > 1 (C
    and O split into that many groups, filters [kh, kw, C / groups, O]) it
    is one batched GEMM [groups, N*H'*W', kh*kw*C/groups] @ [groups,
    kh*kw*C/groups, O/groups]: each output sums over its group's patch
    columns in the order (kh, kw, c), as a convolution of that group alone.
    """
    kh, kw = filters.shape[0], filters.shape[1]
    patches = image_patches(x, kh, kw, strides, padding, dilations)
    return patches_gemm(matmul, patches, filters, kh * kw, groups)


def patches_gemm(matmul, patches, filters, kprod, groups=1):
    """The convolution's GEMM on `patches` [N, *out, kprod * C] and filters [*k, C / g, O].

    Returns [N, *out, O].  With `groups` > 1 one batched GEMM over the
    groups; each output sums its group's patch columns in the order
    (kernel offset, c).
    """
    out_spatial = tf.shape(patches)[:-1]
    channels_in, channels_out = tf.shape(filters)[-2], tf.shape(filters)[-1]
    if groups == 1:
        columns = tf.reshape(patches, [-1, tf.shape(patches)[-1]])
        weights = tf.reshape(filters, [kprod * channels_in, channels_out])
        y = matmul(columns, weights)
        return tf.reshape(y, tf.concat([out_spatial, [channels_out]], 0))
    columns = tf.reshape(patches, [-1, kprod, groups, channels_in])
    per_group = filters.shape[-1] // groups if filters.shape[-1] is not None else None
    weights = tf.reshape(filters, [kprod * channels_in, groups, channels_out // groups])
    if per_group is not None and per_group < _FEW_OUTPUTS_PER_GROUP:
        # Few outputs per group (depthwise: the multiplier): the transposed product
        # [groups, o, K] @ [groups, K, N*H'*W'], whose long rows suit the kernels better.
        # Each output sums the same products in the same K order: the same bits.
        columns = tf.reshape(tf.transpose(columns, [2, 1, 3, 0]),
                             [groups, kprod * channels_in, -1])
        y = matmul(tf.transpose(weights, [1, 2, 0]), columns)  # [groups, o, N*H'*W']
        y = tf.reshape(tf.transpose(y, [2, 0, 1]), [-1, channels_out])
        return tf.reshape(y, tf.concat([out_spatial, [channels_out]], 0))
    # patches (.., kprod, groups, c) -> [groups, N*H'*W', kprod*c]
    columns = tf.reshape(tf.transpose(columns, [2, 0, 1, 3]),
                         [groups, -1, kprod * channels_in])
    # filters (kprod*c, groups, o) -> [groups, kprod*c, o]
    weights = tf.transpose(weights, [1, 0, 2])
    y = matmul(columns, weights)  # [groups, N*H'*W', o]
    y = tf.reshape(tf.transpose(y, [1, 0, 2]), [-1, channels_out])
    return tf.reshape(y, tf.concat([out_spatial, [channels_out]], 0))


# Einsum and tensordot as (batched) GEMMs ---------------------------------------------------

_EINSUM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_einsum(equation, ranks):
    """The operands' and the output's subscripts of `equation`, "..." written out as letters.

    `ranks`: the operands' ranks (an ellipsis needs them).  An implicit output
    (no "->") is the ellipsis dimensions followed by the letters that occur
    once, sorted, as in NumPy.  Returns `(inputs, output)`: a list of strings
    and a string.  Raises ValueError for a malformed equation.

    >>> parse_einsum("...ij,jk", [3, 2])
    (['Zij', 'jk'], 'Zik')
    """
    if not isinstance(equation, str):
        raise ValueError(f"the einsum equation must be a string, got {equation!r}")
    compact = equation.replace(" ", "")
    lhs, arrow, rhs = compact.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ranks):
        raise ValueError(f"einsum equation {equation!r} names {len(inputs)} operands; got "
                         f"{len(ranks)}")
    for term in inputs + ([rhs] if arrow else []):
        rest = term.replace("...", "", 1)
        if any(c not in _EINSUM_LETTERS for c in rest):
            raise ValueError(f"einsum equation {equation!r}: subscripts must be letters and "
                             "at most one '...' per term")
    counts = []
    for term, rank in zip(inputs, ranks):
        if "..." in term:
            if rank is None:
                raise ValueError(f"einsum equation {equation!r} needs the operands' ranks")
            counts.append(rank - (len(term) - 3))
            if counts[-1] < 0:
                raise ValueError(f"einsum term {term!r} has more subscripts than rank {rank}")
    used = set(compact)
    spare = [c for c in reversed(_EINSUM_LETTERS) if c not in used]
    ellipsis = spare[:max(counts, default=0)][::-1]  # right-aligned, as NumPy broadcasts

    def expand(term, count):
        return term.replace("...", "".join(ellipsis[len(ellipsis) - count:]))

    counts_iter = iter(counts)
    inputs = [expand(t, next(counts_iter)) if "..." in t else t for t in inputs]
    if arrow:
        output = expand(rhs, len(ellipsis))
    else:
        letters = "".join(inputs)
        output = "".join(ellipsis) + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ellipsis))
    return inputs, output


def _dims(x):
    """x's dimensions: static ints where known, else scalar tensors."""
    dynamic = None
    dims = []
    for index, size in enumerate(x.shape):
        if size is None:
            dynamic = tf.shape(x) if dynamic is None else dynamic
            size = dynamic[index]
        dims.append(size)
    return dims


def _product_of(dims):
    total = 1
    for size in dims:
        total = total * size
    return total


def einsum_pair_as_matmul(matmul, a_subscripts, b_subscripts, out_subscripts, a, b,
                          batched=True):
    """`tf.einsum` of two operands as one GEMM `matmul([.., M, K], [.., K, N])`, or None.

    The letters in both operands and the output are batch dimensions, those
    in both operands only are the reduction (K, in the order of a's
    subscripts), the others are a's rows (M) and b's columns (N): transposes
    and reshapes around one call of `matmul`, which therefore sums every
    output over the same K elements as the einsum.  None where the equation
    is not such a product: a letter repeated within a term (a diagonal), a
    letter summed within one operand only, batch dimensions that broadcast,
    or batch dimensions with `batched=False`.
    """
    terms = (a_subscripts, b_subscripts, out_subscripts)
    if any(len(set(term)) != len(term) for term in terms):
        return None
    if any(c not in a_subscripts + b_subscripts for c in out_subscripts):
        return None
    if a.shape.rank != len(a_subscripts) or b.shape.rank != len(b_subscripts):
        return None
    batch = [c for c in out_subscripts if c in a_subscripts and c in b_subscripts]
    reduced = [c for c in a_subscripts if c in b_subscripts and c not in out_subscripts]
    rows = [c for c in a_subscripts if c not in b_subscripts]
    columns = [c for c in b_subscripts if c not in a_subscripts]
    if any(c not in out_subscripts for c in rows + columns):
        return None  # summed within one operand: not a GEMM
    if batch and not batched:
        return None
    for c in batch + reduced:
        size_a, size_b = a.shape[a_subscripts.index(c)], b.shape[b_subscripts.index(c)]
        if size_a is not None and size_b is not None and size_a != size_b:
            return None  # broadcast along c
    dims_a, dims_b = _dims(a), _dims(b)
    size = {c: dims_a[a_subscripts.index(c)] for c in a_subscripts}
    size.update({c: dims_b[b_subscripts.index(c)] for c in columns})

    def arranged(x, subscripts, order, shape):
        permutation = [subscripts.index(c) for c in order]
        if permutation != list(range(len(permutation))):
            x = tf.transpose(x, permutation)
        return tf.reshape(x, shape)

    batch_dims = [size[c] for c in batch]
    m, k, n = (_product_of([size[c] for c in group]) for group in (rows, reduced, columns))
    a3 = arranged(a, a_subscripts, batch + rows + reduced, batch_dims + [m, k])
    b3 = arranged(b, b_subscripts, batch + reduced + columns, batch_dims + [k, n])
    y = matmul(a3, b3)
    order = batch + rows + columns
    y = tf.reshape(y, [size[c] for c in order])
    permutation = [order.index(c) for c in out_subscripts]
    if permutation != list(range(len(permutation))):
        y = tf.transpose(y, permutation)
    static = {c: a.shape[a_subscripts.index(c)] for c in a_subscripts}
    static.update({c: b.shape[b_subscripts.index(c)] for c in b_subscripts
                   if static.get(c) is None})
    y.set_shape([static[c] for c in out_subscripts])
    return y


def tensordot_subscripts(rank_a, rank_b, axes):
    """The einsum subscripts `(a, b, output)` of `tf.tensordot(a, b, axes)`.

    `axes`: an int n (a's last n axes against b's first n) or a pair of axis
    lists (negative axes count from the end).

    >>> tensordot_subscripts(3, 2, [[-1], [0]])
    ('abc', 'ce', 'abe')
    """
    if isinstance(axes, int) and not isinstance(axes, bool):
        if not 0 <= axes <= min(rank_a, rank_b):
            raise ValueError(f"axes must be in 0..{min(rank_a, rank_b)}, got {axes}")
        axes_a, axes_b = list(range(rank_a - axes, rank_a)), list(range(axes))
    else:
        try:
            axes_a, axes_b = ([axis] if isinstance(axis, int) else list(axis) for axis in axes)
        except (TypeError, ValueError) as error:
            raise ValueError(f"axes must be an int or a pair of axis lists, got {axes!r}") from error
        if len(axes_a) != len(axes_b):
            raise ValueError(f"axes must pair as many axes of a as of b, got {axes!r}")
        axes_a = [axis % rank_a for axis in axes_a]
        axes_b = [axis % rank_b for axis in axes_b]
    letters = iter(_EINSUM_LETTERS)
    a = [next(letters) for _ in range(rank_a)]
    b = [next(letters) for _ in range(rank_b)]
    for axis_a, axis_b in zip(axes_a, axes_b):
        b[axis_b] = a[axis_a]
    output = [c for i, c in enumerate(a) if i not in axes_a] + [
        c for i, c in enumerate(b) if i not in axes_b]
    return "".join(a), "".join(b), "".join(output)


def matmul_any_rank(matmul, x1, x2):
    """`numpy.matmul(x1, x2)` with a [.., m, k] @ [.., k, n] `matmul` (1-D operands included).

    A 1-D x1 is a row [1, k] and a 1-D x2 a column [k, 1], whose added
    dimension is removed from the result, as NumPy does.
    """
    squeeze = []
    if x1.shape.rank == 1:
        x1 = x1[None, :]
        squeeze.append(-2)
    if x2.shape.rank == 1:
        x2 = x2[:, None]
        squeeze.append(-1)
    y = matmul(x1, x2)
    return tf.squeeze(y, squeeze) if squeeze else y
