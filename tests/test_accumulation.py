"""lp.matmul: GEMMs whose sums are rounded to a float format, against an exact reference.

The reference (`tf_lowprec.gemm.accumulation_reference`) sums Fractions and
rounds them from the format's definition; the kernels (every tier) and the
stock-TF twin must give its bits exactly.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tests import kernel_tiers
from tf_lowprec.gemm import accumulation_reference as reference

TIERS = kernel_tiers.params("accumulation_gemm")


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def _assert_same_bits(actual, expected):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    mismatch = np.flatnonzero(_bits(actual) != _bits(expected))
    assert mismatch.size == 0, (
        f"{mismatch.size} of {actual.size} differ, first at {mismatch[:5]}: "
        f"{actual.reshape(-1)[mismatch[:5]]} != {expected.reshape(-1)[mismatch[:5]]}")


def _operands(rng, shape, spread=6):
    """float32 values with full 24-bit significands over 2^-spread .. 2^spread."""
    mantissa = rng.uniform(1.0, 2.0, shape)
    exponent = rng.integers(-spread, spread + 1, shape)
    sign = rng.choice([-1.0, 1.0], shape)
    return (sign * np.ldexp(mantissa, exponent)).astype(np.float32)


@pytest.mark.parametrize("isa", TIERS)
def test_swamping_and_its_cure_exactly(isa):
    ones_row, ones_column = np.ones([1, 4096], np.float32), np.ones([4096, 1], np.float32)
    unchunked = lp.matmul(ones_row, ones_column, accumulator=lp.FP16, isa=isa,
                          implementation="op")
    chunked = lp.matmul(ones_row, ones_column, accumulator=lp.FP16, chunk_size=64, isa=isa,
                        implementation="op")
    assert unchunked.numpy().tolist() == [[2048.0]]
    assert chunked.numpy().tolist() == [[4096.0]]


def test_swamping_in_the_tf_twin():
    """BF16 sums of ones stall at 2^8 = 256 (the twin's K-step loop is slow: a short K)."""
    @tf.function
    def twin():
        ones_row, ones_column = tf.ones([1, 300]), tf.ones([300, 1])
        return [lp.matmul(ones_row, ones_column, accumulator=lp.BF16, chunk_size=chunk_size,
                          implementation="tf") for chunk_size in (None, 64)]

    unchunked, chunked = twin()
    assert unchunked.numpy().tolist() == [[256.0]]
    assert chunked.numpy().tolist() == [[300.0]]


# (format, chunk_size, transpose_a, transpose_b, a batch, b batch, m, k, n)
CASES = [
    pytest.param(lp.FP16, None, False, False, 1, 1, 3, 37, 11, id="fp16"),
    pytest.param(lp.FP16, 5, True, False, 2, 2, 2, 23, 9, id="fp16-chunk5-ta-batch"),
    pytest.param(lp.FP16, 4, False, True, 1, 3, 3, 17, 10, id="fp16-chunk4-tb-broadcast"),
    pytest.param(lp.BF16, None, True, True, 2, 1, 2, 29, 17, id="bf16-ta-tb"),
    pytest.param(lp.BF16, 8, False, False, 1, 1, 4, 33, 9, id="bf16-chunk8"),
    pytest.param(lp.E5M2, 3, False, False, 1, 1, 2, 13, 8, id="e5m2-chunk3"),
    pytest.param(lp.E4M3, None, False, False, 1, 1, 2, 13, 8, id="e4m3-saturate"),
    pytest.param(lp.FP32, 7, False, False, 1, 1, 2, 31, 8, id="fp32-chunk7"),
    pytest.param(lp.E5M2FNUZ, None, False, True, 1, 1, 2, 9, 8, id="e5m2fnuz"),
    pytest.param(lp.BF16_INTEL, None, False, False, 1, 1, 2, 11, 8, id="bf16-intel-flush"),
]


def _case_operands(seed, ta, tb, batch_a, batch_b, m, k, n, spread=6):
    rng = np.random.default_rng(seed)
    a = _operands(rng, (batch_a, k, m) if ta else (batch_a, m, k), spread)
    b = _operands(rng, (batch_b, n, k) if tb else (batch_b, k, n), spread)
    return a, b


@pytest.mark.parametrize("isa", TIERS)
@pytest.mark.parametrize("fmt,chunk,ta,tb,batch_a,batch_b,m,k,n", CASES)
def test_nearest_even_matches_the_exact_reference(isa, fmt, chunk, ta, tb, batch_a, batch_b,
                                                   m, k, n):
    a, b = _case_operands(len(repr(fmt)) + k, ta, tb, batch_a, batch_b, m, k, n)
    actual = lp.matmul(a, b, accumulator=fmt, chunk_size=chunk, transpose_a=ta,
                       transpose_b=tb, isa=isa, implementation="op")
    _assert_same_bits(actual, reference.matmul(a, b, fmt, chunk, transpose_a=ta,
                                               transpose_b=tb))


def _special_operands():
    """Rows hitting NaN, Inf, Inf - Inf, overflow to Inf and a double-rounding trap."""
    k = 6
    a = np.ones((1, 6, k), np.float32)
    b = np.ones((1, k, 9), np.float32)
    a[0, 0, 2] = np.nan                      # row 0: NaN product
    a[0, 1, 1] = np.inf                      # row 1: Inf, and Inf * 0 in column 3
    b[0, 1, 3] = 0.0
    a[0, 2, 0], a[0, 2, 4] = np.inf, -np.inf  # row 2: Inf - Inf
    a[0, 3, :] = 30000.0                     # row 3: FP16 overflow on the 3rd addition
    a[0, 4, :2] = [1.0, 1.0 + 2.0**-23]      # row 4: fp32(1 + 2^-11 + 2^-34) is an FP16 tie
    a[0, 4, 2:] = 0.0
    b[0, :2, 5] = [1.0, 2.0**-11]
    a[0, 5, :] = [-0.0, 0.0, -0.0, 0.0, -0.0, 0.0]  # row 5: signed zeros
    b[0, :, 6] = -1.0
    b[0, :, 7] = 2.0**-20                    # tiny products: below FP16's subnormals
    b[0, :, 8] = 1e-7
    return a, b


@pytest.mark.parametrize("isa", TIERS)
@pytest.mark.parametrize("fmt", [lp.FP16, lp.BF16, lp.E4M3], ids=["fp16", "bf16", "e4m3"])
def test_nan_inf_overflow_and_ties_match_the_reference(isa, fmt):
    a, b = _special_operands()
    for chunk in (None, 2):
        actual = lp.matmul(a, b, accumulator=fmt, chunk_size=chunk, isa=isa,
                           implementation="op").numpy()
        _assert_same_bits(actual, reference.matmul(a, b, fmt, chunk))
    if fmt == lp.FP16:
        assert np.isnan(actual[0, 0, 0]) and actual[0, 1, 0] == np.inf
        assert np.isnan(actual[0, 1, 3]) and np.isnan(actual[0, 2, 0])
        assert actual[0, 3, 0] == np.inf
        unchunked = lp.matmul(a, b, accumulator=fmt, isa=isa, implementation="op").numpy()
        # The exact sum 1 + 2^-11 + 2^-34 rounds up; rounding via float32 would tie to 1.
        assert unchunked[0, 4, 5] == 1.0 + 2.0**-10


@pytest.mark.parametrize("isa", TIERS)
def test_long_sums_with_many_ties_agree_across_tiers_and_reference(isa):
    """Integer-spaced and full-significand terms: the fast path's tie recomputation is exercised."""
    rng = np.random.default_rng(7)
    a = np.round(_operands(rng, (1, 4, 160), spread=3) * 64) / 64
    a[:, ::2] = _operands(rng, (1, 2, 160), spread=2)
    b = _operands(rng, (1, 160, 12), spread=2)
    for fmt, chunk in ((lp.FP16, 16), (lp.BF16, None)):
        actual = lp.matmul(a, b, accumulator=fmt, chunk_size=chunk, isa=isa,
                           implementation="op")
        _assert_same_bits(actual, reference.matmul(a, b, fmt, chunk))


@pytest.mark.parametrize("isa", TIERS)
def test_short_operands_match_the_reference(isa):
    """FP8/BF16-valued operands (exact float32 products: the kernels' short-operand path)."""
    rng = np.random.default_rng(13)
    a = lp.round_to_format(_operands(rng, (2, 5, 40), spread=4), lp.E5M2).numpy()
    b = lp.round_to_format(_operands(rng, (1, 40, 10), spread=4), lp.BF16).numpy()
    a[0, 0, :] = 64.0                   # exact FP16 ties beyond 2048
    a[0, 1, :] = 30000.0                # FP16 overflow to Inf
    a[0, 2, :] = 2.0**-20               # FP16 subnormal sums
    a[1, 0, ::2], a[1, 0, 1::2] = -0.0, 0.0
    b[0, :, 0] = 1.0
    for fmt, chunk in ((lp.FP16, None), (lp.FP16, 16), (lp.BF16, 7), (lp.E5M2, None)):
        actual = lp.matmul(a, b, accumulator=fmt, chunk_size=chunk, isa=isa,
                           implementation="op")
        _assert_same_bits(actual, reference.matmul(a, b, fmt, chunk))


@pytest.mark.parametrize("isa", TIERS)
def test_short_operands_edges_match_the_reference(isa):
    """The short-operand path's edges: inexact float32 sums with either term the larger,
    row and column tails of the register tiles, chunks not dividing K, BF16 sums beyond
    2^111 (beyond the float-addition rounding's range) and overflow mid-chunk."""
    rng = np.random.default_rng(17)
    a = lp.round_to_format(_operands(rng, (1, 7, 133), spread=12), lp.E5M2).numpy()
    b = lp.round_to_format(_operands(rng, (1, 133, 21), spread=12), lp.BF16).numpy()
    for fmt, chunk in ((lp.FP16, 10), (lp.BF16, None), (lp.E5M2, 64)):
        actual = lp.matmul(a, b, accumulator=fmt, chunk_size=chunk, isa=isa,
                           implementation="op")
        _assert_same_bits(actual, reference.matmul(a, b, fmt, chunk))
    big_a = np.full((1, 3, 300), 2.0**60, np.float32)
    big_a[0, 1, 150:] = -(2.0**60)      # back below 2^111 after reaching 2^122
    big_a[0, 2, :] = 2.0**59 * 1.75     # (operands within 2^60: the kernels' short path)
    big_b = lp.round_to_format(np.abs(_operands(rng, (1, 300, 5), spread=0)) * 2.0**55,
                               lp.BF16).numpy()
    big_b[0, :, 4] = 2.0**60            # sums overflow BF16 inside a chunk
    for chunk in (None, 290):
        actual = lp.matmul(big_a, big_b, accumulator=lp.BF16, chunk_size=chunk, isa=isa,
                           implementation="op").numpy()
        _assert_same_bits(actual, reference.matmul(big_a, big_b, lp.BF16, chunk))
        assert np.isinf(actual[0, [0, 2], 4]).all() and np.isfinite(actual[0, :, :4]).all()
        assert (np.abs(actual[0, 0, :4]) > 2.0**111).all()


def _midpoint_traps(m=13, k=70, n=21):
    """FP16-valued operands (exact float32 products) with two sums that float32 rounds onto
    an FP16 midpoint while the exact sum lies above it, in one tile among plain ones:
    (1 + 2^-10) - (1 - 2^-20) 2^-11 = 1 + 2^-11 + 2^-31 (the running sum the larger term)
    and 2^-24 + (1 + 2^-11) (the product the larger); both round up to 1 + 2^-10."""
    rng = np.random.default_rng(23)
    a = lp.round_to_format(_operands(rng, (1, m, k), spread=3), lp.E5M2).numpy()
    b = lp.round_to_format(_operands(rng, (1, k, n), spread=3), lp.E5M2).numpy()
    a[0, 7, :], b[0, :, 17] = 0.0, 0.0
    a[0, 7, :2], b[0, :2, 17] = [1 + 2.0**-10, -(1 - 2.0**-10) * 2.0**-11], [1, 1 + 2.0**-10]
    a[0, 8, :], b[0, :, 18] = 0.0, 0.0
    a[0, 8, 40:42], b[0, 40:42, 18] = [2.0**-12, 1 + 2.0**-11], [2.0**-12, 1]
    return a, b


@pytest.mark.parametrize("isa", TIERS)
def test_fast_path_fallbacks_match_the_reference(isa):
    """The short-operand kernel's boundaries: float32 sums that are inexact and land on a
    midpoint (that tile's chunk is recomputed), operands whose products are not float32
    values (one 24-bit element sends the whole GEMM to the general path), sums wider than
    24 bits below FP16's smallest normal, and BF16's integer rounding."""
    a, b = _midpoint_traps()
    for chunk in (None, 64, 8):
        actual = lp.matmul(a, b, accumulator=lp.FP16, chunk_size=chunk, isa=isa,
                           implementation="op").numpy()
        _assert_same_bits(actual, reference.matmul(a, b, lp.FP16, chunk))
        assert actual[0, 7, 17] == actual[0, 8, 18] == 1 + 2.0**-10
    wide = a.copy()
    wide[0, 0, 0] = 1 + 2.0**-23        # a product of 27 bits: not a float32
    _assert_same_bits(lp.matmul(wide, b, accumulator=lp.FP16, isa=isa, implementation="op"),
                      reference.matmul(wide, b, lp.FP16, None))
    rng = np.random.default_rng(29)
    tiny_a = lp.round_to_format(_operands(rng, (2, 9, 50), spread=14), lp.FP16).numpy()
    tiny_b = lp.round_to_format(_operands(rng, (1, 50, 19), spread=14), lp.FP16).numpy()
    for fmt, chunk in ((lp.FP16, None), (lp.FP16, 6), (lp.BF16, 16), (lp.E5M2, None)):
        actual = lp.matmul(tiny_a, tiny_b, accumulator=fmt, chunk_size=chunk, isa=isa,
                           implementation="op")
        _assert_same_bits(actual, reference.matmul(tiny_a, tiny_b, fmt, chunk))


@pytest.mark.parametrize("isa", TIERS)
def test_narrow_products_without_checks_match_the_reference(isa):
    """E5M2 x E5M2 and E4M3 x E5M2 products (at most 7 bits) into FP16 and BF16: the kernel
    skips its exactness and midpoint tests there (a proof, in ShortOperands), so wide exponent
    spreads (sums wider than 24 bits, subnormal FP16 sums, cancellation) must still give the
    reference's bits; K not a multiple of the chunk, tile tails."""
    rng = np.random.default_rng(31)
    for a_fmt, spread in ((lp.E5M2, 7), (lp.E4M3, 5)):
        a = lp.round_to_format(_operands(rng, (1, 11, 150), spread=spread), a_fmt).numpy()
        b = lp.round_to_format(_operands(rng, (1, 150, 19), spread=7), lp.E5M2).numpy()
        for fmt, chunk in ((lp.FP16, None), (lp.FP16, 64), (lp.BF16, 32)):
            actual = lp.matmul(a, b, accumulator=fmt, chunk_size=chunk, isa=isa,
                               implementation="op")
            _assert_same_bits(actual, reference.matmul(a, b, fmt, chunk))


@pytest.mark.parametrize("isa", TIERS)
def test_stochastic_rounding_matches_the_reference_and_is_reproducible(isa):
    a, b = _case_operands(3, False, True, 2, 1, 3, 21, 10)
    for chunk in (None, 4):
        actual = lp.matmul(a, b, accumulator=lp.FP16, chunk_size=chunk, rounding="stochastic",
                           seed=(5, 9), transpose_b=True, isa=isa, implementation="op")
        _assert_same_bits(actual, reference.matmul(a, b, lp.FP16, chunk, "stochastic",
                                                   seed=(5, 9), transpose_b=True))
    again = lp.matmul(a, b, accumulator=lp.FP16, chunk_size=4, rounding="stochastic",
                      seed=(5, 9), transpose_b=True, isa=isa, implementation="op")
    _assert_same_bits(again, actual)
    other = lp.matmul(a, b, accumulator=lp.FP16, chunk_size=4, rounding="stochastic",
                      seed=(5, 10), transpose_b=True, isa=isa, implementation="op")
    assert np.any(_bits(other) != _bits(actual))


def test_stochastic_rounding_is_independent_of_the_thread_split():
    """A product large enough for the pool to split it equals the single-graph twin."""
    rng = np.random.default_rng(11)
    a = _operands(rng, (96, 64), spread=3)
    b = _operands(rng, (64, 40), spread=3)
    options = dict(accumulator=lp.Accumulator(lp.BF16, chunk_size=16, rounding="stochastic"),
                   seed=(1, 2))
    kernel = lp.matmul(a, b, implementation="op", **options)
    twin = lp.matmul(a, b, implementation="tf", **options)
    _assert_same_bits(kernel, twin)


@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic", "toward_zero"])
def test_tf_twin_matches_the_reference(rounding):
    a, b = _special_operands()
    a2, b2 = _case_operands(4, True, False, 2, 1, 2, 9, 5)
    for fmt, chunk in ((lp.FP16, 2), (lp.E4M3, None)):
        for x, y, ta in ((a, b, False), (a2, b2, True)):
            twin = lp.matmul(x, y, accumulator=fmt, chunk_size=chunk, rounding=rounding,
                             seed=(3, 4), transpose_a=ta, implementation="tf")
            _assert_same_bits(twin, reference.matmul(x, y, fmt, chunk, rounding, seed=(3, 4),
                                                     transpose_a=ta))
            kernel = lp.matmul(x, y, accumulator=fmt, chunk_size=chunk, rounding=rounding,
                               seed=(3, 4), transpose_a=ta, implementation="op")
            _assert_same_bits(kernel, twin)


def test_empty_k_and_empty_outputs():
    z = lp.matmul(np.ones((2, 0), np.float32), np.ones((0, 3), np.float32), accumulator=lp.FP16)
    assert z.numpy().tolist() == [[0.0] * 3] * 2 and not np.signbit(z.numpy()).any()
    assert lp.matmul(np.ones((0, 4), np.float32), np.ones((4, 3), np.float32),
                     accumulator=lp.FP16).shape == (0, 3)


@pytest.mark.parametrize("implementation", ["op", "tf"])
def test_gradients_accumulate_in_the_same_format(implementation):
    rng = np.random.default_rng(5)
    x = tf.constant(_operands(rng, (2, 3, 40), spread=3))
    w = tf.constant(_operands(rng, (40, 6), spread=3))
    dy = tf.constant(_operands(rng, (2, 3, 6), spread=3))
    acc = lp.Accumulator(lp.FP16, chunk_size=8)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = lp.matmul(x, w, accumulator=acc, implementation=implementation)
    dx, dw = tape.gradient(y, [x, w], output_gradients=dy)
    expected_dx = reference.matmul(dy.numpy(), w.numpy()[None], lp.FP16, 8, transpose_b=True)
    _assert_same_bits(dx, expected_dx)
    # dW per batch element in FP16 (chunked), then the broadcast batch summed in FP32.
    per_batch = reference.matmul(x.numpy(), dy.numpy(), lp.FP16, 8, transpose_a=True)
    _assert_same_bits(dw, per_batch.sum(axis=0, dtype=np.float32))


def test_accumulator_config_and_errors():
    acc = lp.Accumulator(lp.FloatFormat(6, 9), chunk_size=32, rounding="stochastic")
    assert lp.Accumulator.from_config(acc.get_config()) == acc
    assert lp.Accumulator("bf16").format is lp.BF16
    with pytest.raises(ValueError, match="chunk_size must be None"):
        lp.Accumulator(lp.FP16, chunk_size=0)
    with pytest.raises(ValueError, match="must be a FloatFormat"):
        lp.Accumulator(lp.DFP16)
    with pytest.raises(ValueError, match="rounding must be one of"):
        lp.Accumulator(lp.FP16, rounding="up")
    with pytest.raises(ValueError, match="accumulator is required"):
        lp.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), accumulator=None)
    with pytest.raises(ValueError, match="inside the lp.Accumulator"):
        lp.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                  accumulator=acc, chunk_size=4)


