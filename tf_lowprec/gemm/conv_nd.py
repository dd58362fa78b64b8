"""Convolutions of any spatial rank and transposed convolutions as GEMMs of patches.

The accumulators' GEMM ops (`dfp_matmul`, `bf16_matmul`, `lp.matmul`) run
channels-last convolutions of 1, 2 or 3 spatial dimensions and transposed
convolutions through two exact data movements and one GEMM:

- `patches` (im2col): the window of every output position, `[N, *out,
  prod(k) * C]` in the order (kernel offsets, lexicographic; channel), the
  order of `tf.image.extract_patches` and `tf.nn.conv2d`'s filters.  A gather:
  no arithmetic.
- `col2im`: its adjoint, a scatter-add of `[N, *out, prod(k) * C]` back onto
  the image.  The only FP32 additions outside the GEMMs, in one stated
  order: each image element is `+0` plus its contributions, one addition
  each, in *descending* lexicographic kernel offset — which, for a fixed
  element, is ascending output position, the order in which
  ExtractImagePatches' gradient (a segment sum over the flattened patches)
  adds them.  So a 2-D col2im here has the bits of that gradient, and
  `tests/test_conv_nd.py` writes the order out in NumPy.

A convolution is `patches(x) @ filters` (its input gradient: the GEMM
`error @ filters^T`, then col2im); a transposed convolution is `col2im(x @
filters^T)` (its input gradient: the GEMM `patches(error) @ filters`, a
convolution of the error; its filter gradient: `x^T @ patches(error)`).
Each of the three passes therefore sums every product in one GEMM, on the
accumulator's kernel; only col2im adds GEMM outputs in FP32.
"""

import itertools

import tensorflow as tf

from tf_lowprec.gemm import common as _gemm_common


