"""Stochastic rounding: unbiased, reproducible, identical on every path.

Must show 2.  For test points in several formats (normal, subnormal and
near-maximum ranges, and a DFP block), 10^6 draws produce only the two grid
neighbours of x, P(up) equals the distance to the lower neighbour in grid
steps and the mean equals x, both within 5 standard errors (the default 16
random bits per element are exact where at most 16 bits are dropped and
biased by less than 2^-16 of a step elsewhere, far below 5 standard errors;
a test pins that bound where it is attained).  The bits depend
only on the seed: identical across runs, eager vs tf.function (and XLA),
1 vs several intra-op threads, C++ op vs pure-TF path vs NumPy reference.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from rounding_testing import (
    as_bits,
    assert_same_bits,
    label,
    low16_patterns,
    quantize_dfp_everywhere,
    round_everywhere,
    specials,
    tf_side,
)
from tf_lowprec.numerics import reference
from tf_lowprec.numerics import tf_rounding

DRAWS = 10**6
SIGMAS = 5
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def grid_neighbours(x, fmt):
    """(lower, upper, p_up) magnitudes of float32 x on fmt's grid, from the definition."""
    a = abs(float(np.float32(x)))
    exponent = int(np.floor(np.log2(a)))
    step = 2.0 ** (max(exponent, fmt.min_exponent) - fmt.mantissa_bits)
    lower = np.floor(a / step) * step
    return lower, lower + step, (a - lower) / step


def check_draws(y, x, lower, upper, p_up, what):
    """Only the two neighbours appear; P(up) and the mean match within 5 sigma."""
    y = np.asarray(y, np.float64).reshape(-1)
    sign = -1.0 if np.signbit(np.float32(x)) else 1.0
    up = y == sign * upper
    down = y == sign * lower
    assert np.all(up | down), f"{what}: values other than {lower}, {upper}: {np.unique(y)[:5]}"
    n = y.size
    sigma_p = np.sqrt(p_up * (1 - p_up) / n)
    assert abs(up.mean() - p_up) <= SIGMAS * sigma_p + 1e-12, (
        f"{what}: P(up) = {up.mean()}, expected {p_up} +- {SIGMAS} x {sigma_p}"
    )
    expected_mean = sign * (lower + p_up * (upper - lower))
    sigma_mean = (upper - lower) * sigma_p
    assert abs(y.mean() - expected_mean) <= SIGMAS * sigma_mean + 1e-12 * abs(expected_mean), (
        f"{what}: mean {y.mean()} vs {expected_mean}"
    )
    return up.mean()


FLOAT_POINTS = [
    (lp.BF16, 1 + 2.0**-10),  # P(up) = 1/8
    (lp.BF16, -3.7),
    (lp.BF16, 2.0**-131 * 1.3),  # bf16 subnormal range (and float32 subnormal)
    (lp.BF16, lp.BF16.max_value - 0.3 * 2.0**120),  # between the two largest values
    (lp.FP16, 1 / 3),
    (lp.FP16, -(65504 - 7.0)),
    (lp.FP16, 2.0**-24 * 3.3),  # fp16 subnormal range
    (lp.E4M3, 0.3),
    (lp.E4M3, 440.0),  # between 416 and the maximum 448
    (lp.E4M3, -(2.0**-9) * 2.6),  # e4m3 subnormal range
    (lp.E4M3, 2.0**-9 * 0.2),  # below the smallest subnormal: 0 or 2^-9
    (lp.E5M2, 0.3),
    (lp.E5M2, 55000.0),  # between 49152 and the maximum 57344
    (lp.E5M2, 2.0**-16 * 1.7),  # e5m2 subnormal range
    (lp.HFP8_FORWARD, -0.07),
]


@pytest.mark.parametrize("fmt,x", FLOAT_POINTS, ids=[f"{f.name}:{x:.4g}" for f, x in FLOAT_POINTS])
def test_unbiased_on_float_formats(fmt, x):
    lower, upper, p_up = grid_neighbours(x, fmt)
    assert upper <= fmt.max_value and 0.01 < p_up < 0.99  # a real test point
    xs = np.full(DRAWS, x, np.float32)
    # Every implementation gives the same bits; then the statistics.
    y = round_everywhere(xs, fmt, "stochastic", seed=(2024, 7))
    check_draws(y, x, lower, upper, p_up, f"{fmt.name} x={x}")


