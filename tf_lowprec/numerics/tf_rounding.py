"""The rounding ops written with stock TensorFlow ops only.

Bit-identical to the C++ kernels (custom_ops/kernels/rounding.h implements
the same algorithm; tests compare them exhaustively).  This path is used where
the custom ops cannot go: SavedModels for TF Serving, XLA (`jit_compile`),
and devices without a kernel (GPUs).  Stochastic rounding draws its bits from
`tf.random.stateless_uniform(..., dtype=uint32, alg="philox")`, the same
stream the kernels compute, split the same way (`random_words`), so even
stochastic results match bit for bit.

All bit manipulation is done on int64 copies of the float32 bit patterns,
which keeps every intermediate (fractions up to 2^32, carries) exact and
every op available on CPU, GPU and XLA.
"""

import numpy as np
import tensorflow as tf


_SIGN = 0x80000000
_ABS = 0x7FFFFFFF
_INF = 0x7F800000
_QUIET_NAN = 0x7FC00000
_TWO_32 = 1 << 32
_HALF = 1 << 31
# Sentinel shared exponent of blocks with nothing to scale (number_formats.h).
DFP_NO_SCALE = -1024


def _float32_bits(value):
    return int(np.array(value, np.float32).view(np.uint32))


def _to_bits(x):
    return tf.cast(tf.bitcast(x, tf.uint32), tf.int64)


def _from_bits(bits):
    return tf.bitcast(tf.cast(bits, tf.uint32), tf.float32)


# Stochastic rounding with at most this many random bits draws 16 bits per
# element (custom_ops/kernels/philox.h, RandomWordOfElement).
MAX_HALF_WORD_RANDOM_BITS = 16


