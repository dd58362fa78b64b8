"""The GEMM of `tf_lowprec.matmul` in stock TensorFlow ops (bit-identical).

The C++ kernel (`LowprecAccumulationMatmul`) cannot run under XLA, on a GPU or
in a SavedModel served without the op library; there `lp.matmul` runs this
twin.  It computes every step as the kernel's definition does
(custom_ops/kernels/accumulation_step.h), in float64 TensorFlow ops over the
whole [..., m, n] output at once, one k per loop iteration:

- the product of two float32 values is exact in float64;
- `s = acc + p` in float64 and TwoSum's error `e` give the sum rounded to
  odd at 53 bits (where `e != 0` and the last bit of s is even, s moves one
  ulp toward the exact sum), which rounds to any format of at most 51
  significand bits exactly as the exact sum does;
- that value is rounded to the format from its definition: grid 2^k with
  k = max(floor(log2|s|), min_exponent) - mantissa_bits, computed on
  `|s| * 2^-k` (exact), then the format's flush, overflow and NaN rules.

A loop of K steps: exact, but far slower than the kernel.

>>> import tensorflow as tf, tf_lowprec as lp
>>> from tf_lowprec.gemm import tf_accumulation
>>> tf_accumulation.matmul(tf.ones([1, 4096]), tf.ones([4096, 1]), lp.FP16).numpy()
array([[2048.]], dtype=float32)
"""

import tensorflow as tf

from tf_lowprec.numerics import tf_rounding

_FRACTION_BITS = 52
_INF64_BITS = 0x7FF << 52
_ABS64 = (1 << 63) - 1
_QUIET_NAN_BITS = 0x7FC00000
_STOCHASTIC_RANDOM_BITS = 16


def _pow2(k):
    """2^k as float64 for int64 k in float64's normal range (exact)."""
    return tf.bitcast((k + 1023) * (1 << _FRACTION_BITS), tf.float64)


def sum_rounded_to_odd(acc, p):
    """acc + p (float64) rounded to odd at 53 bits; non-finite sums pass through."""
    s = acc + p
    p_part = s - acc
    e = (acc - (s - p_part)) + (p - p_part)
    bits = tf.bitcast(s, tf.int64)
    adjust = tf.math.is_finite(s) & tf.not_equal(e, 0.0) & tf.equal(bits % 2, 0)
    away = tf.equal(s < 0, e < 0)
    step = tf.where(away, tf.constant(1, tf.int64), tf.constant(-1, tf.int64))
    return tf.bitcast(tf.where(adjust, bits + step, bits), tf.float64)


def round_float64(x, fmt, rounding, words=None):
    """float32 values of `fmt` nearest (per `rounding`) to float64 x.

    For x whose rounding to fmt equals that of the value it stands for (a
    round-to-odd sum); `words` (int64, stochastic only) are the random words
    with 16 random bits in their top half.  NaN gives the quiet NaN
    0x7FC00000.
    """
    bits = tf.bitcast(x, tf.int64)
    negative = bits < 0
    a_bits = tf.bitwise.bitwise_and(bits, _ABS64)
    is_nan = a_bits > _INF64_BITS
    is_inf = tf.equal(a_bits, _INF64_BITS)
    finite_bits = tf.where(is_nan | is_inf, tf.zeros_like(a_bits), a_bits)
    if fmt.input_denormals == "flush":
        finite_bits = tf.where(finite_bits < (1023 - 126) << _FRACTION_BITS,
                               tf.zeros_like(finite_bits), finite_bits)
    a = tf.bitcast(finite_bits, tf.float64)
    exponent = tf.bitwise.right_shift(finite_bits, _FRACTION_BITS) - 1023
    k = tf.maximum(exponent, fmt.min_exponent) - fmt.mantissa_bits
    scaled = a * _pow2(-k)  # exact: a power-of-two scaling in range
    kept = tf.floor(scaled)
    fraction = scaled - kept
    if rounding == "nearest_even":
        odd = tf.equal(tf.math.floormod(kept, 2.0), 1.0)
        up = (fraction > 0.5) | (tf.equal(fraction, 0.5) & odd)
    elif rounding == "stochastic":
        # F = floor(fraction * 2^32); up iff F + U >= 2^32 (rounding.h).
        fraction32 = tf.floor(fraction * 2.0**32)
        up = fraction32 + tf.cast(words, tf.float64) >= 2.0**32
    else:
        up = tf.zeros_like(kept, tf.bool)
    magnitude = (kept + tf.cast(up, tf.float64)) * _pow2(k)
    if not fmt.subnormals:
        magnitude = tf.where(magnitude < fmt.min_normal, tf.zeros_like(magnitude), magnitude)
    if rounding == "toward_zero" or fmt.overflow == "saturate":
        overflow_value = fmt.max_value
    else:
        overflow_value = float("inf") if fmt.overflow == "infinity" else float("nan")
    magnitude = tf.where(magnitude > fmt.max_value,
                         tf.fill(tf.shape(magnitude), tf.constant(overflow_value, tf.float64)),
                         magnitude)
    if fmt.infinities:
        inf_value = float("inf")
    else:
        inf_value = float("nan") if fmt.overflow == "nan" else fmt.max_value
    magnitude = tf.where(is_inf, tf.fill(tf.shape(magnitude), tf.constant(inf_value, tf.float64)), magnitude)
    magnitude32 = tf.cast(magnitude, tf.float32)  # exact: a value of the format (or Inf/NaN)
    keep_sign = negative & tf.logical_or(tf.constant(fmt.negative_zero),
                                         tf.not_equal(magnitude32, 0.0))
    signed = tf.where(keep_sign, -magnitude32, magnitude32)
    nan = tf.bitcast(tf.fill(tf.shape(signed), tf.constant(_QUIET_NAN_BITS, tf.int32)),
                     tf.float32)
    return tf.where(is_nan | tf.math.is_nan(magnitude32), nan, signed)