@pytest.mark.filterwarnings("ignore:tf_lowprec. policies 'fp8_wang' round backward errors")
def test_precision_spec_takes_an_accumulator_and_fp8_wang_runs_it():
    import keras

    spec = lp.PrecisionSpec(activations="e5m2", weights="e5m2",
                            accumulator=lp.Accumulator(lp.FP16, chunk_size=4))
    restored = lp.PrecisionSpec.from_config(spec.get_config())
    assert restored == spec and restored.accumulator == lp.Accumulator(lp.FP16, chunk_size=4)
    assert "Accumulator('fp16', chunk_size=4)" in repr(spec)
    wang = lp.Policy("fp8_wang")
    assert wang.spec.accumulator == lp.Accumulator(lp.FP16, chunk_size=64)
    assert wang.spec.activations == ("e5m2", "nearest_even")

    rng = np.random.default_rng(0)
    x = _operands(rng, (5, 150), spread=2)
    layer = keras.layers.Dense(3, use_bias=False, dtype=lp.Policy("fp8_wang"))
    y = layer(x).numpy()
    xr = lp.round_to_format(x, lp.E5M2).numpy()
    wr = lp.round_to_format(layer.kernel.numpy(), lp.E5M2).numpy()
    # The layer's output error is rounded to E5M2 too (identity forward).
    _assert_same_bits(y, reference.matmul(xr[None], wr[None], lp.FP16, 64)[0])

    model = keras.Sequential([keras.Input((150,)),
                              keras.layers.Dense(4, dtype=lp.Policy("fp8_wang"))])
    model.compile(optimizer=lp.LowPrecisionWeights(keras.optimizers.SGD(0.01), "fp16",
                                                   "stochastic"), loss="mse")
    history = model.fit(x, np.zeros((5, 4), np.float32), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_conv2d_layer_accumulates_in_the_policy_format():
    import keras

    spec = lp.PrecisionSpec(activations="bf16", weights="bf16",
                            accumulator=lp.Accumulator(lp.BF16, chunk_size=4))
    layer = keras.layers.Conv2D(2, 3, use_bias=False, dtype=lp.Policy("acc", spec=spec))
    rng = np.random.default_rng(1)
    x = _operands(rng, (1, 5, 5, 3), spread=2)
    y = layer(x).numpy()
    xr = lp.round_to_format(x, lp.BF16)
    wr = lp.round_to_format(layer.kernel, lp.BF16)
    expected = lp.gemm.accumulation.conv2d(xr, wr, accumulator=spec.accumulator,
                                           implementation="tf").numpy()
    _assert_same_bits(y, expected)
    # The patches (kh, kw, C) of output (0, 0, 0) summed by the reference.
    patch = xr.numpy()[0, :3, :3, :].reshape(1, 1, 27)
    column = wr.numpy()[:, :, :, 0].reshape(1, 27, 1)
    _assert_same_bits(y[0, 0, 0, 0], reference.matmul(patch, column, lp.BF16, 4)[0, 0, 0])


@pytest.mark.parametrize("layer_kind", ["grouped", "depthwise"])
def test_grouped_and_depthwise_conv_accumulate_per_group(layer_kind):
    """Each output sums only its group's (kh, kw, c) products, in the accumulator's format."""
    import keras

    spec = lp.PrecisionSpec(activations="bf16", weights="bf16",
                            accumulator=lp.Accumulator(lp.BF16, chunk_size=4))
    policy = lp.Policy("acc", spec=spec)
    if layer_kind == "grouped":
        layer = keras.layers.Conv2D(4, 2, groups=2, use_bias=False, dtype=policy)
    else:
        layer = keras.layers.DepthwiseConv2D(2, use_bias=False, dtype=policy)
    rng = np.random.default_rng(2)
    x = _operands(rng, (1, 3, 3, 4), spread=3)
    y = layer(x).numpy()
    xr = lp.round_to_format(x, lp.BF16).numpy()
    kernel = lp.round_to_format(
        layer.kernel, lp.BF16).numpy()
    if layer_kind == "depthwise":  # [kh, kw, C, 1]: group c has one input and one output channel
        kernel = kernel.reshape(2, 2, 1, 4)
    per_group_in = kernel.shape[2]
    per_group_out = kernel.shape[3] // (4 // per_group_in)
    for out_channel in range(kernel.shape[3]):
        group = out_channel // per_group_out
        channels = slice(group * per_group_in, (group + 1) * per_group_in)
        patch = xr[0, 1:3, 0:2, channels].reshape(1, 1, -1)  # output (0, 1, 0)
        column = kernel[:, :, :, out_channel].reshape(1, -1, 1)
        expected = reference.matmul(patch, column, lp.BF16, 4)[0, 0, 0]
        _assert_same_bits(y[0, 1, 0, out_channel], expected)


def test_a_spec_with_only_an_accumulator_emulates():
    """FP32 operands summed in FP16 still swamp: the accumulator alone makes a spec emulate."""
    import keras

    spec = lp.PrecisionSpec(accumulator=lp.Accumulator(lp.FP16))
    assert spec.emulates
    layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones",
                               dtype=lp.Policy("fp16_sums", spec=spec))
    assert layer(np.ones((1, 4096), np.float32)).numpy().tolist() == [[2048.0]]


def test_stochastic_accumulator_in_a_policy_is_reproducible_from_the_keras_seed():
    import keras

    spec = lp.PrecisionSpec(activations="bf16", weights="bf16", accumulator=lp.Accumulator(
        lp.BF16, chunk_size=8, rounding="stochastic"))
    rng = np.random.default_rng(4)
    x = _operands(rng, (8, 32), spread=2)
    y = _operands(rng, (8, 4), spread=2)
    kernel = _operands(rng, (32, 4), spread=1)

    def fit_step(keras_seed, run_eagerly):
        keras.utils.set_random_seed(keras_seed)
        # Fixed names: the seeds hash the layer's path.
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(
            4, use_bias=False, name="dense", dtype=lp.Policy("stochastic_sums", spec=spec))],
            name="model")
        model.layers[0].kernel.assign(kernel)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", run_eagerly=run_eagerly)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return model.layers[0].kernel.numpy()

    first = fit_step(7, run_eagerly=False)
    # The sums' seeds come from the Keras seed, the layer call and the step,
    # not from TensorFlow's stateful RNG: eager and traced steps agree.
    _assert_same_bits(fit_step(7, run_eagerly=True), first)
    assert np.any(_bits(fit_step(8, run_eagerly=False)) != _bits(first))
