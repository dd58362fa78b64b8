"""Block-scaled formats (OCP MX, NVFP4) written with stock TensorFlow ops only.

The pure-TF twin of the LowprecQuantizeBlockScaled kernel, used where the
custom ops cannot go (SavedModels for TF Serving, XLA, GPUs).  It follows
docs/block_formats.md step by step and gives the kernel's bits; tests compare
both with `tf_lowprec.numerics.reference.quantize_block_scaled`.

TensorFlow runs CPU kernels with flush-to-zero and denormals-are-zero, so no
float32 arithmetic here may read or produce a float32 subnormal: power-of-two
scales are applied by rounding x's bit pattern onto a shifted element grid,
and the float-scale steps run in float64 on values converted exactly from
and to float32 bit patterns (`bits_to_float64`, `_float64_to_bits`).
"""

import tensorflow as tf

from tf_lowprec.numerics import tf_rounding

_ABS = 0x7FFFFFFF
_SIGN = 0x80000000
_INF = 0x7F800000
_QUIET_NAN = 0x7FC00000
_FLOAT32_MAX = 3.4028234663852886e38
_E8M0_MIN = -127
_E8M0_MAX = 127


def floor_log2(a):
    """floor(log2) of positive finite float32 magnitudes given as int64 bits (subnormals too)."""
    biased = tf.bitwise.right_shift(a, 23)
    # A subnormal's bits are its significand m (value m * 2^-149); m < 2^23
    # converts to a normal float32 exactly, whose exponent field is floor(log2 m).
    m_bits = tf_rounding._to_bits(tf.cast(a, tf.float32))
    subnormal = tf.bitwise.right_shift(m_bits, 23) - 127 - 149
    return tf.where(biased == 0, subnormal, biased - 127)


def _power_of_two_bits(e):
    """float32 bits of 2^e for int64 e in -149..127."""
    normal = tf.bitwise.left_shift(tf.clip_by_value(e, -126, 127) + 127, 23)
    subnormal = tf.bitwise.left_shift(tf.ones_like(e), tf.clip_by_value(e + 149, 0, 22))
    return tf.where(e >= -126, normal, subnormal)


def _scaled_constant_bits(value, e):
    """float32 bits of value * 2^e (value a positive normal float32 constant), exact."""
    bits = tf_rounding._float32_bits(value)
    biased = (bits >> 23) + e
    significand = (bits & 0x7FFFFF) | 0x800000
    subnormal = tf.bitwise.right_shift(tf.constant(significand, tf.int64),
                                       tf.clip_by_value(1 - biased, 0, 63))
    return tf.where(biased >= 1, bits + e * (1 << 23), subnormal)


def bits_to_float64(a):
    """float64 values of non-negative finite float32 magnitudes given as int64 bits."""
    biased = tf.bitwise.right_shift(a, 23)
    fraction = tf.bitwise.bitwise_and(a, 0x7FFFFF)
    significand = tf.where(biased == 0, fraction, fraction + 0x800000)
    exponent = tf.where(biased == 0, tf.constant(-149, tf.int64), biased - 150)
    # 2^exponent as a float64 bit pattern: exact, and normal in float64.
    power = tf.bitcast(tf.bitwise.left_shift(exponent + 1023, 52), tf.float64)
    return tf.cast(significand, tf.float64) * power


def _float64_to_bits(v):
    """int64 float32 bits of non-negative float64 v <= FLT_MAX, rounded to nearest even.

    Subnormal results are kept: values below 2^-126 are rounded in units of
    2^-149 by float64 arithmetic instead of a conversion that would flush them.
    """
    normal = tf_rounding._to_bits(tf.cast(v, tf.float32))
    subnormal = tf.cast(tf.math.round(v * 2.0**149), tf.int64)  # half to even
    return tf.where(v >= 2.0**-126, normal, subnormal)


def _blocks(t, block_size):
    """t (..., n) padded with zeros to whole blocks: (..., blocks, block_size)."""
    n = tf.shape(t)[-1]
    blocks = (n + block_size - 1) // block_size
    rank = t.shape.rank
    paddings = [[0, 0]] * (rank - 1) + [[0, blocks * block_size - n]]
    padded = tf.pad(t, paddings)
    shape = tf.concat([tf.shape(t)[:-1], [blocks, block_size]], axis=0)
    return tf.reshape(padded, shape)


class BlockLayout:
    """Moves the blocked axis last and back, and spreads per-block values over elements."""

    def __init__(self, x, axis, block_size):
        rank = x.shape.rank
        self.perm = list(range(axis)) + list(range(axis + 1, rank)) + [axis]
        self.inverse = [self.perm.index(i) for i in range(rank)]
        self.identity = axis == rank - 1
        self.block_size = block_size
        self.n = tf.shape(x)[axis]

    def moved(self, t):
        """t (x's shape, or the scales' shape) with the blocked axis last."""
        return t if self.identity else tf.transpose(t, self.perm)

    def to_blocks(self, t):
        """t of x's shape as (..., blocks, block_size), zero-padded, the blocked axis last."""
        return _blocks(self.moved(t), self.block_size)

    def per_block(self, t):
        """A (..., blocks) tensor in x's axis order (the scales output)."""
        return t if self.identity else tf.transpose(t, self.inverse)

    def to_elements(self, per_block):
        """(..., blocks) -> x's shape, each block's value repeated over its elements."""
        repeated = tf.repeat(per_block, self.block_size, axis=-1)[..., : self.n]
        return repeated if self.identity else tf.transpose(repeated, self.inverse)