def matmul(a, b, fmt, chunk_size=None, rounding="nearest_even", seed=None, transpose_a=False,
           transpose_b=False):
    """`lp.matmul`'s product of float32 `a` [..., m, k] and `b` [..., k, n].

    `seed` (int64[2]) keys stochastic rounding: element e's (row-major in
    the broadcast [batch..., m, n]) step t takes random element e * S + t of
    the rounding ops' stream with 16 random bits, S = K + chunks - 1 steps.
    """
    a = tf.convert_to_tensor(a, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    if transpose_a:
        a = tf.linalg.matrix_transpose(a)
    if transpose_b:
        b = tf.linalg.matrix_transpose(b)
    batch = tf.broadcast_dynamic_shape(tf.shape(a)[:-2], tf.shape(b)[:-2])
    out_shape = tf.concat([batch, tf.shape(a)[-2:-1], tf.shape(b)[-1:]], 0)
    a64 = tf.cast(a, tf.float64)
    b64 = tf.cast(b, tf.float64)
    k_total = tf.shape(a)[-1]
    chunk = k_total if chunk_size is None else tf.minimum(chunk_size, k_total)
    chunk = tf.maximum(chunk, 1)
    chunks = (k_total + chunk - 1) // chunk
    steps = tf.maximum(k_total + chunks - 1, 0)
    if rounding == "stochastic":
        words = tf_rounding.random_words(tf.concat([out_shape, [steps]], 0),
                                         tf.convert_to_tensor(seed, tf.int64),
                                         _STOCHASTIC_RANDOM_BITS)
    else:
        words = None

    def word(t):
        return None if words is None else tf.gather(words, t, axis=-1)

    def step(acc, p, t):
        return round_float64(sum_rounded_to_odd(tf.cast(acc, tf.float64), p), fmt, rounding,
                             word(t))

    zeros = tf.zeros(out_shape, tf.float32)

    def body(k, acc, total):
        p = tf.gather(a64, k, axis=-1)[..., :, None] * tf.gather(b64, k, axis=-2)[..., None, :]
        acc = step(acc, p, k)
        chunk_index = k // chunk
        chunk_ends = tf.equal((k + 1) % chunk, 0) | tf.equal(k + 1, k_total)
        combined = tf.cond(
            chunk_ends & (chunk_index > 0),
            lambda: step(total, tf.cast(acc, tf.float64), tf.minimum(k_total + chunk_index - 1,
                                                                     steps - 1)),
            lambda: acc)
        total = tf.where(chunk_ends, combined, total)
        acc = tf.where(chunk_ends, zeros, acc)
        return k + 1, acc, total

    _, _, total = tf.while_loop(lambda k, *_: k < k_total, body,
                                (tf.constant(0), zeros, zeros), parallel_iterations=1)
    return total
