"""GEMMs whose sums are rounded to a low-precision float format (FP16, BF16, ...).

`matmul` multiplies like `tf.linalg.matmul`, but every output element is
accumulated in a `FloatFormat` instead of FP32, in a defined order:

1. the products `a[i, k] * b[k, j]` of the float32 operands are exact;
2. K is cut into chunks of `chunk_size` consecutive k (the whole K when
   None); within a chunk the running sum starts at +0 and is rounded to the
   format after every addition: `acc = fmt(acc + a[i, k] * b[k, j])`, one
   rounding of the exact sum (no double rounding);
3. the result is the first chunk's sum; each further chunk's sum is added
   to it in k order, rounded likewise.

So FP16 accumulation "swamps" (a long running sum stops absorbing small terms,
Wang et al. 2018) and chunk-based accumulation cures it:

>>> import tensorflow as tf, tf_lowprec as lp
>>> ones_row, ones_column = tf.ones([1, 4096]), tf.ones([4096, 1])
>>> lp.matmul(ones_row, ones_column, accumulator=lp.FP16).numpy()
array([[2048.]], dtype=float32)
>>> lp.matmul(ones_row, ones_column, accumulator=lp.FP16, chunk_size=64).numpy()
array([[4096.]], dtype=float32)

An `Accumulator` bundles format, chunk size and rounding, for
`PrecisionSpec(accumulator=...)` (every emulated GEMM of a policy then sums
this way) and for `matmul(..., accumulator=Accumulator(...))`.
docs/accumulation.md states the arithmetic, the stochastic rounding's random
stream and what each kernel tier does.
"""

import tensorflow as tf

from tf_lowprec import _op_library
from tf_lowprec.gemm import common as _gemm_common
from tf_lowprec.gemm import conv_nd as _conv_nd
from tf_lowprec.gemm import tf_accumulation
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib

# Seeds of the backward GEMMs' stochastic rounding: the forward seed plus these.
_DX_SEED_OFFSET = (0, 1)
_DW_SEED_OFFSET = (0, 2)


def _check_chunk_size(chunk_size):
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None (the whole K) or an int >= 1, got "
                         f"{chunk_size!r}")
    return chunk_size


def _float_format(fmt, name="accumulator"):
    try:
        fmt = formats_lib.get(fmt)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if not isinstance(fmt, formats_lib.FloatFormat):
        raise ValueError(f"{name} must be a FloatFormat (e.g. lp.FP16, lp.BF16) or an "
                         f"lp.Accumulator, got {fmt!r}")
    return fmt


class Accumulator:
    """How a GEMM sums its products: a float format, a chunk size and a rounding mode.

    Args:
      format: the `FloatFormat` of the running sums (or a preset name such as
        "fp16"); its overflow, NaN and subnormal rules apply to every sum.
      chunk_size: None (one running sum over the whole K) or the length of
        the chunks whose sums are then added (Wang et al. 2018's CL).
      rounding: "nearest_even", "stochastic" (16 random bits per addition,
        from the GEMM's seed) or "toward_zero".

    >>> import tf_lowprec as lp
    >>> acc = lp.Accumulator(lp.FP16, chunk_size=64)
    >>> acc
    Accumulator('fp16', chunk_size=64)
    >>> lp.Accumulator.from_config(acc.get_config()) == acc
    True
    """

    def __init__(self, format, chunk_size=None, rounding="nearest_even"):  # noqa: A002
        self.format = _float_format(format, "format")
        self.chunk_size = _check_chunk_size(chunk_size)
        formats_lib.check_rounding(rounding)
        self.rounding = rounding

    @property
    def name(self):
        """A short label, e.g. "fp16/chunk64" or "bf16/stochastic"."""
        fmt = self.format.name or repr(self.format)
        parts = [fmt] + ([f"chunk{self.chunk_size}"] if self.chunk_size else [])
        if self.rounding != "nearest_even":
            parts.append(self.rounding)
        return "/".join(parts)

    def get_config(self):
        fmt = self.format
        preset = fmt.name in formats_lib.PRESETS and formats_lib.PRESETS[fmt.name] == fmt
        return {"format": fmt.name if preset else formats_lib.serialize(fmt),
                "chunk_size": self.chunk_size, "rounding": self.rounding}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        unknown = set(config) - {"format", "chunk_size", "rounding"}
        if unknown:
            raise ValueError(f"unknown Accumulator keys {sorted(unknown)}; valid keys: "
                             "format, chunk_size, rounding")
        return cls(**config)

    def _key(self):
        return (self.format, self.chunk_size, self.rounding)

    def __eq__(self, other):
        return isinstance(other, Accumulator) and self._key() == other._key()

    def __hash__(self):
        return hash(("Accumulator", self._key()))

    def __repr__(self):
        fmt = self.format.name or repr(self.format)
        parts = [repr(fmt)]
        if self.chunk_size is not None:
            parts.append(f"chunk_size={self.chunk_size}")
        if self.rounding != "nearest_even":
            parts.append(f"rounding={self.rounding!r}")
        return f"Accumulator({', '.join(parts)})"


