"""The stock-TF twin of the INT16 GEMM equals the kernel bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp


def _same(want, got):
    return np.array_equal(np.isnan(want), np.isnan(got)) and np.array_equal(
        np.nan_to_num(want).view(np.uint32), np.nan_to_num(got).view(np.uint32))


@pytest.mark.parametrize("trial", range(24))
def test_twin_matches_kernel(trial):
    rng = np.random.default_rng(trial)
    ta, tb = bool(rng.integers(2)), bool(rng.integers(2))
    m, k, n = int(rng.integers(1, 9)), int(rng.integers(1, 300)), int(rng.integers(1, 9))
    batch = [] if trial % 2 else [int(rng.integers(1, 3))]
    fmt = lp.DFP16 if trial % 3 else lp.DfpFormat(16, block_size=int(rng.integers(1, 100)))
    scale_a, scale_b = 10.0 ** rng.integers(-5, 5), 10.0 ** rng.integers(-5, 5)
    a = (rng.normal(size=batch + ([k, m] if ta else [m, k])) * scale_a).astype(np.float32)
    b = (rng.normal(size=batch + ([n, k] if tb else [k, n])) * scale_b).astype(np.float32)
    if trial % 5 == 0:
        a.flat[0] = np.inf  # a NaN row (or column) in the product
    kwargs = dict(transpose_a=ta, transpose_b=tb)
    want = lp.dfp_matmul(a, b, fmt, implementation="op", **kwargs).numpy()
    got = lp.dfp_matmul(a, b, fmt, implementation="tf", **kwargs).numpy()
    assert _same(want, got)


def test_twin_with_unknown_reduction_length_and_gradients():
    rng = np.random.default_rng(7)
    a = tf.constant(rng.normal(size=(5, 70)).astype(np.float32))
    b = tf.constant(rng.normal(size=(70, 3)).astype(np.float32))

    def grads(implementation):
        @tf.function(input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, 3])])
        def f(x, y):
            with tf.GradientTape() as tape:
                tape.watch([x, y])
                out = lp.dfp_matmul(x, y, implementation=implementation)
                loss = tf.reduce_sum(out * out)
            return (out,) + tuple(tape.gradient(loss, [x, y]))

        return [t.numpy() for t in f(a, b)]

    for want, got in zip(grads("op"), grads("tf")):
        assert _same(want, got)


def test_conv2d_twin_matches_kernel():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    for padding, strides in (("SAME", 1), ("VALID", 2)):
        want = lp.dfp_conv2d(x, w, strides, padding, implementation="op").numpy()
        got = lp.dfp_conv2d(x, w, strides, padding, implementation="tf").numpy()
        assert _same(want, got)
    with pytest.raises(ValueError, match="implementation must be one of"):
        lp.dfp_matmul(x[0, 0], w[0, 0], implementation="gpu")
