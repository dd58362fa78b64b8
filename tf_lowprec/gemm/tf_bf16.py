"""The BF16 GEMM of `bf16_matmul` in stock TensorFlow ops (bit-identical).

The C++ kernel (`LowprecBf16Matmul`) cannot run under XLA, on a GPU or in a
SavedModel served without the op library; there `bf16_matmul` runs this twin,
which computes the same bits: the operands rounded to BF16 by the pure-TF
rounding, then every output element accumulated in the VDPBF16PS order
(docs/bf16_gemm.md), one K element per loop iteration, each step a single
rounding of the exact `acc + x * y`.

Why float64 gives the single rounding: a product of two BF16 values has at
most 16 significant bits and an exponent within float64's range, so `x * y`
is exact in float64, and the float64 sum of it and the FP32 accumulator,
rounded again to 24 bits, is the correctly rounded sum (double rounding is
innocuous for the sum of two numbers of at most 24 bits computed with
53 >= 2 * 24 + 2 bits: Figueroa 1995).  The flush of tiny results and the
NaN rules are applied explicitly, so neither depends on the MXCSR modes of
the thread that runs the ops (TensorFlow's CPU threads flush denormals).

This is a loop of K steps over the whole [m, n] output: exact, but far slower
than the kernel; it exists so that a model whose policy uses the "bf16_dot"
accumulator computes the same numbers wherever TensorFlow runs.

>>> import tensorflow as tf
>>> from tf_lowprec.gemm import tf_bf16 as tf_bf16_gemm
>>> tf_bf16_gemm.matmul(tf.constant([[1.0, 2.0]]), tf.constant([[3.0], [4.0]])).numpy()
array([[11.]], dtype=float32)
"""

import tensorflow as tf

from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import tf_rounding

_MIN_NORMAL = 2.0**-126
# Tininess is detected after rounding to 24 bits with an unbounded exponent:
# sums of magnitude >= 2^-126 - 2^-151 round up to 2^-126 and are kept.
_FLUSH_BELOW = 2.0**-126 - 2.0**-151
# The NaN an invalid operation (Inf * 0, Inf - Inf) produces: 0xFFC00000.
_DEFAULT_NAN_BITS = -4194304  # int32 view of 0xFFC00000


def _default_nan(like):
    return tf.bitcast(tf.fill(tf.shape(like), tf.constant(_DEFAULT_NAN_BITS, tf.int32)),
                      tf.float32)


def _step(acc, x32, y32, x64, y64):
    """fl(acc + x * y): one rounding, FTZ after rounding, the kernel's NaN rules."""
    total = tf.cast(acc, tf.float64) + x64 * y64
    rounded = tf.cast(total, tf.float32)
    magnitude = tf.abs(total)
    # Kept sums below 2^-126 round up to 2^-126 (a float32 cast would give a
    # subnormal, or zero under FTZ); smaller ones flush to zero with their sign.
    rounded = tf.where(magnitude < _MIN_NORMAL,
                       tf.cast(tf.sign(total) * _MIN_NORMAL, tf.float32), rounded)
    rounded = tf.where(magnitude < _FLUSH_BELOW, tf.cast(total * 0.0, tf.float32), rounded)
    nan = tf.where(tf.math.is_nan(x32), x32 + tf.zeros_like(acc),
                   tf.where(tf.math.is_nan(y32), y32 + tf.zeros_like(acc),
                            tf.where(tf.math.is_nan(acc), acc, _default_nan(acc))))
    return tf.where(tf.math.is_nan(total), nan, rounded)


def _bf16_operand(x):
    """x rounded to BF16 (nearest even), subnormals read as signed zeros (DAZ)."""
    x = tf_rounding.round_to_format(x, formats_lib.BF16)
    return tf.where(tf.abs(x) < _MIN_NORMAL, x * 0.0, x)


def matmul(a, b, transpose_a=False, transpose_b=False):
    """`bf16_matmul`'s product of float32 `a` [..., m, k] and `b` [..., k, n]."""
    a = tf.convert_to_tensor(a, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    if transpose_a:
        a = tf.linalg.matrix_transpose(a)
    if transpose_b:
        b = tf.linalg.matrix_transpose(b)
    a, b = _bf16_operand(a), _bf16_operand(b)
    k = tf.shape(a)[-1]
    # K padded to even length with +0, then visited pair by pair, odd element first.
    padded = k + k % 2
    a = tf.pad(a, tf.concat([tf.zeros([tf.rank(a) - 1, 2], tf.int32), [[0, k % 2]]], 0))
    b = tf.pad(b, tf.concat([tf.zeros([tf.rank(b) - 2, 2], tf.int32), [[0, k % 2], [0, 0]]], 0))
    # (limit padded + 1: the same pairs, and an empty range rather than an error for K = 0)
    order = tf.reshape(tf.stack([tf.range(1, padded + 1, 2), tf.range(0, padded, 2)], 1), [-1])
    columns = tf.gather(a, order, axis=-1)   # [..., m, K]
    rows = tf.gather(b, order, axis=-2)      # [..., K, n]
    batch = tf.broadcast_dynamic_shape(tf.shape(a)[:-2], tf.shape(b)[:-2])
    out_shape = tf.concat([batch, tf.shape(a)[-2:-1], tf.shape(b)[-1:]], 0)
    acc = tf.zeros(out_shape, tf.float32)

    def body(i, acc):
        x32 = tf.gather(columns, i, axis=-1)[..., :, None]
        y32 = tf.gather(rows, i, axis=-2)[..., None, :]
        return i + 1, _step(acc, x32, y32, tf.cast(x32, tf.float64), tf.cast(y32, tf.float64))

    _, acc = tf.while_loop(lambda i, _: i < padded, body, (tf.constant(0), acc),
                           parallel_iterations=1)
    return acc