def quantize_block_scaled(x, fmt, rounding="nearest_even", seed=None, random_bits=16):
    """Pure-TF twin of the block-scaled conversion: (values, decoded block scales).

    `x` float32 of rank >= 1; `fmt` a `BlockFormat` whose `axis` is already
    non-negative; arguments validated by
    `tf_lowprec.numerics.rounding.quantize_block_scaled`.
    """
    element = fmt.element
    layout = BlockLayout(x, fmt.axis, fmt.block_size)
    u = tf_rounding._to_bits(x)
    sign = tf.bitwise.bitwise_and(u, _SIGN)
    a = tf.bitwise.bitwise_and(u, _ABS)
    finite = a < _INF
    finite_a = tf.where(finite, a, tf.zeros_like(a))
    # The largest bit pattern of non-negative floats is the largest value.
    block_max = tf.reduce_max(layout.to_blocks(finite_a), axis=-1)
    block_nonfinite = tf.reduce_any(layout.to_blocks(tf.logical_not(finite)), axis=-1)

    if fmt.power_of_two_scales:
        positive = block_max > 0
        safe_max = tf.where(positive, block_max, tf.ones_like(block_max))
        shared = tf.where(positive, floor_log2(safe_max) - fmt.element_emax,
                          tf.constant(_E8M0_MIN, tf.int64))
        shared = tf.clip_by_value(shared, _E8M0_MIN, _E8M0_MAX)
        scale_bits = _power_of_two_bits(shared)
        s = layout.to_elements(shared)
        # Round x onto the element grid shifted by s: the same number as
        # element(x / 2^s) * 2^s, without float arithmetic on x.
        safe_a = tf.where(finite_a > 0, finite_a, tf.ones_like(finite_a))
        exponent = tf.where(finite_a > 0, floor_log2(safe_a), tf.zeros_like(s))
        k = tf.maximum(exponent, element.min_exponent + s) - element.mantissa_bits
        words = (tf_rounding.random_words(tf.shape(x), seed, random_bits)
                 if rounding == "stochastic" else None)
        r = tf_rounding.round_magnitude_to_grid(finite_a, k, rounding, words)
        if not element.subnormals:
            r = tf.where(r < _scaled_constant_bits(element.min_normal, s), tf.zeros_like(r), r)
        largest = _scaled_constant_bits(element.max_value, s)
        r = tf.minimum(r, largest)
        values = tf.bitwise.bitwise_or(sign, r)
        if not element.negative_zero:
            values = tf.where(r == 0, tf.zeros_like(r), values)
        zero_block = tf.zeros_like(block_max, tf.bool)
    else:
        elem_max = element.max_value
        if fmt.tensor_scale:
            tensor_max = tf.reduce_max(finite_a)
            product = elem_max * fmt.scale_format.max_value
            quotient = tf.minimum(product / bits_to_float64(tf.maximum(tensor_max, 1)),
                                  _FLOAT32_MAX)
            encode = tf.where(tensor_max > 0, bits_to_float64(_float64_to_bits(quotient)),
                              tf.constant(1.0, tf.float64))
        else:
            encode = tf.constant(1.0, tf.float64)
        decode = _float64_to_bits((bits_to_float64(block_max) / elem_max) * encode)
        block_scale = tf_rounding.round_to_format(
            tf_rounding._from_bits(decode), fmt.scale_format, "nearest_even")
        block_scale = bits_to_float64(
            tf.bitwise.bitwise_and(tf_rounding._to_bits(block_scale), _ABS))
        zero_block = tf.logical_or(block_max == 0, block_scale == 0)
        safe_scale = tf.where(zero_block, tf.ones_like(block_scale), block_scale)
        element_encode = bits_to_float64(_float64_to_bits(
            tf.minimum(encode / safe_scale, _FLOAT32_MAX)))
        scale_bits = tf.where(zero_block, tf.zeros_like(block_max),
                              _float64_to_bits(safe_scale / encode))
        scaled = _float64_to_bits(bits_to_float64(finite_a) * layout.to_elements(element_encode))
        q = tf_rounding.round_to_format(
            tf_rounding._from_bits(tf.bitwise.bitwise_or(sign, scaled)), element, rounding, seed,
            random_bits)
        q_bits = tf_rounding._to_bits(q)
        magnitude = bits_to_float64(tf.bitwise.bitwise_and(q_bits, _ABS))
        r = _float64_to_bits(magnitude * layout.to_elements(safe_scale) / encode)
        values = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(q_bits, _SIGN), r)

    values = tf.where(tf.logical_and(layout.to_elements(zero_block), finite), sign, values)
    nan = tf.bitwise.bitwise_or(sign, _QUIET_NAN)
    if fmt.nonfinite_blocks == "nan":
        values = tf.where(layout.to_elements(block_nonfinite), nan, values)
        scale_bits = tf.where(block_nonfinite, tf.fill(tf.shape(scale_bits),
                                                       tf.constant(_QUIET_NAN, tf.int64)),
                              scale_bits)
    else:
        values = tf.where(finite, values, u)
        values = tf.where(a > _INF, nan, values)
    return (tf_rounding._from_bits(values),
            tf_rounding._from_bits(layout.per_block(scale_bits)))
