"""The rounding op and `lp.FloatFormat` accept exactly the same formats.

The op validates its attributes itself (number_formats.h: DeriveFloatGrid),
so a raw-op caller cannot round to a format the Python class refuses (which
once rounded +-3 to +-0 for exponent_bits=1, mantissa_bits=0,
exponent_bias=-1000).  Every combination below is tried on both sides.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec._op_library import load

_NAN_OVERFLOW = [("ieee", "infinity"), ("ieee", "saturate"), ("ieee", "nan"),
                 ("all_ones", "saturate"), ("all_ones", "nan"),
                 ("negative_zero", "saturate"), ("negative_zero", "nan"), ("none", "saturate")]
_BIASES = [-2**31, -2**20 - 1, -2**20, -1000, -130, -127, -126, -125, -1, 0, 1, 3, 7, 11, 15,
           126, 127, 128, 2**20, 2**20 + 1, 2**31 - 1]


def _python_accepts(e, m, bias, nan, overflow, subnormals):
    try:
        lp.FloatFormat(e, m, exponent_bias=bias, subnormals=subnormals,
                       infinities=nan == "ieee", nan=nan, overflow=overflow)
        return True
    except ValueError:
        return False


def _op_accepts(e, m, bias, nan, overflow, subnormals):
    try:
        load().lowprec_round_to_float_format(
            tf.constant([3.0, -3.0]), tf.zeros([2], tf.int64), exponent_bits=e,
            mantissa_bits=m, exponent_bias=bias, subnormals=subnormals, nan_encoding=nan,
            overflow=overflow)
        return True
    except tf.errors.InvalidArgumentError:
        return False


@pytest.mark.parametrize("exponent_bits", [1, 2, 4, 5, 8])
def test_op_and_python_accept_the_same_formats(exponent_bits):
    disagreements = []
    for m, bias, (nan, overflow), subnormals in itertools.product(
            [0, 1, 3, 23], _BIASES, _NAN_OVERFLOW, [True, False]):
        args = (exponent_bits, m, bias, nan, overflow, subnormals)
        if _python_accepts(*args) != _op_accepts(*args):
            disagreements.append(args)
    assert not disagreements, f"{len(disagreements)} disagreements, e.g. {disagreements[:5]}"


def test_the_reported_format_is_refused_by_both():
    args = (1, 0, -1000, "ieee", "infinity", True)
    assert not _python_accepts(*args)
    assert not _op_accepts(*args)


def test_an_accepted_unusual_bias_rounds_as_worked_by_hand():
    """Bias -3 with 2 exponent and 1 mantissa bits: subnormal step 8, normals 16, 24, 32, 48."""
    fmt = lp.FloatFormat(2, 1, exponent_bias=-3)
    x = np.array([3.0, -5.0, 24.0, 40.0, 47.0, 1e6], np.float32)
    expected = np.array([0.0, -8.0, 24.0, 32.0, 48.0, np.inf], np.float32)  # 40: tie to even
    np.testing.assert_array_equal(lp.round_to_format(x, fmt).numpy(), expected)