def spatial_tuple(value, rank, name):
    """A positive int or `rank` positive ints as a tuple of `rank`; ValueError otherwise."""
    def positive(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if positive(value):
        return (value,) * rank
    if isinstance(value, (tuple, list)) and len(value) == rank and all(map(positive, value)):
        return tuple(value)
    raise ValueError(f"{name} must be a positive int or {rank} positive ints, got {value!r}")


def conv_options(strides, padding, dilations, rank):
    """Checked (strides, padding, dilations) of a convolution with `rank` spatial axes."""
    strides = spatial_tuple(strides, rank, "strides")
    dilations = spatial_tuple(dilations, rank, "dilations")
    if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    return strides, padding.upper(), dilations


def output_size(size, k, s, d, padding):
    """Windows along one axis of `size` elements: tf.nn.convolution's rule."""
    span = (k - 1) * d + 1
    if padding == "VALID":
        return max((size - span) // s + 1, 0)
    return -(-size // s)


def _padding(size, out, k, s, d, padding):
    """(before, after): zeros around one axis of `size` so that `out` windows fit.

    SAME puts the smaller half before, as TensorFlow does; the image may also
    be longer than the windows reach (VALID, or a transposed convolution's
    output padding): `after` is then 0 and the tail is in no window.
    """
    span = (k - 1) * d + 1
    needed = (out - 1) * s + span - size
    before = max(needed, 0) // 2 if padding == "SAME" else 0
    return before, max(needed - before, 0)


class Geometry:
    """The windows of a convolution over an image `[N, *spatial, channels]` (all static)."""

    def __init__(self, spatial, channels, ksize, strides, padding, dilations, out=None):
        self.spatial, self.channels = tuple(spatial), channels
        self.ksize, self.strides, self.dilations = tuple(ksize), strides, dilations
        if out is None:
            out = [output_size(n, k, s, d, padding)
                   for n, k, s, d in zip(spatial, ksize, strides, dilations)]
        self.out = tuple(out)
        self.pads = [_padding(n, o, k, s, d, padding)
                     for n, o, k, s, d in zip(spatial, self.out, ksize, strides, dilations)]
        self.offsets = list(itertools.product(*(range(k) for k in self.ksize)))

    def window_slices(self, offset):
        """Index of the [N, *out, C] slice of the padded image read by kernel `offset`."""
        return (slice(None),) + tuple(
            slice(i * d, i * d + (o - 1) * s + 1, s)
            for i, o, s, d in zip(offset, self.out, self.strides, self.dilations)
        ) + (slice(None),)

    def covers_image(self):
        """Whether every image element lies in some window (then the patches hold all of it)."""
        for n, o, k, s, d, (before, _) in zip(self.spatial, self.out, self.ksize, self.strides,
                                              self.dilations, self.pads):
            seen = {p * s + i * d - before for p in range(o) for i in range(k)}
            if any(q not in seen for q in range(n)):
                return False
        return True


def _gather(image, geometry):
    padded = image
    if any(before or after for before, after in geometry.pads):
        padded = tf.pad(image, [[0, 0]] + [list(p) for p in geometry.pads] + [[0, 0]])
    parts = [padded[geometry.window_slices(offset)] for offset in geometry.offsets]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


def _scatter_add(cols, geometry):
    channels = geometry.channels
    frame = [before + n + after for n, (before, after) in zip(geometry.spatial, geometry.pads)]
    shape = tf.concat([tf.shape(cols)[:1], frame, [channels]], 0)
    total = tf.zeros(shape, cols.dtype)
    # Descending offsets: each element's contributions in ascending output position.
    for index in reversed(range(len(geometry.offsets))):
        offset = geometry.offsets[index]
        part = cols[..., index * channels:(index + 1) * channels]
        begin = [0] + [i * d for i, d in zip(offset, geometry.dilations)] + [0]
        end = [b + (o - 1) * s + 1 for b, o, s in zip(begin[1:], geometry.out,
                                                        geometry.strides)]
        placed = tf.raw_ops.StridedSliceGrad(
            shape=shape, begin=tf.constant(begin), end=tf.concat([shape[:1], end, [channels]], 0),
            strides=tf.constant([1, *geometry.strides, 1]), dy=part)
        total = total + placed
    crop = (slice(None),) + tuple(slice(before, before + n) for n, (before, _) in
                                  zip(geometry.spatial, geometry.pads)) + (slice(None),)
    return total[crop]


def patches(image, geometry):
    """im2col: `[N, *out, prod(k) * C]`; its gradient is `col2im` (and col2im's is this)."""
    @tf.custom_gradient
    def gather(v):
        def grad(dcols):
            return col2im(dcols, geometry)

        return _gather(v, geometry), grad

    return gather(image)


def col2im(cols, geometry):
    """The scatter-add of `[N, *out, prod(k) * C]` onto `[N, *spatial, C]` (module docstring)."""
    @tf.custom_gradient
    def scatter(c):
        def grad(dimage):
            return patches(dimage, geometry)

        return _scatter_add(c, geometry), grad

    return scatter(cols)


def check_operands(x, filters, rank, name, groups=1, transposed=False):
    """Checks channels-last x `[N, *spatial, C]` against filters with static spatial sizes.

    Filters are `[*k, C / groups, O]`, or `[*k, O, C]` for a transposed convolution.
    """
    if x.shape.rank != rank + 2 or filters.shape.rank != rank + 2:
        raise ValueError(
            f"{name}: x must be [batch, {rank} spatial, channels] and filters "
            f"[{rank} kernel sizes, in, out]; got shapes {x.shape} and {filters.shape}")
    if None in filters.shape[:rank] or None in x.shape[1:]:
        raise ValueError(f"{name} needs the filter's and x's spatial sizes and channels "
                         f"statically; got {filters.shape} and {x.shape}")
    channels = filters.shape[-1] if transposed else filters.shape[-2] * groups
    if x.shape[-1] != channels:
        raise ValueError(f"{name}: x has {x.shape[-1]} channels but the filters expect "
                         f"{channels}" + ("" if transposed else f" (groups={groups})"))
    if not transposed and filters.shape[-1] is not None and filters.shape[-1] % groups:
        raise ValueError(f"filters have {filters.shape[-1]} output channels, not a multiple "
                         f"of groups={groups}")


def conv_geometry(x, filters, strides, padding, dilations):
    """The `Geometry` of a convolution of channels-last x with filters `[*k, C/g, O]`."""
    rank = x.shape.rank - 2
    return Geometry(x.shape[1:-1], x.shape[-1], filters.shape[:rank], strides, padding,
                    dilations)


def conv_as_gemm(matmul, x, filters, strides, padding, dilations, groups=1):
    """Channels-last convolution as `matmul(patches, filters)` (the layout of conv2d_as_gemm).

    `x` [N, *spatial, C], `filters` [*k, C / groups, O]; `matmul(a, b)` is the
    accumulator's GEMM, whose gradient gives the patches' gradient, which
    `col2im` sums onto x.
    """
    geometry = conv_geometry(x, filters, strides, padding, dilations)
    columns = patches(x, geometry)
    return _gemm_common.patches_gemm(matmul, columns, filters, len(geometry.offsets), groups)


def transpose_rank(x, filters):
    """The spatial rank (1 to 3) of a transposed convolution of x; ValueError otherwise."""
    rank = x.shape.rank
    if rank is None or not 3 <= rank <= 5 or filters.shape.rank != rank:
        raise ValueError(
            "x must be [batch, 1 to 3 spatial axes, channels] and filters "
            f"[kernel sizes, out, in] of the same rank; got shapes {x.shape} and {filters.shape}")
    return rank - 2


def output_spatial(output_shape, rank, filters):
    """The spatial sizes of `output_shape` ([batch, *spatial, channels] or [*spatial])."""
    try:
        shape = [None if v is None else int(v) for v in output_shape]
    except (TypeError, ValueError) as error:
        raise ValueError(f"output_shape must be static ints, got {output_shape!r}") from error
    if len(shape) == rank + 2:
        if shape[-1] is not None and shape[-1] != filters.shape[-2]:
            raise ValueError(f"output_shape has {shape[-1]} channels but the filters give "
                             f"{filters.shape[-2]}")
        shape = shape[1:-1]
    if len(shape) != rank or any(v is None or v < 1 for v in shape):
        raise ValueError(f"output_shape must give {rank} positive spatial sizes (or "
                         f"[batch, *spatial, channels]), got {output_shape!r}")
    return tuple(shape)


def transpose_geometry(x, filters, output_spatial, strides, padding, dilations):
    """The `Geometry` of the convolution whose input gradient is the transposed convolution.

    Its image is the transposed convolution's output `[N, *output_spatial, O]`
    (filters `[*k, O, C]`) and its windows are x's positions; ValueError where
    that convolution would not have x's spatial shape.
    """
    rank = x.shape.rank - 2
    geometry = Geometry(output_spatial, filters.shape[-2], filters.shape[:rank], strides,
                        padding, dilations, out=x.shape[1:-1])
    want = tuple(output_size(n, k, s, d, padding) for n, k, s, d in
                 zip(output_spatial, geometry.ksize, strides, dilations))
    if want != tuple(x.shape[1:-1]):
        raise ValueError(
            f"output shape {tuple(output_spatial)} does not fit x's spatial shape "
            f"{tuple(x.shape[1:-1])}: a {padding} convolution of it would give {want}")
    return geometry


def transpose_operands(x, filters, output_shape, strides, padding, dilations, op_name):
    """Checks a transposed convolution's arguments: (strides, padding, dilations, geometry).

    `x` [N, *X, C] and `filters` [*k, O, C] are float32 tensors; ValueError
    (naming `op_name`) on a bad rank, option, channel count or output shape.
    """
    rank = transpose_rank(x, filters)
    strides, padding, dilations = conv_options(strides, padding, dilations, rank)
    check_operands(x, filters, rank, op_name, transposed=True)
    spatial = output_spatial(output_shape, rank, filters)
    geometry = transpose_geometry(x, filters, spatial, strides, padding, dilations)
    return strides, padding, dilations, geometry


def conv_transpose_as_gemm(matmul, x, filters, geometry, error_quantizer=None):
    """`tf.nn.conv_transpose` (channels last) as `col2im(matmul(x, filters^T))`.

    `x` [N, *X, C], `filters` [*k, O, C], `geometry` from `transpose_geometry`.
    The GEMM `[N * prod(X), C] @ [C, prod(k) * O]` has K = C; col2im adds its
    outputs onto `[N, *spatial, O]` in the stated order.  `error_quantizer`,
    if given, is applied to the output's gradient before it is gathered
    (an identity forward).
    """
    rank = len(geometry.spatial)
    channels_in, channels_out = filters.shape[-1], filters.shape[-2]
    kprod = len(geometry.offsets)
    # [*k, O, C] -> [C, *k, O] -> [C, prod(k) * O]: columns in the patches' order.
    weights = tf.reshape(tf.transpose(filters, [rank + 1] + list(range(rank + 1))),
                         [channels_in, kprod * channels_out])
    rows = tf.reshape(x, [-1, channels_in])
    cols = matmul(rows, weights)
    cols = tf.reshape(cols, tf.concat([tf.shape(x)[:-1], [kprod * channels_out]], 0))
    y = col2im(cols, geometry)
    if error_quantizer is None:
        return y

    @tf.custom_gradient
    def quantized_error(v):
        return tf.identity(v), error_quantizer

    return quantized_error(y)
