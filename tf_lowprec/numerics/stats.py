"""What a number format does to a tensor: underflow, overflow, subnormals.

Used by the `PrecisionMonitor` callback and useful on its own:

>>> import tensorflow as tf, tf_lowprec as lp
>>> s = lp.precision_stats(tf.constant([1e-9, 1.0, 500.0, 0.0]), lp.E4M3)
>>> {k: float(v) for k, v in s.items()}
{'underflow': 0.3333333432674408, 'overflow': 0.3333333432674408, 'subnormal': 0.0, 'nonfinite': 0.0}
"""

import tensorflow as tf

from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib

STAT_NAMES = ("underflow", "overflow", "subnormal", "nonfinite")


def precision_stats(x, fmt, rounding="nearest_even", *, implementation="auto"):
    """Fractions of a tensor's values that the format loses or distorts.

    Denominators are the non-zero finite values of `x` (so an all-zero
    tensor reports zeros), except for `nonfinite`, which is over all values.

    Returns a dict of float32 scalars:
      underflow: non-zero finite values that round to zero.
      overflow: finite values whose magnitude exceeds the format's largest
        finite value (they saturate or become Inf/NaN, per the format's
        overflow mode).  Always 0 for DFP formats, whose exponent follows the
        data.
      subnormal: non-zero finite values that round to a non-zero subnormal.
      nonfinite: NaN and ±Inf values (before rounding).
    """
    fmt = formats_lib.get(fmt)
    x = tf.convert_to_tensor(x, dtype_hint=tf.float32)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    y = rounding_lib.quantize(x, fmt, rounding, seed=0, implementation=implementation)
    finite = tf.math.is_finite(x)
    nonzero = tf.logical_and(finite, tf.not_equal(x, 0.0))
    count = tf.reduce_sum(tf.cast(nonzero, tf.float32))
    total = tf.cast(tf.size(x), tf.float32)

    def fraction(mask, denominator):
        return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(mask, tf.float32)), denominator)

    underflow = tf.logical_and(nonzero, tf.equal(y, 0.0))
    if fmt.fixed_range:
        overflow = tf.logical_and(finite, tf.abs(x) > fmt.max_value)
        abs_y = tf.abs(y)
        subnormal = tf.logical_and(
            nonzero, tf.logical_and(abs_y > 0.0, abs_y < fmt.min_normal)
        )
    else:
        overflow = tf.zeros_like(finite)
        subnormal = tf.zeros_like(finite)
    return {
        "underflow": fraction(underflow, count),
        "overflow": fraction(overflow, count),
        "subnormal": fraction(subnormal, count),
        "nonfinite": fraction(tf.logical_not(finite), total),
    }
