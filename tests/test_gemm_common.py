"""_gemm_common.image_patches: the values and the gradient of tf.image.extract_patches."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tf_lowprec.gemm import common as _gemm_common

CASES = list(itertools.product([(5, 6), (8, 7)], [1, 3], [1, 2], [1, 2], ["VALID", "SAME"]))


@pytest.mark.parametrize("spatial, k, stride, dilation, padding", CASES)
def test_image_patches_equal_extract_patches(spatial, k, stride, dilation, padding):
    rng = np.random.default_rng(sum(spatial) * 100 + k * 10 + stride + dilation)
    x = tf.constant(rng.standard_normal((2, *spatial, 3)).astype(np.float32))
    options = dict(sizes=[1, k, k, 1], strides=[1, stride, stride, 1],
                   rates=[1, dilation, dilation, 1], padding=padding)
    expected = tf.image.extract_patches(x, **options)
    dy = tf.constant(rng.standard_normal(expected.shape).astype(np.float32))
    grads = []
    for fn in (lambda v: _gemm_common.image_patches(v, k, k, (stride, stride), padding,
                                                    (dilation, dilation)),
               lambda v: tf.image.extract_patches(v, **options)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            patches = fn(x)
        grads.append(tape.gradient(patches, x, output_gradients=dy).numpy())
        assert patches.shape == expected.shape
        np.testing.assert_array_equal(patches.numpy(), expected.numpy())
    # The col2im sums are ExtractImagePatches' own: the same bits.
    np.testing.assert_array_equal(grads[0].view(np.uint32), grads[1].view(np.uint32))


@pytest.mark.parametrize("k, dilation, padding", [(3, 1, "SAME"), (2, 2, "VALID"), (3, 2, "SAME")])
def test_col2im_in_a_graph_equals_extract_patches_gradient(k, dilation, padding):
    """In a tf.function (Grappler on), with errors that make the summation order matter."""
    rng = np.random.default_rng(k * 10 + dilation)
    x = tf.constant(rng.standard_normal((2, 7, 6, 3)).astype(np.float32))
    options = dict(sizes=[1, k, k, 1], strides=[1, 1, 1, 1], rates=[1, dilation, dilation, 1],
                   padding=padding)
    shape = tf.image.extract_patches(x, **options).shape
    # Magnitudes 2^-20 .. 2^20 with signs: FP32 sums in another order round differently.
    dy = tf.constant((rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 21, shape))
                     .astype(np.float32))

    def gradient(fn):
        @tf.function
        def run(v, d):
            with tf.GradientTape() as tape:
                tape.watch(v)
                p = fn(v)
            return tape.gradient(p, v, output_gradients=d)
        return run(x, dy).numpy()

    ours = gradient(lambda v: _gemm_common.image_patches(v, k, k, (1, 1), padding,
                                                         (dilation, dilation)))
    theirs = gradient(lambda v: tf.image.extract_patches(v, **options))
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_image_patches_kernel_larger_than_input_and_dynamic_shapes():
    x = tf.ones((1, 2, 2, 1))
    assert _gemm_common.image_patches(x, 3, 3, (1, 1), "VALID", (1, 1)).shape == (1, 0, 0, 9)
    f = tf.function(lambda v: _gemm_common.image_patches(v, 2, 2, (1, 1), "SAME", (1, 1)),
                    input_signature=[tf.TensorSpec([None, None, None, 2])])
    v = np.arange(18, dtype=np.float32).reshape(1, 3, 3, 2)
    np.testing.assert_array_equal(
        f(v), tf.image.extract_patches(v, [1, 2, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME"))