def as_accumulator(accumulator, chunk_size=None, rounding="nearest_even"):
    """An `Accumulator` from one, or from a format plus chunk_size and rounding."""
    if isinstance(accumulator, Accumulator):
        if chunk_size is not None or rounding != "nearest_even":
            raise ValueError("pass chunk_size and rounding inside the lp.Accumulator, not "
                             "next to it")
        return accumulator
    if accumulator is None:
        raise ValueError("accumulator is required: a FloatFormat (e.g. lp.FP16) or an "
                         "lp.Accumulator")
    return Accumulator(accumulator, chunk_size, rounding)


def _add_seeds(seed, offset):
    return seed + tf.constant(offset, tf.int64)


def _format_attrs(fmt):
    return dict(exponent_bits=fmt.exponent_bits, mantissa_bits=fmt.mantissa_bits,
                exponent_bias=fmt.exponent_bias, subnormals=fmt.subnormals,
                nan_encoding=fmt.nan, overflow=fmt.overflow,
                flush_input_denormals=fmt.input_denormals == "flush")


def _product(a, b, transpose_a, transpose_b, accumulator, seed, isa, implementation):
    """The kernel (or its twin) on [..., rows, cols] operands with broadcast batches."""
    if not rounding_lib.use_kernel(implementation):
        return tf_accumulation.matmul(a, b, accumulator.format, accumulator.chunk_size,
                                      accumulator.rounding, seed, transpose_a, transpose_b)
    attrs = dict(_format_attrs(accumulator.format), chunk_size=accumulator.chunk_size or 0,
                 rounding=accumulator.rounding, transpose_a=transpose_a,
                 transpose_b=transpose_b, isa=isa)
    op = _op_library.load().lowprec_accumulation_matmul
    if a.shape.rank == 2 and b.shape.rank == 2:
        return op(a[None], b[None], seed, **attrs)[0]
    batch = tf.broadcast_dynamic_shape(_gemm_common.batch_shape(a),
                                       _gemm_common.batch_shape(b))
    product = op(_gemm_common.to_rank3(a, batch), _gemm_common.to_rank3(b, batch), seed, **attrs)
    return _gemm_common.from_rank3(product, a, b, batch, transpose_a, transpose_b)


