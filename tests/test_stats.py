"""lp.precision_stats on hand-built tensors with known counts."""

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp


def test_counts_on_hand_built_tensor_e4m3():
    fmt = lp.E4M3  # min subnormal 2^-9, min normal 2^-6, max 448
    values = [
        0.0, 0.0,                 # zeros: not in the denominator
        2.0**-11, -(2.0**-11),    # underflow to zero
        2.0**-8, 3 * 2.0**-9,     # subnormal results
        1.0, -2.5, 7.0,           # normal
        500.0, -1e6,              # overflow (saturate)
        np.nan, np.inf,           # non-finite
    ]
    s = {k: float(v) for k, v in lp.precision_stats(tf.constant(values, tf.float32), fmt).items()}
    nonzero_finite = 9
    assert s["underflow"] == pytest.approx(2 / nonzero_finite)
    assert s["subnormal"] == pytest.approx(2 / nonzero_finite)
    assert s["overflow"] == pytest.approx(2 / nonzero_finite)
    assert s["nonfinite"] == pytest.approx(2 / len(values))


def test_tie_at_half_min_subnormal_underflows_and_just_above_does_not():
    half = 2.0**-25  # half of FP16's smallest subnormal 2^-24: ties to even (zero)
    x = tf.constant([half, np.nextafter(np.float32(half), np.float32(1))], tf.float32)
    s = lp.precision_stats(x, lp.FP16)
    assert float(s["underflow"]) == pytest.approx(0.5)
    assert float(s["subnormal"]) == pytest.approx(0.5)


def test_dfp_underflow_only():
    x = tf.constant([1.0, 2.0**-20, -(2.0**-20), 3.0], tf.float32)
    s = lp.precision_stats(x, lp.DFP16)  # E = -14: 2^-20 < half a step rounds to zero
    assert float(s["underflow"]) == pytest.approx(0.5)
    assert float(s["overflow"]) == 0.0 and float(s["subnormal"]) == 0.0


def test_all_zero_tensor_reports_zeros():
    s = lp.precision_stats(tf.zeros([5]), lp.BF16)
    assert all(float(v) == 0.0 for v in s.values())