def test_above_max_rounds_to_inf_with_its_probability():
    # Between BF16's largest value and 2^128: "up" overflows to Inf (IEEE-like
    # formats) or stays at the maximum (saturating formats).
    x = lp.BF16.max_value + 0.3 * 2.0**120
    y = round_everywhere(np.full(DRAWS, x, np.float32), lp.BF16, "stochastic", seed=(1, 9))
    p_inf = np.mean(y == np.inf)
    assert np.all((y == np.inf) | (y == np.float32(lp.BF16.max_value)))
    assert abs(p_inf - 0.3) <= SIGMAS * np.sqrt(0.3 * 0.7 / DRAWS)
    y = round_everywhere(np.full(1000, 460.0, np.float32), lp.E4M3, "stochastic", seed=(1, 9))
    np.testing.assert_array_equal(y, 448.0)


def test_unbiased_on_dfp_blocks():
    # Per tensor: 1000 sets E = 9 - 14 = -5, a grid of 1/32.  0.1 and 0.01
    # (below one step) round to their neighbours with the right probability.
    step = 2.0**-5
    for x in (0.1, -0.01):
        xs = np.concatenate([np.float32([1000.0]), np.full(DRAWS, x, np.float32)])
        y, e = quantize_dfp_everywhere(xs, lp.DFP16, "stochastic", seed=(3, 3))
        assert e.tolist() == [-5] and y[0] == 1000.0
        a = abs(float(np.float32(x)))
        lower = np.floor(a / step) * step
        check_draws(y[1:], x, lower, lower + step, (a - lower) / step, f"dfp16 x={x}")
    # Blocks of 2 along the last axis: each row [1000, x] has its own exponent.
    rows = np.tile(np.float32([[1000.0, 0.1]]), (DRAWS, 1))
    fmt = lp.DfpFormat(16, block_size=2, axis=-1)
    y, e = quantize_dfp_everywhere(rows, fmt, "stochastic", seed=(4, 4))
    assert np.all(e == -5)
    a = float(np.float32(0.1))
    lower = np.floor(a / step) * step
    check_draws(y[:, 1], 0.1, lower, lower + step, (a - lower) / step, "dfp16 blocks")


@pytest.mark.parametrize("fmt", [
    lp.BF16, lp.FP16, lp.E4M3, lp.E5M2, lp.HFP8_FORWARD, lp.E4M3FNUZ, lp.BF16_INTEL,
    lp.FloatFormat(5, 10, overflow="nan"),
    lp.FloatFormat(2, 1, infinities=False, nan="none"),
    lp.FloatFormat(4, 0, infinities=False, nan="all_ones", subnormals=False),
], ids=repr)
@pytest.mark.parametrize("random_bits", [32, 7])
def test_every_implementation_agrees_on_all_kinds_of_input(fmt, random_bits):
    # Specials, float32 subnormals, overflow, ties: the op, the TF path and
    # the reference draw the same words and make the same decisions.
    x = np.concatenate([low16_patterns((0x0000, 0x8000, 0xFFFF)), specials()])
    y = round_everywhere(x, fmt, "stochastic", seed=(123, 456), random_bits=random_bits)
    finite = np.isfinite(x)
    assert np.all(np.isnan(y[np.isnan(x)]))
    # Between the toward-zero neighbour and the next grid point up.
    lower = reference.round_to_format(x, fmt, "toward_zero")
    ok = np.isfinite(y) & finite
    assert np.all(np.abs(y[ok]) >= np.abs(lower[ok]))


# ----------------------------------------------------------------------------
# random_bits: fewer random bits than dropped bits gives the documented bias.


