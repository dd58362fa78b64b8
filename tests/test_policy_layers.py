"""Every stock GEMM layer under every preset equals its explicit reference, bit for bit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.keras import adapter
from policy_reference import (
    assert_bitwise_equal,
    error,
    explicit_backend,
    fp32_twin,
    operand,
    values_and_grads,
)

PRESETS = ["bf16", "fp16", "fp8", "hfp8", "dfp16", "bf16_native"]
CUSTOM = lp.PrecisionSpec(activations="e4m3", weights=("bf16", "toward_zero"),
                          errors="e5m2", weight_gradients="bf16")
POLICIES = PRESETS + ["custom"]


def make_policy(name):
    return lp.Policy(spec=CUSTOM) if name == "custom" else lp.Policy(name)


# (layer factory, input shapes); inputs are scaled normals.
LAYERS = {
    "Dense": (lambda d: keras.layers.Dense(5, dtype=d), [(3, 7)]),
    "Dense3D": (lambda d: keras.layers.Dense(4, dtype=d), [(2, 3, 6)]),
    "EinsumDense": (lambda d: keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 4),
                                                       bias_axes="d", dtype=d), [(2, 3, 5)]),
    "Conv1D": (lambda d: keras.layers.Conv1D(4, 3, dtype=d), [(2, 9, 3)]),
    "Conv2D": (lambda d: keras.layers.Conv2D(4, 3, padding="same", strides=2, dtype=d),
               [(2, 7, 7, 3)]),
    "Conv3D": (lambda d: keras.layers.Conv3D(2, 2, dtype=d), [(1, 4, 4, 4, 2)]),
    "Conv2DTranspose": (lambda d: keras.layers.Conv2DTranspose(3, 3, strides=2, dtype=d),
                        [(2, 4, 4, 3)]),
    "Conv1DTranspose": (lambda d: keras.layers.Conv1DTranspose(2, 3, strides=2, padding="same",
                                                               output_padding=1, dtype=d),
                        [(2, 5, 3)]),
    "Conv3DTranspose": (lambda d: keras.layers.Conv3DTranspose(2, 2, strides=(1, 2, 1), dtype=d),
                        [(1, 2, 3, 2, 3)]),
    "ConvLSTM3D": (lambda d: keras.layers.ConvLSTM3D(2, 2, dtype=d), [(1, 2, 3, 3, 3, 2)]),
    "DepthwiseConv2D": (lambda d: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, dtype=d),
                        [(2, 6, 6, 3)]),
    "SeparableConv2D": (lambda d: keras.layers.SeparableConv2D(4, 3, dtype=d), [(2, 6, 6, 3)]),
    "SimpleRNN": (lambda d: keras.layers.SimpleRNN(4, dtype=d), [(2, 5, 3)]),
    "LSTM": (lambda d: keras.layers.LSTM(4, return_sequences=True, dtype=d), [(2, 5, 3)]),
    "GRU": (lambda d: keras.layers.GRU(4, dtype=d), [(2, 5, 3)]),
    "MultiHeadAttention": (lambda d: keras.layers.MultiHeadAttention(2, 3, dtype=d),
                           [(2, 4, 6), (2, 5, 6)]),
}


def _inputs(shapes, seed=0):
    rng = np.random.RandomState(seed)
    return [(rng.randn(*s) * 1.5).astype("float32") for s in shapes]


def _run(layer, xs, upstream):
    weights = layer.trainable_weights
    return values_and_grads(lambda *v: layer(*v), weights, xs, upstream)


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_layer_matches_explicit_reference(layer_name, policy_name):
    factory, shapes = LAYERS[layer_name]
    policy = make_policy(policy_name)
    xs = _inputs(shapes)
    layer = factory(policy)
    y = layer(*xs)
    upstream = tf.constant(np.random.RandomState(1).randn(*y.shape).astype("float32"))
    y, grads = _run(layer, xs, upstream)

    twin = fp32_twin(layer)
    twin(*xs)
    twin.set_weights(layer.get_weights())
    with explicit_backend(policy.spec):
        y_ref, grads_ref = _run(twin, xs, upstream)
    assert_bitwise_equal(y, y_ref, f"{layer_name} forward")
    for index, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert_bitwise_equal(g, g_ref, f"{layer_name} gradient {index}")

    # The emulation is not vacuous: plain float32 gives other values.
    y_fp32 = twin(*xs)
    assert not np.array_equal(np.asarray(y), np.asarray(y_fp32))


def _dense_explicit(x, kernel, bias, spec, upstream):
    """Dense by hand, forward and backward formulas written out."""
    xq = lp.quantize(x, spec.role("activations")[0])
    wq = lp.quantize(kernel, spec.role("weights")[0])
    y = tf.matmul(xq, wq) + bias
    d_y = upstream if spec.role("errors") is None else lp.quantize(upstream,
                                                                   spec.role("errors")[0])
    d_x = tf.matmul(d_y, wq, transpose_b=True)
    d_w = tf.matmul(xq, d_y, transpose_a=True)
    if spec.role("weight_gradients") is not None:
        d_w = lp.quantize(d_w, spec.role("weight_gradients")[0])
    return y, [d_x, d_w, tf.reduce_sum(upstream, axis=0)]


def _conv2d_explicit(x, kernel, bias, spec, upstream, strides, padding):
    xq = lp.quantize(x, spec.role("activations")[0])
    wq = lp.quantize(kernel, spec.role("weights")[0])
    y = tf.nn.conv2d(xq, wq, strides, padding) + bias
    d_y = upstream if spec.role("errors") is None else lp.quantize(upstream,
                                                                   spec.role("errors")[0])
    d_x = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=wq, out_backprop=d_y,
                                         strides=[1, strides, strides, 1], padding=padding)
    d_w = tf.raw_ops.Conv2DBackpropFilter(input=xq, filter_sizes=tf.shape(kernel),
                                          out_backprop=d_y, strides=[1, strides, strides, 1],
                                          padding=padding)
    if spec.role("weight_gradients") is not None:
        d_w = lp.quantize(d_w, spec.role("weight_gradients")[0])
    return y, [d_x, d_w, tf.reduce_sum(upstream, axis=[0, 1, 2])]


@pytest.mark.parametrize("policy_name", ["bf16", "fp16", "fp8", "hfp8"])
def test_dense_and_conv2d_match_handwritten_backward(policy_name):
    policy = lp.Policy(policy_name)
    spec = policy.spec
    x = _inputs([(4, 6)])[0]
    dense = keras.layers.Dense(3, bias_initializer="glorot_uniform", dtype=policy)
    upstream = tf.constant(np.random.RandomState(2).randn(4, 3).astype("float32"))
    y, grads = _run(dense, [x], upstream)
    y_ref, grads_ref = _dense_explicit(x, dense.kernel, dense.bias, spec, upstream)
    assert_bitwise_equal(y, y_ref, "dense forward")
    for g, g_ref, what in zip(grads, grads_ref, ["dx", "dW", "db"]):
        assert_bitwise_equal(g, g_ref, f"dense {what}")

    x = _inputs([(2, 6, 6, 3)])[0]
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="same",
                               bias_initializer="glorot_uniform", dtype=policy)
    upstream = tf.constant(np.random.RandomState(3).randn(2, 3, 3, 4).astype("float32"))
    y, grads = _run(conv, [x], upstream)
    y_ref, grads_ref = _conv2d_explicit(x, conv.kernel, conv.bias, spec, upstream, 2, "SAME")
    assert_bitwise_equal(y, y_ref, "conv forward")
    for g, g_ref, what in zip(grads, grads_ref, ["dx", "dW", "db"]):
        assert_bitwise_equal(g, g_ref, f"conv {what}")


class MatmulEinsumConv(keras.layers.Layer):
    """A user's layer calling keras.ops.matmul, einsum and conv directly."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 4), initializer="glorot_uniform")
        self.k = self.add_weight(shape=(2, 4, 3), initializer="glorot_uniform")

    def call(self, x):
        h = keras.ops.matmul(x, self.w)  # (B, T, 4)
        h = keras.ops.einsum("btc,bsc->bts", h, h)  # activations x activations
        return keras.ops.conv(h, self.k, padding="same")


