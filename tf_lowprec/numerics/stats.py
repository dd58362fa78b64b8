"""What a number format does to a tensor: underflow, overflow, subnormals.

Used by the `PrecisionMonitor` callback and useful on its own:

>>> import tensorflow as tf, tf_lowprec as lp
>>> s = lp.precision_stats(tf.constant([1e-9, 1.0, 500.0, 0.0]), lp.E4M3)
>>> {k: float(v) for k, v in s.items()}
{'underflow': 0.3333333432674408, 'overflow': 0.3333333432674408, 'subnormal': 0.0, 'nonfinite': 0.0}

Block-scaled formats also report their blocks (`BLOCK_STAT_NAMES`):

>>> s = lp.precision_stats(tf.constant([[500.0, 1.0], [0.25, 0.5]]), lp.MXFP8_E4M3)
>>> {k: float(v) for k, v in s.items() if k in lp.numerics.stats.BLOCK_STAT_NAMES}
{'clipped_blocks': 0.5, 'scale_exponent_min': -9.0, 'scale_exponent_max': 0.0}
"""

import tensorflow as tf

from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib
from tf_lowprec.numerics import tf_block_scaling

STAT_NAMES = ("underflow", "overflow", "subnormal", "nonfinite")
# The statistics of block-scaled formats' blocks, besides STAT_NAMES.
BLOCK_STAT_NAMES = ("clipped_blocks", "scale_exponent_min", "scale_exponent_max")


def stat_names(fmt):
    """The keys `precision_stats` returns for `fmt`."""
    fmt = formats_lib.get(fmt)
    return STAT_NAMES + (BLOCK_STAT_NAMES if fmt.kind == "block" else ())


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

    For a `BlockFormat` (blocked along `fmt.axis`), overflow counts the values
    beyond the largest value of their block (the element format's largest
    value times the block's decoded scale: they are clipped), subnormal those
    rounded to a subnormal element, and three more entries describe the
    blocks that hold a non-zero finite value and no NaN scale:
      clipped_blocks: the fraction of them with a clipped value.
      scale_exponent_min, scale_exponent_max: floor(log2) of their smallest
        and largest decoded scale, the spread the scale format must cover
        (0 when there is no such block).
    """
    fmt = formats_lib.get(fmt)
    x = tf.convert_to_tensor(x, dtype_hint=tf.float32)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    if fmt.kind == "block":
        return _block_stats(x, fmt, rounding, implementation)
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


def _fraction(mask, denominator):
    return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(mask, tf.float32)), denominator)


def _block_stats(x, fmt, rounding, implementation):
    """precision_stats of a block-scaled format, in exact float64 arithmetic on bit patterns."""
    y, scales = rounding_lib.quantize_block_scaled(x, fmt, rounding, seed=0, return_scales=True,
                                                   implementation=implementation)
    element = fmt.element
    layout = tf_block_scaling.BlockLayout(x, fmt.axis % x.shape.rank, fmt.block_size)
    magnitude_bits = tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 0x7FFFFFFF)
    finite = tf.math.is_finite(x)
    nonzero = tf.logical_and(finite, tf.not_equal(x, 0.0))
    scales = layout.moved(scales)  # the blocked axis last, as to_blocks gives blocks
    usable_scale = tf.logical_and(tf.math.is_finite(scales), scales > 0.0)  # scales are >= 0

    def as_float64(t):  # exact, whatever the flush-to-zero mode
        bits = tf.cast(tf.bitwise.bitwise_and(tf.bitcast(t, tf.int32), 0x7FFFFFFF), tf.int64)
        return tf_block_scaling.bits_to_float64(bits)

    safe_scales = tf.where(usable_scale, scales, tf.ones_like(scales))
    element_scale = layout.to_elements(as_float64(safe_scales))
    in_scaled_block = tf.logical_and(nonzero, layout.to_elements(usable_scale))
    magnitude = tf.where(finite, tf_block_scaling.bits_to_float64(
        tf.cast(magnitude_bits, tf.int64)), tf.zeros_like(element_scale))
    clipped = tf.logical_and(in_scaled_block, magnitude > element.max_value * element_scale)
    abs_y = as_float64(tf.where(tf.math.is_finite(y), y, tf.zeros_like(y)))
    subnormal = tf.logical_and(in_scaled_block, tf.logical_and(
        abs_y > 0, abs_y < element.min_normal * element_scale))
    count = tf.reduce_sum(tf.cast(nonzero, tf.float32))
    block_has_value = tf.reduce_any(layout.to_blocks(nonzero), axis=-1)
    counted_blocks = tf.logical_and(block_has_value, usable_scale)
    block_clipped = tf.reduce_any(layout.to_blocks(clipped), axis=-1)
    exponents = tf.cast(tf_block_scaling.floor_log2(tf.cast(
        tf.bitcast(safe_scales, tf.int32), tf.int64)), tf.float32)
    any_block = tf.reduce_any(counted_blocks)
    big, small = tf.float32.max, tf.float32.min
    return {
        "underflow": _fraction(tf.logical_and(nonzero, tf.equal(y, 0.0)), count),
        "overflow": _fraction(clipped, count),
        "subnormal": _fraction(subnormal, count),
        "nonfinite": _fraction(tf.logical_not(finite), tf.cast(tf.size(x), tf.float32)),
        "clipped_blocks": _fraction(tf.logical_and(block_clipped, counted_blocks),
                                    tf.reduce_sum(tf.cast(counted_blocks, tf.float32))),
        "scale_exponent_min": tf.where(any_block, tf.reduce_min(
            tf.where(counted_blocks, exponents, big)), 0.0),
        "scale_exponent_max": tf.where(any_block, tf.reduce_max(
            tf.where(counted_blocks, exponents, small)), 0.0),
    }
