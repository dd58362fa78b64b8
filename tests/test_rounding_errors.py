"""Bad arguments fail clearly; empty tensors and scalars work.

Python-level checks raise ValueError naming the argument; the raw ops
validate their attributes and inputs themselves and raise
InvalidArgumentError (for callers that bypass the Python wrappers).
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from rounding_testing import quantize_dfp_everywhere, round_everywhere
from tf_lowprec import _op_library

BF16_ATTRS = dict(exponent_bits=8, mantissa_bits=7, exponent_bias=127)
SEED = tf.constant([1, 2], tf.int64)


def raw_round(x=(1.0, 2.0), seed=SEED, **attrs):
    return _op_library.load().lowprec_round_to_float_format(
        tf.constant(x, tf.float32), seed, **{**BF16_ATTRS, **attrs}
    )


def raw_dfp(x=(1.0, 2.0), seed=SEED, **attrs):
    return _op_library.load().lowprec_quantize_dfp(tf.constant(x, tf.float32), seed, **attrs)


def test_raw_ops_accept_valid_attrs():
    np.testing.assert_array_equal(raw_round().numpy(), [1.0, 2.0])
    y, e = raw_dfp(bits=8)
    np.testing.assert_array_equal(y.numpy(), [1.0, 2.0])
    assert e.numpy().tolist() == [-5]


@pytest.mark.parametrize("attrs,message", [
    ({"exponent_bits": 0}, "exponent_bits must be in 1..8"),
    ({"exponent_bits": 9}, "exponent_bits must be in 1..8"),
    ({"mantissa_bits": 40}, "mantissa_bits must be in 0..23"),
    ({"mantissa_bits": -1}, "mantissa_bits must be in 0..23"),
    ({"exponent_bias": 128}, "exponent_bias too large"),
    ({"exponent_bias": 100, "exponent_bits": 8, "mantissa_bits": 7,
      "nan_encoding": "none", "overflow": "saturate"}, "exponent_bias too small"),
    ({"nan_encoding": "all_ones", "overflow": "infinity"}, "overflow='infinity'"),
    ({"nan_encoding": "none", "overflow": "nan"}, "overflow='nan'"),
    ({"random_bits": 0}, "random_bits must be in 1..32"),
    ({"random_bits": 33}, "random_bits must be in 1..32"),
    ({"rounding": "up"}, "rounding"),
    ({"isa": "sse2"}, "isa"),
    ({"nan_encoding": "signalling"}, "nan_encoding"),
])
def test_raw_round_op_rejects_bad_attrs(attrs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        raw_round(**attrs)


@pytest.mark.parametrize("seed", [
    tf.constant([1, 2, 3], tf.int64),
    tf.constant([[1, 2]], tf.int64),
    tf.constant(5, tf.int64),
])
def test_raw_ops_reject_bad_seed_shape(seed):
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must be an int64 tensor"):
        raw_round(seed=seed, rounding="stochastic")
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must be an int64 tensor"):
        raw_dfp(seed=seed)


def test_raw_ops_reject_bad_seed_shape_in_graphs():
    # Inside tf.function the shape function rejects it before any kernel runs.
    @tf.function
    def run():
        return raw_round(seed=tf.constant([1, 2, 3], tf.int64))

    with pytest.raises(ValueError, match="Dimension must be 2 but is 3"):
        run()


@pytest.mark.parametrize("attrs,message", [
    ({"bits": 1}, "bits must be in 2..24"),
    ({"bits": 25}, "bits must be in 2..24"),
    ({"bits": 16, "extra_shift": 15}, "extra_shift must be in 0..bits-2"),
    ({"bits": 16, "extra_shift": -1}, "extra_shift must be in 0..bits-2"),
    ({"bits": 16, "block_size": -2}, "block_size must be 0"),
    ({"bits": 16, "block_size": 2, "axis": 1}, "axis must be in"),
    ({"bits": 16, "random_bits": 0}, "random_bits must be in 1..32"),
])
def test_raw_dfp_op_rejects_bad_attrs(attrs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        raw_dfp(**attrs)


def test_raw_dfp_op_rejects_blocks_of_a_scalar():
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank >= 1"):
        raw_dfp(x=3.0, bits=16, block_size=4)


# ----------------------------------------------------------------------------
# Python wrappers: ValueError naming the argument.


@pytest.mark.parametrize("kwargs,message", [
    ({"rounding": "nearest"}, "rounding must be one of"),
    ({"rounding": "stochastic", "seed": True}, "seed must be"),
    ({"rounding": "stochastic", "seed": (1, 2, 3)}, "seed must be an int or a pair"),
    ({"rounding": "stochastic", "seed": (1, 2.5)}, "seed must be an int or a pair"),
    ({"rounding": "stochastic", "seed": 1.5}, "seed must be"),
    ({"rounding": "stochastic", "seed": tf.constant([1.0, 2.0])}, "seed must be"),
    ({"rounding": "stochastic", "seed": tf.constant([1, 2, 3])}, "seed must be"),
    ({"rounding": "stochastic", "random_bits": 33}, "random_bits must be an int in 1..32"),
    ({"rounding": "stochastic", "random_bits": 0}, "random_bits must be an int in 1..32"),
    ({"random_bits": True}, "random_bits must be an int in 1..32"),
    ({"implementation": "cuda"}, "implementation must be one of"),
    ({"isa": "neon"}, "isa must be"),
    ({"backward_format": "bf17"}, "unknown format 'bf17'"),
    ({"backward_format": "bf16", "backward_rounding": "up"}, "backward_rounding must be one of"),
])
def test_round_to_format_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lp.round_to_format(tf.constant([1.0]), lp.BF16, **kwargs)


def test_round_to_format_rejects_non_float32_and_wrong_formats():
    with pytest.raises(ValueError, match="x must be float32, got float64"):
        lp.round_to_format(tf.constant([1.0], tf.float64), lp.BF16)
    with pytest.raises(ValueError, match="x must be float32, got bfloat16"):
        lp.round_to_format(tf.constant([1.0], tf.bfloat16), lp.BF16)
    with pytest.raises(ValueError, match="fmt must be a FloatFormat"):
        lp.round_to_format(tf.constant([1.0]), lp.DFP16)
    with pytest.raises(ValueError, match="unknown format"):
        lp.round_to_format(tf.constant([1.0]), "fp12")


def test_quantize_dfp_rejects():
    x = tf.constant([[1.0, 2.0]])
    with pytest.raises(ValueError, match="fmt must be a DfpFormat"):
        lp.quantize_dfp(x, lp.BF16)
    with pytest.raises(ValueError, match="rounding must be one of"):
        lp.quantize_dfp(x, rounding="floor")
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        lp.quantize_dfp(x, lp.DfpFormat(16, block_size=2, axis=2))
    with pytest.raises(ValueError, match="needs x of known rank >= 1"):
        lp.quantize_dfp(tf.constant(1.0), lp.DfpFormat(16, block_size=2))
    with pytest.raises(ValueError, match="return_exponents must be True or False"):
        lp.quantize_dfp(x, return_exponents=1)
    with pytest.raises(ValueError, match="return_exponents=True cannot be combined"):
        lp.quantize_dfp(x, return_exponents=True, backward_format="bf16")
    with pytest.raises(ValueError, match="x must be float32"):
        lp.quantize_dfp(tf.constant([1.0], tf.float64))
    with pytest.raises(ValueError, match="random_bits must be an int in 1..32"):
        lp.quantize_dfp(x, rounding="stochastic", random_bits=33)


# ----------------------------------------------------------------------------
# Empty tensors and scalars, on every implementation.


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (0, 5)])
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic", "toward_zero"])
def test_round_to_format_empty_and_scalar(shape, rounding):
    x = np.full(shape, 1.0 + 2.0**-9, np.float32)
    y = round_everywhere(x, lp.BF16, rounding, seed=(4, 5))
    assert y.shape == shape
    if rounding != "stochastic":
        np.testing.assert_array_equal(y, np.full(shape, 1.0, np.float32))


@pytest.mark.parametrize("shape,fmt,exponent_shape", [
    ((), lp.DFP16, ()),
    ((0,), lp.DFP16, (1,)),
    ((3, 0), lp.DFP16, (1, 1)),
    ((0,), lp.DfpFormat(16, block_size=4), (0,)),
    ((3, 0), lp.DfpFormat(16, block_size=4, axis=1), (3, 0)),
    ((3, 0), lp.DfpFormat(16, block_size=4, axis=0), (1, 0)),
    ((0, 5), lp.DfpFormat(16, block_size=2, axis=1), (0, 3)),
    ((1,), lp.DfpFormat(16, block_size=4), (1,)),
])
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
def test_quantize_dfp_empty_and_scalar(shape, fmt, exponent_shape, rounding):
    x = np.full(shape, 0.3, np.float32)
    y, e = quantize_dfp_everywhere(x, fmt, rounding, seed=(4, 5))
    assert y.shape == shape and e.shape == exponent_shape
    if x.size:
        # One element: the shared exponent comes from the element itself.
        assert e.reshape(-1)[0] == np.floor(np.log2(0.3)) - 14
    elif e.size:
        assert np.all(e == -1024)  # nothing to scale


def test_scalar_specials():
    for value in (np.inf, -np.inf, np.nan, -0.0, 0.0):
        x = np.float32(value)
        round_everywhere(x, lp.E4M3)
        quantize_dfp_everywhere(x, lp.DFP16)