def random_words(shape, seed, random_bits):
    """Per-element random words of stochastic rounding, masked to their top random_bits bits.

    The stream is `tf.random.stateless_uniform(..., dtype=uint32, alg="philox")`.
    With random_bits <= 16, element i (row-major) takes 16 bits, the low half
    of stream word i // 2 for even i and its high half for odd i, placed in
    the top 16 bits of its word; otherwise element i takes stream word i.
    """
    band, shl, shr = tf.bitwise.bitwise_and, tf.bitwise.left_shift, tf.bitwise.right_shift
    if random_bits <= MAX_HALF_WORD_RANDOM_BITS:
        size = tf.reduce_prod(tf.cast(shape, tf.int64))
        words = tf.cast(tf.random.stateless_uniform(
            tf.reshape((size + 1) // 2, [1]), seed=seed, minval=None, maxval=None,
            dtype=tf.uint32, alg="philox"), tf.int64)
        halves = tf.stack([band(words, 0xFFFF), shr(words, 16)], axis=-1)
        words = tf.reshape(shl(tf.reshape(halves, [-1])[:size], 16), shape)
    else:
        words = tf.cast(tf.random.stateless_uniform(
            shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox"), tf.int64)
    mask = (0xFFFFFFFF << (32 - random_bits)) & 0xFFFFFFFF
    return band(words, mask)


def _float32_exponent(a):
    biased = tf.bitwise.right_shift(a, 23)
    return tf.where(biased == 0, tf.constant(-126, tf.int64), biased - 127), biased


def round_magnitude_to_grid(a, k, rounding, words):
    """Rounds finite float32 magnitudes `a` (int64 bits) onto the grids 2^k."""
    shl, shr = tf.bitwise.left_shift, tf.bitwise.right_shift
    band = tf.bitwise.bitwise_and
    exponent, biased = _float32_exponent(a)
    dropped = k - (exponent - 23)
    d = tf.clip_by_value(dropped, 1, 23)
    fraction_in = band(shl(a, 32 - d), 0xFFFFFFFF)
    kept_in = shl(shr(a, d), d)
    step_in = shl(tf.ones_like(d), d)
    significand = tf.bitwise.bitwise_or(
        band(a, 0x7FFFFF), tf.where(biased != 0, tf.constant(0x800000, tf.int64), 0)
    )
    fraction_big = shr(
        shl(significand, tf.clip_by_value(32 - dropped, 0, 8)),
        tf.clip_by_value(dropped - 32, 0, 31),
    )
    step_big = tf.where(
        k >= -126,
        shl(tf.clip_by_value(k, -126, 128) + 127, 23),  # k == 128: Inf (DFP, bits=2)
        shl(tf.ones_like(k), tf.clip_by_value(k + 149, 0, 31)),
    )
    big = dropped > 23
    fraction = tf.where(big, fraction_big, fraction_in)
    kept = tf.where(big, tf.zeros_like(kept_in), kept_in)
    step = tf.where(big, step_big, step_in)
    if rounding == "nearest_even":
        # Parity of the kept multiple: bit d of the significand (the implicit
        # bit when d == 23), not of the raw bit pattern.
        odd = tf.logical_and(tf.logical_not(big), band(shr(significand, d), 1) == 1)
        up = tf.logical_or(fraction > _HALF, tf.logical_and(fraction == _HALF, odd))
    elif rounding == "stochastic":
        up = words + fraction >= _TWO_32
    else:
        up = tf.zeros_like(big)
    rounded = kept + tf.where(up, step, tf.zeros_like(step))
    return tf.where(dropped <= 0, a, rounded)


def round_to_format(x, fmt, rounding="nearest_even", seed=None, random_bits=16):
    """Pure-TF twin of the LowprecRoundToFloatFormat kernel.

    `x` float32; `seed` int64[2] (stochastic rounding only).  Arguments are
    assumed validated by `tf_lowprec.numerics.rounding.round_to_format`.
    """
    band = tf.bitwise.bitwise_and
    u = _to_bits(x)
    sign = band(u, _SIGN)
    a = band(u, _ABS)
    if fmt.input_denormals == "flush":
        a = tf.where(a < 0x00800000, tf.zeros_like(a), a)
    exponent, _ = _float32_exponent(a)
    k = tf.maximum(exponent, fmt.min_exponent) - fmt.mantissa_bits
    words = random_words(tf.shape(x), seed, random_bits) if rounding == "stochastic" else None
    r = round_magnitude_to_grid(a, k, rounding, words)
    if not fmt.subnormals:
        r = tf.where(r < _float32_bits(fmt.min_normal), tf.zeros_like(r), r)
    max_bits = _float32_bits(fmt.max_value)
    if rounding == "toward_zero" or fmt.overflow == "saturate":
        overflow_bits = max_bits
    elif fmt.overflow == "infinity":
        overflow_bits = _INF
    else:
        overflow_bits = _QUIET_NAN
    r = tf.where(r > max_bits, tf.fill(tf.shape(r), tf.constant(overflow_bits, tf.int64)), r)
    if fmt.infinities:
        inf_result = _INF
    else:
        inf_result = _QUIET_NAN if fmt.overflow == "nan" else max_bits
    r = tf.where(a == _INF, tf.fill(tf.shape(r), tf.constant(inf_result, tf.int64)), r)
    signed = tf.bitwise.bitwise_or(sign, r)
    if not fmt.negative_zero:
        signed = tf.where(r == 0, tf.zeros_like(r), signed)
    nan = tf.bitwise.bitwise_or(sign, _QUIET_NAN)
    return _from_bits(tf.where(a > _INF, nan, signed))


def _shared_exponent(max_abs_bits, fmt):
    """DfpSharedExponent of number_formats.h on int64 bit patterns."""
    shl, shr = tf.bitwise.left_shift, tf.bitwise.right_shift
    band = tf.bitwise.bitwise_and
    biased = shr(max_abs_bits, 23)
    # Leading-one position of a subnormal maximum (an integer below 2^23): its
    # conversion to float32 is exact and normal, so the exponent field is it.
    as_float = tf.cast(tf.maximum(max_abs_bits, 1), tf.float32)
    msb = shr(_to_bits(as_float), 23) - 127
    sig24 = tf.where(
        biased != 0,
        tf.bitwise.bitwise_or(band(max_abs_bits, 0x7FFFFF), 0x800000),
        shl(max_abs_bits, tf.clip_by_value(23 - msb, 0, 23)),
    )
    exponent = tf.where(biased != 0, biased - 127, msb - 149)
    shared = exponent - (fmt.bits - 2) + fmt.extra_shift
    if fmt.extra_shift == 0:
        limit = (1 << 24) - (1 << (25 - fmt.bits))
        shared = tf.where(sig24 > limit, shared + 1, shared)
    return tf.where(max_abs_bits == 0, tf.constant(DFP_NO_SCALE, tf.int64), shared)


def quantize_dfp(x, fmt, rounding="nearest_even", seed=None, random_bits=16):
    """Pure-TF twin of LowprecQuantizeDfp: returns (values, shared_exponents int32)."""
    band = tf.bitwise.bitwise_and
    u = _to_bits(x)
    sign = band(u, _SIGN)
    a = band(u, _ABS)
    finite_abs = tf.where(a < _INF, a, tf.zeros_like(a))
    rank = x.shape.rank
    if fmt.block_size is None:
        max_bits = tf.reduce_max(finite_abs, keepdims=True) if rank else finite_abs
        max_bits = tf.maximum(max_bits, 0)  # empty tensors reduce to int64 min
        exponents = _shared_exponent(max_bits, fmt)
        k = exponents
    else:
        axis = fmt.axis % rank
        n = tf.shape(x, out_type=tf.int64)[axis]
        bs = fmt.block_size
        perm = [i for i in range(rank) if i != axis] + [axis]
        moved = tf.transpose(finite_abs, perm)
        blocks = (n + bs - 1) // bs
        pad = blocks * bs - n
        padded = tf.pad(moved, [[0, 0]] * (rank - 1) + [[0, pad]])
        shape = tf.concat([tf.shape(padded, out_type=tf.int64)[:-1], [blocks, bs]], 0)
        max_bits = tf.maximum(tf.reduce_max(tf.reshape(padded, shape), axis=-1), 0)
        moved_exponents = _shared_exponent(max_bits, fmt)  # [..., blocks]
        k_moved = tf.repeat(moved_exponents, bs, axis=-1)[..., :n]
        inverse = np.argsort(perm).tolist()
        k = tf.transpose(k_moved, inverse)
        exponents = tf.transpose(moved_exponents, inverse)
    words = random_words(tf.shape(x), seed, random_bits) if rounding == "stochastic" else None
    k = tf.broadcast_to(k, tf.shape(a, out_type=tf.int64))
    r = round_magnitude_to_grid(a, k, rounding, words)
    # Saturation (DfpGridMaxBits of rounding.h): rounding that carries past
    # FLT_MAX gives FLT_MAX with its low k - 104 bits cleared (0 for k >= 128).
    cleared = tf.clip_by_value(k - 104, 0, 24)
    largest = tf.where(
        cleared >= 24,
        tf.zeros_like(a),
        tf.bitwise.left_shift(tf.bitwise.right_shift(tf.constant(0x7F7FFFFF, tf.int64), cleared),
                              cleared),
    )
    r = tf.minimum(r, largest)
    signed = tf.bitwise.bitwise_or(sign, r)
    nan = tf.bitwise.bitwise_or(sign, _QUIET_NAN)
    special = tf.where(a > _INF, nan, u)
    result = tf.where(tf.logical_or(a >= _INF, a == 0), special, signed)
    return _from_bits(result), tf.cast(exponents, tf.int32)