@pytest.mark.parametrize("policy_name", ["bf16", "fp8", "custom"])
def test_custom_layer_ops_are_emulated(policy_name):
    policy = make_policy(policy_name)
    xs = _inputs([(2, 4, 4)])
    layer = MatmulEinsumConv(dtype=policy)
    y = layer(*xs)
    upstream = tf.constant(np.random.RandomState(4).randn(*y.shape).astype("float32"))
    y, grads = _run(layer, xs, upstream)

    spec = policy.spec
    # The FP32 ops are the backend's own (unrouted) functions.
    matmul = adapter.original("numpy", "matmul")
    einsum = adapter.original("numpy", "einsum")
    conv = adapter.original("nn", "conv")

    def ref(x):
        h = error(matmul(operand(x, spec, "activations"), operand(layer.w, spec, "weights")), spec)
        h = error(einsum("btc,bsc->bts", operand(h, spec, "activations"),
                         operand(h, spec, "activations")), spec)
        return error(conv(operand(h, spec, "activations"), operand(layer.k, spec, "weights"),
                          padding="same"), spec)

    y_ref, grads_ref = values_and_grads(ref, layer.trainable_weights, xs, upstream)
    assert_bitwise_equal(y, y_ref, "custom forward")
    for g, g_ref in zip(grads, grads_ref):
        assert_bitwise_equal(g, g_ref, "custom gradient")