@pytest.mark.parametrize("fmt,x,random_bits", [
    (lp.BF16, 1 + 2.0**-7 * 2.0**-9, 8),  # dropped fraction 2^-9 < 2^-8: never up
    (lp.BF16, 1 + 2.0**-7 * 2.0**-9, 16),  # 16 >= 16 dropped bits: exact
    (lp.BF16, 1 + 2.0**-7 * 0.3, 4),
    (lp.E4M3, 1 + 2.0**-3 * 0.7, 3),  # 20 dropped bits, 3 random bits
    (lp.E4M3, 1 + 2.0**-3 * 0.7, 32),
    (lp.FP16, -(1 + 2.0**-10 * 0.55), 1),  # one random bit: up iff F >= 1/2
])
def test_random_bits_bias(fmt, x, random_bits):
    """P(up) = floor(F * 2^random_bits) / 2^random_bits (rounding.h)."""
    lower, upper, frac = grid_neighbours(x, fmt)
    fraction = np.floor(frac * 2.0**32) / 2.0**32
    p_up = np.floor(fraction * 2.0**random_bits) / 2.0**random_bits
    xs = np.full(DRAWS, x, np.float32)
    y = round_everywhere(xs, fmt, "stochastic", seed=(77, 1), random_bits=random_bits)
    if p_up in (0.0, 1.0):
        np.testing.assert_array_equal(np.abs(y), upper if p_up else lower)
    else:
        check_draws(y, x, lower, upper, p_up, f"{fmt.name} random_bits={random_bits}")
    # The bias is (p_up - frac) grid steps: zero exactly when the dropped
    # field fits in random_bits.
    dropped = 23 - fmt.mantissa_bits
    if random_bits >= dropped:
        assert p_up == frac
    bias = (np.abs(y.astype(np.float64)).mean() - abs(float(np.float32(x)))) / (upper - lower)
    sigma = np.sqrt(max(p_up * (1 - p_up), 1e-12) / DRAWS)
    assert abs(bias - (p_up - frac)) <= SIGMAS * sigma + 1e-9


def test_sixteen_random_bits_bias_bound_is_attained_beyond_16_dropped_bits():
    """E4M3 drops 20 bits: with the default 16 random bits, F = 2^-16 - 2^-20 never
    rounds up, a bias of exactly the documented bound 2^-16 - 2^-20 grid steps;
    with 32 random bits it rounds up with probability F.  BF16 drops 16 bits:
    even its smallest fraction, 2^-16, rounds up with probability 2^-16.
    (About 1 s.)"""
    step = 2.0**-3  # E4M3 grid step in [1, 2)
    x = np.float32(1 + 15 * 2.0**-23)  # F = 15 * 2^-20
    xs = np.full(DRAWS, x, np.float32)
    y = round_everywhere(xs, lp.E4M3, "stochastic", seed=(8, 8))
    np.testing.assert_array_equal(y, 1.0)
    bias = (y.astype(np.float64).mean() - float(x)) / step
    assert bias == -(2.0**-16 - 2.0**-20)
    # The whole-word stream: P(up) = 15 * 2^-20, about 14 ups in 10^6.
    y32 = round_everywhere(xs, lp.E4M3, "stochastic", seed=(8, 8), random_bits=32)
    p_up = 15 * 2.0**-20
    ups = np.count_nonzero(y32 == 1.125)
    assert np.all((y32 == 1.0) | (y32 == 1.125))
    assert abs(ups - DRAWS * p_up) <= SIGMAS * np.sqrt(DRAWS * p_up)
    # BF16 (16 dropped bits) rounds 1 + 2^-23 up with probability exactly 2^-16.
    y_bf16 = round_everywhere(np.full(DRAWS, 1 + 2.0**-23, np.float32), lp.BF16, "stochastic",
                              seed=(8, 9))
    ups = np.count_nonzero(y_bf16 == np.float32(1 + 2.0**-7))
    assert abs(ups - DRAWS * 2.0**-16) <= SIGMAS * np.sqrt(DRAWS * 2.0**-16)


def test_random_words_layout():
    """Half words: element i takes the low (even i) or high (odd i) half of stream word
    i // 2, in its top 16 bits; 17..32 random bits: a whole word per element.  The
    stream is TensorFlow's stateless Philox."""
    seed = (31, -7)
    shape = (3, 5)  # 15 elements: the last takes the low half of word 7
    stream = tf.random.stateless_uniform([8], seed, minval=None, maxval=None, dtype=tf.uint32,
                                         alg="philox").numpy()
    halves = np.stack([stream & 0xFFFF, stream >> 16], axis=-1).reshape(-1)[:15]
    expected = (halves.astype(np.uint32) << 16).reshape(shape)
    np.testing.assert_array_equal(reference.random_words(shape, seed, 16), expected)
    np.testing.assert_array_equal(reference.random_words(shape, seed, 1), expected)
    whole = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32,
                                        alg="philox").numpy()
    np.testing.assert_array_equal(reference.random_words(shape, seed, 17), whole)
    # The TF path computes the same words, masked to the top random_bits bits.
    for random_bits in (16, 5, 17, 32):
        mask = (0xFFFFFFFF << (32 - random_bits)) & 0xFFFFFFFF
        got = tf_rounding.random_words(tf.constant(shape), tf.constant(seed, tf.int64),
                                       random_bits).numpy()
        want = reference.random_words(shape, seed, random_bits) & np.uint32(mask)
        np.testing.assert_array_equal(got, want.astype(np.int64), err_msg=f"r={random_bits}")