def matmul(a, b, *, accumulator, chunk_size=None, rounding="nearest_even", seed=None,
           transpose_a=False, transpose_b=False, implementation="auto", isa="auto",
           name=None):
    """`tf.linalg.matmul(a, b)` with every sum rounded to `accumulator`'s format.

    For each output element the exact products are summed in k order into a
    running sum rounded to the format after every addition (one rounding of
    the exact sum), within chunks of `chunk_size` consecutive k; the chunk
    sums are then added in order, rounded likewise (module docstring,
    docs/accumulation.md).  The operands are used as they are: round them
    first (`lp.round_to_format`) for low-precision operands.

    The gradient runs both backward GEMMs through the same accumulation: for
    `out = a @ b`, `da = matmul(dout, b^T)` and `db = matmul(a^T, dout)`
    with the same accumulator and chunking (stochastic rounding keyed by the
    forward seed plus (0, 1) and (0, 2)); broadcast batch dimensions are then
    summed in FP32.

    Args:
      a, b: float32 tensors `[..., m, k]` and `[..., k, n]` (before the
        transposes); batch dimensions broadcast as in `tf.linalg.matmul`.
      accumulator: a `FloatFormat` (or preset name) for the sums, or an
        `lp.Accumulator` (which then carries chunk_size and rounding).
      chunk_size: None (the whole K is one chunk) or an int >= 1.
      rounding: "nearest_even", "stochastic" or "toward_zero".
      seed: stochastic rounding only: an int, a pair of ints or an int64[2]
        tensor; None draws one from TensorFlow's global RNG.  The random bits
        of an output element's t-th addition depend only on (seed, element,
        t): the same for any thread count and any kernel tier.
      transpose_a, transpose_b: as in `tf.linalg.matmul`.
      implementation: "auto" (the C++ kernel on CPU; where it cannot run, a
        visible GPU or XLA, the stock-TF twin), "op" or "tf" (the twin: the
        same bits in float64 TF ops, a loop of K steps, for export and XLA).
      isa: the kernel tier: "auto", "portable", "avx2" or "avx512" (all give
        the same bits; a tier the CPU lacks is an error).
      name: name scope.

    Returns:
      float32 `[..., m, n]` holding values of the format.

    >>> import tensorflow as tf, tf_lowprec as lp
    >>> a = tf.constant([[1.0, 2.0**-9, 2.0**-9]])
    >>> lp.matmul(a, tf.ones([3, 1]), accumulator=lp.BF16).numpy()  # 1 + 2^-9 rounds to 1
    array([[1.]], dtype=float32)
    >>> lp.matmul(a, tf.ones([3, 1]), accumulator=lp.FP32).numpy()
    array([[1.0039062]], dtype=float32)
    """
    accumulator = as_accumulator(accumulator, chunk_size, rounding)
    _op_library.check_isa(isa)
    rounding_lib.check_implementation(implementation)
    if not isinstance(transpose_a, bool) or not isinstance(transpose_b, bool):
        raise ValueError(f"transpose_a and transpose_b must be True or False, got "
                         f"{transpose_a!r} and {transpose_b!r}")
    with tf.name_scope(name or "accumulation_matmul"):
        a = _gemm_common.as_float32_operand(a, "a")
        b = _gemm_common.as_float32_operand(b, "b")
        _gemm_common.check_inner_dims(a, b, transpose_a, transpose_b)
        seed = rounding_lib.seed_tensor(seed, accumulator.rounding)

        def product_with(product_seed):
            def product(x, y, ta, tb):
                return _product(x, y, ta, tb, accumulator, product_seed, isa, implementation)
            return product

        @tf.custom_gradient
        def accumulated(x, y):
            def grad(dy):
                # matmul_gradients runs the dx GEMM first, then the dw GEMM.
                seeds = iter([_add_seeds(seed, _DX_SEED_OFFSET),
                              _add_seeds(seed, _DW_SEED_OFFSET)])

                def backward_product(p, q, ta, tb):
                    return product_with(next(seeds))(p, q, ta, tb)

                return _gemm_common.matmul_gradients(backward_product, x, y, dy, transpose_a,
                                                     transpose_b)

            return product_with(seed)(x, y, transpose_a, transpose_b), grad

        return accumulated(a, b)