def test_embedding_is_an_exact_lookup_and_feeds_a_rounded_gemm():
    policy = lp.Policy("bf16")
    ids = np.array([[1, 3, 0]])
    embedding = keras.layers.Embedding(5, 4, dtype=policy)
    out = embedding(ids)
    # A lookup computes nothing: the FP32 master rows come out unrounded ...
    assert_bitwise_equal(out, tf.gather(embedding.embeddings, ids), "embedding")
    # ... and are rounded where they enter the next GEMM.
    dense = keras.layers.Dense(2, dtype=policy)
    y = dense(out)
    expected = tf.matmul(lp.round_to_format(out, "bf16"), lp.round_to_format(dense.kernel,
                                                                              "bf16"))
    assert_bitwise_equal(y, expected + dense.bias, "dense after embedding")


def test_non_gemm_layers_stay_fp32():
    x = _inputs([(4, 6)])[0]
    for layer_fn in (lambda d: keras.layers.LayerNormalization(dtype=d),
                     lambda d: keras.layers.BatchNormalization(dtype=d),
                     lambda d: keras.layers.Softmax(dtype=d)):
        emulated, plain = layer_fn(lp.Policy("fp8")), layer_fn("float32")
        assert_bitwise_equal(emulated(x, training=True), plain(x, training=True), "non-GEMM")


def test_fp32_preset_is_the_unrounded_control():
    x = _inputs([(3, 5)])[0]
    layer = keras.layers.Dense(4, dtype=lp.Policy("fp32"))
    y = layer(x)
    twin = fp32_twin(layer)
    twin(x)
    twin.set_weights(layer.get_weights())
    assert_bitwise_equal(y, twin(x), "fp32 control")


def test_dfp16_runs_dense_and_conv2d_on_the_int16_gemm():
    """With tf_lowprec.gemm.dfp present, dfp16 GEMMs are its INT16 GEMMs (INT32 chains)."""
    policy = lp.Policy("dfp16")
    x = _inputs([(4, 6)])[0]
    dense = keras.layers.Dense(3, dtype=policy)
    upstream = tf.constant(np.random.RandomState(2).randn(4, 3).astype("float32"))
    y, grads = _run(dense, [x], upstream)
    y_ref, grads_ref = values_and_grads(
        lambda v: lp.dfp_matmul(v, dense.kernel) + dense.bias, dense.trainable_weights, [x],
        upstream)
    assert_bitwise_equal(y, y_ref, "dfp16 dense forward")
    for g, g_ref in zip(grads, grads_ref):
        assert_bitwise_equal(g, g_ref, "dfp16 dense gradient")
    fp32 = tf.matmul(lp.quantize_dfp(x), lp.quantize_dfp(dense.kernel)) + dense.bias
    np.testing.assert_allclose(y, fp32, rtol=1e-6, atol=1e-6)  # exact products either way