# ----------------------------------------------------------------------------
# Reproducibility.


def stochastic_inputs(n=300_000, seed=5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.exp2(rng.uniform(-20, 20, n))).astype(np.float32)


def test_same_seed_same_bits_other_seed_other_bits():
    x = stochastic_inputs()
    for implementation, isa in tf_side():
        run = lambda seed: lp.round_to_format(  # noqa: E731
            x, lp.E4M3, "stochastic", seed=seed, implementation=implementation, isa=isa
        ).numpy()
        first, second, other = run((10, 20)), run((10, 20)), run((10, 21))
        assert_same_bits(second, first, f"{label(implementation, isa)}: rerun")
        assert np.mean(as_bits(first) != as_bits(other)) > 0.1
        # An int seed means (seed, 0); a tensor seed works the same way.
        assert_same_bits(run(10), run((10, 0)), "int seed")
        assert_same_bits(run(tf.constant([10, 20], tf.int64)), first, "tensor seed")
        assert_same_bits(run(tf.constant([10, 20], tf.int32)), first, "int32 seed")


def test_eager_equals_tf_function_and_xla():
    x = tf.constant(stochastic_inputs())
    seed = tf.constant([3, -4], tf.int64)
    for implementation, isa in tf_side():
        def round_x(x, seed):
            return lp.round_to_format(x, lp.BF16, "stochastic", seed=seed,
                                      implementation=implementation, isa=isa)

        def dfp_x(x, seed):
            return lp.quantize_dfp(tf.reshape(x, [-1, 100]), lp.DfpFormat(8, block_size=16),
                                   "stochastic", seed=seed, implementation=implementation,
                                   isa=isa)

        what = label(implementation, isa)
        for fn in (round_x, dfp_x):
            eager = fn(x, seed).numpy()
            graph = tf.function(fn)(x, seed).numpy()
            assert_same_bits(graph, eager, f"{what} {fn.__name__}: tf.function vs eager")
    # Under XLA, "auto" runs the pure-TF path: same bits as the kernel, also for
    # an odd number of elements (the last one takes half a word) in two dimensions.
    odd = tf.reshape(x[:-1], [7, -1])
    for name, fn in [
        ("round", lambda x, seed: lp.round_to_format(x, lp.E4M3, "stochastic", seed=seed)),
        ("dfp", lambda x, seed: lp.quantize_dfp(x, lp.DfpFormat(8, block_size=3, axis=0),
                                                 "stochastic", seed=seed)),
    ]:
        for value in (x, odd):
            xla = tf.function(fn, jit_compile=True)(value, seed).numpy()
            kernel = fn(value, seed).numpy()
            assert_same_bits(xla, kernel, f"XLA vs op, {name} {value.shape}")


def test_seed_none_draws_fresh_seeds():
    x = stochastic_inputs(10_000)
    first = lp.round_to_format(x, lp.BF16, "stochastic").numpy()
    second = lp.round_to_format(x, lp.BF16, "stochastic").numpy()
    assert np.mean(as_bits(first) != as_bits(second)) > 0.1


# A fresh process: results under 1 intra-op thread or the default, with an
# explicit seed and with seed=None after tf.random.set_seed.
_SUBPROCESS = r"""
import json, sys
import tensorflow as tf
threads = int(sys.argv[1])
if threads:  # before anything runs: TF fixes its thread pools at first use
    tf.config.threading.set_intra_op_parallelism_threads(threads)
from test_stochastic_rounding import stochastic_workload
print(json.dumps(stochastic_workload()))
"""