def conv2d(x, filters, *, accumulator, strides=1, padding="VALID", dilations=1, groups=1,
           seed=None, implementation="auto", isa="auto", name=None):
    """`tf.nn.conv2d` (NHWC) as `matmul` of image patches (im2col), summed in `accumulator`.

    The patches `[N * H' * W', kh * kw * C]` times the filters
    `[kh * kw * C, O]`: each output sums its kh * kw * C products in the
    order (kh, kw, C) with `accumulator`'s format, chunking and rounding.
    Gradients: both backward GEMMs accumulate likewise; the patch gradients
    are then summed back onto x in FP32 (col2im).  `groups` > 1: a grouped
    convolution (filters `[kh, kw, C / groups, O]`), one batched GEMM over
    the groups, as `tf_lowprec.gemm.common.conv2d_as_gemm` lays it out.

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 3, 3, 1), np.float32); w = np.ones((2, 2, 1, 1), np.float32)
    >>> lp.gemm.accumulation.conv2d(x, w, accumulator=lp.FP16)[0, :, :, 0].numpy()
    array([[4., 4.],
           [4., 4.]], dtype=float32)
    """
    accumulator = as_accumulator(accumulator)
    strides, padding, dilations = _gemm_common.conv_options(strides, padding, dilations)
    with tf.name_scope(name or "accumulation_conv2d"):
        x = _gemm_common.as_float32_operand(x, "x")
        filters = _gemm_common.as_float32_operand(filters, "filters")
        groups = _gemm_common.check_groups(groups)
        _gemm_common.check_conv_operands(x, filters, "conv2d", groups)

        def gemm(columns, weights):
            return matmul(columns, weights, accumulator=accumulator, seed=seed,
                          implementation=implementation, isa=isa)

        return _gemm_common.conv2d_as_gemm(gemm, x, filters, strides, padding, dilations,
                                           groups)


def conv3d(x, filters, *, accumulator, strides=1, padding="VALID", dilations=1, groups=1,
           seed=None, implementation="auto", isa="auto", name=None):
    """`tf.nn.conv3d` (NDHWC) as `matmul` of volume patches, summed in `accumulator`.

    As `conv2d`, with patches `[N * D' * H' * W', kd * kh * kw * C]` in the
    order (kd, kh, kw, C) and col2im in the order `tf_lowprec.gemm.conv_nd`
    states.

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 2, 2, 2, 1), np.float32); w = np.ones((2, 2, 2, 1, 1), np.float32)
    >>> lp.gemm.accumulation.conv3d(x, w, accumulator=lp.FP16).numpy().ravel()
    array([8.], dtype=float32)
    """
    accumulator = as_accumulator(accumulator)
    strides, padding, dilations = _conv_nd.conv_options(strides, padding, dilations, 3)
    with tf.name_scope(name or "accumulation_conv3d"):
        x = _gemm_common.as_float32_operand(x, "x")
        filters = _gemm_common.as_float32_operand(filters, "filters")
        groups = _gemm_common.check_groups(groups)
        _conv_nd.check_operands(x, filters, 3, "conv3d", groups)

        def gemm(columns, weights):
            return matmul(columns, weights, accumulator=accumulator, seed=seed,
                          implementation=implementation, isa=isa)

        return _conv_nd.conv_as_gemm(gemm, x, filters, strides, padding, dilations, groups)


def conv_transpose(x, filters, output_shape, *, accumulator, strides=1, padding="VALID",
                   dilations=1, seed=None, implementation="auto", isa="auto", name=None):
    """`tf.nn.conv_transpose` (channels last, 1-3 spatial axes) summed in `accumulator`.

    The GEMM `x [N * prod(X), C] @ filters^T [C, prod(k) * O]`, then col2im
    in FP32 in the order `tf_lowprec.gemm.conv_nd` states; both backward
    GEMMs (d(x) on the error's patches, d(filters)) accumulate likewise.
    `filters` [*k, O, C]; `output_shape` as for `lp.dfp_conv_transpose`.

    >>> import numpy as np, tf_lowprec as lp
    >>> x = np.ones((1, 2, 1), np.float32); w = np.ones((2, 1, 1), np.float32)
    >>> lp.gemm.accumulation.conv_transpose(x, w, [3], accumulator=lp.FP16)[0, :, 0].numpy()
    array([1., 2., 1.], dtype=float32)
    """
    accumulator = as_accumulator(accumulator)
    with tf.name_scope(name or "accumulation_conv_transpose"):
        x = _gemm_common.as_float32_operand(x, "x")
        filters = _gemm_common.as_float32_operand(filters, "filters")
        strides, padding, dilations, geometry = _conv_nd.transpose_operands(
            x, filters, output_shape, strides, padding, dilations, "conv_transpose")

        def gemm(rows, weights):
            return matmul(rows, weights, accumulator=accumulator, seed=seed,
                          implementation=implementation, isa=isa)

        return _conv_nd.conv_transpose_as_gemm(gemm, x, filters, geometry)