def stochastic_workload():
    """Hashes of stochastic results that span many shards of the kernels."""
    x = stochastic_inputs(1 << 20, seed=9)
    digests = {}

    def digest(name, value):
        digests[name] = hashlib.sha256(as_bits(np.asarray(value))).hexdigest()

    digest("round_op", lp.round_to_format(x, lp.E5M2, "stochastic", seed=(1, 2),
                                          implementation="op"))
    digest("round_tf", lp.round_to_format(x, lp.E5M2, "stochastic", seed=(1, 2),
                                          implementation="tf"))
    blocks = x.reshape(1024, 1024)
    for axis in (0, 1):
        y, e = lp.quantize_dfp(blocks, lp.DfpFormat(16, block_size=32, axis=axis), "stochastic",
                               seed=(3, 4), return_exponents=True, implementation="op")
        digest(f"dfp_axis{axis}", y)
        digests[f"dfp_axis{axis}_exponents"] = hashlib.sha256(e.numpy().tobytes()).hexdigest()
    digest("dfp_tensor", lp.quantize_dfp(x, lp.DFP16, "stochastic", seed=(5, 6),
                                         implementation="op"))
    tf.random.set_seed(1234)
    digest("seed_none_first", lp.round_to_format(x, lp.BF16, "stochastic", implementation="op"))
    digest("seed_none_second", lp.round_to_format(x, lp.BF16, "stochastic",
                                                  implementation="tf"))
    return digests


def run_workload_in_subprocess(threads):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, tests_dir, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, str(threads)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_thread_count_and_fresh_process_do_not_change_bits():
    one_thread = run_workload_in_subprocess(1)
    default_threads = run_workload_in_subprocess(0)
    try:
        here = stochastic_workload()  # this process, default threads
    finally:
        tf.random.set_seed(None)  # leave no global seed behind for other tests
    assert one_thread == default_threads
    assert here == one_thread
    # op and tf paths agree on the same seed.
    assert one_thread["round_op"] == one_thread["round_tf"]
    # seed=None follows tf.random.set_seed: the same in both fresh processes,
    # different from one call to the next.
    assert one_thread["seed_none_first"] != one_thread["seed_none_second"]


# ----------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("implementation", ["op", "tf"])
def test_gradient_is_straight_through(implementation):
    x = tf.Variable(stochastic_inputs(1000))
    upstream = tf.constant(stochastic_inputs(1000, seed=6))
    with tf.GradientTape(persistent=True) as tape:
        y = lp.round_to_format(x, lp.E4M3, "stochastic", seed=(1, 1),
                               implementation=implementation)
        loss = tf.reduce_sum(y * upstream)
        d = lp.quantize_dfp(x, lp.DFP16, "stochastic", seed=(1, 1),
                            implementation=implementation)
        loss_dfp = tf.reduce_sum(d * upstream)
    assert_same_bits(tape.gradient(loss, x).numpy(), upstream.numpy(), "straight-through")
    assert_same_bits(tape.gradient(loss_dfp, x).numpy(), upstream.numpy(), "DFP straight-through")


@pytest.mark.parametrize("implementation", ["op", "tf"])
def test_gradient_rounded_to_backward_format(implementation):
    x = tf.Variable(stochastic_inputs(1000))
    upstream = tf.constant(stochastic_inputs(1000, seed=7))
    with tf.GradientTape(persistent=True) as tape:
        y = lp.round_to_format(x, lp.E4M3, "stochastic", seed=(1, 1),
                               backward_format=lp.BF16, implementation=implementation)
        loss = tf.reduce_sum(y * upstream)
        y_sr = lp.round_to_format(x, lp.E4M3, seed=(1, 1), backward_format=lp.BF16,
                                  backward_rounding="stochastic", implementation=implementation)
        loss_sr = tf.reduce_sum(y_sr * upstream)
    grad = tape.gradient(loss, x).numpy()
    expected = reference.round_to_format(upstream.numpy(), lp.BF16)
    assert_same_bits(grad, expected, "gradient rounded to BF16 (nearest_even)")
    assert_same_bits(grad, lp.round_to_format(upstream, lp.BF16).numpy(), "vs round_to_format")
    # Stochastic backward rounding: BF16 values, one of the two neighbours.
    grad_sr = tape.gradient(loss_sr, x).numpy()
    lower = reference.round_to_format(upstream.numpy(), lp.BF16, "toward_zero")
    assert_same_bits(reference.round_to_format(grad_sr, lp.BF16), grad_sr, "on the BF16 grid")
    assert np.all(np.abs(grad_sr) >= np.abs(lower))
    assert np.all(np.abs(grad_sr - lower) <= np.abs(lower) * 2.0**-7 + 1e-45)
    assert np.any(grad_sr != expected)
    assert_same_bits(grad_sr, tape.gradient(loss_sr, x).numpy(), "reproducible")
